//! `make bench`: one training epoch of `fit` on the real TCGA genomics tables (../shared, when
//! present): the genomics-only HDMoE on BRCA (PORPOISE mutsig, ~765 training patients per
//! fold) and BLCA (MCAT sig), fold 0 of the 5-fold splits, default settings (one optimiser step
//! per patient). The epoch's seconds are `history.csv`'s (training pass + validation), the
//! median over `HDMOE_BENCH_ROUNDS` fresh fits (default 3).
//!
//! Then **the official code as a peer** (issue #20's second target), when `HDMOE_BENCH_OFFICIAL`
//! names a checkout of github.com/ZJUMAI/HDMoE and `HDMOE_BENCH_TORCH_PYTHON` a Python with torch
//! and the packages `scripts/bench_fit_official.py` lists: one epoch of the official setting
//! (release preset, WSI + genomics, TCGA-BLCA fold 0, bags of 500 synthetic patches per slide,
//! the same files for both) by `fit` and by the official code (run.sh's arguments, shimmed only
//! where it cannot run on a CPU), in alternating rounds. Both sides' seconds are training pass +
//! validation (the official one as the script times its `Engine.train` + `Engine.validate`).

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// The training pass + validation seconds of a fit's first epoch (`history.csv`'s `seconds`
/// column, found by name: the baselines' loss columns come after it).
fn epoch_seconds(runs: &Path) -> f64 {
    let history = std::fs::read_to_string(runs.join("fold_0/history.csv")).expect("history");
    let mut lines = history.lines();
    let header = lines.next().expect("a header");
    let column = header
        .split(',')
        .position(|c| c == "seconds")
        .expect("a seconds column");
    let first = lines.next().expect("one epoch row");
    first
        .split(',')
        .nth(column)
        .and_then(|c| c.parse().ok())
        .expect("seconds value")
}

/// The overrides both sections share: the study's signatures and splits, one epoch of fold 0 on
/// the CPU, the cache under `scratch` and the run folder `runs`.
fn fold_0_epoch(shared: &Path, study: &str, scratch: &Path, runs: &Path) -> Vec<String> {
    vec![
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
        format!("paths.cache={}", scratch.join("cache").display()),
        format!("paths.runs={}", runs.display()),
        "train.epochs=1".into(),
        "train.folds=[0]".into(),
        "train.device=cpu".into(),
    ]
}

fn main() {
    hdmoe_pipe::memory::keep_large_blocks();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/data/tcga");
    let rounds: usize = std::env::var("HDMOE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(3);
    genomics_only(&shared, rounds);
    official_peer(root, &shared, rounds);
}

fn genomics_only(shared: &Path, rounds: usize) {
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
            let mut o = vec![
                format!("dataset.name=tcga_{study}_genomics"),
                "dataset.modalities=[genomics]".into(),
                format!("paths.cohort={}", shared.join(table).display()),
            ];
            o.extend(fold_0_epoch(shared, study, dir.path(), runs));
            o
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
            seconds.push(epoch_seconds(&runs));
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

/// The official setting, ours against the official code; see the header.
fn official_peer(root: &Path, shared: &Path, rounds: usize) {
    const PATCHES: usize = 500;
    println!();
    println!(
        "| fit epoch (CPU, {} threads), the official setting: release preset, WSI + genomics, BLCA fold 0, {PATCHES}-patch bags | training patients | hdmoe-pipe s / epoch | official code s / epoch | official / ours (target ≥ 2) | ours per round | official per round |",
        tch::get_num_threads()
    );
    println!("|---|---:|---:|---:|---:|---|---|");
    let cohort = shared.join("mcat_datasets_csv_sig/tcga_blca_all_clean.csv");
    let official = std::env::var_os("HDMOE_BENCH_OFFICIAL")
        .filter(|o| !o.is_empty())
        .map(PathBuf::from);
    let python = std::env::var("HDMOE_BENCH_TORCH_PYTHON").ok();
    let (official, python) = match (official, python) {
        _ if !cohort.exists() => {
            println!("| not run: no {} | | | | | | |", cohort.display());
            return;
        }
        (Some(o), Some(p)) => (o, p),
        _ => {
            println!("| not run: set HDMOE_OFFICIAL (make bench) or HDMOE_BENCH_OFFICIAL to a checkout of github.com/ZJUMAI/HDMoE, and HDMOE_BENCH_TORCH_PYTHON | | | | | | |");
            return;
        }
    };
    let script = root.join("scripts/bench_fit_official.py");
    let dir = tempfile::tempdir().expect("bench temp dir");
    let features = dir.path().join("features");
    let made = Command::new(&python)
        .arg(&script)
        .arg("--make-synthetic-features")
        .arg(PATCHES.to_string())
        .arg("--cohort")
        .arg(&cohort)
        .arg("--features")
        .arg(&features)
        .status()
        .expect("run the synthetic-features script");
    assert!(made.success(), "synthetic features: {made}");
    let overrides = |runs: &Path| -> Vec<String> {
        let mut o = vec![
            "dataset.name=tcga_blca_official_setting".into(),
            "dataset.modalities=[wsi, genomics]".into(),
            "model.preset=release".into(),
            // The official dataset drops the table's last gene column (its groups are
            // [94, 334, 521, 468, 1495, 479]); so does this run.
            "genomics.release_quirk=true".into(),
            format!("paths.cohort={}", cohort.display()),
            format!("paths.features={}", features.display()),
        ];
        o.extend(fold_0_epoch(shared, "blca", dir.path(), runs));
        o
    };
    let config = |runs: &Path| Config::load(None, &overrides(runs)).expect("bench config");
    genomics::run(&config(&dir.path().join("runs")), &Default::default()).expect("genomics stage");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut patients = 0;
    let mut failure = None;
    for round in 0..rounds {
        let runs = dir.path().join(format!("runs_{round}"));
        let report = train::run(&config(&runs), false).expect("fit");
        patients = report.folds[0].n_train;
        ours.push(epoch_seconds(&runs));
        if failure.is_some() {
            continue;
        }
        let out = Command::new(&python)
            .arg(&script)
            .arg("--official")
            .arg(&official)
            .arg("--cohort")
            .arg(&cohort)
            .arg("--signatures")
            .arg(shared.join("signatures.csv"))
            .arg("--splits")
            .arg(shared.join("splits/5foldcv/tcga_blca"))
            .arg("--features")
            .arg(&features)
            .arg("--work")
            .arg(dir.path().join("official"))
            .arg("--threads")
            .arg(tch::get_num_threads().to_string())
            .output()
            .expect("run the official-code script");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let seconds = stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .and_then(|v| v["epoch_s"][0].as_f64());
        match seconds {
            Some(s) if out.status.success() => theirs.push(s),
            _ => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                failure = Some(stderr.lines().last().unwrap_or("no output").to_owned());
            }
        }
    }
    let per_round = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{s:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mine = median(&mut ours.clone());
    match failure {
        Some(why) => println!(
            "| BLCA (MCAT sig) | {patients} | {mine:.1} | the official code failed: {why} | | {} | |",
            per_round(&ours)
        ),
        None => {
            let other = median(&mut theirs.clone());
            println!(
                "| BLCA (MCAT sig) | {patients} | {mine:.1} | {other:.1} | {:.2} | {} | {} |",
                other / mine,
                per_round(&ours),
                per_round(&theirs)
            );
        }
    }
}
