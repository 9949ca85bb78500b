//! `make bench`: one training step of the full-size HDMoE (WSI + genomics, d = 256, BLCA's
//! genomic groups) per patient — forward, backward, Adam — for bags of 1k, 5k and 20k patches
//! at token length 64 and 256, on CPU. `scripts/bench_fit_pytorch.py` times the same model in
//! PyTorch eager on the same machine, right after, for comparison.

use std::time::Instant;

use hdmoe_pipe::model::loss::nll_survival;
use hdmoe_pipe::model::{Hdmoe, Inputs, ModelSpec};
use hdmoe_pipe::train::adam::Adam;
use tch::{nn, Device, Kind, Tensor};

fn main() {
    tch::manual_seed(0);
    println!(
        "| training step (CPU, {} threads) | token length | patches | median seconds / patient |",
        tch::utils::get_num_threads()
    );
    println!("|---|---:|---:|---:|");
    for g in [64, 256] {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Hdmoe::new(
            &vs.root(),
            ModelSpec::wsi_genomics(vec![94, 334, 521, 468, 1496, 479], g),
        );
        let params: Vec<Tensor> = vs.trainable_variables();
        let mut adam = Adam::new(&params, 5e-4, 1e-5);
        for n in [1000, 5000, 20000] {
            let opts = (Kind::Float, Device::Cpu);
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
