//! The cohort: MCAT-family case tables, survival labels, discrete time bins, splits and the
//! class-balanced sampling weights.
//!
//! Tables are read by column name, one row per slide; a patient is the first row of its
//! `case_id`, and every slide row of a patient must agree on the survival label.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::survival::{self, StatsError, N_BINS};

/// Number of sampling classes: time bin × censorship.
pub const N_CLASSES: usize = 2 * N_BINS;

#[derive(Debug, thiserror::Error)]
pub enum CohortError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: line {line}: malformed CSV: {source}")]
    Csv {
        path: PathBuf,
        line: u64,
        source: csv::Error,
    },
    #[error("{path}: is a zip archive, not a CSV; unzip it first (MCAT's `.csv.zip` files hold one plain CSV)")]
    Zipped { path: PathBuf },
    #[error("{path}: has no data rows")]
    Empty { path: PathBuf },
    #[error("{path}: required column `{column}` is missing (columns found: {found})")]
    MissingColumn {
        path: PathBuf,
        column: &'static str,
        found: String,
    },
    #[error("{path}: column `{column}` appears {count} times; it must be unique")]
    DuplicateColumn {
        path: PathBuf,
        column: &'static str,
        count: usize,
    },
    #[error("{path}: line {line}, column `{column}`: {reason} (value {value:?})")]
    BadValue {
        path: PathBuf,
        line: u64,
        column: String,
        value: String,
        reason: &'static str,
    },
    #[error("{0}")]
    Disagree(Box<Disagreement>),
    #[error("{path}: time bins: {source}")]
    Labels { path: PathBuf, source: StatsError },
    #[error("{path}: line {line}, column `{column}`: case {case_id} is not in the cohort table")]
    UnknownCase {
        path: PathBuf,
        line: u64,
        column: &'static str,
        case_id: String,
    },
    #[error("{path}: line {line}, column `{column}`: case {case_id} is listed twice")]
    RepeatedCase {
        path: PathBuf,
        line: u64,
        column: &'static str,
        case_id: String,
    },
    #[error("{path}: case {case_id} is in both train and val")]
    InBothSets { path: PathBuf, case_id: String },
    #[error("{path}: the `{column}` column lists no cases")]
    EmptySet { path: PathBuf, column: &'static str },
}

/// Two slide rows of one patient with different survival labels.
#[derive(Debug, thiserror::Error)]
#[error("{path}: line {line}, column `{column}`: case {case_id} has {second:?} here but {first:?} on line {first_line}; a patient's slide rows must agree")]
pub struct Disagreement {
    pub path: PathBuf,
    pub line: u64,
    pub first_line: u64,
    pub column: &'static str,
    pub case_id: String,
    pub first: String,
    pub second: String,
}

/// One patient: the survival label and every slide of theirs.
#[derive(Debug, Clone, PartialEq)]
pub struct Patient {
    pub case_id: String,
    pub slide_ids: Vec<String>,
    pub survival_months: f64,
    /// MCAT's `censorship`: true = censored (alive at last follow-up).
    pub censored: bool,
    /// Discrete time label in 0..N_BINS.
    pub time_bin: usize,
}

impl Patient {
    /// Event indicator: 1 − censorship.
    pub fn event(&self) -> bool {
        !self.censored
    }

    /// Sampling class, MCAT's `label` = 2·bin + censorship.
    pub fn class(&self) -> usize {
        2 * self.time_bin + usize::from(self.censored)
    }
}

#[derive(Debug, Clone)]
pub struct Cohort {
    pub path: PathBuf,
    /// In order of first appearance in the table.
    pub patients: Vec<Patient>,
    /// Bin edges over the whole cohort, as MCAT computes them before splitting.
    pub edges: [f64; N_BINS + 1],
    pub n_slides: usize,
    /// False for a table without `survival_months` and `censorship` (read with
    /// [`Labels::Optional`], a new cohort to score): every patient's time is NaN, censored,
    /// bin 0, and the edges are NaN.
    pub labelled: bool,
    index: HashMap<String, usize>,
}

/// Whether a cohort table must carry survival labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Labels {
    /// Training, splits, reports: both label columns, a value on every row.
    Required,
    /// Scoring a new cohort: both columns or neither (one without the other is an error).
    Optional,
}

/// Positions of the columns the cohort needs.
struct Columns {
    case_id: usize,
    slide_id: Option<usize>,
    /// Both label columns, or none for an unlabelled table.
    labels: Option<(usize, usize)>,
}

impl Columns {
    fn find(path: &Path, headers: &csv::StringRecord, labels: Labels) -> Result<Self, CohortError> {
        let find = |column: &'static str| -> Result<Option<usize>, CohortError> {
            let hits: Vec<usize> = headers
                .iter()
                .enumerate()
                .filter(|(_, h)| h.trim() == column)
                .map(|(i, _)| i)
                .collect();
            match hits.len() {
                0 => Ok(None),
                1 => Ok(Some(hits[0])),
                count => Err(CohortError::DuplicateColumn {
                    path: path.to_owned(),
                    column,
                    count,
                }),
            }
        };
        let require = |column: &'static str| -> Result<usize, CohortError> {
            find(column)?.ok_or_else(|| CohortError::MissingColumn {
                path: path.to_owned(),
                column,
                found: summarise_headers(headers),
            })
        };
        let case_id = require("case_id")?;
        let slide_id = find("slide_id")?;
        let labels = match (labels, find("survival_months")?, find("censorship")?) {
            (Labels::Optional, None, None) => None,
            _ => Some((require("survival_months")?, require("censorship")?)),
        };
        Ok(Self {
            case_id,
            slide_id,
            labels,
        })
    }
}

fn summarise_headers(headers: &csv::StringRecord) -> String {
    let shown: Vec<&str> = headers.iter().take(12).collect();
    let more = headers.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Opens a CSV file, refusing zip archives with a message that says what to do.
pub(crate) fn open_csv(path: &Path) -> Result<csv::Reader<File>, CohortError> {
    let io = |source| CohortError::Io {
        path: path.to_owned(),
        source,
    };
    let mut magic = [0u8; 4];
    let mut file = File::open(path).map_err(io)?;
    let got = file.read(&mut magic).map_err(io)?;
    if got == 4 && magic == *b"PK\x03\x04" {
        return Err(CohortError::Zipped {
            path: path.to_owned(),
        });
    }
    let file = File::open(path).map_err(io)?;
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(file))
}

fn line_of(record: &csv::StringRecord) -> u64 {
    record.position().map_or(0, |p| p.line())
}

impl Cohort {
    /// Reads an MCAT/PORPOISE `*_all_clean.csv` (or any table with `case_id`,
    /// `survival_months`, `censorship` and optionally `slide_id` columns).
    pub fn read(path: &Path) -> Result<Self, CohortError> {
        Self::read_with(path, Labels::Required)
    }

    /// [`Cohort::read`], the label columns optional with [`Labels::Optional`].
    pub fn read_with(path: &Path, labels: Labels) -> Result<Self, CohortError> {
        let mut reader = open_csv(path)?;
        let csv_error = |source: csv::Error| CohortError::Csv {
            path: path.to_owned(),
            line: source.position().map_or(0, |p| p.line()),
            source,
        };
        let headers = reader.headers().map_err(csv_error)?.clone();
        let columns = Columns::find(path, &headers, labels)?;

        let mut patients: Vec<Patient> = Vec::new();
        let mut first_line: Vec<u64> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut slide_seen: HashMap<String, u64> = HashMap::new();
        let mut n_slides = 0;
        for record in reader.records() {
            let record = record.map_err(csv_error)?;
            let line = line_of(&record);
            let bad = |column: usize, reason: &'static str| CohortError::BadValue {
                path: path.to_owned(),
                line,
                column: headers[column].to_owned(),
                value: record[column].to_owned(),
                reason,
            };
            let case_id = record[columns.case_id].trim();
            if case_id.is_empty() {
                return Err(bad(columns.case_id, "blank case id"));
            }
            let (survival_months, censored) = match columns.labels {
                Some((time, censorship)) => (
                    parse_survival(&record[time]).map_err(|reason| bad(time, reason))?,
                    parse_censorship(&record[censorship])
                        .map_err(|reason| bad(censorship, reason))?,
                ),
                None => (f64::NAN, true),
            };
            let slide_id = match columns.slide_id {
                Some(c) if !record[c].trim().is_empty() => {
                    let slide = record[c].trim().to_owned();
                    if slide_seen.insert(slide.clone(), line).is_some() {
                        return Err(bad(c, "slide listed on more than one row"));
                    }
                    n_slides += 1;
                    Some(slide)
                }
                _ => None,
            };

            match index.get(case_id) {
                Some(&k) => {
                    let first = &patients[k];
                    let disagree = |column: &'static str, first: String, second: String| {
                        CohortError::Disagree(Box::new(Disagreement {
                            path: path.to_owned(),
                            line,
                            first_line: first_line[k],
                            column,
                            case_id: case_id.to_owned(),
                            first,
                            second,
                        }))
                    };
                    // NaN (unlabelled) never equals itself: compare the bits.
                    if first.survival_months.to_bits() != survival_months.to_bits() {
                        return Err(disagree(
                            "survival_months",
                            first.survival_months.to_string(),
                            survival_months.to_string(),
                        ));
                    }
                    if first.censored != censored {
                        return Err(disagree(
                            "censorship",
                            u8::from(first.censored).to_string(),
                            u8::from(censored).to_string(),
                        ));
                    }
                    patients[k].slide_ids.extend(slide_id);
                }
                None => {
                    index.insert(case_id.to_owned(), patients.len());
                    first_line.push(line);
                    patients.push(Patient {
                        case_id: case_id.to_owned(),
                        slide_ids: slide_id.into_iter().collect(),
                        survival_months,
                        censored,
                        time_bin: 0,
                    });
                }
            }
        }
        if patients.is_empty() {
            return Err(CohortError::Empty {
                path: path.to_owned(),
            });
        }

        let labelled = columns.labels.is_some();
        let edges = if labelled {
            let time: Vec<f64> = patients.iter().map(|p| p.survival_months).collect();
            let event: Vec<bool> = patients.iter().map(Patient::event).collect();
            let edges =
                survival::quartile_edges(&time, &event).map_err(|source| CohortError::Labels {
                    path: path.to_owned(),
                    source,
                })?;
            for patient in &mut patients {
                patient.time_bin = survival::assign_bin(patient.survival_months, &edges);
            }
            edges
        } else {
            [f64::NAN; N_BINS + 1]
        };
        Ok(Self {
            path: path.to_owned(),
            patients,
            edges,
            n_slides,
            labelled,
            index,
        })
    }

    pub fn len(&self) -> usize {
        self.patients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patients.is_empty()
    }

    /// Position of a case in [`Cohort::patients`].
    pub fn position(&self, case_id: &str) -> Option<usize> {
        self.index.get(case_id).copied()
    }

    pub fn n_events(&self) -> usize {
        self.patients.iter().filter(|p| p.event()).count()
    }

    /// Patients per (time bin, censorship) among `members` (positions into `patients`).
    pub fn class_counts(&self, members: &[usize]) -> [usize; N_CLASSES] {
        let mut counts = [0; N_CLASSES];
        for &i in members {
            counts[self.patients[i].class()] += 1;
        }
        counts
    }

    /// Per-member weights for sampling with replacement, balanced over the 8 classes:
    /// N / count(class), as MCAT's `make_weights_for_balanced_classes_split`.
    pub fn sampling_weights(&self, members: &[usize]) -> Vec<f64> {
        let counts = self.class_counts(members);
        let n = members.len() as f64;
        members
            .iter()
            .map(|&i| n / counts[self.patients[i].class()] as f64)
            .collect()
    }
}

fn parse_survival(raw: &str) -> Result<f64, &'static str> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("blank survival time");
    }
    let value: f64 = raw.parse().map_err(|_| "survival time is not a number")?;
    if !value.is_finite() {
        return Err("survival time is not finite");
    }
    if value < 0.0 {
        return Err("survival time is negative");
    }
    Ok(value)
}

fn parse_censorship(raw: &str) -> Result<bool, &'static str> {
    const MESSAGE: &str = "censorship must be 0 (event observed) or 1 (censored)";
    match raw.trim().parse::<f64>() {
        Ok(0.0) => Ok(false),
        Ok(1.0) => Ok(true),
        _ => Err(MESSAGE),
    }
}

/// One cross-validation fold: positions into [`Cohort::patients`].
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub fold: usize,
    pub path: PathBuf,
    pub train: Vec<usize>,
    pub val: Vec<usize>,
}

/// Path of fold `fold`'s split file in an MCAT splits directory.
pub fn split_path(dir: &Path, fold: usize) -> PathBuf {
    dir.join(format!("splits_{fold}.csv"))
}

/// Reads an MCAT `splits_<k>.csv` (columns `train` and `val` of case ids; the shorter column is
/// padded with blanks).
pub fn read_split(path: &Path, fold: usize, cohort: &Cohort) -> Result<Split, CohortError> {
    let mut reader = open_csv(path)?;
    let csv_error = |source: csv::Error| CohortError::Csv {
        path: path.to_owned(),
        line: source.position().map_or(0, |p| p.line()),
        source,
    };
    let headers = reader.headers().map_err(csv_error)?.clone();
    let column = |name: &'static str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| CohortError::MissingColumn {
                path: path.to_owned(),
                column: name,
                found: summarise_headers(&headers),
            })
    };
    let sets = [("train", column("train")?), ("val", column("val")?)];
    let mut members: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
    let mut seen: HashMap<usize, &'static str> = HashMap::new();
    for record in reader.records() {
        let record = record.map_err(csv_error)?;
        let line = line_of(&record);
        for (set, &(name, c)) in sets.iter().enumerate() {
            let case_id = record.get(c).unwrap_or("").trim();
            if case_id.is_empty() {
                continue;
            }
            let position = cohort
                .position(case_id)
                .ok_or_else(|| CohortError::UnknownCase {
                    path: path.to_owned(),
                    line,
                    column: name,
                    case_id: case_id.to_owned(),
                })?;
            match seen.insert(position, name) {
                Some(previous) if previous == name => {
                    return Err(CohortError::RepeatedCase {
                        path: path.to_owned(),
                        line,
                        column: name,
                        case_id: case_id.to_owned(),
                    })
                }
                Some(_) => {
                    return Err(CohortError::InBothSets {
                        path: path.to_owned(),
                        case_id: case_id.to_owned(),
                    })
                }
                None => members[set].push(position),
            }
        }
    }
    let [train, val] = members;
    for (name, set) in [("train", &train), ("val", &val)] {
        if set.is_empty() {
            return Err(CohortError::EmptySet {
                path: path.to_owned(),
                column: name,
            });
        }
    }
    Ok(Split {
        fold,
        path: path.to_owned(),
        train,
        val,
    })
}

/// Reads `splits_<k>.csv` for each requested fold from an MCAT splits directory.
pub fn read_splits(
    dir: &Path,
    folds: &[usize],
    cohort: &Cohort,
) -> Result<Vec<Split>, CohortError> {
    folds
        .iter()
        .map(|&k| read_split(&split_path(dir, k), k, cohort))
        .collect()
}
