//! SNNTrans, the genomics-only row of Table 2: MCAT's genomic branch on its own. No official
//! code exists (BASELINES §SNNTrans); it is built from MCAT's blocks with MCAT's names, so
//! MCAT-style weights map 1:1: the six `sig_networks` SNNs, `omic_transformer` (2 layers),
//! gated-attention pooling over the six tokens, `omic_rho`, the classifier.

use tch::nn;

use super::init::torch_linear;
use super::mcat::{SignatureNetworks, TokenPooling};
use super::registry::ModelEntry;
use super::{GenomicsInput, Inputs, ModelSpec, Output, Pass, SurvivalModel};
use crate::config::Modality;

/// `model.architecture: snn_trans`.
pub static ENTRY: ModelEntry = ModelEntry {
    name: "snn_trans",
    official: "no official code: MCAT's genomic branch (mahmoodlab/MCAT models/model_coattn.py \
               blocks) with a linear head",
    genomics: GenomicsInput::Groups,
    accepts: |modalities| {
        if modalities == [Modality::Genomics] {
            Ok(())
        } else {
            Err("snn_trans is genomics-only; set dataset.modalities: [genomics]".into())
        }
    },
    build: |vs, spec| Box::new(SnnTrans::new(vs, spec)),
};

#[derive(Debug)]
struct SnnTrans {
    spec: ModelSpec,
    signatures: SignatureNetworks,
    omic: TokenPooling,
    classifier: nn::Linear,
}

impl SnnTrans {
    fn new(vs: &nn::Path, spec: ModelSpec) -> Self {
        Self {
            signatures: SignatureNetworks::new(vs / "sig_networks", &spec.genomic_groups),
            omic: TokenPooling::new(vs, "omic"),
            classifier: torch_linear(vs / "classifier", 256, 4),
            spec,
        }
    }
}

impl SurvivalModel for SnnTrans {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn forward_pass(&self, inputs: &Inputs, _segments: (i64, i64), pass: Pass) -> Output {
        let groups = inputs.genomics.as_ref().expect("genomic inputs");
        let tokens = self.signatures.forward(groups, pass.dropout);
        Output::from_logits(
            self.omic
                .forward(&tokens, pass.dropout)
                .apply(&self.classifier),
        )
    }
}
