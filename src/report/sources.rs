//! What the report reads beside the predictions for the survival metrics: the model's time-bin
//! edges (the run's `deploy.json`, else the cohort table its `config.yaml` names) and the
//! clinical columns the Cox fit is adjusted for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::ReportError;
use crate::survival::N_BINS;

/// `fit` writes the model's bin edges here, in the run folder.
pub const DEPLOY_JSON: &str = "deploy.json";
pub const EDGES_KEY: &str = "time_bin_edges";

/// Where the edges the hazards refer to came from.
#[derive(Debug, Clone, PartialEq)]
pub struct BinEdges {
    pub edges: [f64; N_BINS + 1],
    /// For the report, e.g. "`runs/x/deploy.json` (`time_bin_edges`)".
    pub source: String,
}

fn input_error(path: &Path, message: impl ToString) -> ReportError {
    ReportError::Input {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// The edges of the model's time bins: `<run>/deploy.json`'s `time_bin_edges`, else the
/// quartile edges of the cohort table the run's config.yaml names. `Ok(Err(why))` when neither
/// is there (the Brier rows then say why); a deploy.json that is there but malformed is an
/// error, since its edges are the model's own.
pub fn bin_edges(run: Option<&Path>) -> Result<Result<BinEdges, String>, ReportError> {
    let Some(run) = run else {
        return Ok(Err(
            "no run folder (give `--run`, or keep the predictions in the run folder): the \
             time-bin edges of the hazards are unknown"
                .into(),
        ));
    };
    let deploy = run.join(DEPLOY_JSON);
    if deploy.is_file() {
        return deploy_edges(&deploy).map(Ok);
    }
    let Some(cohort) = run_cohort(run)? else {
        return Ok(Err(format!(
            "neither {} nor a cohort table (`paths.cohort` in {}): the time-bin edges of \
             the hazards are unknown",
            deploy.display(),
            run.join("config.yaml").display()
        )));
    };
    match crate::cohort::Cohort::read(&cohort) {
        Ok(table) => Ok(Ok(BinEdges {
            edges: table.edges,
            source: format!(
                "the quartile edges of the run's cohort table `{}` (no {DEPLOY_JSON} in the run folder)",
                cohort.display()
            ),
        })),
        Err(e) => Ok(Err(format!(
            "no {} and the run's cohort table cannot give the time-bin edges: {e}",
            deploy.display()
        ))),
    }
}

fn deploy_edges(path: &Path) -> Result<BinEdges, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|e| input_error(path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| input_error(path, format!("not valid JSON: {e}")))?;
    let expected = format!("`{EDGES_KEY}` must be an array of {} numbers", N_BINS + 1);
    let values = json
        .get(EDGES_KEY)
        .and_then(|v| v.as_array())
        .ok_or_else(|| input_error(path, format!("{expected}, found none")))?;
    let numbers: Vec<f64> = values
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    let edges: [f64; N_BINS + 1] = numbers
        .clone()
        .try_into()
        .ok()
        .filter(|_| numbers.len() == values.len())
        .ok_or_else(|| input_error(path, format!("{expected}, found {values:?}")))?;
    // Finite first, so that `>=` below also catches nothing NaN-shaped.
    if edges.iter().any(|e| !e.is_finite()) || edges.windows(2).any(|w| w[0] >= w[1]) {
        return Err(input_error(
            path,
            format!("`{EDGES_KEY}` must be finite and strictly increasing, found {edges:?}"),
        ));
    }
    Ok(BinEdges {
        edges,
        source: format!("`{}` (`{EDGES_KEY}`)", path.display()),
    })
}

/// `paths.cohort` of the run's config.yaml (fit's resolved configuration), if it names one.
pub fn run_cohort(run: &Path) -> Result<Option<PathBuf>, ReportError> {
    let path = run.join("config.yaml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text)
        .map_err(|e| input_error(&path, format!("not valid YAML: {e}")))?;
    Ok(yaml
        .get("paths")
        .and_then(|p| p.get("cohort"))
        .and_then(|c| c.as_str())
        .map(PathBuf::from))
}

/// The Cox covariates of each predicted patient, from a table keyed by `case_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Covariates {
    pub table: PathBuf,
    pub names: Vec<String>,
    /// Per prediction row: the values in `names` order, or `None` when the patient is left out.
    pub values: Vec<Option<Vec<f64>>>,
    /// Patients left out because the table has no row for them.
    pub not_in_table: usize,
    /// Patients left out because a value is blank (`NA`, `NaN`, … count as blank).
    pub missing_value: usize,
}

/// Tokens pandas and R write for a missing value.
fn is_missing(cell: &str) -> bool {
    let cell = cell.trim();
    cell.is_empty()
        || ["na", "nan", "n/a", "null", "none"]
            .iter()
            .any(|m| cell.eq_ignore_ascii_case(m))
}

/// Reads `names` (numeric columns) of `table` for `case_ids`; the first row of a case is used
/// (a cohort table has one row per slide). A missing column, or a value that is neither a
/// number nor blank, is an error naming the table, the column and the line.
pub fn read_covariates(
    table: &Path,
    names: &[String],
    case_ids: &[String],
) -> Result<Covariates, ReportError> {
    let mut reader = crate::cohort::open_csv(table).map_err(|e| input_error(table, e))?;
    let headers = reader
        .headers()
        .map_err(|e| input_error(table, format!("not a readable CSV table: {e}")))?
        .clone();
    let position = |name: &str| -> Result<usize, ReportError> {
        let hits: Vec<usize> = headers
            .iter()
            .enumerate()
            .filter(|(_, h)| h.trim() == name)
            .map(|(i, _)| i)
            .collect();
        match hits.as_slice() {
            [one] => Ok(*one),
            [] => Err(input_error(
                table,
                format!(
                    "column `{name}` ({}) is not in the table; its columns: {}",
                    if name == "case_id" {
                        "the key that matches the predictions"
                    } else {
                        "named in `report.cox_covariates`"
                    },
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            )),
            _ => Err(input_error(
                table,
                format!(
                    "column `{name}` appears {} times; it must be unique",
                    hits.len()
                ),
            )),
        }
    };
    let key = position("case_id")?;
    let columns = names
        .iter()
        .map(|n| position(n))
        .collect::<Result<Vec<_>, _>>()?;

    let mut by_case: HashMap<String, Vec<Option<f64>>> = HashMap::new();
    for record in reader.records() {
        let record = record.map_err(|e| input_error(table, format!("malformed CSV: {e}")))?;
        let line = record.position().map_or(0, |p| p.line());
        let mut row = Vec::with_capacity(columns.len());
        for (name, &c) in names.iter().zip(&columns) {
            let cell = record.get(c).unwrap_or("");
            if is_missing(cell) {
                row.push(None);
                continue;
            }
            match cell.trim().parse::<f64>() {
                Ok(x) if x.is_finite() => row.push(Some(x)),
                _ => {
                    return Err(input_error(
                        table,
                        format!(
                            "line {line}, column `{name}`: {cell:?} is not a number; Cox \
                             covariates (`report.cox_covariates`) must be numeric columns \
                             (encode a category such as a stage as numbers first)"
                        ),
                    ))
                }
            }
        }
        let case = record.get(key).unwrap_or("").trim().to_owned();
        if !case.is_empty() {
            by_case.entry(case).or_insert(row);
        }
    }
    let (mut not_in_table, mut missing_value) = (0, 0);
    let values = case_ids
        .iter()
        .map(|id| match by_case.get(id.trim()) {
            None => {
                not_in_table += 1;
                None
            }
            Some(row) => {
                let complete: Option<Vec<f64>> = row.iter().copied().collect();
                if complete.is_none() {
                    missing_value += 1;
                }
                complete
            }
        })
        .collect();
    Ok(Covariates {
        table: table.to_owned(),
        names: names.to_vec(),
        values,
        not_in_table,
        missing_value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_edges_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEPLOY_JSON);
        std::fs::write(
            &path,
            r#"{"time_bin_edges": [0.5, 2, 4, 6, 8.5], "other": 1}"#,
        )
        .unwrap();
        let got = bin_edges(Some(dir.path())).unwrap().unwrap();
        assert_eq!(got.edges, [0.5, 2.0, 4.0, 6.0, 8.5]);
        for bad in [
            r#"{"time_bin_edges": [0.5, 2, 4, 6]}"#,
            r#"{"time_bin_edges": [0.5, 2, 4, 4, 8]}"#,
            r#"{"time_bin_edges": [0.5, 2, "x", 6, 8]}"#,
            r#"{"edges": [0.5, 2, 4, 6, 8]}"#,
            "not json",
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = bin_edges(Some(dir.path())).unwrap_err().to_string();
            assert!(e.contains("deploy.json"), "{bad}: {e}");
        }
        std::fs::remove_file(&path).unwrap();
        let why = bin_edges(Some(dir.path())).unwrap().unwrap_err();
        assert!(
            why.contains("deploy.json") && why.contains("paths.cohort"),
            "{why}"
        );
        assert!(bin_edges(None).unwrap().is_err());
    }

    #[test]
    fn covariates_by_case_with_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cohort.csv");
        std::fs::write(
            &path,
            "case_id,slide_id,age,stage\na,a1,50,2\na,a2,99,9\nb,b1,NA,1\nc,c1,61.5,\nd,d1,40,3\n",
        )
        .unwrap();
        let ids: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let names = vec!["age".to_owned(), "stage".to_owned()];
        let got = read_covariates(&path, &names, &ids).unwrap();
        // The first row of case a; b and c have a blank; e is not in the table.
        assert_eq!(
            got.values,
            vec![
                Some(vec![50.0, 2.0]),
                None,
                None,
                Some(vec![40.0, 3.0]),
                None
            ]
        );
        assert_eq!((got.missing_value, got.not_in_table), (2, 1));

        let e = read_covariates(&path, &["grade".to_owned()], &ids)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cohort.csv") && e.contains("`grade`"), "{e}");
        std::fs::write(&path, "case_id,stage\na,Stage II\n").unwrap();
        let e = read_covariates(&path, &["stage".to_owned()], &ids)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cohort.csv") && e.contains("`stage`") && e.contains("not a number"),
            "{e}"
        );
    }
}
