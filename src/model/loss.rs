//! Losses (MODEL_SPEC 4): survival NLL over the discrete hazards, the decoupling loss with its
//! push/pull pairs, and (in moe.rs) the load balance.

use serde::{Deserialize, Serialize};
use tch::Tensor;

/// MCAT's NLL with α = 0: −(1−c)[log S_{y−1} + log h_y] − c·log S_y, S_{−1} = 1, each term
/// clamped at 1e-7 before the log.
pub fn nll_survival(hazards: &Tensor, survival: &Tensor, bin: i64, censored: bool) -> Tensor {
    let eps = 1e-7;
    let one = Tensor::ones([1], (hazards.kind(), hazards.device()));
    let padded = Tensor::cat(&[one, survival.shallow_clone()], 0); // S_{-1}, S_0, …
    if censored {
        -padded.get(bin + 1).clamp_min(eps).log()
    } else {
        -(padded.get(bin).clamp_min(eps).log() + hazards.get(bin).clamp_min(eps).log())
    }
}

/// How two representations are compared by the decoupling loss (ablation Table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distance {
    Cos,
    Mse,
    L1,
    Kl,
}

/// Cosine similarity of two flattened vectors with each norm clamped at 1e-8 (PyTorch 2.x).
pub fn cosine(a: &Tensor, b: &Tensor) -> Tensor {
    let eps = 1e-8;
    let na = a.norm().clamp_min(eps);
    let nb = b.norm().clamp_min(eps);
    (a * b).sum(a.kind()) / (na * nb)
}

impl Distance {
    /// "Keep closer" term.
    pub fn pull(self, a: &Tensor, b: &Tensor) -> Tensor {
        match self {
            Self::Cos => 1.0 - cosine(a, b),
            Self::Mse => (a - b).square().mean(a.kind()),
            Self::L1 => (a - b).abs().mean(a.kind()),
            Self::Kl => {
                let log_p = a.log_softmax(-1, a.kind());
                let log_q = b.log_softmax(-1, b.kind());
                (log_p.exp() * (&log_p - log_q)).sum(a.kind())
            }
        }
    }

    /// "Push apart" term: +cos for the cosine (minimised toward −1, so orthogonal for the
    /// non-negative ReLU outputs), 1/(d + 1e-6) for the distances.
    pub fn push(self, a: &Tensor, b: &Tensor) -> Tensor {
        match self {
            Self::Cos => cosine(a, b),
            _ => 1.0 / (self.pull(a, b) + 1e-6),
        }
    }
}

/// The five decoupling terms (MODEL_SPEC 4.2): push (r_1, s_1), (r_P, s_P), (r_F, s_F); pull
/// (r_F, a_spec), (s_F, a_share).
#[derive(Debug)]
pub struct Decoupling {
    pub push_modality1: Tensor,
    pub push_wsi: Tensor,
    pub push_fusion: Tensor,
    pub pull_specific: Tensor,
    pub pull_shared: Tensor,
}

impl Decoupling {
    /// L_dec: the five terms, each with weight 1.
    pub fn total(&self) -> Tensor {
        &self.push_modality1
            + &self.push_wsi
            + &self.push_fusion
            + &self.pull_specific
            + &self.pull_shared
    }
}

#[allow(clippy::too_many_arguments)]
pub fn decoupling(
    d: Distance,
    routed_1: &Tensor,
    shared_1: &Tensor,
    routed_2: &Tensor,
    shared_2: &Tensor,
    routed_f: &Tensor,
    shared_f: &Tensor,
    align_spec: &Tensor,
    align_share: &Tensor,
) -> Decoupling {
    Decoupling {
        push_modality1: d.push(routed_1, shared_1),
        push_wsi: d.push(routed_2, shared_2),
        push_fusion: d.push(routed_f, shared_f),
        pull_specific: d.pull(routed_f, align_spec),
        pull_shared: d.pull(shared_f, align_share),
    }
}

/// Hazards h = σ(logits), survival S_k = Π_{j ≤ k}(1 − h_j), risk = −Σ S.
pub fn hazards_survival_risk(logits: &Tensor) -> (Tensor, Tensor, Tensor) {
    let hazards = logits.sigmoid();
    let survival = hazards.neg().g_add_scalar(1.0).cumprod(-1, logits.kind());
    let risk = -survival.sum(logits.kind());
    (hazards, survival, risk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f64]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn nll_by_hand() {
        let h = t(&[0.1, 0.2, 0.5, 0.9]);
        let s = t(&[0.9, 0.72, 0.36, 0.036]);
        // Event in bin 2: −log S_1 − log h_2 = −log .72 − log .5.
        let got = nll_survival(&h, &s, 2, false).double_value(&[]);
        assert!((got - (-(0.72f64).ln() - 0.5f64.ln())).abs() < 1e-12);
        // Event in bin 0: −log 1 − log h_0.
        let got = nll_survival(&h, &s, 0, false).double_value(&[]);
        assert!((got + 0.1f64.ln()).abs() < 1e-12);
        // Censored in bin 3: −log S_3.
        let got = nll_survival(&h, &s, 3, true).double_value(&[]);
        assert!((got + 0.036f64.ln()).abs() < 1e-12);
        // Clamp at 1e-7.
        let got = nll_survival(&t(&[0.0; 4]), &t(&[1.0; 4]), 1, false).double_value(&[]);
        assert!((got + 1e-7f64.ln()).abs() < 1e-9);
    }

    #[test]
    fn survival_and_risk_by_hand() {
        let (h, s, risk) = hazards_survival_risk(&t(&[0.0, 0.0, 0.0, 0.0]));
        assert_eq!(Vec::<f64>::try_from(h).unwrap(), vec![0.5; 4]);
        assert_eq!(
            Vec::<f64>::try_from(s).unwrap(),
            vec![0.5, 0.25, 0.125, 0.0625]
        );
        assert!((risk.double_value(&[]) + 0.9375).abs() < 1e-7);
    }

    #[test]
    fn distances_by_hand() {
        let a = t(&[1.0, 0.0]);
        let b = t(&[0.0, 2.0]);
        assert_eq!(cosine(&a, &b).double_value(&[]), 0.0);
        assert_eq!(Distance::Cos.pull(&a, &a).double_value(&[]), 0.0);
        assert!((Distance::Cos.push(&a, &t(&[3.0, 0.0])).double_value(&[]) - 1.0).abs() < 1e-12);
        // An all-zero vector (dead ReLU) has cosine 0 with anything.
        assert_eq!(cosine(&a, &t(&[0.0, 0.0])).double_value(&[]), 0.0);
        assert!((Distance::Mse.pull(&a, &b).double_value(&[]) - 2.5).abs() < 1e-12);
        assert!((Distance::L1.pull(&a, &b).double_value(&[]) - 1.5).abs() < 1e-12);
        assert!((Distance::Mse.push(&a, &b).double_value(&[]) - 1.0 / (2.5 + 1e-6)).abs() < 1e-12);
        // KL(softmax(a) ‖ softmax(a)) = 0.
        assert!(Distance::Kl.pull(&a, &a).double_value(&[]).abs() < 1e-12);
    }
}
