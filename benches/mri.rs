//! `make bench`: the mri stage on CPU (crop + normalise + resample + encode, and writing), with
//! the default output size (64×64×32) and seeded random weights. Prints a Markdown table.

use std::path::Path;
use std::time::Instant;

use hdmoe_pipe::config::Config;
use hdmoe_pipe::mri::{self, nifti, synthetic};
use hdmoe_pipe::stage::StageOptions;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let anatomy =
        nifti::read(&root.join("fixtures/mri/nibabel_anatomical.nii")).expect("fixture volume");
    let work = tempfile::tempdir().expect("temporary directory");
    let cases = 3;
    for k in 0..cases {
        let dir = work.path().join("mri").join(format!("LC{k:03}"));
        synthetic::write_case(&dir, &anatomy, ([8 + k, 10, 6], [20, 28, 16])).expect("case");
    }
    println!("| mri stage (CPU, {} threads) | encoder | cases | sequences | median seconds | cases / s |", tch::utils::get_num_threads());
    println!("|---|---|---:|---:|---:|---:|");
    for encoder in ["resnet3d_18", "resnet50_slices"] {
        let overrides = vec![
            format!("paths.mri={}", work.path().join("mri").display()),
            format!(
                "paths.cache={}",
                work.path().join(format!("cache_{encoder}")).display()
            ),
            format!("mri.encoder={encoder}"),
            "mri.device=cpu".to_owned(),
        ];
        let config = Config::load(None, &overrides).expect("configuration");
        let seconds: Vec<f64> = (0..3)
            .map(|_| {
                let start = Instant::now();
                let report = mri::run(
                    &config,
                    &StageOptions::default().force(true).random_weights(true),
                )
                .expect("mri stage");
                assert!(report.failed.is_empty(), "{:?}", report.failed);
                start.elapsed().as_secs_f64()
            })
            .collect();
        let s = median(seconds);
        println!(
            "| 33×41×25 source, crop → 64×64×32 | {encoder} | {cases} | 5 | {s:.2} | {:.3} |",
            cases as f64 / s
        );
    }
}
