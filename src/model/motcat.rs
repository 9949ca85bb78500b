//! MOTCat: `MOTCAT_Surv` of Innse/MOTCat (`models/model_motcat.py`, `ot_impl='pot-uot-l2'`,
//! fusion `concat`, sizes `small`, dropout 0.25), genomics in the six signature groups. MCAT's
//! network (`mcat.rs`) with its co-attention replaced by `OT_Attn_assem`, which has no
//! parameters: the six genomic tokens take the patches through the transpose of an unbalanced
//! entropic optimal-transport plan (POT 0.9.3 `sinkhorn_knopp_unbalanced`, reg = `ot_reg`,
//! reg_m = `ot_tau`; `ot.rs`). The plan is computed from detached features and carries no
//! gradient. PyTorch's default initialisation (MOTCat runs no initialiser).

use tch::{nn, Kind, Tensor};

use super::init::torch_linear;
use super::mcat::{SignatureNetworks, TokenPooling};
use super::ot;
use super::registry::ModelEntry;
use super::{GenomicsInput, Inputs, ModelSpec, Output, Pass, SurvivalModel};
use crate::config::Modality;
use crate::model::dropout::FastDropout;

/// `model.architecture: motcat`.
pub static ENTRY: ModelEntry = ModelEntry {
    name: "motcat",
    official: "Innse/MOTCat models/model_motcat.py `MOTCAT_Surv` (pot-uot-l2, concat, small)",
    genomics: GenomicsInput::Groups,
    accepts,
    build: |vs, spec| Box::new(Motcat::new(vs, spec)),
};

fn accepts(modalities: &[Modality]) -> Result<(), String> {
    if modalities.len() == 2
        && modalities.contains(&Modality::Wsi)
        && modalities.contains(&Modality::Genomics)
    {
        Ok(())
    } else {
        Err("motcat takes wsi and genomics; set dataset.modalities: [genomics, wsi]".into())
    }
}

const DROPOUT: f64 = 0.25;
/// `--ot_reg` (entropic regularisation) of scripts/command.md for BLCA and LUAD; BRCA, UCEC and
/// GBMLGG use 0.1 (the argparse and class default).
pub const OT_REG: f64 = 0.05;
/// `--ot_tau` (the marginal KL penalty `reg_m`), 0.5 for every cancer type.
pub const OT_TAU: f64 = 0.5;

#[derive(Debug)]
pub(crate) struct Motcat {
    spec: ModelSpec,
    ot_reg: f64,
    ot_tau: f64,
    wsi_net: nn::Linear,
    signatures: SignatureNetworks,
    path: TokenPooling,
    omic: TokenPooling,
    mm1: nn::Linear,
    mm2: nn::Linear,
    classifier: nn::Linear,
}

impl Motcat {
    pub(crate) fn new(vs: &nn::Path, spec: ModelSpec) -> Self {
        Self::with_ot(vs, spec, OT_REG, OT_TAU)
    }

    /// Parameters in `MOTCAT_Surv.__init__`'s order (the OT block in between has none).
    pub(crate) fn with_ot(vs: &nn::Path, spec: ModelSpec, ot_reg: f64, ot_tau: f64) -> Self {
        Self {
            wsi_net: torch_linear(vs / "wsi_net" / "0", spec.wsi_dim, 256),
            signatures: SignatureNetworks::new(vs / "sig_networks", &spec.genomic_groups),
            path: TokenPooling::new(vs, "path"),
            omic: TokenPooling::new(vs, "omic"),
            mm1: torch_linear(vs / "mm" / "0", 512, 256),
            mm2: torch_linear(vs / "mm" / "2", 256, 256),
            classifier: torch_linear(vs / "classifier", 256, 4),
            ot_reg,
            ot_tau,
            spec,
        }
    }

    /// `OT_Attn_assem.forward` with `impl='pot-uot-l2'`: patches [N, 256] and genomic tokens
    /// [6, 256] → the plan π [N, 6] in the patches' kind, without gradient.
    ///
    /// Each token minus its own minimum over the 256 features; C = cdist(x, y)² (torch's default
    /// compute mode); M = C / max C in float64; a = 1/N, b = 1/6; π = the unbalanced Sinkhorn
    /// plan; cast back to the model's kind (`flow.type(torch.FloatTensor)` in the float32
    /// original). The official `dist = Σ C ⊙ π` is never used and not computed here.
    pub(crate) fn transport_plan(&self, patches: &Tensor, tokens: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let shift = |t: &Tensor| {
                let t = t.detach();
                let (min, _) = t.min_dim(-1, true);
                t - min
            };
            let (x, y) = (shift(patches), shift(tokens));
            let cost = Tensor::cdist(&x, &y, 2.0, None::<i64>).pow_tensor_scalar(2);
            let cost = (&cost / &cost.max()).to_kind(Kind::Double);
            let device = cost.device();
            let (n, m) = (x.size()[0], y.size()[0]);
            let a = ot::uniform(n, device);
            let b = ot::uniform(m, device);
            ot::sinkhorn_knopp_unbalanced(&a, &b, &cost, self.ot_reg, self.ot_tau)
                .plan
                .to_kind(patches.kind())
        })
    }
}

impl SurvivalModel for Motcat {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn forward_pass(&self, inputs: &Inputs, _segments: (i64, i64), pass: Pass) -> Output {
        let train = pass.dropout;
        let bag = inputs.wsi.as_ref().expect("WSI inputs");
        let groups = inputs.genomics.as_ref().expect("genomic inputs");
        // [N, 256]: the official bag is [N, 1, 256]; the OT squeezes it.
        let h_path = bag.apply(&self.wsi_net).relu().fast_dropout(DROPOUT, train);
        // [6, 256]
        let h_omic = self.signatures.forward(groups, train);
        // A_coattn = πᵀ [6, N], unnormalised; h = A_coattn · H_p: the only way gradient
        // reaches wsi_net.
        let plan = self.transport_plan(&h_path, &h_omic);
        let h_coattn = plan.transpose(0, 1).matmul(&h_path);
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn model(vs: &nn::VarStore) -> Motcat {
        let mut spec = ModelSpec::wsi_genomics(vec![5, 7, 3, 4, 6, 2], 256);
        spec.wsi_dim = 16;
        Motcat::new(&vs.root(), spec)
    }

    fn inputs(n: i64) -> Inputs {
        let opts = (Kind::Float, Device::Cpu);
        Inputs {
            wsi: Some(Tensor::randn([n, 16], opts)),
            genomics: Some(
                [5i64, 7, 3, 4, 6, 2]
                    .iter()
                    .map(|&d| Tensor::randn([d], opts))
                    .collect(),
            ),
            mri: None,
        }
    }

    #[test]
    fn parameters_are_mcats_without_the_coattention() {
        let _generator = crate::torch_rng::lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let _m = model(&vs);
        let names: Vec<String> = vs.variables().into_keys().collect();
        assert!(names.iter().all(|n| !n.starts_with("coattn")));
        assert!(names.iter().any(|n| n == "wsi_net.0.weight"));
        assert!(names
            .iter()
            .any(|n| n == "path_transformer.layers.1.norm2.bias"));
        assert!(names.iter().any(|n| n == "classifier.bias"));
    }

    #[test]
    fn forward_runs_one_patch_and_many_and_the_plan_has_no_gradient() {
        let _generator = crate::torch_rng::lock();
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = model(&vs);
        // One patch crashes the official code (squeeze); here it is a [1, 6] plan.
        for n in [1, 3, 40] {
            let x = inputs(n);
            let out = m.forward(&x, (1, 1), true);
            assert_eq!(out.logits.size(), vec![4]);
            assert!(out.risk.double_value(&[]).is_finite());
        }
        let x = inputs(30);
        let h_path = x.wsi.as_ref().unwrap().apply(&m.wsi_net).relu();
        let h_omic = m.signatures.forward(x.genomics.as_ref().unwrap(), false);
        let plan = m.transport_plan(&h_path, &h_omic);
        assert_eq!(plan.size(), vec![30, 6]);
        assert_eq!(plan.kind(), Kind::Float);
        assert!(!plan.requires_grad());
        // Invariant to the patches' order (no micro-batching): permuting rows permutes the plan.
        let perm = Tensor::randperm(30, (Kind::Int64, Device::Cpu));
        let permuted = m.transport_plan(&h_path.index_select(0, &perm), &h_omic);
        let diff = (permuted - plan.index_select(0, &perm))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-6, "plan not equivariant: {diff}");
    }
}
