//! Running our own CPU loops on libtorch's OpenMP threads instead of a second thread pool.
//!
//! After each of libtorch's parallel regions its OpenMP worker keeps spinning for a while,
//! waiting for the next one. A second pool (rayon) started right after a backward pass has its
//! threads compete with that spinning worker for the same two cores: the fused Adam pass ran
//! ~30 % slower that way than on the team libtorch already keeps (official setting, 2 cores:
//! Adam 3.4 s -> 2.6 s per epoch when the spin is cut short). Handing the work to the same
//! team (`GOMP_parallel`, found in the process's libgomp at run time) leaves one set of threads.
//! Where libtorch was built without libgomp (no such symbol loaded), callers fall back to rayon.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// `void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags)`.
type GompParallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, u32, u32);

fn gomp_parallel() -> Option<GompParallel> {
    static FOUND: OnceLock<Option<GompParallel>> = OnceLock::new();
    *FOUND.get_or_init(|| {
        // Safety: a lookup in the already-loaded objects; the symbol, when present, is libgomp's
        // entry point with the signature above (GCC's OpenMP ABI, stable since GCC 4.9).
        let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"GOMP_parallel".as_ptr()) };
        (!symbol.is_null())
            .then(|| unsafe { std::mem::transmute::<*mut c_void, GompParallel>(symbol) })
    })
}

/// Whether work can be handed to libtorch's OpenMP team in this process.
pub fn available() -> bool {
    gomp_parallel().is_some()
}

struct Job<'a> {
    next: AtomicUsize,
    items: usize,
    work: &'a (dyn Fn(usize) + Sync),
    panicked: AtomicBool,
}

extern "C" fn run_job(data: *mut c_void) {
    // Safety: `data` is the `Job` that `for_each` keeps alive until GOMP_parallel returns.
    let job = unsafe { &*(data as *const Job) };
    loop {
        let item = job.next.fetch_add(1, Ordering::Relaxed);
        if item >= job.items {
            break;
        }
        // A panic must not unwind through libgomp's C frames.
        if catch_unwind(AssertUnwindSafe(|| (job.work)(item))).is_err() {
            job.panicked.store(true, Ordering::Relaxed);
            break;
        }
    }
}

/// Runs `work(i)` for every `i` in `0..items` on `threads` OpenMP threads (the calling thread
/// among them), items handed out one at a time; returns false, having run nothing, when no
/// libgomp is loaded. Panics after the region when any item panicked.
pub fn for_each(items: usize, threads: usize, work: &(dyn Fn(usize) + Sync)) -> bool {
    let Some(parallel) = gomp_parallel() else {
        return false;
    };
    let job = Job {
        next: AtomicUsize::new(0),
        items,
        work,
        panicked: AtomicBool::new(false),
    };
    let threads = threads.clamp(1, items.max(1)) as u32;
    // Safety: `run_job` only reads `job`, which outlives the region (GOMP_parallel returns after
    // every thread of the team has finished it).
    unsafe { parallel(run_job, &job as *const Job as *mut c_void, threads, 0) };
    assert!(
        !job.panicked.load(Ordering::Relaxed),
        "a task on the OpenMP team panicked"
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once_on_the_team() {
        // libtorch (and so libgomp) is loaded by any tensor operation.
        let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
        assert!(available(), "libtorch's libgomp should be loaded");
        let counts: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        assert!(for_each(counts.len(), 2, &|i| {
            counts[i].fetch_add(1, Ordering::Relaxed);
        }));
        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        // No items is a no-op, not a hang.
        assert!(for_each(0, 2, &|_| unreachable!()));
    }
}
