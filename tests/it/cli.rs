//! The binary as users run it: exit codes and messages for bad input.

use std::path::Path;
use std::process::{Command, Output};

fn hdmoe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hdmoe-pipe"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `report` on a predictions file with `text`; returns (output, out dir).
fn report_on(dir: &Path, text: &str) -> Output {
    let path = dir.join("predictions.csv");
    std::fs::write(&path, text).unwrap();
    hdmoe(&[
        "report",
        "--predictions",
        path.to_str().unwrap(),
        "--out",
        dir.join("out").to_str().unwrap(),
    ])
}

fn assert_fails_with(out: &Output, needles: &[&str]) {
    assert!(
        !out.status.success(),
        "expected failure, got {:?}",
        out.status
    );
    let err = stderr(out);
    for needle in needles {
        assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    }
}

const GOOD: &str =
    "case_id,fold,risk,survival_months,event\na,0,0.9,1,1\nb,0,0.5,2,1\nc,0,0.1,3,0\n";

#[test]
fn report_refuses_bad_predictions_with_file_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 7] = [
        ("", &["predictions.csv", "is empty"]),
        (
            "case_id,fold,risk,survival_months,event\n",
            &["no prediction rows"],
        ),
        (
            "case_id,fold,survival_months,event\na,0,1,1\n",
            &["predictions.csv", "required column `risk` is missing"],
        ),
        (
            "case_id,folds,risk,survival_months,event\na,0,0.5,1,1\n",
            &[
                "required column `fold` is missing",
                "columns found: case_id, folds",
            ],
        ),
        (
            "case_id,fold,risk,survival_months,event\na,0,0.5,1,1\nb,0,NaN,2,1\n",
            &["line 3, column `risk`", "not a finite number"],
        ),
        (
            "case_id,fold,risk,survival_months,event\na,x,0.5,1,1\n",
            &["line 2, column `fold`", "not a number"],
        ),
        (
            "case_id,fold,risk,survival_months,event\na,0,0.5,1,2\n",
            &["line 2, column `event`", "0 (censored) or 1 (event)"],
        ),
    ];
    for (text, needles) in cases {
        let out = report_on(dir.path(), text);
        assert_fails_with(&out, needles);
        assert!(
            !dir.path().join("out").join("cindex.csv").exists(),
            "nothing written for {text:?}"
        );
    }
}

#[test]
fn report_failure_leaves_an_earlier_report_intact() {
    let dir = tempfile::tempdir().unwrap();
    let out = report_on(dir.path(), GOOD);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = std::fs::read(dir.path().join("out/cindex.csv")).unwrap();
    let out = report_on(
        dir.path(),
        "case_id,fold,risk,survival_months,event\na,0,,1,1\n",
    );
    assert_fails_with(&out, &["column `risk`", "nothing was overwritten"]);
    assert_eq!(
        std::fs::read(dir.path().join("out/cindex.csv")).unwrap(),
        before
    );
}

#[test]
fn configuration_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("typo.yaml");
    std::fs::write(&yaml, "report: { ttest: both, riks_split: median }\n").unwrap();
    let out = hdmoe(&["config", "--config", yaml.to_str().unwrap()]);
    assert_fails_with(&out, &["typo.yaml", "`report.riks_split`", "unknown key"]);

    let out = hdmoe(&[
        "config",
        "--config",
        "pipelines/demo.yaml",
        "--set",
        "train.seed=-1",
    ]);
    assert_fails_with(&out, &["`train.seed`", "--set"]);

    let out = hdmoe(&[
        "cohort",
        "--config",
        "pipelines/demo.yaml",
        "--set",
        "paths.cohort=null",
    ]);
    assert_fails_with(&out, &["`paths.cohort` is not set"]);

    let out = hdmoe(&[
        "config",
        "--config",
        "pipelines/demo.yaml",
        "--set",
        "train.seed=7",
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("seed: 7"));
}

#[test]
fn cohort_command_summarises_the_demo_cohort() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.csv");
    let out = hdmoe(&[
        "cohort",
        "--config",
        "pipelines/demo.yaml",
        "--labels-out",
        labels.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("24 patients, 27 slides"), "{text}");
    assert!(text.contains("fold 2: 21 train / 3 val"), "{text}");
    let rows = std::fs::read_to_string(&labels).unwrap();
    assert_eq!(rows.lines().count(), 25);
    assert!(rows
        .starts_with("case_id,slide_ids,survival_months,censorship,event,time_bin,class,fold_0"));

    let out = hdmoe(&[
        "cohort",
        "--config",
        "pipelines/demo.yaml",
        "--set",
        "paths.cohort=missing.csv",
    ]);
    assert_fails_with(&out, &["missing.csv", "cannot read"]);
}

#[test]
fn genomics_command_writes_the_groups_and_reports_failures() {
    let dir = tempfile::tempdir().unwrap();
    let cache = format!("paths.cache={}", dir.path().display());
    let out = hdmoe(&[
        "genomics",
        "--config",
        "pipelines/demo.yaml",
        "--set",
        &cache,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("24 patients")
            && text.contains("transcription_factors")
            && text.contains("1496 columns"),
        "{text}"
    );
    let out = hdmoe(&[
        "genomics",
        "--config",
        "pipelines/demo.yaml",
        "--set",
        &cache,
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept (same parameters)"));

    // One patient with a blank gene value: the others are written, the exit code says so.
    let table = dir.path().join("cohort.csv");
    let original = std::fs::read_to_string("fixtures/tcga/blca_sig_24cases.csv").unwrap();
    let mut lines: Vec<String> = original.lines().map(str::to_owned).collect();
    let mut cells: Vec<String> = lines[5].split(',').map(str::to_owned).collect();
    let last = cells.len() - 1;
    cells[last].clear();
    lines[5] = cells.join(",");
    std::fs::write(&table, lines.join("\n") + "\n").unwrap();
    let cohort = format!("paths.cohort={}", table.display());
    let out = hdmoe(&[
        "genomics",
        "--config",
        "pipelines/demo.yaml",
        "--set",
        &cache,
        "--set",
        &cohort,
        "--force",
    ]);
    assert_fails_with(
        &out,
        &[
            "cohort.csv",
            "line 6, column `ZXDC_rnaseq`",
            "1 of 24 patients failed",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("23 patients"));
}

#[test]
fn every_command_has_help() {
    for command in [
        "config", "cohort", "genomics", "mri", "report", "doctor", "compare",
    ] {
        let out = hdmoe(&[command, "--help"]);
        assert!(out.status.success(), "{command} --help");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: hdmoe-pipe"));
    }
}

#[test]
fn every_shipped_pipeline_loads_and_plans_its_stages() {
    for (name, stages) in [
        (
            "demo",
            "tile features genomics fit external external_report report",
        ),
        ("demo_lc", "tile features mri fit report"),
        ("blca", "tile features genomics fit report"),
        ("brca", "tile features genomics fit report"),
        ("luad", "tile features genomics fit report"),
        ("lc", "tile features mri fit report"),
        ("blca_genomics", "genomics fit report"),
        ("brca_genomics", "genomics fit report"),
        ("luad_genomics", "genomics fit report"),
    ] {
        let file = format!("pipelines/{name}.yaml");
        let out = hdmoe(&["run", "--config", &file, "--plan"]);
        assert!(out.status.success(), "{file}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        let planned: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("stage "))
            .collect();
        assert_eq!(planned.join(" "), stages, "{file}");
        assert!(
            text.starts_with(&format!("run_dir runs/{name}\n")),
            "{file}: {text}"
        );
    }
}

#[test]
fn compare_refuses_an_unknown_model_and_a_study_it_cannot_run() {
    let out = hdmoe(&[
        "compare",
        "--config",
        "pipelines/demo.yaml",
        "--models",
        "snn,mcat_v2",
    ]);
    assert_fails_with(&out, &["unknown model `mcat_v2`", "maxmil"]);
    // A WSI-only system on a genomics-only study: nothing to train, and the reason.
    let dir = tempfile::tempdir().unwrap();
    let out = hdmoe(&[
        "compare",
        "--config",
        "pipelines/blca_genomics.yaml",
        "--models",
        "maxmil",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_fails_with(
        &out,
        &[
            "no system to compare",
            "blca_genomics / maxmil: a pathology-only baseline",
        ],
    );
}
