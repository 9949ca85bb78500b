//! `predict --run`: a run's models applied to a new cohort (issue #18): on the run's own
//! validation patients it equals fit's out-of-fold predictions; the fold ensemble and the final
//! model score a cohort with the frozen training cutoff; features made another way and missing
//! genomic columns are refused with the file and the names, or filled when asked.

use std::path::Path;

use hdmoe_pipe::train::{self, predict::Ensemble};

use crate::fit::{synthetic, ONE_FIT_AT_A_TIME};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `case_id → line` of a predictions CSV, and its header.
fn rows(path: &Path) -> (String, std::collections::BTreeMap<String, Vec<String>>) {
    let text = read(path);
    let mut lines = text.lines();
    let header = lines.next().unwrap().to_owned();
    let rows = lines
        .map(|l| {
            let f: Vec<String> = l.split(',').map(str::to_owned).collect();
            (f[0].clone(), f)
        })
        .collect();
    (header, rows)
}

/// The cohort table with only the rows `keep` accepts and without the columns in `drop`.
fn subset_table(from: &Path, to: &Path, keep: impl Fn(&str) -> bool, drop: &[&str]) {
    let text = read(from);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let kept: Vec<usize> = (0..header.len())
        .filter(|&i| !drop.contains(&header[i]))
        .collect();
    let pick = |f: &[&str]| kept.iter().map(|&i| f[i]).collect::<Vec<_>>().join(",");
    let mut out = pick(&header) + "\n";
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        if keep(f[1]) {
            out += &(pick(&f) + "\n");
        }
    }
    std::fs::write(to, out).unwrap();
}

#[test]
fn one_fold_model_on_its_validation_patients_equals_fits_predictions() {
    let _one = ONE_FIT_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(&dir.path().join("train"), 40, false, true);
    let settings = [
        "train.epochs=2",
        "train.folds=[1]",
        "model.rfr_eval=identity",
    ];
    let config = data.config(&settings);
    train::run(&config, false).unwrap();
    let run = data.dir.join("runs");
    // Fold 1 validates on the odd patients (tests/it/fit.rs's splits).
    let new_dir = dir.path().join("new");
    std::fs::create_dir_all(&new_dir).unwrap();
    let table = new_dir.join("cohort.csv");
    subset_table(
        &data.dir.join("cohort.csv"),
        &table,
        |case| case[1..].parse::<usize>().unwrap() % 2 == 1,
        &[],
    );
    let new_config = data.config(
        &[
            &settings[..],
            &[
                &format!("paths.cohort={}", table.display()),
                &format!("paths.runs={}", new_dir.join("runs").display()),
            ],
        ]
        .concat(),
    );
    let report =
        train::predict::run_deployed(&new_config, &run, Ensemble::Folds, false, None).unwrap();
    assert_eq!(report.models, 1);
    assert_eq!(report.patients, 20);
    let (_, fit) = rows(&run.join("predictions.csv"));
    let (header, ours) = rows(&report.output);
    assert!(
        header.ends_with("survival_3,risk_sd,risk_group,models,risk_cutoff"),
        "{header}"
    );
    assert_eq!(ours.len(), 20);
    let cutoff: f64 = {
        let deploy: serde_json::Value =
            serde_json::from_str(&read(&run.join("deploy.json"))).unwrap();
        deploy["cutoffs"]["folds"].as_f64().unwrap()
    };
    for (case, f) in &ours {
        let want = &fit[case];
        // One model: the same risk and hazards as fit's out-of-fold row, byte for byte.
        assert_eq!(f[2..7], want[2..7], "{case}: risk and hazards");
        assert_eq!(f[15], "0", "{case}: one model has no spread");
        let risk: f64 = f[2].parse().unwrap();
        assert_eq!(f[16], if risk >= cutoff { "high" } else { "low" });
        assert_eq!(f[18].parse::<f64>().unwrap(), cutoff, "{case}: the cutoff");
    }
}

#[test]
fn fold_ensemble_and_final_model_score_a_new_cohort_and_refuse_what_differs() {
    let _one = ONE_FIT_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(&dir.path().join("train"), 40, false, true);
    let settings = ["train.epochs=2", "train.final=true", "train.final_epochs=1"];
    let config = data.config(&settings);
    train::run(&config, false).unwrap();
    let run = data.dir.join("runs");
    let deploy: serde_json::Value = serde_json::from_str(&read(&run.join("deploy.json"))).unwrap();
    let names: Vec<&str> = deploy["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fold_0", "fold_1", "final"]);
    assert_eq!(deploy["models"][2]["epochs"], 1);
    assert!(run.join("final/model.safetensors").is_file());
    assert_eq!(deploy["time_bin_edges"].as_array().unwrap().len(), 5);

    // A new cohort: the first 30 patients, its table without gene G5 (so its own genomics.h5
    // lacks that column), the same slide features.
    let new_dir = dir.path().join("new");
    std::fs::create_dir_all(&new_dir).unwrap();
    let table = new_dir.join("cohort.csv");
    subset_table(
        &data.dir.join("cohort.csv"),
        &table,
        |case| case[1..].parse::<usize>().unwrap() < 30,
        &["G5_rnaseq"],
    );
    let new_overrides = |extra: &[&str]| {
        let mut all: Vec<String> = vec![
            format!("paths.cohort={}", table.display()),
            format!("paths.cache={}", new_dir.join("cache").display()),
            format!(
                "paths.features={}",
                data.dir.join("cache/features").display()
            ),
            format!("paths.runs={}", new_dir.join("runs").display()),
        ];
        all.extend(extra.iter().map(|s| s.to_string()));
        data.config(&all.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let new_config = new_overrides(&[]);
    hdmoe_pipe::genomics::run(&new_config, &Default::default()).unwrap();
    let missing = train::predict::run_deployed(&new_config, &run, Ensemble::Folds, false, None)
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("genomics.h5")
            && missing.contains("G5_rnaseq")
            && missing.contains("predict.missing_columns"),
        "{missing}"
    );
    let filled = new_overrides(&["predict.missing_columns=median"]);
    let folds = train::predict::run_deployed(&filled, &run, Ensemble::Folds, false, None).unwrap();
    assert_eq!((folds.models, folds.patients), (2, 30));
    let (_, rows_folds) = rows(&folds.output);
    for (case, f) in &rows_folds {
        let risk: f64 = f[2].parse().unwrap();
        let s: f64 = f[11..15].iter().map(|v| v.parse::<f64>().unwrap()).sum();
        // The models' risks are float32: −Σ S up to their rounding.
        assert!((s + risk).abs() < 1e-6, "{case}: risk = −Σ S");
        let sd: f64 = f[15].parse().unwrap();
        assert!(sd >= 0.0);
        assert_eq!(f[17], "2");
    }
    // Two different models disagree somewhere.
    assert!(rows_folds
        .values()
        .any(|f| f[15].parse::<f64>().unwrap() > 0.0));
    // The same patients without survival labels: the same scores, the label columns blank; a
    // table with one label column and not the other is refused; a report has nothing to compare.
    let unlabelled_table = new_dir.join("unlabelled.csv");
    subset_table(
        &table,
        &unlabelled_table,
        |_| true,
        &["survival_months", "censorship"],
    );
    let unlabelled_config = |table: &Path, out: &str| {
        let mut config = filled.clone();
        config.paths.cohort = Some(table.to_owned());
        (config, new_dir.join(out))
    };
    let (config, out) = unlabelled_config(&unlabelled_table, "unlabelled");
    let scored =
        train::predict::run_deployed(&config, &run, Ensemble::Folds, false, Some(&out)).unwrap();
    let (_, rows_unlabelled) = rows(&scored.output);
    assert_eq!(rows_unlabelled.len(), 30);
    for (case, f) in &rows_unlabelled {
        let want = &rows_folds[case];
        assert_eq!(
            (f[7].as_str(), f[8].as_str()),
            ("", ""),
            "{case}: no labels"
        );
        assert_ne!(want[7], "", "{case}: the labelled table's time");
        assert_eq!(f[2], want[2], "{case}: the same risk");
        assert_eq!(f[16], want[16], "{case}: the same group");
    }
    let unscored = hdmoe_pipe::report::predictions::Predictions::read(&scored.output)
        .unwrap_err()
        .to_string();
    assert!(
        unscored.contains("predictions.csv") && unscored.contains("no survival labels"),
        "{unscored}"
    );
    let half_table = new_dir.join("half.csv");
    subset_table(&table, &half_table, |_| true, &["censorship"]);
    let (config, out) = unlabelled_config(&half_table, "half");
    let half = train::predict::run_deployed(&config, &run, Ensemble::Folds, false, Some(&out))
        .unwrap_err()
        .to_string();
    assert!(
        half.contains("half.csv") && half.contains("`censorship`"),
        "{half}"
    );

    let final_model =
        train::predict::run_deployed(&filled, &run, Ensemble::Final, false, None).unwrap();
    assert_eq!(final_model.models, 1);
    assert_eq!(
        final_model.cutoff,
        deploy["cutoffs"]["final"].as_f64().unwrap()
    );

    // Features recorded as made by one encoder in training, another (or none) here.
    let mut edited = deploy.clone();
    edited["features"] = serde_json::json!({"encoder": "resnet50_trunc"});
    std::fs::write(run.join("deploy.json"), edited.to_string()).unwrap();
    let unrecorded = train::predict::run_deployed(&filled, &run, Ensemble::Folds, false, None)
        .unwrap_err()
        .to_string();
    assert!(
        unrecorded.contains("S000.h5")
            && unrecorded
                .contains("encoder: trained on resnet50_trunc, this file does not record it"),
        "{unrecorded}"
    );
    let file = hdf5::File::open_rw(data.dir.join("cache/features/S000.h5")).unwrap();
    hdmoe_pipe::cache::write_str_attr(&file, "encoder", "uni_v1").unwrap();
    drop(file);
    let other = train::predict::run_deployed(&filled, &run, Ensemble::Folds, false, None)
        .unwrap_err()
        .to_string();
    assert!(
        other.contains("trained on resnet50_trunc, this file uni_v1"),
        "{other}"
    );
    // Tiled at another magnification (the features stage copies the patches' target mpp).
    edited["features"] = serde_json::json!({"target_mpp": "0.5", "patch_size": "256"});
    std::fs::write(run.join("deploy.json"), edited.to_string()).unwrap();
    let file = hdf5::File::open_rw(data.dir.join("cache/features/S000.h5")).unwrap();
    hdmoe_pipe::cache::write_str_attr(&file, "target_mpp", "0.25").unwrap();
    hdmoe_pipe::cache::write_str_attr(&file, "patch_size", "256").unwrap();
    drop(file);
    let magnification = train::predict::run_deployed(&filled, &run, Ensemble::Folds, false, None)
        .unwrap_err()
        .to_string();
    assert!(
        magnification.contains("S000.h5")
            && magnification.contains("target_mpp: trained on 0.5, this file 0.25")
            && !magnification.contains("patch_size"),
        "{magnification}"
    );
    // The refused runs left the earlier predictions as they were.
    assert_eq!(rows(&folds.output).1, rows_folds);
}

#[test]
fn held_out_patients_take_no_part_in_training_and_are_scored_apart() {
    let _one = ONE_FIT_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(&dir.path().join("train"), 40, false, true);
    let held = ["P003", "P010", "P021", "P036"];
    let holdout = format!("train.holdout=[{}]", held.join(", "));
    let config = data.config(&["train.epochs=1", &holdout]);
    train::run(&config, false).unwrap();
    let run = data.dir.join("runs");
    let (_, oof) = rows(&run.join("predictions.csv"));
    assert_eq!(oof.len(), 36);
    assert!(held.iter().all(|c| !oof.contains_key(*c)));
    let excluded = read(&run.join("excluded.csv"));
    assert!(
        held.iter()
            .all(|c| excluded.contains(&format!("{c},\"held out"))),
        "{excluded}"
    );
    // The fold models score exactly the held-out patients.
    let report = train::predict::run_deployed(&config, &run, Ensemble::Folds, true, None).unwrap();
    let (_, scored) = rows(&report.output);
    assert_eq!(scored.keys().cloned().collect::<Vec<_>>(), held);
    // A case id the table does not have is refused before anything trains.
    let typo = data.config(&["train.epochs=1", "train.holdout=[P999]"]);
    let e = train::run(&typo, true).unwrap_err().to_string();
    assert!(
        e.contains("train.holdout") && e.contains("P999") && e.contains("cohort.csv"),
        "{e}"
    );
    // A run without a holdout has nothing to score with --holdout.
    let plain_dir = dir.path().join("plain");
    let plain = synthetic(&plain_dir, 20, false, false);
    let plain_config = plain.config(&["train.epochs=1"]);
    train::run(&plain_config, false).unwrap();
    let e = train::predict::run_deployed(
        &plain_config,
        &plain.dir.join("runs"),
        Ensemble::Folds,
        true,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("holds no patient out"), "{e}");
}
