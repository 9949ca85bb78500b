//! kill -9 every stage at random moments, several times, then rerun it: every output must be
//! identical to an uninterrupted run's (checksums; timing columns and manifests' keep/redo
//! status aside).
//!
//! Stages: tile, features, genomics, demo-mri (writing the MRI cases), mri, fit, report.
//! `cargo test --test it chaos::` runs the fast version (6 demo slides, 2 folds, 3 epochs, two kills
//! per stage). `make chaos` sets HDMOE_CHAOS_FULL=1: the whole demo cohort (27 slides, 5 folds)
//! and five kills per stage.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

fn full() -> bool {
    std::env::var_os("HDMOE_CHAOS_FULL").is_some()
}

/// A demo-like configuration whose cache and runs live in `dir`.
fn write_config(dir: &Path) -> PathBuf {
    let slides_dir = common::fixture("demo/slides");
    let mut names: Vec<String> = std::fs::read_dir(&slides_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if !full() {
        names.truncate(6);
    }
    let list = dir.join("slides.csv");
    let mut text = String::from("slide_id\n");
    for n in &names {
        text.push_str(&format!("{}\n", slides_dir.join(n).display()));
    }
    std::fs::write(&list, text).unwrap();
    let (folds, epochs) = if full() {
        ("[0, 1, 2, 3, 4]", 4)
    } else {
        ("[0, 1]", 3)
    };
    let config = dir.join("chaos.yaml");
    std::fs::write(
        &config,
        format!(
            "dataset: {{ name: chaos, modalities: [genomics] }}\n\
             paths:\n  slides: {list}\n  cohort: {cohort}\n  signatures: {sig}\n  splits: {splits}\n  \
             cache: {cache}\n  runs: {runs}\n  mri: {mri}\n\
             tile: {{ preset: biopsy, a_t: 0.25 }}\n\
             features: {{ random_weights: true, device: cpu, batch_size: 16 }}\n\
             mri: {{ random_weights: true, device: cpu, output_size: [24, 24, 12] }}\n\
             train: {{ seed: 3, folds: {folds}, epochs: {epochs} }}\n",
            list = list.display(),
            cohort = common::fixture("tcga/blca_sig_24cases.csv").display(),
            sig = common::fixture("tcga/signatures.csv").display(),
            splits = common::fixture("demo/splits").display(),
            cache = dir.join("cache").display(),
            runs = dir.join("runs").display(),
            mri = dir.join("mri").display(),
        ),
    )
    .unwrap();
    config
}

/// The stages in order (fit genomics-only: the few slides of the fast version cover few
/// patients; tile and features are still killed and checked).
fn stages(config: &Path, dir: &Path) -> Vec<Vec<String>> {
    let c = config.display().to_string();
    let runs = dir.join("runs");
    let mut list = vec![
        vec!["tile".into(), "--config".into(), c.clone()],
        vec!["features".into(), "--config".into(), c.clone()],
        vec!["genomics".into(), "--config".into(), c.clone()],
        vec![
            "demo-mri".into(),
            "--config".into(),
            c.clone(),
            "--source".into(),
            common::fixture("mri/nibabel_anatomical.nii")
                .display()
                .to_string(),
        ],
        vec!["mri".into(), "--config".into(), c.clone()],
        vec!["fit".into(), "--config".into(), c.clone()],
    ];
    list.push(vec![
        "report".into(),
        "--config".into(),
        c,
        "--predictions".into(),
        runs.join("predictions.csv").display().to_string(),
        "--out".into(),
        runs.join("report").display().to_string(),
    ]);
    list
}

fn command(args: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hdmoe-pipe"));
    cmd.arg("-q")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn run_to_end(args: &[String]) -> f64 {
    let start = Instant::now();
    let out = command(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed().as_secs_f64()
}

/// Starts the stage and SIGKILLs it after `after`; returns whether it was still running.
fn kill_after(args: &[String], after: Duration) -> bool {
    let mut child = command(args).spawn().unwrap();
    let deadline = Instant::now() + after;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let running = child.try_wait().unwrap().is_none();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    running
}

/// Every output file's checksum, with what legitimately differs between runs taken out:
/// timing columns of CSV files, and in manifests whether an item was kept or redone.
fn checksums(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.strip_prefix(root).unwrap().display().to_string();
            let bytes = std::fs::read(&path).unwrap();
            let content = if name.ends_with(".csv") {
                canonical_csv(
                    &String::from_utf8_lossy(&bytes),
                    name.ends_with("_manifest.csv"),
                )
                .into_bytes()
            } else {
                bytes
            };
            out.insert(name, hdmoe_pipe::cache::hex(&Sha256::digest(&content)));
        }
    }
    out
}

fn canonical_csv(text: &str, manifest: bool) -> String {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes());
    let rows: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    let Some(header) = rows.first() else {
        return String::new();
    };
    let keep: Vec<usize> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| {
            let timing = h.contains("seconds");
            let keep_or_redo_note = manifest && h.as_str() == "message";
            !timing && !keep_or_redo_note
        })
        .map(|(i, _)| i)
        .collect();
    rows.iter()
        .map(|row| {
            keep.iter()
                .map(|&i| {
                    let cell = row.get(i).map_or("", String::as_str);
                    if manifest && cell == "skipped" {
                        "done"
                    } else {
                        cell
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn killed_stages_rerun_to_identical_outputs() {
    let reference = tempfile::tempdir().unwrap();
    let config = write_config(reference.path());
    let mut durations = Vec::new();
    for args in stages(&config, reference.path()) {
        durations.push(run_to_end(&args));
    }
    let want = checksums(&reference.path().join("cache"));
    let want_mri = checksums(&reference.path().join("mri"));
    assert!(want.keys().any(|k| k.starts_with("mri/")), "{want:?}");
    let want_runs = checksums(&reference.path().join("runs"));
    assert!(want.keys().any(|k| k.starts_with("features/")), "{want:?}");
    assert!(want_runs.contains_key("predictions.csv"), "{want_runs:?}");

    let chaos = tempfile::tempdir().unwrap();
    let config = write_config(chaos.path());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0xC4A05);
    let kills = if full() { 5 } else { 2 };
    let mut interrupted = 0;
    for (args, duration) in stages(&config, chaos.path()).iter().zip(&durations) {
        for _ in 0..kills {
            // Moments spread over the stage's uninterrupted run time.
            let at = duration * rng.random_range(0.05..0.95);
            if kill_after(args, Duration::from_secs_f64(at)) {
                interrupted += 1;
            }
        }
        run_to_end(args);
    }
    println!(
        "{interrupted} of {} kills landed while a stage ran",
        kills * durations.len()
    );
    assert!(
        interrupted >= kills * 3,
        "only {interrupted} kills landed while a stage ran"
    );
    // Outputs are named by their folder, so the two runs' paths do not matter, except in
    // files that record them: the report names its predictions file.
    let got = checksums(&chaos.path().join("cache"));
    let got_runs = checksums(&chaos.path().join("runs"));
    assert_eq!(got, want, "cache differs after kills");
    assert_eq!(
        checksums(&chaos.path().join("mri")),
        want_mri,
        "demo-mri's cases differ after kills"
    );
    let differing: Vec<&String> = want_runs
        .keys()
        .filter(|k| {
            !k.ends_with("report.md") && !k.ends_with("report.html") && !k.ends_with("config.yaml")
        })
        .filter(|k| got_runs.get(*k) != want_runs.get(*k))
        .collect();
    assert!(
        differing.is_empty(),
        "run outputs differ after kills: {differing:?}"
    );
    assert_eq!(got_runs.len(), want_runs.len());
}
