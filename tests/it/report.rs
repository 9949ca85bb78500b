//! The report stage end to end: predictions in, tables and plot out, checked against the
//! lifelines / scikit-survival / scipy reference values.

use crate::common;

use std::path::{Path, PathBuf};

use common::metrics::{csv_columns, floats, hazards, metrics_table, MetricsTable, METRICS_TABLES};
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

// ---------------------------------------------------------------------------------------------
// Survival metrics, the training cutoff and calibration (issue #18, parts 3 and 4).

use hdmoe_pipe::survival::{cox_ph, kaplan_meier, logrank_test};
use serde_json::Value;

/// One table of fixtures/survival/metrics/ (scikit-survival 0.28 / lifelines 0.30 values).
/// predictions.csv with hazards; `fold` blank for a cohort predicted as a whole, and an
/// optional `risk_group` column.
fn metrics_predictions(
    t: &MetricsTable,
    dir: &Path,
    folds: bool,
    risk_group: Option<&[bool]>,
) -> PathBuf {
    let path = dir.join(format!("{}_predictions.csv", t.name));
    let mut text =
        String::from("case_id,fold,risk,hazard_0,hazard_1,hazard_2,hazard_3,survival_months,event");
    if risk_group.is_some() {
        text.push_str(",risk_group");
    }
    text.push('\n');
    for (i, h) in hazards(t).iter().enumerate() {
        let fold = if folds {
            (i % 5).to_string()
        } else {
            String::new()
        };
        text.push_str(&format!(
            "p{i},{fold},{},{},{},{},{},{},{}",
            t.risk[i],
            h[0],
            h[1],
            h[2],
            h[3],
            t.time[i],
            u8::from(t.event[i])
        ));
        if let Some(groups) = risk_group {
            text.push_str(if groups[i] { ",high" } else { ",low" });
        }
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// A run folder `dir/run` whose deploy.json holds only the model's time-bin edges.
fn run_with_edges(dir: &Path, edges: &[f64]) -> PathBuf {
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("deploy.json"),
        format!("{{\"time_bin_edges\": {edges:?}}}"),
    )
    .unwrap();
    run
}

/// An MCAT-style cohort table of the same patients with the covariate columns, and a run
/// folder whose config.yaml names it (as fit writes it).
fn run_with_cohort(t: &MetricsTable, dir: &Path, covariates: &[String]) -> PathBuf {
    let values = csv_columns(t, covariates);
    let cohort = dir.join("cohort.csv");
    let mut text = format!(
        "case_id,survival_months,censorship,{}\n",
        covariates.join(",")
    );
    for i in 0..t.time.len() {
        let cells: Vec<String> = values.iter().map(|c| c[i].to_string()).collect();
        text.push_str(&format!(
            "p{i},{},{},{}\n",
            t.time[i],
            u8::from(!t.event[i]),
            cells.join(",")
        ));
    }
    std::fs::write(&cohort, text).unwrap();
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("config.yaml"),
        format!("paths:\n  cohort: {}\n", cohort.display()),
    )
    .unwrap();
    run
}

/// metrics.csv rows of `metric` (and `term` when given).
fn metric_rows(
    h: &[String],
    rows: &[Vec<String>],
    metric: &str,
    term: Option<&str>,
) -> Vec<Vec<String>> {
    rows.iter()
        .filter(|r| cell(h, r, "metric") == metric && term.is_none_or(|t| cell(h, r, "term") == t))
        .cloned()
        .collect()
}

/// The value of a row, or its note when scikit-survival raised: then the note must say the
/// same thing.
fn check_value(h: &[String], row: &[String], want: Result<f64, &str>, what: &str) {
    match want {
        Ok(want) => assert_close(num(h, row, "value"), want, what),
        Err(sksurv) => {
            assert_eq!(cell(h, row, "value"), "", "{what}: no value");
            let note = cell(h, row, "note");
            assert!(
                sksurv.contains("censoring survival function is zero")
                    && note.contains("censoring survival function is 0"),
                "{what}: we say {note:?}, scikit-survival said {sksurv:?}"
            );
        }
    }
}

fn value_or_error<'a>(v: &'a Value, key: &str) -> Result<f64, &'a str> {
    match v["error"].as_str() {
        Some(e) => Err(e),
        None => Ok(v[key].as_f64().unwrap()),
    }
}

fn check_cox(h: &[String], rows: &[Vec<String>], metric: &str, want: &Value, what: &str) {
    let terms: Vec<String> = want["covariates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let got = metric_rows(h, rows, metric, None);
    assert_eq!(got.len(), terms.len(), "{what}: one row per term");
    for (j, (row, term)) in got.iter().zip(&terms).enumerate() {
        assert_eq!(cell(h, row, "term"), term, "{what}");
        for (column, key) in [
            ("value", "hazard_ratio"),
            ("ci_lower", "hr_ci_lower"),
            ("ci_upper", "hr_ci_upper"),
            ("p_value", "p_value"),
        ] {
            assert_close(
                num(h, row, column),
                want[key][j].as_f64().unwrap(),
                &format!("{what} {term} {column}"),
            );
        }
    }
}

fn metrics_config(covariates: &[String], tau: Option<f64>) -> ReportConfig {
    ReportConfig {
        cox_covariates: covariates.to_vec(),
        ipcw_tau: tau,
        ..ReportConfig::default()
    }
}

#[test]
fn survival_metrics_reproduce_scikit_survival_and_lifelines() {
    for name in METRICS_TABLES {
        let t = metrics_table(name);
        let dir = tempfile::tempdir().unwrap();
        let adjusted: Vec<String> = t.json["cox"]["adjusted"]["covariates"]
            .as_array()
            .unwrap()
            .iter()
            .skip(1)
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        let run = run_with_cohort(&t, dir.path(), &adjusted);
        let args = ReportArgs {
            predictions: metrics_predictions(&t, dir.path(), true, None),
            out: dir.path().join("report"),
            summary: None,
            run: Some(run),
            cache: None,
        };
        // The defaults are the reference's rules: survival_train = survival_test, tau unset,
        // the AUC/Brier times at the event-time quartiles, the script's IBS grid.
        report::run(&args, &metrics_config(&adjusted, None)).unwrap();
        let (h, rows) = read_table(&args.out.join("metrics.csv"));
        assert_eq!(
            h,
            [
                "metric", "term", "time", "value", "ci_lower", "ci_upper", "p_value", "n",
                "events", "excluded", "note"
            ]
        );
        let uno = metric_rows(&h, &rows, "uno_c", None);
        check_value(
            &h,
            &uno[0],
            value_or_error(&t.json["cindex_ipcw"]["tau_none"], "cindex"),
            &format!("{name} Uno"),
        );
        assert_eq!(cell(&h, &uno[0], "time"), "", "{name}: tau unset");

        let want = &t.json["cumulative_dynamic_auc"];
        let times = floats(&want["times"]);
        let auc = metric_rows(&h, &rows, "auc", None);
        assert_eq!(auc.len(), times.len(), "{name}");
        for (k, row) in auc.iter().enumerate() {
            assert_close(num(&h, row, "time"), times[k], &format!("{name} AUC time"));
            let value = match want["risk"]["error"].as_str() {
                Some(e) => Err(e),
                None => Ok(want["risk"]["auc"][k].as_f64().unwrap()),
            };
            check_value(&h, row, value, &format!("{name} AUC {k}"));
        }
        check_value(
            &h,
            &metric_rows(&h, &rows, "mean_auc", None)[0],
            value_or_error(&want["risk"], "mean_auc"),
            &format!("{name} mean AUC"),
        );
        // The AUC of 1 − S(t), the predicted curves read at each time.
        let auc = metric_rows(&h, &rows, "auc_survival", None);
        assert_eq!(auc.len(), times.len(), "{name}");
        let one_minus = &want["one_minus_survival"];
        for (k, row) in auc.iter().enumerate() {
            assert_close(num(&h, row, "time"), times[k], &format!("{name} AUC time"));
            let value = match one_minus["error"].as_str() {
                Some(e) => Err(e),
                None => Ok(one_minus["auc"][k].as_f64().unwrap()),
            };
            check_value(&h, row, value, &format!("{name} AUC of 1 − S {k}"));
        }
        check_value(
            &h,
            &metric_rows(&h, &rows, "mean_auc_survival", None)[0],
            value_or_error(one_minus, "mean_auc"),
            &format!("{name} mean AUC of 1 − S"),
        );

        let brier = metric_rows(&h, &rows, "brier", None);
        let want = floats(&t.json["brier_score"]["brier_scores"]);
        assert_eq!(brier.len(), want.len(), "{name}");
        for (k, row) in brier.iter().enumerate() {
            assert_close(
                num(&h, row, "time"),
                times[k],
                &format!("{name} Brier time"),
            );
            assert_close(num(&h, row, "value"), want[k], &format!("{name} Brier {k}"));
        }
        assert_close(
            num(&h, &metric_rows(&h, &rows, "ibs", None)[0], "value"),
            t.json["integrated_brier_score"]["ibs"].as_f64().unwrap(),
            &format!("{name} IBS"),
        );

        check_cox(&h, &rows, "cox_hr", &t.json["cox"]["group"], name);
        check_cox(
            &h,
            &rows,
            "cox_hr_adjusted",
            &t.json["cox"]["adjusted"],
            name,
        );
        let adjusted_row = &metric_rows(&h, &rows, "cox_hr_adjusted", Some("high"))[0];
        assert_eq!(num(&h, adjusted_row, "excluded"), 0.0, "{name}");
        assert_eq!(num(&h, adjusted_row, "n"), t.time.len() as f64, "{name}");

        // Harrell's C of the pooled predictions sits beside them.
        let harrell = hdmoe_pipe::survival::concordance_index(&t.time, &t.event, &t.risk)
            .unwrap()
            .c_index;
        assert_eq!(
            num(&h, &metric_rows(&h, &rows, "harrell_c", None)[0], "value"),
            harrell
        );

        let md = std::fs::read_to_string(args.out.join("report.md")).unwrap();
        assert!(
            md.contains("## Survival metrics")
                && md.contains("### Cox hazard ratio of the high-risk group")
                && md.contains("quartile edges of the run's cohort table"),
            "{name}: {md}"
        );
        let html = std::fs::read_to_string(args.out.join("report.html")).unwrap();
        assert!(html.contains("<h2>Survival metrics</h2>"), "{name}");

        // With the reference's tau.
        let tau = t.json["cindex_ipcw"]["tau"].as_f64().unwrap();
        report::run(&args, &metrics_config(&[], Some(tau))).unwrap();
        let (h, rows) = read_table(&args.out.join("metrics.csv"));
        let uno = &metric_rows(&h, &rows, "uno_c", None)[0];
        assert_close(num(&h, uno, "time"), tau, name);
        check_value(
            &h,
            uno,
            value_or_error(&t.json["cindex_ipcw"]["with_tau"], "cindex"),
            &format!("{name} Uno with tau"),
        );
        assert!(metric_rows(&h, &rows, "cox_hr_adjusted", None).is_empty());
    }
}

#[test]
fn metric_times_from_the_config_and_undefined_rows_say_why() {
    let t = metrics_table("lung");
    let dir = tempfile::tempdir().unwrap();
    let run = run_with_edges(dir.path(), &floats(&t.json["curves"]["bin_edges"]));
    let args = ReportArgs {
        predictions: metrics_predictions(&t, dir.path(), true, None),
        out: dir.path().join("report"),
        summary: None,
        run: Some(run.clone()),
        cache: None,
    };
    // The reference's AUC times and one beyond the follow-up (max 1022).
    let mut times = floats(&t.json["cumulative_dynamic_auc"]["times"]);
    times.push(2000.0);
    let config = ReportConfig {
        metric_times: Some(times),
        ..ReportConfig::default()
    };
    report::run(&args, &config).unwrap();
    let (h, rows) = read_table(&args.out.join("metrics.csv"));
    let auc = metric_rows(&h, &rows, "auc", None);
    let brier = metric_rows(&h, &rows, "brier", None);
    assert_eq!((auc.len(), brier.len()), (4, 4));
    let want_auc = floats(&t.json["cumulative_dynamic_auc"]["risk"]["auc"]);
    let want_brier = floats(&t.json["brier_score"]["brier_scores"]);
    for k in 0..3 {
        assert_close(num(&h, &auc[k], "value"), want_auc[k], "lung AUC");
        assert_close(num(&h, &brier[k], "value"), want_brier[k], "lung Brier");
    }
    // The late time has no value, and says why; so does the mean over all times.
    for row in [
        &auc[3],
        &brier[3],
        &metric_rows(&h, &rows, "mean_auc", None)[0],
    ] {
        assert_eq!(cell(&h, row, "value"), "");
        assert!(
            cell(&h, row, "note").contains("outside the follow-up"),
            "{:?}",
            cell(&h, row, "note")
        );
    }
    let md = std::fs::read_to_string(args.out.join("report.md")).unwrap();
    assert!(md.contains("deploy.json"), "{md}");

    // Without hazards or edges the Brier rows say why and the rest is still there.
    std::fs::remove_file(run.join("deploy.json")).unwrap();
    report::run(&args, &ReportConfig::default()).unwrap();
    let (h, rows) = read_table(&args.out.join("metrics.csv"));
    for metric in ["brier", "ibs"] {
        for row in metric_rows(&h, &rows, metric, None) {
            assert_eq!(cell(&h, &row, "value"), "");
            assert!(cell(&h, &row, "note").contains("time-bin edges"), "{row:?}");
        }
    }
    assert_close(
        num(&h, &metric_rows(&h, &rows, "auc", None)[0], "value"),
        want_auc[0],
        "lung AUC without edges",
    );
    let (_, calibration) = read_table(&args.out.join("calibration.csv"));
    assert!(calibration.is_empty());
    assert!(!args.out.join("calibration.png").exists());
    let md = std::fs::read_to_string(args.out.join("report.md")).unwrap();
    assert!(
        md.contains("## Calibration by risk quintile\n\nNot computable"),
        "{md}"
    );
}

#[test]
fn risk_group_column_is_the_training_cutoff_split() {
    let t = metrics_table("gbsg2");
    let dir = tempfile::tempdir().unwrap();
    // A frozen cutoff of another cohort: here the 30th percentile of these risks.
    let cutoff = hdmoe_pipe::survival::quantile(&t.risk, 0.3).unwrap();
    let high: Vec<bool> = t.risk.iter().map(|&r| r >= cutoff).collect();
    let run = run_with_edges(dir.path(), &floats(&t.json["curves"]["bin_edges"]));
    // An external cohort as predict writes it: no folds.
    let external = ReportArgs {
        predictions: metrics_predictions(&t, dir.path(), false, Some(&high)),
        out: dir.path().join("external"),
        summary: None,
        run: Some(run.clone()),
        cache: None,
    };
    let outputs = report::run(&external, &ReportConfig::default()).unwrap();
    assert!(outputs.notes.is_empty(), "{:?}", outputs.notes);

    let split = |high: &[bool], want: bool| -> (Vec<f64>, Vec<bool>) {
        (0..t.time.len())
            .filter(|&i| high[i] == want)
            .map(|i| (t.time[i], t.event[i]))
            .unzip()
    };
    let expected = |high: &[bool]| {
        let (th, eh) = split(high, true);
        let (tl, el) = split(high, false);
        let lr = logrank_test(&th, &eh, &tl, &el).unwrap();
        let x: Vec<f64> = high.iter().map(|&h| f64::from(u8::from(h))).collect();
        let cox = cox_ph(&t.time, &t.event, &[x], 0.95).unwrap();
        (lr, cox.hazard_ratio[0], cox.p_value[0])
    };
    let read = |out: &Path| {
        let (h, rows) = read_table(&out.join("logrank.csv"));
        let lr = (
            cell(&h, &rows[0], "risk_split").to_owned(),
            cell(&h, &rows[0], "threshold").to_owned(),
            num(&h, &rows[0], "statistic"),
            num(&h, &rows[0], "p_value"),
            num(&h, &rows[0], "n_high"),
        );
        let (h, rows) = read_table(&out.join("metrics.csv"));
        let cox = &metric_rows(&h, &rows, "cox_hr", Some("high"))[0];
        (lr, num(&h, cox, "value"), num(&h, cox, "p_value"))
    };

    let (lr, hr, p) = read(&external.out);
    let (want_lr, want_hr, want_p) = expected(&high);
    assert_eq!(lr.0, "training_cutoff");
    assert_eq!(lr.1, "", "the cutoff itself is not in the predictions");
    assert_eq!(lr.4, high.iter().filter(|&&h| h).count() as f64);
    assert_close(
        lr.2,
        want_lr.statistic,
        "log-rank statistic, training cutoff",
    );
    assert_close(lr.3, want_lr.p_value, "log-rank p, training cutoff");
    assert_close(hr, want_hr, "HR, training cutoff");
    assert_close(p, want_p, "HR p, training cutoff");
    let km_high = {
        let (th, eh) = split(&high, true);
        kaplan_meier(&th, &eh, 0.95).unwrap()
    };
    let (h, rows) = read_table(&external.out.join("km.csv"));
    let high_rows: Vec<&Vec<String>> = rows
        .iter()
        .filter(|r| cell(&h, r, "group") == "high")
        .collect();
    assert_eq!(high_rows.len(), km_high.rows.len());

    let md = std::fs::read_to_string(external.out.join("report.md")).unwrap();
    assert!(md.contains("Split at the training cohort's cutoff"), "{md}");
    assert!(md.contains("one cohort predicted as a whole"), "{md}");
    let (h, rows) = read_table(&external.out.join("cindex.csv"));
    assert_eq!(cell(&h, &rows[0], "fold"), "all");
    assert_eq!(
        num(&h, &rows[0], "c_index"),
        hdmoe_pipe::survival::concordance_index(&t.time, &t.event, &t.risk)
            .unwrap()
            .c_index
    );

    // With predict's `risk_cutoff` column: the same split, its value in logrank.csv and the text.
    let with_cutoff = |name: &str, value: &dyn Fn(usize) -> f64| {
        let text = std::fs::read_to_string(&external.predictions).unwrap();
        let mut lines = text.lines();
        let mut out = format!("{},risk_cutoff\n", lines.next().unwrap());
        for (i, line) in lines.enumerate() {
            out += &format!("{line},{}\n", value(i));
        }
        let path = dir.path().join(name);
        std::fs::write(&path, out).unwrap();
        ReportArgs {
            predictions: path,
            out: dir.path().join(name.replace(".csv", "")),
            ..external.clone()
        }
    };
    let stated = with_cutoff("stated.csv", &|_| cutoff);
    report::run(&stated, &ReportConfig::default()).unwrap();
    let (stated_lr, stated_hr, _) = read(&stated.out);
    assert_eq!(stated_lr.1.parse::<f64>().unwrap(), cutoff);
    assert_eq!((stated_lr.2, stated_hr), (lr.2, hr));
    let md = std::fs::read_to_string(stated.out.join("report.md")).unwrap();
    assert!(
        md.contains(&format!(
            "Split at the training cohort's cutoff, high risk iff risk ≥ {}",
            hdmoe_pipe::report::markdown::format_number(cutoff)
        )),
        "{md}"
    );
    let uneven = with_cutoff("uneven.csv", &|i| {
        if i == 3 {
            cutoff + 1.0
        } else {
            cutoff
        }
    });
    let message = report::run(&uneven, &ReportConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("uneven.csv") && message.contains("risk_cutoff"),
        "{message}"
    );

    // Without the column: the report's own median split, and other numbers.
    let own = ReportArgs {
        predictions: metrics_predictions(&t, dir.path(), true, None),
        out: dir.path().join("own"),
        ..external.clone()
    };
    report::run(&own, &ReportConfig::default()).unwrap();
    let (median_lr, median_hr, _) = read(&own.out);
    assert_eq!(median_lr.0, "median");
    assert!((median_lr.2 - lr.2).abs() > 1e-3, "{median_lr:?} vs {lr:?}");
    assert!((median_hr - hr).abs() > 1e-3, "{median_hr} vs {hr}");
    assert_close(
        median_hr,
        t.json["cox"]["group"]["hazard_ratio"][0].as_f64().unwrap(),
        "HR, median split",
    );
}

#[test]
fn calibration_rows_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    // Bins [0, 2), [2, 4), [4, 6), [6, 100): e_4 = 100 is beyond the follow-up (9).
    let run = run_with_edges(dir.path(), &[0.0, 2.0, 4.0, 6.0, 100.0]);
    // Risks 1..10 → quintiles of two patients each (cuts 2.8, 4.6, 6.4, 8.2).
    // (case, risk, time, event, hazards)
    let patients: [(&str, f64, f64, u8, [f64; 4]); 10] = [
        ("a", 1.0, 1.0, 1, [0.1, 0.0, 0.0, 0.0]),
        ("b", 2.0, 5.0, 0, [0.3, 0.0, 0.0, 0.0]),
        ("c", 3.0, 2.0, 1, [0.5, 0.5, 0.0, 0.0]),
        ("d", 4.0, 8.0, 1, [0.0, 0.5, 0.0, 0.0]),
        ("e", 5.0, 3.0, 1, [0.1; 4]),
        ("f", 6.0, 9.0, 0, [0.1; 4]),
        ("g", 7.0, 4.0, 1, [0.1; 4]),
        ("h", 8.0, 7.0, 1, [0.1; 4]),
        ("i", 9.0, 0.5, 1, [0.1; 4]),
        ("j", 10.0, 6.0, 0, [0.1; 4]),
    ];
    let mut text = String::from(
        "case_id,fold,risk,hazard_0,hazard_1,hazard_2,hazard_3,survival_months,event\n",
    );
    for (k, (id, risk, time, event, h)) in patients.iter().enumerate() {
        text.push_str(&format!(
            "{id},{},{risk},{},{},{},{},{time},{event}\n",
            k % 2,
            h[0],
            h[1],
            h[2],
            h[3]
        ));
    }
    let predictions = dir.path().join("predictions.csv");
    std::fs::write(&predictions, text).unwrap();
    let args = ReportArgs {
        predictions,
        out: dir.path().join("report"),
        summary: None,
        run: Some(run),
        cache: None,
    };
    let outputs = report::run(&args, &ReportConfig::default()).unwrap();
    let (h, rows) = read_table(&args.out.join("calibration.csv"));
    assert_eq!(rows.len(), 15, "5 quintiles x edges 2, 4, 6");
    let get = |q: usize, edge: usize| {
        rows.iter()
            .find(|r| num(&h, r, "quintile") == q as f64 && num(&h, r, "edge") == edge as f64)
            .unwrap_or_else(|| panic!("no row for quintile {q}, edge {edge}"))
    };
    // Quintile 1 (a: event at 1, b: censored at 5): S_0 = 0.9, 0.7 and flat after → 0.8.
    // KM: 1/2 after the event at 1; at risk at 2 and 4: b; at 6: nobody.
    for (edge, at_risk) in [(1, 1.0), (2, 1.0), (3, 0.0)] {
        let row = get(1, edge);
        assert_close(num(&h, row, "predicted"), 0.8, "q1 predicted");
        assert_eq!(num(&h, row, "observed"), 0.5, "q1 observed");
        assert_eq!(num(&h, row, "at_risk"), at_risk, "q1 at risk");
        assert_eq!(
            (
                num(&h, row, "risk_min"),
                num(&h, row, "risk_max"),
                num(&h, row, "n")
            ),
            (1.0, 2.0, 2.0)
        );
    }
    // Quintile 2 (c: event at 2 exactly, d: event at 8). At e_1 = 2 the predicted is S_0
    // (0.5, 1 → 0.75) and the observed is S(2−) = 1: the event at 2 is in the next bin.
    // At e_2 = 4: S_1 = 0.25, 0.5 → 0.375 vs 1/2; at e_3 = 6: S_2 = S_1 → 0.375 vs 1/2.
    let q2 = [
        (1, 0.75, 1.0, 2.0),
        (2, 0.375, 0.5, 1.0),
        (3, 0.375, 0.5, 1.0),
    ];
    let km = kaplan_meier(&[2.0, 8.0], &[true, true], 0.95).unwrap();
    for (edge, predicted, observed, at_risk) in q2 {
        let row = get(2, edge);
        assert_close(num(&h, row, "predicted"), predicted, "q2 predicted");
        assert_eq!(num(&h, row, "observed"), observed, "q2 observed");
        assert_eq!(num(&h, row, "at_risk"), at_risk, "q2 at risk");
        assert_eq!(num(&h, row, "time"), [0.0, 2.0, 4.0, 6.0][edge]);
        // The interval is km.rs's, of the row just before the edge.
        let before = km
            .rows
            .iter()
            .rev()
            .find(|r| r.time < num(&h, row, "time"))
            .unwrap();
        assert_eq!(num(&h, row, "ci_lower"), before.ci_lower);
        assert_eq!(num(&h, row, "ci_upper"), before.ci_upper);
    }
    // Quintile 5 (i: event at 0.5, j: censored at 6): S_0 = 0.9, S_1 = 0.81, S_2 = 0.729.
    for (edge, predicted) in [(1, 0.9), (2, 0.81), (3, 0.729)] {
        assert_close(
            num(&h, get(5, edge), "predicted"),
            predicted,
            "q5 predicted",
        );
        assert_eq!(num(&h, get(5, edge), "observed"), 0.5);
    }

    let png = std::fs::read(args.out.join("calibration.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(outputs.files.iter().any(|f| f.ends_with("calibration.png")));
    let md = std::fs::read_to_string(args.out.join("report.md")).unwrap();
    assert!(
        md.contains("![Calibration") && md.contains("| quintile |"),
        "{md}"
    );
    let html = std::fs::read_to_string(args.out.join("report.html")).unwrap();
    assert!(!html.contains("src=\"calibration.png\"") && !html.contains("src=\"km.png\""));
    assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 2);
}

#[test]
fn a_bad_covariate_is_a_clear_error_before_anything_is_written() {
    let t = metrics_table("lung");
    let dir = tempfile::tempdir().unwrap();
    let run = run_with_cohort(&t, dir.path(), &["age".to_owned()]);
    let args = ReportArgs {
        predictions: metrics_predictions(&t, dir.path(), true, None),
        out: dir.path().join("report"),
        summary: None,
        run: Some(run.clone()),
        cache: None,
    };
    let e = report::run(&args, &metrics_config(&["grade".to_owned()], None))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cohort.csv") && e.contains("`grade`") && e.contains("not in the table"),
        "{e}"
    );
    assert!(!args.out.exists(), "nothing written");

    // A non-numeric column, named in covariates_table.
    let table = dir.path().join("clinical.csv");
    std::fs::write(&table, "case_id,stage\np0,II\np1,III\n").unwrap();
    let config = ReportConfig {
        cox_covariates: vec!["stage".to_owned()],
        covariates_table: Some(table),
        ..ReportConfig::default()
    };
    let e = report::run(&args, &config).unwrap_err().to_string();
    assert!(
        e.contains("clinical.csv") && e.contains("`stage`") && e.contains("not a number"),
        "{e}"
    );

    // No table at all.
    let no_run = ReportArgs {
        run: None,
        ..args.clone()
    };
    let e = report::run(&no_run, &metrics_config(&["age".to_owned()], None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("report.covariates_table"), "{e}");

    // A patient without a value is left out of the adjusted fit and counted.
    let cohort = dir.path().join("cohort.csv");
    let text = std::fs::read_to_string(&cohort).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for line in lines.iter_mut().skip(1).take(3) {
        let (head, _) = line.rsplit_once(',').unwrap();
        *line = format!("{head},NA");
    }
    lines.pop(); // the last patient is not in the table at all
    std::fs::write(&cohort, lines.join("\n") + "\n").unwrap();
    report::run(&args, &metrics_config(&["age".to_owned()], None)).unwrap();
    let (h, rows) = read_table(&args.out.join("metrics.csv"));
    let row = &metric_rows(&h, &rows, "cox_hr_adjusted", Some("age"))[0];
    assert_eq!(num(&h, row, "excluded"), 4.0);
    assert_eq!(num(&h, row, "n"), (t.time.len() - 4) as f64);
    assert!(
        cell(&h, row, "note").contains("3 with a blank covariate, 1 not in the covariates table"),
        "{row:?}"
    );
    // The fit is the one on the patients kept.
    let age = csv_columns(&t, &["age".to_owned()]).remove(0);
    let cutoff = hdmoe_pipe::survival::quantile(&t.risk, 0.5).unwrap();
    let keep: Vec<usize> = (3..t.time.len() - 1).collect();
    let x_high: Vec<f64> = keep
        .iter()
        .map(|&i| f64::from(u8::from(t.risk[i] >= cutoff)))
        .collect();
    let x_age: Vec<f64> = keep.iter().map(|&i| age[i]).collect();
    let time: Vec<f64> = keep.iter().map(|&i| t.time[i]).collect();
    let event: Vec<bool> = keep.iter().map(|&i| t.event[i]).collect();
    let fit = cox_ph(&time, &event, &[x_high, x_age], 0.95).unwrap();
    assert_close(
        num(&h, row, "value"),
        fit.hazard_ratio[1],
        "adjusted HR of age",
    );
}

/// The held-out patients' report (`run`'s external_report step) becomes a section of the main
/// report, its plots embedded; the external report does not include itself.
#[test]
fn the_external_report_is_a_section_of_the_main_one() {
    let r = reference("gbsg2");
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let predictions = predictions_for(&r, dir.path());
    let args = |out: &str| ReportArgs {
        predictions: predictions.clone(),
        out: run.join(out),
        summary: None,
        run: Some(run.clone()),
        cache: None,
    };
    let config = ReportConfig::default();
    report::run(&args("report_external"), &config).unwrap();
    let external = std::fs::read_to_string(run.join("report_external/report.md")).unwrap();
    assert!(!external.contains("External validation"));
    report::run(&args("report"), &config).unwrap();
    let md = std::fs::read_to_string(run.join("report/report.md")).unwrap();
    let section = md
        .split("## External validation: the held-out patients")
        .nth(1)
        .expect("an external-validation section");
    assert!(
        section.contains("### Survival report"),
        "headings one level down"
    );
    assert!(section.contains("#### C-index per fold"));
    assert!(
        section.contains("](../report_external/km.png)"),
        "{section}"
    );
    let html = std::fs::read_to_string(run.join("report/report.html")).unwrap();
    assert!(
        !html.contains("src=\"../report_external/km.png\""),
        "embedded, not linked"
    );
    let main_images = html.split("data:image/png;base64").count() - 1;
    let external_images = std::fs::read_to_string(run.join("report_external/report.html"))
        .unwrap()
        .split("data:image/png;base64")
        .count()
        - 1;
    assert_eq!(
        main_images,
        2 * external_images,
        "its own plots and the external ones"
    );
}

/// Every high-risk patient dies before any low-risk one is followed: the Cox fit runs to an
/// unbounded hazard ratio, as lifelines' does, and the row says so.
#[test]
fn a_separated_split_says_its_hazard_ratio_is_unbounded() {
    let dir = tempfile::tempdir().unwrap();
    let predictions = dir.path().join("predictions.csv");
    let mut text = String::from("case_id,fold,risk,survival_months,event\n");
    for i in 0..8 {
        let high = i < 4;
        let (risk, time, event) = if high {
            (1.0 + i as f64, 1.0 + i as f64, 1)
        } else {
            (-(i as f64), 20.0 + i as f64, 0)
        };
        text.push_str(&format!("p{i},0,{risk},{time},{event}\n"));
    }
    std::fs::write(&predictions, text).unwrap();
    let args = ReportArgs {
        predictions,
        out: dir.path().join("out"),
        summary: None,
        run: None,
        cache: None,
    };
    report::run(&args, &ReportConfig::default()).unwrap();
    let (h, rows) = read_table(&args.out.join("metrics.csv"));
    let cox = rows
        .iter()
        .find(|r| cell(&h, r, "metric") == "cox_hr")
        .expect("a cox_hr row");
    assert!(cell(&h, cox, "note").contains("separated"), "{cox:?}");
}
