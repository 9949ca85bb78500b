//! What applying a trained run to new patients needs beside the weights, written by `fit` as
//! `runs/<name>/deploy.json`: the time-bin edges, the stamp of the patch features the models
//! were trained on, the genomic columns in the models' order (with the training cohort's
//! medians, for `predict.missing_columns: median`), each model's checkpoint and genomics
//! scaler (fold k's is refitted on fold k's training patients exactly as `fit` fitted it; the
//! final model's on every patient), and the frozen risk cutoffs. `predict --run` reads it and
//! refuses a new cohort whose features were made another way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use ndarray::Array2;

use super::data::{Dataset, Genomics, Scaler};
use super::FitError;
use crate::cache;
use crate::config::{MissingColumns, Modality};

/// Why a new cohort cannot be scored by a run's models.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{path}: made another way than the features the models were trained on ({why}); extract the new cohort's features with the training run's `features` settings")]
    FeaturesDiffer { path: PathBuf, why: String },
    #[error("{path}: features are {got} wide, the models were trained on {want}")]
    FeatureWidth { path: PathBuf, got: i64, want: i64 },
    #[error("{path}: has no genomic group `{group}`, which the models read")]
    MissingGroup { path: PathBuf, group: String },
    #[error("{path}: group `{group}` lacks {} of the training cohort's columns: {} (set `predict.missing_columns: zero` or `median` to fill them)", .columns.len(), first_names(.columns))]
    MissingColumns {
        path: PathBuf,
        group: String,
        columns: Vec<String>,
    },
}

pub const FILE: &str = "deploy.json";
const FORMAT: u32 = 1;

/// The features stamp keys that must agree between training and new slides: the encoder and
/// its weights, and the pixels it saw (input side, normalisation; the magnification where the
/// file records it). Not the pyramid level or read size: those follow each slide's own
/// scanning magnification (a 40x slide reads 512 px at level 0 for a 256-px 20x patch).
pub const FEATURE_KEYS: [&str; 6] = [
    "encoder",
    "weights_sha256",
    "input_size",
    "normalization",
    "target_mpp",
    "patch_size",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenomicGroup {
    /// The group's dataset name in genomics.h5.
    pub name: String,
    pub columns: Vec<String>,
    /// Each column's median over the training cohort's usable patients (raw values).
    pub median: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployedModel {
    /// `fold_<k>` or `final`.
    pub name: String,
    /// The weights, relative to the run folder.
    pub checkpoint: String,
    /// Epochs it was trained for (its weights are the last epoch's).
    pub epochs: usize,
    pub scaler: Option<Scaler>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub format: u32,
    pub software_version: String,
    pub architecture: String,
    pub modalities: Vec<Modality>,
    /// The training cohort's time-bin edges (months); hazard k covers bin k.
    pub time_bin_edges: Vec<f64>,
    pub wsi_dim: i64,
    pub mri_dim: i64,
    /// [`FEATURE_KEYS`] as the training cohort's features files record them.
    pub features: Option<BTreeMap<String, String>>,
    pub genomics: Option<Vec<GenomicGroup>>,
    pub models: Vec<DeployedModel>,
    /// High risk iff risk ≥ cutoff. `folds`: the median of the pooled out-of-fold risks (the
    /// split the cross-validation report draws); `final`: the median of the final model's
    /// risks over the patients it was trained on.
    pub cutoffs: BTreeMap<String, f64>,
}

/// The [`FEATURE_KEYS`] recorded in one features file.
pub fn feature_stamp(path: &Path) -> Result<BTreeMap<String, String>, FitError> {
    let file = hdf5::File::open(path).map_err(|e| super::output_error(path, e))?;
    Ok(FEATURE_KEYS
        .iter()
        .filter_map(|&k| {
            cache::read_str_attr(&file, k)
                .ok()
                .map(|v| (k.to_owned(), v))
        })
        .collect())
}

/// Per column of every group, the median over `rows` (numpy's rule).
pub fn genomic_groups(genomics: &Genomics, rows: &[usize]) -> Vec<GenomicGroup> {
    genomics
        .groups
        .iter()
        .enumerate()
        .map(|(k, m)| GenomicGroup {
            name: genomics.names[k].clone(),
            columns: genomics.columns[k].clone(),
            median: (0..m.ncols())
                .map(|c| {
                    let values: Vec<f64> = rows.iter().map(|&r| m[[r, c]]).collect();
                    crate::survival::median(&values).unwrap_or(f64::NAN)
                })
                .collect(),
        })
        .collect()
}

impl Deployment {
    pub fn new(
        config: &crate::config::Config,
        data: &Dataset,
        usable: &[usize],
    ) -> Result<Self, FitError> {
        let first_slide = data
            .slides
            .as_ref()
            .and_then(|s| usable.iter().find_map(|&i| s[i].first().cloned()));
        Ok(Self {
            format: FORMAT,
            software_version: crate::VERSION.to_owned(),
            architecture: config.model.architecture.name().to_owned(),
            modalities: config.dataset.modalities.clone(),
            time_bin_edges: data.cohort.edges.to_vec(),
            wsi_dim: data.wsi_dim,
            mri_dim: data.mri_dim,
            features: first_slide.as_deref().map(feature_stamp).transpose()?,
            genomics: data
                .genomics
                .as_ref()
                .map(|g| genomic_groups(g, &data.genomic_rows(usable))),
            models: Vec::new(),
            cutoffs: BTreeMap::new(),
        })
    }

    pub fn write(&self, run_dir: &Path) -> Result<PathBuf, FitError> {
        let path = run_dir.join(FILE);
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| super::output_error(&path, e.to_string()))?;
        crate::atomic::write_bytes(&path, text.as_bytes())
            .map_err(|e| super::output_error(&path, e))?;
        Ok(path)
    }

    pub fn read(run_dir: &Path) -> Result<Self, FitError> {
        let path = run_dir.join(FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            super::output_error(
                &path,
                format!("{e} (a run trained before deploy.json existed: rerun `hdmoe-pipe fit`, which keeps finished folds)"),
            )
        })?;
        let deployment: Self = serde_json::from_str(&text)
            .map_err(|e| super::output_error(&path, format!("not a deploy.json: {e}")))?;
        if deployment.format != FORMAT {
            return Err(super::output_error(
                &path,
                format!("format {} (this version reads {FORMAT})", deployment.format),
            ));
        }
        Ok(deployment)
    }

    /// The models of an ensemble (`folds`: every fold model; `final`: the final model).
    pub fn ensemble(&self, which: &str) -> Vec<&DeployedModel> {
        self.models
            .iter()
            .filter(|m| match which {
                "final" => m.name == "final",
                _ => m.name.starts_with("fold_"),
            })
            .collect()
    }
}

/// The first dozen names, and how many more.
fn first_names(names: &[String]) -> String {
    let shown = names
        .iter()
        .take(12)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match names.len().saturating_sub(12) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// The new cohort's genomic groups in the training columns' order: a column the new table
/// lacks is refused or filled (0, or the training median) by `policy`; extra columns are
/// left out. `path` is the new genomics.h5, for the messages.
pub fn align_genomics(
    new: &Genomics,
    trained: &[GenomicGroup],
    policy: MissingColumns,
    path: &Path,
) -> Result<Genomics, DeployError> {
    let n_rows = new.rows.len();
    let mut groups = Vec::new();
    for group in trained {
        let k = new
            .names
            .iter()
            .position(|n| *n == group.name)
            .ok_or_else(|| DeployError::MissingGroup {
                path: path.to_owned(),
                group: group.name.clone(),
            })?;
        let index: std::collections::HashMap<&str, usize> = new.columns[k]
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        let missing: Vec<String> = group
            .columns
            .iter()
            .filter(|c| !index.contains_key(c.as_str()))
            .cloned()
            .collect();
        if !missing.is_empty() && policy == MissingColumns::Error {
            return Err(DeployError::MissingColumns {
                path: path.to_owned(),
                group: group.name.clone(),
                columns: missing,
            });
        }
        let mut m = Array2::<f64>::zeros((n_rows, group.columns.len()));
        for (c, name) in group.columns.iter().enumerate() {
            match index.get(name.as_str()) {
                Some(&from) => m.column_mut(c).assign(&new.groups[k].column(from)),
                None if policy == MissingColumns::Median => m.column_mut(c).fill(group.median[c]),
                None => {}
            }
        }
        groups.push(m);
    }
    Ok(Genomics {
        rows: new.rows.clone(),
        names: trained.iter().map(|g| g.name.clone()).collect(),
        columns: trained.iter().map(|g| g.columns.clone()).collect(),
        groups,
    })
}

/// Why a new cohort's features file cannot be scored by the run's models (None: it can).
pub fn feature_mismatch(
    trained: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Option<String> {
    let differences: Vec<String> = trained
        .iter()
        .filter_map(|(k, v)| match new.get(k) {
            Some(w) if w == v => None,
            Some(w) => Some(format!("{k}: trained on {v}, this file {w}")),
            None => Some(format!("{k}: trained on {v}, this file does not record it")),
        })
        .collect();
    (!differences.is_empty()).then(|| differences.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genomics_follow_the_training_columns() {
        let new = Genomics {
            rows: [("a".to_string(), 0), ("b".to_string(), 1)]
                .into_iter()
                .collect(),
            names: vec!["g".into()],
            columns: vec![vec!["y".into(), "extra".into(), "x".into()]],
            groups: vec![ndarray::array![[1.0, 9.0, 2.0], [3.0, 9.0, 4.0]]],
        };
        let trained = vec![GenomicGroup {
            name: "g".into(),
            columns: vec!["x".into(), "y".into(), "z".into()],
            median: vec![0.0, 0.0, 7.5],
        }];
        let path = Path::new("new/genomics.h5");
        let e = align_genomics(&new, &trained, MissingColumns::Error, path).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("new/genomics.h5") && text.contains("lacks 1") && text.contains(": z"),
            "{text}"
        );
        let zero = align_genomics(&new, &trained, MissingColumns::Zero, path).unwrap();
        assert_eq!(
            zero.groups[0],
            ndarray::array![[2.0, 1.0, 0.0], [4.0, 3.0, 0.0]]
        );
        let median = align_genomics(&new, &trained, MissingColumns::Median, path).unwrap();
        assert_eq!(median.groups[0].column(2).to_vec(), vec![7.5, 7.5]);
        let other = vec![GenomicGroup {
            name: "h".into(),
            ..trained[0].clone()
        }];
        assert!(matches!(
            align_genomics(&new, &other, MissingColumns::Zero, path),
            Err(DeployError::MissingGroup { .. })
        ));
    }

    #[test]
    fn features_must_agree_on_every_recorded_key() {
        let trained: BTreeMap<String, String> =
            [("encoder", "resnet50_trunc"), ("input_size", "224")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(feature_mismatch(&trained, &trained), None);
        let mut other = trained.clone();
        other.insert("encoder".into(), "uni_v1".into());
        let why = feature_mismatch(&trained, &other).unwrap();
        assert!(
            why.contains("encoder: trained on resnet50_trunc, this file uni_v1"),
            "{why}"
        );
        other.remove("input_size");
        let why = feature_mismatch(&trained, &other).unwrap();
        assert!(
            why.contains("input_size: trained on 224, this file does not record it"),
            "{why}"
        );
    }
}
