//! `make bench`: one training epoch of `fit` on the real TCGA genomics tables (../shared, when
//! present): the genomics-only HDMoE on BRCA (PORPOISE mutsig, ~765 training patients per
//! fold) and BLCA (MCAT sig), fold 0 of the 5-fold splits, default settings (one optimiser step
//! per patient). The epoch's seconds are `history.csv`'s (training pass + validation), the
//! median over `HDMOE_BENCH_ROUNDS` fresh fits (default 3).

use std::path::Path;

use hdmoe_pipe::config::Config;
use hdmoe_pipe::{genomics, train};

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/data/tcga");
    let rounds: usize = std::env::var("HDMOE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(3);
    println!(
        "| fit epoch (CPU, {} threads), genomics-only HDMoE, fold 0 | training patients | median s / epoch | per round | target |",
        tch::get_num_threads()
    );
    println!("|---|---:|---:|---|---|");
    let studies = [
        (
            "BRCA (PORPOISE mutsig)",
            "brca",
            "porpoise_datasets_csv_mutsig/tcga_brca_all_clean.csv",
            "≤ 20 s (issue #20; 78.6 s before)",
        ),
        (
            "BLCA (MCAT sig)",
            "blca",
            "mcat_datasets_csv_sig/tcga_blca_all_clean.csv",
            "",
        ),
    ];
    for (label, study, table, target) in studies {
        if !shared.join(table).exists() {
            println!(
                "| {label} | | | not run: no {} | |",
                shared.join(table).display()
            );
            continue;
        }
        let dir = tempfile::tempdir().expect("bench temp dir");
        let overrides = |runs: &Path| -> Vec<String> {
            vec![
                format!("dataset.name=tcga_{study}_genomics"),
                "dataset.modalities=[genomics]".into(),
                format!("paths.cohort={}", shared.join(table).display()),
                format!(
                    "paths.signatures={}",
                    shared.join("signatures.csv").display()
                ),
                format!(
                    "paths.splits={}",
                    shared
                        .join(format!("splits/5foldcv/tcga_{study}"))
                        .display()
                ),
                format!("paths.cache={}", dir.path().join("cache").display()),
                format!("paths.runs={}", runs.display()),
                "train.epochs=1".into(),
                "train.folds=[0]".into(),
                "train.device=cpu".into(),
            ]
        };
        let config = |runs: &Path| Config::load(None, &overrides(runs)).expect("bench config");
        genomics::run(&config(&dir.path().join("runs")), &Default::default())
            .expect("genomics stage");
        let mut seconds = Vec::new();
        let mut patients = 0;
        for round in 0..rounds {
            let runs = dir.path().join(format!("runs_{round}"));
            let report = train::run(&config(&runs), false).expect("fit");
            patients = report.folds[0].n_train;
            let history =
                std::fs::read_to_string(runs.join("fold_0/history.csv")).expect("history");
            let last = history.lines().nth(1).expect("one epoch row");
            let s: f64 = last
                .rsplit(',')
                .next()
                .and_then(|c| c.parse().ok())
                .expect("seconds column");
            seconds.push(s);
        }
        let per_round = seconds
            .iter()
            .map(|s| format!("{s:.1}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "| {label} | {patients} | {:.1} | {per_round} | {target} |",
            median(&mut seconds)
        );
    }
}
