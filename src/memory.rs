//! The process allocator of every program built on this library (the worker, its tests and
//! benchmarks), and how the worker's memory is backed by pages.

/// mimalloc. The feature dataflow allocates and frees feature vectors and message buffers at a
/// high rate across worker threads, where glibc's malloc took about a sixth of the feature
/// benchmark's CPU time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The variable with which mimalloc reads the operator's own choice of transparent huge pages.
const THP_VARIABLE: &str = "MIMALLOC_ALLOW_THP";

/// Turns transparent huge pages off for this process (Linux), unless the operator chose with
/// `MIMALLOC_ALLOW_THP` (mimalloc applied that choice when the process started).
///
/// mimalloc asks the kernel for huge pages for its arenas. A worker catching up (a backfill, a
/// restart) touches its memory for the first time in bursts: the changed series' feature
/// vectors, the scoring batches, the records of an advance. Each first touch of a huge page
/// then costs a 2 MiB fault, zeroed and, on a host whose memory is fragmented, compacted first;
/// profiles showed the kernel zeroing pages in about a fifth of the worker's samples. With 4 KiB
/// pages the `kafka` bench with the model made more events per CPU-second in 11 of 12
/// alternating pairs (up to 27% more). The dataflow alone, at steady state with its windows in memory, is about a
/// tenth slower without huge pages (fewer TLB hits); docs/benchmarks.md has both figures.
///
/// Returns whether they are off: false where the operator chose, or the kernel refused.
pub fn no_transparent_huge_pages() -> bool {
    if std::env::var_os(THP_VARIABLE).is_some() {
        return false;
    }
    disable_thp()
}

#[cfg(target_os = "linux")]
fn disable_thp() -> bool {
    // SAFETY: PR_SET_THP_DISABLE takes one integer argument and touches no memory of ours; the
    // unused arguments must be zero.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn disable_thp() -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn the_kernel_reports_huge_pages_off_after_the_call() {
        if std::env::var_os(super::THP_VARIABLE).is_some() {
            // The operator's choice stands; the call must leave it alone.
            assert!(!super::no_transparent_huge_pages());
            return;
        }
        assert!(super::no_transparent_huge_pages());
        // SAFETY: PR_GET_THP_DISABLE takes no argument besides zeros and returns the flag.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1);
    }
}
