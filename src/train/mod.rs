//! `hdmoe-pipe fit`: HDMoE (or a unimodal baseline) trained fold by fold as MODEL_SPEC 5
//! describes — Adam with coupled L2, per-epoch poly learning rate, one step per patient,
//! class-balanced sampling, genomics standardised on each fold's training patients — with
//! every epoch's losses and C-indices recorded, honest model selection, and exact resumption.
//!
//! Everything here sees the model through `model::SurvivalModel` (built by
//! `model::registry`): adding a model needs nothing in this module. `fold.rs` owns one fold
//! (files, freshness, resumption, an epoch, the final model); `predict.rs` applies a trained
//! model; `data.rs` reads the caches.

pub mod adam;
pub mod data;
pub mod deploy;
mod fold;
pub mod predict;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rand::prelude::*;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::atomic;
use crate::cache::Parameters;
use crate::cohort::{self, Split};
use crate::config::{Config, Modality, Selection};
use crate::encode;
use crate::model::{Inputs, Modality1, ModelSpec, RfrEval, SurvivalModel};
use crate::profile;
use crate::survival::{self, N_BINS};
use data::{DataError, Dataset, Scaler};
use fold::write_rows;

#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{0}")]
    Config(String),
    #[error("{path}: {message}")]
    Output { path: PathBuf, message: String },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Encode(#[from] encode::EncodeError),
    #[error(transparent)]
    Checkpoint(Box<predict::CheckpointMismatch>),
    #[error(transparent)]
    Deploy(#[from] deploy::DeployError),
}

fn output_error(path: &Path, e: impl ToString) -> FitError {
    FitError::Output {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// One fold's figures.
#[derive(Debug, Clone)]
pub struct FoldResult {
    pub fold: usize,
    pub n_train: usize,
    pub n_val: usize,
    pub c_last: f64,
    pub c_best: f64,
    pub best_epoch: usize,
    pub c_nested: Option<(f64, usize)>,
    pub c_selected: f64,
    pub selected_epoch: usize,
}

#[derive(Debug)]
pub struct FitReport {
    pub run_dir: PathBuf,
    pub folds: Vec<FoldResult>,
    /// Patients left out because a modality is missing, with the reason.
    pub excluded: Vec<(String, String)>,
}

impl std::fmt::Display for FitReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "fold  n_train  n_val  c_index_last  c_index_best (epoch; paper protocol)"
        )?;
        for r in &self.folds {
            writeln!(
                f,
                "{:>4}  {:>7}  {:>5}  {:>12.4}  {:>12.4} ({})",
                r.fold, r.n_train, r.n_val, r.c_last, r.c_best, r.best_epoch
            )?;
        }
        let stats = |pick: fn(&FoldResult) -> f64| {
            let v: Vec<f64> = self.folds.iter().map(pick).collect();
            crate::report::tables::mean_std(&v).unwrap_or((f64::NAN, f64::NAN))
        };
        let (lm, ls) = stats(|r| r.c_last);
        let (bm, bs) = stats(|r| r.c_best);
        writeln!(
            f,
            "last epoch {lm:.4} ± {ls:.4}; best epoch (optimistic) {bm:.4} ± {bs:.4}"
        )?;
        writeln!(f, "run: {}", self.run_dir.display())
    }
}

impl crate::stage::Outcome for FitReport {}

/// A stable seed for (seed, fold, epoch, purpose).
fn mix(parts: &[u64]) -> u64 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for &p in parts {
        h ^= p
            .wrapping_add(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(h << 6)
            .wrapping_add(h >> 2);
        h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 31;
    }
    h
}

fn model_spec(config: &Config, data: &Dataset) -> Result<ModelSpec, FitError> {
    let m = &config.model;
    let modalities = &config.dataset.modalities;
    let modality_1 = if modalities.contains(&Modality::Genomics) {
        Some(Modality1::Genomics)
    } else if modalities.contains(&Modality::Mri) {
        Some(Modality1::Mri)
    } else {
        None
    };
    (m.architecture.entry().accepts)(modalities).map_err(|why| {
        FitError::Config(format!(
            "configuration: `model.architecture: {}` does not take dataset.modalities {modalities:?}: {why}",
            m.architecture.name()
        ))
    })?;
    Ok(ModelSpec {
        architecture: m.architecture,
        dim: m.dim,
        heads: m.heads,
        landmarks: m.landmarks.unwrap_or(m.dim / 2),
        token_length: m.resolved_token_length(),
        experts: m.experts,
        top_k: m.top_k,
        shared_expert: m.shared_expert,
        renormalise_top_k: m.renormalise_top_k,
        unchosen_experts: m.unchosen_experts,
        moe_output: m.moe_output,
        rfr: m.rfr,
        rfr_eval: m.rfr_eval,
        distance: m.dm,
        bag_weight: m.bag_weight,
        wsi_dim: data.wsi_dim,
        mri_dim: data.mri_dim,
        genomic_groups: data.group_sizes(),
        modality_1,
        wsi: modalities.contains(&Modality::Wsi),
    })
}

/// What a fold's files must have been made with to be resumed or kept: every key of the
/// dataset, model and train sections (less `train.folds`), the fold's patients, the data's
/// shapes and the software version.
fn fold_parameters(config: &Config, data: &Dataset, split: &Split) -> Parameters {
    // A fold's training does not depend on which other folds are listed (each is seeded by its
    // own index), so folds trained in separate processes (`train.folds=[k]`, a Slurm array)
    // are kept by a later run over all of them.
    let mut train = config.train.clone();
    train.folds.clear();
    // Whether a final model is trained after the folds does not change them.
    // The held-out cases enter as `holdout` below, only when there are some, so that runs
    // made before the key existed are kept.
    const NOT_FOLD_KEYS: [&str; 3] = ["train.final", "train.final_epochs", "train.holdout"];
    let mut parameters = Parameters::new();
    for (section, value) in [
        ("dataset", serde_yaml::to_value(&config.dataset)),
        ("model", serde_yaml::to_value(&config.model)),
        ("train", serde_yaml::to_value(&train)),
    ] {
        let value = value.unwrap_or(serde_yaml::Value::Null);
        for (key, text) in flatten(section, &value) {
            if !NOT_FOLD_KEYS.contains(&key.as_str()) {
                parameters = parameters.with(&key, text);
            }
        }
    }
    let cases = |set: &[usize]| -> String {
        set.iter()
            .map(|&i| data.cohort.patients[i].case_id.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    if !config.train.holdout.is_empty() {
        parameters = parameters.with("holdout", config.train.holdout.join(","));
    }
    parameters
        .with("fold", split.fold)
        .with("train", cases(&split.train))
        .with("val", cases(&split.val))
        .with("groups", format!("{:?}", data.group_sizes()))
        .with("wsi_dim", data.wsi_dim)
        .with("mri_dim", data.mri_dim)
        .with("software_version", crate::VERSION)
}

/// `section.key` → the value on one line, for every leaf of a YAML mapping.
fn flatten(prefix: &str, value: &serde_yaml::Value) -> Vec<(String, String)> {
    use serde_yaml::Value;
    fn inline(value: &Value) -> String {
        match value {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            Value::Sequence(items) => {
                let items: Vec<String> = items.iter().map(inline).collect();
                format!("[{}]", items.join(", "))
            }
            Value::Mapping(_) | Value::Tagged(_) => serde_yaml::to_string(value)
                .unwrap_or_default()
                .trim()
                .replace('\n', " "),
        }
    }
    match value {
        Value::Mapping(map) => map
            .iter()
            .flat_map(|(key, value)| {
                let key = format!("{prefix}.{}", inline(key));
                flatten(&key, value)
            })
            .collect(),
        _ => vec![(prefix.to_owned(), inline(value))],
    }
}

/// Risk and hazards of one evaluated patient.
struct Prediction {
    patient: usize,
    risk: f64,
    hazards: [f64; N_BINS],
}

fn c_index(data: &Dataset, preds: &[Prediction]) -> f64 {
    let time: Vec<f64> = preds
        .iter()
        .map(|p| data.cohort.patients[p.patient].survival_months)
        .collect();
    let event: Vec<bool> = preds
        .iter()
        .map(|p| data.cohort.patients[p.patient].event())
        .collect();
    let risk: Vec<f64> = preds.iter().map(|p| p.risk).collect();
    survival::concordance_index(&time, &event, &risk).map_or(f64::NAN, |c| c.c_index)
}

/// A model with the data it reads: loads patients' inputs (scaled, on the device) and
/// evaluates; `fit` adds the parameters it steps, `predict` uses it as it is.
struct Trainer<'a> {
    config: &'a Config,
    data: &'a Dataset,
    model: Box<dyn SurvivalModel>,
    names: Vec<String>,
    params: Vec<Tensor>,
    device: Device,
    scaler: Option<Scaler>,
}

impl Trainer<'_> {
    fn draw_segments(&self, rng: &mut ChaCha8Rng, train: bool) -> (i64, i64) {
        if !train && self.model.spec().rfr_eval == RfrEval::Identity {
            return (1, 1);
        }
        let (s1, s2) = self.model.segment_choices();
        (
            s1[rng.random_range(0..s1.len())],
            s2[rng.random_range(0..s2.len())],
        )
    }

    fn load(&self, patient: usize, seed: u64) -> Result<Inputs, DataError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let inputs = self.data.inputs(
            patient,
            self.scaler.as_ref(),
            self.config.model.max_patches,
            &mut rng,
        )?;
        Ok(self.on_device(inputs))
    }

    /// The inputs moved to the training device.
    fn on_device(&self, inputs: Inputs) -> Inputs {
        let to = |t: Tensor| t.to_device(self.device);
        Inputs {
            wsi: inputs.wsi.map(to),
            genomics: inputs.genomics.map(|g| g.into_iter().map(to).collect()),
            mri: inputs.mri.map(to),
        }
    }

    /// Visits `patients` in order with the next patient's inputs read on another thread.
    fn for_each_prefetched<F>(
        &self,
        patients: &[usize],
        seed: u64,
        mut f: F,
    ) -> Result<(), FitError>
    where
        F: FnMut(usize, usize, Inputs) -> Result<(), FitError>,
    {
        let data = self.data;
        let scaler = self.scaler.as_ref();
        let max_patches = self.config.model.max_patches;
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(2);
            scope.spawn(move || {
                for (k, &p) in patients.iter().enumerate() {
                    let mut rng = ChaCha8Rng::seed_from_u64(mix(&[seed, k as u64]));
                    // Plain memory only: see `data::Rows` for why no libtorch op runs here.
                    let item = data.raw_inputs(p, scaler, max_patches, &mut rng);
                    if tx.send((k, p, item)).is_err() {
                        break;
                    }
                }
            });
            while let Some((k, p, item)) =
                profile::phase("data (waiting for the reader thread)", || rx.recv().ok())
            {
                f(k, p, self.on_device(item?.to_tensors()))?;
            }
            Ok(())
        })
    }

    fn evaluate(
        &self,
        patients: &[usize],
        seed: u64,
    ) -> Result<(Vec<Prediction>, Vec<Vec<i64>>), FitError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut preds = Vec::new();
        let mut routing: Vec<Vec<i64>> = Vec::new();
        for &p in patients {
            let inputs = self.load(p, mix(&[seed, p as u64]))?;
            let segments = self.draw_segments(&mut rng, false);
            let out = tch::no_grad(|| self.model.forward(&inputs, segments, false));
            count_routing(&mut routing, &out.routing, self.model.spec().experts);
            let h = Vec::<f64>::try_from(out.hazards.to_kind(Kind::Double).to_device(Device::Cpu))
                .unwrap_or_default();
            let mut hazards = [0.0; N_BINS];
            hazards.copy_from_slice(&h[..N_BINS]);
            preds.push(Prediction {
                patient: p,
                risk: out.risk.double_value(&[]),
                hazards,
            });
        }
        Ok((preds, routing))
    }
}

fn count_routing(counts: &mut Vec<Vec<i64>>, routing: &[Tensor], experts: i64) {
    if counts.len() < routing.len() {
        counts.resize(routing.len(), vec![0; experts as usize]);
    }
    for (m, chosen) in routing.iter().enumerate() {
        for e in Vec::<i64>::try_from(chosen.flatten(0, -1)).unwrap_or_default() {
            counts[m][e as usize] += 1;
        }
    }
}

/// Class-stratified hold-out of `fraction` of `train` (at least one per class with ≥ 2).
fn nested_split(
    data: &Dataset,
    train: &[usize],
    fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut by_class: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &i in train {
        by_class
            .entry(data.cohort.patients[i].class())
            .or_default()
            .push(i);
    }
    let (mut keep, mut held) = (Vec::new(), Vec::new());
    for (_, mut members) in by_class {
        members.shuffle(&mut rng);
        let n = if members.len() >= 2 {
            ((members.len() as f64 * fraction).round() as usize).max(1)
        } else {
            0
        };
        held.extend_from_slice(&members[..n]);
        keep.extend_from_slice(&members[n..]);
    }
    keep.sort_unstable();
    held.sort_unstable();
    (keep, held)
}

/// A fold's patients as training uses them: those with every modality, the nested slice (for
/// `selection: nested`) held out of the training split.
pub(crate) struct FoldPatients {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub nested: Vec<usize>,
}

pub(crate) fn fold_patients(
    config: &Config,
    data: &Dataset,
    split: &Split,
) -> Result<FoldPatients, FitError> {
    let train_cfg = &config.train;
    let fold = split.fold;
    let usable = |set: &[usize]| -> Vec<usize> {
        set.iter()
            .copied()
            .filter(|&i| data.missing[i].is_none())
            .collect()
    };
    let (mut train, val) = (usable(&split.train), usable(&split.val));
    let mut nested = Vec::new();
    if train_cfg.selection == Selection::Nested {
        let (keep, held) = nested_split(
            data,
            &train,
            train_cfg.nested_fraction,
            mix(&[train_cfg.seed, fold as u64, 7]),
        );
        train = keep;
        nested = held;
    }
    if train.is_empty() || val.is_empty() {
        return Err(FitError::Config(format!(
            "fold {fold}: no usable training or validation patients"
        )));
    }
    Ok(FoldPatients { train, val, nested })
}

/// Per-epoch (val, nested) C-indices from history rows.
fn history_cindices(history: &[String]) -> Vec<(f64, f64)> {
    history
        .iter()
        .map(|r| {
            let f: Vec<&str> = r.split(',').collect();
            let get = |k: usize| {
                f.get(k)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(f64::NAN)
            };
            (get(7), get(8))
        })
        .collect()
}

fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        // Strictly greater: the first epoch reaching the best value, as the release selects.
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

fn summarise_fold(
    config: &Config,
    data: &Dataset,
    fold: usize,
    n_train: usize,
    n_val: usize,
    history: &[String],
    val_rows: &[String],
) -> Result<(FoldResult, Vec<String>), FitError> {
    let c = history_cindices(history);
    let last = c.len() - 1;
    let best_epoch = argmax(c.iter().map(|x| x.0));
    let nested = (config.train.selection == Selection::Nested).then(|| {
        let e = argmax(c.iter().map(|x| x.1));
        (c[e].0, e)
    });
    let selected_epoch = match config.train.selection {
        Selection::Last => last,
        Selection::Best => best_epoch,
        Selection::Nested => nested.map_or(last, |(_, e)| e),
    };
    let selection = format!("{:?}", config.train.selection).to_lowercase();
    let mut rows = Vec::new();
    for r in val_rows {
        let f: Vec<&str> = r.split(',').collect();
        if f.first().and_then(|e| e.parse::<usize>().ok()) != Some(selected_epoch) {
            continue;
        }
        let case = f[1];
        let Some(i) = data.cohort.position(case) else {
            continue;
        };
        let p = &data.cohort.patients[i];
        rows.push(format!(
            "{case},{fold},{},{},{},{},{},{},{},{selected_epoch},{selection}",
            f[2],
            f[3],
            f[4],
            f[5],
            f[6],
            p.survival_months,
            u8::from(p.event())
        ));
    }
    Ok((
        FoldResult {
            fold,
            n_train,
            n_val,
            c_last: c[last].0,
            c_best: c[best_epoch].0,
            best_epoch,
            c_nested: nested,
            c_selected: c[selected_epoch].0,
            selected_epoch,
        },
        rows,
    ))
}

fn write_summary(path: &Path, folds: &[FoldResult], selection: Selection) -> Result<(), FitError> {
    let mut text = String::from("fold,n_train,n_val,selection,c_index,epoch,c_index_last,c_index_best,best_epoch,c_index_nested,nested_epoch\n");
    let sel = format!("{selection:?}").to_lowercase();
    for f in folds {
        let (cn, en) = f.c_nested.map_or((String::new(), String::new()), |(c, e)| {
            (c.to_string(), e.to_string())
        });
        let _ = writeln!(
            text,
            "{},{},{},{sel},{},{},{},{},{},{cn},{en}",
            f.fold,
            f.n_train,
            f.n_val,
            f.c_selected,
            f.selected_epoch,
            f.c_last,
            f.c_best,
            f.best_epoch
        );
    }
    let stat = |pick: fn(&FoldResult) -> f64| {
        let v: Vec<f64> = folds.iter().map(pick).filter(|x| x.is_finite()).collect();
        crate::report::tables::mean_std(&v).unwrap_or((f64::NAN, f64::NAN))
    };
    let columns = [
        stat(|f| f.c_selected),
        stat(|f| f.c_last),
        stat(|f| f.c_best),
        stat(|f| f.c_nested.map_or(f64::NAN, |x| x.0)),
    ];
    for (label, k) in [("mean", 0), ("std", 1)] {
        let v = |p: (f64, f64)| if k == 0 { p.0 } else { p.1 };
        let nested = if folds.iter().any(|f| f.c_nested.is_some()) {
            v(columns[3]).to_string()
        } else {
            String::new()
        };
        let _ = writeln!(
            text,
            "{label},,,{sel},{},,{},{},,{nested},",
            v(columns[0]),
            v(columns[1]),
            v(columns[2])
        );
    }
    atomic::write_bytes(path, text.as_bytes()).map_err(|e| output_error(path, e))
}

/// Why `train.holdout` patients take no part in training: they are marked unusable here, so
/// every fold, the final model and deploy.json's medians leave them out (excluded.csv lists
/// them). A case id the cohort table does not have is refused.
pub(crate) fn hold_out(config: &Config, data: &mut Dataset) -> Result<(), FitError> {
    for case in &config.train.holdout {
        let i = data.cohort.position(case).ok_or_else(|| {
            FitError::Config(format!(
                "configuration: `train.holdout` names {case}, which {} does not have",
                data.cohort.path.display()
            ))
        })?;
        data.missing[i] = Some("held out for external validation (train.holdout)".into());
    }
    Ok(())
}

pub fn run(config: &Config, force: bool) -> Result<FitReport, FitError> {
    // Initialisation and dropout draw from libtorch's generator, seeded per fold and epoch.
    let _generator = crate::torch_rng::lock();
    let mut data = Dataset::load(config)?;
    hold_out(config, &mut data)?;
    let splits_dir = config
        .paths
        .splits
        .as_deref()
        .ok_or_else(|| FitError::Config("configuration: `paths.splits` is not set".into()))?;
    let splits = cohort::read_splits(splits_dir, &config.train.folds, &data.cohort)
        .map_err(|e| FitError::Config(e.to_string()))?;
    let spec = model_spec(config, &data)?;
    let run_dir = config.run_dir();
    std::fs::create_dir_all(&run_dir).map_err(|e| output_error(&run_dir, e))?;
    let config_path = run_dir.join("config.yaml");
    atomic::write_bytes(&config_path, config.to_yaml().as_bytes())
        .map_err(|e| output_error(&config_path, e))?;

    let excluded: Vec<(String, String)> = data
        .missing
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            m.clone()
                .map(|why| (data.cohort.patients[i].case_id.clone(), why))
        })
        .collect();
    if !excluded.is_empty() {
        tracing::warn!(
            "{} patients left out for a missing modality or train.holdout (listed in {})",
            excluded.len(),
            run_dir.join("excluded.csv").display()
        );
        let rows: Vec<String> = excluded
            .iter()
            .map(|(c, w)| format!("{c},\"{}\"", w.replace('"', "'")))
            .collect();
        write_rows(&run_dir.join("excluded.csv"), "case_id,reason", &rows)?;
    }

    let mut folds = Vec::new();
    let mut predictions = Vec::new();
    for split in &splits {
        let (result, rows) = fold::fit_fold(config, &data, &spec, split, &run_dir, force)?;
        folds.push(result);
        predictions.extend(rows);
    }
    write_rows(
        &run_dir.join("predictions.csv"),
        "case_id,fold,risk,hazard_0,hazard_1,hazard_2,hazard_3,survival_months,event,epoch,selection",
        &predictions,
    )?;
    write_summary(&run_dir.join("summary.csv"), &folds, config.train.selection)?;
    write_deployment(
        config,
        &data,
        &spec,
        &splits,
        &folds,
        &predictions,
        &run_dir,
        force,
    )?;
    Ok(FitReport {
        run_dir,
        folds,
        excluded,
    })
}

/// The risk column of predictions.csv rows (`case_id,fold,risk,…`).
fn risks_of(rows: &[String]) -> Vec<f64> {
    rows.iter()
        .filter_map(|r| r.split(',').nth(2).and_then(|v| v.parse().ok()))
        .collect()
}

/// `runs/<name>/deploy.json` (see [`deploy`]), training the final model first when
/// `train.final` asks for it.
#[allow(clippy::too_many_arguments)]
fn write_deployment(
    config: &Config,
    data: &Dataset,
    spec: &ModelSpec,
    splits: &[Split],
    folds: &[FoldResult],
    predictions: &[String],
    run_dir: &Path,
    force: bool,
) -> Result<(), FitError> {
    let usable: Vec<usize> = (0..data.cohort.len())
        .filter(|&i| data.missing[i].is_none())
        .collect();
    let scaler_on = |patients: &[usize]| {
        data.genomics
            .as_ref()
            .map(|g| Scaler::fit(g, &data.genomic_rows(patients)))
    };
    let mut deployment = deploy::Deployment::new(config, data, &usable)?;
    for split in splits {
        // The scaler fit fitted: on the fold's training patients (less a nested slice).
        let patients = fold_patients(config, data, split)?;
        deployment.models.push(deploy::DeployedModel {
            name: fold::fold_name(split.fold),
            checkpoint: format!("{}/model.safetensors", fold::fold_name(split.fold)),
            epochs: config.train.epochs,
            scaler: scaler_on(&patients.train),
        });
    }
    if let Ok(cutoff) = survival::median(&risks_of(predictions)) {
        deployment.cutoffs.insert("folds".into(), cutoff);
    }
    if config.train.final_model {
        let epochs = final_epochs(config, folds);
        let mut final_config = config.clone();
        final_config.train.epochs = epochs;
        // Every usable patient trains; nothing is held out, so there is nothing to select on.
        final_config.train.selection = Selection::Last;
        let split = Split {
            fold: fold::FINAL,
            path: run_dir.join("final"),
            train: usable.clone(),
            val: usable.clone(),
        };
        tracing::info!(
            "final model: {} patients, {epochs} epochs (its C-index is on its own training patients)",
            usable.len()
        );
        let (_, rows) = fold::fit_fold(&final_config, data, spec, &split, run_dir, force)?;
        deployment.models.push(deploy::DeployedModel {
            name: fold::fold_name(fold::FINAL),
            checkpoint: format!("{}/model.safetensors", fold::fold_name(fold::FINAL)),
            epochs,
            scaler: scaler_on(&usable),
        });
        if let Ok(cutoff) = survival::median(&risks_of(&rows)) {
            deployment.cutoffs.insert("final".into(), cutoff);
        }
    }
    deployment.write(run_dir)?;
    Ok(())
}

/// `train.final_epochs`, else the median (rounded, halves up) over folds of the nested
/// selection's epoch count, else `train.epochs`.
fn final_epochs(config: &Config, folds: &[FoldResult]) -> usize {
    if let Some(e) = config.train.final_epochs {
        return e;
    }
    let nested: Vec<f64> = folds
        .iter()
        .filter_map(|f| f.c_nested.map(|(_, e)| (e + 1) as f64))
        .collect();
    match survival::median(&nested) {
        Ok(m) if config.train.selection == Selection::Nested => (m + 0.5).floor() as usize,
        _ => config.train.epochs,
    }
}
