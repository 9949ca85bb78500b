//! The `pipelines/<dataset>.yaml` schema, its defaults, and `--set` overrides.
//!
//! Every key has a default, so a minimal file names only paths. Unknown keys and wrong types are
//! refused before any work starts, with the key's full path in the message; each section checks
//! its own values (`validate` beside its struct). The reference for every key is
//! `docs/CONFIG.md`.
//!
//! To add a key: a field with a doc comment and a default in its section's struct, its check
//! in that section's `validate`, and a row in docs/CONFIG.md with the same default (the test
//! `every_key_is_documented_with_its_default` fails until it is there).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

use crate::encode::{resnet2d, resnet3d, PatchEncoder, VolumeEncoder};
use crate::features::Precision;
use crate::model::loss::Distance;
use crate::model::{Architecture, MoeOutputRule, RfrEval, UnchosenExperts};
use crate::survival::RiskSplitRule;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the configuration: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid YAML: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("{origin}: key `{key}`: {message}")]
    Key {
        origin: String,
        key: String,
        message: String,
    },
    #[error("--set {raw:?}: {message}")]
    Override { raw: String, message: String },
}

/// A value a section refuses: its key within the section and why.
struct Invalid {
    key: &'static str,
    message: String,
}

fn invalid(key: &'static str, message: impl Into<String>) -> Result<(), Invalid> {
    Err(Invalid {
        key,
        message: message.into(),
    })
}

/// The whole configuration of one dataset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub dataset: DatasetConfig,
    pub paths: PathsConfig,
    pub tile: TileConfig,
    pub features: FeaturesConfig,
    pub genomics: GenomicsConfig,
    pub mri: MriConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub predict: PredictConfig,
    pub report: ReportConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    Wsi,
    Genomics,
    Mri,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetConfig {
    /// Names the cache and run folders; defaults to the config file's name without `.yaml`.
    pub name: String,
    /// One modality (a unimodal baseline) or two (WSI with genomics or MRI).
    pub modalities: Vec<Modality>,
}

impl DatasetConfig {
    fn validate(&self) -> Result<(), Invalid> {
        let modalities = &self.modalities;
        let distinct: BTreeSet<_> = modalities.iter().collect();
        if modalities.is_empty() || modalities.len() > 2 || distinct.len() != modalities.len() {
            return invalid(
                "modalities",
                format!("must name one or two different modalities, got {modalities:?}"),
            );
        }
        if modalities.len() == 2 && !modalities.contains(&Modality::Wsi) {
            return invalid(
                "modalities",
                "a pair must include wsi (wsi + genomics or wsi + mri)",
            );
        }
        Ok(())
    }
}

impl Default for DatasetConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            modalities: vec![Modality::Wsi, Modality::Genomics],
        }
    }
}

/// Relative paths are taken from the directory the command runs in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    pub slides: Option<PathBuf>,
    /// MCAT-style cohort CSV: one row per slide with `case_id`, `slide_id`, `survival_months`,
    /// `censorship` (1 = censored).
    pub cohort: Option<PathBuf>,
    pub signatures: Option<PathBuf>,
    /// Directory holding `splits_0.csv` … `splits_4.csv`.
    pub splits: Option<PathBuf>,
    pub mri: Option<PathBuf>,
    /// Default `cache/<dataset.name>`.
    pub cache: Option<PathBuf>,
    /// Default `runs/<dataset.name>`.
    pub runs: Option<PathBuf>,
    /// Patch features, one `<slide>.h5` per slide (CLAM's `h5_files/` layout; CLAM or TRIDENT
    /// folders work as they are). Default `<cache>/features`.
    pub features: Option<PathBuf>,
}

/// CLAM's segmentation parameter sets (`presets/*.csv` in CLAM; `clam_default` is
/// `create_patches_fp.py`'s built-in defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegPreset {
    ClamDefault,
    Tcga,
    Biopsy,
}

/// Which level-0 resolution the grid is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MppRounding {
    /// The slide's recorded mpp as it is (0.2527 stays 0.2527).
    Real,
    /// CLAM/TRIDENT parity: the nominal magnification's mpp (10 / objective power, e.g. 0.25
    /// for a 40x slide whose real mpp is 0.2527).
    Nominal,
}

/// CLAM's rules for keeping a grid position against a tissue contour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContourFn {
    /// Any of four points at ±1/4 patch around the centre lies in the contour (CLAM's default).
    FourPt,
    /// All four points lie in the contour.
    FourPtHard,
    /// The centre lies in the contour.
    Center,
    /// The top-left corner lies in the contour.
    Basic,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TileConfig {
    /// Resolution of the output patches in um/px (0.5 = 20x).
    pub target_mpp: f64,
    /// Output patch side in pixels at `target_mpp`.
    pub patch_size: u32,
    /// Grid step in output pixels (`patch_size` = non-overlapping).
    pub step: u32,
    pub preset: SegPreset,
    /// Overrides of the preset's values (null = the preset's).
    pub sthresh: Option<u8>,
    pub mthresh: Option<u32>,
    pub close: Option<u32>,
    pub use_otsu: Option<bool>,
    pub a_t: Option<f64>,
    pub a_h: Option<f64>,
    pub max_n_holes: Option<usize>,
    /// Downsample (relative to level 0) of the pyramid level the tissue mask is computed on
    /// (OpenSlide's best level for it, as CLAM picks).
    pub seg_downsample: f64,
    /// When no pyramid level is within 8x of `seg_downsample` (single-level files), the mask
    /// image is box-averaged from level 0 in strips to this um/px (null: to `seg_downsample`).
    pub seg_strip_mpp: Option<f64>,
    pub contour_fn: ContourFn,
    pub mpp_rounding: MppRounding,
    /// um/px for slides whose metadata has none (`--mpp`); null = such slides fail.
    pub fallback_mpp: Option<f64>,
    /// Allow slides coarser than `target_mpp` (read fewer pixels and upsample).
    pub allow_upsample: bool,
    /// Slides processed at once (0 = one per core).
    pub workers: usize,
}

impl TileConfig {
    fn validate(&self) -> Result<(), Invalid> {
        let positive = |m: f64| m > 0.0 && m.is_finite();
        if !positive(self.target_mpp) {
            return invalid(
                "target_mpp",
                format!(
                    "must be a positive number of um/px, got {}",
                    self.target_mpp
                ),
            );
        }
        if self.patch_size == 0 || self.step == 0 {
            return invalid("patch_size", "patch_size and step must be at least 1 pixel");
        }
        if !(self.seg_downsample >= 1.0 && self.seg_downsample.is_finite()) {
            return invalid(
                "seg_downsample",
                format!("must be at least 1, got {}", self.seg_downsample),
            );
        }
        if self.seg_strip_mpp.is_some_and(|m| !positive(m)) {
            return invalid(
                "seg_strip_mpp",
                "must be a positive number of um/px (or null)",
            );
        }
        if self.mthresh.is_some_and(|k| k % 2 == 0 || k > 15) {
            return invalid(
                "mthresh",
                "the median kernel must be odd and at most 15 (CLAM: 7)",
            );
        }
        if self.close.is_some_and(|k| k > 15) {
            return invalid("close", "the closing kernel must be at most 15 (CLAM: 4)");
        }
        if self.fallback_mpp.is_some_and(|m| !positive(m)) {
            return invalid("fallback_mpp", "must be a positive number of um/px");
        }
        Ok(())
    }
}

impl Default for TileConfig {
    fn default() -> Self {
        Self {
            target_mpp: 0.5,
            patch_size: 256,
            step: 256,
            preset: SegPreset::ClamDefault,
            sthresh: None,
            mthresh: None,
            close: None,
            use_otsu: None,
            a_t: None,
            a_h: None,
            max_n_holes: None,
            seg_downsample: 64.0,
            seg_strip_mpp: Some(4.0),
            contour_fn: ContourFn::FourPt,
            mpp_rounding: MppRounding::Real,
            fallback_mpp: None,
            allow_upsample: false,
            workers: 0,
        }
    }
}

/// The configuration's `features` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeaturesConfig {
    /// A patch encoder of `encode::registry` (`resnet50_trunc` 1024-d, CLAM's; `resnet50`
    /// 2048-d).
    #[serde(with = "crate::encode::registry::patch")]
    pub encoder: &'static PatchEncoder,
    /// torchvision's ResNet-50 state dict (.pth or .safetensors).
    pub weights: Option<PathBuf>,
    /// Run without `weights` on seeded random ones (outputs stamped NOT pretrained), as
    /// `--random-weights` does; the demo sets it because it ships no ImageNet weights.
    pub random_weights: bool,
    /// Encoder input side: null = the patch size (legacy CLAM, 256 unresized); 224 = current CLAM.
    pub resize: Option<u32>,
    pub batch_size: usize,
    /// `auto` (every CUDA device, else the CPU), `cpu`, `cuda`, `cuda:N`.
    pub device: String,
    pub precision: Precision,
    /// Reader threads (0 = one per core, less two per GPU when on CUDA).
    pub readers: usize,
    /// Ready batches buffered between the readers and the model.
    pub queue_batches: usize,
    /// Decode JPEG-tiled levels at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling) when the read
    /// size is that multiple of the input size, instead of OpenSlide's full decode + resize.
    pub fast_jpeg: bool,
}

impl FeaturesConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.batch_size == 0 || self.resize == Some(0) {
            return invalid("batch_size", "batch_size and resize must be at least 1");
        }
        if let (Some(needed), Some(resize)) = (self.encoder.input_size, self.resize) {
            if needed != resize {
                return invalid(
                    "resize",
                    format!(
                        "`{}` takes {needed}x{needed} inputs; set resize: {needed} or null",
                        self.encoder.name
                    ),
                );
            }
        }
        Ok(())
    }
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        Self {
            encoder: &resnet2d::RESNET50_TRUNC,
            weights: None,
            random_weights: false,
            resize: None,
            batch_size: 64,
            device: "auto".into(),
            precision: Precision::Fp32,
            readers: 0,
            queue_batches: 4,
            fast_jpeg: true,
        }
    }
}

/// What to do with a blank or non-numeric gene value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingPolicy {
    /// Leave the patient out, with a message naming the case and the column.
    Error,
    /// Fill with 0.
    Zero,
    /// Fill with the column's median over the cohort's patients.
    Median,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenomicsConfig {
    pub missing: MissingPolicy,
    /// Reproduce the released HDMoE code's loss of the table's last gene column
    /// (MODEL_SPEC 1.3: `ZXDC_rnaseq` on MCAT's tables).
    pub release_quirk: bool,
}

impl Default for GenomicsConfig {
    fn default() -> Self {
        Self {
            missing: MissingPolicy::Error,
            release_quirk: false,
        }
    }
}

/// What to do with a 4-D NIfTI where a 3-D volume is expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Volume4d {
    /// The case fails with a message naming the file.
    Error,
    /// Use the first 3-D volume.
    First,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MriConfig {
    /// File stems of the sequences in each case folder (`<stem>.nii.gz` or `<stem>.nii`).
    pub sequences: Vec<String>,
    /// File stem of the case's tumour mask; `<sequence>_mask` files take precedence.
    pub mask: String,
    /// Added around the mask's bounding box on every side.
    pub margin_mm: f64,
    /// Voxels (x, y, z) of the resampled crop the encoder sees.
    pub output_size: [usize; 3],
    /// Intensities are clipped to these percentiles of the crop before z-scoring.
    pub clip_percentiles: [f64; 2],
    /// A volume encoder of `encode::registry` (`resnet3d_18` 512-d, `resnet50_slices` 2048-d).
    #[serde(with = "crate::encode::registry::volume")]
    pub encoder: &'static VolumeEncoder,
    /// torchvision state dict (.pth or .safetensors) for the encoder.
    pub weights: Option<PathBuf>,
    /// Run without `weights` on seeded random ones, as `--random-weights` does.
    pub random_weights: bool,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    pub volume_4d: Volume4d,
}

impl MriConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.sequences.is_empty() {
            return invalid("sequences", "must name at least one sequence");
        }
        if self.output_size.contains(&0) || self.margin_mm.is_nan() || self.margin_mm < 0.0 {
            return invalid(
                "output_size",
                "output sizes must be positive and margin_mm non-negative",
            );
        }
        let [lo, hi] = self.clip_percentiles;
        if !(0.0 <= lo && lo < hi && hi <= 100.0) {
            return invalid(
                "clip_percentiles",
                format!("need 0 <= low < high <= 100, got [{lo}, {hi}]"),
            );
        }
        Ok(())
    }
}

impl Default for MriConfig {
    fn default() -> Self {
        Self {
            sequences: ["arterial", "delay", "hepatobiliary", "t1", "t2"]
                .map(String::from)
                .to_vec(),
            mask: "mask".into(),
            margin_mm: 10.0,
            output_size: [64, 64, 32],
            clip_percentiles: [0.5, 99.5],
            encoder: &resnet3d::R3D_18,
            weights: None,
            random_weights: false,
            device: "auto".into(),
            volume_4d: Volume4d::Error,
        }
    }
}

/// `paper` (token length 64, the paper's best) or `release` (token length 256, the released
/// code's structure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelPreset {
    Paper,
    Release,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub preset: ModelPreset,
    pub architecture: Architecture,
    /// Token length g (null: 64 for `paper`, 256 for `release`); g = dim removes the
    /// fine-grained tokens (one token per modality).
    pub token_length: Option<i64>,
    pub dim: i64,
    pub heads: i64,
    /// Nyström landmarks (null: dim / 2).
    pub landmarks: Option<i64>,
    pub experts: i64,
    pub top_k: i64,
    pub shared_expert: bool,
    /// Renormalise the top-k router weights to sum to 1 for k > 1 (the release does not).
    pub renormalise_top_k: bool,
    /// Routed experts no token chose: `step` (the release: zero gradients, stepped by Adam's
    /// coupled L2) or `freeze` (left out of the step).
    pub unchosen_experts: UnchosenExperts,
    /// `separate`: routed and shared outputs passed on as two vectors (the release); `sum`:
    /// their sum (the paper's Eq. 1/2, MODEL_SPEC 8.2).
    pub moe_output: MoeOutputRule,
    /// Random feature recombination on (off: s₁ = s₂ = 1 always).
    pub rfr: bool,
    pub rfr_eval: RfrEval,
    pub lambda_decouple: f64,
    pub lambda_balance: f64,
    pub dm: Distance,
    /// CLAM's weight of the survival (bag) loss; its instance loss gets 1 − this.
    pub bag_weight: f64,
    /// CMTA's `alpha`: the weight of its alignment loss.
    pub alignment_weight: f64,
    /// CCL's weight of its cohort loss.
    pub cohort_weight: f64,
    /// PIBD's loss weights (its `--gamma`, `--alpha`, `--beta`, `--sigma`).
    pub pibd_gamma: f64,
    pub pibd_alpha: f64,
    pub pibd_beta: f64,
    pub pibd_sigma: f64,
    /// LD-CVAE's loss weights (reconstruction, its `beta`, `alpha` and KL weight).
    pub ldcvae_reconstruction: f64,
    pub ldcvae_beta: f64,
    pub ldcvae_alpha: f64,
    pub ldcvae_kl: f64,
    /// Keep at most this many patches per patient bag (sampled without replacement, seeded).
    pub max_patches: Option<usize>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            preset: ModelPreset::Paper,
            architecture: Architecture::HDMOE,
            token_length: None,
            dim: 256,
            heads: 8,
            landmarks: None,
            experts: 8,
            top_k: 1,
            shared_expert: true,
            renormalise_top_k: false,
            unchosen_experts: UnchosenExperts::Step,
            moe_output: MoeOutputRule::Separate,
            rfr: true,
            rfr_eval: RfrEval::Random,
            lambda_decouple: 1.0,
            lambda_balance: 0.01,
            dm: Distance::Cos,
            bag_weight: 0.7,
            alignment_weight: 1.0,
            cohort_weight: 1.0,
            pibd_gamma: 1.0,
            pibd_alpha: 0.1,
            pibd_beta: 0.01,
            pibd_sigma: 0.1,
            ldcvae_reconstruction: 1.0,
            ldcvae_beta: 1.0,
            ldcvae_alpha: 0.1,
            ldcvae_kl: 0.1,
            max_patches: None,
        }
    }
}

impl ModelConfig {
    fn validate(&self) -> Result<(), Invalid> {
        let g = self.resolved_token_length();
        if g <= 1 || g % 2 != 0 || self.dim % g != 0 || self.dim % self.heads != 0 {
            return invalid(
                "token_length",
                format!(
                    "token length {g} must be even and divide model.dim ({}), and heads must divide dim",
                    self.dim
                ),
            );
        }
        if self.top_k < 1 || self.top_k > self.experts {
            return invalid(
                "top_k",
                format!("must be in 1..=experts ({})", self.experts),
            );
        }
        if !(0.0..=1.0).contains(&self.bag_weight) {
            return invalid("bag_weight", "must be in 0..=1");
        }
        for (key, weight) in [
            ("alignment_weight", self.alignment_weight),
            ("cohort_weight", self.cohort_weight),
            ("pibd_gamma", self.pibd_gamma),
            ("pibd_alpha", self.pibd_alpha),
            ("pibd_beta", self.pibd_beta),
            ("pibd_sigma", self.pibd_sigma),
            ("ldcvae_reconstruction", self.ldcvae_reconstruction),
            ("ldcvae_beta", self.ldcvae_beta),
            ("ldcvae_alpha", self.ldcvae_alpha),
            ("ldcvae_kl", self.ldcvae_kl),
        ] {
            if !(weight >= 0.0 && weight.is_finite()) {
                return invalid(key, "must be a finite number >= 0");
            }
        }
        Ok(())
    }

    pub fn resolved_token_length(&self) -> i64 {
        self.token_length.unwrap_or(match self.preset {
            ModelPreset::Paper => 64,
            ModelPreset::Release => 256,
        })
    }
}

/// The learning rate over the epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    Poly,
    Constant,
}

impl LrSchedule {
    /// The rate of `epoch` (0-based) of `epochs`.
    pub fn rate(self, lr: f64, epoch: usize, epochs: usize) -> f64 {
        match self {
            Self::Poly => lr * (1.0 - epoch as f64 / epochs as f64).powf(0.9),
            Self::Constant => lr,
        }
    }
}

/// Which epoch's predictions are the headline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// The last epoch (never looks at the reported fold).
    Last,
    /// The epoch with the best C-index on the reported fold (the paper's protocol; optimistic).
    Best,
    /// The epoch with the best C-index on a stratified slice held out of the training split.
    Nested,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Seeds every random choice of every stage.
    pub seed: u64,
    /// Which folds (split files) to use.
    pub folds: Vec<usize>,
    pub epochs: usize,
    pub lr: f64,
    /// Coupled L2 (Adam's weight_decay, not AdamW).
    pub weight_decay: f64,
    /// `poly`: lr·(1 − e/epochs)^0.9 at epoch e (the release's Engine); `constant`: lr
    /// throughout (the paper's text, MODEL_SPEC 8.9).
    pub lr_schedule: LrSchedule,
    /// Samples per optimiser step (1 = a step after every patient, as the release).
    pub accumulate: usize,
    pub selection: Selection,
    /// Fraction of each training split held out for `selection: nested`.
    pub nested_fraction: f64,
    /// Class-balanced sampling with replacement over the 8 (bin × censorship) classes.
    pub weighted_sampling: bool,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Also train one model on every usable patient (`runs/<name>/final/`), for `predict
    /// --ensemble final`.
    #[serde(rename = "final")]
    pub final_model: bool,
    /// The final model's epochs, fixed in advance. Unset: with `selection: nested`, the median
    /// over folds of the nested selection's epoch count; otherwise `epochs`. Never chosen on
    /// the reported folds.
    pub final_epochs: Option<usize>,
    /// Case ids kept out of every fold (and of the final model), for an external-validation
    /// check on patients no model has seen: `run` scores them with the fold ensemble at the
    /// frozen training cutoff and reports them apart (`runs/<name>/report_external/`).
    pub holdout: Vec<String>,
}

impl TrainConfig {
    fn validate(&self) -> Result<(), Invalid> {
        let folds: BTreeSet<_> = self.folds.iter().collect();
        if folds.is_empty() || folds.len() != self.folds.len() {
            return invalid(
                "folds",
                format!("must list distinct folds, got {:?}", self.folds),
            );
        }
        if self.accumulate == 0 || self.epochs == 0 {
            return invalid("epochs", "epochs and accumulate must be at least 1");
        }
        if !(self.nested_fraction > 0.0 && self.nested_fraction < 0.5) {
            return invalid("nested_fraction", "must lie in (0, 0.5)");
        }
        if self.final_epochs == Some(0) {
            return invalid("final_epochs", "must be at least 1");
        }
        let held: BTreeSet<_> = self.holdout.iter().collect();
        if held.len() != self.holdout.len() || self.holdout.iter().any(|c| c.trim().is_empty()) {
            return invalid(
                "holdout",
                format!(
                    "must list distinct, non-empty case ids, got {:?}",
                    self.holdout
                ),
            );
        }
        Ok(())
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            folds: vec![0, 1, 2, 3, 4],
            epochs: 30,
            lr: 5e-4,
            weight_decay: 1e-5,
            lr_schedule: LrSchedule::Poly,
            accumulate: 1,
            selection: Selection::Last,
            nested_fraction: 0.2,
            weighted_sampling: true,
            device: "auto".into(),
            final_model: false,
            final_epochs: None,
            holdout: Vec::new(),
        }
    }
}

/// `predict --run`: how a new cohort's genomic columns that the training cohort had, but the
/// new table lacks, are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingColumns {
    /// Refuse, listing them.
    #[default]
    Error,
    /// 0 (the raw value, before the training scaler).
    Zero,
    /// The training cohort's median of that column.
    Median,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PredictConfig {
    pub missing_columns: MissingColumns,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TTestKind {
    Both,
    Student,
    Welch,
}

impl TTestKind {
    pub fn includes_student(self) -> bool {
        matches!(self, Self::Both | Self::Student)
    }

    pub fn includes_welch(self) -> bool {
        matches!(self, Self::Both | Self::Welch)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// Threshold between the high- and low-risk groups (high iff risk ≥ threshold).
    pub risk_split: RiskSplitRule,
    /// Which two-sample t-tests compare risk between short and long survivors.
    pub ttest: TTestKind,
    /// Level of the confidence intervals: Kaplan–Meier bands, the Cox hazard ratios and the
    /// calibration table.
    pub ci_level: f64,
    /// Uno's C only weighs pairs whose event is before tau; `None`: every pair (sksurv's
    /// `tau=None`).
    pub ipcw_tau: Option<f64>,
    /// Times of the cumulative/dynamic AUC and the Brier score; `None`: the 25th, 50th and
    /// 75th percentiles of the event times (numpy's linear quantile).
    pub metric_times: Option<Vec<f64>>,
    /// Numeric columns of the cohort table the Cox hazard ratio of the high-risk group is
    /// also adjusted for (e.g. `[age]`); empty: the unadjusted fit only.
    pub cox_covariates: Vec<String>,
    /// The table `cox_covariates` are read from (one row per patient or slide, by `case_id`);
    /// `None`: the run's `paths.cohort`. Set it for an external cohort.
    pub covariates_table: Option<PathBuf>,
}

impl ReportConfig {
    fn validate(&self) -> Result<(), Invalid> {
        let level = self.ci_level;
        if !(level > 0.0 && level < 1.0) {
            return invalid(
                "ci_level",
                format!("must lie strictly between 0 and 1, got {level}"),
            );
        }
        if let Some(tau) = self.ipcw_tau {
            if !(tau > 0.0 && tau.is_finite()) {
                return invalid("ipcw_tau", format!("must be a positive time, got {tau}"));
            }
        }
        if let Some(times) = &self.metric_times {
            if times.is_empty() {
                return invalid(
                    "metric_times",
                    "must list at least one time (or be null for the default percentiles)",
                );
            }
            if let Some(t) = times.iter().find(|t| !(**t > 0.0 && t.is_finite())) {
                return invalid(
                    "metric_times",
                    format!("times must be positive, got {t} in {times:?}"),
                );
            }
            if let Some(w) = times.windows(2).find(|w| w[0] >= w[1]) {
                return invalid(
                    "metric_times",
                    format!(
                        "times must be strictly increasing, but {} follows {} in {times:?}",
                        w[1], w[0]
                    ),
                );
            }
        }
        let mut seen = BTreeSet::new();
        for name in &self.cox_covariates {
            if name.trim().is_empty() {
                return invalid("cox_covariates", "a covariate name is blank");
            }
            if name == "case_id" {
                return invalid("cox_covariates", "`case_id` is the key, not a covariate");
            }
            if !seen.insert(name.as_str()) {
                return invalid("cox_covariates", format!("`{name}` is listed twice"));
            }
        }
        Ok(())
    }
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self {
            risk_split: RiskSplitRule::Median,
            ttest: TTestKind::Both,
            ci_level: 0.95,
            ipcw_tau: None,
            metric_times: None,
            cox_covariates: Vec::new(),
            covariates_table: None,
        }
    }
}

impl Config {
    /// Reads `path` (or starts from the defaults when `None`), applies `--set` overrides,
    /// fills derived defaults and validates.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self, ConfigError> {
        let (mut tree, origin) = match path {
            Some(path) => (read_tree(path)?, path.display().to_string()),
            None => (Value::Mapping(Mapping::new()), "defaults".to_owned()),
        };
        for raw in overrides {
            apply_override(&mut tree, raw)?;
        }
        let origin = if overrides.is_empty() {
            origin
        } else {
            format!("{origin} with --set")
        };
        let mut config: Config =
            serde_path_to_error::deserialize(tree).map_err(|e| key_error(&origin, e))?;
        config.fill_defaults(path);
        config.validate(&origin)?;
        Ok(config)
    }

    fn fill_defaults(&mut self, path: Option<&Path>) {
        if self.dataset.name.is_empty() {
            self.dataset.name = path.and_then(|p| p.file_stem()).map_or_else(
                || "default".to_owned(),
                |s| s.to_string_lossy().into_owned(),
            );
        }
        let name = self.dataset.name.clone();
        self.paths
            .cache
            .get_or_insert_with(|| Path::new("cache").join(&name));
        self.paths
            .runs
            .get_or_insert_with(|| Path::new("runs").join(&name));
    }

    /// Every section's own checks, in file order; the first refusal names its full key.
    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let checks = [
            ("dataset", self.dataset.validate()),
            ("tile", self.tile.validate()),
            ("features", self.features.validate()),
            ("mri", self.mri.validate()),
            ("model", self.model.validate()),
            ("train", self.train.validate()),
            ("report", self.report.validate()),
        ];
        for (section, check) in checks {
            if let Err(Invalid { key, message }) = check {
                return Err(ConfigError::Key {
                    origin: origin.to_owned(),
                    key: format!("{section}.{key}"),
                    message,
                });
            }
        }
        Ok(())
    }

    /// `paths.cache` (filled in by [`Config::load`]).
    pub fn cache_dir(&self) -> PathBuf {
        self.paths
            .cache
            .clone()
            .unwrap_or_else(|| Path::new("cache").join(&self.dataset.name))
    }

    /// Where `fit` and `report` write: `paths.runs`, default `runs/<dataset name>`.
    pub fn run_dir(&self) -> PathBuf {
        self.paths
            .runs
            .clone()
            .unwrap_or_else(|| Path::new("runs").join(&self.dataset.name))
    }

    /// The resolved configuration as YAML.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_else(|e| format!("# cannot serialise: {e}\n"))
    }
}

fn read_tree(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    let tree: Value = serde_yaml::from_str(&text).map_err(|source| ConfigError::Yaml {
        path: path.to_owned(),
        source,
    })?;
    match tree {
        Value::Null => Ok(Value::Mapping(Mapping::new())),
        Value::Mapping(_) => Ok(tree),
        _ => Err(ConfigError::Key {
            origin: path.display().to_string(),
            key: "(top level)".into(),
            message: "must be a mapping of sections (dataset, paths, …)".into(),
        }),
    }
}

/// Turns serde's error into one naming the full key, e.g. `train.seed` or `report.typo`.
fn key_error(origin: &str, error: serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
    let key = error.path().to_string();
    let message = error.inner().to_string();
    let message = match message.strip_prefix("unknown field `") {
        // serde's "unknown field `x`, expected one of …": the path already names `x`.
        Some(rest) => match rest.split_once("`, ") {
            Some((_, expected)) => format!("unknown key ({expected})"),
            None => "unknown key".to_owned(),
        },
        None => message,
    };
    ConfigError::Key {
        origin: origin.to_owned(),
        key,
        message,
    }
}

/// Applies `section.key=value`; the value is parsed as YAML (so `5`, `true`, `[0, 1]` and
/// `null` have their YAML types) and type-checked with the rest of the file.
fn apply_override(tree: &mut Value, raw: &str) -> Result<(), ConfigError> {
    let fail = |message: &str| ConfigError::Override {
        raw: raw.to_owned(),
        message: message.to_owned(),
    };
    let (key, value) = raw
        .split_once('=')
        .ok_or_else(|| fail("expected section.key=value"))?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(fail("expected section.key=value"));
    }
    let value: Value =
        serde_yaml::from_str(value).map_err(|e| fail(&format!("value is not valid YAML: {e}")))?;
    let (last, sections) = parts.split_last().ok_or_else(|| fail("empty key"))?;
    let mut node = tree;
    for (depth, part) in sections.iter().enumerate() {
        let map = node
            .as_mapping_mut()
            .ok_or_else(|| fail(&format!("`{}` is not a section", parts[..depth].join("."))))?;
        node = map
            .entry(Value::String((*part).to_owned()))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
    }
    let map = node
        .as_mapping_mut()
        .ok_or_else(|| fail(&format!("`{}` is not a section", sections.join("."))))?;
    map.insert(Value::String((*last).to_owned()), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(yaml: &str, overrides: &[&str]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blca.yaml");
        std::fs::write(&path, yaml).unwrap();
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Config::load(Some(&path), &overrides)
    }

    #[test]
    fn minimal_file_gets_documented_defaults() {
        let c = load_str("paths: { cohort: x.csv }\n", &[]).unwrap();
        assert_eq!(c.dataset.name, "blca");
        assert_eq!(
            c.dataset.modalities,
            vec![Modality::Wsi, Modality::Genomics]
        );
        assert_eq!(c.paths.cache, Some(PathBuf::from("cache/blca")));
        assert_eq!(c.paths.runs, Some(PathBuf::from("runs/blca")));
        assert_eq!(c.train.seed, 1);
        assert_eq!(c.train.folds, vec![0, 1, 2, 3, 4]);
        assert_eq!(c.report.risk_split, RiskSplitRule::Median);
        assert_eq!(c.report.ttest, TTestKind::Both);
        assert_eq!(c.report.ci_level, 0.95);
        // An empty file is all defaults too.
        assert_eq!(load_str("", &[]).unwrap().train.seed, 1);
    }

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        let e = load_str("train: { epochz: 3 }\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `train.epochz`: unknown key"), "{e}");
        let e = load_str("trian: {}\n", &[]).unwrap_err().to_string();
        assert!(e.contains("key `trian`"), "{e}");
    }

    #[test]
    fn wrong_types_are_named_with_their_path() {
        let e = load_str("train: { seed: abc }\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key `train.seed`") && e.contains("invalid type"),
            "{e}"
        );
        let e = load_str("report: { risk_split: tertile }\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `report.risk_split`"), "{e}");
    }

    #[test]
    fn overrides_are_typed_and_checked() {
        let c = load_str(
            "",
            &["train.seed=7", "train.folds=[0, 2]", "report.ttest=welch"],
        )
        .unwrap();
        assert_eq!(c.train.seed, 7);
        assert_eq!(c.train.folds, vec![0, 2]);
        assert_eq!(c.report.ttest, TTestKind::Welch);
        let e = load_str("", &["train.seed=x"]).unwrap_err().to_string();
        assert!(
            e.contains("with --set") && e.contains("`train.seed`"),
            "{e}"
        );
        let e = load_str("", &["train.sed=3"]).unwrap_err().to_string();
        assert!(e.contains("`train.sed`"), "{e}");
        let e = load_str("", &["seed"]).unwrap_err().to_string();
        assert!(e.contains("section.key=value"), "{e}");
        let e = load_str("", &["train.seed=1", "train.seed.deep=1"]).unwrap_err();
        assert!(e.to_string().contains("train.seed"), "{e}");
    }

    #[test]
    fn printed_configuration_loads_back_unchanged() {
        let c = load_str(
            "",
            &["mri.encoder=resnet50_slices", "genomics.missing=median"],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blca.yaml");
        std::fs::write(&path, c.to_yaml()).unwrap();
        assert_eq!(Config::load(Some(&path), &[]).unwrap(), c);
        let d = load_str("", &["mri.encoder=resnet3d_18"]).unwrap();
        assert_eq!(d.mri.encoder, &resnet3d::R3D_18);
        let e = load_str("", &["mri.encoder=resnet50"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`mri.encoder`") && e.contains("slide encoder"),
            "{e}"
        );
    }

    /// The rows of `## `section`` in docs/CONFIG.md: (key names of the first cell, default cell).
    fn documented(section: &str) -> Vec<(Vec<String>, String)> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/CONFIG.md");
        let text = std::fs::read_to_string(path).unwrap();
        let heading = format!("## `{section}`");
        let start = text
            .find(&heading)
            .unwrap_or_else(|| panic!("no {heading}"));
        let body = &text[start + heading.len()..];
        let body = &body[..body.find("\n## ").unwrap_or(body.len())];
        body.lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.split(" | ").collect();
                let keys = cells[0]
                    .trim_start_matches("| ")
                    .split(", ")
                    .map(|k| k.trim_matches('`').to_owned())
                    .collect();
                (keys, cells.get(1).unwrap_or(&"").trim().to_owned())
            })
            .collect()
    }

    /// A default cell's value: the YAML between its first pair of backticks.
    fn same_value(cell: &str, value: &Value) -> bool {
        let Some(inner) = cell.split('`').nth(1) else {
            return false;
        };
        let Ok(documented) = serde_yaml::from_str::<Value>(inner) else {
            return false;
        };
        match (&documented, value) {
            (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
            _ => &documented == value,
        }
    }

    #[test]
    fn every_key_is_documented_with_its_default() {
        let defaults = serde_yaml::to_value(Config::default()).unwrap();
        let Value::Mapping(sections) = defaults else {
            panic!("the configuration is a mapping");
        };
        let mut problems = Vec::new();
        for (section, keys) in &sections {
            let section = section.as_str().unwrap();
            let rows = documented(section);
            let Value::Mapping(keys) = keys else { continue };
            for (key, value) in keys {
                let key = key.as_str().unwrap();
                let Some((_, cell)) = rows
                    .iter()
                    .find(|(names, _)| names.iter().any(|n| n == key))
                else {
                    problems.push(format!("{section}.{key}: no row in docs/CONFIG.md"));
                    continue;
                };
                // Null and empty defaults are derived (from the file name, the cache, the
                // preset) and documented in words; every other must be the value itself.
                let derived = value.is_null() || value.as_str() == Some("");
                let ok = if derived {
                    !cell.is_empty()
                } else {
                    same_value(cell, value)
                };
                if !ok {
                    let shown = serde_yaml::to_string(value).unwrap_or_default();
                    problems.push(format!(
                        "{section}.{key}: documented default {cell:?}, the code's is {}",
                        shown.trim()
                    ));
                }
            }
            for (names, _) in &rows {
                for name in names {
                    if !keys.contains_key(Value::String(name.clone())) {
                        problems.push(format!("{section}.{name}: documented, but no such key"));
                    }
                }
            }
        }
        assert!(
            problems.is_empty(),
            "docs/CONFIG.md and the schema differ:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn semantic_checks_name_the_key() {
        let e = load_str("report: { ci_level: 1.5 }\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`report.ci_level`"), "{e}");
        let e = load_str("dataset: { modalities: [genomics, mri] }\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`dataset.modalities`"), "{e}");
        let e = load_str("train: { folds: [1, 1] }\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`train.folds`"), "{e}");
    }

    #[test]
    fn report_metric_keys_are_checked() {
        let c = load_str(
            "report: { ipcw_tau: 60, metric_times: [12, 24.5, 36], cox_covariates: [age] }\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.report.ipcw_tau, Some(60.0));
        assert_eq!(c.report.metric_times, Some(vec![12.0, 24.5, 36.0]));
        assert_eq!(c.report.cox_covariates, vec!["age".to_owned()]);
        for (yaml, key, words) in [
            ("report: { ipcw_tau: 0 }\n", "report.ipcw_tau", "positive"),
            (
                "report: { metric_times: [12, 12] }\n",
                "report.metric_times",
                "increasing",
            ),
            (
                "report: { metric_times: [24, 12] }\n",
                "report.metric_times",
                "increasing",
            ),
            (
                "report: { metric_times: [-1, 12] }\n",
                "report.metric_times",
                "positive",
            ),
            (
                "report: { metric_times: [] }\n",
                "report.metric_times",
                "at least one",
            ),
            (
                "report: { cox_covariates: [age, age] }\n",
                "report.cox_covariates",
                "twice",
            ),
        ] {
            let e = load_str(yaml, &[]).unwrap_err().to_string();
            assert!(
                e.contains(&format!("`{key}`")) && e.contains(words),
                "{yaml}: {e}"
            );
        }
        let c = load_str("", &["report.metric_times=[6, 18]"]).unwrap();
        assert_eq!(c.report.metric_times, Some(vec![6.0, 18.0]));
    }
}
