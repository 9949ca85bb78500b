//! Every value in fixtures/survival/reference/*.json (computed by lifelines 0.30.3,
//! scikit-survival 0.28.0 and scipy 1.17.1 on real datasets) reproduced to 1e-6.

use crate::common;

use common::{assert_close, reference, REFERENCES};
use hdmoe_pipe::survival::{
    assign_bin, concordance_index, kaplan_meier, logrank_test, median, quartile_edges, risk_split,
    welch_student_ttests, RiskSplitRule,
};
use serde_json::Value;

fn opt_f64(v: &Value) -> Option<f64> {
    v.as_f64()
}

#[test]
fn c_index_and_counts_match_scikit_survival() {
    for name in REFERENCES {
        let r = reference(name);
        let want = &r.json["c_index"];
        let got = concordance_index(&r.time, &r.event, &r.risk).unwrap();
        assert_close(
            got.c_index,
            want["value"].as_f64().unwrap(),
            &format!("{name} c-index"),
        );
        assert_eq!(
            got.concordant,
            want["concordant"].as_u64().unwrap(),
            "{name} concordant"
        );
        assert_eq!(
            got.discordant,
            want["discordant"].as_u64().unwrap(),
            "{name} discordant"
        );
        assert_eq!(
            got.tied_risk,
            want["tied_risk"].as_u64().unwrap(),
            "{name} tied risk"
        );
        assert_eq!(
            got.tied_time,
            want["tied_time"].as_u64().unwrap(),
            "{name} tied time"
        );
    }
}

#[test]
fn median_risk_split_matches() {
    for name in REFERENCES {
        let r = reference(name);
        let want = &r.json["risk_split"];
        let split = risk_split(&r.risk, RiskSplitRule::Median).unwrap();
        assert_close(split.threshold, want["threshold"].as_f64().unwrap(), name);
        assert_eq!(
            split.n_high() as u64,
            want["n_high"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            split.n_low() as u64,
            want["n_low"].as_u64().unwrap(),
            "{name}"
        );
    }
}

/// (time, event) of the high- or low-risk group under the median split.
fn group(r: &common::Reference, high: bool) -> (Vec<f64>, Vec<bool>) {
    let split = risk_split(&r.risk, RiskSplitRule::Median).unwrap();
    (0..r.time.len())
        .filter(|&i| split.high[i] == high)
        .map(|i| (r.time[i], r.event[i]))
        .unzip()
}

#[test]
fn kaplan_meier_tables_match_lifelines() {
    for name in REFERENCES {
        let r = reference(name);
        for (label, high) in [("high", true), ("low", false)] {
            let (time, event) = group(&r, high);
            let km = kaplan_meier(&time, &event, 0.95).unwrap();
            let want = r.json["km"][label].as_array().unwrap();
            assert_eq!(km.rows.len(), want.len(), "{name} {label}: rows");
            for (got, want) in km.rows.iter().zip(want) {
                let what = format!("{name} {label} t={}", got.time);
                assert_eq!(got.time, want["time"].as_f64().unwrap(), "{what}");
                assert_eq!(
                    got.at_risk as u64,
                    want["at_risk"].as_u64().unwrap(),
                    "{what}"
                );
                assert_eq!(
                    got.events as u64,
                    want["events"].as_u64().unwrap(),
                    "{what}"
                );
                assert_eq!(
                    got.censored as u64,
                    want["censored"].as_u64().unwrap(),
                    "{what}"
                );
                assert_close(got.survival, want["survival"].as_f64().unwrap(), &what);
                assert_close(got.ci_lower, want["ci_lower"].as_f64().unwrap(), &what);
                assert_close(got.ci_upper, want["ci_upper"].as_f64().unwrap(), &what);
            }
            let want_median = opt_f64(&r.json["km"][format!("median_survival_{label}")]);
            assert_eq!(km.median, want_median, "{name} {label} median");
        }
    }
}

#[test]
fn logrank_matches_lifelines() {
    for name in REFERENCES {
        let r = reference(name);
        let (th, eh) = group(&r, true);
        let (tl, el) = group(&r, false);
        let got = logrank_test(&th, &eh, &tl, &el).unwrap();
        let want = &r.json["logrank"];
        assert_close(got.statistic, want["statistic"].as_f64().unwrap(), name);
        assert_close(got.p_value, want["p_value"].as_f64().unwrap(), name);
        // The statistic is symmetric in the groups.
        let swapped = logrank_test(&tl, &el, &th, &eh).unwrap();
        assert_close(swapped.statistic, got.statistic, name);
    }
}

#[test]
fn t_tests_match_scipy() {
    for name in REFERENCES {
        let r = reference(name);
        let want = &r.json["ttest"];
        let m = median(&r.time).unwrap();
        assert_close(m, want["time_median"].as_f64().unwrap(), name);
        let (short, long): (Vec<usize>, Vec<usize>) =
            (0..r.time.len()).partition(|&i| r.time[i] < m);
        let risk = |rows: &[usize]| rows.iter().map(|&i| r.risk[i]).collect::<Vec<_>>();
        let got = welch_student_ttests(&risk(&short), &risk(&long)).unwrap();
        assert_eq!(got.n_a as u64, want["n_short"].as_u64().unwrap(), "{name}");
        assert_eq!(got.n_b as u64, want["n_long"].as_u64().unwrap(), "{name}");
        for (test, values) in [("student", &got.student), ("welch", &got.welch)] {
            let w = &want[test];
            let what = format!("{name} {test}");
            assert_close(values.t, w["t"].as_f64().unwrap(), &what);
            assert_close(values.df, w["df"].as_f64().unwrap(), &what);
            assert_close(values.p_value, w["p_value"].as_f64().unwrap(), &what);
        }
    }
}

#[test]
fn quartile_bins_match_pandas() {
    for name in REFERENCES {
        let r = reference(name);
        let want = &r.json["quartile_bins"];
        let edges = quartile_edges(&r.time, &r.event).unwrap();
        for (got, want) in edges.iter().zip(want["edges"].as_array().unwrap()) {
            assert_close(*got, want.as_f64().unwrap(), &format!("{name} edges"));
        }
        let mut counts = [0u64; 4];
        for &t in &r.time {
            counts[assign_bin(t, &edges)] += 1;
        }
        let want_counts: Vec<u64> = want["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .collect();
        assert_eq!(counts.to_vec(), want_counts, "{name} bin counts");
    }
}
