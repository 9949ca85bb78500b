//! Progress of a long stage: a bar (items, rate, time left) on stderr when it is a terminal,
//! otherwise a plain log line every 30 s (so short runs stay quiet), nothing under `--quiet`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Called once by the CLI for `--quiet`.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    last_log: Instant,
}

impl Progress {
    pub fn new(label: impl Into<String>, total: usize) -> Self {
        let label = label.into();
        let quiet = QUIET.load(Ordering::Relaxed);
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total as u64);
            let style =
                ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message(label.clone());
            bar
        });
        Self {
            label,
            total: total as u64,
            done: 0,
            bar,
            started: Instant::now(),
            last_log: Instant::now(),
        }
    }

    pub fn inc(&mut self) {
        self.done += 1;
        if let Some(bar) = &self.bar {
            bar.inc(1);
            return;
        }
        if QUIET.load(Ordering::Relaxed) || self.total == 0 {
            return;
        }
        if self.last_log.elapsed() > Duration::from_secs(30) {
            let elapsed = self.started.elapsed().as_secs_f64();
            let rate = self.done as f64 / elapsed.max(1e-9);
            let left = (self.total - self.done) as f64 / rate.max(1e-9);
            tracing::info!(
                "{}: {}/{} ({:.2}/s, about {:.0} s left)",
                self.label,
                self.done,
                self.total,
                rate,
                left
            );
            self.last_log = Instant::now();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
