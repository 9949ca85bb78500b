//! One modality's HDMoE encoder and a linear head (the paper's unimodal rows): genomics or MRI
//! through `Transformer_G`, or WSI through TransMIL; no auxiliary losses, no recombination.

use tch::nn;

use super::blocks::{linear, Encoder1, WsiEncoder};
use super::{Inputs, ModelSpec, Output, Pass, SurvivalModel};

#[derive(Debug)]
enum Encoder {
    Modality1(Encoder1),
    Wsi(WsiEncoder),
}

#[derive(Debug)]
pub struct Unimodal {
    spec: ModelSpec,
    encoder: Encoder,
    head: nn::Linear,
}

impl Unimodal {
    /// Modality 1 when the spec has one, else WSI; parameters named as in the fused model.
    pub fn new(vs: &nn::Path, spec: ModelSpec) -> Self {
        let encoder = match spec.modality_1 {
            Some(modality) => Encoder::Modality1(Encoder1::new(vs, &spec, modality)),
            None => Encoder::Wsi(WsiEncoder::new(vs, &spec)),
        };
        let head = linear(vs / "classifier", spec.dim, 4);
        Self {
            spec,
            encoder,
            head,
        }
    }
}

impl SurvivalModel for Unimodal {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn forward_pass(&self, inputs: &Inputs, _segments: (i64, i64), pass: Pass) -> Output {
        let z = match &self.encoder {
            Encoder::Modality1(e) => e.forward(inputs, pass.dropout),
            Encoder::Wsi(e) => e.forward(inputs, pass.dropout),
        };
        Output::from_logits(z.apply(&self.head))
    }
}
