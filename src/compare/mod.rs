//! `hdmoe-pipe compare`: the paper's Table 2 on the user's own cohorts. Every system is trained
//! by the unchanged `fit` on the same folds, sampler, genomics scaling, epochs and seeds, each
//! (study, model) in its own run folder (`<study's runs>/compare/<model>`, resumable, a fold at
//! a time), with the modalities the system takes from those the study has. `--shard I/N` trains
//! only every N-th (study, model, fold) job, for a scheduler's array; a run without it trains
//! what is missing and writes the table (`table.rs`).

mod table;

use std::fmt;
use std::path::PathBuf;

use crate::config::{Config, Modality};
use crate::model::registry::MODELS;
use crate::model::Architecture;
use crate::shard::Shard;
use crate::train::{self, FitError, FitReport};

pub use table::{Cell, Comparison};

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("study `{study}`, model `{model}`: {source}")]
    Fit {
        study: String,
        model: &'static str,
        #[source]
        source: FitError,
    },
    #[error("{path}: {message}")]
    Output { path: PathBuf, message: String },
    #[error("no system to compare: {0}")]
    Nothing(String),
}

/// What `compare` does besides the studies' own configurations.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// The systems; empty: every registered model that takes some of a study's modalities.
    pub models: Vec<Architecture>,
    pub force: bool,
    pub shard: Shard,
    /// Where the table goes.
    pub out: PathBuf,
    /// Patient resamples of the out-of-fold C-index difference to HDMoE.
    pub bootstrap: usize,
}

/// One system on one study: the configuration `fit` runs.
pub struct Job {
    pub study: String,
    pub model: Architecture,
    pub config: Config,
}

/// The systems to compare on `study`, each with the modalities it takes: the study's own when
/// the system accepts them, else the largest subset it accepts (a pathology-only system gets
/// `[wsi]`, a genomics-only one `[genomics]`). Systems that take none are listed as skipped.
pub fn plan(study: &Config, models: &[Architecture]) -> (Vec<Job>, Vec<(&'static str, String)>) {
    let all: Vec<Architecture> = if models.is_empty() {
        MODELS.iter().map(|m| Architecture(m)).collect()
    } else {
        models.to_vec()
    };
    let have = &study.dataset.modalities;
    let mut jobs = Vec::new();
    let mut skipped = Vec::new();
    for model in all {
        let entry = model.entry();
        let Some(modalities) = subsets(have)
            .into_iter()
            .find(|m| (entry.accepts)(m).is_ok())
        else {
            let why = (entry.accepts)(have).err().unwrap_or_default();
            skipped.push((model.name(), why));
            continue;
        };
        let mut config = study.clone();
        config.model.architecture = model;
        config.dataset.modalities = modalities;
        config.paths.runs = Some(study.run_dir().join("compare").join(model.name()));
        jobs.push(Job {
            study: study.dataset.name.clone(),
            model,
            config,
        });
    }
    (jobs, skipped)
}

/// The non-empty subsets of `have`, largest first (the whole set first), each in `have`'s order.
fn subsets(have: &[Modality]) -> Vec<Vec<Modality>> {
    let n = have.len();
    let mut out: Vec<Vec<Modality>> = (1u32..(1 << n))
        .map(|mask| {
            (0..n)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| have[i])
                .collect()
        })
        .collect();
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

/// What a compare run did.
pub struct CompareReport {
    /// (study, model, folds trained or kept) per job run here.
    pub trained: Vec<(String, &'static str, usize)>,
    pub skipped: Vec<(String, &'static str, String)>,
    /// The table, when this run covered every job (no shard).
    pub comparison: Option<Comparison>,
    pub written: Vec<PathBuf>,
}

/// Trains every job (or this shard's) and, without a shard, writes the table.
pub fn run(studies: &[Config], options: &CompareOptions) -> Result<CompareReport, CompareError> {
    let mut report = CompareReport {
        trained: Vec::new(),
        skipped: Vec::new(),
        comparison: None,
        written: Vec::new(),
    };
    let mut finished: Vec<(Job, FitReport)> = Vec::new();
    let mut index = 0usize;
    let mut planned = 0usize;
    for study in studies {
        let (jobs, skipped) = plan(study, &options.models);
        report.skipped.extend(
            skipped
                .into_iter()
                .map(|(m, why)| (study.dataset.name.clone(), m, why)),
        );
        planned += jobs.len();
        for job in jobs {
            let fit = |config: &Config| {
                train::run(config, options.force).map_err(|source| CompareError::Fit {
                    study: job.study.clone(),
                    model: job.model.name(),
                    source,
                })
            };
            if options.shard == Shard::ALL {
                let fitted = fit(&job.config)?;
                report
                    .trained
                    .push((job.study.clone(), job.model.name(), fitted.folds.len()));
                finished.push((job, fitted));
                continue;
            }
            // One (study, model, fold) per job: a later run over all folds keeps them.
            let mut folds = 0;
            for &fold in &job.config.train.folds {
                if options.shard.owns(index) {
                    let mut config = job.config.clone();
                    config.train.folds = vec![fold];
                    fit(&config)?;
                    folds += 1;
                }
                index += 1;
            }
            if folds > 0 {
                report
                    .trained
                    .push((job.study.clone(), job.model.name(), folds));
            }
        }
    }
    if planned == 0 {
        let why: Vec<String> = report
            .skipped
            .iter()
            .map(|(study, model, why)| format!("{study} / {model}: {why}"))
            .collect();
        return Err(CompareError::Nothing(why.join("; ")));
    }
    if options.shard == Shard::ALL {
        let comparison = Comparison::new(&finished, options.bootstrap)?;
        report.written = comparison.write(&options.out)?;
        report.comparison = Some(comparison);
    }
    Ok(report)
}

impl fmt::Display for CompareReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (study, model, folds) in &self.trained {
            writeln!(f, "compare: {study} / {model}: {folds} folds")?;
        }
        for (study, model, why) in &self.skipped {
            writeln!(f, "compare: {study} / {model}: skipped ({why})")?;
        }
        match &self.comparison {
            Some(c) => {
                write!(f, "{}", c.markdown())?;
                for path in &self.written {
                    writeln!(f, "wrote {}", path.display())?;
                }
            }
            None => writeln!(
                f,
                "compare: this shard's jobs are done; run without --shard to write the table"
            )?,
        }
        Ok(())
    }
}

impl crate::stage::Outcome for CompareReport {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_system_gets_the_modalities_it_takes() {
        let mut study = Config::default();
        study.dataset.name = "s".into();
        study.dataset.modalities = vec![Modality::Wsi, Modality::Genomics];
        let (jobs, skipped) = plan(&study, &[]);
        let of = |name: &str| {
            jobs.iter()
                .find(|j| j.model.name() == name)
                .map(|j| j.config.dataset.modalities.clone())
        };
        assert_eq!(of("hdmoe"), Some(vec![Modality::Wsi, Modality::Genomics]));
        assert_eq!(of("mcat"), Some(vec![Modality::Wsi, Modality::Genomics]));
        assert_eq!(of("maxmil"), Some(vec![Modality::Wsi]));
        assert_eq!(of("snn"), Some(vec![Modality::Genomics]));
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(
            jobs[0].config.run_dir(),
            PathBuf::from("runs/s/compare").join(jobs[0].model.name())
        );
        // A genomics-only study: the pathology systems and MCAT cannot run on it.
        study.dataset.modalities = vec![Modality::Genomics];
        let (jobs, skipped) = plan(&study, &[]);
        let names: Vec<&str> = jobs.iter().map(|j| j.model.name()).collect();
        assert!(names.contains(&"snn") && names.contains(&"snn_trans"));
        assert!(names.contains(&"hdmoe"));
        let skipped: Vec<&str> = skipped.iter().map(|s| s.0).collect();
        assert!(skipped.contains(&"maxmil") && skipped.contains(&"mcat"));
    }
}
