//! The bad-input corpus, end to end through the binary: each bad item gets a message naming the
//! file and the problem, the good items complete, the exit status is non-zero with a summary,
//! and nothing is left half-written.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn hdmoe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hdmoe-pipe"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A genomics-only configuration in `dir` with the given cohort and splits.
fn genomics_config(dir: &Path, cohort: &Path, splits: &Path, extra: &str) -> PathBuf {
    let config = dir.join("bad.yaml");
    std::fs::write(
        &config,
        format!(
            "dataset: {{ name: bad, modalities: [genomics] }}\n\
             paths:\n  cohort: {}\n  signatures: {}\n  splits: {}\n  cache: {}\n  runs: {}\n\
             train: {{ folds: [0, 1], epochs: 1 }}\n{extra}",
            cohort.display(),
            common::fixture("tcga/signatures.csv").display(),
            splits.display(),
            dir.join("cache").display(),
            dir.join("runs").display(),
        ),
    )
    .unwrap();
    config
}

fn read_manifest(path: &Path) -> Vec<(String, String, String)> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[0].to_owned(), r[1].to_owned(), r[3].to_owned())
        })
        .collect()
}

#[test]
fn bad_slides_fail_alone_and_the_run_completes_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let slides = dir.path().join("slides");
    std::fs::create_dir_all(&slides).unwrap();
    for entry in std::fs::read_dir(common::fixture("demo/slides")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, slides.join(path.file_name().unwrap())).unwrap();
    }
    for bad in ["truncated.svs", "not_a_slide.svs", "nompp.tif", "blank.svs"] {
        std::fs::copy(common::fixture(&format!("slides/{bad}")), slides.join(bad)).unwrap();
    }
    std::fs::write(slides.join("empty.svs"), b"").unwrap();
    // A TIFF header followed by garbage.
    let mut corrupt = b"II*\x00\x08\x00\x00\x00".to_vec();
    corrupt.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    std::fs::write(slides.join("corrupt.svs"), corrupt).unwrap();

    let config = dir.path().join("run.yaml");
    std::fs::write(
        &config,
        format!(
            "dataset: {{ name: badslides, modalities: [wsi, genomics] }}\n\
             paths:\n  slides: {}\n  cohort: {}\n  signatures: {}\n  splits: {}\n  cache: {}\n  runs: {}\n\
             tile: {{ preset: biopsy, a_t: 0.25 }}\n\
             features: {{ random_weights: true, device: cpu }}\n\
             train: {{ folds: [0, 1], epochs: 1 }}\n",
            slides.display(),
            common::fixture("tcga/blca_sig_24cases.csv").display(),
            common::fixture("tcga/signatures.csv").display(),
            common::fixture("demo/splits").display(),
            dir.path().join("cache").display(),
            dir.path().join("runs").display(),
        ),
    )
    .unwrap();
    let out = hdmoe(&["run", "--config", config.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let summary = err.lines().last().unwrap();
    assert!(
        summary.contains("2 of 5 stages did not complete cleanly")
            && summary.contains("tile (some items failed")
            && summary.contains("features (some items failed"),
        "{summary}"
    );

    let cache = dir.path().join("cache");
    let tile = read_manifest(&cache.join("tile_manifest.csv"));
    let row = |id: &str| tile.iter().find(|r| r.0 == id).unwrap().clone();
    for (id, status, words) in [
        ("truncated", "failed", vec!["truncated.svs"]),
        ("not_a_slide", "failed", vec!["not_a_slide.svs"]),
        ("empty", "failed", vec!["empty.svs"]),
        ("corrupt", "failed", vec!["corrupt.svs"]),
        ("nompp", "failed", vec!["nompp.tif", "--mpp"]),
        ("blank", "no tissue", vec!["blank.svs", "no tissue"]),
    ] {
        let (_, got_status, message) = row(id);
        assert_eq!(got_status, status, "{id}: {message}");
        for w in words {
            assert!(message.contains(w), "{id}: `{w}` not in: {message}");
        }
    }
    // Already on the biopsy preset: the hint does not suggest it again.
    assert!(
        !row("blank").2.contains("tile.preset: biopsy"),
        "{}",
        row("blank").2
    );
    // Every good slide was tiled and encoded; no partial file anywhere.
    let done = tile.iter().filter(|r| r.1 == "done").count();
    assert_eq!(done, 27);
    let features: Vec<_> = std::fs::read_dir(cache.join("features"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(features.len(), 27, "{features:?}");
    assert!(features
        .iter()
        .all(|f| f.starts_with("TCGA-") && f.ends_with(".h5")));

    // The run went on to fit and report, and the report lists every failure.
    let runs = dir.path().join("runs");
    assert!(runs.join("predictions.csv").is_file());
    let report = std::fs::read_to_string(runs.join("report/report.md")).unwrap();
    let failures = report.split("### Failures").nth(1).unwrap();
    for id in [
        "truncated",
        "not_a_slide",
        "empty",
        "corrupt",
        "nompp",
        "blank",
    ] {
        assert!(failures.contains(&format!("| tile | {id} |")), "{id}");
    }
    let stages = std::fs::read_to_string(runs.join("stages.csv")).unwrap();
    assert!(stages.contains("tile,some items failed"), "{stages}");
    assert!(stages.contains("fit,ok"), "{stages}");
    // The rest of the run's account: versions, stage times, routing, the configuration; and
    // the HTML page carries the same, with the plot inside it.
    for section in [
        "| openslide | ",
        "| hdf5 | ",
        "### Stages",
        "### Expert routing",
        "| level2_fusion | ",
        "### Configuration",
        "name: badslides",
    ] {
        assert!(
            report.contains(section),
            "`{section}` missing from report.md"
        );
    }
    let html = std::fs::read_to_string(runs.join("report/report.html")).unwrap();
    assert!(html.contains("<h3>Failures</h3>") && html.contains("<td>corrupt</td>"));
    assert!(html.contains("src=\"data:image/png;base64,"));
}

/// Rewrites the demo cohort table with `edit` applied to its lines (header = line 1).
fn edited_cohort(dir: &Path, edit: impl Fn(usize, &str) -> Option<String>) -> PathBuf {
    let text = std::fs::read_to_string(common::fixture("tcga/blca_sig_24cases.csv")).unwrap();
    let lines: Vec<String> = text
        .lines()
        .enumerate()
        .filter_map(|(i, l)| edit(i + 1, l))
        .collect();
    let path = dir.join("cohort.csv");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// The demo's cohort with one cell of line `line` (1-based) in `column` replaced.
fn with_cell(dir: &Path, line: usize, column: &str, value: &str) -> PathBuf {
    let text = std::fs::read_to_string(common::fixture("tcga/blca_sig_24cases.csv")).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let at = header.iter().position(|h| *h == column).unwrap();
    edited_cohort(dir, |i, l| {
        if i != line {
            return Some(l.to_owned());
        }
        let mut cells: Vec<String> = l.split(',').map(str::to_owned).collect();
        cells[at] = value.to_owned();
        Some(cells.join(","))
    })
}

/// `run` on a bad table stops at the first stage that reads it: a message naming the file and
/// the place, the later stages "not run", no predictions.
fn assert_run_fails(config: &Path, dir: &Path, words: &[&str]) {
    let out = hdmoe(&["run", "--config", config.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for w in words {
        assert!(err.contains(w), "`{w}` not in:\n{err}");
    }
    // genomics reads the gene columns only; fit is the first to read the labels.
    let stages = std::fs::read_to_string(dir.join("runs/stages.csv")).unwrap();
    assert!(stages.contains("fit,failed"), "{stages}");
    assert!(stages.contains("report,not run"), "{stages}");
    assert!(!dir.join("runs/predictions.csv").exists());
}

#[test]
fn bad_tables_stop_the_run_with_the_place_named() {
    let splits = common::fixture("demo/splits");
    // Missing column.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(common::fixture("tcga/blca_sig_24cases.csv")).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let drop = header.iter().position(|h| *h == "survival_months").unwrap();
    let cohort = edited_cohort(dir.path(), |_, l| {
        let mut cells: Vec<&str> = l.split(',').collect();
        cells.remove(drop);
        Some(cells.join(","))
    });
    let config = genomics_config(dir.path(), &cohort, &splits, "");
    assert_run_fails(&config, dir.path(), &["cohort.csv", "survival_months"]);

    // NaN survival time.
    let dir = tempfile::tempdir().unwrap();
    let cohort = with_cell(dir.path(), 5, "survival_months", "NaN");
    let config = genomics_config(dir.path(), &cohort, &splits, "");
    assert_run_fails(
        &config,
        dir.path(),
        &["cohort.csv", "line 5", "survival_months"],
    );

    // The same case on two slide rows with different survival.
    let dir = tempfile::tempdir().unwrap();
    let cohort = with_cell(dir.path(), 4, "survival_months", "99.5");
    let config = genomics_config(dir.path(), &cohort, &splits, "");
    assert_run_fails(
        &config,
        dir.path(),
        &["cohort.csv: line 4", "TCGA-2F-A9KP", "on line 3"],
    );

    // A split naming a case the cohort does not have.
    let dir = tempfile::tempdir().unwrap();
    let bad_splits = dir.path().join("splits");
    std::fs::create_dir_all(&bad_splits).unwrap();
    for k in 0..5 {
        let name = format!("splits_{k}.csv");
        let text = std::fs::read_to_string(splits.join(&name)).unwrap();
        let text = if k == 1 {
            text.replacen("TCGA-2F-A9KO", "TCGA-XX-0000", 1)
        } else {
            text
        };
        std::fs::write(bad_splits.join(&name), text).unwrap();
    }
    let cohort = common::fixture("tcga/blca_sig_24cases.csv");
    let config = genomics_config(dir.path(), &cohort, &bad_splits, "");
    let out = hdmoe(&["run", "--config", config.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("splits_1.csv") && err.contains("TCGA-XX-0000"),
        "{err}"
    );
    assert!(!dir.path().join("runs/predictions.csv").exists());
}

#[test]
fn yaml_typos_and_wrong_types_name_the_key_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cohort = common::fixture("tcga/blca_sig_24cases.csv");
    let splits = common::fixture("demo/splits");
    for (extra, words) in [
        ("tile: { presett: tcga }\n", vec!["tile.presett", "unknown"]),
        (
            "features: { batch_size: many }\n",
            vec!["features.batch_size", "invalid type"],
        ),
        (
            "report: { risk_split: mean_ish }\n",
            vec!["report.risk_split", "mean_ish"],
        ),
    ] {
        let config = genomics_config(dir.path(), &cohort, &splits, extra);
        let out = hdmoe(&["run", "--config", config.to_str().unwrap()]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("bad.yaml"), "{err}");
        for w in words {
            assert!(err.contains(w), "`{w}` not in: {err}");
        }
        assert!(!dir.path().join("runs").exists(), "nothing may run");
    }
}

#[test]
fn a_mask_that_does_not_match_its_volume_fails_that_case_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cohort = common::fixture("tcga/blca_sig_24cases.csv");
    let splits = common::fixture("demo/splits");
    let mri = dir.path().join("mri");
    let config = genomics_config(
        dir.path(),
        &cohort,
        &splits,
        "mri: { random_weights: true, device: cpu, output_size: [16, 16, 8] }\n",
    );
    // paths.mri through --set: the YAML above has no such key.
    let set = format!("paths.mri={}", mri.display());
    let c = config.to_str().unwrap();
    let source = common::fixture("mri/nibabel_anatomical.nii");
    let out = hdmoe(&[
        "demo-mri",
        "--config",
        c,
        "--set",
        &set,
        "--source",
        source.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // One case's mask on another grid.
    let functional = common::fixture("mri/nibabel_functional.nii");
    std::fs::remove_file(mri.join("TCGA-2F-A9KQ/mask.nii.gz")).unwrap();
    std::fs::copy(&functional, mri.join("TCGA-2F-A9KQ/mask.nii")).unwrap();
    let out = hdmoe(&["mri", "--config", c, "--set", &set]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let manifest = read_manifest(&dir.path().join("cache/mri_manifest.csv"));
    let bad: Vec<_> = manifest.iter().filter(|r| r.1 == "failed").collect();
    assert_eq!(bad.len(), 1, "{manifest:?}");
    assert_eq!(bad[0].0, "TCGA-2F-A9KQ");
    assert!(bad[0].2.contains("mask.nii"), "{}", bad[0].2);
    assert_eq!(manifest.iter().filter(|r| r.1 == "done").count(), 23);
    assert!(err.contains("1 of 24 cases failed"), "{err}");
}

/// A small filesystem for the output: read-only, or full. Needs root (mount); skipped otherwise.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, options: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| Mount(at.to_owned()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_or_read_only_output_folder_is_a_clear_error_and_nothing_is_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let cohort = common::fixture("tcga/blca_sig_24cases.csv");
    let splits = common::fixture("demo/splits");
    let cache = dir.path().join("cache");
    let config = genomics_config(dir.path(), &cohort, &splits, "");
    let genomics = || hdmoe(&["genomics", "--config", config.to_str().unwrap()]);

    // Full: 64 KiB cannot hold genomics.h5 (every gene column of 24 patients).
    if let Some(full) = Mount::tmpfs(&cache, "size=64k") {
        let out = genomics();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("genomics.h5"), "{err}");
        let left: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            left.iter().all(|f| !f.contains("genomics.h5")),
            "half-written output left: {left:?}"
        );
        drop(full);
    } else {
        eprintln!("full-disk case skipped: cannot mount a tmpfs here (needs root)");
    }

    // Read-only: a read-only mount as root (permissions do not stop root), else chmod.
    let read_only = Mount::tmpfs(&cache, "ro,size=64k");
    if read_only.is_none() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let out = genomics();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&cache.display().to_string())
            && (err.contains("Read-only") || err.contains("Permission denied")),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
}
