//! The memory settings `lanes serve` makes for itself. A test binary of its
//! own: the settings are per process, and replay tests elsewhere change the
//! purge delay while they run.

use lanes::allocator::{self, HoldFreedPages, SERVING_PURGE_DELAY_MS};

#[test]
#[cfg(target_os = "linux")]
fn tuning_turns_off_huge_pages_and_sets_the_purge_delay() {
    allocator::tune_for_latency().expect("prctl(PR_SET_THP_DISABLE) works on Linux");
    assert!(rustix::thread::transparent_huge_pages_are_disabled().expect("prctl"));
    assert_eq!(allocator::purge_delay_ms(), SERVING_PURGE_DELAY_MS);
    {
        let _hold = HoldFreedPages::start();
        assert_eq!(allocator::purge_delay_ms(), -1);
    }
    assert_eq!(allocator::purge_delay_ms(), SERVING_PURGE_DELAY_MS);
}
