//! The `hdmoe-pipe` command line: parse, load the configuration, dispatch to a stage.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use hdmoe_pipe::config::Config;
use hdmoe_pipe::shard::Shard;
use hdmoe_pipe::{doctor, features, genomics, labels, mri, report, slide, train};

/// hdmoe-pipe: whole-slide images, genomics and MRI to a trained HDMoE survival model and its
/// clinical tables (C-index, Kaplan–Meier, log-rank, t-tests).
///
/// Stages available in this build: config, cohort, tile, features, genomics, mri, fit, report, doctor. Every stage reads the
/// dataset's YAML (`--config pipelines/<name>.yaml`); `--set section.key=value` overrides one
/// value. Keys and defaults: docs/CONFIG.md.
#[derive(Parser)]
#[command(name = "hdmoe-pipe", version, verbatim_doc_comment)]
struct Cli {
    /// Only print errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the resolved configuration (defaults filled in, --set applied) as YAML.
    Config(ConfigArgs),
    /// Check the cohort table and splits; print patients, slides, time bins and fold sizes.
    Cohort(CohortCmd),
    /// Tissue mask and 20x patch grid for every slide (cache/patches/<slide>.h5 with CLAM's
    /// `coords`, and a preview cache/masks/<slide>.png).
    Tile(TileCmd),
    /// Encode every tiled slide's patches with a ResNet-50 (GPU when present):
    /// cache/features/<slide>.h5 with `features` [N, D] and `coords` (CLAM's h5_files layout).
    Features(MriCmd),
    /// Group the cohort table's gene columns into the gene families of signatures.csv
    /// (cache/genomics.h5, one row per patient, raw values).
    Genomics(StageCmd),
    /// Crop each case's MRI sequences around the tumour mask and encode them with a 3-D ResNet
    /// (cache/mri/<case>.h5, one feature row per sequence).
    Mri(MriCmd),
    /// Train HDMoE (or a unimodal baseline) fold by fold on the cached features; writes
    /// runs/<name>/{fold_<k>/…, predictions.csv, summary.csv}. Resumes an interrupted fit.
    Fit(StageCmd),
    /// C-index per fold, Kaplan–Meier by risk group, log-rank and t-tests from predictions.
    Report(ReportCmd),
    /// Show the libtorch this binary uses and whether CUDA devices are visible.
    Doctor,
}

#[derive(Args)]
struct ConfigArgs {
    /// The dataset's YAML file (pipelines/<name>.yaml). Without it, the defaults are used.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override one configuration value; repeatable. The value is read as YAML.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
}

impl ConfigArgs {
    fn load(&self) -> Result<Config> {
        Ok(Config::load(self.config.as_deref(), &self.set)?)
    }
}

#[derive(Args)]
struct CohortCmd {
    #[command(flatten)]
    config: ConfigArgs,
    /// Also write one row per patient (labels, time bin, class, train/val per fold) to FILE.
    #[arg(long, value_name = "FILE")]
    labels_out: Option<PathBuf>,
}

#[derive(Args)]
struct StageCmd {
    #[command(flatten)]
    config: ConfigArgs,
    /// Redo outputs that already exist, even when made with other parameters.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct MriCmd {
    #[command(flatten)]
    stage: StageCmd,
    /// Run without encoder weights (`features.weights` / `mri.weights`): seeded random weights
    /// (from train.seed); the outputs are stamped as not pretrained.
    #[arg(long)]
    random_weights: bool,
    /// Handle only shard I of N (slides or cases in name order, every N-th from I), e.g. 0/3.
    #[arg(long, value_name = "I/N", default_value = "0/1")]
    shard: Shard,
}

#[derive(Args)]
struct TileCmd {
    #[command(flatten)]
    stage: StageCmd,
    /// A folder of slides or a slide list CSV (overrides paths.slides).
    #[arg(long, value_name = "DIR|CSV")]
    slides: Option<PathBuf>,
    /// um/px for slides whose metadata records none (sets tile.fallback_mpp); a slide list's
    /// `mpp` column and the slide's own metadata take precedence.
    #[arg(long, value_name = "UM_PER_PX")]
    mpp: Option<f64>,
    /// Handle only shard I of N (slides in name order, every N-th from I), e.g. 0/3.
    #[arg(long, value_name = "I/N", default_value = "0/1")]
    shard: Shard,
}

#[derive(Args)]
struct ReportCmd {
    #[command(flatten)]
    config: ConfigArgs,
    /// Out-of-fold predictions CSV with columns case_id, fold, risk, survival_months, event
    /// (1 = event observed); other columns are ignored.
    #[arg(long, value_name = "CSV")]
    predictions: PathBuf,
    /// Directory for cindex.csv, km.csv, logrank.csv, ttest.csv, report.md and km.png.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// fit's summary.csv with per-fold `c_index_best` (shown beside the headline, labelled as
    /// the paper's best-epoch protocol). Default: summary.csv beside the predictions, if any.
    #[arg(long, value_name = "CSV")]
    summary: Option<PathBuf>,
}

fn init_logging(quiet: bool, verbose: u8) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Config(args) => {
            print!("{}", args.load()?.to_yaml());
        }
        Command::Cohort(args) => {
            let config = args.config.load()?;
            let result = labels::run(&config, args.labels_out.as_deref())?;
            print!("{}", result.summary);
            if let Some(path) = &args.labels_out {
                tracing::info!("wrote {}", path.display());
            }
        }
        Command::Tile(args) => {
            let mut overrides = args.stage.config.set.clone();
            if let Some(mpp) = args.mpp {
                overrides.push(format!("tile.fallback_mpp={mpp}"));
            }
            let config = Config::load(args.stage.config.config.as_deref(), &overrides)?;
            let result = slide::run(
                &config,
                args.slides.as_deref(),
                args.stage.force,
                args.shard,
            )?;
            println!(
                "tile: {} slides tiled ({} patches), {} kept (same parameters), {} without tissue, {} failed; manifest {}",
                result.done,
                result.patches,
                result.kept,
                result.no_tissue.len(),
                result.failed.len(),
                result.manifest.display()
            );
            let bad = result.failed.len() + result.no_tissue.len();
            if bad > 0 {
                anyhow::bail!(
                    "tile: {bad} of {} slides gave no patches ({} failed, {} without tissue; listed in {})",
                    bad + result.done + result.kept,
                    result.failed.len(),
                    result.no_tissue.len(),
                    result.manifest.display()
                );
            }
        }
        Command::Features(args) => {
            let config = args.stage.config.load()?;
            let result = features::run(&config, args.stage.force, args.random_weights, args.shard)?;
            let t = &result.timing;
            println!(
                "features: {} slides encoded ({} patches, {:.1} patches/s on {}), {} kept (same parameters), {} failed; manifest {}",
                result.done,
                t.patches,
                t.patches as f64 / t.wall_s.max(1e-9),
                result.devices.join(", "),
                result.kept,
                result.failed.len(),
                result.manifest.display()
            );
            if !result.failed.is_empty() {
                anyhow::bail!(
                    "features: {} of {} slides failed (listed in {})",
                    result.failed.len(),
                    result.failed.len() + result.done + result.kept,
                    result.manifest.display()
                );
            }
        }
        Command::Genomics(args) => {
            let config = args.config.load()?;
            let result = genomics::run(&config, args.force)?;
            let verb = if result.kept {
                "kept (same parameters)"
            } else {
                "wrote"
            };
            println!(
                "{verb} {}: {} patients",
                result.output.display(),
                result.patients
            );
            for group in &result.groups {
                println!("  {:<32} {:>5} columns", group.key, group.columns.len());
            }
            if !result.failed.is_empty() {
                anyhow::bail!(
                    "genomics: {} of {} patients failed (listed in {}/genomics_manifest.csv)",
                    result.failed.len(),
                    result.failed.len() + result.patients,
                    config.cache_dir().display()
                );
            }
        }
        Command::Mri(args) => {
            let config = args.stage.config.load()?;
            let result = mri::run(&config, args.stage.force, args.random_weights, args.shard)?;
            println!(
                "mri: {} cases encoded, {} kept (same parameters), {} failed; manifest {}",
                result.done,
                result.kept,
                result.failed.len(),
                result.manifest.display()
            );
            if !result.failed.is_empty() {
                anyhow::bail!(
                    "mri: {} of {} cases failed (listed in {})",
                    result.failed.len(),
                    result.failed.len() + result.done + result.kept,
                    result.manifest.display()
                );
            }
        }
        Command::Fit(args) => {
            let config = args.config.load()?;
            let result = train::run(&config, args.force)?;
            println!("fold  n_train  n_val  c_index_last  c_index_best (epoch; paper protocol)");
            for f in &result.folds {
                println!(
                    "{:>4}  {:>7}  {:>5}  {:>12.4}  {:>12.4} ({})",
                    f.fold, f.n_train, f.n_val, f.c_last, f.c_best, f.best_epoch
                );
            }
            let stats = |pick: fn(&train::FoldResult) -> f64| {
                let v: Vec<f64> = result.folds.iter().map(pick).collect();
                report::tables::mean_std(&v).unwrap_or((f64::NAN, f64::NAN))
            };
            let (lm, ls) = stats(|f| f.c_last);
            let (bm, bs) = stats(|f| f.c_best);
            println!("last epoch {lm:.4} ± {ls:.4}; best epoch (optimistic) {bm:.4} ± {bs:.4}");
            println!("run: {}", result.run_dir.display());
        }
        Command::Report(args) => {
            let config = args.config.load()?;
            let report_args = report::ReportArgs {
                predictions: args.predictions,
                out: args.out,
                summary: args.summary,
            };
            let outputs = report::run(&report_args, &config.report)
                .context("report failed; nothing was overwritten")?;
            for note in &outputs.notes {
                tracing::warn!("not computable: {note}");
            }
            if let Some((mean, std, folds)) = outputs.cindex_mean {
                println!("C-index {mean:.4} ± {std:.4} over {folds} folds");
            }
            println!("report written to {}", report_args.out.display());
        }
        Command::Doctor => {
            for (name, value) in doctor::facts() {
                println!("{name}: {value}");
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.quiet, cli.verbose);
    hdmoe_pipe::progress::set_quiet(cli.quiet);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
