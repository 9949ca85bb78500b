//! AttnMIL: MCAT's `MIL_Attention_FC_surv` (`models/model_set_mil.py`, run with `--mode path
//! --model_type amil`, size `small` = [1024, 512, 256], dropout on): `attention_net` =
//! Linear(1024, 512), ReLU, Dropout(0.25), gated attention (512 → 256 → 1); the bag is the
//! attention-weighted sum of the 512-d patch features, then `rho` (Linear 512 → 256, ReLU,
//! Dropout 0.25) and the classifier. PyTorch's default initialisation (MCAT calls no
//! initialiser on it).

use tch::nn;

use super::attention::GatedAttention;
use super::init::torch_linear as linear;
use super::mil::wsi_only;
use super::registry::ModelEntry;
use super::{GenomicsInput, Inputs, ModelSpec, Output, Pass, SurvivalModel};
use crate::model::dropout::FastDropout;

/// `model.architecture: abmil`.
pub static ENTRY: ModelEntry = ModelEntry {
    name: "abmil",
    official: "mahmoodlab/MCAT models/model_set_mil.py `MIL_Attention_FC_surv` (size small)",
    genomics: GenomicsInput::Groups,
    accepts: wsi_only,
    build: |vs, spec| Box::new(AttentionMil::new(vs, spec)),
};

#[derive(Debug)]
struct AttentionMil {
    spec: ModelSpec,
    fc: nn::Linear,
    attention: GatedAttention,
    rho: nn::Linear,
    classifier: nn::Linear,
}

impl AttentionMil {
    fn new(vs: &nn::Path, spec: ModelSpec) -> Self {
        let net = vs / "attention_net";
        Self {
            fc: linear(&net / "0", spec.wsi_dim, 512),
            attention: GatedAttention::new(&net / "3", 512, 256, 1, Some(0.25), linear),
            rho: linear(vs / "rho" / "0", 512, 256),
            classifier: linear(vs / "classifier", 256, 4),
            spec,
        }
    }
}

impl SurvivalModel for AttentionMil {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn forward_pass(&self, inputs: &Inputs, _segments: (i64, i64), pass: Pass) -> Output {
        let train = pass.dropout;
        let bag = inputs.wsi.as_ref().expect("WSI inputs");
        let h = bag.apply(&self.fc).relu().fast_dropout(0.25, train);
        let weights = self.attention.weights(&h, train); // [1, N]
        let pooled = weights.matmul(&h).get(0);
        let z = pooled.apply(&self.rho).relu().fast_dropout(0.25, train);
        Output::from_logits(z.apply(&self.classifier))
    }
}
