//! `make bench`: the genomics stage end to end (read, group, write genomics.h5). Prints a
//! Markdown table of medians. Uses the full TCGA tables from ../shared when present.

use std::path::{Path, PathBuf};
use std::time::Instant;

use hdmoe_pipe::config::Config;
use hdmoe_pipe::genomics;
use hdmoe_pipe::stage::StageOptions;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/data/tcga");
    let mut tables: Vec<(String, PathBuf)> = vec![(
        "BLCA sig, 24 patients (fixture)".into(),
        root.join("fixtures/tcga/blca_sig_24cases.csv"),
    )];
    for (name, rel) in [
        (
            "BLCA sig, full",
            "mcat_datasets_csv_sig/tcga_blca_all_clean.csv",
        ),
        (
            "BRCA mutsig, full",
            "porpoise_datasets_csv_mutsig/tcga_brca_all_clean.csv",
        ),
    ] {
        if shared.join(rel).exists() {
            tables.push((name.into(), shared.join(rel)));
        }
    }
    let signatures = root.join("fixtures/tcga/signatures.csv");
    println!("| genomics stage on | patients | MB read | runs | median seconds | patients / s |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, table) in tables {
        let cache = tempfile::tempdir().expect("temporary directory");
        let overrides = vec![
            format!("paths.cohort={}", table.display()),
            format!("paths.signatures={}", signatures.display()),
            format!("paths.cache={}", cache.path().display()),
        ];
        let config = Config::load(None, &overrides).expect("configuration");
        let runs = 5;
        let mut seconds = Vec::new();
        let mut patients = 0;
        for _ in 0..runs {
            let start = Instant::now();
            let report = genomics::run(&config, &StageOptions::default().force(true))
                .expect("genomics stage");
            seconds.push(start.elapsed().as_secs_f64());
            patients = report.done;
        }
        seconds.sort_by(f64::total_cmp);
        let median = seconds[runs / 2];
        let mb = std::fs::metadata(&table).map_or(0.0, |m| m.len() as f64 / 1e6);
        println!(
            "| {name} | {patients} | {mb:.1} | {runs} | {median:.3} | {:.0} |",
            patients as f64 / median
        );
    }
}
