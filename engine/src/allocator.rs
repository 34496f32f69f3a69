//! Tuning of mimalloc, the allocator of the `lanes` binary and the
//! benchmarks. Harmless where another allocator is the global one: it then
//! sets an option of an allocator nobody uses.

use libmimalloc_sys::{mi_option_get, mi_option_set, mi_option_t};

/// `mi_option_purge_delay` in mimalloc.h (v2 and v3): how long freed pages
/// stay with the process before they go back to the kernel; -1: never.
const PURGE_DELAY: mi_option_t = 15;

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
