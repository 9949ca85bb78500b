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
        let mixed = if l == 1 && padded > n {
            few_tokens::attend(&q, &k, &v, n, self.pinv_iterations)
        } else {
            attend(&q, &k, &v, m, self.pinv_iterations)
        };
        let out = mixed + v.apply(&self.res_conv);
        let out = out.transpose(1, 2).reshape([b, padded, dim]);
        // On every padded position too, so dropout draws the same mask as the reference.
        let out = out.apply(&self.to_out).dropout(self.dropout, train);
        out.narrow(1, padded - n, n)
    }
}

/// attn1 · pinv(attn2) · (attn3 · v) for q, k, v [B, H, l·m, dh], landmarks the means of l
/// consecutive tokens (padding included, divisor l).
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, m: i64, iterations: usize) -> Tensor {
    let size = q.size();
    let (b, h, padded, dh) = (size[0], size[1], size[2], size[3]);
    let l = padded / m;
    let landmark =
        |t: &Tensor| t.view([b, h, m, l, dh]).sum_dim_intlist(3, false, t.kind()) / l as f64;
    let (q_l, k_l) = (landmark(q), landmark(k));
    let attn1 = q.matmul(&k_l.transpose(-1, -2)).softmax(-1, q.kind());
    let attn2 = q_l.matmul(&k_l.transpose(-1, -2)).softmax(-1, q.kind());
    let attn3 = q_l.matmul(&k.transpose(-1, -2)).softmax(-1, q.kind());
    let attn2_inv = iterative_pinv(&attn2, iterations);
    attn1.matmul(&attn2_inv).matmul(&attn3.matmul(v))
}

/// Nyström attention over fewer tokens than landmarks (the genomic and MRI token sequences, the
/// smallest bags), computed without its m x m matrices. With n < m real tokens the reference
/// pads m − n = p zero rows at the front; `to_qkv` has no bias, so their q, k and v are exactly
/// zero, each landmark is one token (l = 1), and the three attention maps are one matrix A whose
/// p padded rows are uniform (1/m) and whose real rows are constant across the padded columns.
/// Every matrix the pseudo-inverse iteration builds from A keeps that form,
/// `[[α J + β I, 1 cᵀ], [d 1ᵀ, E]]` (J the p x p ones), so it is carried as (α, β, c, d, E)
/// with E n x n: the same function and gradient, its padded blocks summed in closed form
/// instead of term by term (a float rounding difference), at O(n²) instead of O(m³).
mod few_tokens {
    use tch::Tensor;

    /// `[[α J + β I, 1 cᵀ], [d 1ᵀ, E]]` over [B, H]: α, β [B, H, 1, 1], c [B, H, 1, n] (the
    /// padded rows' real columns), d [B, H, n, 1] (the real rows' padded columns), E [B, H, n, n].
    struct Blocks {
        alpha: Tensor,
        beta: Tensor,
        c: Tensor,
        d: Tensor,
        e: Tensor,
        /// Padded positions p.
        p: f64,
    }

    impl Blocks {
        fn product(&self, y: &Blocks) -> Blocks {
            let p = self.p;
            let x = self;
            let alpha = &x.alpha * &y.alpha * p
                + &x.alpha * &y.beta
                + &x.beta * &y.alpha
                + x.c.matmul(&y.d);
            let c = (&x.alpha * p + &x.beta) * &y.c + x.c.matmul(&y.e);
            let d = (&y.alpha * p + &y.beta) * &x.d + x.e.matmul(&y.d);
            let e = x.d.matmul(&y.c) * p + x.e.matmul(&y.e);
            Blocks {
                alpha,
                beta: &x.beta * &y.beta,
                c,
                d,
                e,
                p,
            }
        }

        /// λ I − self.
        fn subtracted_from_identity(&self, lambda: f64) -> Blocks {
            let n = self.e.size()[self.e.dim() - 1];
            let eye = Tensor::eye(n, (self.e.kind(), self.e.device()));
            Blocks {
                alpha: -&self.alpha,
                beta: -&self.beta + lambda,
                c: -&self.c,
                d: -&self.d,
                e: eye * lambda - &self.e,
                p: self.p,
            }
        }

        fn scaled(&self, s: &Tensor) -> Blocks {
            Blocks {
                alpha: &self.alpha * s,
                beta: &self.beta * s,
                c: &self.c * s,
                d: &self.d * s,
                e: &self.e * s,
                p: self.p,
            }
        }

        fn transposed(&self) -> Blocks {
            Blocks {
                alpha: self.alpha.shallow_clone(),
                beta: self.beta.shallow_clone(),
                c: self.d.transpose(-1, -2),
                d: self.c.transpose(-1, -2),
                e: self.e.transpose(-1, -2),
                p: self.p,
            }
        }

        /// The largest absolute row sum and the largest absolute column sum over the whole batch.
        fn abs_sum_maxima(&self) -> (Tensor, Tensor) {
            let kind = self.e.kind();
            let p = self.p;
            let diagonal = (&self.alpha + &self.beta).abs();
            let padded_part = self.alpha.abs() * (p - 1.0) + diagonal;
            let abs_e = self.e.abs();
            // Rows: padded rows, then real rows.
            let padded_row = &padded_part + self.c.abs().sum_dim_intlist(-1, true, kind);
            let real_rows = self.d.abs() * p + abs_e.sum_dim_intlist(-1, true, kind);
            let padded_col = &padded_part + self.d.abs().sum_dim_intlist(-2, true, kind);
            let real_cols = self.c.abs() * p + abs_e.sum_dim_intlist(-2, true, kind);
            let rows = padded_row.max().maximum(&real_rows.max());
            let cols = padded_col.max().maximum(&real_cols.max());
            (rows, cols)
        }

        /// self · [1 v_pᵀ; V] for values constant over the padded rows (v_p [B, H, 1, dh]).
        fn apply(&self, v_p: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
            let p = self.p;
            let top = (&self.alpha * p + &self.beta) * v_p + self.c.matmul(v);
            let bottom = self.d.matmul(v_p) * p + self.e.matmul(v);
            (top, bottom)
        }
    }

    /// `iterative_pinv` in block form (same iteration, same whole-batch initial scale).
    fn pinv(x: &Blocks, iterations: usize) -> Blocks {
        let (rows, cols) = x.abs_sum_maxima();
        let mut z = x.transposed().scaled(&(rows * cols).reciprocal());
        let quarter = Tensor::from(0.25)
            .to_kind(x.e.kind())
            .to_device(x.e.device());
        for _ in 0..iterations {
            let xz = x.product(&z);
            let inner = xz.subtracted_from_identity(7.0);
            let inner = xz.product(&inner).subtracted_from_identity(15.0);
            let inner = xz.product(&inner).subtracted_from_identity(13.0);
            z = z.product(&inner).scaled(&quarter);
        }
        z
    }

    /// attn1 · pinv(attn2) · (attn3 · v) for q, k, v [B, H, m, dh] whose first m − n rows are
    /// zero; returns [B, H, m, dh].
    pub(super) fn attend(q: &Tensor, k: &Tensor, v: &Tensor, n: i64, iterations: usize) -> Tensor {
        let size = q.size();
        let (b, h, m, dh) = (size[0], size[1], size[2], size[3]);
        let p = (m - n) as f64;
        let real = |t: &Tensor| t.narrow(2, m - n, n);
        let (q, k, v) = (real(q), real(k), real(v));
        let kind = q.kind();
        let opts = (kind, q.device());
        // Softmax of each real row [0 (p times), q_i · k_j]: max-shifted as softmax is.
        let logits = q.matmul(&k.transpose(-1, -2));
        let shift = logits.amax(-1, true).clamp_min(0.0).detach();
        let e = (&logits - &shift).exp();
        let e0 = (-&shift).exp();
        let total = &e0 * p + e.sum_dim_intlist(-1, true, kind);
        let uniform = 1.0 / m as f64;
        let a = Blocks {
            alpha: Tensor::full([b, h, 1, 1], uniform, opts),
            beta: Tensor::zeros([b, h, 1, 1], opts),
            c: Tensor::full([b, h, 1, n], uniform, opts),
            d: &e0 / &total,
            e: e / total,
            p,
        };
        let z = pinv(&a, iterations);
        let zero = Tensor::zeros([b, h, 1, dh], opts);
        let (top, bottom) = a.apply(&zero, &v);
        let (top, bottom) = z.apply(&top, &bottom);
        let (top, bottom) = a.apply(&top, &bottom);
        Tensor::cat(&[top.expand([b, h, m - n, dh], false), bottom], 2)
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

    /// The block form equals the dense computation in float64, value and gradient, for token
    /// counts from 1 to m − 1 (and the pseudo-inverse's whole-batch scale over two heads).
    #[test]
    fn few_tokens_in_block_form_equal_the_dense_attention() {
        tch::manual_seed(2);
        let opts = (Kind::Double, tch::Device::Cpu);
        let (m, dh) = (16, 4);
        for n in [1, 2, 7, 15] {
            let real =
                |scale: f64| (Tensor::randn([1, 2, n, dh], opts) * scale).set_requires_grad(true);
            let (q, k, v) = (real(1.5), real(1.5), real(1.0));
            let pad = |t: &Tensor| {
                Tensor::cat(
                    &[Tensor::zeros([1, 2, m - n, dh], opts), t.shallow_clone()],
                    2,
                )
            };
            let dense = attend(&pad(&q), &pad(&k), &pad(&v), m, 6);
            let blocks = few_tokens::attend(&pad(&q), &pad(&k), &pad(&v), n, 6);
            let error = (&dense - &blocks).abs().max().double_value(&[]);
            assert!(error < 1e-12, "n = {n}: value error {error}");
            let probe = Tensor::randn([1, 2, m, dh], opts);
            let grads = |out: &Tensor| {
                Tensor::run_backward(
                    &[(out * &probe).sum(Kind::Double)],
                    &[&q, &k, &v],
                    false,
                    false,
                )
            };
            for (a, b) in grads(&dense).iter().zip(grads(&blocks).iter()) {
                let error = (a - b).abs().max().double_value(&[]);
                let scale = a.abs().max().double_value(&[]);
                assert!(
                    error < 1e-10 * scale.max(1.0),
                    "n = {n}: gradient error {error} of {scale}"
                );
            }
        }
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
