//! LD-CVAE (CVPR'25): `Robust_MCAT(use_condition=True, g_model_type='ldvae', generator=True,
//! wsi_encoding_dim=1024, fusion='concat', omic_sizes, n_classes=4, alpha_surv=0,
//! decoder_mode='specific')` of JJ-ZHOU-Code/RobustMultiModel (`models/model_coattn.py`, with
//! `VIBTrans` of `models/model_transformer.py`, `LDVAE` of `models/model_ldvae.py` and the helpers
//! of `models/model_utils.py`). MCAT whose genomic tokens, at evaluation and after the warm-up
//! epochs, are *generated* by a conditional VAE instead of being the real ones:
//!
//! 1. `wsi_net` (Linear 1024 → 256, ReLU, Dropout 0.25) on the patches: the co-attention's keys.
//! 2. `sig_networks` (MCAT's SNNs) on the six groups: the real tokens G [6, 256].
//! 3. `wsi_encoder` (VIBTrans(1024)) on the *raw* patch features: square padding with copies
//!    of the first patches, the `muQuery` and `sigmaQuery` tokens in front, TransLayer (Nyström,
//!    8 heads of 128, 512 landmarks), PPEG on the grid (the two query tokens untouched), TransLayer,
//!    LayerNorm, `fc` 1024 → 256; tokens 0 and 1 are the WSI posterior (μ_w, log σ²_w) [1, 256].
//! 4. z_w = μ_w + ε·exp(log σ²_w / 2) (the WSI-only head's input, training only).
//! 5. `vae` (LDVAE) on G (detached in training): z_cond, a second draw from the WSI posterior;
//!    the encoder (`muQuery`, `sigmaQuery` [256] in front of G, one post-norm GELU
//!    TransformerEncoderLayer(256, 4 heads, ff 1024, dropout 0.1)) gives the genomic posterior
//!    (μ_g, log σ²_g) = tokens 0 and 1; the joint posterior is the product of experts of
//!    [N(0, 1), WSI, genomic] (each variance + 1e-8); z from it; for each group i,
//!    `latent_generators.i` (Linear 256 → 512) gives (μ_i, log σ²_i), z_i from it, and
//!    `decoders.i` (Linear 512 → 512, ELU, Linear 512 → 256) on cat(z_i, z_cond) is token i of Ĝ.
//! 6. MCAT's head on Ĝ (training stage 'jointly' and evaluation) or on G (stage 'warmup', the
//!    first `warm_epoch` = 5 epochs): co-attention of the tokens over the patches, the path and
//!    omic transformers with gated pooling, `mm`, `classifier`.
//!
//! With genomics missing (evaluation only, `validate_survival_coattn_missing`), step 5 is
//! `LDVAE.sample`: z from the product of experts of [N(0, 1), WSI] is both the joint sample and
//! the condition.
//!
//! Its own losses (`trainer/coattn_trainer.py`, main.py's defaults): NLL + reconstruction (MSE of
//! Ĝ against G.detach()) + β·the WSI-only head's NLL (`wsi_classifier` on z_w; β = 1) + α·the
//! alignment of the two posteriors (mean (μ_g − μ_w)² + mean |σ²_g − σ²_w|; α = 0.1) +
//! 0.1·κ·(KL_wsi + KL_components + KL_genomic + KL_joint), KL(μ, log σ²) = −½ mean(1 − σ² − μ² +
//! log σ²), κ annealed from 0 to 1 by a cosine over all optimiser steps.
//!
//! Randomness: nine standard normals per pass, in training and evaluation alike, drawn from
//! libtorch's generator ([`Tensor::randn_like`]), in the official order z_w, z_cond, z, z_0..z_5
//! ([`DRAWS`]; the missing-genomics path draws [`SAMPLE_DRAWS`]). [`with_fixed_draws`] replaces
//! them, by role, with given tensors on this thread: the parity test's hook.
//!
//! Initialisation: PyTorch's defaults throughout (the model runs no initialiser): Linear and Conv2d
//! U(±1/√fan_in) (the Nyström `to_qkv` and `to_out.0`, built xavier-normal by nystrom.rs, are
//! redrawn so), torch's MultiheadAttention (xavier-uniform in-projection, zero biases), LayerNorm
//! 1/0, the four query tokens N(0, 1e-6).

use std::cell::RefCell;
use std::collections::HashMap;

use tch::nn::{self, Init};
use tch::Tensor;

use super::attention::MultiheadAttention;
use super::init::torch_linear;
use super::loss;
use super::mcat::{SignatureNetworks, TokenPooling};
use super::nystrom::{Ppeg, TransLayer};
use super::registry::ModelEntry;
use super::{GenomicsInput, Inputs, LossTerm, ModelSpec, Output, Pass, SurvivalModel};
use crate::config::Modality;
use crate::model::dropout::FastDropout;

/// `model.architecture: ld_cvae`.
pub static ENTRY: ModelEntry = ModelEntry {
    name: "ld_cvae",
    official: "JJ-ZHOU-Code/RobustMultiModel models/model_coattn.py `Robust_MCAT` (LD-CVAE: \
               generator ldvae, use_condition, decoder specific, fusion concat)",
    genomics: GenomicsInput::Groups,
    accepts,
    build: |vs, spec| Box::new(LdCvae::new(vs, spec)),
};

fn accepts(modalities: &[Modality]) -> Result<(), String> {
    if modalities.len() == 2
        && modalities.contains(&Modality::Wsi)
        && modalities.contains(&Modality::Genomics)
    {
        Ok(())
    } else {
        Err("ld_cvae takes wsi and genomics; set dataset.modalities: [genomics, wsi]".into())
    }
}

/// Token and latent width.
const DIM: i64 = 256;
const BINS: i64 = 4;
/// `wsi_net`'s Dropout and the SNN blocks' AlphaDropout.
const DROPOUT: f64 = 0.25;
/// The VIBTrans TransLayers: 8 heads, dim / 2 landmarks.
const VIB_HEADS: i64 = 8;
/// The LDVAE encoder: TransformerEncoderLayer(256, 4 heads, ff 1024, dropout 0.1, GELU).
const ENCODER_HEADS: i64 = 4;
const ENCODER_FEEDFORWARD: i64 = 1024;
const ENCODER_DROPOUT: f64 = 0.1;
/// Decoder_Specific(latent 256, hidden 512, input 256).
const DECODER_HIDDEN: i64 = 512;
/// LDVAE.experts' variance floor.
const POE_EPS: f64 = 1e-8;

const TERMS: [LossTerm; 4] = [
    LossTerm::Reconstruction,
    LossTerm::WsiSurvival,
    LossTerm::LatentAlignment,
    LossTerm::Kl,
];

/// The roles of a pass's standard-normal draws, in the official order: z_w, z_cond, z, then one
/// per genomic group (`z_omic.<i>`, six for the BLCA groups).
pub const DRAWS: [&str; 3] = ["z_wsi", "z_cond", "z"];
/// The missing-genomics pass: z (prior × WSI), then `z_omic.<i>`.
pub const SAMPLE_DRAWS: [&str; 1] = ["z_sample"];

/// The role of group `i`'s component draw.
pub fn component_draw(i: usize) -> String {
    format!("z_omic.{i}")
}

thread_local! {
    static FIXED_DRAWS: RefCell<Option<HashMap<String, Tensor>>> = const { RefCell::new(None) };
}

/// Runs `f` with every standard-normal draw of LD-CVAE's forward passes on this thread taken from
/// `draws` (role → tensor of the draw's shape, [1, 256]) instead of libtorch's generator: the parity
/// test's hook. A role the pass needs and `draws` lacks panics.
pub fn with_fixed_draws<T>(draws: HashMap<String, Tensor>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<HashMap<String, Tensor>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let before = self.0.take();
            FIXED_DRAWS.with(|d| *d.borrow_mut() = before);
        }
    }
    let before = FIXED_DRAWS.with(|d| d.borrow_mut().replace(draws));
    let _restore = Restore(before);
    f()
}

/// `torch.randn_like(like)`, or the fixed draw of `role`.
fn standard_normal(role: &str, like: &Tensor) -> Tensor {
    FIXED_DRAWS.with(|d| match d.borrow().as_ref() {
        Some(draws) => {
            let t = draws
                .get(role)
                .unwrap_or_else(|| panic!("no fixed draw for `{role}`"));
            assert_eq!(t.size(), like.size(), "fixed draw `{role}`: shape");
            t.to_kind(like.kind()).to_device(like.device())
        }
        None => like.randn_like(),
    })
}

/// model_utils.reparameterize: μ + ε·exp(½ log σ²).
fn reparameterize(mu: &Tensor, logvar: &Tensor, role: &str) -> Tensor {
    let std = (logvar * 0.5).exp();
    let eps = standard_normal(role, &std);
    mu + eps * std
}

/// LDVAE.experts over the stacked experts [k, 1, 256]: precision-weighted mean and the log of
/// the combined variance.
fn product_of_experts(mu: &Tensor, logvar: &Tensor) -> (Tensor, Tensor) {
    let kind = mu.kind();
    let var = logvar.exp() + POE_EPS;
    let t = var.reciprocal();
    let total = t.sum_dim_intlist(0, false, kind);
    let joint_mu = (mu * &t).sum_dim_intlist(0, false, kind) / &total;
    let joint_logvar = total.reciprocal().log();
    (joint_mu, joint_logvar)
}

/// prior_expert: N(0, 1), as (μ, log σ²) zeros like `like`.
fn prior(like: &Tensor) -> (Tensor, Tensor) {
    (like.zeros_like(), like.zeros_like())
}

/// calc_kl_divergence against N(0, 1): −½ mean(1 − σ² − μ² + log σ²).
fn kl(mu: &Tensor, logvar: &Tensor) -> Tensor {
    let inner = logvar.exp().neg().g_add_scalar(1.0) - mu.square() + logvar;
    inner.mean(mu.kind()) * -0.5
}

/// `nn.Parameter(torch.randn(shape))` then `nn.init.normal_(std=1e-6)`.
fn query(vs: &nn::Path, name: &str, shape: &[i64]) -> Tensor {
    vs.var(
        name,
        shape,
        Init::Randn {
            mean: 0.0,
            stdev: 1e-6,
        },
    )
}

/// model_transformer.TransLayer(dim): x + NystromAttention(LayerNorm(x)), the attention's Linears
/// at PyTorch's default U(±1/√dim) (nystrom.rs builds them xavier-normal with a zero bias).
fn trans_layer(vs: nn::Path, dim: i64) -> TransLayer {
    let layer = TransLayer::new(vs.clone(), dim, VIB_HEADS, dim / 2);
    let bound = 1.0 / (dim as f64).sqrt();
    let attn = &vs / "attn";
    tch::no_grad(|| {
        for (path, name) in [
            (&attn / "to_qkv", "weight"),
            (&attn / "to_out" / "0", "weight"),
            (&attn / "to_out" / "0", "bias"),
        ] {
            let mut t = path
                .get(name)
                .unwrap_or_else(|| panic!("NystromAttention has no {name}"));
            let _ = t.uniform_(-bound, bound);
        }
    });
    layer
}

/// `VIBTrans(feature_dim)`: the WSI posterior from the raw patch features.
#[derive(Debug)]
struct VibTrans {
    mu_query: Tensor,
    sigma_query: Tensor,
    layer1: TransLayer,
    pos_layer: Ppeg,
    layer2: TransLayer,
    norm: nn::LayerNorm,
    fc: nn::Linear,
}

impl VibTrans {
    fn new(vs: nn::Path, dim: i64) -> Self {
        Self {
            // Created in the official order (pos_layer first), which only the draws notice.
            pos_layer: Ppeg::new(&vs / "pos_layer", dim),
            mu_query: query(&vs, "muQuery", &[1, 1, dim]),
            sigma_query: query(&vs, "sigmaQuery", &[1, 1, dim]),
            layer1: trans_layer(&vs / "layer1", dim),
            layer2: trans_layer(&vs / "layer2", dim),
            norm: nn::layer_norm(&vs / "norm", vec![dim], Default::default()),
            fc: torch_linear(&vs / "fc", dim, DIM),
        }
    }

    /// bag [N, dim] → (μ_w, log σ²_w), [1, 256] each.
    fn forward(&self, bag: &Tensor, train: bool) -> (Tensor, Tensor) {
        let n = bag.size()[0];
        let side = (n as f64).sqrt().ceil() as i64;
        let extra = side * side - n;
        let h = Tensor::cat(&[bag.shallow_clone(), bag.narrow(0, 0, extra)], 0).unsqueeze(0);
        let kind = h.kind();
        let h = Tensor::cat(
            &[
                self.mu_query.to_kind(kind),
                self.sigma_query.to_kind(kind),
                h,
            ],
            1,
        ); // [1, 2 + side², dim]
        let h = self.layer1.forward(&h, train);
        // PPEG on the grid; Ppeg passes its first token through, here the sigma token, and the
        // mu token is put back in front.
        let grid = self
            .pos_layer
            .forward(&h.narrow(1, 1, 1 + side * side), side);
        let h = Tensor::cat(&[h.narrow(1, 0, 1), grid], 1);
        let h = self.layer2.forward(&h, train);
        let h = h.apply(&self.norm).apply(&self.fc).get(0); // [2 + side², 256]
        (h.narrow(0, 0, 1), h.narrow(0, 1, 1))
    }
}

/// `nn.TransformerEncoderLayer(256, 4, 1024, dropout 0.1, activation='gelu')`, post-norm,
/// sequence-first: x = norm1(x + drop(attn(x))); x = norm2(x + drop(linear2(drop(gelu(linear1 x))))).
#[derive(Debug)]
struct GeluEncoderLayer {
    self_attn: MultiheadAttention,
    linear1: nn::Linear,
    linear2: nn::Linear,
    norm1: nn::LayerNorm,
    norm2: nn::LayerNorm,
}

impl GeluEncoderLayer {
    fn new(vs: nn::Path) -> Self {
        Self {
            self_attn: MultiheadAttention::new(
                &vs / "self_attn",
                DIM,
                ENCODER_HEADS,
                ENCODER_DROPOUT,
            ),
            linear1: torch_linear(&vs / "linear1", DIM, ENCODER_FEEDFORWARD),
            linear2: torch_linear(&vs / "linear2", ENCODER_FEEDFORWARD, DIM),
            norm1: nn::layer_norm(&vs / "norm1", vec![DIM], Default::default()),
            norm2: nn::layer_norm(&vs / "norm2", vec![DIM], Default::default()),
        }
    }

    /// x [S, 256] → [S, 256].
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let (attended, _) = self.self_attn.forward(x, x, x, train);
        let x = (x + attended.fast_dropout(ENCODER_DROPOUT, train)).apply(&self.norm1);
        let ff = x
            .apply(&self.linear1)
            .gelu("none")
            .fast_dropout(ENCODER_DROPOUT, train)
            .apply(&self.linear2);
        (&x + ff.fast_dropout(ENCODER_DROPOUT, train)).apply(&self.norm2)
    }
}

/// LDVAE's `Encoder_TRANSFORMER`: the genomic posterior from the tokens.
#[derive(Debug)]
struct Encoder {
    mu_query: Tensor,
    sigma_query: Tensor,
    layer: GeluEncoderLayer,
}

impl Encoder {
    fn new(vs: nn::Path) -> Self {
        Self {
            mu_query: query(&vs, "muQuery", &[DIM]),
            sigma_query: query(&vs, "sigmaQuery", &[DIM]),
            layer: GeluEncoderLayer::new(&vs / "seqTransEncoder" / "layers" / 0),
        }
    }

    /// tokens [6, 256] → (μ_g, log σ²_g), [1, 256] each.
    fn forward(&self, tokens: &Tensor, train: bool) -> (Tensor, Tensor) {
        let kind = tokens.kind();
        let seq = Tensor::cat(
            &[
                self.mu_query.to_kind(kind).unsqueeze(0),
                self.sigma_query.to_kind(kind).unsqueeze(0),
                tokens.shallow_clone(),
            ],
            0,
        );
        let out = self.layer.forward(&seq, train);
        (out.narrow(0, 0, 1), out.narrow(0, 1, 1))
    }
}

/// `Decoder_Specific` with a condition: per group, `latent_generators.<i>.0` and `decoders.<i>`.
#[derive(Debug)]
struct Decoder {
    latent_generators: Vec<nn::Linear>,
    decoders: Vec<(nn::Linear, nn::Linear)>,
}

/// What the decoder gives: the generated tokens and the components' distributions.
struct Decoded {
    /// Ĝ [groups, 256].
    tokens: Tensor,
    /// (μ_i, log σ²_i) stacked, [groups, 256] each.
    components: (Tensor, Tensor),
}

impl Decoder {
    fn new(vs: nn::Path, groups: usize) -> Self {
        // ModuleList order: all latent generators, then all decoders.
        let latent_generators = (0..groups)
            .map(|i| torch_linear(&vs / "latent_generators" / i / "0", DIM, 2 * DIM))
            .collect();
        let decoders = (0..groups)
            .map(|i| {
                let d = &vs / "decoders" / i;
                (
                    torch_linear(&d / "0", 2 * DIM, DECODER_HIDDEN),
                    torch_linear(&d / "2", DECODER_HIDDEN, DIM),
                )
            })
            .collect();
        Self {
            latent_generators,
            decoders,
        }
    }

    /// z, condition [1, 256] → Ĝ; draws `z_omic.<i>` in group order.
    fn forward(&self, z: &Tensor, condition: &Tensor) -> Decoded {
        let mut tokens = Vec::new();
        let mut mus = Vec::new();
        let mut logvars = Vec::new();
        for (i, (generator, (d0, d2))) in self
            .latent_generators
            .iter()
            .zip(&self.decoders)
            .enumerate()
        {
            let encoded = z.apply(generator); // [1, 512]
            let mu = encoded.narrow(-1, 0, DIM);
            let logvar = encoded.narrow(-1, DIM, DIM);
            let z_i = reparameterize(&mu, &logvar, &component_draw(i));
            let input = Tensor::cat(&[z_i, condition.shallow_clone()], -1);
            tokens.push(input.apply(d0).elu().apply(d2));
            mus.push(mu);
            logvars.push(logvar);
        }
        Decoded {
            tokens: Tensor::cat(&tokens, 0),
            components: (Tensor::cat(&mus, 0), Tensor::cat(&logvars, 0)),
        }
    }
}

/// `LDVAE(input_dim=256, use_condition=True, decoder_mode='specific', nfeats=groups)`.
#[derive(Debug)]
struct Ldvae {
    encoder: Encoder,
    decoder: Decoder,
}

/// One conditional VAE pass on the real tokens.
struct VaePass {
    decoded: Decoded,
    /// The genomic posterior (μ_g, log σ²_g).
    omic: (Tensor, Tensor),
    /// The joint posterior.
    joint: (Tensor, Tensor),
}

impl Ldvae {
    fn new(vs: nn::Path, groups: usize) -> Self {
        Self {
            encoder: Encoder::new(&vs / "encoder"),
            decoder: Decoder::new(&vs / "decoder", groups),
        }
    }

    /// LDVAE.forward(x, [μ_w, log σ²_w]): draws z_cond, z, z_omic.*.
    fn forward(&self, tokens: &Tensor, wsi: &(Tensor, Tensor), train: bool) -> VaePass {
        let (mu_w, logvar_w) = wsi;
        let z_cond = reparameterize(mu_w, logvar_w, "z_cond");
        let (mu_g, logvar_g) = self.encoder.forward(tokens, train);
        let (mu_0, logvar_0) = prior(mu_w);
        let joint = product_of_experts(
            &Tensor::stack(&[&mu_0, mu_w, &mu_g], 0),
            &Tensor::stack(&[&logvar_0, logvar_w, &logvar_g], 0),
        );
        let z = reparameterize(&joint.0, &joint.1, "z");
        VaePass {
            decoded: self.decoder.forward(&z, &z_cond),
            omic: (mu_g, logvar_g),
            joint,
        }
    }

    /// LDVAE.sample(1, [μ_w, log σ²_w]) (genomics missing): draws z_sample, z_omic.*.
    fn sample(&self, wsi: &(Tensor, Tensor)) -> Tensor {
        let (mu_w, logvar_w) = wsi;
        let (mu_0, logvar_0) = prior(mu_w);
        let (mu, logvar) = product_of_experts(
            &Tensor::stack(&[&mu_0, mu_w], 0),
            &Tensor::stack(&[&logvar_0, logvar_w], 0),
        );
        let z = reparameterize(&mu, &logvar, SAMPLE_DRAWS[0]);
        self.decoder.forward(&z, &z).tokens
    }
}

/// Which tokens MCAT's head reads in training (`stage` of coattn_trainer.py).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// epoch < warm_epoch (5): the real genomic tokens.
    Warmup,
    /// Later epochs, and evaluation always: the generated ones.
    Joint,
}

#[derive(Debug)]
pub struct LdCvae {
    spec: ModelSpec,
    wsi_net: nn::Linear,
    signatures: SignatureNetworks,
    /// `omic_map_layer.0` (Linear 256 → 256): in the state dict, unused by the forward.
    _omic_map_layer: nn::Linear,
    wsi_encoder: VibTrans,
    wsi_classifier: nn::Linear,
    vae: Ldvae,
    coattn: MultiheadAttention,
    path: TokenPooling,
    omic: TokenPooling,
    mm1: nn::Linear,
    mm2: nn::Linear,
    classifier: nn::Linear,
}

impl LdCvae {
    /// Parameters in the official registration order.
    pub fn new(vs: &nn::Path, spec: ModelSpec) -> Self {
        let groups = spec.genomic_groups.len();
        Self {
            wsi_net: torch_linear(vs / "wsi_net" / "0", spec.wsi_dim, DIM),
            signatures: SignatureNetworks::new(vs / "sig_networks", &spec.genomic_groups),
            _omic_map_layer: torch_linear(vs / "omic_map_layer" / "0", DIM, DIM),
            wsi_encoder: VibTrans::new(vs / "wsi_encoder", spec.wsi_dim),
            wsi_classifier: torch_linear(vs / "wsi_classifier" / "0", DIM, BINS),
            vae: Ldvae::new(vs / "vae", groups),
            coattn: MultiheadAttention::new(vs / "coattn", DIM, 1, 0.0),
            path: TokenPooling::new(vs, "path"),
            omic: TokenPooling::new(vs, "omic"),
            mm1: torch_linear(vs / "mm" / "0", 2 * DIM, DIM),
            mm2: torch_linear(vs / "mm" / "2", DIM, DIM),
            classifier: torch_linear(vs / "classifier", DIM, BINS),
            spec,
        }
    }

    /// MCAT's head: tokens [T, 256] over the patch embeddings [N, 256] → logits [4].
    fn head(&self, tokens: &Tensor, h_path: &Tensor, train: bool) -> Tensor {
        let (h_coattn, _) = self.coattn.forward(tokens, h_path, h_path, train);
        let path = self.path.forward(&h_coattn, train);
        let omic = self.omic.forward(tokens, train);
        Tensor::cat(&[path, omic], 0)
            .apply(&self.mm1)
            .relu()
            .apply(&self.mm2)
            .relu()
            .apply(&self.classifier)
    }

    /// Robust_MCAT.forward at a training `stage` (ignored in evaluation, which reads the
    /// generated tokens). The training losses need `pass.label` and `pass.censored` (the WSI-only
    /// head's NLL; zero without them).
    pub fn forward_stage(&self, inputs: &Inputs, pass: Pass, stage: Stage) -> Output {
        let train = pass.dropout;
        let bag = inputs.wsi.as_ref().expect("WSI inputs");
        let h_path = bag.apply(&self.wsi_net).relu().fast_dropout(DROPOUT, train);
        let Some(groups) = inputs.genomics.as_ref() else {
            // Genomics missing: evaluation only (the official training pass needs them).
            assert!(!pass.train, "ld_cvae trains with genomics only");
            let wsi = self.wsi_encoder.forward(bag, train);
            let generated = self.vae.sample(&wsi);
            return Output::from_logits(self.head(&generated, &h_path, train));
        };
        let real = self.signatures.forward(groups, train); // [6, 256]
        let wsi = self.wsi_encoder.forward(bag, train);
        // Drawn in evaluation too (and unused there), as the official forward does.
        let z_wsi = reparameterize(&wsi.0, &wsi.1, DRAWS[0]);
        // Training feeds the VAE the detached tokens.
        let target = if pass.train {
            real.detach()
        } else {
            real.shallow_clone()
        };
        let vae = self.vae.forward(&target, &wsi, train);
        let generated = &vae.decoded.tokens;
        let tokens = match (pass.train, stage) {
            (true, Stage::Warmup) => &real,
            _ => generated,
        };
        let mut out = Output::from_logits(self.head(tokens, &h_path, train));
        if pass.train {
            let kind = generated.kind();
            let reconstruction = (&target - generated).square().mean(kind);
            let wsi_survival = match (pass.label, pass.censored) {
                (Some(bin), Some(censored)) => {
                    let logits = z_wsi.apply(&self.wsi_classifier).get(0);
                    let (hazards, survival, _) = loss::hazards_survival_risk(&logits);
                    loss::nll_survival(&hazards, &survival, bin, censored)
                }
                _ => Tensor::zeros([], (kind, generated.device())),
            };
            let (mu_w, logvar_w) = &wsi;
            let (mu_g, logvar_g) = &vae.omic;
            // calc_W_loss(μ_g, log σ²_g, μ_w, log σ²_w).
            let alignment = (mu_g - mu_w).square().mean(kind)
                + (logvar_g.exp() - logvar_w.exp()).abs().mean(kind);
            let (mu_c, logvar_c) = &vae.decoded.components;
            // The trainer's order: wsi + components + genomic + joint.
            let kl_total = kl(mu_w, logvar_w)
                + kl(mu_c, logvar_c)
                + kl(mu_g, logvar_g)
                + kl(&vae.joint.0, &vae.joint.1);
            out.losses = vec![
                (LossTerm::Reconstruction, reconstruction),
                (LossTerm::WsiSurvival, wsi_survival),
                (LossTerm::LatentAlignment, alignment),
                (LossTerm::Kl, kl_total),
            ];
        }
        out
    }
}

impl SurvivalModel for LdCvae {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn loss_terms(&self) -> &'static [LossTerm] {
        &TERMS
    }

    /// Training in the 'jointly' stage (the warm-up needs the epoch: [`LdCvae::forward_stage`]).
    fn forward_pass(&self, inputs: &Inputs, _segments: (i64, i64), pass: Pass) -> Output {
        self.forward_stage(inputs, pass, Stage::Joint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn spec() -> ModelSpec {
        let mut spec = ModelSpec::wsi_genomics(vec![5, 7], 256);
        spec.architecture = crate::model::Architecture(&ENTRY);
        spec.wsi_dim = 32;
        spec
    }

    fn inputs(n: i64, genomics: bool) -> Inputs {
        let opts = (Kind::Double, Device::Cpu);
        Inputs {
            wsi: Some(Tensor::randn([n, 32], opts)),
            genomics: genomics.then(|| vec![Tensor::randn([5], opts), Tensor::randn([7], opts)]),
            mri: None,
        }
    }

    fn draws(roles: &[String], seed: f64) -> HashMap<String, Tensor> {
        roles
            .iter()
            .enumerate()
            .map(|(k, r)| {
                let t = Tensor::arange(DIM, (Kind::Double, Device::Cpu))
                    .g_mul_scalar(0.01 * (k as f64 + seed))
                    .sin()
                    .unsqueeze(0);
                (r.clone(), t)
            })
            .collect()
    }

    fn roles(groups: usize) -> Vec<String> {
        DRAWS
            .iter()
            .map(|r| r.to_string())
            .chain((0..groups).map(component_draw))
            .collect()
    }

    #[test]
    fn fixed_draws_make_eval_deterministic_and_equal_to_the_joint_training_pass() {
        // PIBD's unit test re-seeds the global generator; it holds this lock meanwhile.
        let _generator = crate::torch_rng::lock();
        tch::manual_seed(3);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let model = LdCvae::new(&vs.root(), spec());
        vs.double();
        for n in [1, 3, 10, 40] {
            let x = inputs(n, true);
            let d = || draws(&roles(2), 1.0);
            let a = with_fixed_draws(d(), || tch::no_grad(|| model.forward(&x, (1, 1), false)));
            let b = with_fixed_draws(d(), || tch::no_grad(|| model.forward(&x, (1, 1), false)));
            assert!(a.logits.equal(&b.logits), "n = {n}");
            let pass = Pass {
                train: true,
                dropout: false,
                label: Some(1),
                censored: Some(false),
            };
            let t = with_fixed_draws(d(), || model.forward_pass(&x, (1, 1), pass));
            assert!((&t.logits - &a.logits).abs().max().double_value(&[]) < 1e-12);
            for term in TERMS {
                assert!(t.loss(term).double_value(&[]).is_finite(), "{term:?}");
            }
            assert!(t.loss(LossTerm::WsiSurvival).double_value(&[]) > 0.0);
            // The warm-up stage reads the real tokens.
            let w = with_fixed_draws(d(), || model.forward_stage(&x, pass, Stage::Warmup));
            assert!(!w.logits.allclose(&t.logits, 1e-9, 0.0, false));
        }
        // Without fixed draws, two evaluations differ (the official eval samples too).
        let x = inputs(10, true);
        let a = tch::no_grad(|| model.forward(&x, (1, 1), false));
        let b = tch::no_grad(|| model.forward(&x, (1, 1), false));
        assert!(!a.logits.equal(&b.logits));
        // Missing genomics: the sampling path.
        let x = inputs(10, false);
        let mut d = draws(&roles(2), 2.0);
        let z = d["z"].shallow_clone();
        d.insert(SAMPLE_DRAWS[0].to_string(), z);
        let out = with_fixed_draws(d, || tch::no_grad(|| model.forward(&x, (1, 1), false)));
        assert_eq!(out.logits.size(), vec![4]);
    }

    #[test]
    fn parameter_count_matches_the_official_class() {
        // baseline_keys/ldcvae.txt: 17,252,378 with the BLCA groups and 1024-d features.
        let mut s = ModelSpec::wsi_genomics(vec![94, 334, 521, 468, 1496, 479], 256);
        s.architecture = crate::model::Architecture(&ENTRY);
        let vs = nn::VarStore::new(Device::Cpu);
        let _model = LdCvae::new(&vs.root(), s);
        let n: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        assert_eq!(n, 17_252_378);
    }
}
