//! The mixture of experts and the random feature recombination (MODEL_SPEC 3.1–3.7).

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;

use super::init;
use crate::model::dropout::FastDropout;

/// What happens to the routed experts that no token of a forward pass chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnchosenExperts {
    /// The release: every expert runs, the unchosen ones on an empty batch, so they are in the
    /// graph with zero gradients and Adam's coupled L2 still steps them (their weights decay).
    Step,
    /// Left out of the graph: no gradient, no optimiser step (frozen until chosen).
    Freeze,
}

/// Expert FFN: Linear(in→hidden) → ReLU → Dropout(0.1) → Linear(hidden→out) → ReLU.
#[derive(Debug)]
struct Expert {
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl Expert {
    fn new(vs: nn::Path, input: i64, hidden: i64, output: i64) -> Self {
        Self {
            fc1: init::xavier_linear(&vs / "layer1", input, hidden, true),
            fc2: init::xavier_linear(&vs / "layer2", hidden, output, true),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        x.apply(&self.fc1)
            .relu()
            .fast_dropout(0.1, train)
            .apply(&self.fc2)
            .relu()
    }
}

/// What one MoE returns for a sequence of T tokens.
#[derive(Debug)]
pub struct MoeOutput {
    /// Concatenation over tokens of Σ_{e ∈ topK} s_e · FFN_e(u_t): [T·out].
    pub routed: Tensor,
    /// Concatenation over tokens of FFN_shared(u_t): [T·out] (zeros without a shared expert).
    pub shared: Tensor,
    /// Router probabilities [T, E].
    pub probabilities: Tensor,
    /// Chosen experts [T, K].
    pub chosen: Tensor,
}

#[derive(Debug)]
pub struct Moe {
    experts: Vec<Expert>,
    shared: Option<Expert>,
    router: nn::Linear,
    top_k: i64,
    renormalise: bool,
    unchosen: UnchosenExperts,
    output: i64,
}

/// How one MoE is built.
#[derive(Debug, Clone, Copy)]
pub struct MoeConfig {
    pub input: i64,
    pub output: i64,
    pub experts: i64,
    pub top_k: i64,
    pub shared: bool,
    /// Renormalise the top-k weights to sum to 1 (only meaningful, and only done, for k > 1).
    pub renormalise: bool,
    pub unchosen: UnchosenExperts,
}

impl Moe {
    /// Parameter names as the release's `MoE`: `experts.<e>.layer{1,2}`, `shared_experts.…`,
    /// `gate.weight` (no bias).
    pub fn new(vs: nn::Path, c: MoeConfig) -> Self {
        let hidden = 128;
        let router_config = nn::LinearConfig {
            ws_init: init::torch_default_uniform(c.input),
            bs_init: None,
            bias: false,
        };
        Self {
            experts: (0..c.experts)
                .map(|e| Expert::new(&vs / "experts" / e, c.input, hidden, c.output))
                .collect(),
            shared: c
                .shared
                .then(|| Expert::new(&vs / "shared_experts", c.input, hidden, c.output)),
            router: nn::linear(&vs / "gate", c.input, c.experts, router_config),
            top_k: c.top_k,
            renormalise: c.renormalise,
            unchosen: c.unchosen,
            output: c.output,
        }
    }

    /// tokens: [T, input].
    pub fn forward(&self, tokens: &Tensor, train: bool) -> MoeOutput {
        let t = tokens.size()[0];
        let probabilities = tokens.apply(&self.router).softmax(-1, tokens.kind());
        let (top, chosen) = probabilities.topk(self.top_k, -1, true, true);
        // As the release (`norm_topk_prob` only applies for k > 1): with top-1 the weight stays
        // the raw probability, which keeps the router in the task loss's graph.
        let top = if self.renormalise && self.top_k > 1 {
            &top / top.sum_dim_intlist(-1, true, top.kind())
        } else {
            top
        };
        // Sparse dispatch: each expert runs on the tokens routed to it. An expert no token chose
        // runs on an empty batch under `Step` (the release's loop), which puts it in the graph
        // with zero gradients; under `Freeze` it is skipped.
        let chosen_list = Vec::<i64>::try_from(chosen.flatten(0, -1)).unwrap_or_default();
        let weights = top.flatten(0, -1);
        let mut routed = Tensor::zeros([t, self.output], (tokens.kind(), tokens.device()));
        for (e, expert) in self.experts.iter().enumerate() {
            let slots: Vec<i64> = (0..chosen_list.len() as i64)
                .filter(|&k| chosen_list[k as usize] == e as i64)
                .collect();
            if slots.is_empty() && self.unchosen == UnchosenExperts::Freeze {
                continue;
            }
            let slots = Tensor::from_slice(&slots).to_device(tokens.device());
            let rows = slots.divide_scalar_mode(self.top_k, "floor");
            let y = expert.forward(&tokens.index_select(0, &rows), train)
                * weights.index_select(0, &slots).unsqueeze(-1);
            routed = routed.index_add(0, &rows, &y);
        }
        let shared = match &self.shared {
            Some(e) => e.forward(tokens, train),
            None => Tensor::zeros([t, self.output], (tokens.kind(), tokens.device())),
        };
        MoeOutput {
            routed: routed.flatten(0, -1),
            shared: shared.flatten(0, -1),
            probabilities,
            chosen,
        }
    }
}

/// Switch/DeepSeek load balance for one MoE: Σ_e f_e · P_e with f_e = E/(T·K) · #{tokens
/// routed to e} and P_e the mean router probability of e.
pub fn load_balance(out: &MoeOutput, top_k: i64) -> Tensor {
    let (t, e) = out.probabilities.size2().expect("probabilities are [T, E]");
    let kind = out.probabilities.kind();
    let counts = Tensor::zeros([e], (kind, out.probabilities.device())).index_add(
        0,
        &out.chosen.flatten(0, -1),
        &Tensor::ones([t * top_k], (kind, out.probabilities.device())),
    );
    let f = counts * (e as f64 / (t * top_k) as f64);
    let p = out
        .probabilities
        .mean_dim(0, false, out.probabilities.kind());
    let kind = p.kind();
    (f.to_kind(kind) * p).sum(kind)
}

/// Random feature recombination: split each of the `vectors` (equal length L) into `segments`
/// contiguous chunks and emit chunk j of every vector in order, for j = 0, 1, … — a
/// [V, s, L/s] array with its first two axes swapped, flattened.
pub fn recombine(vectors: &[&Tensor], segments: i64) -> Tensor {
    let stacked = Tensor::stack(vectors, 0);
    let (v, l) = stacked
        .size2()
        .expect("RFR vectors are 1-D of equal length");
    stacked
        .view([v, segments, l / segments])
        .transpose(0, 1)
        .flatten(0, -1)
}

/// The segment counts RFR draws from: powers of two up to `max` (= vector length / 2 for
/// RFR-1, vector length / 2 for RFR-2).
pub fn segment_choices(max: i64) -> Vec<i64> {
    (0..).map(|k| 1i64 << k).take_while(|&s| s <= max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn recombination_is_the_specified_permutation() {
        let _generator = crate::torch_rng::lock();
        // Four vectors of 256 as in RFR-1: element i of vector v lands at position
        // (i / c) · 4c + v · c + i % c for chunk length c = 256 / s.
        let vectors: Vec<Tensor> = (0..4)
            .map(|v| Tensor::arange_start(v * 256, (v + 1) * 256, (Kind::Int64, tch::Device::Cpu)))
            .collect();
        let refs: Vec<&Tensor> = vectors.iter().collect();
        for s in segment_choices(128) {
            let out: Vec<i64> = Vec::<i64>::try_from(recombine(&refs, s)).unwrap();
            let c = 256 / s;
            let mut expected = vec![0i64; 1024];
            for v in 0..4 {
                for i in 0..256 {
                    expected[((i / c) * 4 * c + v * c + i % c) as usize] = v * 256 + i;
                }
            }
            assert_eq!(out, expected, "s = {s}");
            // A permutation: every element exactly once.
            let mut sorted = out.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..1024).collect::<Vec<_>>());
        }
        assert_eq!(segment_choices(128), vec![1, 2, 4, 8, 16, 32, 64, 128]);
        assert_eq!(segment_choices(256).len(), 9);
        // s = 1 leaves the vectors in order.
        let out: Vec<i64> = Vec::<i64>::try_from(recombine(&refs, 1)).unwrap();
        assert_eq!(out, (0..1024).collect::<Vec<_>>());
    }

    #[test]
    fn load_balance_by_hand() {
        let _generator = crate::torch_rng::lock();
        // T = 2 tokens, E = 3, K = 1: token 0 → expert 0 (p = .5, .3, .2), token 1 → expert 2
        // (p = .1, .2, .7). f = 3/2 · [1, 0, 1]; P = [.3, .25, .45]; L = 1.5 · (.3 + .45) = 1.125.
        let p = Tensor::from_slice(&[0.5f32, 0.3, 0.2, 0.1, 0.2, 0.7]).view([2, 3]);
        let out = MoeOutput {
            routed: Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)),
            shared: Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)),
            chosen: p.argmax(-1, true),
            probabilities: p,
        };
        assert!((load_balance(&out, 1).double_value(&[]) - 1.125).abs() < 1e-6);
        // One token: 8 · max probability (MODEL_SPEC 4.3).
        let p = Tensor::from_slice(&[0.05f32, 0.05, 0.1, 0.3, 0.2, 0.1, 0.1, 0.1]).view([1, 8]);
        let out = MoeOutput {
            chosen: p.argmax(-1, true),
            probabilities: p,
            ..out
        };
        assert!((load_balance(&out, 1).double_value(&[]) - 8.0 * 0.3).abs() < 1e-6);
    }

    #[test]
    fn top1_is_never_renormalised_so_the_router_stays_in_the_graph() {
        let _generator = crate::torch_rng::lock();
        tch::manual_seed(4);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let moe = Moe::new(
            vs.root(),
            MoeConfig {
                input: 8,
                output: 4,
                experts: 3,
                top_k: 1,
                shared: true,
                renormalise: true,
                unchosen: UnchosenExperts::Step,
            },
        );
        // The router's gradient is p's times the chosen expert's output sum, so the tokens must
        // give that expert a nonzero sum; other tests draw from the same global generator at
        // the same time, so the draw is not fixed by the seed alone.
        let (out, p, direct) = (0..50)
            .find_map(|_| {
                let tokens = Tensor::randn([1, 8], (Kind::Float, tch::Device::Cpu));
                let out = moe.forward(&tokens, false);
                let e = out.chosen.int64_value(&[0, 0]);
                let p = out.probabilities.double_value(&[0, e]);
                let direct = moe.experts[e as usize].forward(&tokens.get(0), false) * p;
                let nonzero = direct.sum(Kind::Float).double_value(&[]).abs() > 1e-6;
                nonzero.then_some((out, p, direct))
            })
            .expect("tokens whose chosen expert has a nonzero output sum");
        assert!(p < 1.0);
        assert!((&out.routed - direct).abs().max().double_value(&[]) < 1e-6);
        // The task loss reaches the router through the raw weight.
        let grads = Tensor::run_backward(
            &[out.routed.sum(Kind::Float)],
            &[&moe.router.ws],
            false,
            false,
        );
        assert!(grads[0].abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn unchosen_experts_get_zero_gradients_under_step_and_none_under_freeze() {
        let _generator = crate::torch_rng::lock();
        for unchosen in [UnchosenExperts::Step, UnchosenExperts::Freeze] {
            tch::manual_seed(5);
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let config = MoeConfig {
                input: 8,
                output: 4,
                experts: 3,
                top_k: 1,
                shared: true,
                renormalise: false,
                unchosen,
            };
            let moe = Moe::new(vs.root(), config);
            let tokens = Tensor::randn([1, 8], (Kind::Float, tch::Device::Cpu));
            let out = moe.forward(&tokens, true);
            let e = out.chosen.int64_value(&[0, 0]) as usize;
            let other = (e + 1) % 3;
            let w = &moe.experts[other].fc1.ws;
            let grads = Tensor::run_backward(&[out.routed.sum(Kind::Float)], &[w], false, false);
            match unchosen {
                UnchosenExperts::Step => {
                    assert!(grads[0].defined());
                    assert_eq!(grads[0].abs().sum(Kind::Float).double_value(&[]), 0.0);
                }
                UnchosenExperts::Freeze => assert!(!grads[0].defined()),
            }
        }
    }

    #[test]
    fn routed_output_is_the_raw_top1_probability_times_the_expert() {
        let _generator = crate::torch_rng::lock();
        tch::manual_seed(3);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let moe = Moe::new(
            vs.root(),
            MoeConfig {
                input: 8,
                output: 4,
                experts: 3,
                top_k: 1,
                shared: true,
                renormalise: false,
                unchosen: UnchosenExperts::Step,
            },
        );
        let tokens = Tensor::randn([2, 8], (Kind::Float, tch::Device::Cpu));
        let out = moe.forward(&tokens, false);
        assert_eq!(out.routed.size(), vec![8]);
        assert_eq!(out.shared.size(), vec![8]);
        for t in 0..2 {
            let e = out.chosen.int64_value(&[t, 0]);
            let p = out.probabilities.double_value(&[t, e]);
            let direct = moe.experts[e as usize].forward(&tokens.get(t), false) * p;
            let got = out.routed.narrow(0, 4 * t, 4);
            assert!((got - direct).abs().max().double_value(&[]) < 1e-6);
        }
    }
}
