//! The survival models `fit` trains and `predict` applies, behind one trait.
//!
//! [`SurvivalModel`] is what training, selection, checkpoints and `predict` see: one forward
//! pass to hazards and the named auxiliary loss terms the model contributes. Models: HDMoE
//! (`hdmoe.rs`, MODEL_SPEC 2–4), one modality's encoder with a linear head (`unimodal.rs`),
//! MCAT's SNN (`snn.rs`); their shared blocks are in `blocks.rs`. [`registry`] maps
//! `model.architecture` to a builder; to add a model, see its header.

pub mod abmil;
pub mod attention;
pub mod blocks;
pub mod ccl;
pub mod clam;
pub mod cmta;
pub mod dropout;
pub mod hdmoe;
pub mod init;
pub mod ld_cvae;
pub mod loss;
pub mod mcat;
pub mod mil;
pub mod moe;
pub mod mome;
pub mod motcat;
pub mod nystrom;
pub mod ot;
pub mod pibd;
pub mod registry;
pub mod snn;
pub mod snn_trans;
pub mod survpath;
pub mod transmil;
pub mod unimodal;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use loss::Distance;
pub use moe::UnchosenExperts;
pub use registry::{build, Architecture};

/// What an MoE passes on (MODEL_SPEC 8.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoeOutputRule {
    /// The release: routed and shared outputs as two vectors, interleaved by the RFR.
    Separate,
    /// The paper's Eq. (1)/(2) (DeepSeekMoE): their sum.
    Sum,
}

/// What the RFR does at evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RfrEval {
    /// Fresh random segment counts for every evaluated patient (the released code).
    Random,
    /// No recombination at evaluation (s₁ = s₂ = 1): deterministic predictions.
    Identity,
}

/// How a model reads the genomics cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenomicsInput {
    /// The six gene-family groups, one vector each.
    Groups,
    /// Every gene column of the table once (`all_genes`), as one group.
    AllGenes,
}

/// An auxiliary loss term a model contributes beside the survival NLL; `fit` weighs it by its
/// configuration key and records it in history.csv.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossTerm {
    /// The decoupling loss (`model.lambda_decouple`, column `loss_decoupling`).
    Decoupling,
    /// Σ of the MoEs' load-balance losses, training only (`model.lambda_balance`,
    /// column `loss_balance`).
    Balance,
    /// CLAM's instance loss, training only (weight 1 − `model.bag_weight`, column
    /// `loss_instance`).
    Instance,
    /// CMTA's alignment of the decoders' cls tokens to the encoders' (L1), weight
    /// `model.alignment_weight` (CMTA's `alpha`), column `loss_alignment`.
    Alignment,
    /// CCL's cohort loss (intra-patient decomposition and inter-patient contrast against its
    /// banks), training only, weight `model.cohort_weight`, column `loss_cohort`.
    Cohort,
    /// PIBD's proxy-attention loss, training only (`model.pibd_gamma`).
    Proxy,
    /// PIBD's NLL of the proxies' decoded logits (`model.pibd_alpha`).
    ProxyNll,
    /// PIBD's KL of the proxy distributions to N(0, I) (`model.pibd_beta`).
    ProxyKl,
    /// PIBD's CLUB mutual-information bound (`model.pibd_sigma`).
    ClubMi,
    /// PIBD's CLUB estimator's own learning loss (`model.pibd_sigma`).
    ClubEstimator,
    /// LD-CVAE's genomic reconstruction (MSE), training only (`model.ldcvae_reconstruction`).
    Reconstruction,
    /// LD-CVAE's NLL of its WSI-only head (`model.ldcvae_beta`).
    WsiSurvival,
    /// LD-CVAE's alignment of the genomic and WSI posteriors (`model.ldcvae_alpha`).
    LatentAlignment,
    /// LD-CVAE's KL terms (`model.ldcvae_kl`; the release anneals it, here it is constant).
    Kl,
}

impl LossTerm {
    /// Its weight in the total loss.
    pub fn weight(self, config: &crate::config::ModelConfig) -> f64 {
        match self {
            LossTerm::Decoupling => config.lambda_decouple,
            LossTerm::Balance => config.lambda_balance,
            LossTerm::Instance => 1.0 - config.bag_weight,
            LossTerm::Alignment => config.alignment_weight,
            LossTerm::Cohort => config.cohort_weight,
            LossTerm::Proxy => config.pibd_gamma,
            LossTerm::ProxyNll => config.pibd_alpha,
            LossTerm::ProxyKl => config.pibd_beta,
            LossTerm::ClubMi | LossTerm::ClubEstimator => config.pibd_sigma,
            LossTerm::Reconstruction => config.ldcvae_reconstruction,
            LossTerm::WsiSurvival => config.ldcvae_beta,
            LossTerm::LatentAlignment => config.ldcvae_alpha,
            LossTerm::Kl => config.ldcvae_kl,
        }
    }

    /// Every term, in history.csv's column order.
    pub const ALL: [LossTerm; 14] = [
        LossTerm::Decoupling,
        LossTerm::Balance,
        LossTerm::Instance,
        LossTerm::Alignment,
        LossTerm::Cohort,
        LossTerm::Proxy,
        LossTerm::ProxyNll,
        LossTerm::ProxyKl,
        LossTerm::ClubMi,
        LossTerm::ClubEstimator,
        LossTerm::Reconstruction,
        LossTerm::WsiSurvival,
        LossTerm::LatentAlignment,
        LossTerm::Kl,
    ];

    /// Its history.csv column (and name in the parity fixtures, without `loss_`).
    pub fn column(self) -> &'static str {
        match self {
            LossTerm::Decoupling => "loss_decoupling",
            LossTerm::Balance => "loss_balance",
            LossTerm::Instance => "loss_instance",
            LossTerm::Alignment => "loss_alignment",
            LossTerm::Cohort => "loss_cohort",
            LossTerm::Proxy => "loss_proxy",
            LossTerm::ProxyNll => "loss_proxy_nll",
            LossTerm::ProxyKl => "loss_proxy_kl",
            LossTerm::ClubMi => "loss_club_mi",
            LossTerm::ClubEstimator => "loss_club_estimator",
            LossTerm::Reconstruction => "loss_reconstruction",
            LossTerm::WsiSurvival => "loss_wsi_survival",
            LossTerm::LatentAlignment => "loss_latent_alignment",
            LossTerm::Kl => "loss_kl",
        }
    }
}

/// A survival model: one patient's inputs to discrete hazards (MODEL_SPEC 4) and its named
/// auxiliary losses. Parameters are created under the `nn::Path` the builder is given, named as
/// the model's released code names them (docs/PARAMETERS.md), so official state dicts load by
/// name.
pub trait SurvivalModel {
    /// The resolved hyperparameters it was built with.
    fn spec(&self) -> &ModelSpec;

    /// One patient. `segments` = (s₁, s₂) for the two RFR steps (1, 1 = no recombination;
    /// models without an RFR ignore them).
    fn forward_pass(&self, inputs: &Inputs, segments: (i64, i64), pass: Pass) -> Output;

    /// [`forward_pass`](Self::forward_pass) in training (dropout on) or evaluation mode.
    fn forward(&self, inputs: &Inputs, segments: (i64, i64), train: bool) -> Output {
        let pass = if train { Pass::TRAIN } else { Pass::EVAL };
        self.forward_pass(inputs, segments, pass)
    }

    /// The RFR segment counts a forward pass may draw from: (S₁, S₂).
    fn segment_choices(&self) -> (Vec<i64>, Vec<i64>) {
        (vec![1], vec![1])
    }

    /// The auxiliary loss terms its outputs carry.
    fn loss_terms(&self) -> &'static [LossTerm] {
        &[]
    }

    /// The survival NLL's weight in the total loss (CLAM weighs it by `model.bag_weight`).
    fn survival_weight(&self) -> f64 {
        1.0
    }
}

/// The model's hyperparameters, resolved (see `config::ModelConfig` for the YAML keys).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub architecture: Architecture,
    pub dim: i64,
    pub heads: i64,
    pub landmarks: i64,
    pub token_length: i64,
    pub experts: i64,
    pub top_k: i64,
    pub shared_expert: bool,
    pub renormalise_top_k: bool,
    pub unchosen_experts: UnchosenExperts,
    pub moe_output: MoeOutputRule,
    pub rfr: bool,
    pub rfr_eval: RfrEval,
    pub distance: Distance,
    /// CLAM's weight of the bag (survival) loss against its instance loss.
    pub bag_weight: f64,
    pub wsi_dim: i64,
    pub mri_dim: i64,
    /// Column counts of the genomic groups.
    pub genomic_groups: Vec<i64>,
    /// Modality 1 (genomics or MRI) and modality 2 (WSI), as present.
    pub modality_1: Option<Modality1>,
    pub wsi: bool,
}

impl ModelSpec {
    /// The released configuration's sizes (d = 256, 8 heads, 128 landmarks, 8 experts, top-1,
    /// 1024-d patch features) for WSI + genomics with these groups and token length.
    pub fn wsi_genomics(genomic_groups: Vec<i64>, token_length: i64) -> Self {
        Self {
            architecture: Architecture::HDMOE,
            dim: 256,
            heads: 8,
            landmarks: 128,
            token_length,
            experts: 8,
            top_k: 1,
            shared_expert: true,
            renormalise_top_k: false,
            unchosen_experts: UnchosenExperts::Step,
            moe_output: MoeOutputRule::Separate,
            rfr: true,
            rfr_eval: RfrEval::Random,
            distance: Distance::Cos,
            bag_weight: 0.7,
            wsi_dim: 1024,
            mri_dim: 512,
            genomic_groups,
            modality_1: Some(Modality1::Genomics),
            wsi: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modality1 {
    Genomics,
    Mri,
}

/// One patient's inputs.
#[derive(Debug)]
pub struct Inputs {
    /// [N, wsi_dim] patch features of all the patient's slides.
    pub wsi: Option<Tensor>,
    /// One vector per genomic group.
    pub genomics: Option<Vec<Tensor>>,
    /// [sequences, mri_dim].
    pub mri: Option<Tensor>,
}

/// Everything one forward pass yields.
#[derive(Debug)]
pub struct Output {
    pub logits: Tensor,
    pub hazards: Tensor,
    pub survival: Tensor,
    pub risk: Tensor,
    /// The auxiliary losses the model contributes ([`SurvivalModel::loss_terms`]).
    pub losses: Vec<(LossTerm, Tensor)>,
    /// The decoupling loss's five terms (HDMoE only).
    pub decoupling_terms: Option<loss::Decoupling>,
    /// Chosen experts per MoE (level-1 modality 1, level-1 WSI, level 2): [T, K] each; empty
    /// for models without MoEs.
    pub routing: Vec<Tensor>,
    /// Router probabilities per MoE, same order: [T, E] each.
    pub router_probabilities: Vec<Tensor>,
}

impl Output {
    /// Hazards, survival and risk from the head's logits, with no auxiliary outputs.
    pub fn from_logits(logits: Tensor) -> Self {
        let (hazards, survival, risk) = loss::hazards_survival_risk(&logits);
        Self {
            logits,
            hazards,
            survival,
            risk,
            losses: Vec::new(),
            decoupling_terms: None,
            routing: Vec::new(),
            router_probabilities: Vec::new(),
        }
    }

    /// The auxiliary loss `term` (0 when the model has none).
    pub fn loss(&self, term: LossTerm) -> Tensor {
        self.losses
            .iter()
            .find(|(t, _)| *t == term)
            .map(|(_, value)| value.shallow_clone())
            .unwrap_or_else(|| Tensor::zeros([], (self.logits.kind(), self.logits.device())))
    }
}

/// What a forward pass computes: `train` adds the load-balance loss, `dropout` turns the
/// dropout layers on. Training is both; the parity harness trains with dropout off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub train: bool,
    pub dropout: bool,
    /// The patient's time bin, for training losses that need the label (CLAM's instance
    /// loss); `None` leaves such terms at zero.
    pub label: Option<i64>,
    /// Whether that patient is censored (CCL's cohort loss); `None` as for `label`.
    pub censored: Option<bool>,
}

impl Pass {
    pub const TRAIN: Pass = Pass {
        train: true,
        dropout: true,
        label: None,
        censored: None,
    };
    pub const EVAL: Pass = Pass {
        train: false,
        dropout: false,
        label: None,
        censored: None,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Kind};

    fn spec(groups: Vec<i64>, token_length: i64) -> ModelSpec {
        ModelSpec::wsi_genomics(groups, token_length)
    }

    fn count(spec: ModelSpec) -> i64 {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let _model = build(&vs.root(), spec);
        vs.trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }

    #[test]
    fn parameter_count_matches_the_specification() {
        let _generator = crate::torch_rng::lock();
        // MODEL_SPEC 9, released configuration (g = 256): BLCA 8,624,164 with the quirk's
        // groups (sum 3391), LUAD 8,652,836 (sum 3419).
        assert_eq!(
            count(spec(vec![94, 334, 521, 468, 1495, 479], 256)),
            8_624_164
        );
        assert_eq!(
            count(spec(vec![89, 334, 534, 471, 1509, 482], 256)),
            8_652_836
        );
    }

    /// A bag of 10 patch features and genomic groups of 5 and 7.
    fn random_inputs() -> Inputs {
        let opts = (Kind::Float, tch::Device::Cpu);
        Inputs {
            wsi: Some(Tensor::randn([10, 1024], opts)),
            genomics: Some(vec![Tensor::randn([5], opts), Tensor::randn([7], opts)]),
            mri: None,
        }
    }

    #[test]
    fn summed_moe_outputs_run_at_every_token_length() {
        let _generator = crate::torch_rng::lock();
        tch::manual_seed(2);
        for g in [64, 256] {
            let mut spec = spec(vec![5, 7], g);
            spec.moe_output = MoeOutputRule::Sum;
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let model = hdmoe::Hdmoe::new(&vs.root(), spec, Modality1::Genomics);
            let inputs = random_inputs();
            assert_eq!(model.segment_choices().1, vec![1]);
            let out = model.forward(&inputs, (4, 1), true);
            assert_eq!(out.logits.size(), vec![4]);
            assert_eq!(out.routing[2].size(), vec![512 / g, 1]);
            assert!(out.loss(LossTerm::Decoupling).double_value(&[]).is_finite());
            // The head reads the 512-d sum r_F + s_F.
            assert_eq!(model.head_weight().size(), vec![4, 512]);
        }
    }

    #[test]
    fn forward_shapes_for_every_token_length() {
        let _generator = crate::torch_rng::lock();
        tch::manual_seed(0);
        for g in [32, 64, 128, 256] {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let model = build(&vs.root(), spec(vec![5, 7], g));
            let inputs = random_inputs();
            let (s1, s2) = model.segment_choices();
            for (a, b) in s1.iter().zip(&s2) {
                let out = model.forward(&inputs, (*a, *b), true);
                assert_eq!(out.logits.size(), vec![4], "g = {g}");
                assert_eq!(out.routing[0].size(), vec![256 / g, 1]);
                assert_eq!(out.routing[2].size(), vec![1024 / g, 1]);
                assert!(out.risk.double_value(&[]) < 0.0);
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let _generator = crate::torch_rng::lock();
        tch::manual_seed(5);
        let opts = (Kind::Double, tch::Device::Cpu);
        let mut small = spec(vec![3, 2], 8);
        small.dim = 16;
        small.heads = 2;
        small.landmarks = 4;
        small.experts = 3;
        small.wsi_dim = 6;
        let mut vs = nn::VarStore::new(tch::Device::Cpu);
        let model = build(&vs.root(), small);
        vs.double();
        let inputs = Inputs {
            wsi: Some(Tensor::randn([5, 6], opts)),
            genomics: Some(vec![Tensor::randn([3], opts), Tensor::randn([2], opts)]),
            mri: None,
        };
        let loss = || {
            let out = model.forward(&inputs, (2, 4), false);
            loss::nll_survival(&out.hazards, &out.survival, 1, false)
                + out.loss(LossTerm::Decoupling)
        };
        let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let params: Vec<Tensor> = variables.iter().map(|(_, t)| t.shallow_clone()).collect();
        let grads = Tensor::run_backward(&[loss()], &params, false, false);
        let mut checked = 0;
        for ((name, p), g) in variables.iter().zip(&grads) {
            if !g.defined() || checked >= 40 {
                continue;
            }
            // The first and a middle element of every parameter that received a gradient.
            let flat = p.flatten(0, -1);
            let n = flat.size()[0];
            for k in [0, n / 2] {
                // Step relative to the element: the cls tokens start at N(0, 1e-6).
                let h = 1e-6 * flat.double_value(&[k]).abs().max(1e-3);
                let bump = |delta: f64| {
                    tch::no_grad(|| {
                        let f = flat.shallow_clone();
                        let _ = f.get(k).g_add_scalar_(delta);
                    })
                };
                bump(h);
                let up = loss().double_value(&[]);
                bump(-2.0 * h);
                let down = loss().double_value(&[]);
                bump(h);
                let numeric = (up - down) / (2.0 * h);
                let analytic = g.flatten(0, -1).double_value(&[k]);
                let tolerance = 1e-5 * (1.0 + numeric.abs());
                assert!(
                    (numeric - analytic).abs() < tolerance,
                    "{name}[{k}]: numeric {numeric}, autograd {analytic}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 20, "only {checked} elements checked");
    }
}
