//! Opt-in wall-clock phases of a training step, for `make bench`'s fit profile and for
//! `HDMOE_PROFILE=1 hdmoe-pipe fit` (each epoch's phases in the log). The models
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
    /// Phases open now (only the outermost is recorded).
    depth: usize,
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
            depth: 0,
        })
    });
}

/// Stops recording and returns each phase's total time, in first-seen order.
pub fn take() -> Vec<(&'static str, Duration)> {
    RECORDER.with(|r| r.borrow_mut().take().map(|r| r.phases).unwrap_or_default())
}

/// Whether the user asked `fit` for a profile of every epoch (`HDMOE_PROFILE=1`).
pub fn requested() -> bool {
    std::env::var_os("HDMOE_PROFILE").is_some_and(|v| !v.is_empty() && v != "0")
}

/// The phases as an aligned text table, each with its share of `total` (the wall time they were
/// recorded in), and last the time no phase covers.
pub fn table(phases: &[(&'static str, Duration)], total: Duration) -> String {
    let total_s = total.as_secs_f64().max(f64::MIN_POSITIVE);
    let outside = "(outside every phase)";
    let width = phases
        .iter()
        .map(|(n, _)| n.len())
        .chain([outside.len()])
        .max()
        .unwrap_or(0);
    let covered: f64 = phases.iter().map(|(_, t)| t.as_secs_f64()).sum();
    phases
        .iter()
        .map(|(name, t)| (*name, t.as_secs_f64()))
        .chain([(outside, (total_s - covered).max(0.0))])
        .map(|(name, seconds)| {
            format!(
                "  {name:<width$} {seconds:>9.3} s {:>5.1} %\n",
                100.0 * seconds / total_s
            )
        })
        .collect()
}

fn synchronise(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Runs `f`, charging its time to `name` when a profile is being recorded. Phases do not
/// nest: inside a phase, inner phases are not recorded (the outer one is charged with all of
/// it), so the phases of a recording never overlap and add up to at most the wall time.
pub fn phase<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    let device = RECORDER.with(|r| {
        let mut r = r.borrow_mut();
        let r = r.as_mut()?;
        r.depth += 1;
        (r.depth == 1).then_some(r.device)
    });
    let Some(device) = device else {
        let out = f();
        RECORDER.with(|r| {
            if let Some(r) = r.borrow_mut().as_mut() {
                r.depth -= 1;
            }
        });
        return out;
    };
    synchronise(device);
    let started = Instant::now();
    let out = f();
    synchronise(device);
    let elapsed = started.elapsed();
    RECORDER.with(|r| {
        if let Some(r) = r.borrow_mut().as_mut() {
            r.depth -= 1;
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
        // Inner phases are the outer one's time, not recorded beside it.
        start(Device::Cpu);
        phase("outer", || {
            phase("inner", || std::thread::sleep(Duration::from_millis(1)))
        });
        phase("inner", || ());
        let phases = take();
        assert_eq!(
            phases.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["outer", "inner"]
        );
        assert!(phases[0].1 >= Duration::from_millis(1) && phases[1].1 < phases[0].1);
        let text = table(&phases, Duration::from_millis(10));
        assert!(
            text.contains("outer") && text.contains("(outside every phase)"),
            "{text}"
        );
    }
}
