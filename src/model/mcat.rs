//! MCAT: `MCAT_Surv` of mahmoodlab/MCAT (`models/model_coattn.py`, fusion `concat`, sizes
//! `small`, dropout 0.25), genomics in the six signature groups. Patches through `wsi_net`
//! (Linear 1024 → 256, ReLU, Dropout); each group through its `sig_networks` SNN (d → 256 →
//! 256); one-head co-attention of the six genomic tokens over the patches; each modality's six
//! tokens through its Transformer, gated-attention pooling and `rho`; `mm` on the two pooled
//! vectors; the classifier. PyTorch's default initialisation (MCAT runs no initialiser on it).

use tch::{nn, Tensor};

use super::attention::{GatedAttention, MultiheadAttention, TransformerEncoder};
use super::blocks::SnnBlock;
use super::init::torch_linear;
use super::registry::ModelEntry;
use super::{GenomicsInput, Inputs, ModelSpec, Output, Pass, SurvivalModel};
use crate::config::Modality;
use crate::model::dropout::FastDropout;

/// `model.architecture: mcat`.
pub static ENTRY: ModelEntry = ModelEntry {
    name: "mcat",
    official: "mahmoodlab/MCAT models/model_coattn.py `MCAT_Surv` (fusion concat, size small)",
    genomics: GenomicsInput::Groups,
    accepts,
    build: |vs, spec| Box::new(Mcat::new(vs, spec)),
};

fn accepts(modalities: &[Modality]) -> Result<(), String> {
    if modalities.len() == 2
        && modalities.contains(&Modality::Wsi)
        && modalities.contains(&Modality::Genomics)
    {
        Ok(())
    } else {
        Err("mcat takes wsi and genomics; set dataset.modalities: [genomics, wsi]".into())
    }
}

const DROPOUT: f64 = 0.25;

/// `sig_networks`: one two-block SNN (d_i → 256 → 256) per genomic group.
#[derive(Debug)]
pub(crate) struct SignatureNetworks(Vec<(SnnBlock, SnnBlock)>);

impl SignatureNetworks {
    pub(crate) fn new(vs: nn::Path, groups: &[i64]) -> Self {
        Self(
            groups
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let group = &vs / i;
                    (
                        SnnBlock(torch_linear(&group / "0" / "0", n, 256)),
                        SnnBlock(torch_linear(&group / "1" / "0", 256, 256)),
                    )
                })
                .collect(),
        )
    }

    /// The groups' vectors → the genomic tokens [groups, 256].
    pub(crate) fn forward(&self, groups: &[Tensor], train: bool) -> Tensor {
        let tokens: Vec<Tensor> = self
            .0
            .iter()
            .zip(groups)
            .map(|((a, b), x)| b.forward(&a.forward(x, train), train))
            .collect();
        Tensor::stack(&tokens, 0)
    }
}

/// One modality's path after the tokens: `<m>_transformer`, `<m>_attention_head` (gated,
/// 256 → 256 → 1, dropout), softmax over the tokens, weighted sum, `<m>_rho` (Linear, ReLU,
/// Dropout).
#[derive(Debug)]
pub(crate) struct TokenPooling {
    transformer: TransformerEncoder,
    attention: GatedAttention,
    rho: nn::Linear,
}

impl TokenPooling {
    pub(crate) fn new(vs: &nn::Path, modality: &str) -> Self {
        Self {
            transformer: TransformerEncoder::mcat(vs / format!("{modality}_transformer")),
            attention: GatedAttention::new(
                vs / format!("{modality}_attention_head"),
                256,
                256,
                1,
                Some(DROPOUT),
                torch_linear,
            ),
            rho: torch_linear(vs / format!("{modality}_rho") / "0", 256, 256),
        }
    }

    /// tokens [T, 256] → [256].
    pub(crate) fn forward(&self, tokens: &Tensor, train: bool) -> Tensor {
        let h = self.transformer.forward(tokens, train);
        let weights = self.attention.weights(&h, train); // [1, T]
        weights
            .matmul(&h)
            .get(0)
            .apply(&self.rho)
            .relu()
            .fast_dropout(DROPOUT, train)
    }
}

#[derive(Debug)]
struct Mcat {
    spec: ModelSpec,
    wsi_net: nn::Linear,
    signatures: SignatureNetworks,
    coattn: MultiheadAttention,
    path: TokenPooling,
    omic: TokenPooling,
    mm1: nn::Linear,
    mm2: nn::Linear,
    classifier: nn::Linear,
}

impl Mcat {
    fn new(vs: &nn::Path, spec: ModelSpec) -> Self {
        Self {
            wsi_net: torch_linear(vs / "wsi_net" / "0", spec.wsi_dim, 256),
            signatures: SignatureNetworks::new(vs / "sig_networks", &spec.genomic_groups),
            coattn: MultiheadAttention::new(vs / "coattn", 256, 1, 0.0),
            path: TokenPooling::new(vs, "path"),
            omic: TokenPooling::new(vs, "omic"),
            mm1: torch_linear(vs / "mm" / "0", 512, 256),
            mm2: torch_linear(vs / "mm" / "2", 256, 256),
            classifier: torch_linear(vs / "classifier", 256, 4),
            spec,
        }
    }
}

impl SurvivalModel for Mcat {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn forward_pass(&self, inputs: &Inputs, _segments: (i64, i64), pass: Pass) -> Output {
        let train = pass.dropout;
        let bag = inputs.wsi.as_ref().expect("WSI inputs");
        let groups = inputs.genomics.as_ref().expect("genomic inputs");
        let h_path = bag.apply(&self.wsi_net).relu().fast_dropout(DROPOUT, train);
        let h_omic = self.signatures.forward(groups, train);
        // Genomic tokens query the patches.
        let (h_coattn, _) = self.coattn.forward(&h_omic, &h_path, &h_path, train);
        let path = self.path.forward(&h_coattn, train);
        let omic = self.omic.forward(&h_omic, train);
        let fused = Tensor::cat(&[path, omic], 0)
            .apply(&self.mm1)
            .relu()
            .apply(&self.mm2)
            .relu();
        Output::from_logits(fused.apply(&self.classifier))
    }
}
