//! The `hdmoe-pipe` command line: parse, load the configuration, dispatch to a stage.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use hdmoe_pipe::config::Config;
use hdmoe_pipe::shard::Shard;
use hdmoe_pipe::{doctor, features, genomics, labels, mri, pipeline, report, slide, train};

/// hdmoe-pipe: whole-slide images, genomics and MRI to a trained HDMoE survival model and its
/// clinical tables (C-index, Kaplan–Meier, log-rank, t-tests).
///
/// Stages: tile, features, genomics, mri, fit, report; `run` runs the ones the dataset's
/// modalities need, in order. Also: config, cohort, doctor. Every command reads the
/// dataset's YAML (`--config pipelines/<name>.yaml`); `--set section.key=value` overrides one
/// value. Keys and defaults: docs/CONFIG.md.
///
/// Exit status: 0 done; 3 the stage completed but some items (slides, cases, patients) failed,
/// listed in its manifest; 1 any other error.
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
    /// Risk, hazards and survival of the cohort's patients from a trained model: fit's
    /// fold_<k>/model.safetensors or a state dict saved by the official code (.pth/.pth.tar in
    /// any form torch writes; names in docs/PARAMETERS.md). With --fold K, fold K's validation
    /// patients, genomics scaled as fit scaled them (on the fold's training patients); without,
    /// every patient that has the configured modalities. Writes DIR/predictions.csv (fit's
    /// columns, then survival_0..3).
    Predict(PredictCmd),
    /// C-index per fold, Kaplan–Meier by risk group, log-rank and t-tests from predictions.
    Report(ReportCmd),
    /// Show the libtorch, OpenSlide and HDF5 this binary uses and whether CUDA devices are visible.
    Doctor,
    /// Every stage that dataset.modalities needs (tile, features, genomics, mri, fit), then the
    /// report, each as a child process; records time and peak RSS per stage in
    /// runs/<name>/stages.csv, and ends with the C-index table and the report's path. A stage
    /// with failed items does not stop the run; a stage that fails outright stops the rest.
    Run(RunCmd),
    /// Write the demo_lc MRI cases: for every patient of paths.cohort, a folder under
    /// paths.mri with five sequences and a tumour mask derived from one real volume
    /// (fixtures/mri/nibabel_anatomical.nii, a brain T1: it exercises the MRI path, it is not
    /// liver MRI). Existing case folders are kept.
    DemoMri(DemoMriCmd),
}

#[derive(Args)]
struct DemoMriCmd {
    #[command(flatten)]
    config: ConfigArgs,
    /// The NIfTI volume every case is derived from.
    #[arg(
        long,
        value_name = "NII",
        default_value = "fixtures/mri/nibabel_anatomical.nii"
    )]
    source: PathBuf,
}

#[derive(Args)]
struct RunCmd {
    #[command(flatten)]
    stage: StageCmd,
    /// Pass --random-weights to the features and mri stages.
    #[arg(long)]
    random_weights: bool,
    /// Print the run folder and the stages this configuration enables (one per line:
    /// `run_dir <path>`, then `stage <name>`), and run nothing. Schedulers' scripts use it.
    #[arg(long)]
    plan: bool,
}

/// A stage that completed while some of its items failed (exit status 3).
#[derive(Debug)]
struct PartialFailure(String);

impl std::fmt::Display for PartialFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PartialFailure {}

/// Returns a PartialFailure error from a stage command.
macro_rules! partial {
    ($($arg:tt)*) => {
        return Err(PartialFailure(format!($($arg)*)).into())
    };
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
struct PredictCmd {
    #[command(flatten)]
    config: ConfigArgs,
    /// The model's weights: model.safetensors from fit, or an official state dict.
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// Predict fold K's validation patients (genomics scaled on its training patients).
    #[arg(long, value_name = "K")]
    fold: Option<usize>,
    /// Output folder [default: runs/<name>/predict_fold_<K>, or runs/<name>/predict].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
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
    /// The run folder (fit's config.yaml, fold_*/routing.csv, `run`'s stages.csv): adds the
    /// configuration, versions, stage times, failures and expert routing to the report, and
    /// writes report.html. Default: the predictions' folder when it holds fit's config.yaml.
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,
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
                partial!(
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
                partial!(
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
                partial!(
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
                partial!(
                    "mri: {} of {} cases failed (listed in {})",
                    result.failed.len(),
                    result.failed.len() + result.done + result.kept,
                    result.manifest.display()
                );
            }
        }
        Command::Predict(args) => {
            let config = args.config.load()?;
            let result =
                train::predict::run(&config, &args.checkpoint, args.fold, args.out.as_deref())?;
            println!(
                "{} patients predicted{} from {} (sha256 {})",
                result.patients,
                result
                    .fold
                    .map_or(String::new(), |k| format!(" (fold {k})")),
                args.checkpoint.display(),
                result.checkpoint_sha256
            );
            println!("predictions: {}", result.output.display());
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
                run: args.run,
                cache: Some(config.cache_dir()),
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
        Command::Run(args) => run_pipeline(&args)?,
        Command::DemoMri(args) => {
            let config = args.config.load()?;
            let root = config
                .paths
                .mri
                .clone()
                .context("configuration: `paths.mri` is not set; name the folder to write")?;
            let cohort_path = config
                .paths
                .cohort
                .clone()
                .context("configuration: `paths.cohort` is not set")?;
            let cohort = hdmoe_pipe::cohort::Cohort::read(&cohort_path)?;
            let source = mri::nifti::read(&args.source)?;
            let cases: Vec<String> = cohort.patients.iter().map(|p| p.case_id.clone()).collect();
            let written = mri::synthetic::write_cohort(&root, &source, &cases)
                .with_context(|| format!("{}: cannot write the demo MRI cases", root.display()))?;
            println!(
                "demo-mri: {written} case folders written, {} kept, in {}",
                cases.len() - written,
                root.display()
            );
        }
    }
    Ok(())
}

fn run_pipeline(args: &RunCmd) -> Result<()> {
    let config = args.stage.config.load()?;
    if args.plan {
        println!("run_dir {}", config.run_dir().display());
        for stage in pipeline::stages(&config) {
            println!("stage {}", stage.name());
        }
        return Ok(());
    }
    let exe = std::env::current_exe().context("cannot find this program's own path")?;
    let options = pipeline::RunOptions {
        exe: &exe,
        config_file: args.stage.config.config.as_deref(),
        overrides: &args.stage.config.set,
        force: args.stage.force,
        random_weights: args.random_weights,
    };
    let records = pipeline::run(&config, &options)?;
    let run_dir = config.run_dir();
    println!();
    println!("stage      outcome             seconds  peak RSS MB");
    for r in &records {
        println!(
            "{:<10} {:<18} {:>8.1}  {:>11.0}",
            r.stage.name(),
            r.outcome.as_str(),
            r.seconds,
            r.peak_rss_mb
        );
    }
    let cindex = run_dir.join("report").join(report::CINDEX_CSV);
    if let Ok(text) = std::fs::read_to_string(&cindex) {
        println!("\nC-index ({})", cindex.display());
        // Numbers to four decimals, columns aligned: the table a user reads first.
        let rows: Vec<Vec<String>> = text
            .lines()
            .map(|line| {
                line.split(',')
                    .map(|cell| match cell.parse::<f64>() {
                        Ok(x) if cell.contains('.') => format!("{x:.4}"),
                        _ => cell.to_owned(),
                    })
                    .collect()
            })
            .collect();
        let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                rows.iter()
                    .filter_map(|r| r.get(c))
                    .map(String::len)
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:>w$}"))
                .collect();
            println!("  {}", cells.join("  "));
        }
    }
    let html = run_dir.join("report").join(report::REPORT_HTML);
    if html.is_file() {
        println!("\nreport: {}", html.display());
        println!(
            "        {}",
            run_dir.join("report").join(report::REPORT_MD).display()
        );
    }
    let troubled: Vec<String> = records
        .iter()
        .filter(|r| r.outcome != pipeline::Outcome::Ok)
        .map(|r| {
            let detail = if r.message.is_empty() {
                r.exit.clone()
            } else {
                r.message.clone()
            };
            format!("{} ({}: {detail})", r.stage.name(), r.outcome.as_str())
        })
        .collect();
    if !troubled.is_empty() {
        anyhow::bail!(
            "run: {} of {} stages did not complete cleanly: {}; details in {}",
            troubled.len(),
            records.len(),
            troubled.join("; "),
            run_dir.join(pipeline::STAGES_CSV).display()
        );
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
            if error.downcast_ref::<PartialFailure>().is_some() {
                ExitCode::from(pipeline::PARTIAL_EXIT as u8)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
