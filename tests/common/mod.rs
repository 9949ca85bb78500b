//! Helpers shared by the integration tests: fixture paths and the reference survival datasets.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// Relative agreement to 1e-6 (stricter than the absolute 1e-6 asked for wherever |want| < 1,
/// and meaningful for p-values near 1e-11).
pub fn assert_close(got: f64, want: f64, what: &str) {
    let tolerance = 1e-6 * want.abs();
    assert!(
        got == want || (got - want).abs() <= tolerance,
        "{what}: got {got:e}, want {want:e}"
    );
}

/// One reference dataset: the JSON of expected values and its (time, event, risk) columns.
pub struct Reference {
    pub name: String,
    pub json: serde_json::Value,
    pub time: Vec<f64>,
    pub event: Vec<bool>,
    pub risk: Vec<f64>,
}

pub const REFERENCES: [&str; 4] = ["rossi", "lung", "gbsg2", "breast_cancer_gse7390"];

pub fn reference(name: &str) -> Reference {
    let path = fixture(&format!("survival/reference/{name}.json"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let input = &json["input"];
    let file = fixture(&format!("survival/{}", input["file"].as_str().unwrap()));
    let column = |key: &str| input[key].as_str().unwrap().to_owned();
    let (time_col, event_col, risk_col) = (
        column("time_column"),
        column("event_column"),
        column("risk"),
    );
    // Written as a string ("1") in the JSON; the CSVs hold 1 or 1.0.
    let event_value: f64 = match &input["event_value"] {
        serde_json::Value::String(s) => s.parse().unwrap(),
        other => other.as_f64().unwrap(),
    };

    let mut reader = csv::Reader::from_path(&file).unwrap();
    let headers = reader.headers().unwrap().clone();
    let at = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (ti, ei, ri) = (at(&time_col), at(&event_col), at(&risk_col));
    let (mut time, mut event, mut risk) = (Vec::new(), Vec::new(), Vec::new());
    for record in reader.records() {
        let record = record.unwrap();
        let parse = |i: usize| {
            record[i]
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
        };
        // Rows with a missing value in any of the three columns are dropped, as in the reference.
        if let (Some(t), Some(e), Some(r)) = (parse(ti), parse(ei), parse(ri)) {
            time.push(t);
            event.push(e == event_value);
            risk.push(r);
        }
    }
    assert_eq!(time.len() as u64, input["n"].as_u64().unwrap(), "{name}: n");
    Reference {
        name: name.to_owned(),
        json,
        time,
        event,
        risk,
    }
}
