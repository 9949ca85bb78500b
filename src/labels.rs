//! `hdmoe-pipe cohort`: reads the cohort table and the splits the configuration names, checks
//! them, summarises the labels, and optionally writes one labels row per patient.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::atomic;
use crate::cohort::{self, Cohort, CohortError, Split, N_CLASSES};
use crate::config::Config;
use crate::survival::N_BINS;

#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    #[error("configuration: `paths.cohort` is not set; name the cohort CSV")]
    NoCohort,
    #[error(transparent)]
    Cohort(#[from] CohortError),
    #[error("{path}: cannot write: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct CohortReport {
    pub cohort: Cohort,
    pub splits: Vec<Split>,
    /// Human-readable summary: sizes, bin edges, class counts, fold sizes.
    pub summary: String,
}

impl std::fmt::Display for CohortReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary)
    }
}

impl crate::stage::Outcome for CohortReport {}

/// Reads and checks the cohort (and the splits when `paths.splits` is set); writes
/// `labels_out` when given.
pub fn run(config: &Config, labels_out: Option<&Path>) -> Result<CohortReport, LabelsError> {
    let path = config.paths.cohort.as_ref().ok_or(LabelsError::NoCohort)?;
    let cohort = Cohort::read(path)?;
    let splits = match &config.paths.splits {
        Some(dir) => cohort::read_splits(dir, &config.train.folds, &cohort)?,
        None => Vec::new(),
    };
    if let Some(out) = labels_out {
        atomic::write_bytes(out, labels_csv(&cohort, &splits).as_bytes()).map_err(|source| {
            LabelsError::Output {
                path: out.to_owned(),
                source,
            }
        })?;
        tracing::info!("wrote {}", out.display());
    }
    let summary = summarise(&cohort, &splits);
    Ok(CohortReport {
        cohort,
        splits,
        summary,
    })
}

fn summarise(cohort: &Cohort, splits: &[Split]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "cohort {}: {} patients, {} slides, {} events, {} censored",
        cohort.path.display(),
        cohort.len(),
        cohort.n_slides,
        cohort.n_events(),
        cohort.len() - cohort.n_events()
    );
    let edges: Vec<String> = cohort.edges.iter().map(|e| format!("{e:.6}")).collect();
    let _ = writeln!(s, "time bin edges [a, b): {}", edges.join(", "));
    let all: Vec<usize> = (0..cohort.len()).collect();
    let counts = cohort.class_counts(&all);
    let _ = writeln!(s, "patients per (bin, censorship): {}", class_line(&counts));
    for split in splits {
        let train = cohort.class_counts(&split.train);
        let _ = writeln!(
            s,
            "fold {}: {} train / {} val; train (bin, censorship): {}",
            split.fold,
            split.train.len(),
            split.val.len(),
            class_line(&train)
        );
    }
    s
}

fn class_line(counts: &[usize; N_CLASSES]) -> String {
    (0..N_BINS)
        .flat_map(|bin| (0..2).map(move |c| (bin, c)))
        .map(|(bin, c)| format!("({bin},{c}) {}", counts[2 * bin + c]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One row per patient: label fields and, per fold, whether the patient is in train or val.
fn labels_csv(cohort: &Cohort, splits: &[Split]) -> String {
    let mut role = vec![vec![""; splits.len()]; cohort.len()];
    for (k, split) in splits.iter().enumerate() {
        for &i in &split.train {
            role[i][k] = "train";
        }
        for &i in &split.val {
            role[i][k] = "val";
        }
    }
    let mut out = String::from("case_id,slide_ids,survival_months,censorship,event,time_bin,class");
    for split in splits {
        let _ = write!(out, ",fold_{}", split.fold);
    }
    out.push('\n');
    for (patient, roles) in cohort.patients.iter().zip(&role) {
        let _ = write!(
            out,
            "{},{},{},{},{},{},{}",
            patient.case_id,
            patient.slide_ids.join(";"),
            patient.survival_months,
            u8::from(patient.censored),
            u8::from(patient.event()),
            patient.time_bin,
            patient.class()
        );
        for r in roles {
            let _ = write!(out, ",{r}");
        }
        out.push('\n');
    }
    out
}
