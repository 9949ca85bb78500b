//! `make bench`: survival statistics throughput. Prints a Markdown table of medians.
//!
//! Synthetic cohorts (seeded): exponential event and censoring times (about 40 % censored),
//! a continuous risk score correlated with the hazard, and a tenth of the times rounded to
//! create ties.

use std::hint::black_box;
use std::time::Instant;

use hdmoe_pipe::survival::{concordance_index, kaplan_meier, logrank_test};

struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        // xorshift64*: enough for benchmark data.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Cohort {
    time: Vec<f64>,
    event: Vec<bool>,
    risk: Vec<f64>,
}

fn cohort(n: usize, seed: u64) -> Cohort {
    let mut rng = Rng(seed);
    let (mut time, mut event, mut risk) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let r = rng.uniform() * 2.0 - 1.0;
        let t_event = -(1.0 - rng.uniform()).ln() * 60.0 * (-r).exp();
        let t_censor = -(1.0 - rng.uniform()).ln() * 90.0;
        let mut t = t_event.min(t_censor);
        if i % 10 == 0 {
            t = t.round();
        }
        time.push(t);
        event.push(t_event <= t_censor);
        risk.push(r + 0.3 * rng.uniform());
    }
    Cohort { time, event, risk }
}

/// Median wall time in seconds of `reps` runs.
fn median_seconds(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[reps / 2]
}

fn main() {
    println!("| statistic | n | runs | median seconds | samples / s |");
    println!("|---|---:|---:|---:|---:|");
    let mut cindex_times = Vec::new();
    for (n, reps) in [(1_000, 51), (10_000, 21), (100_000, 9), (1_000_000, 5)] {
        let c = cohort(n, 42);
        let s = median_seconds(reps, || {
            black_box(concordance_index(&c.time, &c.event, &c.risk).unwrap());
        });
        cindex_times.push((n, s));
        println!("| C-index | {n} | {reps} | {s:.6} | {:.3e} |", n as f64 / s);
    }
    let n = 1_000_000;
    let c = cohort(n, 7);
    let s = median_seconds(5, || {
        black_box(kaplan_meier(&c.time, &c.event, 0.95).unwrap());
    });
    println!("| Kaplan–Meier | {n} | 5 | {s:.6} | {:.3e} |", n as f64 / s);
    let half = n / 2;
    let s = median_seconds(5, || {
        black_box(
            logrank_test(
                &c.time[..half],
                &c.event[..half],
                &c.time[half..],
                &c.event[half..],
            )
            .unwrap(),
        );
    });
    println!("| log-rank | {n} | 5 | {s:.6} | {:.3e} |", n as f64 / s);

    let t5 = cindex_times[2].1;
    let t6 = cindex_times[3].1;
    println!();
    println!(
        "C-index time ratio n=1e6 / n=1e5: {:.2} (n log n predicts {:.2}; target < 15)",
        t6 / t5,
        10.0 * (1e6f64).ln() / (1e5f64).ln()
    );
    println!("C-index at n=1e6: {t6:.3} s (target: well under 1 s)");
}
