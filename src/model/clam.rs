//! CLAM_SB and CLAM_MB as survival models: MOTCat's `models/model_clam.py` (`CLAM_SB(gate=True,
//! size_arg='small', dropout=True, k_sample=8, n_classes=4)`, `CLAM_MB` likewise; MoME has the
//! same file), adapted from mahmoodlab/CLAM. Patches through Linear(1024, 256), ReLU,
//! Dropout(0.25) and gated attention (256 → 256 → 1 branch for SB, one per bin for MB, each
//! gate followed by Dropout(0.25)); the attention-weighted sum of the 256-d patch features
//! through the classifier (SB: one Linear to the 4 logits; MB: bin c's Linear on bin c's
//! sum). Xavier-normal initialisation (`initialize_weights`).
//!
//! In training CLAM adds its instance loss: the 8 patches of highest and of lowest attention
//! (in the true bin's attention row for MB) are classified by the true bin's instance
//! classifier as positive and negative (cross-entropy, mean over the 16). The total is
//! `bag_weight · NLL + (1 − bag_weight) · instance` (`model.bag_weight`, CLAM's default 0.7;
//! MOTCat never trains CLAM, so the recipe is mahmoodlab/CLAM's `train_loop_clam`). Bags of
//! fewer than 8 patches, where the official top-k raises, get no instance term.

use tch::{nn, Kind, Tensor};

use super::attention::GatedAttention;
use super::blocks::linear;
use super::mil::wsi_only;
use super::registry::ModelEntry;
use super::{GenomicsInput, Inputs, LossTerm, ModelSpec, Output, Pass, SurvivalModel};
use crate::model::dropout::FastDropout;

/// `model.architecture: clam_sb`.
pub static SB_ENTRY: ModelEntry = ModelEntry {
    name: "clam_sb",
    official: "Innse/MOTCat models/model_clam.py `CLAM_SB` (survival adaptation of \
               mahmoodlab/CLAM)",
    genomics: GenomicsInput::Groups,
    accepts: wsi_only,
    build: |vs, spec| Box::new(Clam::new(vs, spec, Branches::Single)),
};

/// `model.architecture: clam_mb`.
pub static MB_ENTRY: ModelEntry = ModelEntry {
    name: "clam_mb",
    official: "Innse/MOTCat models/model_clam.py `CLAM_MB` (survival adaptation of \
               mahmoodlab/CLAM)",
    genomics: GenomicsInput::Groups,
    accepts: wsi_only,
    build: |vs, spec| Box::new(Clam::new(vs, spec, Branches::PerBin)),
};

const BINS: i64 = 4;
/// `k_sample`: patches of highest and of lowest attention in the instance loss.
const K_SAMPLE: i64 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Branches {
    Single,
    PerBin,
}

#[derive(Debug)]
struct Clam {
    spec: ModelSpec,
    branches: Branches,
    fc: nn::Linear,
    attention: GatedAttention,
    /// SB: one Linear(256, 4); MB: four Linear(256, 1).
    classifiers: Vec<nn::Linear>,
    instance_classifiers: Vec<nn::Linear>,
}

const TERMS: [LossTerm; 1] = [LossTerm::Instance];

impl Clam {
    fn new(vs: &nn::Path, spec: ModelSpec, branches: Branches) -> Self {
        let net = vs / "attention_net";
        let outputs = match branches {
            Branches::Single => 1,
            Branches::PerBin => BINS,
        };
        let classifiers = match branches {
            Branches::Single => vec![linear(vs / "classifiers", 256, BINS)],
            Branches::PerBin => (0..BINS)
                .map(|c| linear(vs / "classifiers" / c, 256, 1))
                .collect(),
        };
        Self {
            fc: linear(&net / "0", spec.wsi_dim, 256),
            attention: GatedAttention::new(&net / "3", 256, 256, outputs, Some(0.25), linear),
            classifiers,
            instance_classifiers: (0..BINS)
                .map(|c| linear(vs / "instance_classifiers" / c, 256, 2))
                .collect(),
            branches,
            spec,
        }
    }

    /// CLAM's `inst_eval` for the true bin: top-k and bottom-k patches of `row` (softmaxed
    /// attention [N]) through that bin's instance classifier, cross-entropy against 1 and 0.
    fn instance_loss(&self, h: &Tensor, row: &Tensor, bin: i64) -> Tensor {
        let (_, top) = row.topk(K_SAMPLE, 0, true, true);
        let (_, bottom) = (-row).topk(K_SAMPLE, 0, true, true);
        let picked = h.index_select(0, &Tensor::cat(&[top, bottom], 0));
        let logits = picked.apply(&self.instance_classifiers[bin as usize]);
        let targets = Tensor::cat(
            &[
                Tensor::ones([K_SAMPLE], (Kind::Int64, h.device())),
                Tensor::zeros([K_SAMPLE], (Kind::Int64, h.device())),
            ],
            0,
        );
        // nn.CrossEntropyLoss (mean) in the logits' own precision.
        logits.log_softmax(-1, logits.kind()).nll_loss(&targets)
    }
}

impl SurvivalModel for Clam {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn loss_terms(&self) -> &'static [LossTerm] {
        &TERMS
    }

    fn survival_weight(&self) -> f64 {
        self.spec.bag_weight
    }

    fn forward_pass(&self, inputs: &Inputs, _segments: (i64, i64), pass: Pass) -> Output {
        let train = pass.dropout;
        let bag = inputs.wsi.as_ref().expect("WSI inputs");
        let h = bag.apply(&self.fc).relu().fast_dropout(0.25, train);
        let weights = self.attention.weights(&h, train); // [1 or 4, N]
        let pooled = weights.matmul(&h); // [1 or 4, 256]
        let logits = match self.branches {
            Branches::Single => pooled.get(0).apply(&self.classifiers[0]),
            Branches::PerBin => Tensor::cat(
                &self
                    .classifiers
                    .iter()
                    .enumerate()
                    .map(|(c, classifier)| pooled.get(c as i64).apply(classifier))
                    .collect::<Vec<_>>(),
                0,
            )
            // The official CLAM_MB writes the logits into `torch.empty(1, n).float()`: the
            // hazards, S and the loss are float32 whatever the model's precision.
            .to_kind(Kind::Float),
        };
        let mut out = Output::from_logits(logits);
        let n = h.size()[0];
        let instance = match pass.label {
            Some(bin) if pass.train && n >= K_SAMPLE => {
                let row = match self.branches {
                    Branches::Single => weights.get(0),
                    Branches::PerBin => weights.get(bin),
                };
                self.instance_loss(&h, &row, bin)
            }
            _ => Tensor::zeros([], (h.kind(), h.device())),
        };
        out.losses = vec![(LossTerm::Instance, instance)];
        out
    }
}
