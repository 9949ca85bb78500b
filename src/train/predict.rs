//! `hdmoe-pipe predict`: a trained model's risk, hazards and survival for the cohort's
//! patients, from our `model.safetensors` or from a state dict the official code saved (the
//! parameter names are the same: docs/PARAMETERS.md). With a fold, that fold's validation
//! patients, their genomics scaled by the scaler refitted on the fold's training patients
//! exactly as `fit` fits it; without, every usable patient, scaled on all of them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tch::{nn, Kind, Tensor};

use super::data::{Dataset, Scaler};
use super::{fold_patients, mix, model_spec, output_error, write_rows, FitError, Trainer};
use crate::cohort;
use crate::config::Config;
use crate::encode;
use crate::model;

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
    let data = Dataset::load(config)?;
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
