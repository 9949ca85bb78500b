//! `fit` on synthetic cohorts: a planted signal is learnt, shuffled labels are not, the fused
//! WSI + genomics model runs end to end, and a killed fit resumes to identical predictions.

use std::path::{Path, PathBuf};
use std::process::Command;

use hdmoe_pipe::config::Config;
use hdmoe_pipe::train;
use rand::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp1, StandardNormal};

pub(crate) struct Synthetic {
    pub(crate) dir: PathBuf,
    overrides: Vec<String>,
}

/// `n` patients with 8 genes in two groups (and, with `wsi`, one slide of 16-d patch features
/// per patient); the true risk is gene 0 + gene 1 − gene 5 (+ the patches' mean), survival
/// exponential with that log-hazard, 30 % censored; two folds.
pub(crate) fn synthetic(root: &Path, n: usize, shuffle_labels: bool, wsi: bool) -> Synthetic {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let dir = root.to_owned();
    let cache = dir.join("cache");
    std::fs::create_dir_all(cache.join("features")).unwrap();
    let genes: Vec<Vec<f64>> = (0..n)
        .map(|_| (0..8).map(|_| StandardNormal.sample(&mut rng)).collect())
        .collect();
    let mut patch_signal = vec![0.0; n];
    if wsi {
        for (i, s) in patch_signal.iter_mut().enumerate() {
            let patches = 12 + (i % 9);
            *s = StandardNormal.sample(&mut rng);
            let mut x = ndarray::Array2::<f32>::zeros((patches, 16));
            for p in 0..patches {
                for d in 0..16 {
                    let noise: f64 = StandardNormal.sample(&mut rng);
                    x[[p, d]] = (noise + if d < 4 { *s } else { 0.0 }) as f32;
                }
            }
            let file =
                hdf5::File::create(cache.join("features").join(format!("S{i:03}.h5"))).unwrap();
            file.new_dataset_builder()
                .with_data(&x)
                .create("features")
                .unwrap();
        }
    }
    let mut labels: Vec<(f64, u8)> = (0..n)
        .map(|i| {
            let g = &genes[i];
            let risk = g[0] + g[1] - g[5] + patch_signal[i];
            let e: f64 = Exp1.sample(&mut rng);
            let time = 30.0 * e * (-risk).exp() + 0.1;
            (time, u8::from(rng.random::<f64>() < 0.3))
        })
        .collect();
    if shuffle_labels {
        labels.shuffle(&mut rng);
    }
    let mut csv = String::from(",case_id,slide_id,survival_months,censorship");
    for g in 0..8 {
        csv.push_str(&format!(",G{g}_rnaseq"));
    }
    csv.push('\n');
    for i in 0..n {
        csv.push_str(&format!(
            "{i},P{i:03},S{i:03}.svs,{},{}",
            labels[i].0, labels[i].1
        ));
        for g in &genes[i] {
            csv.push_str(&format!(",{g}"));
        }
        csv.push('\n');
    }
    std::fs::write(dir.join("cohort.csv"), csv).unwrap();
    std::fs::write(
        dir.join("signatures.csv"),
        "A,B\nG0,G4\nG1,G5\nG2,G6\nG3,G7\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("splits")).unwrap();
    for k in 0..2 {
        let (train, val): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| i % 2 != k);
        let mut text = String::from(",train,val\n");
        for r in 0..train.len().max(val.len()) {
            let cell = |v: &Vec<usize>| v.get(r).map_or(String::new(), |i| format!("P{i:03}"));
            text.push_str(&format!("{r},{},{}\n", cell(&train), cell(&val)));
        }
        std::fs::write(dir.join("splits").join(format!("splits_{k}.csv")), text).unwrap();
    }
    let modalities = if wsi { "[wsi, genomics]" } else { "[genomics]" };
    let overrides = vec![
        format!("dataset.modalities={modalities}"),
        format!("paths.cohort={}", dir.join("cohort.csv").display()),
        format!("paths.signatures={}", dir.join("signatures.csv").display()),
        format!("paths.splits={}", dir.join("splits").display()),
        format!("paths.cache={}", cache.display()),
        format!("paths.runs={}", dir.join("runs").display()),
        "train.folds=[0, 1]".into(),
        "train.device=cpu".into(),
        "model.dim=32".into(),
        "model.heads=2".into(),
        "model.landmarks=8".into(),
        "model.token_length=16".into(),
    ];
    let synthetic = Synthetic { dir, overrides };
    hdmoe_pipe::genomics::run(&synthetic.config(&[]), &Default::default()).unwrap();
    synthetic
}

impl Synthetic {
    pub(crate) fn config(&self, extra: &[&str]) -> Config {
        let mut all = self.overrides.clone();
        all.extend(extra.iter().map(|s| s.to_string()));
        Config::load(None, &all).unwrap()
    }
}

/// libtorch's random generator is global: fits in one process must not overlap, or their
/// dropout masks interleave (the CLI runs one fit per process).
pub(crate) static ONE_FIT_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn mean_last(report: &train::FitReport) -> f64 {
    report.folds.iter().map(|f| f.c_last).sum::<f64>() / report.folds.len() as f64
}

#[test]
fn a_planted_genomic_signal_is_learnt_and_shuffled_labels_are_not() {
    let _one = ONE_FIT_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let planted = synthetic(&dir.path().join("planted"), 120, false, false);
    // Oracle C-index of the true risk on this cohort: 0.83; the model reaches about 0.68.
    let report = train::run(
        &planted.config(&["train.epochs=12", "train.lr=3e-3"]),
        false,
    )
    .unwrap();
    let c = mean_last(&report);
    assert!(
        c > 0.62,
        "planted signal: last-epoch validation C-index {c}"
    );

    let shuffled = synthetic(&dir.path().join("shuffled"), 120, true, false);
    let report = train::run(
        &shuffled.config(&["train.epochs=12", "train.lr=3e-3"]),
        false,
    )
    .unwrap();
    let c = mean_last(&report);
    assert!(
        (c - 0.5).abs() < 0.12,
        "shuffled labels: validation C-index {c}"
    );

    // The SNN baseline learns the planted signal too.
    let snn = planted.config(&["train.epochs=10", "train.lr=2e-3", "model.architecture=snn"]);
    let report = train::run(&snn, true).unwrap();
    assert!(mean_last(&report) > 0.65, "SNN: {}", mean_last(&report));
}

#[test]
fn folds_trained_in_separate_runs_equal_one_run_over_all_folds() {
    let _one = ONE_FIT_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(&dir.path().join("separate"), 40, false, false);
    let runs = data.dir.join("runs");
    let together = data.dir.join("together");
    let epochs = "train.epochs=2";
    // Each fold on its own (as a Slurm array over folds would), then one run over both.
    for fold in ["train.folds=[1]", "train.folds=[0]"] {
        train::run(&data.config(&[epochs, fold]), false).unwrap();
    }
    let fold_1 = read(&runs.join("fold_1/val_predictions.csv"));
    let trained_at = std::fs::metadata(runs.join("fold_1/history.csv"))
        .and_then(|m| m.modified())
        .unwrap();
    let collected = train::run(&data.config(&[epochs]), false).unwrap();
    assert_eq!(collected.folds.len(), 2);
    assert_eq!(
        std::fs::metadata(runs.join("fold_1/history.csv"))
            .and_then(|m| m.modified())
            .unwrap(),
        trained_at,
        "the separately trained fold is kept, not retrained"
    );
    let whole = format!("paths.runs={}", together.display());
    train::run(&data.config(&[epochs, &whole]), false).unwrap();
    assert_eq!(read(&together.join("fold_1/val_predictions.csv")), fold_1);
    assert_eq!(
        read(&together.join("predictions.csv")),
        read(&runs.join("predictions.csv"))
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn fused_model_writes_every_output_and_resumes_exactly_after_a_kill() {
    let _one = ONE_FIT_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(&dir.path().join("fused"), 60, false, true);
    let epochs = ["train.epochs=5", "train.selection=nested"];
    let report = train::run(&data.config(&epochs), false).unwrap();
    let runs = data.dir.join("runs");
    assert_eq!(report.folds.len(), 2);
    for f in &report.folds {
        assert!(f.c_nested.is_some());
        assert!(f.c_best >= f.c_last);
    }
    let history = read(&runs.join("fold_0/history.csv"));
    assert_eq!(history.lines().count(), 6);
    assert!(
        history
            .lines()
            .nth(1)
            .unwrap()
            .split(',')
            .nth(4)
            .unwrap()
            .parse::<f64>()
            .unwrap()
            != 0.0,
        "decoupling loss recorded"
    );
    let routing = read(&runs.join("fold_0/routing.csv"));
    assert!(routing.contains("level2_fusion"));
    let summary = read(&runs.join("summary.csv"));
    assert!(
        summary.starts_with("fold,n_train,n_val,selection,c_index,epoch,c_index_last,c_index_best")
    );
    assert!(
        runs.join("fold_1/model.safetensors").is_file()
            && !runs.join("fold_1/state.safetensors").exists()
    );
    let predictions = read(&runs.join("predictions.csv"));
    assert_eq!(
        predictions.lines().count(),
        61,
        "every patient predicted once, out of fold"
    );

    // The report stage reads the run's predictions and summary.
    let outputs = hdmoe_pipe::report::run(
        &hdmoe_pipe::report::ReportArgs {
            predictions: runs.join("predictions.csv"),
            out: runs.join("report"),
            summary: None,
            run: None,
            cache: None,
        },
        &Default::default(),
    )
    .unwrap();
    assert!(outputs.files.iter().any(|f| f.ends_with("km.png")));
    assert!(read(&runs.join("report/cindex.csv")).contains("c_index_best_epoch"));
    assert!(
        read(&runs.join("report/report.md")).contains("chosen on a slice of the training split")
    );

    // A rerun keeps the finished folds.
    let again = train::run(&data.config(&epochs), false).unwrap();
    assert_eq!(read(&runs.join("predictions.csv")), predictions);
    assert_eq!(again.folds[0].c_last, report.folds[0].c_last);

    // Killed part-way (after its first epoch's state is saved), then rerun: same predictions.
    let second = data.dir.join("runs_killed");
    let mut args: Vec<String> = vec!["fit".into()];
    for o in data.overrides.iter().chain(
        epochs
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .iter(),
    ) {
        args.push("--set".into());
        args.push(o.clone());
    }
    args.push("--set".into());
    args.push(format!("paths.runs={}", second.display()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_hdmoe-pipe"))
        .args(&args)
        .spawn()
        .unwrap();
    let state = second.join("fold_0/state.safetensors");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut killed = false;
    while std::time::Instant::now() < deadline {
        if state.is_file() {
            child.kill().unwrap();
            killed = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let _ = child.wait();
    assert!(killed, "the fit finished before it could be killed");
    let status = Command::new(env!("CARGO_BIN_EXE_hdmoe-pipe"))
        .args(&args)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        read(&second.join("predictions.csv")),
        predictions,
        "resumed run differs"
    );
    assert_eq!(read(&second.join("fold_0/history.csv")).lines().count(), 6);
}

#[test]
fn wsi_plus_mri_and_mri_alone_train() {
    let _one = ONE_FIT_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(&dir.path().join("mri"), 30, false, true);
    // Five sequences × 8-d MRI features per case, as the mri stage writes them.
    let mri_dir = data.dir.join("cache/mri");
    std::fs::create_dir_all(&mri_dir).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for i in 0..30 {
        let x = ndarray::Array2::<f32>::from_shape_fn((5, 8), |_| rng.random::<f32>());
        let file = hdf5::File::create(mri_dir.join(format!("P{i:03}.h5"))).unwrap();
        file.new_dataset_builder()
            .with_data(&x)
            .create("features")
            .unwrap();
    }
    for modalities in ["dataset.modalities=[wsi, mri]", "dataset.modalities=[mri]"] {
        let report = train::run(&data.config(&[modalities, "train.epochs=2"]), true).unwrap();
        assert_eq!(report.folds.len(), 2, "{modalities}");
        assert!(
            report.folds.iter().all(|f| f.c_last.is_finite()),
            "{modalities}"
        );
    }
    // A patient without MRI features is left out and listed.
    std::fs::remove_file(mri_dir.join("P007.h5")).unwrap();
    let report = train::run(
        &data.config(&["dataset.modalities=[mri]", "train.epochs=1"]),
        true,
    )
    .unwrap();
    assert_eq!(report.excluded.len(), 1);
    assert!(read(&data.dir.join("runs/excluded.csv")).contains("P007"));
}

/// A CLAM or TRIDENT `h5_files/` folder (`features` and `coords` only, none of our attributes)
/// named as `paths.features` is used by fit directly, with no tile or features stage.
#[test]
fn clam_h5_files_folder_is_used_as_the_features_cache() {
    let _one = ONE_FIT_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(&dir.path().join("clam"), 24, false, true);
    let h5_files = dir.path().join("CLAM_output/h5_files");
    std::fs::create_dir_all(h5_files.parent().unwrap()).unwrap();
    std::fs::rename(data.dir.join("cache/features"), &h5_files).unwrap();
    for entry in std::fs::read_dir(&h5_files).unwrap() {
        let file = hdf5::File::open_rw(entry.unwrap().path()).unwrap();
        let n = file.dataset("features").unwrap().shape()[0];
        let coords = ndarray::Array2::<i64>::from_shape_fn((n, 2), |(i, j)| (i * 512 + j) as i64);
        file.new_dataset_builder()
            .with_data(&coords)
            .create("coords")
            .unwrap();
    }
    let set = format!("paths.features={}", h5_files.display());
    let report = train::run(&data.config(&["train.epochs=1", &set]), false).unwrap();
    assert_eq!(report.folds.len(), 2);
    assert_eq!(report.folds.iter().map(|f| f.n_val).sum::<usize>(), 24);
    assert!(
        !data.dir.join("runs/excluded.csv").exists()
            || read(&data.dir.join("runs/excluded.csv")).lines().count() <= 1
    );
}

/// `predict` with fit's model.safetensors and `--fold` reproduces fit's own validation
/// predictions of the last epoch (same weights, genomics scaler refitted on the fold's training
/// patients, nested slice left out as fit leaves it out); a partial or mis-shaped state dict is
/// refused with every offending name.
#[test]
fn predict_reproduces_fits_validation_predictions_and_refuses_wrong_checkpoints() {
    let _one = ONE_FIT_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(&dir.path().join("predict"), 40, false, true);
    let settings = [
        "train.epochs=2",
        "model.rfr_eval=identity",
        "train.selection=nested",
    ];
    let config = data.config(&settings);
    train::run(&config, false).unwrap();
    let runs = data.dir.join("runs");
    let checkpoint = runs.join("fold_1/model.safetensors");
    let out = dir.path().join("out");
    let report = train::predict::run(&config, &checkpoint, Some(1), Some(&out)).unwrap();
    let fit_rows: std::collections::HashMap<String, f64> =
        read(&runs.join("fold_1/val_predictions.csv"))
            .lines()
            .skip(1)
            .filter(|l| l.starts_with("1,"))
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[1].to_owned(), f[2].parse().unwrap())
            })
            .collect();
    let predicted = read(&report.output);
    let mut lines = predicted.lines();
    assert_eq!(
        lines.next().unwrap(),
        "case_id,fold,risk,hazard_0,hazard_1,hazard_2,hazard_3,survival_months,event,epoch,selection,survival_0,survival_1,survival_2,survival_3"
    );
    let mut n = 0;
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let risk: f64 = f[2].parse().unwrap();
        assert_eq!(risk, fit_rows[f[0]], "{}: risk", f[0]);
        // −Σ S = risk.
        let s: f64 = f[11..15].iter().map(|v| v.parse::<f64>().unwrap()).sum();
        assert!((s + risk).abs() < 1e-6);
        n += 1;
    }
    assert_eq!(n, fit_rows.len());
    assert_eq!(n, 20);

    // A state dict with one parameter missing and one of another shape.
    let mut tensors: Vec<(String, tch::Tensor)> =
        tch::Tensor::read_safetensors(&checkpoint).unwrap();
    tensors.retain(|(name, _)| name != "emb1.bias");
    for (name, t) in tensors.iter_mut() {
        if name == "classifier.weight" {
            *t = tch::Tensor::zeros([4, 7], (tch::Kind::Float, tch::Device::Cpu));
        }
    }
    tensors.push((
        "extra.weight".into(),
        tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu)),
    ));
    let bad = dir.path().join("bad.safetensors");
    tch::Tensor::write_safetensors(&tensors, &bad).unwrap();
    let err = train::predict::run(&config, &bad, Some(1), Some(&out))
        .unwrap_err()
        .to_string();
    for needle in [
        "bad.safetensors",
        "emb1.bias",
        "classifier.weight",
        "[4, 7]",
        "extra.weight",
    ] {
        assert!(err.contains(needle), "{needle} not in: {err}");
    }
    // The earlier predictions are untouched by the refused run.
    assert_eq!(read(&report.output), predicted);
}
