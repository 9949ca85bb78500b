//! libtorch's random generator is one per process: whoever seeds it and then relies on what it
//! draws (an encoder's seeded random weights, a fit's initialisation and dropout masks) holds
//! this lock for that whole span, so stages run side by side in one process (the tests do)
//! still get their seed's numbers. The command line runs one stage per process, where the
//! lock is never contended.

use std::sync::{Mutex, MutexGuard};

static GENERATOR: Mutex<()> = Mutex::new(());

/// Holds libtorch's global generator until the guard is dropped.
pub fn lock() -> MutexGuard<'static, ()> {
    GENERATOR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
