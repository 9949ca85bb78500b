//! `hdmoe-pipe features`: every tiled slide's patches through a ResNet-50 (CLAM's truncated
//! 1024-d encoder by default) in libtorch; `features/<slide>.h5` holds `features` [N, D] and
//! `coords` [N, 2] in the patches file's order (CLAM's `h5_files/` layout).
//!
//! Reading runs on a thread pool feeding a bounded queue of ready batches
//! ([`pipeline::produce`]); the model drains it on one thread per device, so the device waits for
//! I/O only when the readers are slower than the model (the `wait` time in the report).
//!
//! The encoder is `features.encoder`, an entry of `encode::registry` carrying its network,
//! width, input size and normalisation: to add an encoder, see that module. A new option that
//! changes the features goes into `prepare_slide`'s parameter stamp.

pub mod patch;
pub mod pipeline;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use ndarray::{s, Array2};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::cache::{self, CacheError, Parameters};
use crate::config::Config;
use crate::config::FeaturesConfig;
use crate::encode::registry::Normalization;
use crate::encode::{self, EncodeError, Encoder};
use crate::slide::list::{self, ListError};
use crate::stage::{self, Decision, ItemOutcome, Ledger, StageDetail, StageOptions, StageSummary};
use patch::Geometry;
use pipeline::{Job, Message};

/// Arithmetic of the encoder's forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Fp32,
    Fp16,
    Bf16,
}

impl Precision {
    fn kind(self) -> Kind {
        match self {
            Self::Fp32 => Kind::Float,
            Self::Fp16 => Kind::Half,
            Self::Bf16 => Kind::BFloat16,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Fp16 => "fp16",
            Self::Bf16 => "bf16",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    #[error("configuration: `paths.slides` is not set; the features stage reads the slides that `tile` tiled")]
    NoSlides,
    #[error("configuration: `features.precision: {0}` needs a CUDA device; use fp32 on the CPU")]
    HalfOnCpu(&'static str),
    #[error(transparent)]
    List(#[from] ListError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("cannot start the reader threads: {0}")]
    Pool(String),
}

/// Where the time went, summed over the run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timing {
    pub patches: usize,
    /// Reader threads' seconds in OpenSlide (region read + JPEG decode), summed over threads.
    pub read_s: f64,
    /// Reader threads' seconds resizing, summed over threads.
    pub resize_s: f64,
    /// Model seconds (transfer, normalisation, forward pass, results back).
    pub model_s: f64,
    /// Seconds the model waited for a ready batch.
    pub wait_s: f64,
    /// Wall seconds of the extraction.
    pub wall_s: f64,
}

impl Timing {
    fn add(&mut self, other: &Timing) {
        self.patches += other.patches;
        self.read_s += other.read_s;
        self.resize_s += other.resize_s;
        self.model_s += other.model_s;
        self.wait_s += other.wait_s;
    }
}

/// What `features` adds to the stage summary: where the time went and on which devices.
#[derive(Debug, Default)]
pub struct FeaturesDetail {
    pub timing: Timing,
    pub devices: Vec<String>,
}

impl StageDetail for FeaturesDetail {
    fn brief(&self) -> String {
        let t = &self.timing;
        format!(
            "{} patches, {:.1} patches/s on {}",
            t.patches,
            t.patches as f64 / t.wall_s.max(1e-9),
            self.devices.join(", ")
        )
    }
}

pub type FeaturesSummary = StageSummary<FeaturesDetail>;

/// The devices `spec` names: `auto` is every CUDA device (else the CPU).
pub fn devices(spec: &str) -> Result<Vec<Device>, EncodeError> {
    if spec.trim() == "auto" && tch::Cuda::is_available() {
        let n = tch::Cuda::device_count().max(1) as usize;
        return Ok((0..n).map(Device::Cuda).collect());
    }
    Ok(vec![encode::parse_device(spec)?])
}

/// A slide to encode: its id, output, and how to read it.
struct Work {
    id: String,
    output: PathBuf,
    parameters: Parameters,
    /// The tiling's target mpp and patch size, recorded beside the stamp (not in it: caches made
    /// before they were recorded stay valid) for `predict --run`'s features check.
    tiling: Vec<(&'static str, String)>,
    job: Job,
}

/// What a patches file says about its coordinates and how to read them.
struct Patches {
    coords: Vec<[i64; 2]>,
    geometry: Geometry,
    /// Its `parameters` stamp (`clam` for CLAM's files, which have none).
    stamp: String,
    tiling: Vec<(&'static str, String)>,
}

/// Reads a patches file (ours or CLAM's): coords and how to read them.
fn read_patches(path: &Path, resize: Option<u32>) -> Result<Patches, String> {
    let fail = |e: hdf5::Error| format!("{}: {e}", path.display());
    let file = hdf5::File::open(path).map_err(fail)?;
    let coords = file.dataset("coords").map_err(fail)?;
    let array: Array2<i64> = coords.read_2d().map_err(fail)?;
    let int = |name: &str| -> Result<i64, String> {
        coords
            .attr(name)
            .and_then(|a| a.read_scalar::<i64>())
            .map_err(|e| format!("{}: attribute `{name}` of `coords`: {e}", path.display()))
    };
    let level = int("patch_level")?;
    let patch_size = int("patch_size")?;
    // CLAM's files have no level_read_size: they read patch_size pixels at patch_level.
    let read_size = int("level_read_size").unwrap_or(patch_size);
    let input_size = resize.map_or(patch_size, i64::from);
    let positive = |v: i64, what: &str| {
        u32::try_from(v)
            .ok()
            .filter(|&v| v > 0 || what == "patch_level")
            .ok_or_else(|| format!("{}: `{what}` {v} is not a valid size", path.display()))
    };
    let geometry = Geometry {
        level: positive(level, "patch_level")?,
        read_size: positive(read_size, "level_read_size")?,
        input_size: positive(input_size, "input size")?,
    };
    let stamp = cache::read_str_attr(&file, "parameters").unwrap_or_else(|_| "clam".into());
    // CLAM's files have no target mpp; their patch size is at the patch level.
    let target_mpp = coords
        .attr("target_mpp")
        .and_then(|a| a.read_scalar::<f64>())
        .ok();
    let tiling = target_mpp
        .map(|mpp| ("target_mpp", mpp.to_string()))
        .into_iter()
        .chain([("patch_size", patch_size.to_string())])
        .collect();
    Ok(Patches {
        coords: array.outer_iter().map(|r| [r[0], r[1]]).collect(),
        geometry,
        stamp,
        tiling,
    })
}

/// Turns batches of u8 NHWC bytes into the encoder's normalised NCHW input on its device
/// (channels-last strides in `kind` on CUDA, contiguous fp32 on the CPU).
///
/// On CUDA the bytes go through one of two pinned host buffers, used in turn, so the upload is
/// an asynchronous DMA that overlaps the previous batch's forward pass. A buffer is written
/// again two batches later, after the features of the batch between have been fetched, which
/// orders that fetch after the buffer's upload on the stream.
pub struct Stager {
    device: Device,
    buffers: [Option<Tensor>; 2],
    next: usize,
    mean: Tensor,
    std: Tensor,
}

impl Stager {
    /// Normalises with `normalization` (the encoder's own, from its registry entry).
    pub fn new(device: Device, normalization: &Normalization) -> Self {
        let constant = |values: &[f64; 3]| {
            Tensor::from_slice(values)
                .view([1, 3, 1, 1])
                .to_kind(Kind::Float)
                .to_device(device)
        };
        Self {
            device,
            buffers: [None, None],
            next: 0,
            mean: constant(&normalization.mean),
            std: constant(&normalization.std),
        }
    }

    pub fn input(&mut self, pixels: &[u8], rows: usize, size: u32, kind: Kind) -> Tensor {
        let s = i64::from(size);
        let shape = [rows as i64, s, s, 3];
        assert_eq!(
            pixels.len() as i64,
            shape.iter().product::<i64>(),
            "batch buffer size"
        );
        // SAFETY: `pixels` holds exactly `shape` contiguous u8 values and outlives `view`,
        // which is only read below, by copies that finish before this function returns.
        let view = unsafe {
            Tensor::from_blob(
                pixels.as_ptr(),
                &shape,
                &[3 * s * s, 3 * s, 3, 1],
                Kind::Uint8,
                Device::Cpu,
            )
        };
        let device = self.device;
        let x = if device.is_cuda() {
            let slot = &mut self.buffers[self.next];
            self.next = 1 - self.next;
            let buffer = match slot {
                Some(buffer) if buffer.size() == shape => buffer,
                _ => {
                    slot.insert(Tensor::empty(shape, (Kind::Uint8, Device::Cpu)).pin_memory(device))
                }
            };
            buffer.copy_(&view);
            buffer.to_device_(device, Kind::Uint8, true, false)
        } else {
            view.copy()
        };
        let x = ((x.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0) - &self.mean) / &self.std;
        if device.is_cuda() {
            x.to_kind(kind)
        } else {
            x.contiguous()
        }
    }
}

/// Features of one batch, as float32 rows on the CPU.
pub fn embed(
    encoder: &Encoder,
    pixels: &[u8],
    rows: usize,
    size: u32,
    kind: Kind,
    stager: &mut Stager,
) -> Tensor {
    let x = stager.input(pixels, rows, size, kind);
    fetch(&encoder.forward_on_device(&x))
}

/// Features on the device → float32 rows on the CPU (waits for the forward pass).
fn fetch(features: &Tensor) -> Tensor {
    features.to_device(Device::Cpu).to_kind(Kind::Float)
}

/// Puts libtorch's CPU thread count back when the stage returns (tests run stages in-process).
struct RestoreThreads(i32);

impl Drop for RestoreThreads {
    fn drop(&mut self) {
        tch::utils::set_num_threads(self.0);
    }
}

/// A batch whose forward pass has been launched but whose features are not yet fetched.
struct InFlight {
    features: Tensor,
    row: usize,
    rows: usize,
}

/// Drains one job's messages into `output`; returns its timing. On any error the rest of the
/// job's messages are still consumed, so the next job starts at its first batch.
///
/// One batch ahead: batch k+1 is staged and its forward pass launched before batch k's
/// features are written to the file, so on CUDA the GPU computes while this thread receives,
/// stages and writes (on the CPU the same steps simply run in order).
fn consume(
    work: &Work,
    encoder: &Encoder,
    kind: Kind,
    batch_size: usize,
    receiver: &mpsc::Receiver<Message>,
    stager: &mut Stager,
    buffers: &pipeline::Buffers,
) -> Result<Timing, String> {
    let n = work.job.coords.len();
    let dim = encoder.network.feature_dim as usize;
    let size = work.job.geometry.input_size;
    let mut timing = Timing::default();
    let mut ended = false;
    let mut reader_error = None;
    let result = cache::write_h5(&work.output, |file| {
        cache::stamp(file, &work.parameters)?;
        cache::write_str_attr(file, "software_version", crate::VERSION)?;
        for (name, value) in &work.tiling {
            cache::write_str_attr(file, name, value)?;
        }
        let mut coords = Array2::<i64>::zeros((n, 2));
        for (i, c) in work.job.coords.iter().enumerate() {
            coords[[i, 0]] = c[0];
            coords[[i, 1]] = c[1];
        }
        file.new_dataset_builder()
            .obj_track_times(false)
            .with_data(&coords)
            .create("coords")?;
        let features = file
            .new_dataset::<f32>()
            .obj_track_times(false)
            .shape([n, dim])
            .create("features")?;
        let write = |batch: InFlight| -> hdf5::Result<()> {
            let values = Vec::<f32>::try_from(&fetch(&batch.features).reshape([-1]))
                .map_err(|e| hdf5::Error::from(format!("libtorch: {e}")))?;
            let block = Array2::from_shape_vec((batch.rows, dim), values)
                .map_err(|e| hdf5::Error::from(e.to_string()))?;
            features.write_slice(&block, s![batch.row..batch.row + batch.rows, ..])
        };
        let mut in_flight: Option<InFlight> = None;
        let mut row = 0;
        loop {
            let waited = Instant::now();
            let message = receiver
                .recv()
                .map_err(|_| hdf5::Error::from("the reader threads stopped"))?;
            timing.wait_s += waited.elapsed().as_secs_f64();
            match message {
                Message::Batch {
                    mut pixels,
                    rows,
                    read_s,
                    resize_s,
                } => {
                    let started = Instant::now();
                    if row + rows > n {
                        return Err(hdf5::Error::from("more patches than coordinates"));
                    }
                    // On CUDA a short last batch is padded to the full size: a new shape would
                    // send cuDNN's autotuner through every layer again (about a second).
                    let padded_rows = if encoder.device.is_cuda() && rows < batch_size {
                        pixels.resize(batch_size * (size as usize).pow(2) * 3, 0);
                        batch_size
                    } else {
                        rows
                    };
                    let x = stager.input(&pixels, padded_rows, size, kind);
                    buffers.give(pixels);
                    // The previous batch's features, fetched before this batch's forward
                    // pass is queued behind them, then written while the GPU works.
                    let previous = in_flight.take().map(|b| {
                        let features = fetch(&b.features);
                        InFlight { features, ..b }
                    });
                    let out = encoder.forward_on_device(&x).narrow(0, 0, rows as i64);
                    in_flight = Some(InFlight {
                        features: out,
                        row,
                        rows,
                    });
                    if let Some(b) = previous {
                        write(b)?;
                    }
                    row += rows;
                    timing.model_s += started.elapsed().as_secs_f64();
                    timing.read_s += read_s;
                    timing.resize_s += resize_s;
                }
                Message::End => {
                    ended = true;
                    break;
                }
                Message::Failed(message) => {
                    ended = true;
                    reader_error = Some(message.clone());
                    return Err(hdf5::Error::from(message));
                }
            }
        }
        if let Some(b) = in_flight.take() {
            let started = Instant::now();
            write(b)?;
            timing.model_s += started.elapsed().as_secs_f64();
        }
        if row != n {
            return Err(hdf5::Error::from(format!("{row} of {n} patches encoded")));
        }
        timing.patches = n;
        Ok(())
    });
    while !ended {
        match receiver.recv() {
            Ok(Message::End | Message::Failed(_)) | Err(_) => ended = true,
            Ok(Message::Batch { .. }) => {}
        }
    }
    match (result, reader_error) {
        (Ok(()), _) => Ok(timing),
        (Err(_), Some(message)) => Err(message),
        (Err(e), None) => Err(e.to_string()),
    }
}

/// Reader threads for `features.readers` (0 = automatic) on these devices.
pub fn reader_threads(configured: usize, devices: &[Device]) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match configured {
        // The model thread and libtorch's launches need CPU too: starved, they slow the GPU.
        0 if devices.iter().any(|d| d.is_cuda()) => cores.saturating_sub(2 * devices.len()).max(1),
        0 => cores,
        n => n,
    }
}

/// `features` for a whole cohort (or one shard of it).
pub fn run(config: &Config, stage: &StageOptions) -> Result<FeaturesSummary, FeaturesError> {
    let options = &config.features;
    let force = stage.force;
    let source = config
        .paths
        .slides
        .as_deref()
        .ok_or(FeaturesError::NoSlides)?;
    let entries = list::list(source)?;
    let random_weights = stage.random_weights || options.random_weights;
    if options.weights.is_none() && !random_weights {
        return Err(EncodeError::NoWeights {
            key: "features.weights",
        }
        .into());
    }
    let devices = devices(&options.device)?;
    if options.precision != Precision::Fp32 && devices.iter().any(|d| !d.is_cuda()) {
        return Err(FeaturesError::HalfOnCpu(options.precision.name()));
    }
    let kind = options.precision.kind();
    let mut encoders = Vec::new();
    for &device in &devices {
        let mut encoder = Encoder::new(
            options.encoder,
            device,
            options.weights.as_deref(),
            config.train.seed,
        )?;
        encoder.set_precision(kind);
        encoders.push(encoder);
    }
    let all_cuda = devices.iter().all(|d| d.is_cuda());
    if all_cuda {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    // On GPUs libtorch's CPU work is one copy per batch; its OpenMP pool (one spinning thread
    // per core) would only take cores from the reader threads.
    let torch_threads = tch::utils::get_num_threads();
    if all_cuda {
        tch::utils::set_num_threads(1);
    }
    let _restore = RestoreThreads(torch_threads);
    let cache_dir = config.cache_dir();
    let patches_dir = cache_dir.join("patches");
    let out_dir = config
        .paths
        .features
        .clone()
        .unwrap_or_else(|| cache_dir.join("features"));
    let ledger = Ledger::new(&cache_dir, "features", "slides", stage.shard);
    let mut detail = FeaturesDetail {
        devices: devices.iter().map(|d| format!("{d:?}")).collect(),
        ..FeaturesDetail::default()
    };
    let weights_stamp = encoders[0].weights.stamp();

    // Which slides need encoding.
    let mut todo: Vec<Work> = Vec::new();
    for entry in ledger.owned(&entries, stage.shard) {
        let started = Instant::now();
        let patches = patches_dir.join(format!("{}.h5", entry.id));
        let output = out_dir.join(format!("{}.h5", entry.id));
        match prepare_slide(entry, &patches, &output, options, &weights_stamp, force) {
            Ok(Some(work)) => todo.push(work),
            Ok(None) => ledger.record(&entry.id, started, ItemOutcome::Kept),
            Err(message) => ledger.record(&entry.id, started, ItemOutcome::Failed(message)),
        }
    }

    let readers = reader_threads(options.readers, &devices);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(readers)
        .build()
        .map_err(|e| FeaturesError::Pool(e.to_string()))?;
    // Slides are dealt to the devices in turn; each device has its own queue and model thread.
    let n_devices = encoders.len();
    let mut shares: Vec<Vec<Work>> = (0..n_devices).map(|_| Vec::new()).collect();
    for (i, work) in todo.into_iter().enumerate() {
        shares[i % n_devices].push(work);
    }
    let started_all = Instant::now();
    let timings: Vec<Vec<Timing>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .into_iter()
            .zip(encoders)
            .map(|(share, encoder)| {
                let pool = &pool;
                let ledger = &ledger;
                scope.spawn(move || {
                    let (sender, receiver) = mpsc::sync_channel(options.queue_batches.max(1));
                    let jobs: Vec<Job> = share.iter().map(|w| w.job.clone()).collect();
                    let batch = options.batch_size;
                    let mut results = Vec::new();
                    let buffers = pipeline::Buffers::default();
                    std::thread::scope(|inner| {
                        let fast = options.fast_jpeg;
                        let buffers = &buffers;
                        inner.spawn(move || {
                            pipeline::produce(jobs, batch, fast, pool, sender, buffers)
                        });
                        let mut stager =
                            Stager::new(encoder.device, &options.encoder.normalization);
                        for work in &share {
                            let started = Instant::now();
                            let outcome = consume(
                                work,
                                &encoder,
                                kind,
                                batch,
                                &receiver,
                                &mut stager,
                                buffers,
                            );
                            let recorded = match &outcome {
                                Ok(t) => ItemOutcome::Done(format!("{} patches", t.patches)),
                                Err(message) => ItemOutcome::Failed(message.clone()),
                            };
                            ledger.record(&work.id, started, recorded);
                            if let Ok(t) = outcome {
                                results.push(t);
                            }
                        }
                        drop(receiver);
                    });
                    results
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    detail.timing.wall_s = started_all.elapsed().as_secs_f64();
    for t in timings.iter().flatten() {
        detail.timing.add(t);
    }
    Ok(ledger.finish("encoded", detail)?)
}

/// A slide's work, or None when its features are up to date; Err names the problem.
fn prepare_slide(
    entry: &list::SlideEntry,
    patches: &Path,
    output: &Path,
    options: &FeaturesConfig,
    weights_stamp: &str,
    force: bool,
) -> Result<Option<Work>, String> {
    if !patches.is_file() {
        return Err(format!(
            "{}: no patches file; run `hdmoe-pipe tile` first (it records why a slide gave none in tile_manifest.csv)",
            patches.display()
        ));
    }
    // An encoder with a fixed input side gets it; the others take features.resize (else the
    // patch size).
    let resize = options.encoder.input_size.or(options.resize);
    let Patches {
        coords,
        geometry,
        stamp,
        tiling,
    } = read_patches(patches, resize)?;
    if coords.is_empty() {
        return Err(format!("{}: holds no patches", patches.display()));
    }
    let parameters = Parameters::new()
        .with("stage", "features")
        .with("encoder", options.encoder.name)
        .with("weights_sha256", weights_stamp)
        .with("input_size", geometry.input_size)
        .with("normalization", options.encoder.normalization.stamp())
        .with("precision", options.precision.name())
        .with("fast_jpeg", options.fast_jpeg)
        .with("patch_level", geometry.level)
        .with("level_read_size", geometry.read_size)
        .with(
            "patches_sha256",
            cache::sha256_text(&format!("{stamp}\n{}", coords.len())),
        )
        .with("layout_version", 1);
    Ok(match stage::decide(output, &parameters, force)? {
        Decision::Keep => None,
        Decision::Make => Some(Work {
            id: entry.id.clone(),
            output: output.to_owned(),
            parameters,
            tiling,
            job: Job {
                slide: entry.path.clone(),
                geometry,
                coords,
            },
        }),
    })
}
