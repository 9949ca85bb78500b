//! `hdmoe-pipe run`: every stage the configuration enables, in order, then the report. A new
//! stage needs a `Stage` variant, its place in `stages` and its flags in `RunOptions::args`.
//! With `train.holdout`, two steps come between fit and the report: `external` (predict the
//! held-out patients with the fold ensemble) and `external_report` (their report, at the
//! training cutoff), which the main report then shows as its external-validation section.
//!
//! Each stage runs as a child process of this same binary, exactly as a user would type it, so
//! that its wall time and peak RSS are its own and a crash inside a native library (OpenSlide,
//! HDF5, libtorch) ends that stage only. `runs/<name>/stages.csv` records every stage as it
//! finishes; the report shows it beside the stages' own manifests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::atomic;
use crate::config::{Config, Modality};
use crate::report;
use crate::stage::{self, ExitStatus, Outcome as CommandOutcome};

/// Exit status of a stage that completed while some of its items failed.
const PARTIAL_EXIT: i32 = stage::PARTIAL_EXIT as i32;

/// The per-run record of stage times, next to `predictions.csv`.
pub const STAGES_CSV: &str = "stages.csv";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Tile,
    Features,
    Genomics,
    Mri,
    Fit,
    /// `predict --run <run> --holdout`: the `train.holdout` patients by the fold ensemble.
    External,
    /// `report` on those predictions, into `<run>/report_external/`.
    ExternalReport,
    Report,
}

/// Where the held-out patients' predictions and report go, inside the run folder.
pub const EXTERNAL_DIR: &str = "external";
pub const EXTERNAL_REPORT_DIR: &str = "report_external";

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::Tile,
        Stage::Features,
        Stage::Genomics,
        Stage::Mri,
        Stage::Fit,
        Stage::External,
        Stage::ExternalReport,
        Stage::Report,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Tile => "tile",
            Stage::Features => "features",
            Stage::Genomics => "genomics",
            Stage::Mri => "mri",
            Stage::Fit => "fit",
            Stage::External => "external",
            Stage::ExternalReport => "external_report",
            Stage::Report => "report",
        }
    }

    /// The `train.holdout` steps.
    pub fn is_external(self) -> bool {
        matches!(self, Stage::External | Stage::ExternalReport)
    }

    /// The subcommand the stage runs.
    fn command(self) -> &'static str {
        match self {
            Stage::External => "predict",
            Stage::ExternalReport => "report",
            other => other.name(),
        }
    }

    /// Stages with a per-item manifest (`<cache>/<name>_manifest.csv`, or one per shard).
    pub fn has_manifest(self) -> bool {
        matches!(
            self,
            Stage::Tile | Stage::Features | Stage::Genomics | Stage::Mri
        )
    }

    fn takes_random_weights(self) -> bool {
        matches!(self, Stage::Features | Stage::Mri)
    }

    fn takes_force(self) -> bool {
        !matches!(
            self,
            Stage::Report | Stage::External | Stage::ExternalReport
        )
    }
}

/// The stages `dataset.modalities` needs, in dependency order.
pub fn stages(config: &Config) -> Vec<Stage> {
    let has = |m: Modality| config.dataset.modalities.contains(&m);
    Stage::ALL
        .into_iter()
        .filter(|s| match s {
            Stage::Tile | Stage::Features => has(Modality::Wsi),
            Stage::Genomics => has(Modality::Genomics),
            Stage::Mri => has(Modality::Mri),
            Stage::Fit | Stage::Report => true,
            Stage::External | Stage::ExternalReport => !config.train.holdout.is_empty(),
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Completed; some items failed (listed in the stage's manifest).
    Partial,
    Failed,
    /// Not started because an earlier stage failed.
    NotRun,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Partial => "some items failed",
            Outcome::Failed => "failed",
            Outcome::NotRun => "not run",
        }
    }
}

#[derive(Debug, Clone)]
pub struct StageRecord {
    pub stage: Stage,
    pub outcome: Outcome,
    pub seconds: f64,
    pub peak_rss_mb: f64,
    /// `exit 0`, `exit 3`, `signal 9`, or empty when not run.
    pub exit: String,
    /// The stage's last `error:` line (its summary), if any.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot start {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot write: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How to call this binary for each stage.
pub struct RunOptions<'a> {
    pub exe: &'a Path,
    pub config_file: Option<&'a Path>,
    pub overrides: &'a [String],
    pub force: bool,
    pub random_weights: bool,
}

impl RunOptions<'_> {
    fn args(&self, stage: Stage, run_dir: &Path) -> Vec<String> {
        let mut args = vec![stage.command().to_owned()];
        if let Some(file) = self.config_file {
            args.push("--config".into());
            args.push(file.display().to_string());
        }
        for o in self.overrides {
            args.push("--set".into());
            args.push(o.clone());
        }
        if self.force && stage.takes_force() {
            args.push("--force".into());
        }
        if self.random_weights && stage.takes_random_weights() {
            args.push("--random-weights".into());
        }
        let external = run_dir.join(EXTERNAL_DIR);
        let paths: Vec<(&str, PathBuf)> = match stage {
            Stage::Report => vec![
                ("--predictions", run_dir.join("predictions.csv")),
                ("--out", run_dir.join("report")),
                ("--run", run_dir.to_owned()),
            ],
            Stage::External => vec![("--run", run_dir.to_owned()), ("--out", external.clone())],
            Stage::ExternalReport => vec![
                ("--predictions", external.join("predictions.csv")),
                ("--out", run_dir.join(EXTERNAL_REPORT_DIR)),
                ("--run", run_dir.to_owned()),
            ],
            _ => Vec::new(),
        };
        for (flag, path) in paths {
            args.push(flag.into());
            args.push(path.display().to_string());
        }
        if stage == Stage::External {
            args.push("--holdout".into());
        }
        args
    }
}

/// `run --plan`: the run folder and the stages this configuration enables, one per line
/// (`run_dir <path>`, then `stage <name>`), for schedulers' scripts.
pub struct Plan {
    pub run_dir: PathBuf,
    pub stages: Vec<Stage>,
}

impl Plan {
    pub fn new(config: &Config) -> Self {
        Self {
            run_dir: config.run_dir(),
            stages: stages(config),
        }
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "run_dir {}", self.run_dir.display())?;
        for stage in &self.stages {
            writeln!(f, "stage {}", stage.name())?;
        }
        Ok(())
    }
}

impl CommandOutcome for Plan {}

/// What `run` did: one record per enabled stage, and where the report is.
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub records: Vec<StageRecord>,
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f)?;
        writeln!(
            f,
            "stage            outcome             seconds  peak RSS MB"
        )?;
        for r in &self.records {
            writeln!(
                f,
                "{:<16} {:<18} {:>8.1}  {:>11.0}",
                r.stage.name(),
                r.outcome.as_str(),
                r.seconds,
                r.peak_rss_mb
            )?;
        }
        let report_dir = self.run_dir.join("report");
        let cindex = report_dir.join(report::CINDEX_CSV);
        if let Some(table) = report::cindex_console_table(&cindex) {
            writeln!(f, "\nC-index ({})", cindex.display())?;
            write!(f, "{table}")?;
        }
        let external = self.run_dir.join(EXTERNAL_REPORT_DIR);
        let external_cindex = external.join(report::CINDEX_CSV);
        if let Some(table) = report::cindex_console_table(&external_cindex) {
            writeln!(
                f,
                "\nC-index of the held-out patients (train.holdout; {})",
                external_cindex.display()
            )?;
            write!(f, "{table}")?;
        }
        let html = report_dir.join(report::REPORT_HTML);
        if html.is_file() {
            writeln!(f, "\nreport: {}", html.display())?;
            writeln!(
                f,
                "        {}",
                report_dir.join(report::REPORT_MD).display()
            )?;
        }
        Ok(())
    }
}

impl CommandOutcome for RunSummary {
    /// A stage that failed or had failed items makes the whole run fail (exit 1).
    fn problem(&self) -> Option<(ExitStatus, String)> {
        let troubled: Vec<String> = self
            .records
            .iter()
            .filter(|r| r.outcome != Outcome::Ok)
            .map(|r| {
                let detail = if r.message.is_empty() {
                    r.exit.clone()
                } else {
                    r.message.clone()
                };
                format!("{} ({}: {detail})", r.stage.name(), r.outcome.as_str())
            })
            .collect();
        (!troubled.is_empty()).then(|| {
            (
                ExitStatus::Failure,
                format!(
                    "run: {} of {} stages did not complete cleanly: {}; details in {}",
                    troubled.len(),
                    self.records.len(),
                    troubled.join("; "),
                    self.run_dir.join(STAGES_CSV).display()
                ),
            )
        })
    }
}

/// Runs the enabled stages; a stage that fails outright stops the ones after it, a stage with
/// failed items does not. Returns one record per enabled stage.
pub fn run(config: &Config, options: &RunOptions) -> Result<RunSummary, PipelineError> {
    let run_dir = config.run_dir();
    std::fs::create_dir_all(&run_dir).map_err(|source| PipelineError::Output {
        path: run_dir.clone(),
        source,
    })?;
    let mut records: Vec<StageRecord> = Vec::new();
    for stage in stages(config) {
        // The held-out patients' steps are an addition: their failure does not stop the
        // cross-validation report (it says the external section is missing by its absence,
        // and `run` exits non-zero).
        let blocked = records.iter().any(|r| {
            r.outcome == Outcome::Failed && !(stage == Stage::Report && r.stage.is_external())
        });
        let record = if blocked {
            StageRecord {
                stage,
                outcome: Outcome::NotRun,
                seconds: 0.0,
                peak_rss_mb: 0.0,
                exit: String::new(),
                message: "an earlier stage failed".into(),
            }
        } else {
            tracing::info!("run: {}", stage.name());
            run_child(options.exe, &options.args(stage, &run_dir), stage)?
        };
        records.push(record);
        // After every stage, so that the report (the last stage) reads the others' rows and a
        // killed run keeps what it measured.
        write_stages(&run_dir.join(STAGES_CSV), &records)?;
    }
    Ok(RunSummary { run_dir, records })
}

fn run_child(exe: &Path, args: &[String], stage: Stage) -> Result<StageRecord, PipelineError> {
    let start = Instant::now();
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| PipelineError::Spawn {
            exe: exe.to_owned(),
            source,
        })?;
    // Pass the stage's log through while keeping its last `error:` line for the record.
    let stderr = child.stderr.take();
    let echo = std::thread::spawn(move || {
        let mut last_error = String::new();
        if let Some(stderr) = stderr {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                if let Some(message) = line.strip_prefix("error: ") {
                    last_error = message.to_owned();
                }
            }
        }
        last_error
    });
    let (status, peak_rss_mb) = wait_with_rusage(child.id());
    let message = echo.join().unwrap_or_default();
    let seconds = start.elapsed().as_secs_f64();
    let (outcome, exit) = match status {
        ChildStatus::Exited(0) => (Outcome::Ok, "exit 0".to_owned()),
        ChildStatus::Exited(PARTIAL_EXIT) => (Outcome::Partial, format!("exit {PARTIAL_EXIT}")),
        ChildStatus::Exited(code) => (Outcome::Failed, format!("exit {code}")),
        ChildStatus::Signalled(signal) => (Outcome::Failed, format!("signal {signal}")),
        ChildStatus::Unknown(e) => (Outcome::Failed, format!("wait failed: {e}")),
    };
    Ok(StageRecord {
        stage,
        outcome,
        seconds,
        peak_rss_mb,
        exit,
        message,
    })
}

enum ChildStatus {
    Exited(i32),
    Signalled(i32),
    Unknown(std::io::Error),
}

/// Waits for the child and returns its status with its own peak RSS in MB (wait4's rusage:
/// std's `Child::wait` does not expose it).
fn wait_with_rusage(pid: u32) -> (ChildStatus, f64) {
    let pid = pid as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data, valid when zeroed; wait4 writes both out-parameters
    // and `pid` is our own unreaped child (std's Child is dropped without waiting on it).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return (ChildStatus::Unknown(error), f64::NAN);
        }
    }
    // Linux reports ru_maxrss in KiB.
    let rss = usage.ru_maxrss as f64 / 1024.0;
    let status = if libc::WIFEXITED(status) {
        ChildStatus::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        ChildStatus::Signalled(libc::WTERMSIG(status))
    } else {
        ChildStatus::Unknown(std::io::Error::other(format!("wait status {status}")))
    };
    (status, rss)
}

fn write_stages(path: &Path, records: &[StageRecord]) -> Result<(), PipelineError> {
    let output = |source: std::io::Error| PipelineError::Output {
        path: path.to_owned(),
        source,
    };
    let mut writer = csv::Writer::from_writer(Vec::new());
    let header = [
        "stage",
        "outcome",
        "seconds",
        "peak_rss_mb",
        "exit",
        "message",
    ];
    writer.write_record(header).map_err(|e| output(e.into()))?;
    for r in records {
        writer
            .write_record([
                r.stage.name(),
                r.outcome.as_str(),
                &format!("{:.2}", r.seconds),
                &format!("{:.0}", r.peak_rss_mb),
                &r.exit,
                &r.message,
            ])
            .map_err(|e| output(e.into()))?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| output(std::io::Error::other(e.to_string())))?;
    atomic::write_bytes(path, &bytes).map_err(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(modalities: &str) -> Config {
        Config::load(None, &[format!("dataset.modalities={modalities}")]).unwrap()
    }

    #[test]
    fn stages_follow_the_modalities() {
        let names = |c: &Config| stages(c).iter().map(|s| s.name()).collect::<Vec<_>>();
        assert_eq!(
            names(&config("[wsi, genomics]")),
            ["tile", "features", "genomics", "fit", "report"]
        );
        assert_eq!(
            names(&config("[wsi, mri]")),
            ["tile", "features", "mri", "fit", "report"]
        );
        assert_eq!(names(&config("[genomics]")), ["genomics", "fit", "report"]);
    }

    /// A failed held-out step: its report is not run, the cross-validation report still is,
    /// stages.csv says which step failed and why, and the run as a whole fails. The stages
    /// are a stand-in executable that fails `predict` and records every call.
    #[test]
    fn a_failed_external_step_leaves_the_report_and_fails_the_run() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let calls = dir.path().join("calls");
        let exe = dir.path().join("stage");
        std::fs::write(
            &exe,
            format!(
                "#!/bin/sh\necho \"$1\" >> '{}'\n\
                 if [ \"$1\" = predict ]; then echo 'error: predict: no patient of \
                 `train.holdout` has every modality' >&2; exit 1; fi\n",
                calls.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let overrides = [
            "dataset.modalities=[genomics]".to_owned(),
            "train.holdout=[case_1]".to_owned(),
            format!("paths.runs={}", dir.path().join("runs").display()),
        ];
        let config = Config::load(None, &overrides).unwrap();
        let options = RunOptions {
            exe: &exe,
            config_file: None,
            overrides: &overrides,
            force: false,
            random_weights: false,
        };
        let summary = run(&config, &options).unwrap();
        let outcomes: Vec<(&str, Outcome)> = summary
            .records
            .iter()
            .map(|r| (r.stage.name(), r.outcome))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("genomics", Outcome::Ok),
                ("fit", Outcome::Ok),
                ("external", Outcome::Failed),
                ("external_report", Outcome::NotRun),
                ("report", Outcome::Ok),
            ]
        );
        let called = std::fs::read_to_string(&calls).unwrap();
        assert_eq!(called, "genomics\nfit\npredict\nreport\n");
        let (status, message) = summary.problem().expect("the run fails");
        assert_eq!(status, ExitStatus::Failure);
        assert!(
            message.contains("2 of 5 stages")
                && message.contains("external (failed: predict: no patient of `train.holdout`"),
            "{message}"
        );
        let table = std::fs::read_to_string(summary.run_dir.join(STAGES_CSV)).unwrap();
        assert!(
            table.contains("external,failed,") && table.contains("external_report,not run,"),
            "{table}"
        );
    }

    #[test]
    fn stage_arguments_pass_the_options_through() {
        let overrides = ["train.epochs=2".to_owned()];
        let options = RunOptions {
            exe: Path::new("hdmoe-pipe"),
            config_file: Some(Path::new("p.yaml")),
            overrides: &overrides,
            force: true,
            random_weights: true,
        };
        let run = Path::new("runs/x");
        assert_eq!(
            options.args(Stage::Features, run),
            [
                "features",
                "--config",
                "p.yaml",
                "--set",
                "train.epochs=2",
                "--force",
                "--random-weights"
            ]
        );
        assert_eq!(
            options.args(Stage::Report, run)[5..],
            [
                "--predictions",
                "runs/x/predictions.csv",
                "--out",
                "runs/x/report",
                "--run",
                "runs/x"
            ]
        );
    }
}
