//! What a report says about the run behind its predictions: the resolved configuration, the
//! versions, time and peak RSS per stage (`run`'s stages.csv), every item that failed (the
//! stages' manifests in the cache, sharded ones included, and fit's excluded patients), and how
//! often each routed expert was chosen on the held-out folds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use super::ReportError;
use crate::pipeline::{Stage, STAGES_CSV};

pub struct RunInfo {
    pub run_dir: PathBuf,
    pub config_yaml: Option<String>,
    pub versions: Vec<(String, String)>,
    pub stages: Option<DataFrame>,
    /// stage, item, status, message.
    pub failures: DataFrame,
    /// moe, expert, count, share (validation split, each fold's last epoch, summed over folds).
    pub routing: Option<DataFrame>,
}

fn input_error(path: &Path, message: impl ToString) -> ReportError {
    ReportError::Input {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// Rows of a CSV file as header-name → value maps.
fn read_rows(path: &Path) -> Result<Vec<BTreeMap<String, String>>, ReportError> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| input_error(path, e))?;
    let headers = reader.headers().map_err(|e| input_error(path, e))?.clone();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| input_error(path, e))?;
        rows.push(
            headers
                .iter()
                .zip(record.iter())
                .map(|(h, v)| (h.to_owned(), v.to_owned()))
                .collect(),
        );
    }
    Ok(rows)
}

fn string_column(name: &str, values: Vec<String>) -> Column {
    Column::new(name.into(), values)
}

/// `<stage>_manifest.csv` and every `<stage>_shard<i>of<n>_manifest.csv` in the cache folder.
fn manifests(cache_dir: &Path, stage: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(cache_dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix("_manifest.csv"))
                .is_some_and(|stem| {
                    stem == stage
                        || stem
                            .strip_prefix(stage)
                            .and_then(|rest| rest.strip_prefix("_shard"))
                            .is_some()
                })
        })
        .collect();
    found.sort();
    found
}

pub fn read(run_dir: &Path, cache_dir: &Path) -> Result<RunInfo, ReportError> {
    let config_yaml = std::fs::read_to_string(run_dir.join("config.yaml")).ok();
    let stages_path = run_dir.join(STAGES_CSV);
    let stages = if stages_path.is_file() {
        let rows = read_rows(&stages_path)?;
        let column = |name: &str| {
            string_column(
                name,
                rows.iter()
                    .map(|r| r.get(name).cloned().unwrap_or_default())
                    .collect(),
            )
        };
        let numbers = |name: &str| {
            Column::new(
                name.into(),
                rows.iter()
                    .map(|r| r.get(name).and_then(|v| v.parse::<f64>().ok()))
                    .collect::<Vec<_>>(),
            )
        };
        Some(DataFrame::new_infer_height(vec![
            column("stage"),
            column("outcome"),
            numbers("seconds"),
            numbers("peak_rss_mb"),
            column("exit"),
            column("message"),
        ])?)
    } else {
        None
    };

    let (mut f_stage, mut f_item, mut f_status, mut f_message) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for stage in Stage::ALL.iter().filter(|s| s.has_manifest()) {
        for path in manifests(cache_dir, stage.name()) {
            for row in read_rows(&path)? {
                let status = row.get("status").cloned().unwrap_or_default();
                if status == "done" || status == "skipped" {
                    continue;
                }
                f_stage.push(stage.name().to_owned());
                f_item.push(row.get("item").cloned().unwrap_or_default());
                f_status.push(status);
                f_message.push(row.get("message").cloned().unwrap_or_default());
            }
        }
    }
    let excluded = run_dir.join("excluded.csv");
    if excluded.is_file() {
        for row in read_rows(&excluded)? {
            f_stage.push("fit".to_owned());
            f_item.push(row.get("case_id").cloned().unwrap_or_default());
            f_status.push("excluded".to_owned());
            f_message.push(row.get("reason").cloned().unwrap_or_default());
        }
    }
    let failures = DataFrame::new_infer_height(vec![
        string_column("stage", f_stage),
        string_column("item", f_item),
        string_column("status", f_status),
        string_column("message", f_message),
    ])?;

    Ok(RunInfo {
        run_dir: run_dir.to_owned(),
        config_yaml,
        versions: crate::doctor::facts(),
        stages,
        failures,
        routing: routing(run_dir)?,
    })
}

/// Validation-split routing counts of each fold's last epoch, summed over folds.
fn routing(run_dir: &Path) -> Result<Option<DataFrame>, ReportError> {
    let mut counts: BTreeMap<(String, i64), i64> = BTreeMap::new();
    let mut any = false;
    for fold in 0..64 {
        let path = run_dir.join(format!("fold_{fold}")).join("routing.csv");
        if !path.is_file() {
            continue;
        }
        let rows = read_rows(&path)?;
        let epoch = |r: &BTreeMap<String, String>| {
            r.get("epoch")
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(-1)
        };
        let Some(last) = rows.iter().map(epoch).max() else {
            continue;
        };
        for r in rows
            .iter()
            .filter(|r| epoch(r) == last && r.get("split").is_some_and(|s| s == "val"))
        {
            let (Some(moe), Some(expert), Some(count)) = (
                r.get("moe"),
                r.get("expert").and_then(|v| v.parse::<i64>().ok()),
                r.get("count").and_then(|v| v.parse::<i64>().ok()),
            ) else {
                return Err(input_error(&path, "expected columns moe, expert, count"));
            };
            *counts.entry((moe.clone(), expert)).or_default() += count;
            any = true;
        }
    }
    if !any {
        return Ok(None);
    }
    let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
    for ((moe, _), c) in &counts {
        *totals.entry(moe.as_str()).or_default() += c;
    }
    let share: Vec<f64> = counts
        .iter()
        .map(|((moe, _), &c)| c as f64 / totals[moe.as_str()].max(1) as f64)
        .collect();
    Ok(Some(DataFrame::new_infer_height(vec![
        string_column("moe", counts.keys().map(|(m, _)| m.clone()).collect()),
        Column::new(
            "expert".into(),
            counts.keys().map(|(_, e)| *e).collect::<Vec<_>>(),
        ),
        Column::new("count".into(), counts.values().copied().collect::<Vec<_>>()),
        Column::new("share".into(), share),
    ])?))
}
