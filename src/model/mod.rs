//! HDMoE (MODEL_SPEC 2–4) and its unimodal baselines, in libtorch.

pub mod init;
pub mod loss;
pub mod moe;
pub mod nystrom;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Init};

use tch::Tensor;

use loss::Distance;
pub use moe::UnchosenExperts;
use moe::{Moe, MoeConfig, MoeOutput};
use nystrom::{Ppeg, TransLayer};

/// Which model `fit` trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// HDMoE with two modalities; with one modality, that modality's encoder and a linear head.
    Hdmoe,
    /// MCAT's SNN baseline (`models/model_genomic.py`: four SNN blocks of 256, a linear head,
    /// `init_max_weights`) on every genomic column of the table, once (genomics only).
    Snn,
}

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
            architecture: Architecture::Hdmoe,
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
    /// Decoupling loss (0 for unimodal models).
    pub decoupling: Tensor,
    /// Its five terms (fused models only).
    pub decoupling_terms: Option<loss::Decoupling>,
    /// Σ of the load-balance losses of the three MoEs (0 at evaluation and for unimodal).
    pub balance: Tensor,
    /// Chosen experts per MoE (level-1 modality 1, level-1 WSI, level 2): [T, K] each.
    pub routing: Vec<Tensor>,
    /// Router probabilities per MoE, same order: [T, E] each.
    pub router_probabilities: Vec<Tensor>,
}

/// What a forward pass computes: `train` adds the load-balance loss, `dropout` turns the
/// dropout layers on. Training is both; the parity harness trains with dropout off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub train: bool,
    pub dropout: bool,
}

impl Pass {
    pub const TRAIN: Pass = Pass {
        train: true,
        dropout: true,
    };
    pub const EVAL: Pass = Pass {
        train: false,
        dropout: false,
    };
}

/// Linear with the release's initialisation (xavier-normal weight, zero bias).
fn linear(vs: nn::Path, input: i64, output: i64) -> nn::Linear {
    init::xavier_linear(vs, input, output, true)
}

fn cls_token(vs: &nn::Path, dim: i64) -> Tensor {
    vs.var(
        "cls_token",
        &[1, 1, dim],
        Init::Randn {
            mean: 0.0,
            stdev: 1e-6,
        },
    )
}

/// TransMIL (`Transformer_P`): square padding with copies of the first tokens, cls, layer,
/// PPEG, layer, LayerNorm; returns cls [dim].
#[derive(Debug)]
struct TransMil {
    cls: Tensor,
    layer1: TransLayer,
    ppeg: Ppeg,
    layer2: TransLayer,
    norm: nn::LayerNorm,
}

impl TransMil {
    fn new(vs: nn::Path, spec: &ModelSpec) -> Self {
        Self {
            cls: cls_token(&vs, spec.dim),
            layer1: TransLayer::new(&vs / "layer1", spec.dim, spec.heads, spec.landmarks),
            ppeg: Ppeg::new(&vs / "pos_layer", spec.dim),
            layer2: TransLayer::new(&vs / "layer2", spec.dim, spec.heads, spec.landmarks),
            norm: nn::layer_norm(&vs / "norm", vec![spec.dim], Default::default()),
        }
    }

    /// tokens: [N, dim].
    fn forward(&self, tokens: &Tensor, train: bool) -> Tensor {
        let n = tokens.size()[0];
        let side = (n as f64).sqrt().ceil() as i64;
        let extra = side * side - n;
        let h = Tensor::cat(&[tokens.shallow_clone(), tokens.narrow(0, 0, extra)], 0).unsqueeze(0);
        let h = Tensor::cat(&[self.cls.to_kind(h.kind()), h], 1);
        let h = self.layer1.forward(&h, train);
        let h = self.ppeg.forward(&h, side);
        let h = self.layer2.forward(&h, train);
        h.apply(&self.norm).get(0).get(0)
    }
}

/// `Transformer_G`: cls, two layers, LayerNorm; returns cls [dim].
#[derive(Debug)]
struct TransG {
    cls: Tensor,
    layer1: TransLayer,
    layer2: TransLayer,
    norm: nn::LayerNorm,
}

impl TransG {
    fn new(vs: nn::Path, spec: &ModelSpec) -> Self {
        Self {
            cls: cls_token(&vs, spec.dim),
            layer1: TransLayer::new(&vs / "layer1", spec.dim, spec.heads, spec.landmarks),
            layer2: TransLayer::new(&vs / "layer2", spec.dim, spec.heads, spec.landmarks),
            norm: nn::layer_norm(&vs / "norm", vec![spec.dim], Default::default()),
        }
    }

    fn forward(&self, tokens: &Tensor, train: bool) -> Tensor {
        let h = Tensor::cat(&[self.cls.to_kind(tokens.kind()), tokens.unsqueeze(0)], 1);
        let h = self.layer2.forward(&self.layer1.forward(&h, train), train);
        h.apply(&self.norm).get(0).get(0)
    }
}

/// MCAT's SNN block: Linear → ELU → AlphaDropout(0.25).
#[derive(Debug)]
struct SnnBlock(nn::Linear);

impl SnnBlock {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        x.apply(&self.0).elu().alpha_dropout(0.25, train)
    }
}

#[derive(Debug)]
enum Encoder1 {
    Genomics {
        snns: Vec<(SnnBlock, SnnBlock)>,
        trans: TransG,
    },
    Mri {
        embed: nn::Linear,
        trans: TransG,
    },
}

impl Encoder1 {
    fn forward(&self, inputs: &Inputs, train: bool) -> Tensor {
        match self {
            Encoder1::Genomics { snns, trans } => {
                let groups = inputs.genomics.as_ref().expect("genomic inputs");
                let tokens: Vec<Tensor> = snns
                    .iter()
                    .zip(groups)
                    .map(|((a, b), x)| b.forward(&a.forward(x, train), train))
                    .collect();
                trans.forward(&Tensor::stack(&tokens, 0), train)
            }
            Encoder1::Mri { embed, trans } => {
                let x = inputs.mri.as_ref().expect("MRI inputs");
                trans.forward(&x.apply(embed).relu().dropout(0.25, train), train)
            }
        }
    }
}

#[derive(Debug)]
struct WsiEncoder {
    fc1: nn::Linear,
    fc2: nn::Linear,
    trans: TransMil,
}

impl WsiEncoder {
    fn forward(&self, bag: &Tensor, train: bool) -> Tensor {
        let h = bag.apply(&self.fc1).relu().dropout(0.25, train);
        let h = h.apply(&self.fc2).relu().dropout(0.25, train);
        self.trans.forward(&h, train)
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
    pub spec: ModelSpec,
    encoder_1: Option<Encoder1>,
    wsi: Option<WsiEncoder>,
    snn: Option<Vec<SnnBlock>>,
    fusion: Option<Fusion>,
    head: nn::Linear,
}

/// Widths of MCAT's SNN (`size_dict_omic['small']`).
const SNN_WIDTHS: [i64; 4] = [256, 256, 256, 256];

impl Hdmoe {
    /// Parameters are named as in the released code's state dict (`HDMoE` in
    /// `models/hdmoe/network.py`; MCAT's `SNN` for the baseline), so an official checkpoint
    /// loads by name: see docs/PARAMETERS.md for the full list. The MRI encoder, which the
    /// release lacks, is named by analogy (`mri_fc`, `mri_encoder`, `mri_moe`).
    pub fn new(vs: &nn::Path, spec: ModelSpec) -> Self {
        let d = spec.dim;
        // SNN_Block is nn.Sequential(Linear, ELU, AlphaDropout): its Linear is `<block>.0`.
        let snn = |vs: nn::Path, input: i64| {
            (
                SnnBlock(linear(&vs / "0" / "0", input, 1024)),
                SnnBlock(linear(&vs / "1" / "0", 1024, d)),
            )
        };
        let encoder_1 = match (spec.architecture, spec.modality_1) {
            (Architecture::Hdmoe, Some(Modality1::Genomics)) => Some(Encoder1::Genomics {
                snns: spec
                    .genomic_groups
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| snn(vs / "genomics_fc" / i, n))
                    .collect(),
                trans: TransG::new(vs / "genomics_encoder", &spec),
            }),
            (Architecture::Hdmoe, Some(Modality1::Mri)) => Some(Encoder1::Mri {
                embed: linear(vs / "mri_fc" / "0", spec.mri_dim, d),
                trans: TransG::new(vs / "mri_encoder", &spec),
            }),
            _ => None,
        };
        // pathomics_fc is nn.Sequential(Linear, ReLU, Dropout, Linear, ReLU, Dropout).
        let wsi = (spec.architecture == Architecture::Hdmoe && spec.wsi).then(|| WsiEncoder {
            fc1: linear(vs / "pathomics_fc" / "0", spec.wsi_dim, d),
            fc2: linear(vs / "pathomics_fc" / "3", d, d),
            trans: TransMil::new(vs / "pathomics_encoder", &spec),
        });
        let snn_baseline = (spec.architecture == Architecture::Snn).then(|| {
            let total: i64 = spec.genomic_groups.iter().sum();
            let mut width = total;
            SNN_WIDTHS
                .iter()
                .enumerate()
                .map(|(k, &w)| {
                    let block = SnnBlock(init::max_linear(vs / "fc_omic" / k / "0", width, w));
                    width = w;
                    block
                })
                .collect()
        });
        let fused = encoder_1.is_some() && wsi.is_some();
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
        let moe_1_name = match spec.modality_1 {
            Some(Modality1::Mri) => "mri_moe",
            _ => "genomics_moe",
        };
        let fusion = fused.then(|| Fusion {
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
        });
        let head = if snn_baseline.is_some() {
            init::max_linear(vs / "classifier", SNN_WIDTHS[3], 4)
        } else {
            let fused_width = match spec.moe_output {
                MoeOutputRule::Separate => 4 * d,
                MoeOutputRule::Sum => 2 * d,
            };
            linear(vs / "classifier", if fused { fused_width } else { d }, 4)
        };
        Self {
            spec,
            encoder_1,
            wsi,
            snn: snn_baseline,
            fusion,
            head,
        }
    }

    /// One patient. `segments` = (s₁, s₂) for the two RFR steps (1, 1 = no recombination).
    pub fn forward(&self, inputs: &Inputs, segments: (i64, i64), train: bool) -> Output {
        let pass = if train { Pass::TRAIN } else { Pass::EVAL };
        self.forward_pass(inputs, segments, pass)
    }

    pub fn forward_pass(&self, inputs: &Inputs, segments: (i64, i64), pass: Pass) -> Output {
        let zero = || Tensor::zeros([], (self.head.ws.kind(), self.head.ws.device()));
        let train = pass.dropout;
        let mut routing = Vec::new();
        let mut router_probabilities = Vec::new();
        let mut decoupling_terms = None;
        let (z, decoupling, balance) = if let Some(fusion) = &self.fusion {
            let v1 = self
                .encoder_1
                .as_ref()
                .expect("fused")
                .forward(inputs, train);
            let bag = inputs.wsi.as_ref().expect("WSI inputs");
            let v2 = self.wsi.as_ref().expect("fused").forward(bag, train);
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
            decoupling_terms = Some(terms);
            let balance = if pass.train {
                [&m1, &m2, &mf]
                    .iter()
                    .map(|m: &&MoeOutput| moe::load_balance(m, self.spec.top_k))
                    .fold(zero(), |acc, x| acc + x)
            } else {
                zero()
            };
            for m in [m1, m2, mf] {
                routing.push(m.chosen);
                router_probabilities.push(m.probabilities);
            }
            (z, decoupling, balance)
        } else if let Some(blocks) = &self.snn {
            let groups = inputs.genomics.as_ref().expect("genomic inputs");
            let x = Tensor::cat(groups, 0);
            let h = blocks.iter().fold(x, |h, b| b.forward(&h, train));
            (h, zero(), zero())
        } else if let Some(e) = &self.encoder_1 {
            (e.forward(inputs, train), zero(), zero())
        } else {
            let bag = inputs.wsi.as_ref().expect("WSI inputs");
            (
                self.wsi
                    .as_ref()
                    .expect("a WSI encoder")
                    .forward(bag, train),
                zero(),
                zero(),
            )
        };
        let logits = z.apply(&self.head);
        let (hazards, survival, risk) = loss::hazards_survival_risk(&logits);
        Output {
            logits,
            hazards,
            survival,
            risk,
            decoupling,
            decoupling_terms,
            balance,
            routing,
            router_probabilities,
        }
    }

    /// The RFR segment counts a forward pass may draw from: (S₁, S₂).
    pub fn segment_choices(&self) -> (Vec<i64>, Vec<i64>) {
        if self.fusion.is_none() || !self.spec.rfr {
            return (vec![1], vec![1]);
        }
        let s2 = match self.spec.moe_output {
            MoeOutputRule::Separate => moe::segment_choices(self.spec.dim),
            MoeOutputRule::Sum => vec![1],
        };
        (moe::segment_choices(self.spec.dim / 2), s2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn spec(groups: Vec<i64>, token_length: i64) -> ModelSpec {
        ModelSpec::wsi_genomics(groups, token_length)
    }

    fn count(spec: ModelSpec) -> i64 {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let _model = Hdmoe::new(&vs.root(), spec);
        vs.trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }

    #[test]
    fn parameter_count_matches_the_specification() {
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
        tch::manual_seed(2);
        for g in [64, 256] {
            let mut spec = spec(vec![5, 7], g);
            spec.moe_output = MoeOutputRule::Sum;
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let model = Hdmoe::new(&vs.root(), spec);
            let inputs = random_inputs();
            assert_eq!(model.segment_choices().1, vec![1]);
            let out = model.forward(&inputs, (4, 1), true);
            assert_eq!(out.logits.size(), vec![4]);
            assert_eq!(out.routing[2].size(), vec![512 / g, 1]);
            assert!(out.decoupling.double_value(&[]).is_finite());
            // The head reads the 512-d sum r_F + s_F.
            assert_eq!(model.head.ws.size(), vec![4, 512]);
        }
    }

    #[test]
    fn forward_shapes_for_every_token_length() {
        tch::manual_seed(0);
        for g in [32, 64, 128, 256] {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let model = Hdmoe::new(&vs.root(), spec(vec![5, 7], g));
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
        tch::manual_seed(5);
        let opts = (Kind::Double, tch::Device::Cpu);
        let mut small = spec(vec![3, 2], 8);
        small.dim = 16;
        small.heads = 2;
        small.landmarks = 4;
        small.experts = 3;
        small.wsi_dim = 6;
        let mut vs = nn::VarStore::new(tch::Device::Cpu);
        let model = Hdmoe::new(&vs.root(), small);
        vs.double();
        let inputs = Inputs {
            wsi: Some(Tensor::randn([5, 6], opts)),
            genomics: Some(vec![Tensor::randn([3], opts), Tensor::randn([2], opts)]),
            mri: None,
        };
        let loss = || {
            let out = model.forward(&inputs, (2, 4), false);
            loss::nll_survival(&out.hazards, &out.survival, 1, false) + out.decoupling
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
