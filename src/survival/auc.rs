//! The cumulative/dynamic AUC of scikit-survival 0.28's `cumulative_dynamic_auc` (Uno 2007,
//! Hung & Chiang 2010): at time t the cases are the events at or before t, weighted by
//! 1 / G(t_i), and the controls are the samples still event-free after t.

use super::ipcw::{CensoringDistribution, StepSurvival};
use super::{check_finite, check_survival, check_times, StatsError, TIED_TOL};

#[derive(Debug, Clone, PartialEq)]
pub struct DynamicAuc {
    pub times: Vec<f64>,
    /// The AUC at each time.
    pub auc: Vec<f64>,
    /// The AUCs averaged with weights S(t_{k-1}) − S(t_k) from the Kaplan–Meier survival of the
    /// test data (divided by 1 − S(t_last)); the AUC itself when there is one time.
    pub mean_auc: f64,
}

/// The AUC of one time-independent risk score (higher = earlier event) at each of `times`
/// (strictly increasing, within [min, max) of the test times).
pub fn cumulative_dynamic_auc(
    censoring: &CensoringDistribution,
    time: &[f64],
    event: &[bool],
    risk: &[f64],
    times: &[f64],
) -> Result<DynamicAuc, StatsError> {
    check_survival(time, event)?;
    if !event.iter().any(|&e| e) {
        return Err(StatsError::AllCensored);
    }
    check_finite("risk", risk, time.len())?;
    dynamic_auc(censoring, time, event, times, |i, _| risk[i])
}

/// The same with a time-dependent risk: `estimate[i][j]` is sample i's risk at `times[j]`
/// (for a survival model, 1 − S(t_j), or its cumulative hazard).
pub fn cumulative_dynamic_auc_by_time(
    censoring: &CensoringDistribution,
    time: &[f64],
    event: &[bool],
    estimate: &[Vec<f64>],
    times: &[f64],
) -> Result<DynamicAuc, StatsError> {
    check_survival(time, event)?;
    if !event.iter().any(|&e| e) {
        return Err(StatsError::AllCensored);
    }
    check_rows(estimate, time.len(), times.len())?;
    dynamic_auc(censoring, time, event, times, |i, j| estimate[i][j])
}

/// Checks an n × n_times matrix given as one row per sample.
pub(crate) fn check_rows(rows: &[Vec<f64>], n: usize, n_times: usize) -> Result<(), StatsError> {
    if rows.len() != n {
        return Err(StatsError::LengthMismatch {
            what: "estimate",
            got: rows.len(),
            expected: n,
        });
    }
    rows.iter()
        .try_for_each(|row| check_finite("estimate row", row, n_times))
}

fn dynamic_auc(
    censoring: &CensoringDistribution,
    time: &[f64],
    event: &[bool],
    times: &[f64],
    score: impl Fn(usize, usize) -> f64,
) -> Result<DynamicAuc, StatsError> {
    check_times(time, times)?;
    // Weights of every test event, whether or not it is a case at some time (sksurv's rule:
    // so G must be positive at every event time, not only up to the last evaluation time).
    let ipcw = censoring.ipcw(time, event)?;
    let n = time.len();
    let mut auc = Vec::with_capacity(times.len());
    let mut order: Vec<usize> = (0..n).collect();
    for (j, &t) in times.iter().enumerate() {
        // Descending risk; the order inside exact ties does not matter since only the last
        // position of a tied run is kept.
        order.sort_by(|&a, &b| score(b, j).total_cmp(&score(a, j)));
        let n_controls = time.iter().filter(|&&ti| ti > t).count() as f64;
        let mut points = Vec::with_capacity(n + 1);
        points.push((0.0, 0.0));
        let (mut cum_tp, mut cum_fp) = (0.0, 0.0);
        for (p, &i) in order.iter().enumerate() {
            if time[i] <= t && event[i] {
                cum_tp += ipcw[i];
            }
            if time[i] > t {
                cum_fp += 1.0;
            }
            // A run of risks within the tolerance of their neighbours is one threshold.
            let tied_with_next = order
                .get(p + 1)
                .is_some_and(|&k| (score(k, j) - score(i, j)).abs() <= TIED_TOL);
            if !tied_with_next {
                points.push((cum_fp, cum_tp));
            }
        }
        if cum_tp == 0.0 {
            return Err(StatsError::Undefined(format!(
                "no event at or before time {t}: the AUC there has no cases"
            )));
        }
        // cumsum / its last value, as sksurv normalises; n_controls > 0 by the follow-up check.
        let mut area = 0.0;
        for w in points.windows(2) {
            let (fp0, tp0) = (w[0].0 / n_controls, w[0].1 / cum_tp);
            let (fp1, tp1) = (w[1].0 / n_controls, w[1].1 / cum_tp);
            area += (fp1 - fp0) * (tp1 + tp0) / 2.0;
        }
        auc.push(area);
    }

    let mean_auc = if auc.len() == 1 {
        auc[0]
    } else {
        let km = StepSurvival::kaplan_meier(time, event)?;
        let (mut integral, mut previous) = (0.0, 1.0);
        for (&a, &t) in auc.iter().zip(times) {
            let s = km.at(t)?;
            integral += a * (previous - s);
            previous = s;
        }
        integral / (1.0 - previous)
    };
    Ok(DynamicAuc {
        times: times.to_vec(),
        auc,
        mean_auc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Times 1, 2, 3+, 4, 5+, 6+ (+ = censored); G = 1 up to 2, 3/4 from 3, 3/8 from 5, 0 at 6.
    const TIME: [f64; 6] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    const EVENT: [bool; 6] = [true, true, false, true, false, false];

    fn fit() -> CensoringDistribution {
        CensoringDistribution::fit(&TIME, &EVENT).unwrap()
    }

    #[test]
    fn hand_computed_auc() {
        // At t = 2.5: cases 1, 2 (weight 1 each), controls 3+, 4, 5+, 6+.
        // Risks: case 1 → 0.9, case 2 → 0.3; controls 0.5, 0.8, 0.1, 0.3 (tied with case 2).
        // Case 1 beats all 4 controls; case 2 beats 0.1, ties 0.3 (half), loses to 0.5, 0.8:
        // AUC = (4 + 1.5) / 8.
        let risk = [0.9, 0.3, 0.5, 0.8, 0.1, 0.3];
        let got = cumulative_dynamic_auc(&fit(), &TIME, &EVENT, &risk, &[2.5]).unwrap();
        assert!((got.auc[0] - 5.5 / 8.0).abs() < 1e-15, "{:?}", got.auc);
        assert_eq!(got.mean_auc, got.auc[0]);

        // At t = 4: the case at 4 has weight 1/G(4) = 4/3; controls 5+, 6+.
        // Case 4 (risk 0.8) beats both; cases 1, 2 as before against 0.1 and 0.3:
        // case 1 → 2, case 2 → 1.5; AUC = (2 + 1.5 + 2 · 4/3) / (2 · (2 + 4/3)).
        let got = cumulative_dynamic_auc(&fit(), &TIME, &EVENT, &risk, &[2.5, 4.0]).unwrap();
        let want = (3.5 + 8.0 / 3.0) / (2.0 * (2.0 + 4.0 / 3.0));
        assert!((got.auc[1] - want).abs() < 1e-15, "{:?}", got.auc);
        // KM: S(2.5) = 4/6, S(4) = 4/6 · 2/3; weights 1/3 and 4/6 − 4/9.
        let (s1, s2) = (4.0 / 6.0, 4.0 / 9.0);
        let mean = (got.auc[0] * (1.0 - s1) + got.auc[1] * (s1 - s2)) / (1.0 - s2);
        assert!((got.mean_auc - mean).abs() < 1e-15);

        // The same scores given per time.
        let rows: Vec<Vec<f64>> = risk.iter().map(|&r| vec![r, r]).collect();
        let by_time =
            cumulative_dynamic_auc_by_time(&fit(), &TIME, &EVENT, &rows, &[2.5, 4.0]).unwrap();
        assert_eq!(by_time, got);
    }

    #[test]
    fn perfect_and_reversed_scores() {
        let risk = [6.0, 5.0, 4.0, 3.0, 2.0, 1.0];
        let got = cumulative_dynamic_auc(&fit(), &TIME, &EVENT, &risk, &[1.0, 3.0]).unwrap();
        assert!(
            got.auc.iter().all(|a| (a - 1.0).abs() < 1e-15),
            "{:?}",
            got.auc
        );
        let reversed: Vec<f64> = risk.iter().map(|r| -r).collect();
        let got = cumulative_dynamic_auc(&fit(), &TIME, &EVENT, &reversed, &[1.0, 3.0]).unwrap();
        assert_eq!(got.auc, vec![0.0, 0.0]);
    }

    #[test]
    fn refuses_what_scikit_survival_refuses() {
        let risk = [0.0; 6];
        let auc = |times: &[f64]| cumulative_dynamic_auc(&fit(), &TIME, &EVENT, &risk, times);
        assert!(matches!(
            auc(&[6.0]),
            Err(StatsError::TimeOutsideFollowUp { time, .. }) if time == 6.0
        ));
        assert!(matches!(
            auc(&[0.5]),
            Err(StatsError::TimeOutsideFollowUp { .. })
        ));
        assert!(matches!(
            auc(&[3.0, 2.0]),
            Err(StatsError::TimesNotIncreasing { .. })
        ));
        // Before the first event there are no cases.
        let late = [false, true, false, true, false, false];
        let g = CensoringDistribution::fit(&TIME, &late).unwrap();
        assert!(matches!(
            cumulative_dynamic_auc(&g, &TIME, &late, &risk, &[1.5]),
            Err(StatsError::Undefined(_))
        ));
        // An event where G is 0.
        let time = [1.0, 2.0, 2.0];
        let event = [true, true, false];
        let g = CensoringDistribution::fit(&time, &event).unwrap();
        assert_eq!(
            cumulative_dynamic_auc(&g, &time, &event, &[0.0; 3], &[1.5]),
            Err(StatsError::CensoringSurvivalZero { time: 2.0 })
        );
        let short = vec![vec![0.0]; 6];
        assert!(matches!(
            cumulative_dynamic_auc_by_time(&fit(), &TIME, &EVENT, &short, &[1.0, 2.0]),
            Err(StatsError::LengthMismatch {
                what: "estimate row",
                ..
            })
        ));
    }
}
