//! `calibration.csv`: per risk quintile, at each bin edge inside the follow-up, the mean
//! predicted survival beside the quintile's Kaplan–Meier survival (with its confidence
//! interval).
//!
//! - Quintiles of the predictions' risk: cut points c_j = np.quantile(risk, j/5), j = 1..4
//!   (linear); quintile q = 1 + #{j : c_j ≤ risk}, so 1 is the lowest risk and ties at a cut
//!   go up, as the high-risk split's ties do.
//! - Edges e_1..e_4 of the model's bins (e_0 is before every time, where both are 1), kept
//!   when e_k ≤ the longest observed time.
//! - Predicted at e_k: the quintile's mean of S_{k-1} = prod_{j<k} (1 - h_j), the model's
//!   probability of no event in the bins before e_k (bins are [a, b), so an event at e_k
//!   belongs to bin k).
//! - Observed at e_k: the quintile's Kaplan–Meier survival just before e_k, S(e_k−), and its
//!   exponential-Greenwood interval (lifelines' conventions, src/survival/km.rs); `at_risk`
//!   counts the quintile's patients with time ≥ e_k (0: the value is carried from the last
//!   observation).

use polars::prelude::*;

use super::predictions::Predictions;
use crate::survival::{self, kaplan_meier, KaplanMeier, StatsError, N_BINS};

pub const QUINTILES: usize = 5;

#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationRow {
    /// 1 (lowest risk) ..= 5.
    pub quintile: usize,
    pub risk_min: f64,
    pub risk_max: f64,
    pub n: usize,
    /// k of the edge e_k (the end of bin k − 1).
    pub edge: usize,
    pub time: f64,
    pub predicted: f64,
    pub observed: f64,
    pub ci_lower: f64,
    pub ci_upper: f64,
    pub at_risk: usize,
}

/// Quintile (1..=5) of each risk.
pub fn quintiles(risk: &[f64]) -> Result<Vec<usize>, StatsError> {
    let cuts = (1..QUINTILES)
        .map(|j| survival::quantile(risk, j as f64 / QUINTILES as f64))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(risk
        .iter()
        .map(|&r| 1 + cuts.iter().filter(|&&c| c <= r).count())
        .collect())
}

/// The Kaplan–Meier survival and interval just before `t` (1 before the first time).
fn just_before(km: &KaplanMeier, t: f64) -> (f64, f64, f64) {
    let k = km.rows.partition_point(|row| row.time < t);
    match k.checked_sub(1).map(|i| &km.rows[i]) {
        Some(row) => (row.survival, row.ci_lower, row.ci_upper),
        None => (1.0, 1.0, 1.0),
    }
}

/// The calibration rows, or why there are none.
pub fn calibration(
    p: &Predictions,
    edges: &[f64; N_BINS + 1],
    ci_level: f64,
) -> Result<Vec<CalibrationRow>, String> {
    let curves = p
        .survival_curves()
        .ok_or("the predictions have no hazard_0..hazard_3 columns")?;
    let quintile = quintiles(&p.risk).map_err(|e| format!("risk quintiles: {e}"))?;
    let follow_up = p.time.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let inside: Vec<usize> = (1..=N_BINS).filter(|&k| edges[k] <= follow_up).collect();
    if inside.is_empty() {
        return Err(format!(
            "no bin edge lies inside the follow-up (the longest observed time is {follow_up}, \
             the edges are {edges:?})"
        ));
    }
    let mut rows = Vec::new();
    for q in 1..=QUINTILES {
        let members: Vec<usize> = (0..p.len()).filter(|&i| quintile[i] == q).collect();
        if members.is_empty() {
            continue;
        }
        let time: Vec<f64> = members.iter().map(|&i| p.time[i]).collect();
        let event: Vec<bool> = members.iter().map(|&i| p.event[i]).collect();
        let km = kaplan_meier(&time, &event, ci_level)
            .map_err(|e| format!("Kaplan–Meier of quintile {q}: {e}"))?;
        let risks = members.iter().map(|&i| p.risk[i]);
        let risk_min = risks.clone().fold(f64::INFINITY, f64::min);
        let risk_max = risks.fold(f64::NEG_INFINITY, f64::max);
        for &k in &inside {
            let t = edges[k];
            let predicted =
                members.iter().map(|&i| curves[i][k - 1]).sum::<f64>() / members.len() as f64;
            let (observed, ci_lower, ci_upper) = just_before(&km, t);
            rows.push(CalibrationRow {
                quintile: q,
                risk_min,
                risk_max,
                n: members.len(),
                edge: k,
                time: t,
                predicted,
                observed,
                ci_lower,
                ci_upper,
                at_risk: km.at_risk_at(t),
            });
        }
    }
    Ok(rows)
}

pub fn frame(rows: &[CalibrationRow]) -> PolarsResult<DataFrame> {
    let f = |name: &str, get: fn(&CalibrationRow) -> f64| {
        Column::new(name.into(), rows.iter().map(get).collect::<Vec<_>>())
    };
    let i = |name: &str, get: fn(&CalibrationRow) -> usize| {
        Column::new(
            name.into(),
            rows.iter().map(|r| get(r) as i64).collect::<Vec<_>>(),
        )
    };
    DataFrame::new_infer_height(vec![
        i("quintile", |r| r.quintile),
        f("risk_min", |r| r.risk_min),
        f("risk_max", |r| r.risk_max),
        i("n", |r| r.n),
        i("edge", |r| r.edge),
        f("time", |r| r.time),
        f("predicted", |r| r.predicted),
        f("observed", |r| r.observed),
        f("ci_lower", |r| r.ci_lower),
        f("ci_upper", |r| r.ci_upper),
        i("at_risk", |r| r.at_risk),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quintiles_put_ties_up() {
        // np.quantile(1..=10, [.2, .4, .6, .8]) = 2.8, 4.6, 6.4, 8.2.
        let risk: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(
            quintiles(&risk).unwrap(),
            vec![1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
        );
        // All tied: every cut equals the risk, so all are in the top quintile.
        assert_eq!(quintiles(&[2.0; 4]).unwrap(), vec![5; 4]);
    }
}
