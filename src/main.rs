//! The `hdmoe-pipe` command line: parse the arguments, load the configuration, dispatch to the
//! library. Each command returns an [`ExitStatus`]; what it prints, and what its status is,
//! the library decides (`stage::Outcome`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use hdmoe_pipe::config::Config;
use hdmoe_pipe::model::Architecture;
use hdmoe_pipe::shard::Shard;
use hdmoe_pipe::stage::{self, ExitStatus, StageOptions};
use hdmoe_pipe::{
    compare, doctor, features, genomics, labels, mri, pipeline, report, slide, train,
};

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
    Features(EncodeCmd),
    /// Group the cohort table's gene columns into the gene families of signatures.csv
    /// (cache/genomics.h5, one row per patient, raw values).
    Genomics(StageCmd),
    /// Crop each case's MRI sequences around the tumour mask and encode them with a 3-D ResNet
    /// (cache/mri/<case>.h5, one feature row per sequence).
    Mri(EncodeCmd),
    /// Train the model.architecture (HDMoE, or one of the paper's baselines: maxmil, meanmil,
    /// abmil, clam_sb, clam_mb, transmil, snn, snn_trans, mcat, motcat, cmta, survpath, mome,
    /// ccl, pibd, ld_cvae) fold by fold on the cached features; writes
    /// runs/<name>/{fold_<k>/…, predictions.csv, summary.csv}. Resumes an interrupted fit.
    Fit(StageCmd),
    /// The paper's Table 2 on your cohorts: every --config is a study; each system of --models
    /// (default: every model that takes some of the study's modalities) is trained by fit on the
    /// same folds, sampler, epochs and seeds, with the modalities it takes, in
    /// runs/<name>/compare/<model> (resumable). Then OUT/compare.{csv,md,html}: mean ± std
    /// C-index over folds at train.selection, the best epoch beside it, and against HDMoE a
    /// paired t-test over folds and a bootstrap over patients. With --shard I/N only every N-th
    /// (study, model, fold) is trained, and no table is written.
    Compare(CompareCmd),
    /// Risk, hazards and survival of the cohort's patients from a trained model: fit's
    /// fold_<k>/model.safetensors or a state dict saved by the official code (.pth/.pth.tar in
    /// any form torch writes; names in docs/PARAMETERS.md). With --fold K, fold K's validation
    /// patients, genomics scaled as fit scaled them (on the fold's training patients); without,
    /// every patient that has the configured modalities. Writes DIR/predictions.csv (fit's
    /// columns, then survival_0..3). With --run DIR instead of --checkpoint, a new cohort (the
    /// config's own cached features, genomics, MRI) scored by that fit's models (deploy.json):
    /// the fold models averaged or the final model, features made another way refused, genomic
    /// columns put in the training order, and the risk group at the training cohort's frozen
    /// cutoff (columns risk_sd, risk_group, models added).
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

impl StageCmd {
    fn options(&self) -> StageOptions {
        StageOptions::default().force(self.force)
    }
}

#[derive(Args)]
struct CompareCmd {
    /// A study's YAML file (pipelines/<name>.yaml); repeat for several studies (the columns).
    #[arg(long = "config", value_name = "FILE", required = true)]
    configs: Vec<PathBuf>,
    /// Override one configuration value in every study; repeatable. The value is read as YAML.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// The systems, by model.architecture name, comma-separated [default: every registered
    /// model that takes some of a study's modalities].
    #[arg(long, value_name = "A,B,...", value_delimiter = ',')]
    models: Vec<String>,
    /// Retrain folds that already exist, even when made with other parameters.
    #[arg(long)]
    force: bool,
    /// Train only (study, model, fold) job I of every N, e.g. 0/3; writes no table.
    #[arg(long, value_name = "I/N", default_value = "0/1")]
    shard: Shard,
    /// Where compare.csv, compare.md and compare.html go.
    #[arg(long, value_name = "DIR", default_value = "runs/compare")]
    out: PathBuf,
    /// Patient resamples of the bootstrap against HDMoE.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    bootstrap: usize,
}

#[derive(Args)]
struct PredictCmd {
    #[command(flatten)]
    config: ConfigArgs,
    /// The model's weights: model.safetensors from fit, or an official state dict.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "run",
        conflicts_with = "run"
    )]
    checkpoint: Option<PathBuf>,
    /// Predict fold K's validation patients (genomics scaled on its training patients).
    #[arg(long, value_name = "K", conflicts_with = "run")]
    fold: Option<usize>,
    /// A finished fit's run folder (runs/<name>, with deploy.json) whose models score the
    /// config's cohort.
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,
    /// With --run: the fold models averaged, or the final model (`train.final: true`).
    #[arg(long, value_enum, default_value = "folds", requires = "run")]
    ensemble: train::predict::Ensemble,
    /// With --run: only the run's `train.holdout` patients, which no fold saw.
    #[arg(long, requires = "run")]
    holdout: bool,
    /// Output folder [default: runs/<name>/predict_fold_<K>, runs/<name>/predict, or with
    /// --run runs/<new name>/predict_<ensemble>].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// The arguments of the stages that run an encoder (features, mri).
#[derive(Args)]
struct EncodeCmd {
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

impl EncodeCmd {
    fn options(&self) -> StageOptions {
        self.stage
            .options()
            .random_weights(self.random_weights)
            .shard(self.shard)
    }
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

fn run(cli: Cli) -> Result<ExitStatus> {
    Ok(match cli.command {
        Command::Config(args) => {
            print!("{}", args.load()?.to_yaml());
            ExitStatus::Success
        }
        Command::Cohort(args) => {
            let config = args.config.load()?;
            stage::finish(&labels::run(&config, args.labels_out.as_deref())?)
        }
        Command::Tile(args) => {
            let mut overrides = args.stage.config.set.clone();
            if let Some(mpp) = args.mpp {
                overrides.push(format!("tile.fallback_mpp={mpp}"));
            }
            let config = Config::load(args.stage.config.config.as_deref(), &overrides)?;
            let options = args.stage.options().shard(args.shard);
            stage::finish(&slide::run(&config, args.slides.as_deref(), &options)?)
        }
        Command::Features(args) => {
            let config = args.stage.config.load()?;
            stage::finish(&features::run(&config, &args.options())?)
        }
        Command::Genomics(args) => {
            let config = args.config.load()?;
            stage::finish(&genomics::run(&config, &args.options())?)
        }
        Command::Mri(args) => {
            let config = args.stage.config.load()?;
            stage::finish(&mri::run(&config, &args.options())?)
        }
        Command::Fit(args) => {
            hdmoe_pipe::memory::keep_large_blocks();
            let config = args.config.load()?;
            stage::finish(&train::run(&config, args.force)?)
        }
        Command::Compare(args) => {
            hdmoe_pipe::memory::keep_large_blocks();
            let studies = args
                .configs
                .iter()
                .map(|c| Config::load(Some(c), &args.set))
                .collect::<Result<Vec<_>, _>>()?;
            let models = args
                .models
                .iter()
                .map(|m| Architecture::find(m).map_err(anyhow::Error::msg))
                .collect::<Result<Vec<_>>>()?;
            let options = compare::CompareOptions {
                models,
                force: args.force,
                shard: args.shard,
                out: args.out,
                bootstrap: args.bootstrap,
            };
            stage::finish(&compare::run(&studies, &options)?)
        }
        Command::Predict(args) => {
            let config = args.config.load()?;
            let out = args.out.as_deref();
            match (&args.run, &args.checkpoint) {
                (Some(run), _) => stage::finish(&train::predict::run_deployed(
                    &config,
                    run,
                    args.ensemble,
                    args.holdout,
                    out,
                )?),
                (None, Some(checkpoint)) => {
                    stage::finish(&train::predict::run(&config, checkpoint, args.fold, out)?)
                }
                (None, None) => unreachable!("clap requires --checkpoint or --run"),
            }
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
            stage::finish(&outputs)
        }
        Command::Doctor => {
            for (name, value) in doctor::facts() {
                println!("{name}: {value}");
            }
            ExitStatus::Success
        }
        Command::Run(args) => {
            let config = args.stage.config.load()?;
            if args.plan {
                return Ok(stage::finish(&pipeline::Plan::new(&config)));
            }
            let exe = std::env::current_exe().context("cannot find this program's own path")?;
            let options = pipeline::RunOptions {
                exe: &exe,
                config_file: args.stage.config.config.as_deref(),
                overrides: &args.stage.config.set,
                force: args.stage.force,
                random_weights: args.random_weights,
            };
            stage::finish(&pipeline::run(&config, &options)?)
        }
        Command::DemoMri(args) => {
            let config = args.config.load()?;
            stage::finish(&mri::synthetic::write_demo(&config, &args.source)?)
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.quiet, cli.verbose);
    hdmoe_pipe::progress::set_quiet(cli.quiet);
    hdmoe_pipe::memory::keep_freed_memory();
    stage::exit_code(run(cli))
}
