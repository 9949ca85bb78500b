//! `hdmoe-pipe predict`: a trained model's risk, hazards and survival for the cohort's
//! patients, from our `model.safetensors` or from a state dict the official code saved (the
//! parameter names are the same: docs/PARAMETERS.md). With a fold, that fold's validation
//! patients, their genomics scaled by the scaler refitted on the fold's training patients
//! exactly as `fit` fits it; without, every usable patient, scaled on all of them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tch::{nn, Kind, Tensor};

use super::data::{Dataset, Scaler};
use super::{deploy, fold_patients, mix, model_spec, output_error, write_rows, FitError, Trainer};
use crate::cohort;
use crate::config::Config;
use crate::encode;
use crate::model;
use crate::survival::N_BINS;

/// What `predict` wrote.
#[derive(Debug)]
pub struct PredictReport {
    pub checkpoint: PathBuf,
    pub output: PathBuf,
    pub patients: usize,
    pub fold: Option<usize>,
    /// The checkpoint's sha256.
    pub checkpoint_sha256: String,
}

impl std::fmt::Display for PredictReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} patients predicted{} from {} (sha256 {})",
            self.patients,
            self.fold.map_or(String::new(), |k| format!(" (fold {k})")),
            self.checkpoint.display(),
            self.checkpoint_sha256
        )?;
        writeln!(f, "predictions: {}", self.output.display())
    }
}

impl crate::stage::Outcome for PredictReport {}

/// Why a checkpoint does not fit the configured model, every offending name listed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: not a state dict of this model ({architecture}): {}", describe(.missing, .misshaped, .unexpected))]
pub struct CheckpointMismatch {
    pub path: PathBuf,
    pub architecture: String,
    pub missing: Vec<String>,
    /// (name, shape in the file, shape the model has)
    pub misshaped: Vec<(String, Vec<i64>, Vec<i64>)>,
    pub unexpected: Vec<String>,
}

fn describe(
    missing: &[String],
    misshaped: &[(String, Vec<i64>, Vec<i64>)],
    unexpected: &[String],
) -> String {
    let list = |names: Vec<String>| {
        let shown: Vec<String> = names.iter().take(12).cloned().collect();
        let more = names.len().saturating_sub(shown.len());
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        format!("{}{tail}", shown.join(", "))
    };
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "{} parameters missing: {}",
            missing.len(),
            list(missing.to_vec())
        ));
    }
    if !misshaped.is_empty() {
        parts.push(format!(
            "{} with another shape: {}",
            misshaped.len(),
            list(
                misshaped
                    .iter()
                    .map(|(n, got, want)| format!("`{n}` is {got:?}, the model has {want:?}"))
                    .collect()
            )
        ));
    }
    if !unexpected.is_empty() {
        parts.push(format!(
            "{} names the model does not have: {}",
            unexpected.len(),
            list(unexpected.to_vec())
        ));
    }
    parts.join("; ")
}

/// Copies a state dict into `vs` by name, refusing a missing, mis-shaped or foreign
/// parameter (as `load_state_dict(strict=True)`); returns the file's sha256.
pub fn load_checkpoint(
    vs: &mut nn::VarStore,
    path: &Path,
    architecture: &str,
) -> Result<String, FitError> {
    let state = encode::read_state_dict(path)?;
    let variables = vs.variables();
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    for (name, var) in &variables {
        match state.get(name) {
            None => missing.push(name.clone()),
            Some(t) if t.size() != var.size() => {
                misshaped.push((name.clone(), t.size(), var.size()))
            }
            Some(_) => {}
        }
    }
    let unexpected: BTreeSet<String> = state
        .keys()
        .filter(|k| !variables.contains_key(*k))
        .cloned()
        .collect();
    missing.sort();
    misshaped.sort();
    if !missing.is_empty() || !misshaped.is_empty() || !unexpected.is_empty() {
        return Err(FitError::Checkpoint(Box::new(CheckpointMismatch {
            path: path.to_owned(),
            architecture: architecture.to_owned(),
            missing,
            misshaped,
            unexpected: unexpected.into_iter().collect(),
        })));
    }
    tch::no_grad(|| {
        for (name, var) in &variables {
            var.shallow_clone()
                .copy_(&state[name].to_kind(var.kind()).to_device(var.device()));
        }
    });
    crate::cache::sha256_file(path).map_err(|e| output_error(path, e))
}

const HEADER: &str = "case_id,fold,risk,hazard_0,hazard_1,hazard_2,hazard_3,survival_months,event,epoch,selection,survival_0,survival_1,survival_2,survival_3";

pub fn run(
    config: &Config,
    checkpoint: &Path,
    fold: Option<usize>,
    out: Option<&Path>,
) -> Result<PredictReport, FitError> {
    // The RFR draws at evaluation come from libtorch's generator.
    let _generator = crate::torch_rng::lock();
    let mut data = Dataset::load(config)?;
    super::hold_out(config, &mut data)?;
    let (patients, scaler_rows) = match fold {
        Some(k) => {
            let splits_dir = config.paths.splits.as_deref().ok_or_else(|| {
                FitError::Config("configuration: `paths.splits` is not set".into())
            })?;
            let splits = cohort::read_splits(splits_dir, &[k], &data.cohort)
                .map_err(|e| FitError::Config(e.to_string()))?;
            let split = splits
                .into_iter()
                .next()
                .ok_or_else(|| FitError::Config(format!("fold {k}: no split file")))?;
            let sets = fold_patients(config, &data, &split)?;
            (sets.val, sets.train)
        }
        None => {
            let all: Vec<usize> = (0..data.cohort.len())
                .filter(|&i| data.missing[i].is_none())
                .collect();
            (all.clone(), all)
        }
    };
    if patients.is_empty() {
        return Err(FitError::Config(
            "no patient has every configured modality".into(),
        ));
    }
    let spec = model_spec(config, &data)?;
    let device = encode::parse_device(&config.train.device)?;
    let mut vs = nn::VarStore::new(device);
    let model = model::build(&vs.root(), spec);
    let architecture = config.model.architecture.name();
    let sha256 = load_checkpoint(&mut vs, checkpoint, architecture)?;
    let scaler = data
        .genomics
        .as_ref()
        .map(|g| Scaler::fit(g, &data.genomic_rows(&scaler_rows)));
    let trainer = Trainer {
        config,
        data: &data,
        model,
        names: Vec::new(),
        params: Vec::new(),
        device,
        scaler,
    };
    let seed = mix(&[
        config.train.seed,
        fold.map_or(u64::MAX, |k| k as u64),
        0x5052_4544,
    ]);
    let (preds, _) = trainer.evaluate(&patients, seed)?;
    let fold_text = fold.map_or(String::new(), |k| k.to_string());
    let rows: Vec<String> = preds
        .iter()
        .map(|p| {
            let patient = &data.cohort.patients[p.patient];
            let h = p.hazards;
            let survival = Tensor::from_slice(&h)
                .neg()
                .g_add_scalar(1.0)
                .cumprod(0, Kind::Double);
            let s = Vec::<f64>::try_from(survival).unwrap_or_default();
            format!(
                "{},{fold_text},{},{},{},{},{},{},{},,checkpoint,{},{},{},{}",
                patient.case_id,
                p.risk,
                h[0],
                h[1],
                h[2],
                h[3],
                patient.survival_months,
                u8::from(patient.event()),
                s[0],
                s[1],
                s[2],
                s[3]
            )
        })
        .collect();
    let dir = match out {
        Some(d) => d.to_owned(),
        None => config.run_dir().join(match fold {
            Some(k) => format!("predict_fold_{k}"),
            None => "predict".to_owned(),
        }),
    };
    std::fs::create_dir_all(&dir).map_err(|e| output_error(&dir, e))?;
    let output = dir.join("predictions.csv");
    write_rows(&output, HEADER, &rows)?;
    Ok(PredictReport {
        checkpoint: checkpoint.to_owned(),
        output,
        patients: rows.len(),
        fold,
        checkpoint_sha256: sha256,
    })
}

/// Which of a run's models score a new cohort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ensemble {
    /// The fold models, their survival curves averaged.
    Folds,
    /// The model `train.final` trained on every patient.
    Final,
}

impl Ensemble {
    fn name(self) -> &'static str {
        match self {
            Self::Folds => "folds",
            Self::Final => "final",
        }
    }
}

/// What `predict --run` wrote.
#[derive(Debug)]
pub struct EnsembleReport {
    pub run: PathBuf,
    pub ensemble: Ensemble,
    pub models: usize,
    pub patients: usize,
    pub cutoff: f64,
    pub high_risk: usize,
    pub excluded: usize,
    pub output: PathBuf,
}

impl std::fmt::Display for EnsembleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} patients scored by {} model(s) of {} ({}); {} high risk at the training cutoff {:.6}{}",
            self.patients,
            self.models,
            self.run.display(),
            self.ensemble.name(),
            self.high_risk,
            self.cutoff,
            if self.excluded > 0 {
                format!("; {} left out for a missing modality", self.excluded)
            } else {
                String::new()
            }
        )?;
        writeln!(f, "predictions: {}", self.output.display())
    }
}

impl crate::stage::Outcome for EnsembleReport {}

const ENSEMBLE_HEADER: &str = "case_id,fold,risk,hazard_0,hazard_1,hazard_2,hazard_3,survival_months,event,epoch,selection,survival_0,survival_1,survival_2,survival_3,risk_sd,risk_group,models,risk_cutoff";

/// Every usable patient's slide files must carry the training features' stamp and width.
fn check_features(
    deployment: &deploy::Deployment,
    data: &Dataset,
    patients: &[usize],
) -> Result<(), FitError> {
    let (Some(trained), Some(slides)) = (&deployment.features, &data.slides) else {
        return Ok(());
    };
    for &p in patients {
        for file in &slides[p] {
            let stamp = deploy::feature_stamp(file)?;
            if let Some(why) = deploy::feature_mismatch(trained, &stamp) {
                return Err(deploy::DeployError::FeaturesDiffer {
                    path: file.clone(),
                    why,
                }
                .into());
            }
        }
    }
    if data.wsi_dim != deployment.wsi_dim {
        let path = patients
            .iter()
            .find_map(|&p| slides[p].first().cloned())
            .unwrap_or_default();
        return Err(deploy::DeployError::FeatureWidth {
            path,
            got: data.wsi_dim,
            want: deployment.wsi_dim,
        }
        .into());
    }
    Ok(())
}

/// `predict --config NEW --run DIR --ensemble folds|final`: the run's models on the new
/// cohort's cached inputs (its own features, genomics and MRI), its genomic columns put in the
/// training order, each model's own training scaler; the survival curves averaged over the
/// models, the risk the models' mean risk (= −Σ of the mean curve), the spread of the risk
/// over the models, and the risk group at the training cohort's frozen cutoff.
/// With `holdout`, only the run's `train.holdout` patients (those fit never trained or
/// validated on) of the config's cohort are scored.
pub fn run_deployed(
    config: &Config,
    run_dir: &Path,
    ensemble: Ensemble,
    holdout: bool,
    out: Option<&Path>,
) -> Result<EnsembleReport, FitError> {
    let _generator = crate::torch_rng::lock();
    let deployment = deploy::Deployment::read(run_dir)?;
    let trained_config_path = run_dir.join("config.yaml");
    let trained = Config::load(Some(&trained_config_path), &[])
        .map_err(|e| output_error(&trained_config_path, e))?;
    // The model and its inputs are the run's; the data paths and the device are the new config's.
    let mut merged = config.clone();
    merged.model = trained.model.clone();
    merged.dataset.modalities = trained.dataset.modalities.clone();
    // A new cohort may come without survival labels: its predictions then leave them blank.
    let mut data = Dataset::load_with(&merged, crate::cohort::Labels::Optional)?;
    let held_out = &trained.train.holdout;
    if holdout && held_out.is_empty() {
        return Err(FitError::Config(format!(
            "{}: the run holds no patient out (`train.holdout` is empty)",
            trained_config_path.display()
        )));
    }
    let patients: Vec<usize> = (0..data.cohort.len())
        .filter(|&i| data.missing[i].is_none())
        .filter(|&i| !holdout || held_out.contains(&data.cohort.patients[i].case_id))
        .collect();
    if patients.is_empty() {
        return Err(FitError::Config(format!(
            "{}: no patient{} has every modality the run's models read ({:?})",
            if holdout { " of `train.holdout`" } else { "" },
            data.cohort.path.display(),
            merged.dataset.modalities
        )));
    }
    check_features(&deployment, &data, &patients)?;
    if let (Some(g), Some(columns)) = (&data.genomics, &deployment.genomics) {
        let path = merged.cache_dir().join(crate::genomics::OUTPUT);
        data.genomics = Some(deploy::align_genomics(
            g,
            columns,
            merged.predict.missing_columns,
            &path,
        )?);
    }
    let models = deployment.ensemble(ensemble.name());
    if models.is_empty() {
        return Err(output_error(
            &run_dir.join(deploy::FILE),
            match ensemble {
                Ensemble::Final => "holds no final model: train it with `train.final: true`",
                Ensemble::Folds => "holds no fold model",
            },
        ));
    }
    let cutoff = *deployment.cutoffs.get(ensemble.name()).ok_or_else(|| {
        output_error(
            &run_dir.join(deploy::FILE),
            format!("no `{}` risk cutoff", ensemble.name()),
        )
    })?;
    let spec = model_spec(&merged, &data)?;
    let device = encode::parse_device(&merged.train.device)?;
    let architecture = merged.model.architecture.name();
    // Per model, per patient: the model's risk (as fit reports it), survival curve and hazards.
    let mut curves: Vec<Vec<ModelRow>> = Vec::new();
    for (k, m) in models.iter().enumerate() {
        let mut vs = nn::VarStore::new(device);
        let model = model::build(&vs.root(), spec.clone());
        load_checkpoint(&mut vs, &run_dir.join(&m.checkpoint), architecture)?;
        let trainer = Trainer {
            config: &merged,
            data: &data,
            model,
            names: Vec::new(),
            params: Vec::new(),
            device,
            scaler: m.scaler.clone(),
        };
        let seed = mix(&[merged.train.seed, k as u64, 0x454E_5345]);
        let (preds, _) = trainer.evaluate(&patients, seed)?;
        curves.push(
            preds
                .iter()
                .map(|p| (p.risk, survival_curve(&p.hazards), p.hazards))
                .collect(),
        );
    }
    let n = models.len() as f64;
    let mut rows = Vec::new();
    let mut high_risk = 0;
    for (i, &p) in patients.iter().enumerate() {
        let mut mean = [0.0; N_BINS];
        for model in &curves {
            for (b, s) in model[i].1.iter().enumerate() {
                mean[b] += s / n;
            }
        }
        // The models' mean risk: −Σ of the mean curve, up to the model's float32 rounding
        // (one model gives fit's own figure).
        let risks: Vec<f64> = curves.iter().map(|m| m[i].0).collect();
        let risk = risks.iter().sum::<f64>() / n;
        let sd = (risks.iter().map(|r| (r - risk).powi(2)).sum::<f64>() / n).sqrt();
        // The hazards of the mean curve, so that cumprod(1 − h) gives it back.
        // One model: its own hazards, as fit wrote them.
        let mut hazards = curves[0][i].2;
        if curves.len() > 1 {
            let mut before = 1.0;
            for b in 0..N_BINS {
                hazards[b] = if before > 0.0 {
                    1.0 - mean[b] / before
                } else {
                    1.0
                };
                before = mean[b];
            }
        }
        let high = risk >= cutoff;
        high_risk += usize::from(high);
        let patient = &data.cohort.patients[p];
        let (time, event) = if data.cohort.labelled {
            (
                patient.survival_months.to_string(),
                u8::from(patient.event()).to_string(),
            )
        } else {
            (String::new(), String::new())
        };
        rows.push(format!(
            "{},0,{risk},{},{},{},{},{time},{event},,{},{},{},{},{},{sd},{},{},{cutoff}",
            patient.case_id,
            hazards[0],
            hazards[1],
            hazards[2],
            hazards[3],
            ensemble.name(),
            mean[0],
            mean[1],
            mean[2],
            mean[3],
            if high { "high" } else { "low" },
            models.len()
        ));
    }
    let dir = out.map_or_else(
        || {
            merged
                .run_dir()
                .join(format!("predict_{}", ensemble.name()))
        },
        Path::to_owned,
    );
    std::fs::create_dir_all(&dir).map_err(|e| output_error(&dir, e))?;
    let output = dir.join("predictions.csv");
    write_rows(&output, ENSEMBLE_HEADER, &rows)?;
    Ok(EnsembleReport {
        run: run_dir.to_owned(),
        ensemble,
        models: models.len(),
        patients: rows.len(),
        cutoff,
        high_risk,
        excluded: data.cohort.len() - patients.len(),
        output,
    })
}

/// One model's risk, survival curve and hazards for one patient.
type ModelRow = (f64, [f64; N_BINS], [f64; N_BINS]);

/// S_k = Π_{j ≤ k} (1 − h_j), in float64.
fn survival_curve(hazards: &[f64; N_BINS]) -> [f64; N_BINS] {
    let mut s = [0.0; N_BINS];
    let mut running = 1.0;
    for (k, h) in hazards.iter().enumerate() {
        running *= 1.0 - h;
        s[k] = running;
    }
    s
}
