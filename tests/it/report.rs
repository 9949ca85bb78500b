//! The report stage end to end: predictions in, tables and plot out, checked against the
//! lifelines / scikit-survival / scipy reference values.

use crate::common;

use std::path::{Path, PathBuf};

use common::{assert_close, reference, REFERENCES};
use hdmoe_pipe::config::ReportConfig;
use hdmoe_pipe::report::{self, ReportArgs};

/// Writes a predictions CSV for a reference dataset, folds assigned in turn (k = row mod 5).
fn predictions_for(r: &common::Reference, dir: &Path) -> PathBuf {
    let path = dir.join(format!("{}_predictions.csv", r.name));
    let mut text = String::from("case_id,fold,risk,survival_months,event,ignored_column\n");
    for i in 0..r.time.len() {
        text.push_str(&format!(
            "case{i},{},{},{},{},x\n",
            i % 5,
            r.risk[i],
            r.time[i],
            u8::from(r.event[i])
        ));
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn read_table(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let headers = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    (headers, rows)
}

fn cell<'a>(headers: &[String], row: &'a [String], name: &str) -> &'a str {
    let i = headers
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name}"));
    &row[i]
}

fn num(headers: &[String], row: &[String], name: &str) -> f64 {
    cell(headers, row, name).parse().unwrap()
}

#[test]
fn tables_reproduce_the_reference_values() {
    for name in REFERENCES {
        let r = reference(name);
        let dir = tempfile::tempdir().unwrap();
        let args = ReportArgs {
            predictions: predictions_for(&r, dir.path()),
            out: dir.path().join("report"),
            summary: None,
            run: None,
            cache: None,
        };
        let outputs = report::run(&args, &ReportConfig::default()).unwrap();
        assert!(outputs.notes.is_empty(), "{name}: {:?}", outputs.notes);

        // km.csv: every row of both groups.
        let (h, rows) = read_table(&args.out.join("km.csv"));
        for label in ["high", "low"] {
            let want = r.json["km"][label].as_array().unwrap();
            let got: Vec<&Vec<String>> = rows
                .iter()
                .filter(|row| cell(&h, row, "group") == label)
                .collect();
            assert_eq!(got.len(), want.len(), "{name} {label}");
            for (row, w) in got.iter().zip(want) {
                for key in ["time", "survival", "ci_lower", "ci_upper"] {
                    assert_close(
                        num(&h, row, key),
                        w[key].as_f64().unwrap(),
                        &format!("{name} {label} {key}"),
                    );
                }
                for key in ["at_risk", "events", "censored"] {
                    assert_eq!(
                        num(&h, row, key),
                        w[key].as_f64().unwrap(),
                        "{name} {label} {key}"
                    );
                }
            }
        }

        let (h, rows) = read_table(&args.out.join("logrank.csv"));
        let want = &r.json["logrank"];
        assert_close(
            num(&h, &rows[0], "statistic"),
            want["statistic"].as_f64().unwrap(),
            name,
        );
        assert_close(
            num(&h, &rows[0], "p_value"),
            want["p_value"].as_f64().unwrap(),
            name,
        );
        assert_close(
            num(&h, &rows[0], "threshold"),
            r.json["risk_split"]["threshold"].as_f64().unwrap(),
            name,
        );
        assert_eq!(
            num(&h, &rows[0], "n_high"),
            r.json["risk_split"]["n_high"].as_f64().unwrap()
        );

        let (h, rows) = read_table(&args.out.join("ttest.csv"));
        for row in &rows {
            let test = cell(&h, row, "test");
            let want = &r.json["ttest"][test];
            for key in ["t", "df", "p_value"] {
                assert_close(
                    num(&h, row, key),
                    want[key].as_f64().unwrap(),
                    &format!("{name} {test} {key}"),
                );
            }
        }

        // cindex.csv: per fold equals the C-index of that fold alone; mean/std rows follow.
        let (h, rows) = read_table(&args.out.join("cindex.csv"));
        assert_eq!(rows.len(), 7, "{name}: 5 folds + mean + std");
        let per_fold: Vec<f64> = rows[..5]
            .iter()
            .map(|row| num(&h, row, "c_index"))
            .collect();
        let mean = per_fold.iter().sum::<f64>() / 5.0;
        let std = (per_fold.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / 5.0).sqrt();
        assert_close(num(&h, &rows[5], "c_index"), mean, name);
        assert_close(num(&h, &rows[6], "c_index"), std, name);
        for (k, row) in rows[..5].iter().enumerate() {
            let idx: Vec<usize> = (0..r.time.len()).filter(|i| i % 5 == k).collect();
            let c = hdmoe_pipe::survival::concordance_index(
                &idx.iter().map(|&i| r.time[i]).collect::<Vec<_>>(),
                &idx.iter().map(|&i| r.event[i]).collect::<Vec<_>>(),
                &idx.iter().map(|&i| r.risk[i]).collect::<Vec<_>>(),
            )
            .unwrap();
            assert_eq!(num(&h, row, "c_index"), c.c_index);
            assert_eq!(num(&h, row, "concordant"), c.concordant as f64);
        }

        // The plot is a real PNG and the Markdown carries the same tables.
        let png = std::fs::read(args.out.join("km.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let md = std::fs::read_to_string(args.out.join("report.md")).unwrap();
        assert!(
            md.contains("## C-index per fold")
                && md.contains("### Log-rank test")
                && md.contains("![Kaplan")
        );
        // No temporary files are left behind.
        let leftovers = std::fs::read_dir(&args.out).unwrap().filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        });
        assert_eq!(leftovers.count(), 0);
    }
}

#[test]
fn best_epoch_summary_is_shown_beside_the_headline() {
    let r = reference("rossi");
    let dir = tempfile::tempdir().unwrap();
    let predictions = predictions_for(&r, dir.path());
    // fit's summary.csv beside the predictions: picked up without --summary.
    std::fs::write(
        dir.path().join("summary.csv"),
        "fold,c_index,c_index_best\n0,0.5,0.70\n1,0.5,0.72\n2,0.5,0.74\n3,0.5,0.76\n4,0.5,0.78\nmean,0.5,0.74\n",
    )
    .unwrap();
    let args = ReportArgs {
        predictions,
        out: dir.path().join("out"),
        summary: None,
        run: None,
        cache: None,
    };
    report::run(&args, &ReportConfig::default()).unwrap();
    let (h, rows) = read_table(&args.out.join("cindex.csv"));
    assert_eq!(num(&h, &rows[2], "c_index_best_epoch"), 0.74);
    assert_close(
        num(&h, &rows[5], "c_index_best_epoch"),
        0.74,
        "mean of best",
    );
    // Deviations ±0.04, ±0.02, 0 from the mean: population variance 0.004 / 5.
    assert_close(
        num(&h, &rows[6], "c_index_best_epoch"),
        (0.004f64 / 5.0).sqrt(),
        "std of best",
    );
    let md = std::fs::read_to_string(args.out.join("report.md")).unwrap();
    assert!(
        md.contains("Best epoch on the reported fold (the paper's protocol"),
        "{md}"
    );
}

#[test]
fn degenerate_inputs_still_give_a_report_with_notes() {
    let dir = tempfile::tempdir().unwrap();
    // All risks equal: everyone is "high", the low group is empty. Fold 1 is all censored.
    let path = dir.path().join("p.csv");
    std::fs::write(
        &path,
        "case_id,fold,risk,survival_months,event\na,0,1,1,1\nb,0,1,2,0\nc,0,1,3,1\nd,1,1,4,0\ne,1,1,5,0\n",
    )
    .unwrap();
    let args = ReportArgs {
        predictions: path,
        out: dir.path().join("out"),
        summary: None,
        run: None,
        cache: None,
    };
    let outputs = report::run(&args, &ReportConfig::default()).unwrap();
    let notes = outputs.notes.join("\n");
    assert!(
        notes.contains("fold 1: all samples are censored"),
        "{notes}"
    );
    assert!(notes.contains("low-risk group: no samples"), "{notes}");
    assert!(notes.contains("log-rank"), "{notes}");
    // Fold 0: all risks tied → C = 0.5 exactly.
    assert_eq!(outputs.cindex_mean.map(|(m, _, n)| (m, n)), Some((0.5, 1)));
    assert!(args.out.join("km.png").exists());
    let md = std::fs::read_to_string(args.out.join("report.md")).unwrap();
    assert!(md.contains("## Not computable"), "{md}");
}
