//! MCAT's SNN baseline (`models/model_genomic.py` `SNN`, size `small`): four SNN blocks of 256
//! on every gene column of the table once, a linear head, `init_max_weights`. Parameters carry
//! the official names (`fc_omic.<k>.0`, `classifier`).

use tch::{nn, Tensor};

use super::blocks::SnnBlock;
use super::registry::ModelEntry;
use super::{init, GenomicsInput, Inputs, ModelSpec, Output, Pass, SurvivalModel};
use crate::config::Modality;

/// `model.architecture: snn`.
pub static ENTRY: ModelEntry = ModelEntry {
    name: "snn",
    official: "mahmoodlab/MCAT models/model_genomic.py `SNN` (model_size_omic small)",
    genomics: GenomicsInput::AllGenes,
    accepts,
    build,
};

fn accepts(modalities: &[Modality]) -> Result<(), String> {
    if modalities == [Modality::Genomics] {
        Ok(())
    } else {
        Err("snn is the genomics-only baseline; set dataset.modalities: [genomics]".into())
    }
}

fn build(vs: &nn::Path, spec: ModelSpec) -> Box<dyn SurvivalModel> {
    Box::new(Snn::new(vs, spec))
}

/// Widths of MCAT's SNN (`size_dict_omic['small']`).
const WIDTHS: [i64; 4] = [256, 256, 256, 256];

#[derive(Debug)]
pub struct Snn {
    spec: ModelSpec,
    blocks: Vec<SnnBlock>,
    head: nn::Linear,
}

impl Snn {
    /// The input width is the sum of `spec.genomic_groups` (one group: every gene column).
    pub fn new(vs: &nn::Path, spec: ModelSpec) -> Self {
        let mut width: i64 = spec.genomic_groups.iter().sum();
        let blocks = WIDTHS
            .iter()
            .enumerate()
            .map(|(k, &w)| {
                let block = SnnBlock(init::max_linear(vs / "fc_omic" / k / "0", width, w));
                width = w;
                block
            })
            .collect();
        let head = init::max_linear(vs / "classifier", WIDTHS[3], 4);
        Self { spec, blocks, head }
    }
}

impl SurvivalModel for Snn {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn forward_pass(&self, inputs: &Inputs, _segments: (i64, i64), pass: Pass) -> Output {
        let groups = inputs.genomics.as_ref().expect("genomic inputs");
        let x = Tensor::cat(groups, 0);
        let h = self
            .blocks
            .iter()
            .fold(x, |h, b| b.forward(&h, pass.dropout));
        Output::from_logits(h.apply(&self.head))
    }
}
