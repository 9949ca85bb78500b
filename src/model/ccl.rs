//! CCL (Zhou et al., TMI'24, cohort-individual cooperative learning): `CCL(args)` of
//! moothes/CCL-survival (`models/CCL/network.py`; `custom_config`: num_cluster 6,
//! update_ratio 0.1, bank_length 10; loss `nllsurv,cohort`). PyTorch's default initialisation
//! (CCL runs no initialiser); cls token N(0, 1e-6).
//!
//! * Genomics: each group through its `genomics_fc.{i}.0` SNN block (Linear d_i → 256, SELU,
//!   AlphaDropout 0.15) → [6, 256]; `geno_fc.0` (SNN 256 → 256); `geno_conv` (Conv1d 6 → 1,
//!   kernel 1, InstanceNorm1d without affine over the 256, ReLU) → g [1, 256]. (The release
//!   slices one concatenated vector by hard-coded BLCA sizes; here the groups come as given.)
//! * Pathology: the bag is clustered into 6 centres by the release's bundled kmeans, seeded
//!   with the cohort memory `path_know_memory` [6, d] (each centre starts at the patch nearest
//!   its memory slot, squared Euclidean, first patch on ties; Lloyd steps, an empty cluster
//!   becoming the zero vector, until (Σ_j ‖c_j − c_j'‖)² < 1e-4), then aligned to the memory
//!   slots by the Hungarian assignment of the L1 cost (exact: every permutation of 6 is tried).
//!   In training, memory ← 0.9 memory + 0.1 aligned centres. `path_fc.0` (SNN 1024 → 256) on
//!   the 6 aligned centres, `path_conv` (as `geno_conv`) → p [1, 256]. No gradient flows
//!   through the clustering.
//! * `know_decompose(gfeat = p, pfeat = g)`: g_spec = `geno_spec`(p), p_spec = `path_spec`(g)
//!   (Linear, LayerNorm, ReLU: the release swaps the arguments, so the heads see the other
//!   modality than their names say); common and synergy = `common_encoder`/`synergy_encoder`
//!   (g, p) (there `geno_fc` does see g and `path_fc` p): A = g_aᵀ p_a [256, 256],
//!   geno_att = σ(`geno_atten`(A)), path_att = σ(`path_atten`(Aᵀ)), out = p_a·path_att +
//!   g_a·geno_att. The four tokens [common, synergy, g_spec, p_spec].
//! * `transformer`: [cls; tokens] through two TransLayers (x + Nyström(LayerNorm x): 8 heads
//!   of 32, 128 landmarks, 6 pseudo-inverse steps, residual conv 33, dropout 0.1), LayerNorm,
//!   the cls position → `classifier`. Its `pos_layer` (PPEG) is built, never used.
//!
//! State across patients (not parameters; the release keeps them as plain tensors outside the
//! state dict, and so does this port: they are not in checkpoints):
//! * the memory [6, d]: the release draws `torch.randn` at construction; here it is a fixed
//!   standard normal, Box–Muller of the parity fixtures' hash (`fixed_normal`), so that a fresh
//!   model is the fixture's; converted to the bag's precision and device on first use;
//! * the cohort banks: per time bin a FIFO of the last 10 training patients' detached tokens
//!   [4, 256] (the patient's own entry is pushed before the loss reads the banks).
//!
//! Loss (`utils/loss_factory.py`, weights 1 and 1): NLL (α = 0) + [`LossTerm::Cohort`] =
//! intra + inter, training only (with the patient's bin and censorship):
//! * intra = mean(|cos|·(1 − M) − M·cos) + 1, cos [4, 2] = cosine of each token to [g, p]
//!   (detached), M = [[1, 1], [0, 0], [1, 0], [0, 1]];
//! * inter, against the banks at temperature 2: uncensored: positives = the own bin's entries
//!   but the patient's own, negatives = the other bins; censored in bin y > 0: positives =
//!   bins ≥ y (the own entry included), negatives = bins < y; censored in bin 0: no inter term;
//!   no positives or no negatives: 0. inter = −log(mean e^{t⊙pos/2} / (mean e^{t⊙pos/2} +
//!   mean e^{t⊙neg/2} + 1e-10)), element-wise products of the tokens t with each entry, means
//!   over all elements.

use std::collections::VecDeque;
use std::sync::Mutex;

use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};

use super::init::{torch_default_uniform, torch_linear};
use super::nystrom::{Ppeg, TransLayer};
use super::registry::ModelEntry;
use super::{GenomicsInput, Inputs, LossTerm, ModelSpec, Output, Pass, SurvivalModel};
use crate::config::Modality;

/// `model.architecture: ccl`.
pub static ENTRY: ModelEntry = ModelEntry {
    name: "ccl",
    official: "moothes/CCL-survival models/CCL/network.py `CCL` (num_cluster 6, update_ratio \
               0.1, bank_length 10; loss nllsurv + cohort)",
    genomics: GenomicsInput::Groups,
    accepts,
    build: |vs, spec| Box::new(Ccl::new(vs, spec)),
};

fn accepts(modalities: &[Modality]) -> Result<(), String> {
    if modalities.len() == 2
        && modalities.contains(&Modality::Wsi)
        && modalities.contains(&Modality::Genomics)
    {
        Ok(())
    } else {
        Err("ccl takes wsi and genomics; set dataset.modalities: [genomics, wsi]".into())
    }
}

const DIM: i64 = 256;
const HEADS: i64 = 8;
const LANDMARKS: i64 = DIM / 2;
/// `num_cluster`: kmeans centres = memory slots.
const CLUSTERS: i64 = 6;
const BINS: usize = 4;
/// `bank_length`: entries kept per time bin.
const BANK_LENGTH: usize = 10;
/// `update_ratio` of the memory's moving average.
const UPDATE_RATIO: f64 = 0.1;
/// The SNN blocks' AlphaDropout.
const SNN_DROPOUT: f64 = 0.15;
/// kmeans stops when (Σ centre shift)² < this.
const KMEANS_TOL: f64 = 1e-4;
/// The release has no cap; this one only guards against a cycle it would hang on.
const KMEANS_MAX_ITERATIONS: usize = 10_000;
/// Patches per block of the [N, 6, d] distance computation.
const DISTANCE_CHUNK: i64 = 2048;
/// CohortLoss' temperature.
const TEMPERATURE: f64 = 2.0;
/// The four tokens × (gene, path): 1 = should agree, 0 = should be orthogonal.
const INTRA_MASK: [f64; 8] = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0];

/// The parity fixtures' `uniform(name, n)` (fixtures/parity/make_reference.py).
fn hash_uniform(name: &str, n: usize) -> Vec<f64> {
    let mut base: u64 = 0x811C_9DC5;
    for byte in name.bytes() {
        base ^= u64::from(byte);
        base = (base * 0x0100_0193) & 0xFFFF_FFFF;
    }
    (0..n as u64)
        .map(|i| {
            let mut h = (i * 0x9E37_79B1 + base) & 0xFFFF_FFFF;
            h ^= h >> 16;
            h = (h * 0x045D_9F3B) & 0xFFFF_FFFF;
            h ^= h >> 16;
            h as f64 / 4_294_967_296.0
        })
        .collect()
}

/// make_ccl.py's `fixed_normal`: √(−2 ln(1 − u₁)) cos(2π u₂), u₁ = uniform(name.u1),
/// u₂ = uniform(name.u2); float64 on the CPU. Stands in for the memory's `torch.randn`.
fn fixed_normal(name: &str, shape: &[i64]) -> Tensor {
    let n = shape.iter().product::<i64>() as usize;
    let u1 = Tensor::from_slice(&hash_uniform(&format!("{name}.u1"), n));
    let u2 = Tensor::from_slice(&hash_uniform(&format!("{name}.u2"), n));
    let radius = (u1.neg().g_add_scalar(1.0).log() * -2.0).sqrt();
    let angle = (&u2 * (2.0 * std::f64::consts::PI)).cos();
    (radius * angle).reshape(shape)
}

/// CCL's `SNN_Block`: Linear, SELU, AlphaDropout(0.15).
#[derive(Debug)]
struct Snn(nn::Linear);

impl Snn {
    fn new(vs: nn::Path, input: i64, output: i64) -> Self {
        Self(torch_linear(vs, input, output))
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        x.apply(&self.0).selu().alpha_dropout(SNN_DROPOUT, train)
    }
}

/// `conv1d_Block(C, 1)`: Conv1d(C, 1, 1), InstanceNorm1d(1) (no affine, no running stats,
/// eps 1e-5), ReLU.
#[derive(Debug)]
struct ConvBlock(nn::Conv1D);

impl ConvBlock {
    fn new(vs: nn::Path, channels: i64) -> Self {
        let config = nn::ConvConfig {
            ws_init: torch_default_uniform(channels),
            bs_init: torch_default_uniform(channels),
            ..Default::default()
        };
        Self(nn::conv1d(vs, channels, 1, 1, config))
    }

    /// [C, L] → [1, L].
    fn forward(&self, x: &Tensor) -> Tensor {
        x.unsqueeze(0)
            .apply(&self.0)
            .instance_norm(
                None::<Tensor>,
                None::<Tensor>,
                None::<Tensor>,
                None::<Tensor>,
                true,
                0.1,
                1e-5,
                true,
            )
            .relu()
            .squeeze_dim(0)
    }
}

/// `MLP_Block(256, 256)`: Linear, LayerNorm, ReLU (`.0`, `.1`).
#[derive(Debug)]
struct Mlp {
    fc: nn::Linear,
    norm: nn::LayerNorm,
}

impl Mlp {
    fn new(vs: nn::Path) -> Self {
        Self {
            fc: torch_linear(&vs / "0", DIM, DIM),
            norm: nn::layer_norm(&vs / "1", vec![DIM], Default::default()),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.apply(&self.fc).apply(&self.norm).relu()
    }
}

/// `Interaction_Estimator`.
#[derive(Debug)]
struct Interaction {
    geno_fc: Mlp,
    path_fc: Mlp,
    geno_atten: nn::Linear,
    path_atten: nn::Linear,
}

impl Interaction {
    fn new(vs: nn::Path) -> Self {
        Self {
            geno_fc: Mlp::new(&vs / "geno_fc"),
            path_fc: Mlp::new(&vs / "path_fc"),
            geno_atten: torch_linear(&vs / "geno_atten", DIM, 1),
            path_atten: torch_linear(&vs / "path_atten", DIM, 1),
        }
    }

    /// g, p: [1, 256] → [1, 256].
    fn forward(&self, g: &Tensor, p: &Tensor) -> Tensor {
        let ga = self.geno_fc.forward(g);
        let pa = self.path_fc.forward(p);
        // atten[i, j] = g_a[i] · p_a[j], as the release's g.unsqueeze(3) * p.unsqueeze(2).
        let atten = ga.view([DIM, 1]) * pa.view([1, DIM]);
        let geno_att = atten.apply(&self.geno_atten).sigmoid().view([1, DIM]);
        let path_att = atten
            .transpose(0, 1)
            .apply(&self.path_atten)
            .sigmoid()
            .view([1, DIM]);
        &pa * path_att + &ga * geno_att
    }
}

/// `Knowledge_Decomposition`.
#[derive(Debug)]
struct Decomposition {
    geno_spec: Mlp,
    path_spec: Mlp,
    common_encoder: Interaction,
    synergy_encoder: Interaction,
}

impl Decomposition {
    fn new(vs: nn::Path) -> Self {
        Self {
            geno_spec: Mlp::new(&vs / "geno_spec" / "conv"),
            path_spec: Mlp::new(&vs / "path_spec" / "conv"),
            common_encoder: Interaction::new(&vs / "common_encoder"),
            synergy_encoder: Interaction::new(&vs / "synergy_encoder"),
        }
    }

    /// The release's `know_decompose(path_indiv, geno_indiv)`, with its argument swap:
    /// [common, synergy, geno_spec(p), path_spec(g)] → [4, 256].
    fn forward(&self, g: &Tensor, p: &Tensor) -> Tensor {
        Tensor::cat(
            &[
                self.common_encoder.forward(g, p),
                self.synergy_encoder.forward(g, p),
                self.geno_spec.forward(p),
                self.path_spec.forward(g),
            ],
            0,
        )
    }
}

/// CCL's TransLayer (lucidrains' Nyström, 8 heads × 32, 128 landmarks, dropout 0.1) at
/// PyTorch's default initialisation: nystrom.rs draws its Linears xavier-normal as HDMoE does;
/// they are redrawn U(±1/√256) (weight and bias), as nn.Linear's defaults. The residual conv
/// already has PyTorch's default.
fn trans_layer(vs: nn::Path) -> TransLayer {
    let layer = TransLayer::new(vs.clone(), DIM, HEADS, LANDMARKS);
    let bound = 1.0 / (DIM as f64).sqrt();
    let attn = &vs / "attn";
    tch::no_grad(|| {
        for (path, name) in [
            (&attn / "to_qkv", "weight"),
            (&attn / "to_out" / "0", "weight"),
            (&attn / "to_out" / "0", "bias"),
        ] {
            let mut t = path
                .get(name)
                .unwrap_or_else(|| panic!("NystromAttention has no {name}"));
            let _ = t.uniform_(-bound, bound);
        }
    });
    layer
}

/// CCL's `Transformer`.
#[derive(Debug)]
struct TokenTransformer {
    cls_token: Tensor,
    /// `pos_layer`: constructed by the release, never called.
    _pos_layer: Ppeg,
    layer1: TransLayer,
    layer2: TransLayer,
    norm: nn::LayerNorm,
}

impl TokenTransformer {
    fn new(vs: nn::Path) -> Self {
        Self {
            _pos_layer: Ppeg::new(&vs / "pos_layer", DIM),
            cls_token: vs.var(
                "cls_token",
                &[1, 1, DIM],
                Init::Randn {
                    mean: 0.0,
                    stdev: 1e-6,
                },
            ),
            layer1: trans_layer(&vs / "layer1"),
            layer2: trans_layer(&vs / "layer2"),
            norm: nn::layer_norm(&vs / "norm", vec![DIM], Default::default()),
        }
    }

    /// tokens [4, 256] → the cls output [256].
    fn forward(&self, tokens: &Tensor, train: bool) -> Tensor {
        let h = Tensor::cat(&[self.cls_token.shallow_clone(), tokens.unsqueeze(0)], 1);
        let h = self.layer1.forward(&h, train);
        let h = self.layer2.forward(&h, train);
        h.apply(&self.norm).select(1, 0).squeeze_dim(0)
    }
}

/// What CCL carries from patient to patient.
#[derive(Debug)]
struct CohortState {
    /// `path_know_memory` [6, d].
    memory: Tensor,
    /// `patient_bank`: per time bin, the last `BANK_LENGTH` training patients' tokens [4, 256]
    /// (detached), oldest first.
    banks: Vec<VecDeque<Tensor>>,
}

#[derive(Debug)]
struct Ccl {
    spec: ModelSpec,
    genomics_fc: Vec<Snn>,
    geno_fc: Snn,
    geno_conv: ConvBlock,
    path_fc: Snn,
    path_conv: ConvBlock,
    know_decompose: Decomposition,
    transformer: TokenTransformer,
    classifier: nn::Linear,
    state: Mutex<CohortState>,
}

const TERMS: [LossTerm; 1] = [LossTerm::Cohort];

impl Ccl {
    fn new(vs: &nn::Path, spec: ModelSpec) -> Self {
        let groups = &spec.genomic_groups;
        let genomics_fc = groups
            .iter()
            .enumerate()
            .map(|(i, &d)| Snn::new(vs / "genomics_fc" / i / "0" / "0", d, DIM))
            .collect();
        let memory = fixed_normal("path_know_memory", &[CLUSTERS, spec.wsi_dim]);
        Self {
            genomics_fc,
            geno_fc: Snn::new(vs / "geno_fc" / "0", DIM, DIM),
            geno_conv: ConvBlock::new(vs / "geno_conv" / "0", groups.len() as i64),
            path_fc: Snn::new(vs / "path_fc" / "0", spec.wsi_dim, DIM),
            path_conv: ConvBlock::new(vs / "path_conv" / "0", CLUSTERS),
            know_decompose: Decomposition::new(vs / "know_decompose"),
            transformer: TokenTransformer::new(vs / "transformer"),
            classifier: torch_linear(vs / "classifier", DIM, BINS as i64),
            state: Mutex::new(CohortState {
                memory,
                banks: (0..BINS).map(|_| VecDeque::new()).collect(),
            }),
            spec,
        }
    }
}

/// ((x_n − c_k)²).sum() for every patch and centre: [N, K] (the bundled kmeans'
/// `pairwise_distance`), in blocks of patches.
fn squared_distances(x: &Tensor, centres: &Tensor) -> Tensor {
    let n = x.size()[0];
    let c = centres.unsqueeze(0);
    let mut parts = Vec::new();
    let mut start = 0;
    while start < n {
        let len = DISTANCE_CHUNK.min(n - start);
        parts.push(
            (x.narrow(0, start, len).unsqueeze(1) - &c)
                .square()
                .sum_dim_intlist(-1, false, x.kind()),
        );
        start += len;
    }
    Tensor::cat(&parts, 0)
}

/// The bundled `kmeans(X, num_clusters, cluster_centers=memory, distance='euclidean')`:
/// x [N, d], memory [K, d] → the final centres [K, d]. (The release crashes on a bag of one
/// patch, where its `squeeze()` drops the patch axis; here that bag gives its patch and K − 1
/// zero centres.)
fn kmeans(x: &Tensor, memory: &Tensor) -> Tensor {
    let k = memory.size()[0];
    let nearest = squared_distances(x, memory).argmin(0, false);
    let mut centres = x.index_select(0, &nearest);
    let zero = x.get(0).zeros_like();
    for _ in 0..KMEANS_MAX_ITERATIONS {
        let choice = squared_distances(x, &centres).argmin(1, false);
        let rows: Vec<Tensor> = (0..k)
            .map(|j| {
                let selected = choice.eq(j).nonzero().squeeze_dim(1);
                if selected.size()[0] == 0 {
                    zero.shallow_clone()
                } else {
                    x.index_select(0, &selected).mean_dim(0, false, x.kind())
                }
            })
            .collect();
        let next = Tensor::stack(&rows, 0);
        let shift = (&next - &centres)
            .square()
            .sum_dim_intlist(1, false, x.kind())
            .sqrt()
            .sum(x.kind());
        centres = next;
        if shift.square().double_value(&[]) < KMEANS_TOL {
            break;
        }
    }
    centres
}

/// The assignment of rows to columns of the k × k `cost` (row-major) with the least total:
/// `slot[i]` = the column of row i. Exhaustive (k! candidates; k = 6), so it is scipy's
/// `linear_sum_assignment` optimum (on exact ties it may pick another optimum; ties here come
/// from identical centres, whose order does not change the aligned matrix).
fn best_assignment(cost: &[f64], k: usize) -> Vec<usize> {
    fn search(
        row: usize,
        k: usize,
        cost: &[f64],
        used: &mut [bool],
        current: &mut Vec<usize>,
        total: f64,
        best: &mut (f64, Vec<usize>),
    ) {
        if row == k {
            if total < best.0 {
                *best = (total, current.clone());
            }
            return;
        }
        for col in 0..k {
            if !used[col] {
                used[col] = true;
                current.push(col);
                search(
                    row + 1,
                    k,
                    cost,
                    used,
                    current,
                    total + cost[row * k + col],
                    best,
                );
                current.pop();
                used[col] = false;
            }
        }
    }
    let mut best = (f64::INFINITY, (0..k).collect());
    search(
        0,
        k,
        cost,
        &mut vec![false; k],
        &mut Vec::new(),
        0.0,
        &mut best,
    );
    best.1
}

/// `Hungarian_Matching(centres, memory)`: L1 cost (cdist p = 1), optimal assignment, and the
/// centres reordered so that row j is the centre assigned to memory slot j.
fn hungarian_align(centres: &Tensor, memory: &Tensor) -> Tensor {
    let k = centres.size()[0] as usize;
    let cost = (centres.unsqueeze(1) - memory.unsqueeze(0))
        .abs()
        .sum_dim_intlist(-1, false, centres.kind())
        .to_kind(Kind::Double)
        .to_device(Device::Cpu)
        .flatten(0, -1);
    let cost = Vec::<f64>::try_from(cost).expect("a float64 cost matrix");
    let slot = best_assignment(&cost, k);
    let mut centre_of = vec![0i64; k];
    for (i, &j) in slot.iter().enumerate() {
        centre_of[j] = i as i64;
    }
    let index = Tensor::from_slice(&centre_of).to_device(centres.device());
    centres.index_select(0, &index)
}

/// CohortLoss for a training patient of time bin `bin`: intra + inter (see the header).
/// `banks` already hold this patient's entry.
fn cohort_loss(
    tokens: &Tensor,
    g: &Tensor,
    p: &Tensor,
    banks: &[VecDeque<Tensor>],
    bin: usize,
    censored: bool,
) -> Tensor {
    let kind = tokens.kind();
    let orig = Tensor::cat(&[g, p], 0).detach(); // [2, 256]: gene, path
    let sim = Tensor::cosine_similarity(&tokens.unsqueeze(1), &orig.unsqueeze(0), -1, 1e-8);
    let mask = Tensor::from_slice(&INTRA_MASK)
        .view([4, 2])
        .to_kind(kind)
        .to_device(tokens.device());
    let intra = (sim.abs() * mask.neg().g_add_scalar(1.0) - &mask * &sim).mean(kind) + 1.0;
    if censored && bin == 0 {
        return intra;
    }
    let (positives, negatives): (Vec<&Tensor>, Vec<&Tensor>) = if censored {
        (
            banks[bin..].iter().flatten().collect(),
            banks[..bin].iter().flatten().collect(),
        )
    } else {
        let own = &banks[bin];
        (
            own.iter().take(own.len().saturating_sub(1)).collect(),
            banks
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != bin)
                .flat_map(|(_, b)| b.iter())
                .collect(),
        )
    };
    if positives.is_empty() || negatives.is_empty() {
        return intra;
    }
    let spread = |entries: &[&Tensor]| {
        ((tokens * Tensor::stack(entries, 0)) / TEMPERATURE)
            .exp()
            .mean(kind)
    };
    let pos = spread(&positives);
    let neg = spread(&negatives);
    let inter = -(&pos / (&pos + neg + 1e-10)).log();
    intra + inter
}

impl SurvivalModel for Ccl {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn loss_terms(&self) -> &'static [LossTerm] {
        &TERMS
    }

    fn forward_pass(&self, inputs: &Inputs, _segments: (i64, i64), pass: Pass) -> Output {
        let train = pass.dropout;
        let bag = inputs.wsi.as_ref().expect("WSI inputs");
        let groups = inputs.genomics.as_ref().expect("genomic inputs");
        assert_eq!(groups.len(), self.genomics_fc.len(), "genomic groups");

        let tokens: Vec<Tensor> = self
            .genomics_fc
            .iter()
            .zip(groups)
            .map(|(net, x)| net.forward(x, train))
            .collect();
        let g = self
            .geno_conv
            .forward(&self.geno_fc.forward(&Tensor::stack(&tokens, 0), train)); // [1, 256]

        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.memory.kind() != bag.kind() || state.memory.device() != bag.device() {
            let moved = state.memory.to_kind(bag.kind()).to_device(bag.device());
            state.memory = moved;
        }
        let aligned = tch::no_grad(|| {
            let x = bag.detach();
            let centres = kmeans(&x, &state.memory);
            hungarian_align(&centres, &state.memory)
        }); // [6, d]
        if pass.train {
            let updated =
                tch::no_grad(|| &state.memory * (1.0 - UPDATE_RATIO) + &aligned * UPDATE_RATIO);
            state.memory = updated;
        }
        let p = self
            .path_conv
            .forward(&self.path_fc.forward(&aligned, train)); // [1, 256]

        let know = self.know_decompose.forward(&g, &p); // [4, 256]
        let label = pass.label.map(|bin| {
            let bin = bin as usize;
            assert!(bin < BINS, "time bin {bin}");
            bin
        });
        if let (true, Some(bin)) = (pass.train, label) {
            let bank = &mut state.banks[bin];
            bank.push_back(know.detach());
            if bank.len() > BANK_LENGTH {
                bank.pop_front();
            }
        }

        let fused = self.transformer.forward(&know, train);
        let mut out = Output::from_logits(fused.apply(&self.classifier));
        // The release's CohortLoss is 0 without a censorship (its evaluation calls).
        let cohort = match (pass.train, label, pass.censored) {
            (true, Some(bin), Some(censored)) => {
                cohort_loss(&know, &g, &p, &state.banks, bin, censored)
            }
            _ => Tensor::zeros([], (know.kind(), know.device())),
        };
        out.losses = vec![(LossTerm::Cohort, cohort)];
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_assignment_is_the_least_total() {
        // 3 × 3: the diagonal costs 3, the assignment (1, 2, 0) costs 0.3.
        let cost = [1.0, 0.1, 5.0, 5.0, 1.0, 0.1, 0.1, 5.0, 1.0];
        assert_eq!(best_assignment(&cost, 3), vec![1, 2, 0]);
    }

    #[test]
    fn kmeans_separates_two_blobs_and_empties_become_zero() {
        let _generator = crate::torch_rng::lock();
        let opts = (Kind::Double, Device::Cpu);
        let x = Tensor::cat(
            &[
                Tensor::ones([5, 3], opts) * 10.0,
                Tensor::ones([4, 3], opts) * -10.0,
            ],
            0,
        );
        // Two slots near each blob's side, one far away (it starts at the same patch as
        // another slot and loses every patch to it).
        let memory = Tensor::from_slice(&[9.0, 9.0, 9.0, -9.0, -9.0, -9.0, 8.0, 8.0, 8.0])
            .view([3, 3])
            .to_kind(Kind::Double);
        let centres = kmeans(&x, &memory);
        let want = Tensor::from_slice(&[10.0, 10.0, 10.0, -10.0, -10.0, -10.0, 0.0, 0.0, 0.0])
            .view([3, 3])
            .to_kind(Kind::Double);
        assert!(centres.allclose(&want, 1e-12, 1e-12, false));
    }
}
