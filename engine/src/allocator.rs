//! Tuning of mimalloc, the allocator of the `lanes` binary and the
//! benchmarks. Harmless where another allocator is the global one: it then
//! sets an option of an allocator nobody uses.

use libmimalloc_sys::{mi_option_get, mi_option_set, mi_option_t};

/// `mi_option_purge_delay` in mimalloc.h (v2 and v3): how long freed pages
/// stay with the process before they go back to the kernel; -1: never.
const PURGE_DELAY: mi_option_t = 15;

/// How long a serving process keeps freed pages before returning them to
/// the kernel: long enough that buffers freed and allocated again batch
/// after batch (records, sled's I/O buffers) are reused, not faulted in and
/// zeroed again each time; short enough that memory freed after a burst
/// goes back within seconds.
pub const SERVING_PURGE_DELAY_MS: std::ffi::c_long = 1_000;

/// Memory settings for a process with latency targets: the engine serving,
/// the load generator. Call once, first thing.
///
/// - No transparent huge pages for this process. mimalloc asks for them
///   (`MADV_HUGEPAGE`) where the kernel leaves it to the program
///   (`madvise`, a common default); the first touch of such a page then
///   zeroes 2 MiB inside one page fault, on whatever thread touched it.
///   Measured on the benchmark machine: about 5 ms of CPU per fault, on the
///   writer thread, several times a second while the heap grows; that was
///   most of the open-loop latency tail (docs/BENCHMARKS.md, "The
///   open-loop tail"). Redis turns them off for itself for the same reason.
/// - Freed pages are kept for `SERVING_PURGE_DELAY_MS` rather than
///   mimalloc's 10 ms.
///
/// Returns what could not be set; the process runs either way.
pub fn tune_for_latency() -> std::io::Result<()> {
    // SAFETY: as in `HoldFreedPages::start`.
    unsafe { mi_option_set(PURGE_DELAY, SERVING_PURGE_DELAY_MS) };
    #[cfg(target_os = "linux")]
    rustix::thread::disable_transparent_huge_pages(true)?;
    Ok(())
}

/// mimalloc's purge delay now, in milliseconds (-1: never).
pub fn purge_delay_ms() -> std::ffi::c_long {
    // SAFETY: as in `HoldFreedPages::start`.
    unsafe { mi_option_get(PURGE_DELAY) }
}

/// While it lives, mimalloc keeps freed pages instead of returning them to
/// the kernel (which it does 10 ms after they are freed, by default).
///
/// Replay allocates and frees at a high rate as it builds the state; each
/// returned page taken back costs a page fault and zeroing. Holding them
/// made a 10,000,000-event replay about 1.5x faster (docs/BENCHMARKS.md).
/// Afterwards the setting goes back to what it was, so a long-running
/// engine still returns memory it no longer needs.
pub struct HoldFreedPages {
    previous: std::ffi::c_long,
}

impl HoldFreedPages {
    pub fn start() -> HoldFreedPages {
        // SAFETY: reading and setting an option is thread-safe in mimalloc
        // and has no preconditions.
        let previous = unsafe { mi_option_get(PURGE_DELAY) };
        unsafe { mi_option_set(PURGE_DELAY, -1) };
        HoldFreedPages { previous }
    }
}

impl Drop for HoldFreedPages {
    fn drop(&mut self) {
        // SAFETY: as in `start`.
        unsafe { mi_option_set(PURGE_DELAY, self.previous) };
    }
}
