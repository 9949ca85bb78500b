//! `hdmoe-pipe genomics`: the cohort table's gene columns grouped by MCAT's six gene families
//! (`signatures.csv`) into `cache/genomics.h5`, one row per patient, raw values.
//!
//! Group k = {gene + `_mut`, `_cnv`, `_rnaseq` for the family's genes} ∩ the table's columns,
//! sorted by byte (ASCII) order, as MCAT and the HDMoE release build them; beside them
//! `all_genes`, every gene column of the table once (the SNN baseline's input). Scaling is not
//! done here: `fit` standardises on each fold's training patients only.
//!
//! Its items are the table's patients: each is checked, recorded by the stage contract's
//! `Ledger` (one save for the whole table) and written, or left out with the reason.

pub mod signatures;
pub mod table;

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::Array2;

use crate::cache::{self, CacheError, Parameters};
use crate::cohort::CohortError;
use crate::config::{Config, GenomicsConfig, MissingPolicy};
use crate::shard::Shard;
use crate::stage::{self, Decision, ItemOutcome, Ledger, StageDetail, StageOptions, StageSummary};
pub use signatures::{read_signatures, Signature};

/// File name of the stage's output inside `paths.cache`.
pub const OUTPUT: &str = "genomics.h5";

/// The dataset of `genomics.h5` holding every gene column of the table once, in table order
/// (the SNN baseline's input); the groups are the other datasets, named in `group_names`.
pub const ALL_COLUMNS: &str = "all_genes";

#[derive(Debug, thiserror::Error)]
pub enum GenomicsError {
    #[error("configuration: `paths.{0}` is not set")]
    MissingPath(&'static str),
    #[error(transparent)]
    Table(CohortError),
    #[error("{path}: not a gene-signature table: {reason}")]
    Signatures { path: PathBuf, reason: String },
    #[error("{path}: column `{column}` appears more than once")]
    DuplicateColumn { path: PathBuf, column: String },
    #[error("{table}: gene family `{family}` of {signatures} matches no column (looked for its genes with suffixes _mut, _cnv, _rnaseq)")]
    EmptyGroup {
        table: PathBuf,
        signatures: PathBuf,
        family: String,
    },
    #[error("{path}: column `{column}` has no numeric value in any patient, so `genomics.missing: median` cannot fill it")]
    NoMedian { path: PathBuf, column: String },
    #[error("{path}: no patient could be used ({failed} failed; see {manifest})")]
    NoPatients {
        path: PathBuf,
        failed: usize,
        manifest: PathBuf,
    },
    #[error("{0}")]
    Stale(String),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// One group as written: dataset name, the family's header, its columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub key: String,
    pub family: String,
    pub columns: Vec<String>,
}

/// What `genomics` adds to the stage summary: the file and its groups.
#[derive(Debug)]
pub struct GenomicsDetail {
    pub output: PathBuf,
    pub groups: Vec<Group>,
}

impl StageDetail for GenomicsDetail {
    fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!("output {}", self.output.display())];
        for group in &self.groups {
            lines.push(format!(
                "{:<32} {:>5} columns",
                group.key,
                group.columns.len()
            ));
        }
        lines
    }
}

/// `genomics`' summary: its items are the cohort's patients (`done` written, or all `kept`
/// when the file is up to date); the failed ones are left out of the file.
pub type GenomicsSummary = StageSummary<GenomicsDetail>;

/// The groups' columns for a table header, derived from the data.
pub fn build_groups(
    header: &[String],
    signatures: &[Signature],
    dropped: Option<&str>,
    table: &Path,
    signatures_path: &Path,
) -> Result<Vec<Group>, GenomicsError> {
    let present: std::collections::HashSet<&str> = header
        .iter()
        .map(String::as_str)
        .filter(|c| Some(*c) != dropped)
        .collect();
    signatures
        .iter()
        .map(|signature| {
            let mut columns: Vec<String> = signature
                .genes
                .iter()
                .flat_map(|gene| table::SUFFIXES.iter().map(move |s| format!("{gene}{s}")))
                .filter(|c| present.contains(c.as_str()))
                .collect();
            columns.sort();
            columns.dedup();
            if columns.is_empty() {
                return Err(GenomicsError::EmptyGroup {
                    table: table.to_owned(),
                    signatures: signatures_path.to_owned(),
                    family: signature.name.clone(),
                });
            }
            Ok(Group {
                key: signature.key(),
                family: signature.name.clone(),
                columns,
            })
        })
        .collect()
}

/// The column the released HDMoE code loses to MCAT's column slicing: the table's last column,
/// when it is a gene column (MODEL_SPEC 1.3).
fn release_quirk_column(header: &[String]) -> Option<&str> {
    header
        .last()
        .map(String::as_str)
        .filter(|c| table::SUFFIXES.iter().any(|s| c.ends_with(s)))
}

fn parameters(
    cohort: &Path,
    signatures: &Path,
    options: &GenomicsConfig,
) -> Result<Parameters, GenomicsError> {
    let digest = |path: &Path| {
        cache::sha256_file(path).map_err(|source| {
            GenomicsError::Table(CohortError::Io {
                path: path.to_owned(),
                source,
            })
        })
    };
    Ok(Parameters::new()
        .with("stage", "genomics")
        .with("cohort_sha256", digest(cohort)?)
        .with("signatures_sha256", digest(signatures)?)
        .with("missing", format!("{:?}", options.missing).to_lowercase())
        .with("release_quirk", options.release_quirk)
        .with("layout_version", 2))
}

/// `genomics` for the cohort table; `options.force` remakes an existing file (shards and
/// random weights do not apply: the output is one file).
pub fn run(config: &Config, options: &StageOptions) -> Result<GenomicsSummary, GenomicsError> {
    let force = options.force;
    let cohort = config
        .paths
        .cohort
        .as_deref()
        .ok_or(GenomicsError::MissingPath("cohort"))?;
    let signatures_path = config
        .paths
        .signatures
        .as_deref()
        .ok_or(GenomicsError::MissingPath("signatures"))?;
    let cache_dir = config.cache_dir();
    let output = cache_dir.join(OUTPUT);
    let options = &config.genomics;

    let wanted = parameters(cohort, signatures_path, options)?;
    if stage::decide(&output, &wanted, force).map_err(GenomicsError::Stale)? == Decision::Keep {
        // The manifest of the run that wrote the file stays as it is (its failed rows too).
        let file = hdf5::File::open(&output).map_err(CacheError::hdf5(&output))?;
        let patients = file
            .dataset("case_ids")
            .map_err(CacheError::hdf5(&output))?
            .size();
        return Ok(StageSummary {
            stage: STAGE,
            unit: UNIT,
            verb: VERB,
            done: 0,
            kept: patients,
            failed: Vec::new(),
            no_tissue: Vec::new(),
            manifest: cache_dir.join(format!("{STAGE}_manifest.csv")),
            detail: GenomicsDetail {
                groups: read_groups(&file).map_err(CacheError::hdf5(&output))?,
                output,
            },
        });
    }

    let signatures = read_signatures(signatures_path)?;
    let header = table::read_header(cohort)?;
    let dropped = if options.release_quirk {
        release_quirk_column(&header)
    } else {
        None
    };
    let groups = build_groups(&header, &signatures, dropped, cohort, signatures_path)?;
    let all_columns = gene_columns(&header, dropped);
    let patients = table::read_patients(cohort, &all_columns)?;

    let ledger = Ledger::new(&cache_dir, STAGE, UNIT, Shard::ALL);
    ledger.set_total(patients.len());
    let started = Instant::now();
    let mut kept: Vec<&table::PatientValues> = Vec::new();
    let mut outcomes = Vec::new();
    for patient in &patients {
        let problem = patient.conflict.clone().or_else(|| {
            (options.missing == MissingPolicy::Error)
                .then(|| patient.first_missing.clone())
                .flatten()
                .map(|m| format!("{m} (set genomics.missing to zero or median to fill it)"))
        });
        let outcome = match problem {
            Some(reason) => ItemOutcome::Failed(format!(
                "{}: case {}: {reason}",
                cohort.display(),
                patient.case_id
            )),
            None => {
                kept.push(patient);
                ItemOutcome::Done(String::new())
            }
        };
        outcomes.push((patient.case_id.as_str(), outcome));
    }
    ledger.record_all(outcomes, started);
    if kept.is_empty() {
        let summary = ledger.finish(VERB, ())?;
        return Err(GenomicsError::NoPatients {
            path: cohort.to_owned(),
            failed: summary.failed.len(),
            manifest: summary.manifest,
        });
    }

    let matrix = fill_missing(&kept, &all_columns, options.missing, cohort)?;
    let case_ids: Vec<String> = kept.iter().map(|p| p.case_id.clone()).collect();
    write_output(
        &output,
        &wanted,
        &case_ids,
        &groups,
        &all_columns,
        &matrix,
        dropped,
    )?;
    Ok(ledger.finish(VERB, GenomicsDetail { output, groups })?)
}

const STAGE: &str = "genomics";
const UNIT: &str = "patients";
const VERB: &str = "written";

/// Every gene column of the table (suffix `_mut`, `_cnv` or `_rnaseq`) in the table's order,
/// less the release quirk's column: what MCAT's SNN takes (`genomic_features`), each column
/// once. The groups' columns are a subset.
fn gene_columns(header: &[String], dropped: Option<&str>) -> Vec<String> {
    header
        .iter()
        .filter(|c| Some(c.as_str()) != dropped)
        .filter(|c| table::SUFFIXES.iter().any(|s| c.ends_with(s)))
        .cloned()
        .collect()
}

/// Patients × columns, with blanks filled by the policy (under `error` none are left).
fn fill_missing(
    patients: &[&table::PatientValues],
    columns: &[String],
    policy: MissingPolicy,
    cohort: &Path,
) -> Result<Array2<f64>, GenomicsError> {
    let mut matrix = Array2::<f64>::zeros((patients.len(), columns.len()));
    for (j, column) in columns.iter().enumerate() {
        let present: Vec<f64> = patients.iter().filter_map(|p| p.values[j]).collect();
        let fill = match policy {
            MissingPolicy::Median if present.len() < patients.len() => {
                crate::survival::median(&present).map_err(|_| GenomicsError::NoMedian {
                    path: cohort.to_owned(),
                    column: column.clone(),
                })?
            }
            _ => 0.0,
        };
        for (i, p) in patients.iter().enumerate() {
            matrix[[i, j]] = p.values[j].unwrap_or(fill);
        }
    }
    Ok(matrix)
}

fn write_output(
    output: &Path,
    parameters: &Parameters,
    case_ids: &[String],
    groups: &[Group],
    all_columns: &[String],
    matrix: &Array2<f64>,
    dropped: Option<&str>,
) -> Result<(), GenomicsError> {
    cache::write_h5(output, |file| {
        cache::stamp(file, parameters)?;
        cache::write_str_attr(file, "software_version", crate::VERSION)?;
        cache::write_str_attr(file, "dropped_columns", dropped.unwrap_or(""))?;
        let keys: Vec<String> = groups.iter().map(|g| g.key.clone()).collect();
        cache::write_str_list_attr(file, "group_names", &keys)?;
        let ids = cache::to_varlen(case_ids)?;
        file.new_dataset_builder()
            .obj_track_times(false)
            .with_data(ids.as_slice())
            .create("case_ids")?;
        let position: std::collections::HashMap<&str, usize> = all_columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        let all = file
            .new_dataset_builder()
            .obj_track_times(false)
            .with_data(matrix)
            .create(ALL_COLUMNS)?;
        cache::write_str_list_attr(&all, "feature_names", all_columns)?;
        for (index, group) in groups.iter().enumerate() {
            // Group columns are gene columns of the table, so all present.
            let picks: Vec<usize> = group
                .columns
                .iter()
                .filter_map(|c| position.get(c.as_str()).copied())
                .collect();
            let values = matrix
                .select(ndarray::Axis(1), &picks)
                .as_standard_layout()
                .into_owned();
            let dataset = file
                .new_dataset_builder()
                .obj_track_times(false)
                .with_data(&values)
                .create(group.key.as_str())?;
            cache::write_str_list_attr(&dataset, "feature_names", &group.columns)?;
            cache::write_str_attr(&dataset, "family", &group.family)?;
            dataset
                .new_attr::<u32>()
                .shape(())
                .create("group_index")?
                .write_scalar(&(index as u32))?;
        }
        Ok(())
    })?;
    Ok(())
}

/// The groups recorded in a `genomics.h5`, in order.
pub fn read_groups(file: &hdf5::File) -> hdf5::Result<Vec<Group>> {
    cache::read_str_list_attr(file, "group_names")?
        .into_iter()
        .map(|key| {
            let dataset = file.dataset(&key)?;
            Ok(Group {
                family: cache::read_str_attr(&dataset, "family")?,
                columns: cache::read_str_list_attr(&dataset, "feature_names")?,
                key,
            })
        })
        .collect()
}
