//! Nyström attention as lucidrains' `nystrom_attention`, which the HDMoE release copies
//! (MODEL_SPEC 2.3): zero padding at the front to a multiple of the landmark count, landmark
//! means, the 6-step iterative pseudo-inverse, a 33-tap depthwise residual convolution over the
//! values, and the last n positions kept. TransLayer = x + attention(LayerNorm(x)).

use tch::nn;
use tch::Tensor;

use super::init;
use crate::model::dropout::FastDropout;

/// The iterative Moore–Penrose pseudo-inverse of a batch of square matrices (…, m, m).
/// The initial scale uses the maxima over the whole batch, as the reference does.
pub fn iterative_pinv(x: &Tensor, iterations: usize) -> Tensor {
    let abs = x.abs();
    let col = abs.sum_dim_intlist(-1, false, x.kind()).max();
    let row = abs.sum_dim_intlist(-2, false, x.kind()).max();
    newton_schulz(x, x.transpose(-1, -2) / (col * row), iterations)
}

/// `iterative_pinv(x, iterations).matmul(w)` for a thin `w` (…, m, k), without forming the
/// pseudo-inverse: with P_j = x z_j, the iteration is z_{j+1} = ¼ z_j q_j, q_j = 13 I − P_j
/// (15 I − P_j (7 I − P_j)), and P_{j+1} = ¼ P_j q_j, so z_6 w = z_0 · ¼ q_0 ⋯ ¼ q_5 · w applied
/// right to left: three m x m products per iteration (the last two) instead of four, and seven
/// thin ones. The same function, rounded in another order.
pub fn pinv_times(x: &Tensor, w: &Tensor, iterations: usize) -> Tensor {
    let abs = x.abs();
    let col = abs.sum_dim_intlist(-1, false, x.kind()).max();
    let row = abs.sum_dim_intlist(-2, false, x.kind()).max();
    let z0 = x.transpose(-1, -2) / (col * row);
    let m = x.size()[x.dim() - 1];
    let eye = Tensor::eye(m, (x.kind(), x.device()));
    let (eye_7, eye_15, eye_13) = (&eye * 7.0, &eye * 15.0, &eye * 13.0);
    let mut p = x.matmul(&z0);
    let mut qs = Vec::with_capacity(iterations);
    for j in 0..iterations {
        let inner = &eye_15 - p.matmul(&(&eye_7 - &p));
        let q = &eye_13 - p.matmul(&inner);
        if j + 1 < iterations {
            p = p.matmul(&q) * 0.25;
        }
        qs.push(q);
    }
    let y = qs
        .iter()
        .rev()
        .fold(w.shallow_clone(), |y, q| q.matmul(&y) * 0.25);
    z0.matmul(&y)
}

/// The reference's iteration z ← ¼ z (13 I − x z (15 I − x z (7 I − x z))) from `z`.
fn newton_schulz(x: &Tensor, mut z: Tensor, iterations: usize) -> Tensor {
    let m = x.size()[x.dim() - 1];
    let eye = Tensor::eye(m, (x.kind(), x.device()));
    // The three multiples of I once, not three products per iteration (the same values).
    let (eye_7, eye_15, eye_13) = (&eye * 7.0, &eye * 15.0, &eye * 13.0);
    for _ in 0..iterations {
        let xz = x.matmul(&z);
        let inner = &eye_7 - &xz;
        let inner = &eye_15 - xz.matmul(&inner);
        let inner = &eye_13 - xz.matmul(&inner);
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
        let x = pad_front(x, padded);
        let heads = |t: Tensor| {
            t.view([b, padded, self.heads, self.dim_head])
                .transpose(1, 2)
        };
        let qkv = x.apply(&self.to_qkv).chunk(3, -1);
        let q = heads(qkv[0].shallow_clone()) * (self.dim_head as f64).powf(-0.5);
        let k = heads(qkv[1].shallow_clone());
        let v = heads(qkv[2].shallow_clone());
        let few = l == 1 && padded > n && !crate::kernels::reference();
        if few && b == 1 && (!train || self.masks_here(&x)) {
            // Fewer tokens than landmarks: only the real rows are kept, and v is zero on the
            // padded ones, so the value convolution is needed at the n real rows alone, from
            // those rows (a small Toeplitz product, not a oneDNN convolution over m rows). One
            // bag: the real rows are then the tail of the dropout's [1, m, dim].
            let mixed =
                few_tokens::attend(&q, &k, &v, n, self.pinv_iterations).narrow(2, padded - n, n);
            let conv = self.conv_rows(&v.narrow(2, padded - n, n), 0, n);
            let out = (mixed + conv).transpose(1, 2).reshape([b, n, dim]);
            let out = out.apply(&self.to_out);
            let before = (padded - n) as usize * dim as usize;
            if let Some(out) =
                crate::model::dropout::dropout_within(&out, self.dropout, train, before, 0)
            {
                return out;
            }
        }
        let mixed = if few {
            few_tokens::attend(&q, &k, &v, n, self.pinv_iterations)
        } else {
            attend(&q, &k, &v, m, self.pinv_iterations)
        };
        let conv = if crate::kernels::reference() {
            v.apply(&self.res_conv)
        } else {
            self.conv_banded(&v)
        };
        let out = mixed + conv;
        let out = out.transpose(1, 2).reshape([b, padded, dim]);
        // On every padded position too, so dropout draws the same mask as the reference.
        let out = out.apply(&self.to_out).fast_dropout(self.dropout, train);
        out.narrow(1, padded - n, n)
    }
}

impl NystromAttention {
    /// `forward(x, train)` at the first position only, [B, 1, dim], for a layer whose other
    /// outputs nobody reads (TransMIL's and Transformer_G's second layer feed only the cls
    /// token to the head). The keys and values are still needed at every position, but q only
    /// at the landmarks and at that position: `to_qkv` has no bias, so the landmark means of q
    /// are the projections of the landmark means of x (the same values, summed in another
    /// order); attn1, the value convolution, `to_out` and its dropout are computed for one
    /// row, and the dropout draws the generator as dropping out every row would (so every later
    /// draw is the reference's). Falls back to `forward` where that mask cannot be drawn alone,
    /// under the reference kernels, and for fewer tokens than landmarks.
    pub fn forward_first(&self, x: &Tensor, train: bool) -> Tensor {
        let (b, n, dim) = x.size3().expect("attention input is [B, n, dim]");
        let m = self.landmarks;
        let l = (n + m - 1) / m;
        let padded = l * m;
        let whole = || self.forward(x, train).narrow(1, 0, 1);
        if crate::kernels::reference()
            || (l == 1 && padded > n)
            || b != 1
            || (train && !self.masks_here(x))
        {
            return whole();
        }
        let x = pad_front(x, padded);
        let first = padded - n;
        let heads =
            |t: Tensor, rows: i64| t.view([b, rows, self.heads, self.dim_head]).transpose(1, 2);
        let w = &self.to_qkv.ws;
        let (w_q, w_kv) = (w.narrow(0, 0, dim), w.narrow(0, dim, 2 * dim));
        let kv = x.matmul(&w_kv.tr()).chunk(2, -1);
        let k = heads(kv[0].shallow_clone(), padded);
        let v = heads(kv[1].shallow_clone(), padded);
        let scale = (self.dim_head as f64).powf(-0.5);
        let x_l = x.view([b, m, l, dim]).sum_dim_intlist(2, false, x.kind()) / l as f64;
        let q_l = heads(x_l.matmul(&w_q.tr()), m) * scale;
        let q_first = heads(x.narrow(1, first, 1).matmul(&w_q.tr()), 1) * scale;
        let k_l = k
            .view([b, self.heads, m, l, self.dim_head])
            .sum_dim_intlist(3, false, k.kind())
            / l as f64;
        let attn1 = q_first.matmul(&k_l.transpose(-1, -2)).softmax(-1, x.kind());
        let attn2 = q_l.matmul(&k_l.transpose(-1, -2)).softmax(-1, x.kind());
        let attn3 = q_l.matmul(&k.transpose(-1, -2)).softmax(-1, x.kind());
        let mixed = attn1.matmul(&pinv_times(&attn2, &attn3.matmul(&v), self.pinv_iterations));
        // The 33-tap convolution at that row reads the rows within 16 of it (zeros beyond the
        // ends, as the full convolution's padding).
        let half = self.res_conv.ws.size()[2] / 2;
        let lo = (first - half).max(0);
        let hi = (first + half + 1).min(padded);
        let conv = self.conv_rows(&v.narrow(2, lo, hi - lo), first - lo, first - lo + 1);
        let out = (mixed + conv).transpose(1, 2).reshape([b, 1, dim]);
        let out = out.apply(&self.to_out);
        let row = dim as usize;
        let before = first as usize * row;
        let after = (padded - first - 1) as usize * row;
        match crate::model::dropout::dropout_within(&out, self.dropout, train, before, after) {
            Some(out) => out,
            None => whole(),
        }
    }
}

impl NystromAttention {
    /// Whether the dropout mask of part of the output can be drawn alone (in training, only on
    /// the CPU: CUDA's generator is not an engine this code runs).
    fn masks_here(&self, x: &Tensor) -> bool {
        x.device() == tch::Device::Cpu
            && matches!(x.kind(), tch::Kind::Float | tch::Kind::Double)
            && crate::model::dropout::exact_masks_available()
    }

    /// The whole value convolution of `v` [B, H, T, dh] as block-banded matrix products: in
    /// blocks of `BLOCK` rows, block i of the output is one [BLOCK, 3·BLOCK] Toeplitz matrix per
    /// head (the same for every block) times the rows of blocks i − 1, i and i + 1. About twice
    /// the convolution's multiply-adds, at matmul speed: oneDNN's depthwise 33 x 1 convolution
    /// (its weight gradient above all) ran at a few GFLOP/s.
    fn conv_banded(&self, v: &Tensor) -> Tensor {
        const BLOCK: i64 = 16;
        let size = v.size();
        let (b, heads, rows, dh) = (size[0], size[1], size[2], size[3]);
        let taps = self.res_conv.ws.size()[2];
        if taps / 2 > BLOCK || b != 1 {
            return v.apply(&self.res_conv);
        }
        let blocks = (rows + BLOCK - 1) / BLOCK;
        // One zero block before, the tail and one zero block after.
        let padded = v
            .get(0)
            .constant_pad_nd([0, 0, BLOCK, BLOCK + blocks * BLOCK - rows])
            .view([heads, blocks + 2, BLOCK, dh]);
        // [H, 3·BLOCK, blocks·dh]: for each block its three neighbourhoods' rows, stacked.
        let stacked = Tensor::cat(
            &(0..3)
                .map(|s| padded.narrow(1, s, blocks).transpose(1, 2))
                .collect::<Vec<_>>(),
            1,
        )
        .view([heads, 3 * BLOCK, blocks * dh]);
        // Output row r of a block reads stacked row j (block start − BLOCK + j) with tap
        // j − r − BLOCK + taps/2.
        let index: Vec<i64> = (0..BLOCK)
            .flat_map(|r| {
                (0..3 * BLOCK).map(move |j| {
                    let k = j - r - BLOCK + taps / 2;
                    if (0..taps).contains(&k) {
                        k
                    } else {
                        taps
                    }
                })
            })
            .collect();
        let toeplitz = self.toeplitz(&index, v).view([heads, BLOCK, 3 * BLOCK]);
        toeplitz
            .matmul(&stacked)
            .view([heads, BLOCK, blocks, dh])
            .transpose(1, 2)
            .reshape([1, heads, blocks * BLOCK, dh])
            .narrow(2, 0, rows)
    }

    /// The kernel's taps at `index` per head ([H, index.len()]), `taps` reading a zero.
    fn toeplitz(&self, index: &[i64], like: &Tensor) -> Tensor {
        let w = &self.res_conv.ws; // [H, 1, K, 1]
        let size = w.size();
        let (heads, taps) = (size[0], size[2]);
        let kernel = Tensor::cat(
            &[
                w.view([heads, taps]),
                Tensor::zeros([heads, 1], (w.kind(), w.device())),
            ],
            1,
        );
        kernel
            .index_select(1, &Tensor::from_slice(index).to_device(w.device()))
            .to_kind(like.kind())
    }

    /// The value convolution (`res_conv`: per head, 33 taps along the tokens, zero padding) of
    /// `v` [B, H, T, dh] at rows `start..end` only, as a Toeplitz matrix product: row i of the
    /// output is Σ_j w[h, j − i + 16] v[j] over the rows j of `v` within 16 of i. For a few rows
    /// this is a handful of small ops where oneDNN's convolution costs ~0.5 ms forward and
    /// backward however few the rows.
    fn conv_rows(&self, v: &Tensor, start: i64, end: i64) -> Tensor {
        let size = self.res_conv.ws.size();
        let (heads, taps) = (size[0], size[2]);
        let rows = v.size()[2];
        // Tap index per (output row, input row), `taps` (a zero appended to the kernel) where
        // the input row is out of reach.
        let index: Vec<i64> = (start..end)
            .flat_map(|i| {
                (0..rows).map(move |j| {
                    let k = j - i + taps / 2;
                    if (0..taps).contains(&k) {
                        k
                    } else {
                        taps
                    }
                })
            })
            .collect();
        let toeplitz = self.toeplitz(&index, v).view([1, heads, end - start, rows]);
        toeplitz.matmul(v)
    }
}

/// x [B, n, dim] with zero rows at the front up to `padded` rows, as the reference pads.
fn pad_front(x: &Tensor, padded: i64) -> Tensor {
    let (b, n, dim) = x.size3().expect("attention input is [B, n, dim]");
    if padded > n {
        Tensor::cat(
            &[
                Tensor::zeros([b, padded - n, dim], (x.kind(), x.device())),
                x.shallow_clone(),
            ],
            1,
        )
    } else {
        x.shallow_clone()
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
    if crate::kernels::reference() {
        let attn2_inv = iterative_pinv(&attn2, iterations);
        return attn1.matmul(&attn2_inv).matmul(&attn3.matmul(v));
    }
    // Right to left: pinv · (attn3 · v) is m x dh, so the n x m x m product of the reference's
    // (attn1 · pinv) · (attn3 · v) and its two backward products are never formed, nor the
    // pseudo-inverse itself (the same product, summed in another order).
    attn1.matmul(&pinv_times(&attn2, &attn3.matmul(v), iterations))
}

/// Nyström attention over fewer tokens than landmarks (the genomic and MRI token sequences, the
/// smallest bags), computed without its m x m matrices. With n < m real tokens the reference
/// pads p = m − n zero rows at the front; `to_qkv` has no bias, so their q, k and v are exactly
/// zero, each landmark is one token (l = 1), and the three attention maps are one matrix A whose
/// padded rows are uniform (1/m) and whose real rows are constant (d_i) across the padded
/// columns. Such a matrix, `[[α J + β I, 1 cᵀ], [d 1ᵀ, E]]` (J the p x p ones), acts on the
/// padded positions' zero-sum vectors as β I and on span(1_P/√p) ⊕ the real positions as the
/// (n+1) x (n+1) matrix `[[pα + β, √p cᵀ], [√p d, E]]`; products and transposes carry over, and
/// every iterate z of the pseudo-inverse has β = 0 (z₀ = Aᵀ/s does). So the iteration runs on
/// the small matrix, its initial scale taken from the full A's row and column sums: the same
/// function and gradient, the padded blocks summed in closed form (a rounding difference), at
/// O(n³) instead of O(m³) per product.
mod few_tokens {
    use tch::Tensor;

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
        // Softmax of each real row [0 (p times), q_i · k_j], max-shifted as softmax is (the
        // shift cancels in value and gradient).
        let logits = q.matmul(&k.transpose(-1, -2));
        let shift = logits.amax(-1, true).clamp_min(0.0).detach();
        let e = (&logits - &shift).exp();
        let e0 = (-&shift).exp();
        let total = &e0 * p + e.sum_dim_intlist(-1, true, kind);
        let d = &e0 / &total; // [B, H, n, 1]
        let e = e / total; // [B, H, n, n]
        let uniform = 1.0 / m as f64;
        let root_p = p.sqrt();
        let a = Tensor::cat(
            &[
                Tensor::cat(
                    &[
                        Tensor::full([b, h, 1, 1], p * uniform, opts),
                        Tensor::full([b, h, 1, n], root_p * uniform, opts),
                    ],
                    -1,
                ),
                Tensor::cat(&[&d * root_p, e.shallow_clone()], -1),
            ],
            -2,
        );
        // The full A's largest absolute row sum (padded rows sum to (p + n)/m) and column sum
        // (padded columns p/m + Σ d, real ones p/m + Σ_i E_ij), over the whole batch.
        let padded_row = Tensor::full([1], (p + n as f64) * uniform, opts);
        let real_rows = &d * p + e.sum_dim_intlist(-1, true, kind);
        let rows = padded_row.max().maximum(&real_rows.max());
        let cols = (Tensor::cat(
            &[
                d.sum_dim_intlist(-2, true, kind),
                e.sum_dim_intlist(-2, true, kind),
            ],
            -1,
        ) + p * uniform)
            .max();
        let z = super::newton_schulz(&a, a.transpose(-1, -2) / (rows * cols), iterations);
        // v is zero on the padded positions: its small form is [0; v].
        let av = a.narrow(-1, 1, n).matmul(&v);
        let out = a.matmul(&z.matmul(&av));
        let padded = (out.narrow(2, 0, 1) / root_p).expand([b, h, m - n, dh], false);
        Tensor::cat(&[padded, out.narrow(2, 1, n)], 2)
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

    /// `forward(x, train)` at the first position only, [B, 1, dim].
    pub fn forward_first(&self, x: &Tensor, train: bool) -> Tensor {
        x.narrow(1, 0, 1) + self.attn.forward_first(&x.apply(&self.norm), train)
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
        if crate::kernels::reference() {
            return self.forward_three(x, side);
        }
        let (b, _, dim) = x.size3().expect("PPEG input is [B, 1 + side², dim]");
        let cls = x.narrow(1, 0, 1);
        // Token t sits at row t / side, column t % side: the tokens [B, side², dim] are the map
        // in channels-last memory, so this view copies nothing.
        let map = x
            .narrow(1, 1, side * side)
            .reshape([b, side, side, dim])
            .permute([0, 3, 1, 2]);
        let out = map.conv2d(
            &self.merged_kernel(),
            Some(self.merged_bias()),
            [1, 1],
            [3, 3],
            [1, 1],
            dim,
        );
        // Channels-last out, channels-last in: back to tokens without a copy when oneDNN kept
        // the layout (reshape copies otherwise).
        let tokens = out.permute([0, 2, 3, 1]).reshape([b, side * side, dim]);
        Tensor::cat(&[cls, tokens], 1)
    }

    /// The three depthwise kernels (7, 5, 3, each centred by its padding) and the identity as
    /// one 7 x 7 depthwise kernel: the sum of the four maps is this one convolution (by
    /// linearity; rounding aside), a third of the work, and channels-last, whose depthwise
    /// backward oneDNN runs faster than the planar one.
    fn merged_kernel(&self) -> Tensor {
        let w = |i: usize| &self.convs[i].ws;
        let identity = Tensor::zeros_like(w(0));
        let _ = identity.narrow(2, 3, 1).narrow(3, 3, 1).fill_(1.0);
        let kernel = w(0) + w(1).constant_pad_nd([1, 1, 1, 1]) + w(2).constant_pad_nd([2, 2, 2, 2]);
        (kernel + identity)
            .permute([0, 2, 3, 1])
            .contiguous()
            .permute([0, 3, 1, 2])
    }

    fn merged_bias(&self) -> Tensor {
        let b = |i: usize| {
            self.convs[i]
                .bs
                .as_ref()
                .expect("PPEG convolutions have biases")
        };
        b(0) + b(1) + b(2)
    }

    /// The reference's form: x + DWConv7(x) + DWConv5(x) + DWConv3(x), planar.
    fn forward_three(&self, x: &Tensor, side: i64) -> Tensor {
        let (b, _, dim) = x.size3().expect("PPEG input is [B, 1 + side², dim]");
        let cls = x.narrow(1, 0, 1);
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
        let _generator = crate::torch_rng::lock();
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

    /// The pseudo-inverse applied without being formed equals the formed one applied, in
    /// float64: value and the gradients of both factors, over a batch (the whole-batch scale).
    #[test]
    fn pinv_times_equals_the_pseudo_inverse_times() {
        let _generator = crate::torch_rng::lock();
        tch::manual_seed(8);
        let opts = (Kind::Double, tch::Device::Cpu);
        let x = (Tensor::randn([2, 3, 12, 12], opts) * 2.0)
            .softmax(-1, Kind::Double)
            .set_requires_grad(true);
        let w = Tensor::randn([2, 3, 12, 5], opts).set_requires_grad(true);
        let probe = Tensor::randn([2, 3, 12, 5], opts);
        let run = |fused: bool| {
            let y = if fused {
                pinv_times(&x, &w, 6)
            } else {
                iterative_pinv(&x, 6).matmul(&w)
            };
            let g =
                Tensor::run_backward(&[(&y * &probe).sum(Kind::Double)], &[&x, &w], false, false);
            (y, g)
        };
        let (want, want_grads) = run(false);
        let (got, got_grads) = run(true);
        let scale = want.abs().max().double_value(&[]);
        assert!((&got - &want).abs().max().double_value(&[]) < 1e-12 * scale.max(1.0));
        for (g, w) in got_grads.iter().zip(&want_grads) {
            let scale = w.abs().max().double_value(&[]).max(1.0);
            let error = (g - w).abs().max().double_value(&[]);
            assert!(error < 1e-11 * scale, "gradient error {error} of {scale}");
        }
    }

    /// The block form equals the dense computation in float64, value and gradient, for token
    /// counts from 1 to m − 1 (and the pseudo-inverse's whole-batch scale over two heads).
    #[test]
    fn few_tokens_in_block_form_equal_the_dense_attention() {
        let _generator = crate::torch_rng::lock();
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

    /// The one merged channels-last convolution equals the three planar ones in float64:
    /// value, and the gradients of the input and of all six kernel and bias tensors.
    #[test]
    fn merged_ppeg_equals_the_three_convolutions() {
        let _generator = crate::torch_rng::lock();
        tch::manual_seed(5);
        let mut vs = nn::VarStore::new(tch::Device::Cpu);
        let ppeg = Ppeg::new(vs.root() / "ppeg", 6);
        vs.double();
        let params = vs.trainable_variables();
        let x =
            Tensor::randn([1, 1 + 25, 6], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
        let probe = Tensor::randn([1, 26, 6], (Kind::Double, tch::Device::Cpu));
        let run = |reference: bool| {
            let y = if reference {
                crate::kernels::with_reference(|| ppeg.forward(&x, 5))
            } else {
                ppeg.forward(&x, 5)
            };
            let inputs: Vec<&Tensor> = std::iter::once(&x).chain(params.iter()).collect();
            let grads =
                Tensor::run_backward(&[(&y * &probe).sum(Kind::Double)], &inputs, false, false);
            (y, grads)
        };
        let (want, want_grads) = run(true);
        let (got, got_grads) = run(false);
        assert!((&got - &want).abs().max().double_value(&[]) < 1e-12);
        assert_eq!(want_grads.len(), 7);
        for (g, w) in got_grads.iter().zip(&want_grads) {
            assert_eq!(g.size(), w.size());
            let error = (g - w).abs().max().double_value(&[]);
            assert!(error < 1e-11, "gradient error {error}");
        }
    }

    /// The first position alone (`forward_first`) and the whole layer (`forward`, with the
    /// few-token path and the value convolution at a few rows) equal the reference kernels'
    /// dense layer in float64: values, the gradients of the input and of every parameter, in
    /// training (the same dropout masks, the generator left in the same place) and in
    /// evaluation, for bags padded and not, with fewer tokens than landmarks and more.
    #[test]
    fn first_position_and_few_tokens_equal_the_reference_layer() {
        let _generator = crate::torch_rng::lock();
        tch::manual_seed(3);
        let mut vs = nn::VarStore::new(tch::Device::Cpu);
        let layer = TransLayer::new(vs.root() / "layer", 16, 2, 8);
        vs.double();
        let params = vs.trainable_variables();
        let opts = (Kind::Double, tch::Device::Cpu);
        for (n, train) in [
            (8, true),
            (9, true),
            (30, false),
            (100, true),
            (61, false),
            (1, true),
            (3, true),
            (7, false),
        ] {
            let x = Tensor::randn([1, n, 16], opts).set_requires_grad(true);
            let probe = Tensor::randn([1, n, 16], opts);
            // 0: ours at the first position; 1: ours whole; 2: the reference kernels' whole.
            let run = |way: usize| {
                tch::manual_seed(40 + n);
                let y = match way {
                    0 => layer.forward_first(&x, train),
                    1 => layer.forward(&x, train),
                    _ => crate::kernels::with_reference(|| layer.forward(&x, train)),
                };
                let after = Tensor::rand([4], opts);
                let p = probe.narrow(1, 0, y.size()[1]);
                let inputs: Vec<&Tensor> = std::iter::once(&x).chain(params.iter()).collect();
                let grads =
                    Tensor::run_backward(&[(&y * &p).sum(Kind::Double)], &inputs, false, false);
                (y, grads, after)
            };
            let (want, want_grads, want_after) = run(2);
            let (first, first_grads, first_after) = run(0);
            let (whole, whole_grads, whole_after) = run(1);
            assert_eq!(first.size(), vec![1, 1, 16]);
            let close = |a: &Tensor, b: &Tensor, what: &str| {
                let error = (a - b).abs().max().double_value(&[]);
                let scale = b.abs().max().double_value(&[]).max(1.0);
                assert!(error < 1e-11 * scale, "n = {n}: {what} error {error}");
            };
            close(&whole, &want, "whole layer's value");
            close(&first, &want.narrow(1, 0, 1), "first position's value");
            assert!(
                whole_after.equal(&want_after),
                "n = {n}: generator differs (whole)"
            );
            assert!(
                first_after.equal(&want_after),
                "n = {n}: generator differs (first)"
            );
            for (g, w) in whole_grads.iter().zip(&want_grads) {
                close(g, w, "whole layer's gradient");
            }
            // The first position's gradients against the reference's through that row alone.
            let (_, want_first_grads, _) = {
                tch::manual_seed(40 + n);
                let y = crate::kernels::with_reference(|| layer.forward(&x, train)).narrow(1, 0, 1);
                let after = Tensor::rand([4], opts);
                let inputs: Vec<&Tensor> = std::iter::once(&x).chain(params.iter()).collect();
                let p = probe.narrow(1, 0, 1);
                let grads =
                    Tensor::run_backward(&[(&y * &p).sum(Kind::Double)], &inputs, false, false);
                (y, grads, after)
            };
            for (g, w) in first_grads.iter().zip(&want_first_grads) {
                close(g, w, "first position's gradient");
            }
            // Some gradient reached the query weights through the landmarks.
            assert!(first_grads[1].abs().max().double_value(&[]) > 0.0);
        }
    }

    #[test]
    fn attention_keeps_length_and_pads_at_the_front() {
        let _generator = crate::torch_rng::lock();
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
