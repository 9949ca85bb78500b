//! Every value in fixtures/survival/metrics/*.json (Uno's C, the cumulative/dynamic AUC, the
//! Brier score and its integral by scikit-survival 0.28.0; Cox fits by lifelines 0.30.3, on the
//! real tables of fixtures/survival/) reproduced to 1e-6. The JSONs are made by
//! fixtures/survival/metrics/make_metrics_reference.py, which documents every input rule.

use crate::common::assert_close;
use crate::common::metrics::{csv_columns, floats, hazards, metrics_tables, risk_coefficients};

use hdmoe_pipe::survival::{
    bin_survival_at, brier_score, concordance_index, concordance_index_ipcw, cox_ph,
    cumulative_dynamic_auc, cumulative_dynamic_auc_by_time, integrated_brier_score, quartile_edges,
    risk_split, CensoringDistribution, Concordance, DynamicAuc, RiskSplitRule, StatsError, N_BINS,
};
use serde_json::Value;

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(floats).collect()
}

fn close_all(got: &[f64], want: &Value, what: &str) {
    let want = floats(want);
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_close(*g, *w, &format!("{what}[{k}]"));
    }
}

#[test]
fn inputs_are_what_the_script_says() {
    for t in metrics_tables() {
        let name = &t.name;
        assert_eq!(t.time.len() as u64, t.json["input"]["n"].as_u64().unwrap());
        let events = t.event.iter().filter(|&&e| e).count() as u64;
        assert_eq!(events, t.json["input"]["events"].as_u64().unwrap());

        // risk = Σ c_j x_j, left to right.
        let coefficients = risk_coefficients(&t);
        let names: Vec<String> = coefficients.iter().map(|(c, _)| c.clone()).collect();
        let columns = csv_columns(&t, &names);
        for (i, &want) in t.risk.iter().enumerate() {
            let got = coefficients
                .iter()
                .zip(&columns)
                .fold(0.0, |acc, ((_, c), x)| acc + c * x[i]);
            assert!(
                (got - want).abs() <= 1e-12 * want.abs().max(1.0),
                "{name} risk {i}"
            );
        }

        // The curves: our quartile bins, h_k = σ(a_k + b_k z), S_k = Π (1 − h_j).
        let curves = &t.json["curves"];
        let edges = quartile_edges(&t.time, &t.event).unwrap();
        assert_eq!(edges.to_vec(), floats(&curves["bin_edges"]), "{name} edges");
        let survival = matrix(&curves["survival"]);
        for (i, (row, h)) in survival.iter().zip(hazards(&t)).enumerate() {
            let mut s = 1.0;
            for k in 0..N_BINS {
                s *= 1.0 - h[k];
                assert!((row[k] - s).abs() < 1e-12, "{name} S[{i}][{k}]");
            }
        }
        // The survival matrices are those curves read at the evaluation times.
        for (section, key) in [
            ("cumulative_dynamic_auc", "times"),
            ("integrated_brier_score", "times"),
        ] {
            let times = floats(&t.json[section][key]);
            let at = matrix(&t.json[section]["survival_at_times"]);
            for (i, row) in at.iter().enumerate() {
                let curve: [f64; N_BINS] = survival[i].clone().try_into().unwrap();
                let got: Vec<f64> = times
                    .iter()
                    .map(|&u| bin_survival_at(&curve, &edges, u))
                    .collect();
                assert_eq!(&got, row, "{name} {section} row {i}");
            }
        }
    }
}

#[test]
fn censoring_distribution_matches_scikit_survival() {
    for t in metrics_tables() {
        let g = CensoringDistribution::fit(&t.time, &t.event).unwrap();
        let want = &t.json["censoring_km"];
        assert_eq!(g.steps().times, floats(&want["times"]), "{}", t.name);
        close_all(&g.steps().prob, &want["prob"], &format!("{} G", t.name));
    }
}

/// An error scikit-survival raised, by its message, is the one we return.
fn same_error(got: &StatsError, sksurv: &str, what: &str) {
    let matches = match got {
        StatsError::CensoringSurvivalZero { .. } => {
            sksurv.contains("censoring survival function is zero")
        }
        StatsError::BeyondFollowUp { .. } => sksurv.contains("smaller than largest observed"),
        StatsError::TimeOutsideFollowUp { .. } => sksurv.contains("within follow-up time"),
        _ => false,
    };
    assert!(
        matches,
        "{what}: we say '{got}', scikit-survival said '{sksurv}'"
    );
}

fn check_concordance(got: Result<Concordance, StatsError>, want: &Value, what: &str) {
    if let Some(message) = want["error"].as_str() {
        same_error(&got.unwrap_err(), message, what);
        return;
    }
    let got = got.unwrap();
    assert_close(got.c_index, want["cindex"].as_f64().unwrap(), what);
    let counts = (got.concordant, got.discordant, got.tied_risk, got.tied_time);
    let want_counts = (
        want["concordant"].as_u64().unwrap(),
        want["discordant"].as_u64().unwrap(),
        want["tied_risk"].as_u64().unwrap(),
        want["tied_time"].as_u64().unwrap(),
    );
    assert_eq!(counts, want_counts, "{what}: counts");
}

#[test]
fn uno_c_matches_scikit_survival() {
    let mut values = 0;
    for t in metrics_tables() {
        let g = CensoringDistribution::fit(&t.time, &t.event).unwrap();
        let want = &t.json["cindex_ipcw"];
        let tau = want["tau"].as_f64().unwrap();
        let without = concordance_index_ipcw(&g, &t.time, &t.event, &t.risk, None);
        check_concordance(without, &want["tau_none"], &format!("{} Uno", t.name));
        let with = concordance_index_ipcw(&g, &t.time, &t.event, &t.risk, Some(tau));
        // sksurv's counts are Harrell's, with or without tau.
        let harrell = concordance_index(&t.time, &t.event, &t.risk).unwrap();
        if let Ok(with) = &with {
            assert_eq!(with.concordant, harrell.concordant);
            values += 1;
        }
        check_concordance(with, &want["with_tau"], &format!("{} Uno tau", t.name));
    }
    assert_eq!(values, 4);
}

fn check_auc(got: Result<DynamicAuc, StatsError>, want: &Value, what: &str) {
    if let Some(message) = want["error"].as_str() {
        same_error(&got.unwrap_err(), message, what);
        return;
    }
    let got = got.unwrap();
    close_all(&got.auc, &want["auc"], what);
    assert_close(got.mean_auc, want["mean_auc"].as_f64().unwrap(), what);
}

#[test]
fn cumulative_dynamic_auc_matches_scikit_survival() {
    for t in metrics_tables() {
        let g = CensoringDistribution::fit(&t.time, &t.event).unwrap();
        let want = &t.json["cumulative_dynamic_auc"];
        let times = floats(&want["times"]);
        let got = cumulative_dynamic_auc(&g, &t.time, &t.event, &t.risk, &times);
        check_auc(got, &want["risk"], &format!("{} AUC", t.name));
        let risk_at_times: Vec<Vec<f64>> = matrix(&want["survival_at_times"])
            .iter()
            .map(|row| row.iter().map(|s| 1.0 - s).collect())
            .collect();
        let got = cumulative_dynamic_auc_by_time(&g, &t.time, &t.event, &risk_at_times, &times);
        check_auc(
            got,
            &want["one_minus_survival"],
            &format!("{} AUC of 1 - S", t.name),
        );
    }
}

#[test]
fn brier_scores_match_scikit_survival() {
    for t in metrics_tables() {
        let g = CensoringDistribution::fit(&t.time, &t.event).unwrap();
        let want = &t.json["brier_score"];
        let times = floats(&want["times"]);
        let survival = matrix(&t.json["cumulative_dynamic_auc"]["survival_at_times"]);
        let got = brier_score(&g, &t.time, &t.event, &survival, &times).unwrap();
        close_all(&got, &want["brier_scores"], &format!("{} Brier", t.name));

        let want = &t.json["integrated_brier_score"];
        let times = floats(&want["times"]);
        let survival = matrix(&want["survival_at_times"]);
        let got = integrated_brier_score(&g, &t.time, &t.event, &survival, &times).unwrap();
        assert_close(
            got,
            want["ibs"].as_f64().unwrap(),
            &format!("{} IBS", t.name),
        );
    }
}

#[test]
fn cox_fits_match_lifelines() {
    for t in metrics_tables() {
        let want = &t.json["cox"];
        let split = risk_split(&t.risk, RiskSplitRule::Median).unwrap();
        assert_close(
            split.threshold,
            want["risk_threshold"].as_f64().unwrap(),
            &t.name,
        );
        assert_eq!(split.n_high() as u64, want["n_high"].as_u64().unwrap());
        let high: Vec<f64> = split
            .high
            .iter()
            .map(|&h| if h { 1.0 } else { 0.0 })
            .collect();
        for model in ["group", "adjusted"] {
            let w = &want[model];
            let names: Vec<String> = w["covariates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_owned())
                .collect();
            assert_eq!(names[0], "high");
            let mut columns = vec![high.clone()];
            columns.extend(csv_columns(&t, &names[1..]));
            let fit = cox_ph(&t.time, &t.event, &columns, 0.95).unwrap();
            let what = format!("{} Cox {model}", t.name);
            assert!(fit.converged, "{what}");
            close_all(&fit.coef, &w["coef"], &format!("{what} coef"));
            close_all(&fit.hazard_ratio, &w["hazard_ratio"], &format!("{what} HR"));
            close_all(
                &fit.hr_ci_lower,
                &w["hr_ci_lower"],
                &format!("{what} HR lower"),
            );
            close_all(
                &fit.hr_ci_upper,
                &w["hr_ci_upper"],
                &format!("{what} HR upper"),
            );
            close_all(&fit.se, &w["se"], &format!("{what} se"));
            close_all(&fit.z, &w["z"], &format!("{what} z"));
            close_all(&fit.p_value, &w["p_value"], &format!("{what} p"));
            close_all(&fit.norm_mean, &w["norm_mean"], &format!("{what} mean"));
            close_all(&fit.norm_std, &w["norm_std"], &format!("{what} std"));
            assert_close(
                fit.log_likelihood,
                w["log_likelihood"].as_f64().unwrap(),
                &format!("{what} log-likelihood"),
            );
        }
    }
}
