//! The report's statistics, laid out as polars tables.

use std::collections::BTreeMap;

use polars::prelude::*;

use super::calibration::{self, CalibrationRow};
use super::metrics::{self, Metrics};
use super::predictions::Predictions;
use super::sources::{BinEdges, Covariates};
use crate::config::{ReportConfig, TTestKind};
use crate::survival::{
    self, concordance_index, kaplan_meier, logrank_test, risk_split, welch_student_ttests,
    KaplanMeier, RiskSplitRule, TTestPair,
};

/// Where the high/low split comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitSource {
    /// The report's own rule over the pooled risks (`report.risk_split`).
    Rule(RiskSplitRule),
    /// The predictions' `risk_group` column: the training cohort's frozen cutoff.
    TrainingCutoff,
}

impl SplitSource {
    /// As logrank.csv's `risk_split` column says it.
    pub fn name(self) -> String {
        match self {
            Self::Rule(rule) => format!("{rule:?}").to_lowercase(),
            Self::TrainingCutoff => "training_cutoff".to_owned(),
        }
    }
}

/// The high- and low-risk groups.
#[derive(Debug, Clone, PartialEq)]
pub struct Groups {
    pub high: Vec<bool>,
    /// The risk threshold (high iff risk ≥ it); for the training cutoff the predictions'
    /// `risk_cutoff`, `None` when they carry the groups only.
    pub threshold: Option<f64>,
    pub source: SplitSource,
}

impl Groups {
    pub fn n_high(&self) -> usize {
        self.high.iter().filter(|&&h| h).count()
    }

    pub fn n_low(&self) -> usize {
        self.high.len() - self.n_high()
    }
}

/// The `risk_group` column when the predictions have one, else `rule` over the risks.
pub fn groups(p: &Predictions, rule: RiskSplitRule) -> PolarsResult<Groups> {
    if let Some(high) = &p.risk_group {
        return Ok(Groups {
            high: high.clone(),
            threshold: p.risk_cutoff,
            source: SplitSource::TrainingCutoff,
        });
    }
    let split = risk_split(&p.risk, rule)
        .map_err(|e| PolarsError::ComputeError(format!("risk split: {e}").into()))?;
    Ok(Groups {
        high: split.high,
        threshold: Some(split.threshold),
        source: SplitSource::Rule(rule),
    })
}

/// Inputs beyond the predictions: the model's bin edges and the Cox covariates.
pub struct Extras<'a> {
    pub edges: &'a Result<BinEdges, String>,
    pub covariates: Option<&'a Covariates>,
}

/// Everything the report shows, computed once.
pub struct Analysis {
    pub cindex: DataFrame,
    pub km: DataFrame,
    pub logrank: DataFrame,
    pub ttest: DataFrame,
    pub split: Groups,
    /// metrics.csv and its rules.
    pub metrics: Metrics,
    pub metrics_table: DataFrame,
    /// calibration.csv, or why there is none.
    pub calibration: Result<Vec<CalibrationRow>, String>,
    pub calibration_table: DataFrame,
    /// (label, curve) for the high- and low-risk groups that have patients.
    pub curves: Vec<(String, KaplanMeier)>,
    pub logrank_p: Option<f64>,
    /// Headline: mean and population std of the per-fold C-index, and how many folds had one.
    pub cindex_mean: Option<(f64, f64, usize)>,
    pub cindex_best_mean: Option<(f64, f64)>,
    /// Statistics that could not be computed, with the reason (shown in the report).
    pub notes: Vec<String>,
}

fn frame(columns: Vec<Column>) -> PolarsResult<DataFrame> {
    DataFrame::new_infer_height(columns)
}

fn col<T: ?Sized, V>(name: &str, values: V) -> Column
where
    Series: NamedFrom<V, T>,
{
    Column::new(name.into(), values)
}

/// Mean and population standard deviation (numpy's default ddof = 0).
pub fn mean_std(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    Some((mean, var.sqrt()))
}

pub fn analyse(
    p: &Predictions,
    config: &ReportConfig,
    best_by_fold: Option<&BTreeMap<i64, f64>>,
    extras: &Extras,
) -> PolarsResult<Analysis> {
    let mut notes = Vec::new();
    let (cindex, cindex_mean, cindex_best_mean) = cindex_table(p, best_by_fold, &mut notes)?;

    let split = groups(p, config.risk_split)?;
    let group = |high: bool| -> (Vec<f64>, Vec<bool>) {
        (0..p.len())
            .filter(|&i| split.high[i] == high)
            .map(|i| (p.time[i], p.event[i]))
            .unzip()
    };
    let (time_high, event_high) = group(true);
    let (time_low, event_low) = group(false);

    let mut curves = Vec::new();
    for (label, time, event) in [
        ("high", &time_high, &event_high),
        ("low", &time_low, &event_low),
    ] {
        match kaplan_meier(time, event, config.ci_level) {
            Ok(km) => curves.push((label.to_owned(), km)),
            Err(e) => notes.push(format!("Kaplan–Meier, {label}-risk group: {e}")),
        }
    }
    let km = km_table(&curves)?;

    let logrank = logrank_test(&time_high, &event_high, &time_low, &event_low);
    if let Err(e) = &logrank {
        notes.push(format!("log-rank test: {e}"));
    }
    let median_of = |label: &str| {
        curves
            .iter()
            .find(|(l, _)| l == label)
            .and_then(|(_, km)| km.median)
    };
    let events = |e: &[bool]| e.iter().filter(|&&x| x).count() as i64;
    let lr = logrank.as_ref().ok();
    let logrank_df = frame(vec![
        col("comparison", ["high vs low risk"]),
        col("risk_split", [split.source.name()]),
        col("threshold", [split.threshold]),
        col("n_high", [split.n_high() as i64]),
        col("n_low", [split.n_low() as i64]),
        col("events_high", [events(&event_high)]),
        col("events_low", [events(&event_low)]),
        col("expected_high", [lr.map(|r| r.expected_a)]),
        col("expected_low", [lr.map(|r| r.expected_b)]),
        col("median_high", [median_of("high")]),
        col("median_low", [median_of("low")]),
        col("statistic", [lr.map(|r| r.statistic)]),
        col("df", [1i64]),
        col("p_value", [lr.map(|r| r.p_value)]),
    ])?;

    let ttest = ttest_table(p, config.ttest, &mut notes)?;
    let metrics = metrics::compute(
        &metrics::Inputs {
            predictions: p,
            high: &split.high,
            edges: extras.edges,
            covariates: extras.covariates,
        },
        config,
    );
    let metrics_table = metrics::frame(&metrics.rows)?;
    let calibration = match extras.edges {
        Ok(edges) => calibration::calibration(p, &edges.edges, config.ci_level),
        Err(why) => Err(why.clone()),
    };
    let calibration_table = calibration::frame(calibration.as_deref().unwrap_or_default())?;
    Ok(Analysis {
        cindex,
        km,
        logrank: logrank_df,
        ttest,
        metrics,
        metrics_table,
        calibration,
        calibration_table,
        logrank_p: lr.map(|r| r.p_value),
        split,
        curves,
        cindex_mean,
        cindex_best_mean,
        notes,
    })
}

type CIndexSummary = (DataFrame, Option<(f64, f64, usize)>, Option<(f64, f64)>);

fn cindex_table(
    p: &Predictions,
    best_by_fold: Option<&BTreeMap<i64, f64>>,
    notes: &mut Vec<String>,
) -> PolarsResult<CIndexSummary> {
    let mut fold_label = Vec::new();
    let mut n = Vec::new();
    let mut events = Vec::new();
    let mut c = Vec::new();
    let (mut concordant, mut discordant, mut tied_risk, mut tied_time) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut best = Vec::new();
    for (fold, rows) in p.by_fold() {
        let time: Vec<f64> = rows.iter().map(|&i| p.time[i]).collect();
        let event: Vec<bool> = rows.iter().map(|&i| p.event[i]).collect();
        let risk: Vec<f64> = rows.iter().map(|&i| p.risk[i]).collect();
        let result = concordance_index(&time, &event, &risk);
        if let Err(e) = &result {
            notes.push(format!("C-index, fold {fold}: {e}"));
        }
        let r = result.ok();
        // A cohort predicted as a whole has no folds.
        fold_label.push(if p.single_cohort {
            "all".to_owned()
        } else {
            fold.to_string()
        });
        n.push(Some(rows.len() as i64));
        events.push(Some(event.iter().filter(|&&e| e).count() as i64));
        c.push(r.map(|r| r.c_index));
        concordant.push(r.map(|r| r.concordant as i64));
        discordant.push(r.map(|r| r.discordant as i64));
        tied_risk.push(r.map(|r| r.tied_risk as i64));
        tied_time.push(r.map(|r| r.tied_time as i64));
        best.push(best_by_fold.and_then(|b| b.get(&fold).copied()));
    }
    let defined: Vec<f64> = c.iter().flatten().copied().collect();
    let summary = mean_std(&defined).map(|(m, s)| (m, s, defined.len()));
    let best_defined: Vec<f64> = best.iter().flatten().copied().collect();
    let best_summary = mean_std(&best_defined);

    for (label, pick) in [("mean", 0usize), ("std", 1usize)] {
        let choose = |pair: Option<(f64, f64)>| pair.map(|(m, s)| if pick == 0 { m } else { s });
        fold_label.push(label.to_owned());
        n.push(None);
        events.push(None);
        c.push(choose(summary.map(|(m, s, _)| (m, s))));
        concordant.push(None);
        discordant.push(None);
        tied_risk.push(None);
        tied_time.push(None);
        best.push(choose(best_summary));
    }
    let mut columns = vec![
        col("fold", fold_label),
        col("n", n),
        col("events", events),
        col("c_index", c),
        col("concordant", concordant),
        col("discordant", discordant),
        col("tied_risk", tied_risk),
        col("tied_time", tied_time),
    ];
    if best_by_fold.is_some() {
        columns.push(col("c_index_best_epoch", best));
    }
    Ok((frame(columns)?, summary, best_summary))
}

fn km_table(curves: &[(String, KaplanMeier)]) -> PolarsResult<DataFrame> {
    let rows = curves
        .iter()
        .flat_map(|(label, km)| km.rows.iter().map(move |r| (label, r)));
    let mut group = Vec::new();
    let (mut time, mut at_risk, mut events, mut censored) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut survival, mut lower, mut upper) = (Vec::new(), Vec::new(), Vec::new());
    for (label, r) in rows {
        group.push(label.clone());
        time.push(r.time);
        at_risk.push(r.at_risk as i64);
        events.push(r.events as i64);
        censored.push(r.censored as i64);
        survival.push(r.survival);
        lower.push(r.ci_lower);
        upper.push(r.ci_upper);
    }
    frame(vec![
        col("group", group),
        col("time", time),
        col("at_risk", at_risk),
        col("events", events),
        col("censored", censored),
        col("survival", survival),
        col("ci_lower", lower),
        col("ci_upper", upper),
    ])
}

/// Risk compared between patients who lived shorter than the median observed time and the rest.
fn ttest_table(
    p: &Predictions,
    kind: TTestKind,
    notes: &mut Vec<String>,
) -> PolarsResult<DataFrame> {
    let time_median = survival::median(&p.time).ok();
    let result: Option<TTestPair> = time_median.and_then(|m| {
        let (short, long): (Vec<usize>, Vec<usize>) = (0..p.len()).partition(|&i| p.time[i] < m);
        let risk = |rows: &[usize]| rows.iter().map(|&i| p.risk[i]).collect::<Vec<f64>>();
        match welch_student_ttests(&risk(&short), &risk(&long)) {
            Ok(r) => Some(r),
            Err(e) => {
                notes.push(format!("t-test: {e}"));
                None
            }
        }
    });
    let mut tests = Vec::new();
    if kind.includes_student() {
        tests.push(("student", result.as_ref().map(|r| &r.student)));
    }
    if kind.includes_welch() {
        tests.push(("welch", result.as_ref().map(|r| &r.welch)));
    }
    let repeat = |v: Option<f64>| vec![v; tests.len()];
    let counts =
        |f: fn(&TTestPair) -> usize| vec![result.as_ref().map(|r| f(r) as i64); tests.len()];
    frame(vec![
        col(
            "test",
            tests.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
        ),
        col("variable", vec!["risk"; tests.len()]),
        col(
            "split",
            vec!["survival_months < median vs >= median"; tests.len()],
        ),
        col("time_median", repeat(time_median)),
        col("n_short", counts(|r| r.n_a)),
        col("n_long", counts(|r| r.n_b)),
        col("mean_risk_short", repeat(result.as_ref().map(|r| r.mean_a))),
        col("mean_risk_long", repeat(result.as_ref().map(|r| r.mean_b))),
        col(
            "t",
            tests
                .iter()
                .map(|(_, t)| t.map(|t| t.t))
                .collect::<Vec<_>>(),
        ),
        col(
            "df",
            tests
                .iter()
                .map(|(_, t)| t.map(|t| t.df))
                .collect::<Vec<_>>(),
        ),
        col(
            "p_value",
            tests
                .iter()
                .map(|(_, t)| t.map(|t| t.p_value))
                .collect::<Vec<_>>(),
        ),
    ])
}
