//! `metrics.csv`: survival metrics beside Harrell's C, on the pooled predictions, with the
//! conventions of scikit-survival 0.28 and lifelines 0.30 (src/survival/ holds the statistics
//! and their checks against those libraries).
//!
//! - The censoring distribution G is the Kaplan–Meier estimate of the censoring times of the
//!   same patients (sksurv's `survival_train` = `survival_test`).
//! - Uno's C: `concordance_index_ipcw` with `report.ipcw_tau` (default unset).
//! - The cumulative/dynamic AUC of the risk column at `report.metric_times` (default: the 25th,
//!   50th and 75th percentiles of the event times, numpy's linear quantile, repeats once) and
//!   its mean (sksurv's `mean_auc`, weighted by the Kaplan–Meier drop between the times).
//! - The Brier score at the same times and the integrated Brier score over the grid
//!   `np.linspace(P10, P90, 10)` of the event times' 10th and 90th percentiles (the rule of
//!   fixtures/survival/metrics/make_metrics_reference.py), from the predicted curves
//!   S_k = prod_{j<=k} (1 - h_j): the survival at t is S_{bin(t)}, the bin [e_k, e_{k+1}) of
//!   the model's edges that contains t (times outside the edges take the first or last bin),
//!   i.e. the probability of surviving through the bin that contains t.
//! - `auc_survival`, `mean_auc_survival`: the same AUC of 1 − S(t), the predicted curve's
//!   failure probability at each time (read as for the Brier score; SurvPath's estimate), a
//!   score that may rank patients differently at different times.
//! - Cox PH (Efron ties, lifelines' `CoxPHFitter()` defaults) of the high-risk group alone,
//!   and adjusted for `report.cox_covariates`.
//!
//! A metric that is undefined on the data keeps its row, with an empty value and the reason in
//! `note`; the report still completes.

use polars::prelude::*;

use super::predictions::Predictions;
use super::sources::{BinEdges, Covariates};
use crate::config::ReportConfig;
use crate::survival::{
    self, bin_survival_at, brier_score, concordance_index, concordance_index_ipcw, cox_ph,
    cumulative_dynamic_auc, cumulative_dynamic_auc_by_time, integrated_brier_score,
    CensoringDistribution, StatsError, N_BINS,
};

/// Percentiles of the event times that bound the integrated Brier score's grid.
pub const IBS_PERCENTILES: (f64, f64) = (10.0, 90.0);
/// Points of that grid.
pub const IBS_POINTS: usize = 10;

/// One row of metrics.csv.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricRow {
    /// `harrell_c`, `uno_c`, `auc`, `mean_auc`, `brier`, `ibs`, `cox_hr`, `cox_hr_adjusted`.
    pub metric: &'static str,
    /// The Cox model's covariate (`high` = the high-risk group), else empty.
    pub term: Option<String>,
    /// The evaluation time (`auc`, `brier`), or tau (`uno_c`, empty when unset).
    pub time: Option<f64>,
    /// The metric; for the Cox rows the hazard ratio exp(coef).
    pub value: Option<f64>,
    pub ci_lower: Option<f64>,
    pub ci_upper: Option<f64>,
    pub p_value: Option<f64>,
    /// Patients and events behind the value.
    pub n: Option<i64>,
    pub events: Option<i64>,
    /// Patients left out of the adjusted Cox fit.
    pub excluded: Option<i64>,
    /// Why the value is missing, or a caveat.
    pub note: Option<String>,
}

/// The metrics, and the rules that chose their times (for the report's text).
#[derive(Debug, Clone)]
pub struct Metrics {
    pub rows: Vec<MetricRow>,
    /// The AUC and Brier times, and whether they are the defaults.
    pub times: Vec<f64>,
    pub times_from_config: bool,
    /// The integrated Brier score's grid (empty when there are no events).
    pub ibs_grid: Vec<f64>,
    /// Where the bin edges came from, or why there are none.
    pub edges: Result<BinEdges, String>,
}

/// The high-risk indicator and what the Cox fits need besides the predictions.
pub struct Inputs<'a> {
    pub predictions: &'a Predictions,
    pub high: &'a [bool],
    pub edges: &'a Result<BinEdges, String>,
    pub covariates: Option<&'a Covariates>,
}

/// `np.linspace(start, stop, num)`, as numpy computes it (the last point is `stop` exactly).
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let div = (num - 1) as f64;
            let step = (stop - start) / div;
            let mut y: Vec<f64> = (0..num)
                .map(|k| {
                    let k = k as f64;
                    if step == 0.0 {
                        k / div * (stop - start) + start
                    } else {
                        k * step + start
                    }
                })
                .collect();
            y[num - 1] = stop;
            y
        }
    }
}

/// The default AUC/Brier times: np.percentile(event times, [25, 50, 75]), repeats once (as
/// sksurv's `np.unique` of the times).
pub fn default_times(time: &[f64], event: &[bool]) -> Result<Vec<f64>, StatsError> {
    let events = event_times(time, event)?;
    let mut times = [0.25, 0.5, 0.75]
        .iter()
        .map(|&q| survival::quantile(&events, q))
        .collect::<Result<Vec<_>, _>>()?;
    times.dedup();
    Ok(times)
}

/// The integrated Brier score's grid: np.linspace(P10, P90, 10) of the event times.
pub fn ibs_grid(time: &[f64], event: &[bool]) -> Result<Vec<f64>, StatsError> {
    let events = event_times(time, event)?;
    let (lo, hi) = IBS_PERCENTILES;
    let start = survival::quantile(&events, lo / 100.0)?;
    let stop = survival::quantile(&events, hi / 100.0)?;
    Ok(linspace(start, stop, IBS_POINTS))
}

fn event_times(time: &[f64], event: &[bool]) -> Result<Vec<f64>, StatsError> {
    let events: Vec<f64> = time
        .iter()
        .zip(event)
        .filter(|(_, &e)| e)
        .map(|(&t, _)| t)
        .collect();
    if events.is_empty() {
        return Err(StatsError::AllCensored);
    }
    Ok(events)
}

/// A value per time: from the joint computation when it succeeds, else each time on its own
/// (a time outside the follow-up spoils only its own row; sksurv would refuse them all).
fn per_time(
    times: &[f64],
    joint: Result<Vec<f64>, StatsError>,
    single: impl Fn(f64) -> Result<f64, StatsError>,
) -> Vec<Result<f64, String>> {
    match joint {
        Ok(values) => values.into_iter().map(Ok).collect(),
        Err(_) => times
            .iter()
            .map(|&t| single(t).map_err(|e| e.to_string()))
            .collect(),
    }
}

/// Replaces the Cox fit's "covariate j" by the covariate's name.
fn name_covariates(message: String, names: &[String]) -> String {
    names
        .iter()
        .enumerate()
        .rev()
        .fold(message, |m, (j, name)| {
            m.replace(&format!("covariate {j} "), &format!("covariate `{name}` "))
        })
}

pub fn compute(inputs: &Inputs, config: &ReportConfig) -> Metrics {
    let p = inputs.predictions;
    let (time, event, risk) = (&p.time, &p.event, &p.risk);
    let n = Some(p.len() as i64);
    let events = Some(event.iter().filter(|&&e| e).count() as i64);
    let mut rows = Vec::new();
    let row = |metric: &'static str, time: Option<f64>, value: Result<f64, String>| MetricRow {
        metric,
        time,
        value: value.as_ref().ok().copied(),
        n,
        events,
        note: value.err(),
        ..MetricRow::default()
    };

    rows.push(row(
        "harrell_c",
        None,
        concordance_index(time, event, risk)
            .map(|c| c.c_index)
            .map_err(|e| e.to_string()),
    ));

    let censoring = CensoringDistribution::fit(time, event).map_err(|e| {
        format!("the censoring distribution (Kaplan–Meier of the censoring times): {e}")
    });
    let with_g = |f: &dyn Fn(&CensoringDistribution) -> Result<f64, StatsError>| match &censoring {
        Ok(g) => f(g).map_err(|e| e.to_string()),
        Err(e) => Err(e.clone()),
    };
    let tau = config.ipcw_tau;
    rows.push(row(
        "uno_c",
        tau,
        with_g(&|g| concordance_index_ipcw(g, time, event, risk, tau).map(|c| c.c_index)),
    ));

    let (times, times_from_config) = match &config.metric_times {
        Some(t) => (Ok(t.clone()), true),
        None => (default_times(time, event), false),
    };
    let times_result = times.map_err(|e| format!("no evaluation times: {e}"));
    let times = times_result.clone().unwrap_or_default();

    // Time-dependent AUC of the (time-independent) risk column.
    let (auc, mean_auc): (Vec<Result<f64, String>>, Result<f64, String>) =
        match (&censoring, &times_result) {
            (Err(e), _) | (_, Err(e)) => (vec![Err(e.clone()); times.len()], Err(e.clone())),
            (Ok(g), Ok(times)) => {
                let joint = cumulative_dynamic_auc(g, time, event, risk, times);
                let mean = joint
                    .as_ref()
                    .map(|a| a.mean_auc)
                    .map_err(|e| e.to_string());
                let values = per_time(times, joint.map(|a| a.auc), |t| {
                    cumulative_dynamic_auc(g, time, event, risk, &[t]).map(|a| a.auc[0])
                });
                (values, mean)
            }
        };
    for (&t, value) in times.iter().zip(auc) {
        rows.push(row("auc", Some(t), value));
    }
    if times_result.is_err() {
        rows.push(row("auc", None, Err(times_result.clone().unwrap_err())));
    }
    rows.push(row("mean_auc", None, mean_auc));

    // Brier scores from the predicted curves at the model's bin edges.
    let grid = ibs_grid(time, event);
    let curves = p.survival_curves();
    let survival_at = |edges: &[f64; N_BINS + 1], at: &[f64]| -> Vec<Vec<f64>> {
        curves
            .iter()
            .flatten()
            .map(|c| at.iter().map(|&t| bin_survival_at(c, edges, t)).collect())
            .collect()
    };
    let ready = match (&curves, inputs.edges, &censoring) {
        (None, _, _) => Err(
            "the predictions have no hazard_0..hazard_3 columns: no survival curves to score"
                .to_owned(),
        ),
        (_, Err(why), _) => Err(why.clone()),
        (_, _, Err(e)) => Err(e.clone()),
        (Some(_), Ok(edges), Ok(g)) => Ok((&edges.edges, g)),
    };
    let (brier, ibs): (Vec<Result<f64, String>>, Result<f64, String>) = match &ready {
        Err(why) => (vec![Err(why.clone()); times.len()], Err(why.clone())),
        Ok((edges, g)) => {
            let brier = match &times_result {
                Ok(times) => per_time(
                    times,
                    brier_score(g, time, event, &survival_at(edges, times), times),
                    |t| brier_score(g, time, event, &survival_at(edges, &[t]), &[t]).map(|b| b[0]),
                ),
                Err(e) => vec![Err(e.clone()); times.len()],
            };
            let ibs = match &grid {
                Ok(grid) => integrated_brier_score(g, time, event, &survival_at(edges, grid), grid)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!("no grid: {e}")),
            };
            (brier, ibs)
        }
    };
    for (&t, value) in times.iter().zip(brier) {
        rows.push(row("brier", Some(t), value));
    }
    if times_result.is_err() {
        rows.push(row("brier", None, Err(times_result.clone().unwrap_err())));
    }
    rows.push(row("ibs", None, ibs));

    // The same AUC of a time-dependent score, 1 − S(t) of the predicted curve at each time
    // (SurvPath's `estimate=1 - survival`), evaluated as the Brier score is.
    let one_minus = |edges: &[f64; N_BINS + 1], at: &[f64]| -> Vec<Vec<f64>> {
        survival_at(edges, at)
            .into_iter()
            .map(|s| s.into_iter().map(|v| 1.0 - v).collect())
            .collect()
    };
    let (auc_survival, mean_auc_survival): (Vec<Result<f64, String>>, Result<f64, String>) =
        match (&ready, &times_result) {
            (Err(e), _) | (_, Err(e)) => (vec![Err(e.clone()); times.len()], Err(e.clone())),
            (Ok((edges, g)), Ok(times)) => {
                let joint =
                    cumulative_dynamic_auc_by_time(g, time, event, &one_minus(edges, times), times);
                let mean = joint
                    .as_ref()
                    .map(|a| a.mean_auc)
                    .map_err(|e| e.to_string());
                let values = per_time(times, joint.map(|a| a.auc), |t| {
                    cumulative_dynamic_auc_by_time(g, time, event, &one_minus(edges, &[t]), &[t])
                        .map(|a| a.auc[0])
                });
                (values, mean)
            }
        };
    for (&t, value) in times.iter().zip(auc_survival) {
        rows.push(row("auc_survival", Some(t), value));
    }
    rows.push(row("mean_auc_survival", None, mean_auc_survival));

    // Cox PH: the high-risk group alone, then adjusted.
    let high: Vec<f64> = inputs
        .high
        .iter()
        .map(|&h| if h { 1.0 } else { 0.0 })
        .collect();
    rows.extend(cox_rows(
        "cox_hr",
        time,
        event,
        std::slice::from_ref(&high),
        &["high".to_owned()],
        None,
        config.ci_level,
    ));
    if let Some(cov) = inputs.covariates {
        let keep: Vec<usize> = (0..p.len()).filter(|&i| cov.values[i].is_some()).collect();
        let mut columns = vec![keep.iter().map(|&i| high[i]).collect::<Vec<f64>>()];
        for j in 0..cov.names.len() {
            columns.push(
                keep.iter()
                    .filter_map(|&i| cov.values[i].as_ref().map(|v| v[j]))
                    .collect(),
            );
        }
        let mut names = vec!["high".to_owned()];
        names.extend(cov.names.iter().cloned());
        let t: Vec<f64> = keep.iter().map(|&i| time[i]).collect();
        let e: Vec<bool> = keep.iter().map(|&i| event[i]).collect();
        let left_out = Excluded {
            missing_value: cov.missing_value,
            not_in_table: cov.not_in_table,
        };
        rows.extend(cox_rows(
            "cox_hr_adjusted",
            &t,
            &e,
            &columns,
            &names,
            Some(left_out),
            config.ci_level,
        ));
    }

    Metrics {
        rows,
        times,
        times_from_config,
        ibs_grid: grid.unwrap_or_default(),
        edges: inputs.edges.clone(),
    }
}

/// Patients left out of the adjusted fit, by reason.
#[derive(Debug, Clone, Copy)]
struct Excluded {
    missing_value: usize,
    not_in_table: usize,
}

fn cox_rows(
    metric: &'static str,
    time: &[f64],
    event: &[bool],
    columns: &[Vec<f64>],
    names: &[String],
    excluded: Option<Excluded>,
    ci_level: f64,
) -> Vec<MetricRow> {
    let n = Some(time.len() as i64);
    let events = Some(event.iter().filter(|&&e| e).count() as i64);
    let mut notes = Vec::new();
    if let Some(x) = excluded {
        if x.missing_value + x.not_in_table > 0 {
            notes.push(format!(
                "left out: {} with a blank covariate, {} not in the covariates table",
                x.missing_value, x.not_in_table
            ));
        }
    }
    let fit = if time.is_empty() {
        Err("no patient has every covariate".to_owned())
    } else {
        cox_ph(time, event, columns, ci_level).map_err(|e| name_covariates(e.to_string(), names))
    };
    if let Ok(fit) = &fit {
        if !fit.converged {
            notes.push(
                "Newton–Raphson did not converge (lifelines warns here); the last iterate is shown"
                    .into(),
            );
        }
        // lifelines returns such a fit as converged, with a warning about separation.
        let unbounded = |(lo, hi): (&f64, &f64)| *lo <= 0.0 || !hi.is_finite();
        if fit.hr_ci_lower.iter().zip(&fit.hr_ci_upper).any(unbounded) {
            notes.push(
                "the groups are (nearly) completely separated: the hazard ratio is unbounded and \
                 its interval uninformative (lifelines warns about separation here)"
                    .into(),
            );
        }
    }
    names
        .iter()
        .enumerate()
        .map(|(j, name)| {
            let mut note = notes.clone();
            if let Err(e) = &fit {
                note.push(e.clone());
            }
            let pick = |f: fn(&survival::CoxFit) -> &Vec<f64>| fit.as_ref().ok().map(|c| f(c)[j]);
            MetricRow {
                metric,
                term: Some(name.clone()),
                time: None,
                value: pick(|c| &c.hazard_ratio),
                ci_lower: pick(|c| &c.hr_ci_lower),
                ci_upper: pick(|c| &c.hr_ci_upper),
                p_value: pick(|c| &c.p_value),
                n,
                events,
                excluded: excluded.map(|x| (x.missing_value + x.not_in_table) as i64),
                note: (!note.is_empty()).then(|| note.join("; ")),
            }
        })
        .collect()
}

fn col<T: ?Sized, V>(name: &str, values: V) -> Column
where
    Series: NamedFrom<V, T>,
{
    Column::new(name.into(), values)
}

/// metrics.csv: every row, every column.
pub fn frame(rows: &[MetricRow]) -> PolarsResult<DataFrame> {
    let get = |f: fn(&MetricRow) -> Option<f64>| rows.iter().map(f).collect::<Vec<_>>();
    let count = |f: fn(&MetricRow) -> Option<i64>| rows.iter().map(f).collect::<Vec<_>>();
    DataFrame::new_infer_height(vec![
        col("metric", rows.iter().map(|r| r.metric).collect::<Vec<_>>()),
        col(
            "term",
            rows.iter().map(|r| r.term.clone()).collect::<Vec<_>>(),
        ),
        col("time", get(|r| r.time)),
        col("value", get(|r| r.value)),
        col("ci_lower", get(|r| r.ci_lower)),
        col("ci_upper", get(|r| r.ci_upper)),
        col("p_value", get(|r| r.p_value)),
        col("n", count(|r| r.n)),
        col("events", count(|r| r.events)),
        col("excluded", count(|r| r.excluded)),
        col(
            "note",
            rows.iter().map(|r| r.note.clone()).collect::<Vec<_>>(),
        ),
    ])
}

/// The report's two tables: the discrimination and Brier rows, and the Cox rows.
pub fn markdown_frames(rows: &[MetricRow]) -> PolarsResult<(DataFrame, DataFrame)> {
    let (cox, other): (Vec<&MetricRow>, Vec<&MetricRow>) =
        rows.iter().partition(|r| r.metric.starts_with("cox"));
    let scores = DataFrame::new_infer_height(vec![
        col("metric", other.iter().map(|r| r.metric).collect::<Vec<_>>()),
        col("time", other.iter().map(|r| r.time).collect::<Vec<_>>()),
        col("value", other.iter().map(|r| r.value).collect::<Vec<_>>()),
        col(
            "note",
            other
                .iter()
                .map(|r| r.note.clone().unwrap_or_default())
                .collect::<Vec<_>>(),
        ),
    ])?;
    let model = |r: &&MetricRow| {
        if r.metric == "cox_hr" {
            "high risk only"
        } else {
            "adjusted"
        }
    };
    let hazards = DataFrame::new_infer_height(vec![
        col("model", cox.iter().map(model).collect::<Vec<_>>()),
        col(
            "term",
            cox.iter()
                .map(|r| r.term.clone().unwrap_or_default())
                .collect::<Vec<_>>(),
        ),
        col(
            "hazard_ratio",
            cox.iter().map(|r| r.value).collect::<Vec<_>>(),
        ),
        col(
            "ci_lower",
            cox.iter().map(|r| r.ci_lower).collect::<Vec<_>>(),
        ),
        col(
            "ci_upper",
            cox.iter().map(|r| r.ci_upper).collect::<Vec<_>>(),
        ),
        col("p_value", cox.iter().map(|r| r.p_value).collect::<Vec<_>>()),
        col("n", cox.iter().map(|r| r.n).collect::<Vec<_>>()),
        col("events", cox.iter().map(|r| r.events).collect::<Vec<_>>()),
        col(
            "excluded",
            cox.iter().map(|r| r.excluded).collect::<Vec<_>>(),
        ),
        col(
            "note",
            cox.iter()
                .map(|r| r.note.clone().unwrap_or_default())
                .collect::<Vec<_>>(),
        ),
    ])?;
    Ok((scores, hazards))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_as_numpy() {
        // np.linspace(8.3, 49.0, 10)[1] = 12.822222222222223, last = 49.0 exactly.
        let y = linspace(8.3, 49.0, 10);
        assert_eq!(y.len(), 10);
        assert_eq!(y[0], 8.3);
        assert_eq!(y[9], 49.0);
        assert!((y[1] - 12.822222222222223).abs() < 1e-14);
        assert_eq!(linspace(2.0, 2.0, 3), vec![2.0, 2.0, 2.0]);
    }

    #[test]
    fn default_times_are_event_percentiles_without_repeats() {
        // Event times 2, 4, 6, 8, 10 (the censored 1 and 12 do not count): 4, 6, 8.
        let time = [2.0, 4.0, 6.0, 8.0, 10.0, 1.0, 12.0];
        let event = [true, true, true, true, true, false, false];
        assert_eq!(default_times(&time, &event).unwrap(), vec![4.0, 6.0, 8.0]);
        // One distinct event time: one time.
        assert_eq!(
            default_times(&[3.0, 3.0, 5.0], &[true, true, false]).unwrap(),
            vec![3.0]
        );
        assert_eq!(
            default_times(&[3.0], &[false]),
            Err(StatsError::AllCensored)
        );
    }

    #[test]
    fn covariate_numbers_become_names() {
        let names = ["high".to_owned(), "age".to_owned()];
        assert_eq!(
            name_covariates("covariate 1 has no variance".into(), &names),
            "covariate `age` has no variance"
        );
    }
}
