//! The survival-metric references of fixtures/survival/metrics/*.json (made by
//! make_metrics_reference.py) and the inputs they were computed from, for the tests of the
//! statistics (`survival_metrics`) and of the report that prints them (`report`).

use serde_json::Value;

use super::fixture;
use hdmoe_pipe::survival::N_BINS;

pub struct MetricsTable {
    pub name: String,
    pub json: Value,
    pub time: Vec<f64>,
    pub event: Vec<bool>,
    pub risk: Vec<f64>,
}

/// The four tables, by their JSON's name.
pub const METRICS_TABLES: [&str; 4] = ["rossi", "lung", "gbsg2", "breast_cancer_gse7390"];

pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

pub fn metrics_table(name: &str) -> MetricsTable {
    let path = fixture(&format!("survival/metrics/{name}.json"));
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["dataset"].as_str(), Some(name), "{}", path.display());
    MetricsTable {
        name: name.to_owned(),
        time: floats(&json["time"]),
        event: json["event"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_bool().unwrap())
            .collect(),
        risk: floats(&json["risk"]),
        json,
    }
}

/// The risk's (column, coefficient) pairs, in the script's order.
pub fn risk_coefficients(t: &MetricsTable) -> Vec<(String, f64)> {
    t.json["input"]["risk_coefficients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_owned(), p[1].as_f64().unwrap()))
        .collect()
}

/// The script's hazards: h_k = sigmoid(a_k + b_k z), z the risk standardised (ddof 0).
pub fn hazards(t: &MetricsTable) -> Vec<[f64; N_BINS]> {
    let (a, b) = (
        floats(&t.json["curves"]["a"]),
        floats(&t.json["curves"]["b"]),
    );
    let n = t.risk.len() as f64;
    let mean = t.risk.iter().sum::<f64>() / n;
    let std = (t.risk.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
    t.risk
        .iter()
        .map(|r| {
            let z = (r - mean) / std;
            std::array::from_fn(|k| 1.0 / (1.0 + (-(a[k] + b[k] * z)).exp()))
        })
        .collect()
}

/// The named CSV columns of the table, rows with a blank in any column the script used dropped
/// (its `dropna`), checked to be the JSON's rows in the JSON's order.
pub fn csv_columns(t: &MetricsTable, columns: &[String]) -> Vec<Vec<f64>> {
    let input = &t.json["input"];
    let file = fixture(&format!("survival/{}", input["file"].as_str().unwrap()));
    let mut used = vec![
        input["time_column"].as_str().unwrap().to_owned(),
        input["event_column"].as_str().unwrap().to_owned(),
    ];
    used.extend(risk_coefficients(t).into_iter().map(|(c, _)| c));
    used.extend(columns.iter().cloned());
    let mut reader = csv::Reader::from_path(&file).unwrap();
    let headers = reader.headers().unwrap().clone();
    let index = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let mut out = vec![Vec::new(); columns.len()];
    let mut time = Vec::new();
    for record in reader.records() {
        let record = record.unwrap();
        let parse = |name: &str| record[index(name)].trim().parse::<f64>().ok();
        if used.iter().any(|c| parse(c).is_none()) {
            continue;
        }
        time.push(parse(&used[0]).unwrap());
        for (k, c) in columns.iter().enumerate() {
            out[k].push(parse(c).unwrap());
        }
    }
    assert_eq!(time, t.time, "{}: CSV rows", t.name);
    out
}

/// Every table, checked to be all the JSONs the folder holds.
pub fn metrics_tables() -> Vec<MetricsTable> {
    let dir = fixture("survival/metrics");
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut listed = METRICS_TABLES.map(str::to_owned).to_vec();
    listed.sort();
    assert_eq!(found, listed, "{}: one JSON per table", dir.display());
    METRICS_TABLES.iter().map(|n| metrics_table(n)).collect()
}
