//! Opt-in wall-clock phases of a training step, for `make bench`'s fit profile. The models
//! wrap their parts in [`phase`]; unless a profile is being recorded on this thread that is one
//! thread-local check, so training pays nothing for it.
//!
//! On a CUDA device the work is asynchronous: the recorder synchronises the device at each
//! phase's end, so a phase is charged with the kernels it queued.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use tch::Device;

struct Recorder {
    device: Device,
    /// Phases in the order first seen, with their total time.
    phases: Vec<(&'static str, Duration)>,
}

thread_local! {
    static RECORDER: RefCell<Option<Recorder>> = const { RefCell::new(None) };
}

/// Starts recording on this thread (work on `device`); phases add up until [`take`].
pub fn start(device: Device) {
    RECORDER.with(|r| {
        *r.borrow_mut() = Some(Recorder {
            device,
            phases: Vec::new(),
        })
    });
}

/// Stops recording and returns each phase's total time, in first-seen order.
pub fn take() -> Vec<(&'static str, Duration)> {
    RECORDER.with(|r| r.borrow_mut().take().map(|r| r.phases).unwrap_or_default())
}

fn synchronise(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Runs `f`, charging its time to `name` when a profile is being recorded. Phases may nest:
/// the outer one then includes the inner one.
pub fn phase<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    let device = RECORDER.with(|r| r.borrow().as_ref().map(|r| r.device));
    let Some(device) = device else {
        return f();
    };
    synchronise(device);
    let started = Instant::now();
    let out = f();
    synchronise(device);
    let elapsed = started.elapsed();
    RECORDER.with(|r| {
        if let Some(r) = r.borrow_mut().as_mut() {
            match r.phases.iter_mut().find(|(n, _)| *n == name) {
                Some((_, total)) => *total += elapsed,
                None => r.phases.push((name, elapsed)),
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_only_while_recording() {
        phase("ignored", || std::thread::sleep(Duration::from_millis(1)));
        start(Device::Cpu);
        for _ in 0..2 {
            phase("a", || std::thread::sleep(Duration::from_millis(2)));
        }
        let x = phase("b", || 7);
        assert_eq!(x, 7);
        let phases = take();
        assert_eq!(
            phases.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(phases[0].1 >= Duration::from_millis(4));
        assert!(take().is_empty(), "take stops the recording");
    }
}
