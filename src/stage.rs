//! The contract every per-item stage (tile, features, mri, genomics) follows, in one place:
//!
//! - [`StageOptions`]: what a user can ask of any stage run (`--force`, `--random-weights`,
//!   `--shard I/N`); every stage's `run(config, …, &StageOptions)` takes it.
//! - [`decide`]: keep an output made with the same [`Parameters`], remake a missing or
//!   unreadable one, refuse one made with other parameters unless forced.
//! - [`Ledger`]: one stage run's per-item bookkeeping. Items are filtered by the shard, every
//!   outcome becomes a manifest row (`cache/<stage>_manifest.csv`, one per shard), the
//!   manifest is saved after every item so a killed run shows what it finished, and progress is
//!   reported. A failed save is logged and retried with the next item; only when the final save
//!   fails does the stage fail (exit 1), because then the manifest on disk is incomplete.
//! - [`StageSummary`]: what a run did (done, kept, failed, manifest path, stage details); it
//!   prints itself and gives the exit status (0 done, 3 some items failed, 1 error).
//!
//! To add a stage: give it a `run(config, options) -> Result<StageSummary<YourDetail>, _>` that
//! calls [`Ledger::new`], [`decide`] per item, [`Ledger::record`] per outcome and
//! [`Ledger::finish`]; `main.rs` prints the summary with [`finish`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use crate::cache::{self, CacheError, Freshness, Manifest, Parameters, Status};
use crate::progress::Progress;
use crate::shard::Shard;

/// Exit status of a stage that completed while some of its items (slides, cases, patients)
/// failed: the others are done and later stages can use them.
pub const PARTIAL_EXIT: u8 = 3;

/// What a command's process returns (as uv's `ExitStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Everything done (0).
    Success,
    /// The stage completed; some items failed and are listed in its manifest (3).
    Partial,
    /// The command failed (1).
    Failure,
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> Self {
        match status {
            ExitStatus::Success => ExitCode::SUCCESS,
            ExitStatus::Partial => ExitCode::from(PARTIAL_EXIT),
            ExitStatus::Failure => ExitCode::FAILURE,
        }
    }
}

/// A command's result, printed to stdout; a problem (failed items, stages that did not
/// complete) goes to stderr as the command's `error:` line.
pub trait Outcome: fmt::Display {
    /// The status and message when the command completed with a problem.
    fn problem(&self) -> Option<(ExitStatus, String)> {
        None
    }
}

/// Prints `outcome` and returns its exit status.
pub fn finish(outcome: &impl Outcome) -> ExitStatus {
    print!("{outcome}");
    match outcome.problem() {
        Some((status, message)) => {
            eprintln!("error: {message}");
            status
        }
        None => ExitStatus::Success,
    }
}

/// The process's exit code for a command's result: errors are printed once, here, with their
/// chain of causes.
pub fn exit_code(result: anyhow::Result<ExitStatus>) -> ExitCode {
    match result {
        Ok(status) => status.into(),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// What any stage run can be asked (the same flags on every stage command).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageOptions {
    /// Redo outputs that exist, even when made with other parameters.
    pub force: bool,
    /// Encoders run on seeded random weights (features, mri; ignored by the others).
    pub random_weights: bool,
    /// Which items this process handles.
    pub shard: Shard,
}

impl Default for StageOptions {
    fn default() -> Self {
        Self {
            force: false,
            random_weights: false,
            shard: Shard::ALL,
        }
    }
}

impl StageOptions {
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    pub fn random_weights(mut self, random_weights: bool) -> Self {
        self.random_weights = random_weights;
        self
    }

    pub fn shard(mut self, shard: Shard) -> Self {
        self.shard = shard;
        self
    }
}

/// What to do with one item's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Made with the same parameters: keep it.
    Keep,
    /// Missing, unreadable or forced: make it.
    Make,
}

/// Keep, make, or refuse (the message says what differs and that `--force` replaces it).
pub fn decide(output: &Path, wanted: &Parameters, force: bool) -> Result<Decision, String> {
    match cache::freshness(output, wanted, force) {
        Freshness::Done => Ok(Decision::Keep),
        Freshness::Mismatch(differences) => Err(cache::mismatch_message(output, &differences)),
        Freshness::Unreadable(reason) => {
            tracing::warn!("{}: unreadable ({reason}); remaking it", output.display());
            Ok(Decision::Make)
        }
        Freshness::Missing => Ok(Decision::Make),
    }
}

/// How one item ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Written; the note (e.g. "812 patches") goes into the manifest.
    Done(String),
    /// An output with the same parameters was kept.
    Kept,
    /// The item failed; the message names the file and the problem.
    Failed(String),
    /// A slide that opened fine but where no tissue was found (tile only).
    NoTissue(String),
}

/// The (item, message) lists and counts a ledger collects.
struct Tally {
    manifest: Manifest,
    done: usize,
    kept: usize,
    failed: Vec<(String, String)>,
    no_tissue: Vec<(String, String)>,
    progress: Option<Progress>,
    save_failed: bool,
}

impl Tally {
    fn add(&mut self, unit: &str, item: &str, started: Instant, outcome: ItemOutcome) {
        let manifest = &mut self.manifest;
        match outcome {
            ItemOutcome::Done(note) => {
                self.done += 1;
                manifest.record(item, Status::Done, started, &note);
            }
            ItemOutcome::Kept => {
                self.kept += 1;
                manifest.record(item, Status::Skipped, started, "kept: same parameters");
            }
            ItemOutcome::Failed(message) => {
                tracing::error!("{} {item}: {message}", singular(unit));
                manifest.record(item, Status::Failed, started, &message);
                self.failed.push((item.to_owned(), message));
            }
            ItemOutcome::NoTissue(message) => {
                tracing::warn!("{} {item}: {message}", singular(unit));
                manifest.record(item, Status::NoTissue, started, &message);
                self.no_tissue.push((item.to_owned(), message));
            }
        }
        if let Some(progress) = self.progress.as_mut() {
            progress.inc();
        }
    }
}

/// One stage run's per-item bookkeeping (see the module header). Shared by reference between
/// the threads that process items.
pub struct Ledger {
    stage: &'static str,
    unit: &'static str,
    tally: Mutex<Tally>,
}

impl Ledger {
    /// `stage` names the manifest (`<stage>_manifest.csv`, or `<stage>_shard<i>of<n>` for a
    /// shard); `unit` is what its items are, in the plural (`slides`, `cases`, `patients`).
    pub fn new(cache_dir: &Path, stage: &'static str, unit: &'static str, shard: Shard) -> Self {
        Self {
            stage,
            unit,
            tally: Mutex::new(Tally {
                manifest: Manifest::new(cache_dir, &shard.manifest_name(stage)),
                done: 0,
                kept: 0,
                failed: Vec::new(),
                no_tissue: Vec::new(),
                progress: None,
                save_failed: false,
            }),
        }
    }

    /// The items this shard owns (in the stage's sorted item order), and a progress bar over
    /// them.
    pub fn owned<'a, T>(&self, items: &'a [T], shard: Shard) -> Vec<&'a T> {
        let owned: Vec<&T> = items
            .iter()
            .enumerate()
            .filter(|(k, _)| shard.owns(*k))
            .map(|(_, item)| item)
            .collect();
        self.set_total(owned.len());
        owned
    }

    /// Shows progress over `total` items (called by [`Ledger::owned`]; stages whose work list
    /// is known only later call it themselves).
    pub fn set_total(&self, total: usize) {
        let label = format!("{} {}", self.stage, self.unit);
        self.lock().progress = Some(Progress::new(label, total));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one item's outcome: a manifest row, the counts, a log line for a failure, the
    /// manifest saved, progress advanced.
    pub fn record(&self, item: &str, started: Instant, outcome: ItemOutcome) {
        self.record_all([(item, outcome)], started);
    }

    /// Records items decided together (a table's rows, checked in microseconds): one save
    /// for all of them.
    pub fn record_all<'a>(
        &self,
        outcomes: impl IntoIterator<Item = (&'a str, ItemOutcome)>,
        started: Instant,
    ) {
        let mut tally = self.lock();
        let tally = &mut *tally;
        for (item, outcome) in outcomes {
            tally.add(self.unit, item, started, outcome);
        }
        // Saved after every item, so a killed run still shows what it finished.
        match tally.manifest.save() {
            Ok(()) => tally.save_failed = false,
            Err(e) if !tally.save_failed => {
                tracing::warn!("{e} (the manifest is saved again after the next item)");
                tally.save_failed = true;
            }
            Err(_) => {}
        }
    }

    /// Sorts the manifest by item, saves it, and returns the summary with the stage's detail.
    pub fn finish<D: StageDetail>(
        self,
        verb: &'static str,
        detail: D,
    ) -> Result<StageSummary<D>, CacheError> {
        let mut tally = self.tally.into_inner().unwrap_or_else(|e| e.into_inner());
        tally.progress = None;
        tally.manifest.sort();
        tally.manifest.save()?;
        tally.failed.sort();
        tally.no_tissue.sort();
        Ok(StageSummary {
            stage: self.stage,
            unit: self.unit,
            verb,
            done: tally.done,
            kept: tally.kept,
            failed: tally.failed,
            no_tissue: tally.no_tissue,
            manifest: tally.manifest.path().to_owned(),
            detail,
        })
    }
}

fn singular(unit: &str) -> &str {
    unit.strip_suffix('s').unwrap_or(unit)
}

/// The part of a summary only one stage has (patch counts, throughput, groups).
pub trait StageDetail {
    /// Shown in parentheses after the done count, e.g. "812 patches".
    fn brief(&self) -> String {
        String::new()
    }
    /// Lines printed after the summary line.
    fn lines(&self) -> Vec<String> {
        Vec::new()
    }
}

impl StageDetail for () {}

/// What a stage run did. Prints as one line (plus the detail's lines); its exit status is 3
/// when any item failed.
#[derive(Debug)]
pub struct StageSummary<D> {
    pub stage: &'static str,
    pub unit: &'static str,
    /// What `done` items had done to them ("tiled", "encoded", "written").
    pub verb: &'static str,
    pub done: usize,
    pub kept: usize,
    /// (item, message) of every failed item, sorted.
    pub failed: Vec<(String, String)>,
    /// (slide, message) of slides without tissue (tile only), sorted.
    pub no_tissue: Vec<(String, String)>,
    pub manifest: PathBuf,
    pub detail: D,
}

impl<D> StageSummary<D> {
    /// Every item this run handled.
    pub fn total(&self) -> usize {
        self.done + self.kept + self.failed.len() + self.no_tissue.len()
    }
}

impl<D: StageDetail> fmt::Display for StageSummary<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let brief = self.detail.brief();
        let brief = if brief.is_empty() {
            String::new()
        } else {
            format!(" ({brief})")
        };
        let no_tissue = if self.stage == "tile" {
            format!(", {} without tissue", self.no_tissue.len())
        } else {
            String::new()
        };
        writeln!(
            f,
            "{}: {} {} {}{brief}, {} kept (same parameters){no_tissue}, {} failed; manifest {}",
            self.stage,
            self.done,
            self.unit,
            self.verb,
            self.kept,
            self.failed.len(),
            self.manifest.display()
        )?;
        for line in self.detail.lines() {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

impl<D: StageDetail> Outcome for StageSummary<D> {
    fn problem(&self) -> Option<(ExitStatus, String)> {
        let (failed, no_tissue) = (self.failed.len(), self.no_tissue.len());
        let message = match (failed, no_tissue) {
            (0, 0) => return None,
            (_, 0) => format!(
                "{}: {failed} of {} {} failed (listed in {})",
                self.stage,
                self.total(),
                self.unit,
                self.manifest.display()
            ),
            _ => format!(
                "{}: {} of {} {} gave no output ({failed} failed, {no_tissue} without tissue; listed in {})",
                self.stage,
                failed + no_tissue,
                self.total(),
                self.unit,
                self.manifest.display()
            ),
        };
        Some((ExitStatus::Partial, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_counts_saves_and_summarises() {
        let dir = tempfile::tempdir().unwrap();
        let items = ["c", "a", "b", "d"];
        let shard: Shard = "0/2".parse().unwrap();
        let ledger = Ledger::new(dir.path(), "mri", "cases", shard);
        let owned = ledger.owned(&items, shard);
        assert_eq!(owned, [&"c", &"b"]);
        let t = Instant::now();
        ledger.record("c", t, ItemOutcome::Failed("c.nii: bad".into()));
        let path = dir.path().join("mri_shard0of2_manifest.csv");
        // Saved after the first item already.
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("c,failed,"));
        ledger.record("b", t, ItemOutcome::Done(String::new()));
        let summary = ledger.finish("encoded", ()).unwrap();
        assert_eq!((summary.done, summary.kept, summary.total()), (1, 0, 2));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.find("b,done").unwrap() < text.find("c,failed").unwrap(),
            "{text}"
        );
        assert!(summary
            .to_string()
            .starts_with("mri: 1 cases encoded, 0 kept (same parameters), 1 failed; manifest "));
        let (status, message) = summary.problem().unwrap();
        assert_eq!(status, ExitStatus::Partial);
        assert!(
            message.starts_with("mri: 1 of 2 cases failed (listed in "),
            "{message}"
        );
    }

    #[test]
    fn a_failed_final_save_is_the_stage_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("not_a_dir");
        std::fs::write(&blocked, b"file").unwrap();
        let ledger = Ledger::new(&blocked, "tile", "slides", Shard::ALL);
        ledger.record("s", Instant::now(), ItemOutcome::Done("1 patches".into()));
        let error = ledger.finish("tiled", ()).unwrap_err().to_string();
        assert!(error.contains("not_a_dir"), "{error}");
    }

    #[test]
    fn singular_units() {
        assert_eq!(singular("slides"), "slide");
        assert_eq!(singular("cases"), "case");
        assert_eq!(singular("patients"), "patient");
    }
}
