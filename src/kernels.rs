//! The training kernels as they were before the speed work (issue #20), kept so that a test can
//! train both ways in one process and compare: the tensor-form Adam, the dense Nyström attention
//! for fewer tokens than landmarks, its product taken left to right, and libtorch's own dropout
//! (`model::dropout` draws the same masks in blocks). One process, because
//! libtorch's dropout stream depends on the CPU (MKL's generator on Intel, its own elsewhere), so
//! values recorded on one machine cannot be reproduced on every other.
//!
//! The switch is per thread: `fit` trains and evaluates on the thread that calls it.

use std::cell::Cell;

thread_local! {
    static REFERENCE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the reference kernels on this thread.
pub fn with_reference<T>(f: impl FnOnce() -> T) -> T {
    let before = REFERENCE.with(|r| r.replace(true));
    let out = f();
    REFERENCE.with(|r| r.set(before));
    out
}

/// Whether this thread runs the reference kernels.
pub(crate) fn reference() -> bool {
    REFERENCE.with(Cell::get)
}
