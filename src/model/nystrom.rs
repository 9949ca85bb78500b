//! Nyström attention as lucidrains' `nystrom_attention`, which the HDMoE release copies
//! (MODEL_SPEC 2.3): zero padding at the front to a multiple of the landmark count, landmark
//! means, the 6-step iterative pseudo-inverse, a 33-tap depthwise residual convolution over the
//! values, and the last n positions kept. TransLayer = x + attention(LayerNorm(x)).

use tch::nn;
use tch::Tensor;

use super::init;

/// The iterative Moore–Penrose pseudo-inverse of a batch of square matrices (…, m, m).
/// The initial scale uses the maxima over the whole batch, as the reference does.
pub fn iterative_pinv(x: &Tensor, iterations: usize) -> Tensor {
    let abs = x.abs();
    let col = abs.sum_dim_intlist(-1, false, x.kind()).max();
    let row = abs.sum_dim_intlist(-2, false, x.kind()).max();
    let mut z = x.transpose(-1, -2) / (col * row);
    let m = x.size()[x.dim() - 1];
    let eye = Tensor::eye(m, (x.kind(), x.device()));
    for _ in 0..iterations {
        let xz = x.matmul(&z);
        let inner = &eye * 7.0 - &xz;
        let inner = &eye * 15.0 - xz.matmul(&inner);
        let inner = &eye * 13.0 - xz.matmul(&inner);
        z = z.matmul(&inner) * 0.25;
    }
    z
}

#[derive(Debug)]
pub struct NystromAttention {
    heads: i64,
    dim_head: i64,
    landmarks: i64,
    pinv_iterations: usize,
    to_qkv: nn::Linear,
    to_out: nn::Linear,
    res_conv: nn::Conv2D,
    dropout: f64,
}

impl NystromAttention {
    /// `dim` = heads × dim_head; landmarks = dim / 2 in the release.
    pub fn new(vs: nn::Path, dim: i64, heads: i64, landmarks: i64) -> Self {
        let dim_head = dim / heads;
        Self {
            heads,
            dim_head,
            landmarks,
            pinv_iterations: 6,
            to_qkv: init::xavier_linear(&vs / "to_qkv", dim, 3 * dim, false),
            // `to_out` is nn.Sequential(Linear, Dropout) in the release: the Linear is `to_out.0`.
            to_out: init::xavier_linear(&vs / "to_out" / "0", dim, dim, true),
            res_conv: init::torch_conv2d(
                &vs / "res_conv",
                heads,
                heads,
                [33, 1],
                [16, 0],
                heads,
                false,
            ),
            dropout: 0.1,
        }
    }

    /// x: [B, n, dim] → [B, n, dim].
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let (b, n, dim) = x.size3().expect("attention input is [B, n, dim]");
        let m = self.landmarks;
        let l = (n + m - 1) / m; // tokens per landmark (ceil)
        let padded = l * m;
        let x = if padded > n {
            // Zeros at the front, as the reference pads.
            Tensor::cat(
                &[
                    Tensor::zeros([b, padded - n, dim], (x.kind(), x.device())),
                    x.shallow_clone(),
                ],
                1,
            )
        } else {
            x.shallow_clone()
        };
        let heads = |t: Tensor| {
            t.view([b, padded, self.heads, self.dim_head])
                .transpose(1, 2)
        };
        let qkv = x.apply(&self.to_qkv).chunk(3, -1);
        let q = heads(qkv[0].shallow_clone()) * (self.dim_head as f64).powf(-0.5);
        let k = heads(qkv[1].shallow_clone());
        let v = heads(qkv[2].shallow_clone());
        // Landmarks: means of l consecutive tokens (padding included, divisor l).
        let landmark = |t: &Tensor| {
            t.view([b, self.heads, m, l, self.dim_head])
                .sum_dim_intlist(3, false, t.kind())
                / l as f64
        };
        let (q_l, k_l) = (landmark(&q), landmark(&k));
        let attn1 = q.matmul(&k_l.transpose(-1, -2)).softmax(-1, q.kind());
        let attn2 = q_l.matmul(&k_l.transpose(-1, -2)).softmax(-1, q.kind());
        let attn3 = q_l.matmul(&k.transpose(-1, -2)).softmax(-1, q.kind());
        let attn2_inv = iterative_pinv(&attn2, self.pinv_iterations);
        let out = attn1.matmul(&attn2_inv).matmul(&attn3.matmul(&v)) + v.apply(&self.res_conv);
        let out = out.transpose(1, 2).reshape([b, padded, dim]);
        let out = out.apply(&self.to_out).dropout(self.dropout, train);
        out.narrow(1, padded - n, n)
    }
}

#[derive(Debug)]
pub struct TransLayer {
    norm: nn::LayerNorm,
    attn: NystromAttention,
}

impl TransLayer {
    pub fn new(vs: nn::Path, dim: i64, heads: i64, landmarks: i64) -> Self {
        Self {
            norm: nn::layer_norm(&vs / "norm", vec![dim], Default::default()),
            attn: NystromAttention::new(&vs / "attn", dim, heads, landmarks),
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        x + self.attn.forward(&x.apply(&self.norm), train)
    }
}

/// PPEG: x + DWConv7(x) + DWConv5(x) + DWConv3(x) on the square token map; cls untouched.
#[derive(Debug)]
pub struct Ppeg {
    convs: Vec<nn::Conv2D>,
}

impl Ppeg {
    pub fn new(vs: nn::Path, dim: i64) -> Self {
        let conv = |name: &str, k: i64| {
            init::torch_conv2d(&vs / name, dim, dim, [k, k], [k / 2, k / 2], dim, true)
        };
        Self {
            convs: vec![conv("proj", 7), conv("proj1", 5), conv("proj2", 3)],
        }
    }

    /// x: [B, 1 + side², dim].
    pub fn forward(&self, x: &Tensor, side: i64) -> Tensor {
        let (b, _, dim) = x.size3().expect("PPEG input is [B, 1 + side², dim]");
        let cls = x.narrow(1, 0, 1);
        // Token t sits at row t / side, column t % side.
        let map = x
            .narrow(1, 1, side * side)
            .transpose(1, 2)
            .reshape([b, dim, side, side]);
        // Out of place: `map` is saved by the convolutions for their backward pass.
        let out = self
            .convs
            .iter()
            .fold(map.shallow_clone(), |acc, conv| acc + map.apply(conv));
        let tokens = out.flatten(2, -1).transpose(1, 2);
        Tensor::cat(&[cls, tokens], 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn iterative_pinv_approaches_the_exact_pseudo_inverse() {
        tch::manual_seed(0);
        // Row-stochastic matrices like attention maps (softmax rows), in float64.
        let x =
            Tensor::randn([3, 6, 6], (Kind::Double, tch::Device::Cpu)).softmax(-1, Kind::Double);
        let exact = x.linalg_pinv(1e-12, false);
        let approx = iterative_pinv(&x, 20);
        let error = (&approx - &exact).abs().max().double_value(&[]);
        assert!(error < 1e-8, "20 iterations: max error {error}");
        // The reference's 6 iterations already satisfy x z x ≈ x closely.
        let z6 = iterative_pinv(&x, 6);
        let residual = (x.matmul(&z6).matmul(&x) - &x)
            .abs()
            .max()
            .double_value(&[]);
        assert!(residual < 1e-2, "6 iterations: ‖xzx − x‖∞ = {residual}");
        // A rank-deficient case: identical rows (as the padded genomic sequence produces).
        let ones = Tensor::ones([1, 4, 4], (Kind::Double, tch::Device::Cpu)) / 4.0;
        let exact = ones.linalg_pinv(1e-12, false);
        let approx = iterative_pinv(&ones, 30);
        assert!((approx - exact).abs().max().double_value(&[]) < 1e-8);
    }

    #[test]
    fn attention_keeps_length_and_pads_at_the_front() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let attn = NystromAttention::new(vs.root(), 16, 2, 8);
        for n in [1, 7, 8, 9, 30] {
            let x = Tensor::randn([1, n, 16], (Kind::Float, tch::Device::Cpu));
            assert_eq!(attn.forward(&x, false).size(), vec![1, n, 16]);
        }
        let ppeg = Ppeg::new(vs.root() / "ppeg", 16);
        let x = Tensor::randn([1, 10, 16], (Kind::Float, tch::Device::Cpu));
        let y = ppeg.forward(&x, 3);
        assert_eq!(y.size(), vec![1, 10, 16]);
        // cls is passed through untouched.
        assert!(y.narrow(1, 0, 1).equal(&x.narrow(1, 0, 1)));
    }
}
