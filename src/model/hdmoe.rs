//! HDMoE with two modalities (MODEL_SPEC 2–4): modality 1 (genomics or MRI) and WSI encoded,
//! each through a level-1 MoE, aligned, recombined (RFR) and fused by the level-2 MoE; the
//! decoupling and load-balance losses are its auxiliary terms. Parameters carry the released
//! code's names (`HDMoE` in `models/hdmoe/network.py`; docs/PARAMETERS.md).

use tch::{nn, Tensor};

use super::blocks::{linear, Encoder1, WsiEncoder};
use super::moe::{self, Moe, MoeConfig, MoeOutput};
use super::registry::ModelEntry;
use super::{
    loss, unimodal, GenomicsInput, Inputs, LossTerm, Modality1, ModelSpec, MoeOutputRule, Output,
    Pass, SurvivalModel,
};
use crate::config::Modality;
use crate::profile;

/// `model.architecture: hdmoe`: the fused model for two modalities, and with one modality that
/// modality's encoder and a linear head (the paper's unimodal rows, `unimodal.rs`).
pub static ENTRY: ModelEntry = ModelEntry {
    name: "hdmoe",
    official:
        "ZJUMAI/HDMoE models/hdmoe/network.py `HDMoE` (unimodal: its encoders and a Linear head)",
    genomics: GenomicsInput::Groups,
    accepts,
    build,
};

fn accepts(modalities: &[Modality]) -> Result<(), String> {
    match modalities {
        [_] => Ok(()),
        [_, _] if modalities.contains(&Modality::Wsi) => Ok(()),
        _ => Err("hdmoe takes one modality, or wsi with genomics or mri".into()),
    }
}

fn build(vs: &nn::Path, spec: ModelSpec) -> Box<dyn SurvivalModel> {
    match spec.modality_1 {
        Some(modality) if spec.wsi => Box::new(Hdmoe::new(vs, spec, modality)),
        _ => Box::new(unimodal::Unimodal::new(vs, spec)),
    }
}

/// The fusion part: two level-1 MoEs, the alignment Linears, the level-2 MoE.
#[derive(Debug)]
struct Fusion {
    moe_1: Moe,
    moe_wsi: Moe,
    moe_f: Moe,
    align_spec: nn::Linear,
    align_share: nn::Linear,
}

#[derive(Debug)]
pub struct Hdmoe {
    spec: ModelSpec,
    encoder_1: Encoder1,
    wsi: WsiEncoder,
    fusion: Fusion,
    head: nn::Linear,
}

const TERMS: [LossTerm; 2] = [LossTerm::Decoupling, LossTerm::Balance];

impl Hdmoe {
    /// The MRI MoE, which the release lacks, is named by analogy (`mri_moe`).
    pub fn new(vs: &nn::Path, spec: ModelSpec, modality_1: Modality1) -> Self {
        let d = spec.dim;
        let encoder_1 = Encoder1::new(vs, &spec, modality_1);
        let wsi = WsiEncoder::new(vs, &spec);
        let g = spec.token_length;
        let moe = |path: nn::Path, output: i64| {
            Moe::new(
                path,
                MoeConfig {
                    input: g,
                    output,
                    experts: spec.experts,
                    top_k: spec.top_k,
                    shared: spec.shared_expert,
                    renormalise: spec.renormalise_top_k,
                    unchosen: spec.unchosen_experts,
                },
            )
        };
        let moe_1_name = match modality_1 {
            Modality1::Mri => "mri_moe",
            Modality1::Genomics => "genomics_moe",
        };
        let fusion = Fusion {
            moe_1: moe(vs / moe_1_name, g),
            moe_wsi: moe(vs / "pathomics_moe", g),
            // Level 2 keeps r_F and s_F 512-d (= 2d) either way: 4d/g tokens of g/2, or with
            // summed outputs 2d/g tokens of g.
            moe_f: moe(
                vs / "fusion_moe",
                match spec.moe_output {
                    MoeOutputRule::Separate => g / 2,
                    MoeOutputRule::Sum => g,
                },
            ),
            align_spec: linear(vs / "emb1", 2 * d, 2 * d),
            align_share: linear(vs / "emb2", 2 * d, 2 * d),
        };
        let fused_width = match spec.moe_output {
            MoeOutputRule::Separate => 4 * d,
            MoeOutputRule::Sum => 2 * d,
        };
        let head = linear(vs / "classifier", fused_width, 4);
        Self {
            spec,
            encoder_1,
            wsi,
            fusion,
            head,
        }
    }

    /// The head's weight (tests check its width).
    pub fn head_weight(&self) -> &Tensor {
        &self.head.ws
    }
}

impl SurvivalModel for Hdmoe {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn loss_terms(&self) -> &'static [LossTerm] {
        &TERMS
    }

    fn forward_pass(&self, inputs: &Inputs, segments: (i64, i64), pass: Pass) -> Output {
        let v1 = self.encoder_1.forward(inputs, pass.dropout);
        let v2 = self.wsi.forward(inputs, pass.dropout);
        profile::phase("forward: MoEs, fusion, head", || {
            self.fuse(&v1, &v2, segments, pass)
        })
    }

    /// (S₁, S₂): the RFR's segment counts (1 when `model.rfr` is off).
    fn segment_choices(&self) -> (Vec<i64>, Vec<i64>) {
        if !self.spec.rfr {
            return (vec![1], vec![1]);
        }
        let s2 = match self.spec.moe_output {
            MoeOutputRule::Separate => moe::segment_choices(self.spec.dim),
            MoeOutputRule::Sum => vec![1],
        };
        (moe::segment_choices(self.spec.dim / 2), s2)
    }
}

impl Hdmoe {
    /// The two encodings through the level-1 MoEs, alignment, RFR, level-2 MoE and head.
    fn fuse(&self, v1: &Tensor, v2: &Tensor, segments: (i64, i64), pass: Pass) -> Output {
        let zero = || Tensor::zeros([], (self.head.ws.kind(), self.head.ws.device()));
        let train = pass.dropout;
        let fusion = &self.fusion;
        let g = self.spec.token_length;
        let m1 = fusion.moe_1.forward(&v1.view([-1, g]), train);
        let m2 = fusion.moe_wsi.forward(&v2.view([-1, g]), train);
        let a_spec = Tensor::cat(&[&m1.routed, &m2.routed], 0).apply(&fusion.align_spec);
        let a_share = Tensor::cat(&[&m1.shared, &m2.shared], 0).apply(&fusion.align_share);
        let (u, mf, z);
        match self.spec.moe_output {
            MoeOutputRule::Separate => {
                u = moe::recombine(
                    &[&m1.routed, &m2.routed, &m1.shared, &m2.shared],
                    segments.0,
                );
                mf = fusion.moe_f.forward(&u.view([-1, g]), train);
                z = moe::recombine(&[&mf.routed, &mf.shared], segments.1);
            }
            MoeOutputRule::Sum => {
                // DeepSeekMoE: each MoE's output is routed + shared; RFR-1 interleaves the
                // two modalities' sums, and RFR-2 has a single vector left to arrange.
                u = moe::recombine(
                    &[&(&m1.routed + &m1.shared), &(&m2.routed + &m2.shared)],
                    segments.0,
                );
                mf = fusion.moe_f.forward(&u.view([-1, g]), train);
                z = &mf.routed + &mf.shared;
            }
        }
        let terms = loss::decoupling(
            self.spec.distance,
            &m1.routed,
            &m1.shared,
            &m2.routed,
            &m2.shared,
            &mf.routed,
            &mf.shared,
            &a_spec,
            &a_share,
        );
        let decoupling = terms.total();
        let balance = if pass.train {
            [&m1, &m2, &mf]
                .iter()
                .map(|m: &&MoeOutput| moe::load_balance(m, self.spec.top_k))
                .fold(zero(), |acc, x| acc + x)
        } else {
            zero()
        };
        let mut routing = Vec::new();
        let mut router_probabilities = Vec::new();
        for m in [m1, m2, mf] {
            routing.push(m.chosen);
            router_probabilities.push(m.probabilities);
        }
        let mut out = Output::from_logits(z.apply(&self.head));
        out.losses = vec![
            (LossTerm::Decoupling, decoupling),
            (LossTerm::Balance, balance),
        ];
        out.decoupling_terms = Some(terms);
        out.routing = routing;
        out.router_probabilities = router_probabilities;
        out
    }
}
