//! CUDA checks, run by scripts/gpu_check.sh on a GPU node (each test says "skipped" and passes
//! where no CUDA device is visible): features on the GPU against torchvision's float64
//! reference in fp32 (TF32 convolutions), fp16 and bf16 channels-last, each within what its
//! rounding allows; the features stage on CUDA, and training on CUDA.

use crate::common;

use common::{
    copy_slides, fixture, hashed_weights, json_rows, rounding_bound, scaled_errors, U_BF16, U_F16,
};
use hdmoe_pipe::config::Config;
use hdmoe_pipe::encode::{resnet2d, Encoder};
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

#[test]
fn cuda_features_match_torchvision_in_fp32_and_fp16() {
    let Some(device) = cuda() else { return };
    let dir = tempfile::tempdir().unwrap();
    let weights = hashed_weights(&resnet2d::RESNET50, dir.path());
    let text = std::fs::read_to_string(fixture("features/reference.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let slide = Slide::open(&fixture("slides/aperio20x.svs")).unwrap();
    let mut pixels = Vec::new();
    for c in reference["coords"].as_array().unwrap() {
        let (x, y) = (c[0].as_i64().unwrap(), c[1].as_i64().unwrap());
        pixels.extend(slide.read_rgb_bytes(x, y, 0, 256, 256).unwrap());
    }
    assert_eq!(reference["dtype"], "float64");
    let (want, width) = json_rows(&reference["features"]);
    // What rounding allows (see `rounding_bound`; the truncated resnet50's 40 convolutions plus
    // the input normalisation, cast to the working precision, fan-in up to 3·3·256; the sums
    // accumulate in float32 in each case): TF32 rounds each convolution's weight and input to
    // 10 mantissa bits (values are stored in float32); fp16 and bf16 round the weight and store
    // the convolution, BN and shortcut-add outputs in their format (4 roundings a layer).
    // That gives 8.9e-3, 1.3e-2 and 1.0e-1 of the features' scale.
    let depth = 40 + 1;
    let fan_in = 3 * 3 * 256;
    for (kind, u, roundings) in [
        (Kind::Float, U_F16, 2.0),
        (Kind::Half, U_F16, 4.0),
        (Kind::BFloat16, U_BF16, 4.0),
    ] {
        let bound = rounding_bound(u, roundings, fan_in, depth);
        let mut encoder =
            Encoder::new(&resnet2d::RESNET50_TRUNC, device, Some(&weights), 1).unwrap();
        encoder.set_precision(kind);
        let mut stager = features::Stager::new(device, &resnet2d::RESNET50_TRUNC.normalization);
        let out = features::embed(&encoder, &pixels, 4, 256, kind, &mut stager);
        let got = Vec::<f32>::try_from(&out.reshape([-1])).unwrap();
        let got: Vec<f64> = got.into_iter().map(f64::from).collect();
        let (err, l2) = scaled_errors(&got, &want, width);
        println!(
            "{kind:?} on {device:?}: max error / max |feature| = {err:.2e} (bound {bound:.2e}), \
             relative L2 {l2:.2e} (worst patch)"
        );
        assert!(err <= bound, "{kind:?}: {err:e} above {bound:e}");
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
    hdmoe_pipe::slide::run(&config, None, &common::options(false, false, Shard::ALL)).unwrap();
    let report = features::run(&config, &common::options(false, true, Shard::ALL)).unwrap();
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
    hdmoe_pipe::genomics::run(&config, &Default::default()).unwrap();
    let result = hdmoe_pipe::train::run(&config, false).unwrap();
    let fold = &result.folds[0];
    println!("fold 0 on CUDA: last C-index {:.4}", fold.c_last);
    assert!(fold.c_last.is_finite());
}
