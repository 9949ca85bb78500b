//! The attention blocks of the MCAT family (BASELINES 1.6): torch's `nn.MultiheadAttention`
//! (and MCAT's vendored copy, the same math and names), the post-norm
//! `nn.TransformerEncoderLayer` MCAT builds (d 256, 8 heads, feed-forward 512, ReLU, dropout
//! 0.25, sequence-first), and the gated attention pooling `Attn_Net_Gated`. Batch size is one
//! throughout: sequences are [S, E].

use tch::nn::{self, Init};
use tch::Tensor;

use super::init;
use crate::model::dropout::FastDropout;

/// `nn.MultiheadAttention(embed, heads)`: `in_proj_weight [3E, E]`, `in_proj_bias [3E]`,
/// `out_proj`; initialised as torch does (xavier-uniform in-projection, zero biases).
#[derive(Debug)]
pub struct MultiheadAttention {
    heads: i64,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: nn::Linear,
    /// Dropout on the attention weights (torch's `dropout` argument).
    dropout: f64,
}

impl MultiheadAttention {
    pub fn new(vs: nn::Path, embed: i64, heads: i64, dropout: f64) -> Self {
        let bound = (6.0 / (embed + 3 * embed) as f64).sqrt();
        let mut out_proj = init::torch_linear(&vs / "out_proj", embed, embed);
        // MultiheadAttention._reset_parameters zeroes out_proj's bias.
        if let Some(bias) = out_proj.bs.as_mut() {
            tch::no_grad(|| {
                let _ = bias.zero_();
            });
        }
        Self {
            heads,
            in_proj_weight: vs.var(
                "in_proj_weight",
                &[3 * embed, embed],
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            ),
            in_proj_bias: vs.var("in_proj_bias", &[3 * embed], Init::Const(0.0)),
            out_proj,
            dropout,
        }
    }

    /// query [L, E], key and value [S, E] → ([L, E], attention weights [heads, L, S]).
    pub fn forward(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        train: bool,
    ) -> (Tensor, Tensor) {
        let embed = self.in_proj_weight.size()[1];
        let head_dim = embed / self.heads;
        let w = self.in_proj_weight.chunk(3, 0);
        let b = self.in_proj_bias.chunk(3, 0);
        // [S, E] → [heads, S, head_dim]
        let split = |x: &Tensor, k: usize| {
            let s = x.size()[0];
            x.linear(&w[k], Some(&b[k]))
                .view([s, self.heads, head_dim])
                .transpose(0, 1)
        };
        let (q, k, v) = (split(query, 0), split(key, 1), split(value, 2));
        let q = q * (head_dim as f64).powf(-0.5);
        let weights = q
            .matmul(&k.transpose(-2, -1))
            .softmax(-1, q.kind())
            .fast_dropout(self.dropout, train);
        let l = query.size()[0];
        let out = weights
            .matmul(&v)
            .transpose(0, 1)
            .reshape([l, embed])
            .apply(&self.out_proj);
        (out, weights)
    }
}

/// `nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation='relu')`,
/// post-norm: x = norm1(x + drop(attn(x))); x = norm2(x + drop(linear2(drop(relu(linear1 x)))).
#[derive(Debug)]
pub struct TransformerEncoderLayer {
    self_attn: MultiheadAttention,
    linear1: nn::Linear,
    linear2: nn::Linear,
    norm1: nn::LayerNorm,
    norm2: nn::LayerNorm,
    dropout: f64,
}

impl TransformerEncoderLayer {
    pub fn new(vs: nn::Path, dim: i64, heads: i64, feedforward: i64, dropout: f64) -> Self {
        Self {
            self_attn: MultiheadAttention::new(&vs / "self_attn", dim, heads, dropout),
            linear1: init::torch_linear(&vs / "linear1", dim, feedforward),
            linear2: init::torch_linear(&vs / "linear2", feedforward, dim),
            norm1: nn::layer_norm(&vs / "norm1", vec![dim], Default::default()),
            norm2: nn::layer_norm(&vs / "norm2", vec![dim], Default::default()),
            dropout,
        }
    }

    /// x [S, E] → [S, E].
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let (attended, _) = self.self_attn.forward(x, x, x, train);
        let x = (x + attended.fast_dropout(self.dropout, train)).apply(&self.norm1);
        let ff = x
            .apply(&self.linear1)
            .relu()
            .fast_dropout(self.dropout, train)
            .apply(&self.linear2);
        (&x + ff.fast_dropout(self.dropout, train)).apply(&self.norm2)
    }
}

/// `nn.TransformerEncoder(layer, num_layers)`: `layers.<k>.*`.
#[derive(Debug)]
pub struct TransformerEncoder(Vec<TransformerEncoderLayer>);

impl TransformerEncoder {
    /// MCAT's: 2 layers of d 256, 8 heads, feed-forward 512, dropout 0.25.
    pub fn mcat(vs: nn::Path) -> Self {
        Self(
            (0..2)
                .map(|k| TransformerEncoderLayer::new(&vs / "layers" / k, 256, 8, 512, 0.25))
                .collect(),
        )
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.0
            .iter()
            .fold(x.shallow_clone(), |x, layer| layer.forward(&x, train))
    }
}

/// `Attn_Net_Gated(L, D, dropout, n_classes=K)`: attention_a = [Linear(L, D), Tanh, Dropout?],
/// attention_b = [Linear(L, D), Sigmoid, Dropout?], attention_c = Linear(D, K); scores
/// attention_c(a ⊙ b).
#[derive(Debug)]
pub struct GatedAttention {
    a: nn::Linear,
    b: nn::Linear,
    c: nn::Linear,
    /// Dropout(0.25) after each gate branch when built with `dropout=True`.
    dropout: Option<f64>,
}

impl GatedAttention {
    /// `make`: how the family initialises a Linear (torch's default, or xavier-normal where
    /// the model runs `initialize_weights`).
    pub fn new(
        vs: nn::Path,
        input: i64,
        hidden: i64,
        outputs: i64,
        dropout: Option<f64>,
        make: fn(nn::Path, i64, i64) -> nn::Linear,
    ) -> Self {
        Self {
            a: make(&vs / "attention_a" / "0", input, hidden),
            b: make(&vs / "attention_b" / "0", input, hidden),
            c: make(&vs / "attention_c", hidden, outputs),
            dropout,
        }
    }

    /// h [N, L] → raw scores [N, K] (before the softmax over N).
    pub fn scores(&self, h: &Tensor, train: bool) -> Tensor {
        let drop = |t: Tensor| match self.dropout {
            Some(p) => t.fast_dropout(p, train),
            None => t,
        };
        let a = drop(h.apply(&self.a).tanh());
        let b = drop(h.apply(&self.b).sigmoid());
        (a * b).apply(&self.c)
    }

    /// Softmax over the N instances of each of the K score columns: [K, N].
    pub fn weights(&self, h: &Tensor, train: bool) -> Tensor {
        let scores = self.scores(h, train);
        scores.transpose(0, 1).softmax(-1, scores.kind())
    }
}
