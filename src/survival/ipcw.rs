//! Inverse probability of censoring weights and Uno's C, as scikit-survival 0.28 computes them
//! (`CensoringDistributionEstimator`, `concordance_index_ipcw`).

use super::cindex::for_each_event;
use super::{check_finite, check_survival, Concordance, StatsError};

/// A Kaplan–Meier step function as scikit-survival's `SurvivalFunctionEstimator` stores it:
/// the value is 1 before the first time and `prob[k]` from `times[k]` (inclusive) on.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSurvival {
    /// Distinct observed times, ascending.
    pub times: Vec<f64>,
    pub prob: Vec<f64>,
}

impl StepSurvival {
    /// The Kaplan–Meier estimate of the survival function (`kaplan_meier_estimator`); an
    /// all-censored sample is allowed and stays at 1.
    pub fn kaplan_meier(time: &[f64], event: &[bool]) -> Result<Self, StatsError> {
        check_survival(time, event)?;
        Ok(kaplan_meier_steps(time, event, false))
    }

    /// `predict_proba`: the value at `t`. After the last time the estimate is 0 if it reached 0,
    /// and unknown (an error) otherwise.
    pub fn at(&self, t: f64) -> Result<f64, StatsError> {
        let (Some(&last), Some(&last_prob)) = (self.times.last(), self.prob.last()) else {
            return Err(StatsError::Empty);
        };
        if t > last {
            return if last_prob > 0.0 {
                Err(StatsError::BeyondFollowUp { time: t, last })
            } else {
                Ok(0.0)
            };
        }
        // numpy's searchsorted (left), then sksurv's test for an exact match within machine
        // epsilon (absolute): a time within 2.2e-16 below a step already takes its value.
        let k = self.times.partition_point(|&u| u < t);
        if (self.times[k] - t).abs() < f64::EPSILON {
            Ok(self.prob[k])
        } else if k == 0 {
            Ok(1.0)
        } else {
            Ok(self.prob[k - 1])
        }
    }
}

/// `kaplan_meier_estimator(event, time, reverse)`. With `reverse` the censorings are the
/// events and those with an event at t leave the risk set before the censorings at t.
fn kaplan_meier_steps(time: &[f64], event: &[bool], reverse: bool) -> StepSurvival {
    let mut samples: Vec<(f64, bool)> = time.iter().copied().zip(event.iter().copied()).collect();
    radsort::sort_by_key(&mut samples, |s| s.0);
    let (mut times, mut prob) = (Vec::new(), Vec::new());
    let mut at_risk = samples.len();
    let mut survival = 1.0;
    let mut start = 0;
    while start < samples.len() {
        let t = samples[start].0;
        let mut end = start;
        while end < samples.len() && samples[end].0 == t {
            end += 1;
        }
        let events = samples[start..end].iter().filter(|s| s.1).count();
        let censored = end - start - events;
        let (n, d) = if reverse {
            (at_risk - events, censored)
        } else {
            (at_risk, events)
        };
        // sksurv divides only where there are events, so an empty risk set gives 1 − 0.
        if d != 0 {
            survival *= 1.0 - d as f64 / n as f64;
        }
        times.push(t);
        prob.push(survival);
        at_risk -= end - start;
        start = end;
    }
    StepSurvival { times, prob }
}

/// The Kaplan–Meier estimate of the censoring distribution G (`CensoringDistributionEstimator`),
/// fitted on the training data.
#[derive(Debug, Clone, PartialEq)]
pub struct CensoringDistribution {
    steps: StepSurvival,
}

impl CensoringDistribution {
    /// Fits G on (time, event); at least one event is needed, as scikit-survival requires.
    pub fn fit(time: &[f64], event: &[bool]) -> Result<Self, StatsError> {
        check_survival(time, event)?;
        if !event.iter().any(|&e| e) {
            return Err(StatsError::AllCensored);
        }
        let steps = if event.iter().all(|&e| e) {
            // Nobody censored: G is 1 at every observed time.
            let mut times = time.to_vec();
            times.sort_by(f64::total_cmp);
            times.dedup();
            let prob = vec![1.0; times.len()];
            StepSurvival { times, prob }
        } else {
            kaplan_meier_steps(time, event, true)
        };
        Ok(Self { steps })
    }

    /// The fitted step function (`unique_time_`, `prob_` without their leading −∞, 1).
    pub fn steps(&self) -> &StepSurvival {
        &self.steps
    }

    /// G(t), `predict_proba`.
    pub fn survival_at(&self, t: f64) -> Result<f64, StatsError> {
        self.steps.at(t)
    }

    /// `predict_ipcw`: 1 / G(t_i) for the events, 0 for the censored samples.
    pub fn ipcw(&self, time: &[f64], event: &[bool]) -> Result<Vec<f64>, StatsError> {
        check_survival(time, event)?;
        if !event.iter().any(|&e| e) {
            return Err(StatsError::AllCensored);
        }
        // Every event's G first (a time beyond the follow-up is the first error), then zeros.
        let g: Vec<Option<f64>> = time
            .iter()
            .zip(event)
            .map(|(&t, &e)| {
                if e {
                    self.survival_at(t).map(Some)
                } else {
                    Ok(None)
                }
            })
            .collect::<Result<_, _>>()?;
        if let Some(k) = g.iter().position(|g| *g == Some(0.0)) {
            return Err(StatsError::CensoringSurvivalZero { time: time[k] });
        }
        Ok(g.iter().map(|g| g.map_or(0.0, |g| 1.0 / g)).collect())
    }
}

/// Uno's C (`concordance_index_ipcw`): Harrell's comparable pairs, each weighted by
/// 1 / G(t_i)² of its earlier (event) sample; with `tau`, pairs whose event is at or after tau
/// get weight 0. As in scikit-survival, the returned counts are Harrell's unweighted counts
/// over all comparable pairs, with or without tau; only `c_index` changes.
pub fn concordance_index_ipcw(
    censoring: &CensoringDistribution,
    time: &[f64],
    event: &[bool],
    risk: &[f64],
    tau: Option<f64>,
) -> Result<Concordance, StatsError> {
    check_survival(time, event)?;
    check_finite("risk", risk, time.len())?;
    if !event.iter().any(|&e| e) {
        return Err(StatsError::AllCensored);
    }
    if let Some(tau) = tau {
        check_finite("tau", &[tau], 1)?;
    }
    let before_tau = |t: f64| tau.is_none_or(|tau| t < tau);
    // sksurv weighs only the samples before tau, so G need not be positive after it.
    let (window_time, window_event): (Vec<f64>, Vec<bool>) = time
        .iter()
        .zip(event)
        .filter(|(&t, _)| before_tau(t))
        .map(|(&t, &e)| (t, e))
        .unzip();
    if window_time.is_empty() {
        return Err(StatsError::Undefined(format!(
            "no test sample has a time before tau = {}",
            tau.unwrap_or(f64::NAN)
        )));
    }
    censoring.ipcw(&window_time, &window_event)?;

    let (mut numerator, mut denominator) = (0.0, 0.0);
    let (mut concordant, mut discordant, mut tied_risk, mut tied_time) = (0u64, 0u64, 0u64, 0u64);
    for_each_event(time, event, risk, |pairs| {
        let weight = if before_tau(pairs.time) {
            // Checked positive and within the follow-up by `ipcw` above.
            censoring
                .survival_at(pairs.time)
                .map_or(0.0, |g| (1.0 / g).powi(2))
        } else {
            0.0
        };
        numerator += weight * pairs.lower as f64 + 0.5 * weight * pairs.tied as f64;
        denominator += weight * (pairs.lower + pairs.tied + pairs.higher) as f64;
        concordant += pairs.lower;
        discordant += pairs.higher;
        tied_risk += pairs.tied;
        tied_time += pairs.tied_time;
    })?;
    if concordant + discordant + tied_risk == 0 {
        return Err(StatsError::NoComparablePairs);
    }
    if denominator == 0.0 {
        return Err(StatsError::Undefined(
            "no comparable pair has its event before tau: Uno's C is undefined".into(),
        ));
    }
    Ok(Concordance {
        c_index: numerator / denominator,
        concordant,
        discordant,
        tied_risk,
        tied_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Times 1, 2+, 3, 3+, 5+, 6, 6+ (+ = censored).
    const TIME: [f64; 7] = [3.0, 1.0, 2.0, 5.0, 3.0, 6.0, 6.0];
    const EVENT: [bool; 7] = [true, true, false, false, false, true, false];

    #[test]
    fn censoring_km_by_hand() {
        // Reverse KM: at 1 nobody is censored; at 2, 6 at risk and 1 censored → 5/6; at 3 the
        // event leaves first: 4 at risk, 1 censored → · 3/4; at 5: · 2/3; at 6 the event leaves
        // first and the one left is censored → 0.
        let g = CensoringDistribution::fit(&TIME, &EVENT).unwrap();
        assert_eq!(g.steps().times, vec![1.0, 2.0, 3.0, 5.0, 6.0]);
        let want = [1.0, 5.0 / 6.0, 5.0 / 8.0, 5.0 / 12.0, 0.0];
        for (got, want) in g.steps().prob.iter().zip(want) {
            assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        }
        assert_eq!(g.survival_at(0.5).unwrap(), 1.0);
        assert_eq!(g.survival_at(2.5).unwrap(), 5.0 / 6.0);
        // It reached 0, so beyond the last time it is 0, not unknown.
        assert_eq!(g.survival_at(7.0).unwrap(), 0.0);
        // The event at 6 has G = 0: its weight is infinite.
        assert_eq!(
            g.ipcw(&TIME, &EVENT),
            Err(StatsError::CensoringSurvivalZero { time: 6.0 })
        );
        let w = g.ipcw(&TIME[..5], &EVENT[..5]).unwrap();
        assert!((w[0] - 1.6).abs() < 1e-15);
        assert_eq!(&w[1..], &[1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn survival_step_function_by_hand() {
        // Plain KM of the same data: 6/7 after 1, · 4/5 after 3, · 1/2 after 6.
        let s = StepSurvival::kaplan_meier(&TIME, &EVENT).unwrap();
        assert!((s.at(4.0).unwrap() - 24.0 / 35.0).abs() < 1e-15);
        assert!((s.at(6.0).unwrap() - 12.0 / 35.0).abs() < 1e-15);
        // Still above 0 at the last time: unknown after it.
        assert_eq!(
            s.at(6.5),
            Err(StatsError::BeyondFollowUp {
                time: 6.5,
                last: 6.0
            })
        );
    }

    #[test]
    fn uno_c_by_hand() {
        // tau = 5 keeps the events at 6 out of the weights (and out of G's zero).
        let g = CensoringDistribution::fit(&TIME, &EVENT).unwrap();
        let risk = [2.0, 4.0, 1.0, 0.5, 3.0, 0.0, -1.0];
        let c = concordance_index_ipcw(&g, &TIME, &EVENT, &risk, Some(5.0)).unwrap();
        // Event at 1 (G = 1): 6 later samples, all with lower risk → 6 concordant.
        // Event at 3 (risk 2, G = 5/8, w = 64/25): vs 3+ (risk 3, discordant), 5+, 6, 6+
        // (lower) → 3 of 4. Event at 6 (w = 0, after tau): vs 6+ → 1 concordant, counted but
        // not weighed.
        let w = (8.0f64 / 5.0).powi(2);
        let want = (6.0 + 3.0 * w) / (6.0 + 4.0 * w);
        assert!((c.c_index - want).abs() < 1e-15);
        assert_eq!(
            (c.concordant, c.discordant, c.tied_risk, c.tied_time),
            (10, 1, 0, 2)
        );
        // Without tau the event at 6 needs G(6) = 0.
        assert_eq!(
            concordance_index_ipcw(&g, &TIME, &EVENT, &risk, None),
            Err(StatsError::CensoringSurvivalZero { time: 6.0 })
        );
        // Nothing before tau.
        assert!(matches!(
            concordance_index_ipcw(&g, &TIME, &EVENT, &risk, Some(1.0)),
            Err(StatsError::Undefined(_))
        ));
    }

    #[test]
    fn without_censoring_uno_is_harrell() {
        let time = [1.0, 2.0, 2.0, 4.0, 5.0];
        let event = [true; 5];
        let risk = [5.0, 1.0, 3.0, 3.0, 0.0];
        let g = CensoringDistribution::fit(&time, &event).unwrap();
        let uno = concordance_index_ipcw(&g, &time, &event, &risk, None).unwrap();
        let harrell = super::super::concordance_index(&time, &event, &risk).unwrap();
        assert_eq!(uno, harrell);
    }

    #[test]
    fn refuses_bad_input() {
        assert_eq!(
            CensoringDistribution::fit(&[1.0, 2.0], &[false, false]),
            Err(StatsError::AllCensored)
        );
        let g = CensoringDistribution::fit(&[1.0, 2.0, 3.0], &[true, false, true]).unwrap();
        assert!(matches!(
            g.ipcw(&[1.0, 4.0], &[true, true]),
            Err(StatsError::BeyondFollowUp { time, last: 3.0 }) if time == 4.0
        ));
        assert!(matches!(
            concordance_index_ipcw(&g, &[1.0, 2.0], &[true, false], &[1.0], None),
            Err(StatsError::LengthMismatch { what: "risk", .. })
        ));
        assert!(matches!(
            concordance_index_ipcw(&g, &[1.0, 2.0], &[true, false], &[1.0, 0.0], Some(f64::NAN)),
            Err(StatsError::NotFinite { what: "tau", .. })
        ));
    }
}
