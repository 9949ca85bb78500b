//! Unbalanced entropic optimal transport as MOTCat solves it: POT 0.9.3's
//! `ot.unbalanced.sinkhorn_knopp_unbalanced(a, b, M, reg, reg_m)` with its defaults
//! (`reg_type="entropy"`, `numItermax=1000`, `stopThr=1e-6`, no warm start, u = v = 1), one
//! histogram. Iteration by iteration, with the torch operations POT's torch backend runs on
//! them, so that on the same libtorch float64 plans agree with POT's bit for bit (checked on
//! the fixture's `ot_solver` cases by a re-implementation in Python: 0.0 difference, same
//! iteration counts).
//!
//! POT ≥ 0.9.5 changed the default to `reg_type="kl"` (K multiplied by a ⊗ b); MOTCat pins
//! 0.9.3, whose `"entropy"` is what this computes.

use tch::{Device, Kind, Tensor};

/// POT's `numItermax` default.
pub const NUM_ITER_MAX: usize = 1000;
/// POT's `stopThr` default.
pub const STOP_THR: f64 = 1e-6;

/// What the solver returns.
#[derive(Debug)]
pub struct Transport {
    /// The plan `u[:, None] * K * v[None, :]` [n, m], in the cost's kind, without gradient.
    pub plan: Tensor,
    /// Iterations completed (POT's `len(log["err"])`).
    pub iterations: usize,
    /// The error of the last completed iteration (1 when none completed).
    pub last_err: f64,
    /// Whether it stopped on POT's numerical guard (a zero in Kᵀu, or a NaN/inf in u or v),
    /// returning the previous iteration's scalings.
    pub numerical_error: bool,
}

/// POT's `ot.unif(n)` as MOTCat uses it: `np.ones(n) / n` in float64.
pub fn uniform(n: i64, device: Device) -> Tensor {
    Tensor::ones([n], (Kind::Double, device)) / n as f64
}

/// `sinkhorn_knopp_unbalanced(a, b, cost, reg, reg_m)` for marginals a [n], b [m] and cost
/// [n, m] (MOTCat: all float64, cost in [0, 1]); `reg_m` is used for both marginals.
///
/// ```text
/// K = exp(-M / reg); fi = reg_m / (reg_m + reg); u = 1_n; v = 1_m
/// repeat at most 1000 times:
///     u' = u; v' = v
///     u = (a / (K v))^fi
///     Ktu = Kᵀ u
///     v = (b / Ktu)^fi
///     if any(Ktu == 0) or any NaN/inf in u or v: u = u'; v = v'; stop
///     err = 0.5 (max|u - u'| / max(max|u|, max|u'|, 1) + max|v - v'| / max(max|v|, max|v'|, 1))
///     if err < 1e-6: stop
/// plan = u[:, None] * K * v[None, :]
/// ```
pub fn sinkhorn_knopp_unbalanced(
    a: &Tensor,
    b: &Tensor,
    cost: &Tensor,
    reg: f64,
    reg_m: f64,
) -> Transport {
    tch::no_grad(|| {
        let cost = cost.detach();
        let size = cost.size();
        assert_eq!(size.len(), 2, "cost must be [n, m], got {size:?}");
        let (n, m) = (size[0], size[1]);
        assert_eq!(a.size(), vec![n], "a must be [{n}]");
        assert_eq!(b.size(), vec![m], "b must be [{m}]");
        let opts = (cost.kind(), cost.device());
        let k = (-&cost / reg).exp();
        let kt = k.transpose(0, 1);
        // reg_m = inf would give fi = 1 in POT; MOTCat passes a finite tau.
        let fi = if reg_m.is_infinite() {
            1.0
        } else {
            reg_m / (reg_m + reg)
        };
        let one = Tensor::ones([], opts);
        // max|new - old| / max(max|new|, max|old|, 1)
        let relative_change = |new: &Tensor, old: &Tensor| {
            let scale =
                Tensor::stack(&[new.abs().max(), old.abs().max(), one.shallow_clone()], 0).max();
            (new - old).abs().max() / scale
        };
        let mut u = Tensor::ones([n], opts);
        let mut v = Tensor::ones([m], opts);
        let mut iterations = 0;
        let mut last_err = 1.0;
        let mut numerical_error = false;
        for i in 0..NUM_ITER_MAX {
            let kv = k.matmul(&v);
            let u_next = (a / &kv).pow_tensor_scalar(fi);
            let ktu = kt.matmul(&u_next);
            let v_next = (b / &ktu).pow_tensor_scalar(fi);
            let bad = ktu
                .eq(0.0)
                .any()
                .logical_or(&u_next.isnan().any())
                .logical_or(&v_next.isnan().any())
                .logical_or(&u_next.isinf().any())
                .logical_or(&v_next.isinf().any());
            let err = (relative_change(&u_next, &u) + relative_change(&v_next, &v)) * 0.5;
            // One transfer per iteration for both decisions.
            let host = Tensor::stack(&[bad.to_kind(Kind::Double), err.to_kind(Kind::Double)], 0)
                .to_device(Device::Cpu);
            if host.double_value(&[0]) != 0.0 {
                // POT warns "Numerical errors at iteration i" and keeps the previous u, v.
                numerical_error = true;
                break;
            }
            u = u_next;
            v = v_next;
            iterations = i + 1;
            last_err = host.double_value(&[1]);
            if last_err < STOP_THR {
                break;
            }
        }
        let plan = u.unsqueeze(1) * &k * v.unsqueeze(0);
        Transport {
            plan,
            iterations,
            last_err,
            numerical_error,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small unbalanced problem against POT 0.9.3 itself (torch float64 inputs, same numbers:
    /// 63 iterations, plan mass 0.9163963513017579, smallest entry 1.5016e-9).
    #[test]
    fn converges_to_a_positive_plan_with_partial_mass() {
        let h = Tensor::from_slice(&[0.1, 0.7, 0.3, 0.9, 0.0, 0.5, 0.2, 0.4, 1.0, 0.6, 0.8, 0.35])
            .view([4, 3]);
        let cost = &h / &h.max();
        let (a, b) = (uniform(4, Device::Cpu), uniform(3, Device::Cpu));
        let t = sinkhorn_knopp_unbalanced(&a, &b, &cost, 0.05, 0.5);
        assert!(!t.numerical_error);
        assert_eq!(t.iterations, 63);
        assert!(t.last_err < STOP_THR);
        assert_eq!(t.plan.size(), vec![4, 3]);
        assert!(t.plan.min().double_value(&[]) > 0.0);
        let mass = t.plan.sum(Kind::Double).double_value(&[]);
        assert!(
            (mass - 0.916_396_351_301_757_9).abs() < 1e-12,
            "mass {mass}"
        );
        assert!(!t.plan.requires_grad());
    }

    #[test]
    fn infinite_marginal_penalty_is_balanced_sinkhorn() {
        let h = Tensor::from_slice(&[0.2, 0.9, 0.4, 0.1, 0.6, 0.3]).view([3, 2]);
        let cost = &h / &h.max();
        let (a, b) = (uniform(3, Device::Cpu), uniform(2, Device::Cpu));
        let t = sinkhorn_knopp_unbalanced(&a, &b, &cost, 0.1, f64::INFINITY);
        // fi = 1: after the last v-update the column sums are b exactly (to round-off); POT
        // 0.9.3 takes 22 iterations here.
        let cols = t.plan.sum_dim_intlist(0, false, Kind::Double);
        let diff = (&cols - &b).abs().max().double_value(&[]);
        assert!(diff < 1e-12, "column sums off by {diff}");
        assert_eq!(t.iterations, 22);
    }
}
