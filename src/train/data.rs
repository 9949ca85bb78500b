//! What `fit` trains on: the cohort's labels and each patient's modalities from the cache.
//! Genomic groups are held in memory (standardised per fold on its training patients); WSI
//! bags are read from the per-slide HDF5 files when needed, so any cohort fits in memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::Array2;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

use crate::cache;
use crate::cohort::{Cohort, Labels};
use crate::config::{Config, Modality};
use crate::model::Inputs;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Config(String),
}

fn file_error(path: &Path, message: impl ToString) -> DataError {
    DataError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// Raw genomic groups: one matrix [patients, columns] per group, rows by case id.
#[derive(Debug)]
pub struct Genomics {
    pub rows: HashMap<String, usize>,
    /// The groups' dataset names in genomics.h5, and each group's column (gene) names.
    pub names: Vec<String>,
    pub columns: Vec<Vec<String>>,
    pub groups: Vec<Array2<f64>>,
}

impl Genomics {
    /// The six groups, or with `all_genes` the single vector of every gene column (the SNN
    /// baseline's input).
    pub fn read(path: &Path, all_genes: bool) -> Result<Self, DataError> {
        let e = |x: hdf5::Error| file_error(path, format!("{x} (run `hdmoe-pipe genomics` first)"));
        let file = hdf5::File::open(path).map_err(e)?;
        let ids: Vec<String> = file
            .dataset("case_ids")
            .and_then(|d| d.read_raw::<hdf5::types::VarLenUnicode>())
            .map_err(e)?
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        let names = if all_genes {
            if file.dataset(crate::genomics::ALL_COLUMNS).is_err() {
                return Err(file_error(
                    path,
                    format!(
                        "has no `{}` dataset (written by an older version); rerun `hdmoe-pipe genomics --force`",
                        crate::genomics::ALL_COLUMNS
                    ),
                ));
            }
            vec![crate::genomics::ALL_COLUMNS.to_owned()]
        } else {
            cache::read_str_list_attr(&file, "group_names").map_err(e)?
        };
        let groups = names
            .iter()
            .map(|n| file.dataset(n).and_then(|d| d.read_2d::<f64>()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(e)?;
        let columns = names
            .iter()
            .map(|n| {
                file.dataset(n)
                    .and_then(|d| cache::read_str_list_attr(&d, "feature_names"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(e)?;
        Ok(Self {
            rows: ids.into_iter().enumerate().map(|(i, id)| (id, i)).collect(),
            names,
            columns,
            groups,
        })
    }
}

/// Per-group column means and standard deviations of the training patients, by
/// scikit-learn's `StandardScaler` rule (ddof 0; a constant column scales by 1).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Scaler {
    pub mean: Vec<Vec<f64>>,
    pub std: Vec<Vec<f64>>,
}

impl Scaler {
    pub fn fit(genomics: &Genomics, rows: &[usize]) -> Self {
        let mut mean = Vec::new();
        let mut std = Vec::new();
        for group in &genomics.groups {
            let (m, s): (Vec<f64>, Vec<f64>) = (0..group.ncols())
                .map(|c| column_mean_scale(rows.iter().map(|&r| group[[r, c]])))
                .unzip();
            mean.push(m);
            std.push(s);
        }
        Self { mean, std }
    }
}

/// Mean and scale of one column as scikit-learn computes them: the variance with the
/// rounding correction of `_incremental_mean_and_var`, and a column whose variance is within
/// float64 rounding of zero (`_is_constant_feature`) or whose scale is below 10·eps scales by 1.
/// A naive Σx/n mean leaves a constant column a spurious std of ~1e-16, which turns any other
/// value of a validation patient into ±1e14.
fn column_mean_scale(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let n = values.clone().count();
    if n == 0 {
        return (0.0, 1.0);
    }
    let nf = n as f64;
    let mean = values.clone().sum::<f64>() / nf;
    let correction: f64 = values.clone().map(|x| x - mean).sum();
    let squares: f64 = values.map(|x| (x - mean).powi(2)).sum();
    let variance = ((squares - correction * correction / nf) / nf).max(0.0);
    let eps = f64::EPSILON;
    let constant = variance <= nf * eps * variance + (nf * mean * eps).powi(2);
    let scale = variance.sqrt();
    if constant || scale < 10.0 * eps {
        (mean, 1.0)
    } else {
        (mean, scale)
    }
}

/// A [rows, width] float32 array in plain memory: what the reader thread of `fit` makes.
/// It never calls libtorch: a libtorch op on a second thread starts a second OpenMP team,
/// which took the training thread's cores (one epoch of the official setting: 54.5 s with the
/// bags made into tensors on the reader thread, 35.8 s with no reader thread).
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub data: Vec<f32>,
    pub rows: usize,
    pub width: usize,
}

impl Rows {
    /// The `features` dataset of a per-slide (or per-case) HDF5 file.
    pub fn read(path: &Path) -> Result<Self, DataError> {
        let file = hdf5::File::open(path).map_err(|e| file_error(path, e))?;
        let dataset = file.dataset("features").map_err(|e| file_error(path, e))?;
        let (rows, width) = match dataset.shape().as_slice() {
            &[rows, width] => (rows, width),
            other => {
                return Err(file_error(
                    path,
                    format!("`features` has shape {other:?}, expected [N, D]"),
                ))
            }
        };
        let data = dataset.read_raw::<f32>().map_err(|e| file_error(path, e))?;
        Ok(Self { data, rows, width })
    }

    /// The bags of one patient's slides, one after another (the first slide's width decides;
    /// a slide of another width is an error naming it).
    pub fn concat(parts: Vec<(PathBuf, Rows)>) -> Result<Self, DataError> {
        let mut parts = parts.into_iter();
        let Some((_, mut all)) = parts.next() else {
            return Err(DataError::Config("a bag of no slides".into()));
        };
        for (path, part) in parts {
            if part.width != all.width {
                return Err(file_error(
                    &path,
                    format!(
                        "features are {} wide, the patient's first slide's are {}",
                        part.width, all.width
                    ),
                ));
            }
            all.data.extend_from_slice(&part.data);
            all.rows += part.rows;
        }
        Ok(all)
    }

    /// At most `k` of the rows, drawn without replacement and kept in the drawn (random) order,
    /// as the release's `np.random.choice(n, k, replace=False)`: TransMIL's square padding and
    /// PPEG see the patches in this order.
    pub fn subsample(self, k: usize, rng: &mut ChaCha8Rng) -> Self {
        if self.rows <= k {
            return self;
        }
        let w = self.width;
        let mut data = Vec::with_capacity(k * w);
        for i in sample(rng, self.rows, k) {
            data.extend_from_slice(&self.data[i * w..(i + 1) * w]);
        }
        Self {
            data,
            rows: k,
            width: w,
        }
    }

    pub fn to_tensor(&self) -> Tensor {
        Tensor::from_slice(&self.data).view([self.rows as i64, self.width as i64])
    }
}

/// One patient's inputs in plain memory ([`Dataset::raw_inputs`]); [`RawInputs::to_tensors`]
/// makes the model's [`Inputs`] on the thread that trains.
#[derive(Debug)]
pub struct RawInputs {
    pub wsi: Option<Rows>,
    pub genomics: Option<Vec<Vec<f32>>>,
    pub mri: Option<Rows>,
}

impl RawInputs {
    pub fn to_tensors(&self) -> Inputs {
        Inputs {
            wsi: self.wsi.as_ref().map(Rows::to_tensor),
            genomics: self
                .genomics
                .as_ref()
                .map(|g| g.iter().map(|v| Tensor::from_slice(v)).collect()),
            mri: self.mri.as_ref().map(Rows::to_tensor),
        }
    }
}

/// The cohort with, for each patient, where each modality comes from.
pub struct Dataset {
    pub cohort: Cohort,
    pub genomics: Option<Genomics>,
    /// Per patient: the slide feature files found.
    pub slides: Option<Vec<Vec<PathBuf>>>,
    /// Per patient: the MRI feature file, when present.
    pub mri: Option<Vec<Option<PathBuf>>>,
    /// Per patient: why it cannot be used (None = usable).
    pub missing: Vec<Option<String>>,
    pub wsi_dim: i64,
    pub mri_dim: i64,
}

/// Slide ids name files without their extension (`….svs` → `….h5`).
fn slide_stem(slide_id: &str) -> &str {
    for ext in [
        ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".bif",
    ] {
        if let Some(stem) = slide_id.strip_suffix(ext) {
            return stem;
        }
    }
    slide_id
}

/// The `features` [N, D] dataset of a cache file, as a tensor (copied once, from HDF5's buffer).
pub fn read_features(path: &Path) -> Result<Tensor, DataError> {
    Ok(Rows::read(path)?.to_tensor())
}

fn feature_width(path: &Path, dataset: &str) -> Result<i64, DataError> {
    let file = hdf5::File::open(path).map_err(|e| file_error(path, e))?;
    let shape = file
        .dataset(dataset)
        .map_err(|e| file_error(path, e))?
        .shape();
    match shape.as_slice() {
        [_, d] => Ok(*d as i64),
        other => Err(file_error(
            path,
            format!("`{dataset}` has shape {other:?}, expected [N, D]"),
        )),
    }
}

impl Dataset {
    pub fn load(config: &Config) -> Result<Self, DataError> {
        Self::load_with(config, Labels::Required)
    }

    /// [`Dataset::load`], the cohort's survival labels optional with [`Labels::Optional`]
    /// (scoring a new cohort).
    pub fn load_with(config: &Config, labels: Labels) -> Result<Self, DataError> {
        let cohort_path =
            config.paths.cohort.as_deref().ok_or_else(|| {
                DataError::Config("configuration: `paths.cohort` is not set".into())
            })?;
        let cohort =
            Cohort::read_with(cohort_path, labels).map_err(|e| DataError::Config(e.to_string()))?;
        let modalities = &config.dataset.modalities;
        let cache_dir = config.cache_dir();
        let mut missing: Vec<Option<String>> = vec![None; cohort.len()];
        let mut note = |i: usize, why: String| {
            missing[i].get_or_insert(why);
        };

        let genomics = if modalities.contains(&Modality::Genomics) {
            let all_genes =
                config.model.architecture.entry().genomics == crate::model::GenomicsInput::AllGenes;
            let g = Genomics::read(&cache_dir.join(crate::genomics::OUTPUT), all_genes)?;
            for (i, p) in cohort.patients.iter().enumerate() {
                if !g.rows.contains_key(&p.case_id) {
                    note(i, "no row in genomics.h5".into());
                }
            }
            Some(g)
        } else {
            None
        };

        let mut wsi_dim = 0;
        let slides = if modalities.contains(&Modality::Wsi) {
            let dir = config
                .paths
                .features
                .clone()
                .unwrap_or_else(|| cache_dir.join("features"));
            let mut all = Vec::new();
            for (i, p) in cohort.patients.iter().enumerate() {
                let files: Vec<PathBuf> = p
                    .slide_ids
                    .iter()
                    .map(|s| dir.join(format!("{}.h5", slide_stem(s))))
                    .filter(|f| f.is_file())
                    .collect();
                if files.is_empty() {
                    note(i, format!("no slide features in {}", dir.display()));
                } else if wsi_dim == 0 {
                    wsi_dim = feature_width(&files[0], "features")?;
                }
                all.push(files);
            }
            Some(all)
        } else {
            None
        };

        let mut mri_dim = 0;
        let mri = if modalities.contains(&Modality::Mri) {
            let dir = cache_dir.join("mri");
            let mut all = Vec::new();
            for (i, p) in cohort.patients.iter().enumerate() {
                let f = dir.join(format!("{}.h5", p.case_id));
                if f.is_file() {
                    if mri_dim == 0 {
                        mri_dim = feature_width(&f, "features")?;
                    }
                    all.push(Some(f));
                } else {
                    note(i, format!("no MRI features {}", f.display()));
                    all.push(None);
                }
            }
            Some(all)
        } else {
            None
        };
        Ok(Self {
            cohort,
            genomics,
            slides,
            mri,
            missing,
            wsi_dim,
            mri_dim,
        })
    }

    pub fn group_sizes(&self) -> Vec<i64> {
        self.genomics
            .as_ref()
            .map(|g| g.groups.iter().map(|m| m.ncols() as i64).collect())
            .unwrap_or_default()
    }

    /// Rows of genomics.h5 for cohort positions.
    pub fn genomic_rows(&self, patients: &[usize]) -> Vec<usize> {
        match &self.genomics {
            Some(g) => patients
                .iter()
                .filter_map(|&i| g.rows.get(&self.cohort.patients[i].case_id).copied())
                .collect(),
            None => Vec::new(),
        }
    }

    /// One patient's model inputs as tensors ([`Dataset::raw_inputs`], made into tensors on the
    /// calling thread). `rng` subsamples bags larger than `max_patches`.
    pub fn inputs(
        &self,
        patient: usize,
        scaler: Option<&Scaler>,
        max_patches: Option<usize>,
        rng: &mut ChaCha8Rng,
    ) -> Result<Inputs, DataError> {
        Ok(self
            .raw_inputs(patient, scaler, max_patches, rng)?
            .to_tensors())
    }

    /// One patient's inputs in plain memory, without libtorch (any thread may call it): the
    /// standardised genomic groups, the slides' bags one after another (at most `max_patches`
    /// of them, drawn with `rng`), the MRI features.
    pub fn raw_inputs(
        &self,
        patient: usize,
        scaler: Option<&Scaler>,
        max_patches: Option<usize>,
        rng: &mut ChaCha8Rng,
    ) -> Result<RawInputs, DataError> {
        let case = &self.cohort.patients[patient].case_id;
        let genomics = match (&self.genomics, scaler) {
            (Some(g), Some(s)) => {
                let row = g.rows[case];
                Some(
                    g.groups
                        .iter()
                        .enumerate()
                        .map(|(k, m)| {
                            (0..m.ncols())
                                .map(|c| ((m[[row, c]] - s.mean[k][c]) / s.std[k][c]) as f32)
                                .collect()
                        })
                        .collect(),
                )
            }
            _ => None,
        };
        let wsi = match &self.slides {
            Some(all) => {
                let parts = all[patient]
                    .iter()
                    .map(|path| Ok((path.clone(), Rows::read(path)?)))
                    .collect::<Result<Vec<_>, DataError>>()?;
                if parts.is_empty() {
                    return Err(DataError::Config(format!("case {case}: no slide features")));
                }
                let bag = Rows::concat(parts)?;
                Some(match max_patches {
                    Some(k) => bag.subsample(k, rng),
                    None => bag,
                })
            }
            None => None,
        };
        let mri = match &self.mri {
            Some(all) => {
                let path = all[patient]
                    .as_ref()
                    .ok_or_else(|| DataError::Config(format!("case {case}: no MRI features")))?;
                Some(Rows::read(path)?)
            }
            None => None,
        };
        Ok(RawInputs { wsi, genomics, mri })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn genomics(columns: Vec<Vec<f64>>) -> Genomics {
        let rows = columns[0].len();
        let mut m = Array2::<f64>::zeros((rows, columns.len()));
        for (c, col) in columns.iter().enumerate() {
            for (r, v) in col.iter().enumerate() {
                m[[r, c]] = *v;
            }
        }
        Genomics {
            rows: HashMap::new(),
            names: vec!["g".into()],
            columns: vec![(0..columns.len()).map(|c| format!("c{c}")).collect()],
            groups: vec![m],
        }
    }

    #[test]
    fn a_constant_column_scales_by_one_as_scikit_learn() {
        // 296 training patients (about a BLCA fold) with the same non-zero value: Σ(x/n)
        // left a std of 7e-16, and a validation value of 0.2 became 1.4e14.
        let n = 296;
        let g = genomics(vec![vec![0.1; n], (0..n).map(|i| (i % 4) as f64).collect()]);
        let rows: Vec<usize> = (0..n).collect();
        let s = Scaler::fit(&g, &rows);
        assert_eq!(s.std[0][0], 1.0);
        assert!((s.mean[0][0] - 0.1).abs() < 1e-15);
        assert!(((0.2 - s.mean[0][0]) / s.std[0][0] - 0.1).abs() < 1e-12);
        // A varying column: population std (ddof 0) of 0,1,2,3 repeated = √1.25.
        assert!((s.mean[0][1] - 1.5).abs() < 1e-12);
        assert!((s.std[0][1] - 1.25f64.sqrt()).abs() < 1e-12);
        // All-zero and single-patient columns scale by 1 too.
        let g = genomics(vec![vec![0.0; 5], vec![3.0]]);
        let s = Scaler::fit(&g, &[0]);
        assert_eq!(s.std[0], vec![1.0, 1.0]);
    }

    /// A patient's slides are concatenated in order, as `torch.cat` would; slides of different
    /// widths are an error naming the slide.
    #[test]
    fn plain_memory_bags_equal_the_tensor_bags() {
        let (n, w) = (300, 3);
        let rows = Rows {
            data: (0..n * w).map(|x| x as f32).collect(),
            rows: n,
            width: w,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        assert_eq!(
            rows.clone().subsample(n, &mut rng),
            rows,
            "small bags are kept whole"
        );
        let two = Rows::concat(vec![
            (PathBuf::from("a.h5"), rows.clone()),
            (PathBuf::from("b.h5"), rows.clone()),
        ])
        .unwrap();
        assert!(two
            .to_tensor()
            .equal(&Tensor::cat(&[rows.to_tensor(), rows.to_tensor()], 0)));
        let narrow = Rows {
            data: vec![0.0; 4],
            rows: 2,
            width: 2,
        };
        let err = Rows::concat(vec![
            (PathBuf::from("a.h5"), rows.clone()),
            (PathBuf::from("b.h5"), narrow),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("b.h5: ") && err.contains("2 wide"), "{err}");
    }

    #[test]
    fn subsampled_bags_keep_the_drawn_order() {
        let w = 2;
        let bag = Rows {
            data: (0..1000 * w).map(|x| x as f32).collect(),
            rows: 1000,
            width: w,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let kept = bag.clone().subsample(100, &mut rng);
        assert_eq!((kept.rows, kept.width), (100, w));
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let drawn: Vec<f32> = sample(&mut rng, 1000, 100)
            .into_iter()
            .flat_map(|i| [(i * w) as f32, (i * w + 1) as f32])
            .collect();
        assert_eq!(kept.data, drawn);
        assert!(
            kept.data
                .chunks(w)
                .collect::<Vec<_>>()
                .windows(2)
                .any(|p| p[0][0] > p[1][0]),
            "the drawn order, not sorted"
        );
        // Bags no larger than k are kept whole, in order.
        let small = Rows {
            data: bag.data[..50 * w].to_vec(),
            rows: 50,
            width: w,
        };
        assert_eq!(small.clone().subsample(100, &mut rng), small);
    }
}
