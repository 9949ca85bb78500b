//! Gene columns of an MCAT-family cohort table, one row per patient.

use std::collections::HashMap;
use std::path::Path;

use super::GenomicsError;
use crate::cohort::{open_csv, CohortError};

/// The suffixes MCAT appends to gene symbols to name the table's columns.
pub const SUFFIXES: [&str; 3] = ["_mut", "_cnv", "_rnaseq"];

/// A patient's values for the requested columns; `None` where the cell is blank or not a
/// number (to be refused or imputed by the caller's policy).
#[derive(Debug, Clone, PartialEq)]
pub struct PatientValues {
    pub case_id: String,
    /// Line of the patient's first row, for messages.
    pub line: u64,
    pub values: Vec<Option<f64>>,
    /// The first blank or non-numeric cell, described (a problem under `missing: error`).
    pub first_missing: Option<String>,
    /// Two slide rows of the patient with different values, described.
    pub conflict: Option<String>,
}

/// The header of a cohort table, checked for duplicated gene columns.
pub fn read_header(path: &Path) -> Result<Vec<String>, GenomicsError> {
    let mut reader = open_csv(path).map_err(GenomicsError::Table)?;
    let headers: Vec<String> = reader
        .headers()
        .map_err(|source| {
            GenomicsError::Table(CohortError::Csv {
                path: path.to_owned(),
                line: 1,
                source,
            })
        })?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for name in &headers {
        let count = seen.entry(name).or_default();
        *count += 1;
        let is_gene = SUFFIXES.iter().any(|s| name.ends_with(s));
        if (is_gene || name == "case_id") && *count == 2 {
            return Err(GenomicsError::DuplicateColumn {
                path: path.to_owned(),
                column: name.clone(),
            });
        }
    }
    Ok(headers)
}

/// Reads `columns` (by name) for every patient, in order of first appearance. A patient's
/// slide rows must agree on every value.
pub fn read_patients(path: &Path, columns: &[String]) -> Result<Vec<PatientValues>, GenomicsError> {
    let mut reader = open_csv(path).map_err(GenomicsError::Table)?;
    let csv_error = |source: csv::Error| {
        GenomicsError::Table(CohortError::Csv {
            path: path.to_owned(),
            line: source.position().map_or(0, |p| p.line()),
            source,
        })
    };
    let headers = reader.headers().map_err(csv_error)?.clone();
    let position = |name: &str| headers.iter().position(|h| h.trim() == name);
    let case_column = position("case_id").ok_or_else(|| {
        GenomicsError::Table(CohortError::MissingColumn {
            path: path.to_owned(),
            column: "case_id",
            found: headers.iter().take(12).collect::<Vec<_>>().join(", "),
        })
    })?;
    let indices: Vec<usize> = columns
        .iter()
        .map(|c| position(c).expect("columns come from this table's header"))
        .collect();

    let mut patients: Vec<PatientValues> = Vec::new();
    let mut by_case: HashMap<String, usize> = HashMap::new();
    for record in reader.records() {
        let record = record.map_err(csv_error)?;
        let line = record.position().map_or(0, |p| p.line());
        let case_id = record[case_column].trim();
        if case_id.is_empty() {
            return Err(GenomicsError::Table(CohortError::BadValue {
                path: path.to_owned(),
                line,
                column: "case_id".into(),
                value: String::new(),
                reason: "blank case id",
            }));
        }
        let raw: Vec<&str> = indices
            .iter()
            .map(|&i| record.get(i).unwrap_or("").trim())
            .collect();
        let values: Vec<Option<f64>> = raw
            .iter()
            .map(|v| v.parse::<f64>().ok().filter(|x| x.is_finite()))
            .collect();
        let not_numeric = raw
            .iter()
            .zip(&values)
            .zip(columns)
            .find(|((_, v), _)| v.is_none())
            .map(|((r, _), c)| format!("line {line}, column `{c}`: {r:?} is not a number"));
        match by_case.get(case_id) {
            None => {
                by_case.insert(case_id.to_owned(), patients.len());
                patients.push(PatientValues {
                    case_id: case_id.to_owned(),
                    line,
                    values,
                    first_missing: not_numeric,
                    conflict: None,
                });
            }
            Some(&k) => {
                let first = &mut patients[k];
                if first.conflict.is_some() {
                    continue;
                }
                let differs = first
                    .values
                    .iter()
                    .zip(&values)
                    .zip(columns)
                    .find(|((a, b), _)| !same(**a, **b));
                if let Some(((a, b), column)) = differs {
                    first.conflict = Some(format!(
                        "slide rows on lines {} and {line} disagree in column `{column}` ({} vs {})",
                        first.line,
                        show(*a),
                        show(*b)
                    ));
                }
            }
        }
    }
    Ok(patients)
}

fn same(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => x == y,
        (None, None) => true,
        _ => false,
    }
}

fn show(v: Option<f64>) -> String {
    v.map_or_else(|| "missing".to_owned(), |x| x.to_string())
}
