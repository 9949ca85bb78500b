//! `make bench`: patches per second of the features stage end to end (slides → features/*.h5)
//! next to its two ceilings measured in the same run: the model alone on ready tensors and the
//! reader threads alone (the same slides read into batches that are dropped); the end-to-end
//! time split into OpenSlide reads, resizing, model and waiting for batches.
//!
//! Defaults: the fixture slides on the CPU, fp32, batch 64. Environment overrides (used by the
//! GPU script, scripts/gpu_check.sh): HDMOE_BENCH_SLIDES (a folder of slides),
//! HDMOE_BENCH_DEVICE, HDMOE_BENCH_PRECISION, HDMOE_BENCH_BATCH, HDMOE_BENCH_READERS.

use std::path::{Path, PathBuf};
use std::time::Instant;

use hdmoe_pipe::config::Config;
use hdmoe_pipe::encode::{resnet2d, Encoder};
use hdmoe_pipe::features;
use hdmoe_pipe::features::patch::{Geometry, Reader};
use hdmoe_pipe::features::pipeline::{self, Job, Message};
use hdmoe_pipe::slide;
use hdmoe_pipe::stage::StageOptions;
use tch::Kind;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = tempfile::tempdir().expect("temporary directory");
    let slides: PathBuf = match std::env::var("HDMOE_BENCH_SLIDES") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => {
            let dir = work.path().join("slides");
            std::fs::create_dir_all(&dir).expect("dir");
            for name in ["aperio40x.svs", "aperio20x.svs", "cmu_small_region.svs"] {
                std::fs::copy(root.join("fixtures/slides").join(name), dir.join(name))
                    .expect("fixture slide");
            }
            dir
        }
    };
    let device = env("HDMOE_BENCH_DEVICE", "cpu");
    let precision = env("HDMOE_BENCH_PRECISION", "fp32");
    let batch: usize = env("HDMOE_BENCH_BATCH", "64").parse().expect("batch");
    let readers = env("HDMOE_BENCH_READERS", "0");
    let overrides = vec![
        format!("paths.slides={}", slides.display()),
        format!("paths.cache={}", work.path().join("cache").display()),
        "tile.preset=biopsy".to_owned(),
        "tile.a_t=0.1".to_owned(),
        format!("features.device={device}"),
        format!("features.precision={precision}"),
        format!("features.batch_size={batch}"),
        format!("features.readers={readers}"),
    ];
    let config = Config::load(None, &overrides).expect("configuration");
    let tiled = slide::run(&config, None, &StageOptions::default()).expect("tile");
    let d = features::devices(&device).expect("device")[0];
    let kind = match precision.as_str() {
        "fp16" => Kind::Half,
        "bf16" => Kind::BFloat16,
        _ => Kind::Float,
    };
    let name = if d.is_cuda() {
        format!("{d:?}")
    } else {
        format!("CPU, {} threads", tch::utils::get_num_threads())
    };

    // One reader thread alone, on the slide with the most patches: OpenSlide + area resize,
    // and the JPEG fast path where it applies.
    let jobs = patch_jobs(&config);
    let mut per_reader = String::new();
    if let Some(Job {
        slide: path,
        coords,
        geometry,
    }) = jobs.iter().max_by_key(|j| j.coords.len())
    {
        let geometry = *geometry;
        for fast in [false, true] {
            let mut reader = Reader::open(path, geometry, fast).expect("reader");
            if fast && reader.tiles.is_none() {
                continue;
            }
            let n = coords.len().min(300);
            let started = Instant::now();
            for &[x, y] in &coords[..n] {
                reader.read(geometry, x, y).expect("read");
            }
            let rate = n as f64 / started.elapsed().as_secs_f64();
            let how = if fast {
                "JPEG DCT-scaled"
            } else {
                "OpenSlide + area resize"
            };
            per_reader.push_str(&format!("{how}: {rate:.0} patches/s; "));
        }
    }

    // The ceiling: the model alone on ready batches of the same size (also warms cuDNN up).
    let mut encoder = Encoder::new(&resnet2d::RESNET50_TRUNC, d, None, 1).expect("encoder");
    encoder.set_precision(kind);
    if d.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let pixels: Vec<u8> = (0..batch * 256 * 256 * 3)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let mut stager = features::Stager::new(d, &resnet2d::RESNET50_TRUNC.normalization);
    let warm = if d.is_cuda() { 3 } else { 1 };
    for _ in 0..warm {
        let _ = features::embed(&encoder, &pixels, batch, 256, kind, &mut stager);
    }
    // The same number of patches as end to end on a GPU; on a CPU a few batches are enough.
    let target = if d.is_cuda() {
        tiled.detail.patches
    } else {
        tiled.detail.patches.min(2 * batch)
    }
    .max(batch);
    let started = Instant::now();
    let mut done = 0;
    while done < target {
        let _ = features::embed(&encoder, &pixels, batch, 256, kind, &mut stager);
        done += batch;
    }
    let ceiling = done as f64 / started.elapsed().as_secs_f64();
    drop(encoder);

    // The other ceiling: every slide read into batches by the stage's reader threads, the
    // batches dropped as they arrive.
    let readers = features::reader_threads(config.features.readers, &[d]);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(readers)
        .build()
        .expect("reader pool");
    let total: usize = jobs.iter().map(|j| j.coords.len()).sum();
    let (sender, receiver) = std::sync::mpsc::sync_channel(config.features.queue_batches.max(1));
    let buffers = pipeline::Buffers::default();
    let started = Instant::now();
    std::thread::scope(|scope| {
        let (pool, buffers, fast) = (&pool, &buffers, config.features.fast_jpeg);
        scope.spawn(move || pipeline::produce(jobs, batch, fast, pool, sender, buffers));
        while let Ok(message) = receiver.recv() {
            match message {
                Message::Batch { pixels, .. } => buffers.give(pixels),
                Message::End => {}
                Message::Failed(e) => panic!("{e}"),
            }
        }
    });
    let readers_alone = total as f64 / started.elapsed().as_secs_f64();
    drop(pool);

    println!("One reader thread, slide with the most patches: {per_reader}\n");
    let report = features::run(
        &config,
        &StageOptions::default().force(true).random_weights(true),
    )
    .expect("features");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let t = report.detail.timing;
    let end_to_end = t.patches as f64 / t.wall_s;
    println!("| features ({name}, {precision}, batch {batch}) | slides | patches | end to end patches/s | model alone patches/s | end to end / model alone | readers alone ({readers} threads) patches/s | OpenSlide read s (all readers) | resize s (all readers) | model s | waiting for batches s | wall s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| resnet50_trunc, 256 px | {} | {} | {end_to_end:.1} | {ceiling:.1} | {:.0} % | {readers_alone:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        report.done,
        t.patches,
        100.0 * end_to_end / ceiling,
        t.read_s,
        t.resize_s,
        t.model_s,
        t.wait_s,
        t.wall_s
    );
}

/// Every tiled slide's path, coords and read geometry, as the features stage reads them.
fn patch_jobs(config: &Config) -> Vec<Job> {
    let Some(slides) = config.paths.slides.as_deref() else {
        return Vec::new();
    };
    let entries = slide::list::list(slides).unwrap_or_default();
    entries
        .into_iter()
        .filter_map(|e| patch_job(config, e.id, e.path))
        .collect()
}

fn patch_job(config: &Config, id: String, path: PathBuf) -> Option<Job> {
    let file =
        hdf5::File::open(config.cache_dir().join("patches").join(format!("{id}.h5"))).ok()?;
    let ds = file.dataset("coords").ok()?;
    let coords: ndarray::Array2<i64> = ds.read_2d().ok()?;
    let int = |n: &str| ds.attr(n).and_then(|a| a.read_scalar::<i64>()).ok();
    let geometry = Geometry {
        level: int("patch_level")? as u32,
        read_size: int("level_read_size")? as u32,
        input_size: int("patch_size")? as u32,
    };
    Some(Job {
        slide: path,
        geometry,
        coords: coords.outer_iter().map(|r| [r[0], r[1]]).collect(),
    })
}
