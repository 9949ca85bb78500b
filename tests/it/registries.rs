//! Adding an encoder and a model, as a contributor would, but here in a test rather than in the
//! product: each is one network or model definition plus one registry entry (in the product the
//! entry's line goes into `PATCH_ENCODERS` / `MODELS`, which also makes its configuration name
//! known). The stages, training, selection, checkpoints and `predict` need nothing else.

use std::collections::BTreeSet;

use hdmoe_pipe::cache::read_str_attr;
use hdmoe_pipe::encode::registry::{Network, PatchEncoder, IMAGENET};
use hdmoe_pipe::encode::Encoder;
use hdmoe_pipe::features;
use hdmoe_pipe::model::registry::ModelEntry;
use hdmoe_pipe::model::{
    Architecture, GenomicsInput, Inputs, ModelSpec, Output, Pass, SurvivalModel,
};
use hdmoe_pipe::shard::Shard;
use hdmoe_pipe::train;
use tch::{nn, Device, Kind, Tensor};

use crate::common;

/// The trivial encoder's network: each channel's mean over the patch.
fn mean_rgb_network(_vs: &nn::Path) -> nn::SequentialT {
    nn::seq_t().add_fn(|x| x.mean_dim([2i64, 3].as_slice(), false, Kind::Float))
}

/// The whole of a new patch encoder: its network and its entry.
static MEAN_RGB: PatchEncoder = PatchEncoder {
    network: Network {
        name: "mean_rgb",
        feature_dim: 3,
        weights: "no state dict (parameter-free)",
        build: mean_rgb_network,
    },
    input_size: Some(32),
    normalization: IMAGENET,
};

#[test]
fn an_encoder_is_one_entry_and_its_network() {
    let encoder = Encoder::new(&MEAN_RGB, Device::Cpu, None, 0).unwrap();
    let x = Tensor::arange(2 * 3 * 4 * 4, (Kind::Float, Device::Cpu)).reshape([2, 3, 4, 4]);
    let features = encoder.forward(&x);
    // Channel c of image i holds 16 consecutive integers starting at 16 (3i + c).
    let want: Vec<f32> = (0..6).map(|k| 16.0 * k as f32 + 7.5).collect();
    assert_eq!(Vec::<f32>::try_from(features.reshape([-1])).unwrap(), want);

    // The features stage runs it as it is: its width, its input size, its stamp.
    let dir = tempfile::tempdir().unwrap();
    let slides = crate::features::tiled(dir.path());
    let mut cfg = crate::features::config(dir.path(), &slides, &[]);
    cfg.features.encoder = &MEAN_RGB;
    let report = features::run(&cfg, &common::options(false, true, Shard::ALL)).unwrap();
    assert_eq!(report.done, 2, "{report:?}");
    let out = dir.path().join("cache/features/aperio40x.h5");
    let rows = crate::features::read_features(&out);
    assert_eq!(rows.dim().1, 3);
    // ImageNet-normalised channel means of real H&E patches lie within a few units of 0.
    assert!(
        rows.iter().all(|v| v.is_finite() && v.abs() < 3.0),
        "{rows:?}"
    );
    let file = hdf5::File::open(&out).unwrap();
    assert_eq!(read_str_attr(&file, "encoder").unwrap(), "mean_rgb");
    assert_eq!(read_str_attr(&file, "input_size").unwrap(), "32");
}

/// The trivial model: one Linear from every genomic column to the four logits.
struct GeneLinear {
    spec: ModelSpec,
    linear: nn::Linear,
}

impl SurvivalModel for GeneLinear {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn forward_pass(&self, inputs: &Inputs, _segments: (i64, i64), _pass: Pass) -> Output {
        let groups = inputs.genomics.as_ref().expect("genomic inputs");
        Output::from_logits(Tensor::cat(groups, 0).apply(&self.linear))
    }
}

fn build_gene_linear(vs: &nn::Path, spec: ModelSpec) -> Box<dyn SurvivalModel> {
    let width: i64 = spec.genomic_groups.iter().sum();
    let linear = nn::linear(vs / "probe", width, 4, Default::default());
    Box::new(GeneLinear { spec, linear })
}

/// The whole of a new model: the type above and its entry.
static GENE_LINEAR: ModelEntry = ModelEntry {
    name: "gene_linear",
    official: "none (a test's example)",
    genomics: GenomicsInput::Groups,
    accepts: |modalities| {
        if modalities == [hdmoe_pipe::config::Modality::Genomics] {
            Ok(())
        } else {
            Err("genomics only".into())
        }
    },
    build: build_gene_linear,
};

#[test]
fn a_model_is_one_entry_and_its_type_and_fit_trains_it_through_the_trait() {
    let _one = crate::fit::ONE_FIT_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = crate::fit::synthetic(&dir.path().join("linear"), 120, false, false);
    let mut config = data.config(&["train.epochs=12", "train.lr=3e-3"]);
    config.model.architecture = Architecture(&GENE_LINEAR);
    let report = train::run(&config, false).unwrap();
    assert_eq!(report.folds.len(), 2);
    // A linear model on the genes finds the planted signal (chance 0.5, oracle 0.83).
    let mean = report.folds.iter().map(|f| f.c_last).sum::<f64>() / 2.0;
    assert!(mean > 0.6, "C-index {mean}");
    // Its checkpoint holds its own parameters, and predict applies it.
    let checkpoint = data.dir.join("runs/fold_0/model.safetensors");
    let names: BTreeSet<String> = Tensor::read_safetensors(&checkpoint)
        .unwrap()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        names,
        ["probe.bias", "probe.weight"].map(String::from).into()
    );
    let out = dir.path().join("predicted");
    let predicted = train::predict::run(&config, &checkpoint, Some(0), Some(&out)).unwrap();
    assert_eq!(predicted.patients, report.folds[0].n_val);
    // The configuration refuses modalities the entry does not take.
    let mut wrong = config.clone();
    wrong.dataset.modalities = vec![
        hdmoe_pipe::config::Modality::Wsi,
        hdmoe_pipe::config::Modality::Genomics,
    ];
    let err = train::run(&wrong, true).unwrap_err().to_string();
    assert!(
        err.contains("gene_linear") && err.contains("genomics only"),
        "{err}"
    );
}
