//! Adam with coupled L2 weight decay, as `torch.optim.Adam(weight_decay=…)`: parameters that
//! took no part in a step (undefined gradient) are skipped, moments included. Its state is
//! plain tensors so a checkpoint can hold it and a resumed fit continues exactly.

use tch::{Kind, Tensor};

pub struct Adam {
    pub lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// Steps taken, per parameter (torch keeps one count per parameter).
    pub steps: Vec<i64>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

impl Adam {
    pub fn new(params: &[Tensor], lr: f64, weight_decay: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            steps: vec![0; params.len()],
            m: params.iter().map(Tensor::zeros_like).collect(),
            v: params.iter().map(Tensor::zeros_like).collect(),
        }
    }

    /// One update with `grads[i]` for `params[i]` (undefined = not used this step).
    pub fn step(&mut self, params: &[Tensor], grads: &[Tensor]) {
        tch::no_grad(|| {
            for (i, (p, g)) in params.iter().zip(grads).enumerate() {
                if !g.defined() {
                    continue;
                }
                self.steps[i] += 1;
                let t = self.steps[i] as i32;
                // In place, in torch's order of operations.
                let g = if self.weight_decay != 0.0 {
                    g + p * self.weight_decay
                } else {
                    g.shallow_clone()
                };
                let _ = self.m[i]
                    .g_mul_scalar_(self.beta1)
                    .g_add_(&(&g * (1.0 - self.beta1)));
                let _ = self.v[i]
                    .g_mul_scalar_(self.beta2)
                    .addcmul_(&g, &g.g_mul_scalar(1.0 - self.beta2));
                let bias1 = 1.0 - self.beta1.powi(t);
                let bias2 = 1.0 - self.beta2.powi(t);
                let mut denom = self.v[i].sqrt();
                let _ = denom.g_div_scalar_(bias2.sqrt()).g_add_scalar_(self.eps);
                let mut p = p.shallow_clone();
                let _ = p.addcdiv_(&self.m[i], &denom.g_mul_scalar(-bias1 / self.lr));
            }
        });
    }

    /// The step counts as a tensor, for checkpoints.
    pub fn steps_tensor(&self) -> Tensor {
        Tensor::from_slice(&self.steps).to_kind(Kind::Int64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_torch_adam_by_hand() {
        // One parameter p = 1, gradient 0.5, lr 0.1, wd 0.01: g = 0.51; m = 0.051; v = 0.00026010;
        // m̂ = 0.51, v̂ = 0.2601, step = 0.1 · 0.51 / (0.51 + 1e-8).
        let p = Tensor::from_slice(&[1.0f64]).set_requires_grad(true);
        let mut adam = Adam::new(std::slice::from_ref(&p), 0.1, 0.01);
        adam.step(std::slice::from_ref(&p), &[Tensor::from_slice(&[0.5f64])]);
        let expected = 1.0 - 0.1 * 0.51 / (0.51 + 1e-8);
        assert!((p.double_value(&[0]) - expected).abs() < 1e-12);
        // An undefined gradient leaves the parameter and its count alone.
        adam.step(std::slice::from_ref(&p), &[Tensor::new()]);
        assert!((p.double_value(&[0]) - expected).abs() < 1e-12);
        assert_eq!(adam.steps, vec![1]);
    }
}
