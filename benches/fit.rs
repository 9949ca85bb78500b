//! `make bench`: the training step of the full-size HDMoE (d = 256, BLCA's genomic groups), in
//! three tables, on CPU (or the device in `HDMOE_BENCH_DEVICE`, e.g. `cuda`):
//!
//! 1. **The machine's limits**, measured in this run: memory bandwidth (a 256 MB copy), the
//!    cost of one dispatched libtorch op, and matmul throughput at the model's shapes.
//! 2. **A profile of one step** (data, forward per module, loss, backward, Adam) for
//!    genomics only and WSI + genomics at 1k/5k/20k patches (release token length 256), each
//!    phase next to its limit: the time its FLOPs take at the measured matmul rate or its bytes
//!    at the measured bandwidth, whichever is larger.
//! 3. **hdmoe-pipe against PyTorch eager**: with `HDMOE_BENCH_TORCH_PYTHON` (a Python that has
//!    torch; `make bench` passes the project's venv) the same model in PyTorch
//!    (`scripts/bench_fit_pytorch.py`) is timed in alternating rounds (ours, then PyTorch,
//!    `HDMOE_BENCH_ROUNDS` times, default 3), so both see the same background load; the table
//!    gives the median over rounds of each round's median step time and their ratio.
//!
//! `HDMOE_REPO` names the repository root when the binary runs away from the tree it was built
//! in (the GPU script does that). Epochs on real data are `benches/fit_epoch.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hdmoe_pipe::model::loss::nll_survival;
use hdmoe_pipe::model::{self, Inputs, LossTerm, Modality1, ModelSpec, SurvivalModel};
use hdmoe_pipe::profile;
use hdmoe_pipe::train::adam::Adam;
use tch::{nn, Device, Kind, Tensor};

const GROUPS: [i64; 6] = [94, 334, 521, 468, 1496, 479];
const TOKEN_LENGTHS: [i64; 2] = [64, 256];
const BAGS: [i64; 3] = [1000, 5000, 20000];
const D: f64 = 256.0;
const HEADS: f64 = 8.0;
const LANDMARKS: f64 = 128.0;

/// (token length, patches) → one median step time per round.
type Timings = BTreeMap<(i64, i64), Vec<f64>>;

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn synchronise(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Median seconds of `f` over `reps` runs after one warm-up.
fn time(device: Device, reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    synchronise(device);
    let times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            synchronise(device);
            start.elapsed().as_secs_f64()
        })
        .collect();
    median(&times)
}

/// What this machine can do, measured now.
struct Limits {
    /// Bytes per second moved by a large copy (read + write).
    bandwidth: f64,
    /// Seconds of one dispatched op on a one-element tensor.
    dispatch: f64,
    /// FLOP/s of [1000, 1024] × [1024, 256] (the patch MLP's first layer).
    gemm: f64,
    /// FLOP/s of a batch of 8 [128, 128] × [128, 128] (the pseudo-inverse's iteration).
    bmm: f64,
}

impl Limits {
    fn measure(device: Device) -> Self {
        let opts = (Kind::Float, device);
        let n = 64 << 20;
        let src = Tensor::randn([n], opts);
        let mut dst = Tensor::zeros([n], opts);
        let copy = time(device, 5, || dst.copy_(&src));
        let one = Tensor::ones([1], opts);
        let ops = 2000;
        let dispatch = time(device, 5, || {
            for _ in 0..ops {
                let _ = &one + 1.0;
            }
        }) / ops as f64;
        let (a, b) = (
            Tensor::randn([1000, 1024], opts),
            Tensor::randn([1024, 256], opts),
        );
        let gemm = 2.0 * 1000.0 * 1024.0 * 256.0 / time(device, 20, || drop(a.matmul(&b)));
        let x = Tensor::randn([8, 128, 128], opts);
        let bmm = 2.0 * 8.0 * 128f64.powi(3) / time(device, 50, || drop(x.matmul(&x)));
        Limits {
            bandwidth: 2.0 * 4.0 * n as f64 / copy,
            dispatch,
            gemm,
            bmm,
        }
    }

    fn print(&self, on: &str) {
        println!("| machine limit ({on}) | measured |");
        println!("|---|---:|");
        println!(
            "| memory bandwidth (256 MB copy) | {:.1} GB/s |",
            self.bandwidth / 1e9
        );
        println!(
            "| one dispatched op (1-element add) | {:.1} µs |",
            self.dispatch * 1e6
        );
        println!(
            "| matmul [1000, 1024] × [1024, 256] | {:.1} GFLOP/s |",
            self.gemm / 1e9
        );
        println!(
            "| batched matmul 8 × [128, 128]² | {:.1} GFLOP/s |",
            self.bmm / 1e9
        );
        println!();
    }
}

/// Forward FLOPs of one Nyström TransLayer on `n` tokens (d 256, 8 heads, 128 landmarks):
/// (matmul part at the GEMM rate, pseudo-inverse part at the batched rate). Fewer tokens than
/// landmarks need only the projections of the padded sequence and (n+1)-sized products
/// (`model::nystrom`'s block form).
fn translayer_flops(n: f64) -> (f64, f64) {
    let padded = (n / LANDMARKS).ceil() * LANDMARKS;
    if n < LANDMARKS {
        let small = n + 1.0;
        let dense = 2.0 * padded * D * 4.0 * D + 2.0 * padded * D * 33.0;
        return (dense, 6.0 * 4.0 * 2.0 * small.powi(3) * HEADS);
    }
    let (m, d) = (LANDMARKS, D);
    let dense = 2.0 * padded * d * 3.0 * d          // to_qkv
        + 2.0 * padded * d * d                      // to_out
        + 2.0 * padded * m * d * 2.0                // q·k_lᵀ, q_l·kᵀ
        + 2.0 * m * m * d                           // q_l·k_lᵀ
        + 2.0 * m * padded * d                      // attn3 · v
        + 2.0 * m * m * d                           // pinv · (attn3 v)
        + 2.0 * padded * m * d                      // attn1 · (pinv attn3 v)
        + 2.0 * padded * d * 33.0; // res_conv
    let pinv = 6.0 * 4.0 * 2.0 * m.powi(3) * HEADS;
    (dense, pinv)
}

/// The model's parameters and their count.
fn parameters(vs: &nn::VarStore) -> (Vec<Tensor>, f64) {
    let params = vs.trainable_variables();
    let count = params.iter().map(|p| p.numel() as f64).sum();
    (params, count)
}

/// One training step as `fit` takes it (forward, NLL + the model's weighted terms, backward,
/// Adam), its phases marked for the profile (free when no profile is recording).
fn train_step(model: &dyn SurvivalModel, inputs: &Inputs, params: &[Tensor], adam: &mut Adam) {
    let out = model.forward(inputs, (4, 8), true);
    let loss = profile::phase("loss", || {
        let survival = nll_survival(&out.hazards, &out.survival, 1, false);
        // Not `+=`, which adds in place into a tensor the graph saved.
        model.loss_terms().iter().fold(survival, |total, &term| {
            let weight = if term == LossTerm::Balance { 0.01 } else { 1.0 };
            total + out.loss(term) * weight
        })
    });
    let grads = profile::phase("backward", || {
        Tensor::run_backward(&[loss], params, false, false)
    });
    profile::phase("Adam", || adam.step(params, &grads));
}

/// The bag sizes of the step profile: `HDMOE_BENCH_PATCHES` (comma-separated, e.g. `500,1000`
/// for the official setting's 500-patch slides) or the comparison's sizes.
fn profile_bags() -> Vec<i64> {
    std::env::var("HDMOE_BENCH_PATCHES")
        .ok()
        .map(|list| {
            list.split(',')
                .map(|n| n.trim().parse().expect("HDMOE_BENCH_PATCHES: patch counts"))
                .collect()
        })
        .unwrap_or_else(|| BAGS.to_vec())
}

/// One measured configuration of the profile.
struct Case {
    label: String,
    patches: Option<i64>,
}

/// The profile of one configuration: per phase, median ms over the steps, and the limit in ms.
fn profile_case(
    device: Device,
    limits: &Limits,
    case: &Case,
    dir: &Path,
) -> Vec<(String, f64, String)> {
    let opts = (Kind::Float, device);
    let mut spec = ModelSpec::wsi_genomics(GROUPS.to_vec(), 256);
    if case.patches.is_none() {
        spec.wsi = false;
        spec.modality_1 = Some(Modality1::Genomics);
    }
    let vs = nn::VarStore::new(device);
    let model = model::build(&vs.root(), spec);
    let (params, count) = parameters(&vs);
    let mut adam = Adam::new(&params, 5e-4, 1e-5);
    // The bag is read from an HDF5 file as the features cache holds it.
    let bag_file = case.patches.map(|n| {
        let path = dir.join(format!("bag_{n}.h5"));
        let x = ndarray::Array2::<f32>::from_shape_fn((n as usize, 1024), |(i, j)| {
            ((i * 31 + j * 17) % 97) as f32 / 97.0 - 0.5
        });
        let file = hdf5::File::create(&path).expect("bench h5");
        file.new_dataset_builder()
            .with_data(&x)
            .create("features")
            .expect("bench dataset");
        path
    });
    let reps = match case.patches {
        Some(n) if n >= 20000 => 4,
        _ => 8,
    };
    let mut totals: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut order: Vec<&'static str> = Vec::new();
    for r in 0..=reps {
        profile::start(device);
        let inputs = profile::phase("data (read the bag, to device)", || Inputs {
            wsi: bag_file.as_ref().map(|p| {
                hdmoe_pipe::train::data::read_features(p)
                    .expect("bench bag")
                    .to_device(device)
            }),
            genomics: Some(GROUPS.iter().map(|&c| Tensor::randn([c], opts)).collect()),
            mri: None,
        });
        train_step(model.as_ref(), &inputs, &params, &mut adam);
        let phases = profile::take();
        if r == 0 {
            // The first step warms up the allocator.
            order = phases.iter().map(|(n, _)| *n).collect();
            continue;
        }
        let total: Duration = phases.iter().map(|(_, t)| *t).sum();
        for (name, t) in phases {
            totals.entry(name).or_default().push(t.as_secs_f64());
        }
        totals.entry("step").or_default().push(total.as_secs_f64());
    }

    // Limits per phase.
    let n = case.patches.unwrap_or(0) as f64;
    let side = n.sqrt().ceil();
    let wsi_tokens = side * side + 1.0;
    let snn_params: f64 = GROUPS
        .iter()
        .map(|&c| (c as f64 + 1.0) * 1024.0 + 1025.0 * D)
        .sum();
    let at_gemm = |flops: f64| flops / limits.gemm;
    let (g_dense, g_pinv) = translayer_flops(7.0);
    let (w_dense, w_pinv) = translayer_flops(wsi_tokens);
    let ppeg = 2.0 * wsi_tokens * D * (49.0 + 25.0 + 9.0);
    let genomics_fwd = 2.0 * (at_gemm(g_dense) + g_pinv / limits.bmm);
    let wsi_fc_fwd =
        at_gemm(2.0 * n * (1024.0 * D + D * D)).max(n * 1024.0 * 4.0 / limits.bandwidth);
    let wsi_trans_fwd = 2.0 * (at_gemm(w_dense) + w_pinv / limits.bmm) + at_gemm(ppeg);
    let snn_fwd = snn_params * 4.0 / limits.bandwidth;
    let forward = snn_fwd
        + genomics_fwd
        + if n > 0.0 {
            wsi_fc_fwd + wsi_trans_fwd
        } else {
            0.0
        };
    // Backward: twice the forward's FLOPs (the first patch layer needs no input gradient), and
    // at least one write of every gradient.
    let backward = (2.0 * forward).max(count * 4.0 / limits.bandwidth);
    let adam_limit = 7.0 * 4.0 * count / limits.bandwidth;
    let ms = |s: f64| format!("{:.1}", s * 1e3);
    let limit_of = |name: &str| -> String {
        match name {
            "data (read the bag, to device)" => format!(
                "{} (the bag's bytes once at memory bandwidth)",
                ms(n * 1024.0 * 4.0 / limits.bandwidth)
            ),
            "forward: genomics SNNs" => format!("{} (weights read once)", ms(snn_fwd)),
            "forward: genomics Transformer" => {
                format!("{} (FLOPs at matmul rate)", ms(genomics_fwd))
            }
            "forward: WSI fc" => format!("{} (FLOPs at matmul rate)", ms(wsi_fc_fwd)),
            "forward: WSI TransMIL" => format!("{} (FLOPs at matmul rate)", ms(wsi_trans_fwd)),
            "forward: MoEs, fusion, head" | "loss" => format!(
                "~0 (a few kFLOP; at {:.0} µs per dispatched op it is op count)",
                limits.dispatch * 1e6
            ),
            "backward" => format!("{} (2x the forward's FLOPs)", ms(backward)),
            "Adam" => format!(
                "{} ({:.1} M parameters, 7 x 4 bytes each at memory bandwidth)",
                ms(adam_limit),
                count / 1e6
            ),
            _ => String::new(),
        }
    };
    let mut rows = Vec::new();
    for name in order.iter().copied().chain(["step"]) {
        let Some(times) = totals.get(name) else {
            continue;
        };
        let limit = if name == "step" {
            let sum = forward + backward + adam_limit;
            format!("{} (sum of the limits)", ms(sum))
        } else {
            limit_of(name)
        };
        rows.push((name.to_owned(), median(times) * 1e3, limit));
    }
    rows
}

/// One round of ours: the median step time of each (token length, bag size).
fn time_ours(device: Device, timings: &mut Timings) {
    for g in TOKEN_LENGTHS {
        let vs = nn::VarStore::new(device);
        let model = model::build(&vs.root(), ModelSpec::wsi_genomics(GROUPS.to_vec(), g));
        let params: Vec<Tensor> = vs.trainable_variables();
        let mut adam = Adam::new(&params, 5e-4, 1e-5);
        for n in BAGS {
            let opts = (Kind::Float, device);
            let inputs = Inputs {
                wsi: Some(Tensor::randn([n, 1024], opts)),
                genomics: Some(GROUPS.iter().map(|&c| Tensor::randn([c], opts)).collect()),
                mri: None,
            };
            let reps = if n >= 20000 { 3 } else { 5 };
            let mut times = Vec::new();
            for r in 0..=reps {
                let start = Instant::now();
                train_step(model.as_ref(), &inputs, &params, &mut adam);
                // Reading a value waits for the device to finish the step.
                let _ = f64::try_from(&params[0].flatten(0, -1).get(0));
                if r > 0 {
                    // The first step warms up the allocator.
                    times.push(start.elapsed().as_secs_f64());
                }
            }
            timings.entry((g, n)).or_default().push(median(&times));
        }
    }
}

fn repo_root() -> PathBuf {
    std::env::var_os("HDMOE_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf())
}

/// One round of PyTorch eager: the script's rows `| PyTorch <version> eager | g | n | s |`.
/// Returns the row label.
fn time_pytorch(python: &str, device: &str, timings: &mut Timings) -> Result<String, String> {
    let script = repo_root().join("scripts/bench_fit_pytorch.py");
    let output = Command::new(python)
        .arg(&script)
        .args(["--device", device])
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(format!(
            "{} failed ({}): {}",
            script.display(),
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ));
    }
    let mut label = String::new();
    let mut rows = 0;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "", label, g, n, seconds, ""
        if cells.len() != 6 || !cells[1].starts_with("PyTorch") {
            continue;
        }
        let (Ok(g), Ok(n), Ok(s)) = (
            cells[2].parse::<i64>(),
            cells[3].parse::<i64>(),
            cells[4].parse::<f64>(),
        ) else {
            return Err(format!("unexpected row from {}: {line}", script.display()));
        };
        label = cells[1].to_owned();
        timings.entry((g, n)).or_default().push(s);
        rows += 1;
    }
    if rows != TOKEN_LENGTHS.len() * BAGS.len() {
        return Err(format!("{} printed {rows} timing rows", script.display()));
    }
    Ok(label)
}

fn main() {
    hdmoe_pipe::memory::keep_large_blocks();
    tch::manual_seed(0);
    let spec = std::env::var("HDMOE_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let device = hdmoe_pipe::encode::parse_device(&spec).expect("HDMOE_BENCH_DEVICE");
    let python = std::env::var("HDMOE_BENCH_TORCH_PYTHON").ok();
    let rounds: usize = std::env::var("HDMOE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(3);
    let on = if device.is_cuda() {
        format!("{device:?}")
    } else {
        format!("CPU, {} threads", tch::utils::get_num_threads())
    };

    let limits = Limits::measure(device);
    limits.print(&on);
    let dir = tempfile::tempdir().expect("bench temp dir");
    let cases = std::iter::once(Case {
        label: "genomics only (6 SNNs + Transformer_G + head)".into(),
        patches: None,
    })
    .chain(profile_bags().into_iter().map(|n| Case {
        label: format!("WSI + genomics, {n} patches"),
        patches: Some(n),
    }));
    for case in cases {
        let rows = profile_case(device, &limits, &case, dir.path());
        println!(
            "| step profile: {} (HDMoE, token length 256, {on}) | ms (median) | limit ms |",
            case.label
        );
        println!("|---|---:|---|");
        for (name, ms, limit) in rows {
            println!("| {name} | {ms:.1} | {limit} |");
        }
        println!();
    }

    // PyTorch gets the device by its own name (`auto` is ours alone).
    let torch_device = match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".to_owned(),
    };
    let mut ours = Timings::new();
    let mut theirs = Timings::new();
    let mut pytorch: Result<String, String> = Err("not run (set HDMOE_BENCH_TORCH_PYTHON)".into());
    for round in 0..rounds {
        time_ours(device, &mut ours);
        if let Some(python) = &python {
            // A failure is reported once; later rounds do not retry it.
            if round == 0 || pytorch.is_ok() {
                pytorch = time_pytorch(python, &torch_device, &mut theirs);
            }
        }
    }

    let pytorch_label = match &pytorch {
        Ok(label) => label.clone(),
        Err(why) => format!("PyTorch eager: {why}"),
    };
    println!(
        "| training step ({on}; medians over {rounds} alternating rounds) | token length | patches | hdmoe-pipe s / patient | {pytorch_label} s / patient | PyTorch / ours (target ≥ 2) | ours per round | PyTorch per round |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|---|");
    let per_round = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{s:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for ((g, n), times) in &ours {
        let mine = median(times);
        let (theirs_cell, ratio, theirs_rounds) = match theirs.get(&(*g, *n)) {
            Some(t) if pytorch.is_ok() => (
                format!("{:.3}", median(t)),
                format!("{:.2}", median(t) / mine),
                per_round(t),
            ),
            _ => ("".into(), "".into(), "".into()),
        };
        println!(
            "| HDMoE, WSI + genomics | {g} | {n} | {mine:.3} | {theirs_cell} | {ratio} | {} | {theirs_rounds} |",
            per_round(times)
        );
    }
}
