//! Reading the out-of-fold predictions table that `fit` writes (and users may bring).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use polars::prelude::*;

use super::ReportError;
use crate::survival::N_BINS;

/// Columns the report needs; any others are ignored.
pub const REQUIRED_COLUMNS: [&str; 5] = ["case_id", "fold", "risk", "survival_months", "event"];

/// The model's discrete hazards (fit's and predict's); optional, needed for the Brier scores
/// and the calibration table.
pub const HAZARD_COLUMNS: [&str; N_BINS] = ["hazard_0", "hazard_1", "hazard_2", "hazard_3"];

/// `high` / `low` at the training cohort's frozen cutoff (predict writes it); optional.
pub const RISK_GROUP_COLUMN: &str = "risk_group";
/// `predict --run`'s frozen cutoff behind `risk_group` (one value on every row).
pub const RISK_CUTOFF_COLUMN: &str = "risk_cutoff";

/// One row per patient, predicted on the fold where it was held out.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    pub path: PathBuf,
    pub case_id: Vec<String>,
    pub fold: Vec<i64>,
    pub risk: Vec<f64>,
    pub time: Vec<f64>,
    pub event: Vec<bool>,
    /// `fit`'s model-selection rule (`last`, `best`, `nested`), when the table says.
    pub selection: Option<String>,
    /// True when every `fold` cell is blank: one cohort predicted as a whole (`predict`
    /// without `--fold`, e.g. an external cohort); `fold` is then 0 for every row.
    pub single_cohort: bool,
    /// `hazard_0..hazard_3` per patient, when the table has them.
    pub hazards: Option<Vec<[f64; N_BINS]>>,
    /// The `risk_group` column (true = `high`), when the table has it.
    pub risk_group: Option<Vec<bool>>,
    /// The `risk_cutoff` column's one value, when the table has it with `risk_group`.
    pub risk_cutoff: Option<f64>,
}

impl Predictions {
    pub fn len(&self) -> usize {
        self.case_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.case_id.is_empty()
    }

    /// The predicted discrete survival curves, S_k = prod_{j<=k} (1 - h_j), when the table has
    /// hazards.
    pub fn survival_curves(&self) -> Option<Vec<[f64; N_BINS]>> {
        self.hazards.as_ref().map(|hazards| {
            hazards
                .iter()
                .map(|h| {
                    let mut curve = [0.0; N_BINS];
                    let mut s = 1.0;
                    for (k, &hk) in h.iter().enumerate() {
                        s *= 1.0 - hk;
                        curve[k] = s;
                    }
                    curve
                })
                .collect()
        })
    }

    /// Row positions per fold, folds in increasing order.
    pub fn by_fold(&self) -> BTreeMap<i64, Vec<usize>> {
        let mut folds: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, &k) in self.fold.iter().enumerate() {
            folds.entry(k).or_default().push(i);
        }
        folds
    }

    pub fn read(path: &Path) -> Result<Self, ReportError> {
        let df = read_csv(path)?;
        if df.height() == 0 {
            return Err(invalid(path, "has a header but no prediction rows".into()));
        }
        let names: Vec<String> = df
            .get_column_names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        for column in REQUIRED_COLUMNS {
            if !names.iter().any(|n| n == column) {
                return Err(invalid(
                    path,
                    format!(
                        "required column `{column}` is missing (columns found: {}; needed: {})",
                        names.join(", "),
                        REQUIRED_COLUMNS.join(", ")
                    ),
                ));
            }
        }
        let case_id = strings(path, &df, "case_id")?;
        let single_cohort = all_blank(&df, "fold");
        let fold = if single_cohort {
            vec![0; df.height()]
        } else {
            integers(path, &df, "fold")?
        };
        let risk = floats(path, &df, "risk")?;
        if all_blank(&df, "survival_months") && all_blank(&df, "event") {
            return Err(invalid(
                path,
                "no survival labels (blank `survival_months` and `event`: `predict` scored a \
                 cohort table without them); a report compares predictions with outcomes, so \
                 add `survival_months` and `censorship` to the cohort table and predict again"
                    .into(),
            ));
        }
        let time = floats(path, &df, "survival_months")?;
        let event = integers(path, &df, "event")?;

        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (row, id) in case_id.iter().enumerate() {
            if id.trim().is_empty() {
                return Err(at_row(path, row, "case_id", "blank case id"));
            }
            if let Some(first) = seen.insert(id, row) {
                return Err(at_row(
                    path,
                    row,
                    "case_id",
                    &format!("case {id} already predicted on line {}", first + 2),
                ));
            }
        }
        for (row, &t) in time.iter().enumerate() {
            if t < 0.0 {
                return Err(at_row(
                    path,
                    row,
                    "survival_months",
                    "negative survival time",
                ));
            }
        }
        let event = event
            .iter()
            .enumerate()
            .map(|(row, &e)| match e {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(at_row(
                    path,
                    row,
                    "event",
                    "event must be 0 (censored) or 1 (event)",
                )),
            })
            .collect::<Result<Vec<bool>, _>>()?;
        let selection = if names.iter().any(|n| n == "selection") {
            strings(path, &df, "selection")?.into_iter().next()
        } else {
            None
        };
        let has = |name: &str| names.iter().any(|n| n == name);
        let hazards = match HAZARD_COLUMNS.iter().filter(|c| has(c)).count() {
            0 => None,
            N_BINS => Some(hazards(path, &df)?),
            _ => {
                return Err(invalid(
                    path,
                    format!(
                        "has some but not all of the hazard columns {} (found: {})",
                        HAZARD_COLUMNS.join(", "),
                        names.join(", ")
                    ),
                ))
            }
        };
        let risk_group = if has(RISK_GROUP_COLUMN) {
            Some(risk_groups(path, &df)?)
        } else {
            None
        };
        let risk_cutoff = if has(RISK_CUTOFF_COLUMN) && !all_blank(&df, RISK_CUTOFF_COLUMN) {
            let values = floats(path, &df, RISK_CUTOFF_COLUMN)?;
            if risk_group.is_none() {
                return Err(invalid(
                    path,
                    format!("has `{RISK_CUTOFF_COLUMN}` without `{RISK_GROUP_COLUMN}`"),
                ));
            }
            if let Some(row) = values.iter().position(|v| *v != values[0]) {
                return Err(at_row(
                    path,
                    row,
                    RISK_CUTOFF_COLUMN,
                    &format!("{} differs from the first row's {}", values[row], values[0]),
                ));
            }
            values.first().copied()
        } else {
            None
        };
        Ok(Self {
            path: path.to_owned(),
            case_id,
            fold,
            risk,
            time,
            event,
            selection,
            single_cohort,
            hazards,
            risk_group,
            risk_cutoff,
        })
    }
}

/// True when the column exists and every cell is blank (read as null).
fn all_blank(df: &DataFrame, name: &str) -> bool {
    df.column(name)
        .is_ok_and(|c| c.null_count() == c.len() && !c.is_empty())
}

/// hazard_0..hazard_3 as per-patient arrays, each a probability in [0, 1].
fn hazards(path: &Path, df: &DataFrame) -> Result<Vec<[f64; N_BINS]>, ReportError> {
    let columns = HAZARD_COLUMNS
        .iter()
        .map(|name| floats(path, df, name))
        .collect::<Result<Vec<_>, _>>()?;
    for (name, column) in HAZARD_COLUMNS.iter().zip(&columns) {
        if let Some(row) = column.iter().position(|h| !(0.0..=1.0).contains(h)) {
            return Err(at_row(
                path,
                row,
                name,
                &format!("{} is not a probability in [0, 1]", column[row]),
            ));
        }
    }
    Ok((0..df.height())
        .map(|i| std::array::from_fn(|k| columns[k][i]))
        .collect())
}

/// `risk_group`: `high` or `low` (case and surrounding spaces ignored).
fn risk_groups(path: &Path, df: &DataFrame) -> Result<Vec<bool>, ReportError> {
    strings(path, df, RISK_GROUP_COLUMN)?
        .iter()
        .enumerate()
        .map(|(row, v)| match v.trim().to_ascii_lowercase().as_str() {
            "high" => Ok(true),
            "low" => Ok(false),
            _ => Err(at_row(
                path,
                row,
                RISK_GROUP_COLUMN,
                &format!("{v:?} is neither `high` nor `low`"),
            )),
        })
        .collect()
}

pub(crate) fn invalid(path: &Path, message: String) -> ReportError {
    ReportError::Input {
        path: path.to_owned(),
        message,
    }
}

/// Error for data row `row` (0-based); line numbers count the header as line 1.
fn at_row(path: &Path, row: usize, column: &str, reason: &str) -> ReportError {
    invalid(
        path,
        format!("line {}, column `{column}`: {reason}", row + 2),
    )
}

pub(crate) fn read_csv(path: &Path) -> Result<DataFrame, ReportError> {
    let empty = std::fs::metadata(path)
        .map_err(|e| invalid(path, format!("cannot read: {e}")))?
        .len()
        == 0;
    if empty {
        return Err(invalid(path, "is empty (no header, no rows)".into()));
    }
    CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(None)
        .try_into_reader_with_file_path(Some(path.to_owned()))
        .and_then(|reader| reader.finish())
        .map_err(|e| invalid(path, format!("not a readable CSV table: {e}")))
}

fn column<'a>(path: &Path, df: &'a DataFrame, name: &str) -> Result<&'a Column, ReportError> {
    df.column(name)
        .map_err(|_| invalid(path, format!("required column `{name}` is missing")))
}

/// The raw text of a cell, for error messages.
fn raw(column: &Column, row: usize) -> String {
    column
        .get(row)
        .map_or_else(|_| "?".to_owned(), |v| v.to_string())
}

pub(crate) fn strings(path: &Path, df: &DataFrame, name: &str) -> Result<Vec<String>, ReportError> {
    let col = column(path, df, name)?;
    let cast = col
        .cast(&DataType::String)
        .map_err(|e| invalid(path, format!("column `{name}`: {e}")))?;
    let values = cast
        .str()
        .map_err(|e| invalid(path, format!("column `{name}`: {e}")))?;
    values
        .iter()
        .enumerate()
        .map(|(row, v)| {
            v.map(str::to_owned)
                .ok_or_else(|| at_row(path, row, name, "blank value"))
        })
        .collect()
}

pub(crate) fn floats(path: &Path, df: &DataFrame, name: &str) -> Result<Vec<f64>, ReportError> {
    let col = column(path, df, name)?;
    let cast = col
        .cast(&DataType::Float64)
        .map_err(|e| invalid(path, format!("column `{name}`: {e}")))?;
    let values = cast
        .f64()
        .map_err(|e| invalid(path, format!("column `{name}`: {e}")))?;
    values
        .iter()
        .enumerate()
        .map(|(row, v)| match v {
            Some(x) if x.is_finite() => Ok(x),
            Some(x) => Err(at_row(
                path,
                row,
                name,
                &format!("{x} is not a finite number"),
            )),
            None => Err(at_row(
                path,
                row,
                name,
                &format!("{} is not a number", raw(col, row)),
            )),
        })
        .collect()
}

pub(crate) fn integers(path: &Path, df: &DataFrame, name: &str) -> Result<Vec<i64>, ReportError> {
    floats(path, df, name)?
        .into_iter()
        .enumerate()
        .map(|(row, x)| {
            if x.fract() == 0.0 && x.abs() < 9.0e15 {
                Ok(x as i64)
            } else {
                Err(at_row(
                    path,
                    row,
                    name,
                    &format!("{x} is not a whole number"),
                ))
            }
        })
        .collect()
}
