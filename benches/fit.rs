//! `make bench`: one training step of the full-size HDMoE (WSI + genomics, d = 256, BLCA's
//! genomic groups) per patient — forward, backward, Adam — for bags of 1k, 5k and 20k patches
//! at token length 64 and 256, on CPU (or the device in `HDMOE_BENCH_DEVICE`, e.g. `cuda`).
//!
//! With `HDMOE_BENCH_TORCH_PYTHON` (a Python that has torch; `make bench` passes the project's
//! venv) the same model in PyTorch eager (`scripts/bench_fit_pytorch.py`) is timed on the same
//! machine in alternating rounds (ours, then PyTorch, `HDMOE_BENCH_ROUNDS` times, default 3),
//! so both see the same background load; the table gives the median over rounds of each
//! round's median step time and their ratio. `HDMOE_REPO` names the repository root when the
//! binary runs away from the tree it was built in (the GPU script does that).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use hdmoe_pipe::model::loss::nll_survival;
use hdmoe_pipe::model::{self, Inputs, LossTerm, ModelSpec};
use hdmoe_pipe::train::adam::Adam;
use tch::{nn, Device, Kind, Tensor};

const GROUPS: [i64; 6] = [94, 334, 521, 468, 1496, 479];
const TOKEN_LENGTHS: [i64; 2] = [64, 256];
const BAGS: [i64; 3] = [1000, 5000, 20000];

/// (token length, patches) → one median step time per round.
type Timings = BTreeMap<(i64, i64), Vec<f64>>;

/// One element of a parameter, to synchronise with the device.
fn loss_value(t: &Tensor) -> Tensor {
    t.flatten(0, -1).get(0)
}

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
                let out = model.forward(&inputs, (4, 8), true);
                let loss = nll_survival(&out.hazards, &out.survival, 1, false)
                    + out.loss(LossTerm::Decoupling)
                    + out.loss(LossTerm::Balance) * 0.01;
                let grads = Tensor::run_backward(&[loss], &params, false, false);
                adam.step(&params, &grads);
                // Reading a value waits for the device to finish the step.
                let _ = f64::try_from(&loss_value(&params[0]));
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
        "| training step ({on}; medians over {rounds} alternating rounds) | token length | patches | hdmoe-pipe s / patient | {pytorch_label} s / patient | ours / PyTorch | ours per round | PyTorch per round |"
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
                format!("{:.2}", mine / median(t)),
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
