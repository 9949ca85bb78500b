//! Keeps the memory of freed tensors in the process instead of handing it back to the kernel.
//!
//! libtorch allocates CPU tensors with `posix_memalign`, and glibc serves every block above its
//! mmap threshold (128 KiB at start) with a fresh `mmap` and returns it with `munmap` on free;
//! freed heap memory above the trim threshold is also returned. A training step allocates and
//! frees the same large activations and gradients every time, so each step faulted in every
//! page again: ~2.5 µs per 4 KiB page, i.e. an outer product of 1024 × 1496 floats took 8 ms
//! instead of 0.2 ms, and one genomics-only SNN forward + backward 16 ms instead of 8 ms
//! (`benches/fit.rs`'s profile shows the whole step). PyTorch pays the same unless the user sets
//! glibc's tunables; we set them for the process: blocks up to glibc's largest allowed mmap
//! threshold (32 MiB on 64-bit) come from the heap, and the heap is not trimmed, so its pages
//! stay mapped between steps. Peak memory is unchanged; what a step freed is reused by the
//! next. A user who sets `GLIBC_TUNABLES` with malloc keys keeps their own choice.

/// Applies the settings above (once per process is enough; later calls change nothing). Returns
/// whether they were applied: false off glibc, or when `GLIBC_TUNABLES` sets malloc keys.
pub fn keep_freed_memory() -> bool {
    let user_chose = std::env::var("GLIBC_TUNABLES")
        .map(|t| t.contains("glibc.malloc."))
        .unwrap_or(false);
    !user_chose && apply()
}

/// For training (`fit`, `compare`): also serves the blocks above glibc's 32 MiB cap from the
/// heap (`M_MMAP_MAX = 0`), so that they too stay mapped between steps. A bag of 20 000 patches
/// has many activations and gradients of 20–80 MB; mmapped afresh every step, they made page
/// faults ~8 % of the step. `benches/fit.rs` at 1k/5k/20k patches: the 20k-patch step 0.90–1.07
/// → 0.79 s, peak RSS 1.86 → 2.16 GB (freed blocks wait in the heap for the next step's; a
/// request that the main heap cannot hold, in another thread's arena, is still mmapped). Not for
/// the other stages, whose peak memory is budgeted. Same conditions as [`keep_freed_memory`].
pub fn keep_large_blocks() -> bool {
    keep_freed_memory() && apply_large()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply_large() -> bool {
    // SAFETY: as in `apply`.
    unsafe { libc::mallopt(libc::M_MMAP_MAX, 0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply_large() -> bool {
    false
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    /// glibc's cap on the mmap threshold on 64-bit targets (`DEFAULT_MMAP_THRESHOLD_MAX`).
    const MMAP_THRESHOLD: i32 = 32 << 20;
    // SAFETY: mallopt only changes allocator parameters; it is thread-safe in glibc.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}
