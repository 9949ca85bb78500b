//! TransMIL as a survival baseline: MambaMIL's `models/TransMIL.py` `TransMIL(1024, 4,
//! dropout=0.25, act='relu', survival=True)` (the official szc19990412/TransMIL network with a
//! dropout after `_fc1` and a head named `classifier`): `_fc1` = Linear(in, 512), ReLU,
//! Dropout(0.25); the TransMIL block of HDMoE's WSI encoder at width 512 (8 heads, 256
//! landmarks: square padding, cls, layer, PPEG, layer, LayerNorm); the head on the cls token.

use tch::nn;

use super::blocks::{linear, TransMil};
use super::mil::wsi_only;
use super::registry::ModelEntry;
use super::{GenomicsInput, Inputs, ModelSpec, Output, Pass, SurvivalModel};
use crate::model::dropout::FastDropout;

/// `model.architecture: transmil`.
pub static ENTRY: ModelEntry = ModelEntry {
    name: "transmil",
    official: "isyangshu/MambaMIL models/TransMIL.py `TransMIL` (survival=True; \
               szc19990412/TransMIL's network)",
    genomics: GenomicsInput::Groups,
    accepts: wsi_only,
    build: |vs, spec| Box::new(TransMilSurvival::new(vs, spec)),
};

const DIM: i64 = 512;

#[derive(Debug)]
struct TransMilSurvival {
    spec: ModelSpec,
    fc: nn::Linear,
    trans: TransMil,
    classifier: nn::Linear,
}

impl TransMilSurvival {
    fn new(vs: &nn::Path, spec: ModelSpec) -> Self {
        Self {
            fc: linear(vs / "_fc1" / "0", spec.wsi_dim, DIM),
            trans: TransMil::with_sizes(vs.clone(), DIM, 8, DIM / 2),
            classifier: linear(vs / "classifier", DIM, 4),
            spec,
        }
    }
}

impl SurvivalModel for TransMilSurvival {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn forward_pass(&self, inputs: &Inputs, _segments: (i64, i64), pass: Pass) -> Output {
        let bag = inputs.wsi.as_ref().expect("WSI inputs");
        let h = bag.apply(&self.fc).relu().fast_dropout(0.25, pass.dropout);
        let cls = self.trans.forward(&h, pass.dropout);
        Output::from_logits(cls.apply(&self.classifier))
    }
}
