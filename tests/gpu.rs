//! CUDA checks, run by scripts/gpu_check.sh on a GPU node (each test says "skipped" and passes
//! where no CUDA device is visible): features on the GPU against torchvision's reference in
//! fp32 (TF32 convolutions) and fp16 channels-last, the features stage on CUDA, and training on
//! CUDA.

mod common;

use common::{copy_slides, fixture, hashed_weights};
use hdmoe_pipe::config::Config;
use hdmoe_pipe::encode::{Encoder, EncoderKind};
use hdmoe_pipe::features;
use hdmoe_pipe::shard::Shard;
use hdmoe_pipe::slide::reader::Slide;
use tch::{Device, Kind};

fn cuda() -> Option<Device> {
    if tch::Cuda::is_available() {
        Some(Device::Cuda(0))
    } else {
        eprintln!("no CUDA device: skipped");
        None
    }
}

/// Largest |got - want| over the largest |want|.
fn relative_error(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .fold(0f64, |m, (g, w)| m.max((f64::from(*g) - w).abs()))
        / scale
}

#[test]
fn cuda_features_match_torchvision_in_fp32_and_fp16() {
    let Some(device) = cuda() else { return };
    let dir = tempfile::tempdir().unwrap();
    let weights = hashed_weights(EncoderKind::Resnet50, dir.path());
    let text = std::fs::read_to_string(fixture("features/reference.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let slide = Slide::open(&fixture("slides/aperio20x.svs")).unwrap();
    let mut pixels = Vec::new();
    for c in reference["coords"].as_array().unwrap() {
        let (x, y) = (c[0].as_i64().unwrap(), c[1].as_i64().unwrap());
        pixels.extend(slide.read_rgb_bytes(x, y, 0, 256, 256).unwrap());
    }
    let want: Vec<f64> = reference["features"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    for (kind, tolerance) in [
        (Kind::Float, 1e-2),
        (Kind::Half, 3e-2),
        (Kind::BFloat16, 8e-2),
    ] {
        let mut encoder =
            Encoder::new(EncoderKind::Resnet50Trunc, device, Some(&weights), 1).unwrap();
        encoder.set_precision(kind);
        let mut stager = features::Stager::new(device);
        let out = features::embed(&encoder, &pixels, 4, 256, kind, &mut stager);
        let got = Vec::<f32>::try_from(&out.reshape([-1])).unwrap();
        let err = relative_error(&got, &want);
        println!("{kind:?} on {device:?}: largest error / largest feature = {err:.2e}");
        assert!(err < tolerance, "{kind:?}: {err:e}");
    }
}

#[test]
fn features_stage_runs_on_cuda_in_fp16() {
    if cuda().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slides = copy_slides(dir.path(), &["aperio40x.svs", "cmu_small_region.svs"]);
    let config = Config::load(
        None,
        &[
            format!("paths.slides={}", slides.display()),
            format!("paths.cache={}", dir.path().join("cache").display()),
            "tile.preset=biopsy".into(),
            "features.device=cuda".into(),
            "features.precision=fp16".into(),
            "features.batch_size=16".into(),
        ],
    )
    .unwrap();
    hdmoe_pipe::slide::run(&config, None, false, Shard::ALL).unwrap();
    let report = features::run(&config, false, true, Shard::ALL).unwrap();
    assert_eq!(report.done, 2, "{report:?}");
    println!("{report:?}");
}

#[test]
fn training_runs_on_cuda() {
    if cuda().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = fixture("..");
    let config = Config::load(
        Some(&root.join("pipelines/demo.yaml")),
        &[
            format!(
                "paths.cohort={}",
                root.join("fixtures/tcga/blca_sig_24cases.csv").display()
            ),
            format!(
                "paths.signatures={}",
                root.join("fixtures/tcga/signatures.csv").display()
            ),
            format!(
                "paths.splits={}",
                root.join("fixtures/demo/splits").display()
            ),
            format!("paths.cache={}", dir.path().join("cache").display()),
            format!("paths.runs={}", dir.path().join("runs").display()),
            "train.epochs=2".into(),
            "train.folds=[0]".into(),
            "train.device=cuda".into(),
        ],
    )
    .unwrap();
    hdmoe_pipe::genomics::run(&config, false).unwrap();
    let result = hdmoe_pipe::train::run(&config, false).unwrap();
    let fold = &result.folds[0];
    println!("fold 0 on CUDA: last C-index {:.4}", fold.c_last);
    assert!(fold.c_last.is_finite());
}
