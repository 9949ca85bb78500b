//! SurvPath: `SurvPath` of mahmoodlab/SurvPath (`models/model_SurvPath.py`, with
//! `models/layers/cross_attention.py`), built as its `_init_model` builds it
//! (`SurvPath(omic_sizes, num_classes=4)`; wsi_projection_dim 256, dropout 0.1), here with the
//! six signature groups as its "pathways" (the class takes any number of groups). Patches
//! through `wsi_projection_net` (Linear 1024 → 256, nothing else); each group through its
//! `sig_networks` SNN (d → 256 → 256); the G group tokens and N patch tokens through one
//! LayerNorm and a one-head (128-d) attention in which the group tokens attend to all G + N
//! tokens and the patch tokens only to the G group tokens (no residual, no output
//! projection); `feed_forward` (LayerNorm, Linear, GELU, Dropout 0.1, Linear; no residual);
//! `layer_norm`; the mean of the group tokens beside the mean of the patch tokens (256);
//! `to_logits` (256 → 64, ReLU, 64 → 4). PyTorch's default initialisation (SurvPath runs no
//! initialiser).

use tch::nn;
use tch::Tensor;

use super::init::{torch_default_uniform, torch_linear};
use super::mcat::SignatureNetworks;
use super::registry::ModelEntry;
use super::{GenomicsInput, Inputs, ModelSpec, Output, Pass, SurvivalModel};
use crate::config::Modality;
use crate::model::dropout::FastDropout;

/// `model.architecture: survpath`.
pub static ENTRY: ModelEntry = ModelEntry {
    name: "survpath",
    official: "mahmoodlab/SurvPath models/model_SurvPath.py `SurvPath` (omic_sizes = the six \
               signature groups, num_classes 4, defaults otherwise)",
    genomics: GenomicsInput::Groups,
    accepts,
    build: |vs, spec| Box::new(SurvPath::new(vs, spec)),
};

fn accepts(modalities: &[Modality]) -> Result<(), String> {
    if modalities.len() == 2
        && modalities.contains(&Modality::Wsi)
        && modalities.contains(&Modality::Genomics)
    {
        Ok(())
    } else {
        Err("survpath takes wsi and genomics; set dataset.modalities: [genomics, wsi]".into())
    }
}

/// `wsi_projection_dim`: the token width.
const DIM: i64 = 256;
/// `dim_head = wsi_projection_dim // 2`, one head: the attention's and feed-forward's width.
const HEAD: i64 = DIM / 2;
/// SurvPath's `dropout` (the feed-forward's Dropout); the SNN blocks have their own 0.25.
const DROPOUT: f64 = 0.1;

/// nn.Linear(bias=False) with PyTorch's default weight, U(±1/√fan_in).
fn torch_linear_no_bias(vs: nn::Path, input: i64, output: i64) -> nn::Linear {
    nn::linear(
        vs,
        input,
        output,
        nn::LinearConfig {
            ws_init: torch_default_uniform(input),
            bs_init: None,
            bias: false,
        },
    )
}

/// `MMAttentionLayer(dim 256, dim_head 128, heads 1, residual False)`: `norm` then
/// `attn.to_qkv`.
#[derive(Debug)]
struct CrossAttender {
    norm: nn::LayerNorm,
    to_qkv: nn::Linear,
}

impl CrossAttender {
    fn new(vs: nn::Path) -> Self {
        Self {
            norm: nn::layer_norm(&vs / "norm", vec![DIM], Default::default()),
            to_qkv: torch_linear_no_bias(&vs / "attn" / "to_qkv", DIM, 3 * HEAD),
        }
    }

    /// tokens [G + N, 256] (the G group tokens first) → [G + N, 128].
    fn forward(&self, tokens: &Tensor, groups: i64) -> Tensor {
        let n = tokens.size()[0];
        let qkv = tokens.apply(&self.norm).apply(&self.to_qkv).chunk(3, -1);
        let q = &qkv[0] * (HEAD as f64).powf(-0.5);
        let (k, v) = (&qkv[1], &qkv[2]);
        let q_pathways = q.narrow(0, 0, groups);
        let k_pathways = k.narrow(0, 0, groups);
        let q_histology = q.narrow(0, groups, n - groups);
        let k_histology = k.narrow(0, groups, n - groups);
        // Patch queries over the group keys only [N, G]; group queries over the group keys
        // [G, G] and the patch keys [G, N], softmaxed together.
        let cross_histology = q_histology
            .matmul(&k_pathways.transpose(0, 1))
            .softmax(-1, q.kind());
        let attn_pathways = q_pathways.matmul(&k_pathways.transpose(0, 1));
        let cross_pathways = q_pathways.matmul(&k_histology.transpose(0, 1));
        let pathways_histology =
            Tensor::cat(&[attn_pathways, cross_pathways], -1).softmax(-1, q.kind());
        let out_pathways = pathways_histology.matmul(v);
        let out_histology = cross_histology.matmul(&v.narrow(0, 0, groups));
        Tensor::cat(&[out_pathways, out_histology], 0)
    }
}

/// `FeedForward(128, mult 1, dropout 0.1)`: `norm`, `net.0`, GELU, Dropout, `net.3`; no
/// residual.
#[derive(Debug)]
struct FeedForward {
    norm: nn::LayerNorm,
    linear1: nn::Linear,
    linear2: nn::Linear,
}

impl FeedForward {
    fn new(vs: nn::Path) -> Self {
        Self {
            norm: nn::layer_norm(&vs / "norm", vec![HEAD], Default::default()),
            linear1: torch_linear(&vs / "net" / "0", HEAD, HEAD),
            linear2: torch_linear(&vs / "net" / "3", HEAD, HEAD),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        x.apply(&self.norm)
            .apply(&self.linear1)
            .gelu("none")
            .fast_dropout(DROPOUT, train)
            .apply(&self.linear2)
    }
}

#[derive(Debug)]
struct SurvPath {
    spec: ModelSpec,
    wsi_projection: nn::Linear,
    signatures: SignatureNetworks,
    cross_attender: CrossAttender,
    feed_forward: FeedForward,
    layer_norm: nn::LayerNorm,
    logits1: nn::Linear,
    logits2: nn::Linear,
}

impl SurvPath {
    fn new(vs: &nn::Path, spec: ModelSpec) -> Self {
        Self {
            wsi_projection: torch_linear(vs / "wsi_projection_net" / "0", spec.wsi_dim, DIM),
            signatures: SignatureNetworks::new(vs / "sig_networks", &spec.genomic_groups),
            cross_attender: CrossAttender::new(vs / "cross_attender"),
            feed_forward: FeedForward::new(vs / "feed_forward"),
            layer_norm: nn::layer_norm(vs / "layer_norm", vec![HEAD], Default::default()),
            logits1: torch_linear(vs / "to_logits" / "0", 2 * HEAD, DIM / 4),
            logits2: torch_linear(vs / "to_logits" / "2", DIM / 4, 4),
            spec,
        }
    }
}

impl SurvivalModel for SurvPath {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn forward_pass(&self, inputs: &Inputs, _segments: (i64, i64), pass: Pass) -> Output {
        let train = pass.dropout;
        let bag = inputs.wsi.as_ref().expect("WSI inputs");
        let groups = inputs.genomics.as_ref().expect("genomic inputs");
        let g = groups.len() as i64;
        let h_omic = self.signatures.forward(groups, train); // [G, 256]
        let wsi_embed = bag.apply(&self.wsi_projection); // [N, 256]
        let tokens = Tensor::cat(&[h_omic, wsi_embed], 0);
        let n = tokens.size()[0];
        let mm = self.cross_attender.forward(&tokens, g);
        let mm = self
            .feed_forward
            .forward(&mm, train)
            .apply(&self.layer_norm);
        let kind = mm.kind();
        let pathways = mm.narrow(0, 0, g).mean_dim(0, false, kind);
        let histology = mm.narrow(0, g, n - g).mean_dim(0, false, kind);
        let logits = Tensor::cat(&[pathways, histology], 0)
            .apply(&self.logits1)
            .relu()
            .apply(&self.logits2);
        Output::from_logits(logits)
    }
}
