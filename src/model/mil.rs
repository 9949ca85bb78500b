//! MaxMIL and MeanMIL, the survival versions of MambaMIL (`models/Mean_Max_MIL.py`, built as
//! `MaxMIL(1024, 4, survival=True)` / `MeanMIL(…)`): one MLP scores every patch with the four
//! bin logits (`head` = Linear(in, 512), ReLU, Dropout(0.25), Linear(512, 4)), and the bag's
//! logits are their maximum or mean over the patches, each bin separately. Xavier-normal
//! initialisation (MambaMIL's `initialize_weights`).

use tch::nn;

use super::blocks::linear;
use super::registry::ModelEntry;
use super::{GenomicsInput, Inputs, ModelSpec, Output, Pass, SurvivalModel};
use crate::config::Modality;
use crate::model::dropout::FastDropout;

/// `model.architecture: maxmil`.
pub static MAX_ENTRY: ModelEntry = ModelEntry {
    name: "maxmil",
    official: "isyangshu/MambaMIL models/Mean_Max_MIL.py `MaxMIL` (survival=True)",
    genomics: GenomicsInput::Groups,
    accepts: wsi_only,
    build: |vs, spec| Box::new(InstanceMil::new(vs, spec, Pool::Max)),
};

/// `model.architecture: meanmil`.
pub static MEAN_ENTRY: ModelEntry = ModelEntry {
    name: "meanmil",
    official: "isyangshu/MambaMIL models/Mean_Max_MIL.py `MeanMIL` (survival=True)",
    genomics: GenomicsInput::Groups,
    accepts: wsi_only,
    build: |vs, spec| Box::new(InstanceMil::new(vs, spec, Pool::Mean)),
};

/// The rule of the pathology-only baselines.
pub(crate) fn wsi_only(modalities: &[Modality]) -> Result<(), String> {
    if modalities == [Modality::Wsi] {
        Ok(())
    } else {
        Err("a pathology-only baseline; set dataset.modalities: [wsi]".into())
    }
}

#[derive(Debug, Clone, Copy)]
enum Pool {
    Max,
    Mean,
}

#[derive(Debug)]
struct InstanceMil {
    spec: ModelSpec,
    hidden: nn::Linear,
    out: nn::Linear,
    pool: Pool,
}

impl InstanceMil {
    fn new(vs: &nn::Path, spec: ModelSpec, pool: Pool) -> Self {
        Self {
            hidden: linear(vs / "head" / "0", spec.wsi_dim, 512),
            out: linear(vs / "head" / "3", 512, 4),
            spec,
            pool,
        }
    }
}

impl SurvivalModel for InstanceMil {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn forward_pass(&self, inputs: &Inputs, _segments: (i64, i64), pass: Pass) -> Output {
        let bag = inputs.wsi.as_ref().expect("WSI inputs");
        let per_patch = bag
            .apply(&self.hidden)
            .relu()
            .fast_dropout(0.25, pass.dropout)
            .apply(&self.out);
        let logits = match self.pool {
            // torch.max(dim): the gradient goes to one index per bin, as the official code's.
            Pool::Max => per_patch.max_dim(0, false).0,
            Pool::Mean => per_patch.mean_dim(0, false, per_patch.kind()),
        };
        Output::from_logits(logits)
    }
}
