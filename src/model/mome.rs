//! MoME: `MoMETransformer` of BearCleverProud/MoME (`models/model_mome.py`, MICCAI'24;
//! `n_bottlenecks = 2`, sizes `small`: width 512), genomics in the six signature groups.
//! Patches through `wsi_net` (Linear 1024 → 512, ReLU, Dropout 0.25); each group through its
//! `sig_networks` SNN (d → 512 → 512). Four "mixture of multimodal experts" layers alternate
//! between the modalities: `P = MoME_patho1(P, G)`, `G = MoME_genom1(G, P)`,
//! `P = MoME_patho2(P, G)`, `G = MoME_genom2(G, P)`. In each, a router (`routing_network`)
//! picks ONE expert by the argmax of its softmax, and that expert's output replaces x1:
//! 0 `TransFusion` (a TransLayer over [x1; x2], the x1 positions kept), 1
//! `BottleneckTransFusion` (2 fixed bottleneck tokens attend with x2, then x1 with them),
//! 2 `AddFusion` (snn1(rms x1) + the token mean of snn2(rms x2)), 3 `DropX2Fusion` (x1).
//! Then [cls; P; G] through `multi_layer1` and the classifier on the cls position.
//!
//! As the release does it:
//! * The chosen expert's output is not weighted by its router probability (the router's
//!   `hard` flag is passed as its temperature), so the routers get no gradient and stay at
//!   their initial values: routing is a fixed, deterministic function of the inputs, the same
//!   in training and evaluation. The routers run outside autograd here.
//! * TransLayer = `x·ω + NystromAttention(norm(x))`, ω = admin_torch's `as_module(8)` buffer
//!   √(9/ln 9 − 1), stored as float32 (1.7595671415…); Nyström as lucidrains 0.0.14 (8 heads,
//!   256 landmarks, to_out dropout 0.1). Norms: RMSNorm (eps 1e-6, computed in float32 as the
//!   release's `x.float()` … `.type_as(x)` does) in TransFusion, AddFusion and the routers;
//!   LayerNorm in the bottleneck layers and `multi_layer1`. `BottleneckTransFusion.norm` is a
//!   parameter the release never uses.
//! * `cls_multimodal [1, 512]` and each bottleneck `[1, 2, 512]` are `torch.rand` tensors drawn
//!   at construction and never trained nor saved in the state dict. Here they are fixed
//!   U[0, 1) values, the parity fixtures' hash `uniform(name, n)` of their attribute paths
//!   (`cls_multimodal`, `MoME_patho1.BottleneckTransFusion.bottleneck`, …), so that a
//!   checkpoint predicts as the model that wrote it (the release's do not).
//! * PyTorch's default initialisation (MoME runs no initialiser).
//! * A bag of one patch crashes the release (`squeeze()` drops the patch axis); here it runs.
//!   The release's trainer also shuffles the patch order of every bag (training and
//!   validation) and cuts bags into ⌊N/4096⌋ + 1 chunks; that is not done here.
//!
//! MoME has no auxiliary loss (NLL only; `reg_type` None).

use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use super::blocks::SnnBlock;
use super::init::torch_linear;
use super::nystrom::NystromAttention;
use super::registry::ModelEntry;
use super::{GenomicsInput, Inputs, ModelSpec, Output, Pass, SurvivalModel};
use crate::config::Modality;
use crate::model::dropout::FastDropout;

/// `model.architecture: mome`.
pub static ENTRY: ModelEntry = ModelEntry {
    name: "mome",
    official: "BearCleverProud/MoME models/model_mome.py `MoMETransformer` (n_bottlenecks 2, \
               size small)",
    genomics: GenomicsInput::Groups,
    accepts,
    build: |vs, spec| Box::new(Mome::new(vs, spec)),
};

fn accepts(modalities: &[Modality]) -> Result<(), String> {
    if modalities.len() == 2
        && modalities.contains(&Modality::Wsi)
        && modalities.contains(&Modality::Genomics)
    {
        Ok(())
    } else {
        Err("mome takes wsi and genomics; set dataset.modalities: [genomics, wsi]".into())
    }
}

const DIM: i64 = 512;
const HEADS: i64 = 8;
const LANDMARKS: i64 = DIM / 2;
const BOTTLENECKS: i64 = 2;
const BINS: i64 = 4;
/// wsi_net's Dropout and the SNN blocks' AlphaDropout.
const DROPOUT: f64 = 0.25;
const RMS_EPS: f64 = 1e-6;
/// The four MoME layers in forward order, with (x1, x2) = (P, G) for `patho`, (G, P) for `genom`.
const LAYERS: [&str; 4] = ["MoME_patho1", "MoME_genom1", "MoME_patho2", "MoME_genom2"];

/// admin_torch `as_module(8)`: ω = ((8 + 1)/ln(8 + 1) − 1)^½, kept in a float32 buffer.
fn omega() -> f64 {
    (9.0f64 / 9.0f64.ln() - 1.0).sqrt() as f32 as f64
}

/// The parity fixtures' `uniform(name, n)` (fixtures/parity/make_reference.py): FNV-1a of the
/// name, then a per-index integer mix, as u ∈ [0, 1). Stands in for the release's
/// construction-time `torch.rand` draws; float64, shape `shape`.
fn fixed_uniform(name: &str, shape: &[i64]) -> Tensor {
    let mut base: u64 = 0x811C_9DC5;
    for byte in name.bytes() {
        base ^= u64::from(byte);
        base = (base * 0x0100_0193) & 0xFFFF_FFFF;
    }
    let n: i64 = shape.iter().product();
    let v: Vec<f64> = (0..n as u64)
        .map(|i| {
            let mut h = (i * 0x9E37_79B1 + base) & 0xFFFF_FFFF;
            h ^= h >> 16;
            h = (h * 0x045D_9F3B) & 0xFFFF_FFFF;
            h ^= h >> 16;
            h as f64 / 4_294_967_296.0
        })
        .collect();
    Tensor::from_slice(&v).reshape(shape)
}

/// The release's RMSNorm: `(x.float() · rsqrt(mean(x.float()²) + eps)).type_as(x) · weight`.
#[derive(Debug)]
struct RmsNorm {
    weight: Tensor,
}

impl RmsNorm {
    fn new(vs: nn::Path) -> Self {
        Self {
            weight: vs.var("weight", &[DIM], Init::Const(1.0)),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let xf = x.to_kind(Kind::Float);
        let scale = (xf.pow_tensor_scalar(2i64).mean_dim(-1, true, None::<Kind>) + RMS_EPS).rsqrt();
        (xf * scale).to_kind(x.kind()) * &self.weight
    }
}

#[derive(Debug)]
enum Norm {
    Rms(RmsNorm),
    Layer(nn::LayerNorm),
}

impl Norm {
    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Norm::Rms(n) => n.forward(x),
            Norm::Layer(n) => x.apply(n),
        }
    }
}

/// lucidrains' NystromAttention(512, dim_head 64, heads 8, landmarks 256, residual conv 33,
/// dropout 0.1) at PyTorch's default initialisation. nystrom.rs builds its Linears as the
/// HDMoE release initialises them (xavier-normal, zero bias); they are redrawn here as
/// nn.Linear's defaults, U(±1/√fan_in) (weight and bias; fan_in 512). Its `res_conv` already
/// has PyTorch's default.
fn nystrom(vs: nn::Path) -> NystromAttention {
    let attn = NystromAttention::new(vs.clone(), DIM, HEADS, LANDMARKS);
    let bound = 1.0 / (DIM as f64).sqrt();
    tch::no_grad(|| {
        for (path, name) in [
            (&vs / "to_qkv", "weight"),
            (&vs / "to_out" / "0", "weight"),
            (&vs / "to_out" / "0", "bias"),
        ] {
            let mut t = path
                .get(name)
                .unwrap_or_else(|| panic!("NystromAttention has no {name}"));
            let _ = t.uniform_(-bound, bound);
        }
    });
    attn
}

/// MoME's `TransLayer`: `residual_attn(x, attn(norm(x)))` = x·ω + attn(norm(x)).
#[derive(Debug)]
struct TransLayer {
    norm: Norm,
    attn: NystromAttention,
}

impl TransLayer {
    fn rms(vs: nn::Path) -> Self {
        Self {
            norm: Norm::Rms(RmsNorm::new(&vs / "norm")),
            attn: nystrom(&vs / "attn"),
        }
    }

    fn layer_norm(vs: nn::Path) -> Self {
        Self {
            norm: Norm::Layer(nn::layer_norm(&vs / "norm", vec![DIM], Default::default())),
            attn: nystrom(&vs / "attn"),
        }
    }

    /// x: [1, n, 512].
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        x * omega() + self.attn.forward(&self.norm.forward(x), train)
    }
}

/// `routing_network`: fc1 on x1 and fc2 on x2 (each Linear, RMSNorm, GELU), token means
/// summed, `clsfer` to the 4 experts, softmax.
#[derive(Debug)]
struct Router {
    fc1: (nn::Linear, RmsNorm),
    fc2: (nn::Linear, RmsNorm),
    clsfer: nn::Linear,
}

impl Router {
    fn new(vs: nn::Path) -> Self {
        let fc = |name: &str| {
            (
                torch_linear(&vs / name / "0", DIM, DIM),
                RmsNorm::new(&vs / name / "1"),
            )
        };
        Self {
            fc1: fc("fc1"),
            fc2: fc("fc2"),
            clsfer: torch_linear(&vs / "clsfer", DIM, 4),
        }
    }

    /// x1 [1, n1, 512], x2 [1, n2, 512] → probabilities [1, 4].
    fn probabilities(&self, x1: &Tensor, x2: &Tensor) -> Tensor {
        let branch = |(lin, norm): &(nn::Linear, RmsNorm), x: &Tensor| {
            norm.forward(&x.apply(lin))
                .gelu("none")
                .mean_dim(1, false, None::<Kind>)
        };
        (branch(&self.fc1, x1) + branch(&self.fc2, x2))
            .apply(&self.clsfer)
            .softmax(1, None::<Kind>)
    }
}

/// One `MoME` module: the four experts and the router.
#[derive(Debug)]
struct MomeLayer {
    /// Expert 0, `TransFusion.translayer` (RMSNorm).
    trans_fusion: TransLayer,
    /// Expert 1, `BottleneckTransFusion`: `attn1` (x1 with the bottlenecks), `attn2` (the
    /// bottlenecks with x2), both with LayerNorm; the fixed bottleneck tokens [1, 2, 512].
    attn1: TransLayer,
    attn2: TransLayer,
    bottleneck: Tensor,
    /// `BottleneckTransFusion.norm`: created, never applied (as in the release).
    _unused_norm: RmsNorm,
    /// Expert 2, `AddFusion`.
    snn1: SnnBlock,
    snn2: SnnBlock,
    norm1: RmsNorm,
    norm2: RmsNorm,
    router: Router,
}

impl MomeLayer {
    fn new(vs: nn::Path, name: &str) -> Self {
        let bt = &vs / "BottleneckTransFusion";
        let add = &vs / "AddFusion";
        Self {
            trans_fusion: TransLayer::rms(&vs / "TransFusion" / "translayer"),
            attn1: TransLayer::layer_norm(&bt / "attn1"),
            attn2: TransLayer::layer_norm(&bt / "attn2"),
            bottleneck: fixed_uniform(
                &format!("{name}.BottleneckTransFusion.bottleneck"),
                &[1, BOTTLENECKS, DIM],
            )
            .to_device(vs.device()),
            _unused_norm: RmsNorm::new(&bt / "norm"),
            snn1: SnnBlock(torch_linear(&add / "snn1" / "0", DIM, DIM)),
            snn2: SnnBlock(torch_linear(&add / "snn2" / "0", DIM, DIM)),
            norm1: RmsNorm::new(&add / "norm1"),
            norm2: RmsNorm::new(&add / "norm2"),
            router: Router::new(&vs / "routing_network"),
        }
    }

    /// The chosen expert: argmax of the router's probabilities (first index on ties, as
    /// torch.argmax). Outside autograd: the release's loss does not depend on the router.
    fn choose(&self, x1: &Tensor, x2: &Tensor) -> i64 {
        tch::no_grad(|| {
            self.router
                .probabilities(x1, x2)
                .argmax(1, false)
                .int64_value(&[0])
        })
    }

    /// x1 [1, n1, 512], x2 [1, n2, 512] → the new x1 [1, n1, 512].
    fn forward(&self, x1: &Tensor, x2: &Tensor, train: bool) -> Tensor {
        let n1 = x1.size()[1];
        match self.choose(x1, x2) {
            0 => self
                .trans_fusion
                .forward(&Tensor::cat(&[x1, x2], 1), train)
                .narrow(1, 0, n1),
            1 => {
                let bottleneck = self.bottleneck.to_kind(x1.kind());
                let bottleneck = self
                    .attn2
                    .forward(&Tensor::cat(&[&bottleneck, x2], 1), train)
                    .narrow(1, 0, BOTTLENECKS);
                self.attn1
                    .forward(&Tensor::cat(&[x1, &bottleneck], 1), train)
                    .narrow(1, 0, n1)
            }
            2 => {
                let a = self.snn1.forward(&self.norm1.forward(x1), train);
                let b = self
                    .snn2
                    .forward(&self.norm2.forward(x2), train)
                    .mean_dim(1, false, None::<Kind>)
                    .unsqueeze(1);
                a + b
            }
            _ => x1.shallow_clone(),
        }
    }
}

#[derive(Debug)]
struct Mome {
    spec: ModelSpec,
    wsi_net: nn::Linear,
    /// `sig_networks.<i>`: SNN blocks d_i → 512 → 512.
    signatures: Vec<(SnnBlock, SnnBlock)>,
    /// In forward order: patho1, genom1, patho2, genom2.
    layers: Vec<MomeLayer>,
    multi_layer1: TransLayer,
    /// `cls_multimodal` [1, 512], fixed (see the header).
    cls: Tensor,
    classifier: nn::Linear,
}

impl Mome {
    fn new(vs: &nn::Path, spec: ModelSpec) -> Self {
        let signatures = spec
            .genomic_groups
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let group = vs / "sig_networks" / i;
                (
                    SnnBlock(torch_linear(&group / "0" / "0", n, DIM)),
                    SnnBlock(torch_linear(&group / "1" / "0", DIM, DIM)),
                )
            })
            .collect();
        Self {
            wsi_net: torch_linear(vs / "wsi_net" / "0", spec.wsi_dim, DIM),
            signatures,
            layers: LAYERS
                .iter()
                .map(|name| MomeLayer::new(vs / *name, name))
                .collect(),
            multi_layer1: TransLayer::layer_norm(vs / "multi_layer1"),
            cls: fixed_uniform("cls_multimodal", &[1, DIM]).to_device(vs.device()),
            classifier: torch_linear(vs / "classifier", DIM, BINS),
            spec,
        }
    }
}

impl SurvivalModel for Mome {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn forward_pass(&self, inputs: &Inputs, _segments: (i64, i64), pass: Pass) -> Output {
        let train = pass.dropout;
        let bag = inputs.wsi.as_ref().expect("WSI inputs");
        let groups = inputs.genomics.as_ref().expect("genomic inputs");
        // P [1, N, 512]
        let mut path = bag
            .apply(&self.wsi_net)
            .relu()
            .fast_dropout(DROPOUT, train)
            .unsqueeze(0);
        // G [1, 6, 512]
        let tokens: Vec<Tensor> = self
            .signatures
            .iter()
            .zip(groups)
            .map(|((a, b), x)| b.forward(&a.forward(x, train), train))
            .collect();
        let mut omic = Tensor::stack(&tokens, 0).unsqueeze(0);
        for pair in self.layers.chunks(2) {
            path = pair[0].forward(&path, &omic, train);
            omic = pair[1].forward(&omic, &path, train);
        }
        // [cls; P; G] as one sequence [1, 1 + N + 6, 512].
        let sequence = Tensor::cat(
            &[self.cls.to_kind(path.kind()), path.get(0), omic.get(0)],
            0,
        )
        .unsqueeze(0);
        let h = self.multi_layer1.forward(&sequence, train).get(0).get(0); // [512]
        Output::from_logits(h.apply(&self.classifier))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_draws_are_the_fixtures_uniform() {
        let _generator = crate::torch_rng::lock();
        // make_reference.py's uniform("cls_multimodal", 3), as Python prints it.
        let u = Vec::<f64>::try_from(fixed_uniform("cls_multimodal", &[3])).unwrap();
        assert_eq!(
            u,
            vec![0.7328028704505414, 0.6656693411059678, 0.912018921226263]
        );
        // The fixture's float64 omega buffer (float32-rounded).
        assert_eq!(omega(), 1.759567141532898);
    }

    #[test]
    fn every_expert_keeps_the_shapes() {
        let _generator = crate::torch_rng::lock();
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let layer = MomeLayer::new(vs.root() / "MoME_patho1", "MoME_patho1");
        let opts = (Kind::Float, tch::Device::Cpu);
        let x1 = Tensor::randn([1, 5, DIM], opts);
        let x2 = Tensor::randn([1, 6, DIM], opts);
        assert_eq!(
            layer
                .trans_fusion
                .forward(&Tensor::cat(&[&x1, &x2], 1), false)
                .size(),
            vec![1, 11, DIM]
        );
        let p = layer.router.probabilities(&x1, &x2);
        assert_eq!(p.size(), vec![1, 4]);
        assert_eq!(layer.forward(&x1, &x2, false).size(), vec![1, 5, DIM]);
    }
}
