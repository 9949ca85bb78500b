//! `hdmoe-pipe tile`: for every slide, CLAM's tissue mask on a low-resolution image, the 20x
//! patch grid over the tissue, `patches/<slide>.h5` (CLAM's `coords` with `patch_level` and
//! `patch_size`) and a preview `masks/<slide>.png`.
//!
//! Per slide: `process_slide` decides (the stage contract's `decide`) and writes; `run` hands
//! each outcome to the contract's `Ledger`. A new per-slide check belongs in `process_slide`
//! (return `SlideFailure::Error` with a message naming the file); a new grid option in
//! `TileConfig` and in the `parameters` stamp, so outputs made without it are not kept.

pub mod grid;
pub mod jpeg_tiles;
pub mod list;
pub mod mask;
pub mod polygon;
pub mod preview;
pub mod reader;

use std::path::Path;
use std::time::Instant;

use image::RgbImage;
use ndarray::Array2;
use rayon::prelude::*;

use crate::atomic;
use crate::cache::{self, CacheError, Parameters};
use crate::config::{Config, MppRounding, TileConfig};
use crate::stage::{self, Decision, ItemOutcome, Ledger, StageDetail, StageOptions, StageSummary};
use grid::Plan;
use list::{ListError, SlideEntry};
use mask::{SegParams, Tissue};
use reader::Slide;

#[derive(Debug, thiserror::Error)]
pub enum TileError {
    #[error("configuration: `paths.slides` is not set; name a folder of slides or a slide list CSV (or pass --slides)")]
    NoSlides,
    #[error(transparent)]
    List(#[from] ListError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("cannot start {0} worker threads")]
    Pool(String),
}

/// What `tile` adds to the stage summary: the patches written this run.
#[derive(Debug, Default)]
pub struct TileDetail {
    pub patches: usize,
}

impl StageDetail for TileDetail {
    fn brief(&self) -> String {
        format!("{} patches", self.patches)
    }
}

/// `tile`'s summary; slides without tissue are its `no_tissue` list.
pub type TileSummary = StageSummary<TileDetail>;

/// Where the level-0 um/px came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MppSource {
    SlideList,
    Metadata,
    Fallback,
}

impl MppSource {
    fn as_str(self) -> &'static str {
        match self {
            MppSource::SlideList => "slide list",
            MppSource::Metadata => "metadata",
            MppSource::Fallback => "fallback (--mpp)",
        }
    }
}

/// Everything the stage computes for one slide.
pub struct Analysis {
    pub params: SegParams,
    /// The mpp the slide records (or was given) and the one the grid uses.
    pub slide_mpp: f64,
    pub grid_mpp: f64,
    pub mpp_source: MppSource,
    pub plan: Plan,
    pub low_res: RgbImage,
    pub seg_level: u32,
    pub seg_factor: u32,
    pub scale: [f64; 2],
    pub tissue: Tissue,
    pub coords: Vec<[i64; 2]>,
    pub level_dim: (u64, u64),
    pub seconds_mask: f64,
    pub seconds_grid: f64,
}

/// Why a slide gave no patches.
#[derive(Debug)]
pub enum SlideFailure {
    /// The slide is fine but no tissue region (or no grid position) passed the filters.
    NoTissue(String),
    Error(String),
}

/// The slide's level-0 um/px: a slide list's value, else the metadata's, else the fallback.
pub fn resolve_mpp(
    slide: &Slide,
    entry: &SlideEntry,
    options: &TileConfig,
) -> Result<(f64, MppSource), String> {
    if let Some(mpp) = entry.mpp {
        return Ok((mpp, MppSource::SlideList));
    }
    if let Some(mpp) = slide.mpp() {
        return Ok((mpp, MppSource::Metadata));
    }
    if let Some(mpp) = options.fallback_mpp {
        return Ok((mpp, MppSource::Fallback));
    }
    Err(format!(
        "{}: the slide records no resolution (openslide.mpp-x); give it with --mpp UM_PER_PX (slides without metadata) or an `mpp` column in a slide list CSV named by paths.slides",
        entry.path.display()
    ))
}

/// The segmentation parameters of one slide: the configuration's, then the list's overrides.
pub fn seg_params(entry: &SlideEntry, options: &TileConfig) -> SegParams {
    let mut params = SegParams::from_config(options);
    params.apply(&entry.overrides);
    params
}

/// Mask and grid for one slide (no files written).
pub fn analyse(entry: &SlideEntry, options: &TileConfig) -> Result<Analysis, SlideFailure> {
    let slide = Slide::open(&entry.path).map_err(|e| SlideFailure::Error(e.to_string()))?;
    let (slide_mpp, mpp_source) =
        resolve_mpp(&slide, entry, options).map_err(SlideFailure::Error)?;
    analyse_slide(&slide, entry, options, slide_mpp, mpp_source)
}

/// [`analyse`] on an open slide whose mpp is resolved.
fn analyse_slide(
    slide: &Slide,
    entry: &SlideEntry,
    options: &TileConfig,
    slide_mpp: f64,
    mpp_source: MppSource,
) -> Result<Analysis, SlideFailure> {
    let error = |e: String| SlideFailure::Error(e);
    let grid_mpp = match options.mpp_rounding {
        MppRounding::Real => slide_mpp,
        MppRounding::Nominal => grid::nominal_mpp(slide_mpp, slide.objective_power()),
    };
    let plan = grid::plan(
        grid_mpp,
        &slide.downsamples(),
        options.target_mpp,
        options.patch_size,
        options.step,
        options.allow_upsample,
    )
    .map_err(|e| error(format!("{}: {e}", entry.path.display())))?;
    let params = seg_params(entry, options);

    let started = Instant::now();
    // Strips are box-averaged to a physical resolution when one is set (the grid's mpp).
    let strip_downsample = options
        .seg_strip_mpp
        .map_or(options.seg_downsample, |m| (m / grid_mpp).max(1.0));
    let low = slide
        .low_res(options.seg_downsample, strip_downsample)
        .map_err(|e| error(e.to_string()))?;
    let tissue = mask::segment(&low.image, &params, low.scale);
    let seconds_mask = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let coords = grid::patch_coords(&tissue, &plan, options.contour_fn);
    let seconds_grid = started.elapsed().as_secs_f64();

    Ok(Analysis {
        params,
        slide_mpp,
        grid_mpp,
        mpp_source,
        plan,
        seg_level: low.level,
        seg_factor: low.factor,
        scale: low.scale,
        low_res: low.image,
        tissue,
        coords,
        level_dim: slide.dimensions(plan.level),
        seconds_mask,
        seconds_grid,
    })
}

/// Size plus sha256 of the first and last MiB: identifies a slide file without reading
/// gigabytes.
pub fn fingerprint(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Seek, SeekFrom};
    const CHUNK: u64 = 1 << 20;
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK.min(size) as usize];
    file.read_exact(&mut buffer)?;
    hasher.update(&buffer);
    if size > CHUNK {
        let tail = CHUNK.min(size - CHUNK);
        file.seek(SeekFrom::End(-(tail as i64)))?;
        let mut buffer = vec![0u8; tail as usize];
        file.read_exact(&mut buffer)?;
        hasher.update(&buffer);
    }
    Ok(format!("{size}:{}", cache::hex(&hasher.finalize())))
}

/// What made a patches file: the slide's identity and every option that changes the grid.
fn parameters(
    entry: &SlideEntry,
    options: &TileConfig,
    params: &SegParams,
    slide_mpp: f64,
    source: MppSource,
    fingerprint: &str,
) -> Parameters {
    let mut p = Parameters::new()
        .with("stage", "tile")
        .with("slide_fingerprint", fingerprint)
        .with(
            "slide_file",
            entry
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        )
        .with("slide_mpp", slide_mpp)
        .with("mpp_source", source.as_str())
        .with(
            "mpp_rounding",
            format!("{:?}", options.mpp_rounding).to_lowercase(),
        )
        .with("target_mpp", options.target_mpp)
        .with("patch_size", options.patch_size)
        .with("step_px", options.step)
        .with("seg_downsample", options.seg_downsample)
        .with("seg_strip_mpp", format!("{:?}", options.seg_strip_mpp))
        .with("contour_fn", format!("{:?}", options.contour_fn))
        .with("allow_upsample", options.allow_upsample)
        .with("layout_version", 1);
    for (key, value) in params.describe() {
        p = p.with(key, value);
    }
    p
}

fn write_patches(
    output: &Path,
    id: &str,
    parameters: &Parameters,
    options: &TileConfig,
    a: &Analysis,
) -> Result<(), CacheError> {
    let mut coords = Array2::<i64>::zeros((a.coords.len(), 2));
    for (i, c) in a.coords.iter().enumerate() {
        coords[[i, 0]] = c[0];
        coords[[i, 1]] = c[1];
    }
    cache::write_h5(output, |file| {
        cache::stamp(file, parameters)?;
        cache::write_str_attr(file, "software_version", crate::VERSION)?;
        let ds = file
            .new_dataset_builder()
            .obj_track_times(false)
            .with_data(&coords)
            .create("coords")?;
        let int = |name: &str, v: i64| ds.new_attr::<i64>().create(name)?.write_scalar(&v);
        let float = |name: &str, v: f64| ds.new_attr::<f64>().create(name)?.write_scalar(&v);
        int("patch_size", i64::from(options.patch_size))?;
        int("patch_level", i64::from(a.plan.level))?;
        int("read_size", a.plan.read_size)?;
        int("level_read_size", i64::from(a.plan.level_read_size))?;
        int("step", a.plan.step)?;
        int("seg_level", i64::from(a.seg_level))?;
        int("seg_factor", i64::from(a.seg_factor))?;
        float("target_mpp", options.target_mpp)?;
        float("slide_mpp", a.slide_mpp)?;
        float("grid_mpp", a.grid_mpp)?;
        ds.new_attr_builder()
            .with_data(&[a.plan.downsample, a.plan.downsample])
            .create("downsample")?;
        let dims = [a.level_dim.0 as i64, a.level_dim.1 as i64];
        ds.new_attr_builder().with_data(&dims).create("level_dim")?;
        ds.new_attr_builder()
            .with_data(&dims)
            .create("downsampled_level_dim")?;
        cache::write_str_attr(&ds, "name", id)?;
        Ok(())
    })
}

/// One slide: its patch count when written, None when an up-to-date output was kept.
fn process_slide(
    entry: &SlideEntry,
    options: &TileConfig,
    patches_dir: &Path,
    masks_dir: &Path,
    force: bool,
) -> Result<Option<usize>, SlideFailure> {
    let error = |e: String| SlideFailure::Error(e);
    let output = patches_dir.join(format!("{}.h5", entry.id));
    let preview_path = masks_dir.join(format!("{}.png", entry.id));
    let fp =
        fingerprint(&entry.path).map_err(|e| error(format!("{}: {e}", entry.path.display())))?;
    let slide = Slide::open(&entry.path).map_err(|e| error(e.to_string()))?;
    let (slide_mpp, source) = resolve_mpp(&slide, entry, options).map_err(error)?;
    let params = seg_params(entry, options);
    let wanted = parameters(entry, options, &params, slide_mpp, source, &fp);
    if stage::decide(&output, &wanted, force).map_err(error)? == Decision::Keep
        && preview_path.exists()
    {
        return Ok(None);
    }
    let a = analyse_slide(&slide, entry, options, slide_mpp, source)?;
    let png = preview::render(&a.low_res, a.scale, &a.tissue, &a.coords, a.plan.read_size)
        .map_err(|e| {
            error(format!(
                "{}: cannot render the preview: {e}",
                preview_path.display()
            ))
        })?;
    std::fs::create_dir_all(masks_dir)
        .map_err(|e| error(format!("{}: {e}", masks_dir.display())))?;
    atomic::write_bytes(&preview_path, &png)
        .map_err(|e| error(format!("{}: cannot write: {e}", preview_path.display())))?;
    if a.coords.is_empty() {
        let why = if a.tissue.is_empty() {
            "no tissue region passed the area filter"
        } else {
            "tissue found, but no patch position passed the contour rule"
        };
        // The biopsy preset only helps where its area filter (a_t 1) is the smaller one.
        let biopsy = if a.params.a_t > 1.0 {
            "tile.preset: biopsy, "
        } else {
            ""
        };
        return Err(SlideFailure::NoTissue(format!(
            "{}: no tissue: {why} (threshold {}, a_t {} blocks of 512x512 level-0 px); look at {}, then try {biopsy}a smaller tile.a_t, or a finer tile.seg_downsample",
            entry.path.display(),
            a.tissue.threshold,
            a.params.a_t,
            preview_path.display()
        )));
    }
    write_patches(&output, &entry.id, &wanted, options, &a).map_err(|e| error(e.to_string()))?;
    Ok(Some(a.coords.len()))
}

/// `tile` for a whole cohort (or one shard of it); `slides` overrides `paths.slides`.
pub fn run(
    config: &Config,
    slides: Option<&Path>,
    options: &StageOptions,
) -> Result<TileSummary, TileError> {
    let tile = &config.tile;
    let source = slides
        .map(Path::to_path_buf)
        .or_else(|| config.paths.slides.clone())
        .ok_or(TileError::NoSlides)?;
    let entries = list::list(&source)?;
    let cache_dir = config.cache_dir();
    let patches_dir = cache_dir.join("patches");
    let masks_dir = cache_dir.join("masks");
    let ledger = Ledger::new(&cache_dir, "tile", "slides", options.shard);
    let owned = ledger.owned(&entries, options.shard);
    let workers = if tile.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        tile.workers
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .build()
        .map_err(|e| TileError::Pool(format!("{workers}: {e}")))?;
    let patches = std::sync::atomic::AtomicUsize::new(0);
    pool.install(|| {
        owned.par_iter().for_each(|entry| {
            let started = Instant::now();
            let outcome = match process_slide(entry, tile, &patches_dir, &masks_dir, options.force)
            {
                Ok(Some(n)) => {
                    patches.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    ItemOutcome::Done(format!("{n} patches"))
                }
                Ok(None) => ItemOutcome::Kept,
                Err(SlideFailure::NoTissue(message)) => ItemOutcome::NoTissue(message),
                Err(SlideFailure::Error(message)) => ItemOutcome::Failed(message),
            };
            ledger.record(&entry.id, started, outcome);
        });
    });
    let detail = TileDetail {
        patches: patches.into_inner(),
    };
    Ok(ledger.finish("tiled", detail)?)
}
