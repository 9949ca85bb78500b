//! `make bench`: one training step of the full-size HDMoE (WSI + genomics, d = 256, BLCA's
//! genomic groups) per patient — forward, backward, Adam — for bags of 1k, 5k and 20k patches
//! at token length 64 and 256, on CPU (or the device in `HDMOE_BENCH_DEVICE`, e.g. `cuda`).
//! `scripts/bench_fit_pytorch.py` times the same model in PyTorch eager on the same machine,
//! right after, for comparison.

use std::time::Instant;

use hdmoe_pipe::model::loss::nll_survival;
use hdmoe_pipe::model::{Hdmoe, Inputs, ModelSpec};
use hdmoe_pipe::train::adam::Adam;
use tch::{nn, Kind, Tensor};

/// One element of a parameter, to synchronise with the device.
fn loss_value(t: &Tensor) -> Tensor {
    t.flatten(0, -1).get(0)
}

fn main() {
    tch::manual_seed(0);
    let spec = std::env::var("HDMOE_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let device = hdmoe_pipe::encode::parse_device(&spec).expect("HDMOE_BENCH_DEVICE");
    let on = if device.is_cuda() {
        format!("{device:?}")
    } else {
        format!("CPU, {} threads", tch::utils::get_num_threads())
    };
    println!("| training step ({on}) | token length | patches | median seconds / patient |");
    println!("|---|---:|---:|---:|");
    for g in [64, 256] {
        let vs = nn::VarStore::new(device);
        let model = Hdmoe::new(
            &vs.root(),
            ModelSpec::wsi_genomics(vec![94, 334, 521, 468, 1496, 479], g),
        );
        let params: Vec<Tensor> = vs.trainable_variables();
        let mut adam = Adam::new(&params, 5e-4, 1e-5);
        for n in [1000, 5000, 20000] {
            let opts = (Kind::Float, device);
            let inputs = Inputs {
                wsi: Some(Tensor::randn([n, 1024], opts)),
                genomics: Some(
                    [94, 334, 521, 468, 1496, 479]
                        .iter()
                        .map(|&c| Tensor::randn([c], opts))
                        .collect(),
                ),
                mri: None,
            };
            let reps = if n >= 20000 { 3 } else { 5 };
            let mut times = Vec::new();
            for r in 0..=reps {
                let start = Instant::now();
                let out = model.forward(&inputs, (4, 8), true);
                let loss = nll_survival(&out.hazards, &out.survival, 1, false)
                    + out.decoupling
                    + out.balance * 0.01;
                let grads = Tensor::run_backward(&[loss], &params, false, false);
                adam.step(&params, &grads);
                // Reading a value waits for the device to finish the step.
                let _ = f64::try_from(&loss_value(&params[0]));
                if r > 0 {
                    // The first step warms up the allocator.
                    times.push(start.elapsed().as_secs_f64());
                }
            }
            times.sort_by(f64::total_cmp);
            println!(
                "| hdmoe-pipe (libtorch via tch) | {g} | {n} | {:.3} |",
                times[times.len() / 2]
            );
        }
    }
}
