//! The features stage: features of real H&E patches, through the whole stage (float32, the
//! product path) from a CLAM-style patches file, are within float32 rounding of torchvision's
//! float64 features (same state dict); outputs keep CLAM's layout, are resumable and refuse
//! mismatched parameters; bad slides fail alone.

use crate::common;

use std::path::{Path, PathBuf};

use common::{
    copy_slides, fixture, hashed_weights, json_rows, rounding_bound, scaled_errors, U_F32,
};
use hdmoe_pipe::cache::read_str_attr;
use hdmoe_pipe::config::Config;
use hdmoe_pipe::encode::resnet2d;
use hdmoe_pipe::features;
use hdmoe_pipe::shard::Shard;
use hdmoe_pipe::slide;

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("features/reference.json")).expect("reference");
    serde_json::from_str(&text).expect("json")
}

/// A patches file as CLAM writes one: `coords` with `patch_level` and `patch_size` only.
fn clam_patches(path: &Path, coords: &[[i64; 2]], size: i64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = hdf5::File::create(path).unwrap();
    let mut array = ndarray::Array2::<i64>::zeros((coords.len(), 2));
    for (i, c) in coords.iter().enumerate() {
        array[[i, 0]] = c[0];
        array[[i, 1]] = c[1];
    }
    let ds = file
        .new_dataset_builder()
        .with_data(&array)
        .create("coords")
        .unwrap();
    ds.new_attr::<i64>()
        .create("patch_level")
        .unwrap()
        .write_scalar(&0)
        .unwrap();
    ds.new_attr::<i64>()
        .create("patch_size")
        .unwrap()
        .write_scalar(&size)
        .unwrap();
}

pub(crate) fn config(dir: &Path, slides: &Path, sets: &[String]) -> Config {
    let mut overrides = vec![
        format!("paths.slides={}", slides.display()),
        format!("paths.cache={}", dir.join("cache").display()),
        "features.device=cpu".to_owned(),
        "features.batch_size=3".to_owned(),
    ];
    overrides.extend_from_slice(sets);
    Config::load(None, &overrides).expect("config")
}

pub(crate) fn read_features(path: &Path) -> ndarray::Array2<f32> {
    hdf5::File::open(path)
        .and_then(|f| f.dataset("features"))
        .and_then(|d| d.read_2d())
        .expect("features")
}

#[test]
fn features_of_real_patches_match_torchvision() {
    let dir = tempfile::tempdir().unwrap();
    let weights = hashed_weights(&resnet2d::RESNET50, dir.path());
    let slides = copy_slides(dir.path(), &["aperio20x.svs"]);
    let want = reference();
    let coords: Vec<[i64; 2]> = want["coords"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| [c[0].as_i64().unwrap(), c[1].as_i64().unwrap()])
        .collect();
    clam_patches(&dir.path().join("cache/patches/aperio20x.h5"), &coords, 256);
    let cfg = config(
        dir.path(),
        &slides,
        &[format!("features.weights={}", weights.display())],
    );
    let report = features::run(&cfg, &common::options(false, false, Shard::ALL)).expect("features");
    assert_eq!(report.done, 1, "{report:?}");
    assert_eq!(report.detail.timing.patches, 4);
    let out = dir.path().join("cache/features/aperio20x.h5");
    let got = read_features(&out);
    assert_eq!(got.dim(), (4, 1024));
    // The reference is torchvision's float64 forward on the same pixels (float64 normalisation,
    // the float32 weights cast exactly). Float32 sums run in a CPU-dependent order, so the
    // stage's float32 features are bounded by what float32 rounding allows (see
    // `rounding_bound`): the truncated resnet50's 40 convolutions plus the float32 input
    // normalisation, fan-in up to 3·3·256, values rounded after BN and the shortcut add.
    assert_eq!(want["dtype"], "float64");
    let (reference, width) = json_rows(&want["features"]);
    assert_eq!(width, 1024);
    let got: Vec<f64> = got.iter().map(|&v| f64::from(v)).collect();
    let (error, l2) = scaled_errors(&got, &reference, width);
    let bound = rounding_bound(U_F32, 2.0, 3 * 3 * 256, 40 + 1);
    eprintln!(
        "features stage (float32) against torchvision float64: max error / max |feature| \
         {error:.2e} (bound {bound:.2e}), relative L2 {l2:.2e} (worst patch)"
    );
    assert!(
        error <= bound,
        "features differ from torchvision's float64 by {error:e} of their scale, more than \
         float32 rounding allows ({bound:e})"
    );
    // The pixels themselves are the ones torchvision saw.
    let s = slide::reader::Slide::open(&slides.join("aperio20x.svs")).unwrap();
    for (c, sum) in coords.iter().zip(want["pixel_sums"].as_array().unwrap()) {
        let rgb = s.read_rgb_bytes(c[0], c[1], 0, 256, 256).unwrap();
        let total: u64 = rgb.iter().map(|&v| u64::from(v)).sum();
        assert_eq!(total, sum.as_u64().unwrap());
    }
    // CLAM's layout and our stamps.
    let file = hdf5::File::open(&out).unwrap();
    let stored: ndarray::Array2<i64> = file.dataset("coords").unwrap().read_2d().unwrap();
    assert_eq!(stored.row(1).to_vec(), coords[1].to_vec());
    let sha = hdmoe_pipe::cache::sha256_file(&weights).unwrap();
    assert_eq!(read_str_attr(&file, "weights_sha256").unwrap(), sha);
    assert_eq!(read_str_attr(&file, "encoder").unwrap(), "resnet50_trunc");
    assert_eq!(read_str_attr(&file, "input_size").unwrap(), "256");
    // CLAM's patches record a patch size and no target mpp: so do the features.
    assert_eq!(read_str_attr(&file, "patch_size").unwrap(), "256");
    assert!(read_str_attr(&file, "target_mpp").is_err());
}

pub(crate) fn tiled(dir: &Path) -> PathBuf {
    let slides = copy_slides(
        dir,
        &["aperio40x.svs", "cmu_small_region.svs", "not_a_slide.svs"],
    );
    let cfg = config(dir, &slides, &["tile.preset=biopsy".to_owned()]);
    let report = slide::run(&cfg, None, &common::options(false, false, Shard::ALL)).expect("tile");
    assert_eq!(report.done, 2);
    slides
}

#[test]
fn stage_resumes_refuses_mismatches_and_reports_bad_slides() {
    let dir = tempfile::tempdir().unwrap();
    let slides = tiled(dir.path());
    let random = ["features.resize=64".to_owned()];
    let cfg = config(dir.path(), &slides, &random);
    // Without weights the stage refuses to run unless told to use random ones.
    let err = features::run(&cfg, &common::options(false, false, Shard::ALL))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--random-weights"), "{err}");
    let first = features::run(&cfg, &common::options(false, true, Shard::ALL)).expect("features");
    assert_eq!(first.done, 2, "{first:?}");
    assert_eq!(first.failed.len(), 1);
    assert!(
        first.failed[0].1.contains("no patches file"),
        "{:?}",
        first.failed
    );
    let out40 = dir.path().join("cache/features/aperio40x.h5");
    let want = read_features(&out40);
    assert_eq!(want.dim().1, 1024);
    let file = hdf5::File::open(&out40).unwrap();
    assert!(read_str_attr(&file, "weights_sha256")
        .unwrap()
        .contains("NOT pretrained"));
    // The tiling's target mpp and patch size, as the patches file records them (what
    // `predict --run` compares with the training features).
    let patches = hdf5::File::open(dir.path().join("cache/patches/aperio40x.h5")).unwrap();
    let coords = patches.dataset("coords").unwrap();
    let attr = |name: &str| coords.attr(name).unwrap();
    assert_eq!(
        read_str_attr(&file, "target_mpp").unwrap(),
        attr("target_mpp").read_scalar::<f64>().unwrap().to_string()
    );
    assert_eq!(
        read_str_attr(&file, "patch_size").unwrap(),
        attr("patch_size").read_scalar::<i64>().unwrap().to_string()
    );
    drop(file);

    // Kept on rerun; a deleted output is remade identically (seeded random weights).
    let again = features::run(&cfg, &common::options(false, true, Shard::ALL)).expect("rerun");
    assert_eq!((again.done, again.kept), (0, 2));
    std::fs::remove_file(&out40).unwrap();
    let r = features::run(&cfg, &common::options(false, true, Shard::ALL)).expect("after delete");
    assert_eq!((r.done, r.kept), (1, 1));
    assert_eq!(read_features(&out40), want);

    // Another input size: refused without --force.
    let other = config(dir.path(), &slides, &["features.resize=32".to_owned()]);
    let r = features::run(&other, &common::options(false, true, Shard::ALL)).expect("mismatch");
    assert!(r.failed.iter().any(|(_, m)| m.contains("--force")), "{r:?}");
    assert_eq!(read_features(&out40), want);
    let r = features::run(&other, &common::options(true, true, Shard::ALL)).expect("force");
    assert_eq!(r.done, 2);

    // The full encoder gives 2048-d rows.
    let full = config(
        dir.path(),
        &slides,
        &[
            "features.resize=32".to_owned(),
            "features.encoder=resnet50".to_owned(),
        ],
    );
    let r = features::run(&full, &common::options(true, true, Shard::ALL)).expect("resnet50");
    assert_eq!(r.done, 2);
    assert_eq!(read_features(&out40).dim().1, 2048);
}

#[test]
fn a_slide_that_fails_mid_read_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let slides = copy_slides(dir.path(), &["aperio20x.svs"]);
    // A patches file naming a level the slide does not have (OpenSlide would read blank).
    let path = dir.path().join("cache/patches/aperio20x.h5");
    clam_patches(&path, &[[0, 0], [256, 0]], 256);
    {
        let file = hdf5::File::open_rw(&path).unwrap();
        let ds = file.dataset("coords").unwrap();
        ds.attr("patch_level").unwrap().write_scalar(&5i64).unwrap();
    }
    let cfg = config(dir.path(), &slides, &[]);
    let r = features::run(&cfg, &common::options(false, true, Shard::ALL)).expect("run");
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert!(r.failed[0].1.contains("aperio20x.svs"), "{:?}", r.failed);
    assert!(r.failed[0].1.contains("level 5"), "{:?}", r.failed);
    assert!(!dir.path().join("cache/features/aperio20x.h5").exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("cache/features"))
        .map(|d| d.count())
        .into_iter()
        .collect();
    assert!(
        leftovers.iter().all(|&n| n == 0),
        "temporary files left: {leftovers:?}"
    );
}

#[test]
fn the_jpeg_fast_path_sees_what_openslide_and_an_area_resize_see() {
    use hdmoe_pipe::features::patch::{Geometry, Reader};
    // The 40x fixture read for 20x: 512 px at level 0 → 256 px.
    let path = fixture("slides/aperio40x.svs");
    let geometry = Geometry {
        level: 0,
        read_size: 512,
        input_size: 256,
    };
    let mut fast = Reader::open(&path, geometry, true).unwrap();
    let mut slow = Reader::open(&path, geometry, false).unwrap();
    assert!(
        fast.tiles.is_some(),
        "the fixture is JPEG-tiled: the fast path must apply"
    );
    assert!(slow.tiles.is_none());
    // Tissue, background, a slide edge (partly outside the image).
    for (x, y) in [(256, 256), (1216, 896), (1000, 1000), (3072, 2304)] {
        let (a, _, _) = fast.read(geometry, x, y).unwrap();
        let (b, _, _) = slow.read(geometry, x, y).unwrap();
        assert_eq!(a.len(), 256 * 256 * 3);
        let mean: f64 = a
            .iter()
            .zip(&b)
            .map(|(p, q)| f64::from(p.abs_diff(*q)))
            .sum::<f64>()
            / a.len() as f64;
        assert!(mean < 3.0, "({x}, {y}): mean difference {mean:.2} levels");
    }
    // Odd coordinates snap to the scale: (1217, 897) reads as (1216, 896).
    let (a, _, _) = fast.read(geometry, 1217, 897).unwrap();
    let (b, _, _) = fast.read(geometry, 1216, 896).unwrap();
    assert_eq!(a, b);
}

#[test]
fn reader_threads_deliver_every_patch_in_order_whatever_the_buffers_held() {
    use hdmoe_pipe::features::patch::{Geometry, Reader};
    use hdmoe_pipe::features::pipeline::{produce, Buffers, Job, Message};
    let geometry = Geometry {
        level: 0,
        read_size: 512,
        input_size: 256,
    };
    let fast = fixture("slides/aperio40x.svs");
    let coords: Vec<[i64; 2]> = (0..23)
        .map(|i| [256 + 96 * (i % 7), 128 + 160 * (i / 7)])
        .chain([[3072, 2304], [-100, 40]]) // partly outside the image
        .collect();
    let jobs = vec![
        Job {
            slide: fast.clone(),
            geometry,
            coords: coords.clone(),
        },
        Job {
            slide: fixture("slides/not_a_slide.svs"),
            geometry,
            coords: coords.clone(),
        },
        Job {
            slide: fixture("slides/aperio20x.svs"),
            geometry: Geometry {
                read_size: 256,
                ..geometry
            },
            coords: coords[..9].to_vec(),
        },
    ];
    // What one reader returns patch by patch, on its own.
    let expected: Vec<Vec<Vec<u8>>> = [&jobs[0], &jobs[2]]
        .iter()
        .map(|job| {
            let mut reader = Reader::open(&job.slide, job.geometry, true).unwrap();
            job.coords
                .iter()
                .map(|&[x, y]| reader.read(job.geometry, x, y).unwrap().0)
                .collect()
        })
        .collect();
    let patch_bytes = 256 * 256 * 3;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let buffers = Buffers::default();
    // Recycled buffers hold the previous batches' bytes: seed ones full of garbage.
    for _ in 0..3 {
        buffers.give(vec![0xAB; 7 * patch_bytes]);
    }
    let (sender, receiver) = std::sync::mpsc::sync_channel(2);
    let mut received: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
    let mut failures = Vec::new();
    std::thread::scope(|scope| {
        let (pool, buffers) = (&pool, &buffers);
        scope.spawn(move || produce(jobs, 7, true, pool, sender, buffers));
        while let Ok(message) = receiver.recv() {
            match message {
                Message::Batch { pixels, rows, .. } => {
                    assert!(rows <= 7);
                    assert_eq!(pixels.len(), rows * patch_bytes);
                    let last = received.last_mut().unwrap();
                    last.extend(pixels.chunks(patch_bytes).map(<[u8]>::to_vec));
                    buffers.give(pixels);
                }
                Message::End => received.push(Vec::new()),
                Message::Failed(message) => {
                    failures.push(message);
                    received.push(Vec::new());
                }
            }
        }
    });
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("not_a_slide.svs"), "{failures:?}");
    let delivered: Vec<&Vec<Vec<u8>>> = received.iter().filter(|r| !r.is_empty()).collect();
    assert_eq!(delivered.len(), 2);
    for (got, want) in delivered.iter().zip(&expected) {
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(a == b, "patch {i} differs from a lone reader's");
        }
    }
}
