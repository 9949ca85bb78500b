//! CMTA (Zhou & Chen, ICCV'23): `CMTA(omic_sizes, n_classes=4, fusion='concat',
//! model_size='small')` of FT-ZHOU-ZZZ/CMTA (`models/cmta/network.py`; its Nyström and
//! multi-head attention are vendored in `models/cmta/util.py`, the Nyström one lucidrains'
//! nystrom-attention 0.0.14, as `nystrom.rs`). Patches through `pathomics_fc` (Linear 1024 →
//! 256, ReLU, Dropout(0.25), Linear 256 → 256, ReLU, Dropout(0.25)); each genomic group through
//! its `genomics_fc` SNN (d → 1024 → 256). Each modality's tokens through its encoder
//! (`Transformer_P` = square padding, cls, TransLayer, PPEG, TransLayer, LayerNorm for the
//! patches; `Transformer_G` = cls, two TransLayers, LayerNorm for the six genomic tokens), both
//! returning their cls and their other tokens; one-head cross-attention each way
//! (`P_in_G_Att`: patch tokens query the genomic tokens; `G_in_P_Att`: genomic tokens query the
//! patch tokens); decoders of the same two kinds on the results, of which only the cls is used;
//! `mm` (Linear 512 → 256, ReLU, Linear 256 → 256, ReLU) on [(P + P̂)/2, (G + Ĝ)/2]; the
//! classifier. `initialize_weights` over the whole model: every nn.Linear (the attention's
//! `to_qkv`, `to_out.0` and `out_proj` included) xavier-normal with zero bias, LayerNorm 1/0;
//! the cross-attention's `in_proj_weight` xavier-uniform, its bias 0; convolutions PyTorch's
//! defaults; cls tokens N(0, 1e-6).
//!
//! CMTA's own loss (`models/cmta/engine.py`, `--loss nll_surv_l1`): NLL (α = 0) + `alpha` ·
//! (L1(P.detach(), P̂) + L1(G.detach(), Ĝ)), L1 the mean absolute difference of the 256-d cls
//! tokens of encoder and decoder; the gradient reaches the encoders' cls only through the fused
//! vector. `alpha` per run.sh: BLCA 1.0, BRCA 100.0, LUAD 0.0001. Here the sum of the two L1
//! terms is [`LossTerm::Alignment`], weighted by `alpha`.

use tch::nn::{self, Init};
use tch::Tensor;

use super::blocks::{linear, SnnBlock};
use super::init;
use super::nystrom::{Ppeg, TransLayer};
use super::registry::ModelEntry;
use super::{GenomicsInput, Inputs, LossTerm, ModelSpec, Output, Pass, SurvivalModel};
use crate::config::Modality;
use crate::model::dropout::FastDropout;

/// `model.architecture: cmta`.
pub static ENTRY: ModelEntry = ModelEntry {
    name: "cmta",
    official: "FT-ZHOU-ZZZ/CMTA models/cmta/network.py `CMTA` (fusion concat, size small)",
    genomics: GenomicsInput::Groups,
    accepts,
    build: |vs, spec| Box::new(Cmta::new(vs, spec)),
};

fn accepts(modalities: &[Modality]) -> Result<(), String> {
    if modalities.len() == 2
        && modalities.contains(&Modality::Wsi)
        && modalities.contains(&Modality::Genomics)
    {
        Ok(())
    } else {
        Err("cmta takes wsi and genomics; set dataset.modalities: [genomics, wsi]".into())
    }
}

/// Token width ("small": pathomics [1024, 256, 256], genomics [1024, 256]).
const DIM: i64 = 256;
/// The genomic SNNs' hidden width.
const GENOMIC_HIDDEN: i64 = 1024;
/// TransLayer(dim=256): 8 heads of 32, dim / 2 = 128 landmarks.
const HEADS: i64 = 8;
const LANDMARKS: i64 = DIM / 2;
/// `pathomics_fc`'s Dropout and the SNN blocks' AlphaDropout.
const DROPOUT: f64 = 0.25;
const BINS: i64 = 4;

const TERMS: [LossTerm; 1] = [LossTerm::Alignment];

/// `nn.Parameter(torch.randn(1, 1, dim))` then `nn.init.normal_(std=1e-6)`.
fn cls_token(vs: &nn::Path) -> Tensor {
    vs.var(
        "cls_token",
        &[1, 1, DIM],
        Init::Randn {
            mean: 0.0,
            stdev: 1e-6,
        },
    )
}

/// `Transformer_P`: square padding with copies of the first tokens, cls, layer1, PPEG
/// (`pos_layer`), layer2, LayerNorm.
#[derive(Debug)]
struct TransformerP {
    cls: Tensor,
    layer1: TransLayer,
    ppeg: Ppeg,
    layer2: TransLayer,
    norm: nn::LayerNorm,
}

impl TransformerP {
    fn new(vs: nn::Path) -> Self {
        Self {
            cls: cls_token(&vs),
            layer1: TransLayer::new(&vs / "layer1", DIM, HEADS, LANDMARKS),
            ppeg: Ppeg::new(&vs / "pos_layer", DIM),
            layer2: TransLayer::new(&vs / "layer2", DIM, HEADS, LANDMARKS),
            norm: nn::layer_norm(&vs / "norm", vec![DIM], Default::default()),
        }
    }

    /// tokens [n, 256] → (cls [256], the side² other tokens [side², 256]), side = ⌈√n⌉; the
    /// tokens include the padded copies. An input that is already square (the decoder's) is
    /// not padded again.
    fn forward(&self, tokens: &Tensor, train: bool) -> (Tensor, Tensor) {
        let n = tokens.size()[0];
        let side = (n as f64).sqrt().ceil() as i64;
        let extra = side * side - n;
        let h = Tensor::cat(&[tokens.shallow_clone(), tokens.narrow(0, 0, extra)], 0).unsqueeze(0);
        let h = Tensor::cat(&[self.cls.to_kind(h.kind()), h], 1);
        let h = self.layer1.forward(&h, train);
        let h = self.ppeg.forward(&h, side);
        let h = self.layer2.forward(&h, train);
        let h = h.apply(&self.norm).get(0);
        (h.get(0), h.narrow(0, 1, side * side))
    }
}

/// `Transformer_G`: cls, layer1, layer2, LayerNorm.
#[derive(Debug)]
struct TransformerG {
    cls: Tensor,
    layer1: TransLayer,
    layer2: TransLayer,
    norm: nn::LayerNorm,
}

impl TransformerG {
    fn new(vs: nn::Path) -> Self {
        Self {
            cls: cls_token(&vs),
            layer1: TransLayer::new(&vs / "layer1", DIM, HEADS, LANDMARKS),
            layer2: TransLayer::new(&vs / "layer2", DIM, HEADS, LANDMARKS),
            norm: nn::layer_norm(&vs / "norm", vec![DIM], Default::default()),
        }
    }

    /// tokens [t, 256] → (cls [256], the other tokens [t, 256]).
    fn forward(&self, tokens: &Tensor, train: bool) -> (Tensor, Tensor) {
        let t = tokens.size()[0];
        let h = Tensor::cat(&[self.cls.to_kind(tokens.kind()), tokens.unsqueeze(0)], 1);
        let h = self.layer2.forward(&self.layer1.forward(&h, train), train);
        let h = h.apply(&self.norm).get(0);
        (h.get(0), h.narrow(0, 1, t))
    }
}

/// CMTA's vendored `MultiheadAttention(embed_dim=256, num_heads=1)` (MCAT's copy, dropout 0):
/// `in_proj_weight` [768, 256] xavier-uniform, `in_proj_bias` 0, `out_proj` (an nn.Linear
/// subclass, so `initialize_weights` makes it xavier-normal with zero bias).
#[derive(Debug)]
struct CrossAttention {
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: nn::Linear,
}

impl CrossAttention {
    fn new(vs: nn::Path) -> Self {
        // xavier_uniform_ on [3E, E]: fan_in E, fan_out 3E.
        let bound = (6.0 / (DIM + 3 * DIM) as f64).sqrt();
        Self {
            in_proj_weight: vs.var(
                "in_proj_weight",
                &[3 * DIM, DIM],
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            ),
            in_proj_bias: vs.var("in_proj_bias", &[3 * DIM], Init::Const(0.0)),
            out_proj: init::xavier_linear(&vs / "out_proj", DIM, DIM, true),
        }
    }

    /// query [L, 256], key = value [S, 256] → [L, 256]. One head: q = (x W_q + b_q) / √256,
    /// k, v from rows 256.. of the in-projection, softmax over S.
    fn forward(&self, query: &Tensor, key_value: &Tensor) -> Tensor {
        let w = self.in_proj_weight.chunk(3, 0);
        let b = self.in_proj_bias.chunk(3, 0);
        let q = query.linear(&w[0], Some(&b[0])) * (DIM as f64).powf(-0.5);
        let k = key_value.linear(&w[1], Some(&b[1]));
        let v = key_value.linear(&w[2], Some(&b[2]));
        q.matmul(&k.transpose(0, 1))
            .softmax(-1, q.kind())
            .matmul(&v)
            .apply(&self.out_proj)
    }
}

#[derive(Debug)]
struct Cmta {
    spec: ModelSpec,
    pathomics_fc: (nn::Linear, nn::Linear),
    genomics_fc: Vec<(SnnBlock, SnnBlock)>,
    pathomics_encoder: TransformerP,
    pathomics_decoder: TransformerP,
    p_in_g: CrossAttention,
    g_in_p: CrossAttention,
    genomics_encoder: TransformerG,
    genomics_decoder: TransformerG,
    mm: (nn::Linear, nn::Linear),
    classifier: nn::Linear,
}

impl Cmta {
    fn new(vs: &nn::Path, spec: ModelSpec) -> Self {
        let genomics_fc = spec
            .genomic_groups
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                // SNN_Block is nn.Sequential(Linear, ELU, AlphaDropout): its Linear is `.0`.
                let group = vs / "genomics_fc" / i;
                (
                    SnnBlock(linear(&group / "0" / "0", n, GENOMIC_HIDDEN)),
                    SnnBlock(linear(&group / "1" / "0", GENOMIC_HIDDEN, DIM)),
                )
            })
            .collect();
        Self {
            pathomics_fc: (
                linear(vs / "pathomics_fc" / "0", spec.wsi_dim, DIM),
                linear(vs / "pathomics_fc" / "3", DIM, DIM),
            ),
            genomics_fc,
            pathomics_encoder: TransformerP::new(vs / "pathomics_encoder"),
            pathomics_decoder: TransformerP::new(vs / "pathomics_decoder"),
            p_in_g: CrossAttention::new(vs / "P_in_G_Att"),
            g_in_p: CrossAttention::new(vs / "G_in_P_Att"),
            genomics_encoder: TransformerG::new(vs / "genomics_encoder"),
            genomics_decoder: TransformerG::new(vs / "genomics_decoder"),
            mm: (
                linear(vs / "mm" / "0", 2 * DIM, DIM),
                linear(vs / "mm" / "2", DIM, DIM),
            ),
            classifier: linear(vs / "classifier", DIM, BINS),
            spec,
        }
    }
}

/// nn.L1Loss (mean absolute difference) of the encoder's cls, detached, and the decoder's.
fn l1(encoder: &Tensor, decoder: &Tensor) -> Tensor {
    (encoder.detach() - decoder).abs().mean(decoder.kind())
}

impl SurvivalModel for Cmta {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn loss_terms(&self) -> &'static [LossTerm] {
        &TERMS
    }

    fn forward_pass(&self, inputs: &Inputs, _segments: (i64, i64), pass: Pass) -> Output {
        let train = pass.dropout;
        let bag = inputs.wsi.as_ref().expect("WSI inputs");
        let groups = inputs.genomics.as_ref().expect("genomic inputs");
        // Genomic tokens [6, 256].
        let genomic: Vec<Tensor> = self
            .genomics_fc
            .iter()
            .zip(groups)
            .map(|((a, b), x)| b.forward(&a.forward(x, train), train))
            .collect();
        let genomic = Tensor::stack(&genomic, 0);
        // Patch tokens [N, 256].
        let (fc1, fc2) = &self.pathomics_fc;
        let patches = bag
            .apply(fc1)
            .relu()
            .fast_dropout(DROPOUT, train)
            .apply(fc2)
            .relu()
            .fast_dropout(DROPOUT, train);
        let (cls_p, tokens_p) = self.pathomics_encoder.forward(&patches, train);
        let (cls_g, tokens_g) = self.genomics_encoder.forward(&genomic, train);
        // [side², 256]: each patch token over the genomic tokens; [6, 256]: the reverse.
        let p_in_g = self.p_in_g.forward(&tokens_p, &tokens_g);
        let g_in_p = self.g_in_p.forward(&tokens_g, &tokens_p);
        let (cls_p_hat, _) = self.pathomics_decoder.forward(&p_in_g, train);
        let (cls_g_hat, _) = self.genomics_decoder.forward(&g_in_p, train);
        let (mm1, mm2) = &self.mm;
        let fused = Tensor::cat(
            &[(&cls_p + &cls_p_hat) / 2.0, (&cls_g + &cls_g_hat) / 2.0],
            0,
        )
        .apply(mm1)
        .relu()
        .apply(mm2)
        .relu();
        let alignment = l1(&cls_p, &cls_p_hat) + l1(&cls_g, &cls_g_hat);
        let mut out = Output::from_logits(fused.apply(&self.classifier));
        out.losses = vec![(LossTerm::Alignment, alignment)];
        out
    }
}
