//! `hdmoe-pipe mri`: per case, each configured MRI sequence cropped around the tumour mask,
//! normalised, resampled to a fixed size and encoded; `cache/mri/<case>.h5` holds one feature
//! row per sequence.
//!
//! The encoder is `mri.encoder`, a volume entry of `encode::registry` (how it sees a crop is
//! its `VolumeInput`): to add one, see that module. A new preprocessing option goes into
//! `MriConfig` and the `parameters` stamp.
//!
//! Layout under `paths.mri` (one folder per case; the folder name is the case id):
//!
//! ```text
//! <case>/<sequence>.nii.gz   (or .nii; NIfTI-1 or NIfTI-2), one per configured sequence
//! <case>/mask.nii.gz         the tumour mask (voxels > 0), on the grid of every sequence
//! <case>/<sequence>_mask.nii.gz   optional: a mask for that sequence only (takes precedence)
//! ```

pub mod crop;
pub mod nifti;
pub mod synthetic;

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::Array2;
use tch::Tensor;

use crate::cache::{self, CacheError, Parameters};
use crate::config::{Config, MriConfig, Volume4d};
use crate::encode::registry::VolumeInput;
use crate::encode::{self, EncodeError, Encoder};
use crate::stage::{self, Decision, ItemOutcome, Ledger, StageOptions, StageSummary};
use crop::CropBox;
use nifti::Volume;

#[derive(Debug, thiserror::Error)]
pub enum MriError {
    #[error("configuration: `paths.mri` is not set; name the folder of case folders")]
    NoRoot,
    #[error("{path}: cannot list the case folders: {source}")]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: holds no case folders")]
    NoCases(PathBuf),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("configuration: `paths.cohort` is not set; the demo writes one case per patient")]
    NoCohort,
    #[error(transparent)]
    Cohort(#[from] crate::cohort::CohortError),
    #[error(transparent)]
    Nifti(#[from] nifti::NiftiError),
    #[error("{path}: cannot write the demo MRI cases: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What one sequence contributed: its crop and where it came from.
struct Encoded {
    features: Tensor,
    crop: CropBox,
    spacing: [f64; 3],
}

/// The file for `stem` in `dir`: `.nii.gz` first, then `.nii`.
fn find_volume(dir: &Path, stem: &str) -> Option<PathBuf> {
    ["nii.gz", "nii"]
        .iter()
        .map(|ext| dir.join(format!("{stem}.{ext}")))
        .find(|p| p.is_file())
}

fn read_3d(path: &Path, rule: Volume4d) -> Result<Volume, String> {
    let volume = nifti::read(path).map_err(|e| e.to_string())?;
    match (volume.n_volumes(), rule) {
        (1, _) => Ok(volume),
        (_, Volume4d::First) => Ok(volume.volume(0)),
        (n, Volume4d::Error) => Err(format!(
            "{}: is 4-D ({:?}, {n} volumes) where a 3-D volume is expected; set mri.volume_4d: first to use the first volume",
            path.display(),
            volume.dims
        )),
    }
}

/// Crop, normalise and resample one sequence; returns [z, y, x] and the crop.
fn prepare(
    volume: &Volume,
    mask: &Volume,
    options: &MriConfig,
) -> Result<(Tensor, CropBox), String> {
    let bounds = crop::mask_bounds(mask).ok_or("the tumour mask is empty (no voxel > 0)")?;
    let b = crop::with_margin(bounds, options.margin_mm, volume.spacing, volume.shape3());
    let mut values = crop::extract(volume, &b);
    crop::normalise(&mut values, options.clip_percentiles);
    Ok((crop::resample(&values, b.size(), options.output_size), b))
}

/// The encoder's input for a prepared [z, y, x] crop: one 3-channel clip for the 3-D ResNet,
/// or the axial slices as a batch of 3-channel images for the slice-wise 2-D ResNet.
fn encoder_input(input: VolumeInput, crop: &Tensor) -> Tensor {
    match input {
        VolumeInput::AxialSlices => crop.unsqueeze(1).expand([-1, 3, -1, -1], false),
        VolumeInput::Clip => crop
            .unsqueeze(0)
            .unsqueeze(0)
            .expand([1, 3, -1, -1, -1], false),
    }
}

fn encode_sequence(
    case_dir: &Path,
    sequence: &str,
    options: &MriConfig,
    encoder: &Encoder,
) -> Result<(Encoded, Vec<PathBuf>), String> {
    let volume_path = find_volume(case_dir, sequence).ok_or_else(|| {
        format!(
            "{}: sequence `{sequence}` is missing ({sequence}.nii.gz or {sequence}.nii)",
            case_dir.display()
        )
    })?;
    let mask_path = find_volume(case_dir, &format!("{sequence}_mask"))
        .or_else(|| find_volume(case_dir, &options.mask))
        .ok_or_else(|| {
            format!(
                "{}: no tumour mask ({}.nii.gz, or {sequence}_mask.nii.gz)",
                case_dir.display(),
                options.mask
            )
        })?;
    let volume = read_3d(&volume_path, options.volume_4d)?;
    let mask = read_3d(&mask_path, options.volume_4d)?;
    if mask.shape3() != volume.shape3() {
        return Err(format!(
            "{}: mask shape {:?} differs from the volume's {:?} ({})",
            mask_path.display(),
            mask.shape3(),
            volume.shape3(),
            volume_path.display()
        ));
    }
    let (prepared, crop) =
        prepare(&volume, &mask, options).map_err(|e| format!("{}: {e}", mask_path.display()))?;
    let features = encoder
        .forward(&encoder_input(options.encoder.input, &prepared))
        .mean_dim(0, false, tch::Kind::Float);
    Ok((
        Encoded {
            features,
            crop,
            spacing: volume.spacing,
        },
        vec![volume_path, mask_path],
    ))
}

fn parameters(options: &MriConfig, encoder: &Encoder, inputs_sha256: &str) -> Parameters {
    Parameters::new()
        .with("stage", "mri")
        .with("encoder", encoder.network.name)
        .with("weights_sha256", encoder.weights.stamp())
        .with("sequence_order", options.sequences.join(","))
        .with("mask", &options.mask)
        .with("margin_mm", options.margin_mm)
        .with("output_size", format!("{:?}", options.output_size))
        .with(
            "clip_percentiles",
            format!("{:?}", options.clip_percentiles),
        )
        .with(
            "volume_4d",
            format!("{:?}", options.volume_4d).to_lowercase(),
        )
        .with("inputs_sha256", inputs_sha256)
        .with("layout_version", 1)
}

/// One digest over the case's input files (names and contents), so a changed scan or mask
/// invalidates the cached features.
fn inputs_digest(case_dir: &Path, options: &MriConfig) -> std::io::Result<String> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(case_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stem = name.trim_end_matches(".gz").trim_end_matches(".nii");
            stem == options.mask
                || options
                    .sequences
                    .iter()
                    .any(|s| stem == s || stem == format!("{s}_mask"))
        })
        .collect();
    entries.sort();
    let mut joined = String::new();
    for path in entries {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        joined.push_str(&format!("{name}:{}\n", cache::sha256_file(&path)?));
    }
    Ok(cache::sha256_text(&joined))
}

fn write_case(
    output: &Path,
    parameters: &Parameters,
    options: &MriConfig,
    encoded: &[Encoded],
) -> Result<(), CacheError> {
    let dim = encoded[0].features.size()[0] as usize;
    let mut features = Array2::<f32>::zeros((encoded.len(), dim));
    let mut boxes = Array2::<i64>::zeros((encoded.len(), 6));
    let mut boxes_mm = Array2::<f64>::zeros((encoded.len(), 6));
    let mut spacing = Array2::<f64>::zeros((encoded.len(), 3));
    for (i, e) in encoded.iter().enumerate() {
        let row: Vec<f32> = Vec::<f32>::try_from(&e.features).unwrap_or_default();
        for (j, v) in row.into_iter().enumerate().take(dim) {
            features[[i, j]] = v;
        }
        for a in 0..3 {
            boxes[[i, a]] = e.crop.start[a] as i64;
            boxes[[i, a + 3]] = e.crop.end[a] as i64;
            spacing[[i, a]] = e.spacing[a];
        }
        for (k, v) in e.crop.millimetres(e.spacing).into_iter().enumerate() {
            boxes_mm[[i, k]] = v;
        }
    }
    cache::write_h5(output, |file| {
        cache::stamp(file, parameters)?;
        cache::write_str_attr(file, "software_version", crate::VERSION)?;
        cache::write_str_list_attr(file, "sequences", &options.sequences)?;
        file.new_dataset_builder()
            .obj_track_times(false)
            .with_data(&features)
            .create("features")?;
        let b = file
            .new_dataset_builder()
            .obj_track_times(false)
            .with_data(&boxes)
            .create("crop_boxes")?;
        cache::write_str_attr(&b, "columns", "x0,y0,z0,x1,y1,z1 (voxels, end exclusive)")?;
        let b = file
            .new_dataset_builder()
            .obj_track_times(false)
            .with_data(&boxes_mm)
            .create("crop_boxes_mm")?;
        cache::write_str_attr(
            &b,
            "columns",
            "x0,y0,z0,x1,y1,z1 (mm from voxel 0's centre)",
        )?;
        file.new_dataset_builder()
            .obj_track_times(false)
            .with_data(&spacing)
            .create("spacing")?;
        Ok(())
    })
}

/// The case folders under `root`, sorted by name.
pub fn list_cases(root: &Path) -> Result<Vec<(String, PathBuf)>, MriError> {
    let entries = std::fs::read_dir(root).map_err(|source| MriError::Root {
        path: root.to_owned(),
        source,
    })?;
    let mut cases: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .filter_map(|p| Some((p.file_name()?.to_string_lossy().into_owned(), p)))
        // Hidden folders are not cases (a half-written `.<case>.partial`, `.git`, ...).
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    cases.sort();
    if cases.is_empty() {
        return Err(MriError::NoCases(root.to_owned()));
    }
    Ok(cases)
}

/// `mri` for every case folder under `paths.mri` (or one shard of them).
pub fn run(config: &Config, stage: &StageOptions) -> Result<MriSummary, MriError> {
    let options = &config.mri;
    let root = config.paths.mri.as_deref().ok_or(MriError::NoRoot)?;
    let cases = list_cases(root)?;
    let random_weights = stage.random_weights || options.random_weights;
    if options.weights.is_none() && !random_weights {
        return Err(EncodeError::NoWeights { key: "mri.weights" }.into());
    }
    let device = encode::parse_device(&options.device)?;
    let encoder = Encoder::new(
        options.encoder,
        device,
        options.weights.as_deref(),
        config.train.seed,
    )?;
    let out_dir = config.cache_dir().join("mri");
    let ledger = Ledger::new(&config.cache_dir(), "mri", "cases", stage.shard);
    for (case, dir) in ledger.owned(&cases, stage.shard) {
        let started = Instant::now();
        let output = out_dir.join(format!("{case}.h5"));
        let outcome = match process_case(dir, &output, options, &encoder, stage.force) {
            Ok(true) => ItemOutcome::Done(String::new()),
            Ok(false) => ItemOutcome::Kept,
            Err(message) => ItemOutcome::Failed(message),
        };
        ledger.record(case, started, outcome);
    }
    Ok(ledger.finish("encoded", ())?)
}

/// `mri`'s summary (no stage-specific figures).
pub type MriSummary = StageSummary<()>;

/// Ok(true) when written, Ok(false) when an up-to-date output was kept.
fn process_case(
    dir: &Path,
    output: &Path,
    options: &MriConfig,
    encoder: &Encoder,
    force: bool,
) -> Result<bool, String> {
    let digest = inputs_digest(dir, options).map_err(|e| format!("{}: {e}", dir.display()))?;
    let wanted = parameters(options, encoder, &digest);
    if stage::decide(output, &wanted, force)? == Decision::Keep {
        return Ok(false);
    }
    let mut encoded = Vec::new();
    for sequence in &options.sequences {
        let (e, _) = encode_sequence(dir, sequence, options, encoder)?;
        encoded.push(e);
    }
    write_case(output, &wanted, options, &encoded).map_err(|e| e.to_string())?;
    Ok(true)
}
