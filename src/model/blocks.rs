//! The building blocks the survival models share: the modality encoders of the HDMoE release
//! (`Transformer_P` = TransMIL for patch bags, `Transformer_G` for genomic or MRI tokens, the
//! SNN blocks of MCAT) and the release's initialisation of a Linear.

use tch::nn::{self, Init};
use tch::Tensor;

use super::init;
use super::nystrom::{Ppeg, TransLayer};
use super::{Inputs, Modality1, ModelSpec};
use crate::model::dropout::FastDropout;
use crate::profile;

/// Linear with the release's initialisation (xavier-normal weight, zero bias).
pub(crate) fn linear(vs: nn::Path, input: i64, output: i64) -> nn::Linear {
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
pub(crate) struct TransMil {
    cls: Tensor,
    layer1: TransLayer,
    ppeg: Ppeg,
    layer2: TransLayer,
    norm: nn::LayerNorm,
}

impl TransMil {
    pub(crate) fn new(vs: nn::Path, spec: &ModelSpec) -> Self {
        Self::with_sizes(vs, spec.dim, spec.heads, spec.landmarks)
    }

    /// TransMIL of width `dim` (the standalone baseline's is 512, 8 heads, 256 landmarks).
    pub(crate) fn with_sizes(vs: nn::Path, dim: i64, heads: i64, landmarks: i64) -> Self {
        Self {
            cls: cls_token(&vs, dim),
            layer1: TransLayer::new(&vs / "layer1", dim, heads, landmarks),
            ppeg: Ppeg::new(&vs / "pos_layer", dim),
            layer2: TransLayer::new(&vs / "layer2", dim, heads, landmarks),
            norm: nn::layer_norm(&vs / "norm", vec![dim], Default::default()),
        }
    }

    /// tokens: [N, dim].
    pub(crate) fn forward(&self, tokens: &Tensor, train: bool) -> Tensor {
        let n = tokens.size()[0];
        let side = (n as f64).sqrt().ceil() as i64;
        let extra = side * side - n;
        let h = Tensor::cat(&[tokens.shallow_clone(), tokens.narrow(0, 0, extra)], 0).unsqueeze(0);
        let h = Tensor::cat(&[self.cls.to_kind(h.kind()), h], 1);
        let h = self.layer1.forward(&h, train);
        let h = self.ppeg.forward(&h, side);
        // Only the cls token reaches the head: the second layer at position 0 alone.
        let cls = self.layer2.forward_first(&h, train);
        cls.apply(&self.norm).get(0).get(0)
    }
}

/// `Transformer_G`: cls, two layers, LayerNorm; returns cls [dim].
#[derive(Debug)]
pub(crate) struct TransG {
    cls: Tensor,
    layer1: TransLayer,
    layer2: TransLayer,
    norm: nn::LayerNorm,
}

impl TransG {
    pub(crate) fn new(vs: nn::Path, spec: &ModelSpec) -> Self {
        Self {
            cls: cls_token(&vs, spec.dim),
            layer1: TransLayer::new(&vs / "layer1", spec.dim, spec.heads, spec.landmarks),
            layer2: TransLayer::new(&vs / "layer2", spec.dim, spec.heads, spec.landmarks),
            norm: nn::layer_norm(&vs / "norm", vec![spec.dim], Default::default()),
        }
    }

    fn forward(&self, tokens: &Tensor, train: bool) -> Tensor {
        let h = Tensor::cat(&[self.cls.to_kind(tokens.kind()), tokens.unsqueeze(0)], 1);
        let cls = self
            .layer2
            .forward_first(&self.layer1.forward(&h, train), train);
        cls.apply(&self.norm).get(0).get(0)
    }
}

/// MCAT's SNN block: Linear → ELU → AlphaDropout(0.25).
#[derive(Debug)]
pub(crate) struct SnnBlock(pub(crate) nn::Linear);

impl SnnBlock {
    pub(crate) fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        x.apply(&self.0).elu().alpha_dropout(0.25, train)
    }
}

/// The encoder of modality 1 (genomics or MRI): tokens through `Transformer_G`, cls [dim].
#[derive(Debug)]
pub(crate) enum Encoder1 {
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
    /// Named as the release names it (`genomics_fc.<i>.<b>.0`, `genomics_encoder.*`), MRI by
    /// analogy (`mri_fc.0`, `mri_encoder.*`).
    pub(crate) fn new(vs: &nn::Path, spec: &ModelSpec, modality: Modality1) -> Self {
        let d = spec.dim;
        match modality {
            Modality1::Genomics => {
                // SNN_Block is nn.Sequential(Linear, ELU, AlphaDropout): its Linear is `<block>.0`.
                let snn = |vs: nn::Path, input: i64| {
                    (
                        SnnBlock(linear(&vs / "0" / "0", input, 1024)),
                        SnnBlock(linear(&vs / "1" / "0", 1024, d)),
                    )
                };
                Encoder1::Genomics {
                    snns: spec
                        .genomic_groups
                        .iter()
                        .enumerate()
                        .map(|(i, &n)| snn(vs / "genomics_fc" / i, n))
                        .collect(),
                    trans: TransG::new(vs / "genomics_encoder", spec),
                }
            }
            Modality1::Mri => Encoder1::Mri {
                embed: linear(vs / "mri_fc" / "0", spec.mri_dim, d),
                trans: TransG::new(vs / "mri_encoder", spec),
            },
        }
    }

    pub(crate) fn forward(&self, inputs: &Inputs, train: bool) -> Tensor {
        match self {
            Encoder1::Genomics { snns, trans } => {
                let groups = inputs.genomics.as_ref().expect("genomic inputs");
                let tokens = profile::phase("forward: genomics SNNs", || {
                    let tokens: Vec<Tensor> = snns
                        .iter()
                        .zip(groups)
                        .map(|((a, b), x)| b.forward(&a.forward(x, train), train))
                        .collect();
                    Tensor::stack(&tokens, 0)
                });
                profile::phase("forward: genomics Transformer", || {
                    trans.forward(&tokens, train)
                })
            }
            Encoder1::Mri { embed, trans } => profile::phase("forward: MRI encoder", || {
                let x = inputs.mri.as_ref().expect("MRI inputs");
                trans.forward(&x.apply(embed).relu().fast_dropout(0.25, train), train)
            }),
        }
    }
}

/// The WSI encoder: `pathomics_fc` (Linear, ReLU, Dropout, Linear, ReLU, Dropout) then TransMIL.
#[derive(Debug)]
pub(crate) struct WsiEncoder {
    fc1: nn::Linear,
    fc2: nn::Linear,
    trans: TransMil,
}

impl WsiEncoder {
    pub(crate) fn new(vs: &nn::Path, spec: &ModelSpec) -> Self {
        let d = spec.dim;
        Self {
            fc1: linear(vs / "pathomics_fc" / "0", spec.wsi_dim, d),
            fc2: linear(vs / "pathomics_fc" / "3", d, d),
            trans: TransMil::new(vs / "pathomics_encoder", spec),
        }
    }

    pub(crate) fn forward(&self, inputs: &Inputs, train: bool) -> Tensor {
        let bag = inputs.wsi.as_ref().expect("WSI inputs");
        let h = profile::phase("forward: WSI fc", || {
            let h = bag.apply(&self.fc1).relu().fast_dropout(0.25, train);
            h.apply(&self.fc2).relu().fast_dropout(0.25, train)
        });
        profile::phase("forward: WSI TransMIL", || self.trans.forward(&h, train))
    }
}
