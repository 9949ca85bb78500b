//! Kaplan–Meier estimator as lifelines' `KaplanMeierFitter` computes it.

use statrs::distribution::{ContinuousCDF, Normal};

use super::{check_survival, StatsError};

/// One row of the survival table: the state just after time `time`.
#[derive(Debug, Clone, PartialEq)]
pub struct KmRow {
    pub time: f64,
    /// Samples with time ≥ `time` (those censored at `time` are still at risk).
    pub at_risk: usize,
    pub events: usize,
    pub censored: usize,
    pub survival: f64,
    pub ci_lower: f64,
    pub ci_upper: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KaplanMeier {
    /// Time 0 first (unless a sample has time 0 itself), then every distinct observed time.
    pub rows: Vec<KmRow>,
    /// First time at which the survival drops to 0.5 or below; `None` if it never does.
    pub median: Option<f64>,
    pub ci_level: f64,
}

impl KaplanMeier {
    /// Survival just after `t` (right-continuous step function).
    pub fn survival_at(&self, t: f64) -> f64 {
        let k = self.rows.partition_point(|row| row.time <= t);
        if k == 0 {
            1.0
        } else {
            self.rows[k - 1].survival
        }
    }

    /// Samples still at risk at `t` (time ≥ t).
    pub fn at_risk_at(&self, t: f64) -> usize {
        let k = self.rows.partition_point(|row| row.time < t);
        match self.rows.get(k) {
            Some(row) => row.at_risk,
            None => 0,
        }
    }
}

/// Kaplan–Meier with exponential-Greenwood ("log-log") confidence intervals at `ci_level`
/// (lifelines' default 0.95).
pub fn kaplan_meier(
    time: &[f64],
    event: &[bool],
    ci_level: f64,
) -> Result<KaplanMeier, StatsError> {
    check_survival(time, event)?;
    if !(ci_level > 0.0 && ci_level < 1.0) {
        return Err(StatsError::Undefined(format!(
            "confidence level {ci_level} is not in (0, 1)"
        )));
    }
    let z = Normal::standard().inverse_cdf((1.0 + ci_level) / 2.0);
    let mut samples: Vec<(f64, bool)> = time.iter().copied().zip(event.iter().copied()).collect();
    radsort::sort_by_key(&mut samples, |s| s.0);

    let mut rows = Vec::new();
    if samples[0].0 > 0.0 {
        rows.push(KmRow {
            time: 0.0,
            at_risk: time.len(),
            events: 0,
            censored: 0,
            survival: 1.0,
            ci_lower: 1.0,
            ci_upper: 1.0,
        });
    }
    let mut at_risk = time.len();
    let mut survival = 1.0;
    let mut greenwood = 0.0;
    let mut start = 0;
    while start < samples.len() {
        let t = samples[start].0;
        let mut end = start;
        while end < samples.len() && samples[end].0 == t {
            end += 1;
        }
        let events = samples[start..end].iter().filter(|s| s.1).count();
        let censored = end - start - events;
        let (n, d) = (at_risk as f64, events as f64);
        survival *= 1.0 - d / n;
        greenwood += d / (n * (n - d));
        let (ci_lower, ci_upper) = exponential_greenwood(survival, greenwood, z);
        rows.push(KmRow {
            time: t,
            at_risk,
            events,
            censored,
            survival,
            ci_lower,
            ci_upper,
        });
        at_risk -= end - start;
        start = end;
    }
    let median = rows
        .iter()
        .find(|row| row.survival <= 0.5)
        .map(|row| row.time);
    Ok(KaplanMeier {
        rows,
        median,
        ci_level,
    })
}

/// CI on log(−log S) mapped back; where it is undefined (S = 1, or S = 0 with an infinite
/// variance) lifelines fills 1.0, and so do we.
fn exponential_greenwood(survival: f64, greenwood: f64, z: f64) -> (f64, f64) {
    let v = survival.ln();
    let centre = (-v).ln();
    let half_width = z * greenwood.sqrt() / v;
    let bound = |x: f64| {
        let b = (-x.exp()).exp();
        if b.is_nan() {
            1.0
        } else {
            b
        }
    };
    // v < 0, so `centre - half_width` is the larger argument and gives the lower bound.
    (bound(centre - half_width), bound(centre + half_width))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_table() {
        // Times 1, 2+, 3, 3, 5+ : S(1) = 4/5, S(3) = 4/5 · 1/3 = 4/15.
        let km = kaplan_meier(
            &[3.0, 1.0, 2.0, 5.0, 3.0],
            &[true, true, false, false, true],
            0.95,
        )
        .unwrap();
        let times: Vec<f64> = km.rows.iter().map(|r| r.time).collect();
        assert_eq!(times, vec![0.0, 1.0, 2.0, 3.0, 5.0]);
        let at_risk: Vec<usize> = km.rows.iter().map(|r| r.at_risk).collect();
        assert_eq!(at_risk, vec![5, 5, 4, 3, 1]);
        assert!((km.rows[3].survival - 4.0 / 15.0).abs() < 1e-15);
        assert_eq!(km.median, Some(3.0));
        assert_eq!(km.survival_at(2.5), 0.8);
        assert_eq!(km.at_risk_at(2.5), 3);
        assert_eq!(km.at_risk_at(6.0), 0);
        for row in &km.rows {
            assert!(row.ci_lower <= row.survival && row.survival <= row.ci_upper);
        }
    }

    #[test]
    fn all_censored_stays_at_one_and_has_no_median() {
        let km = kaplan_meier(&[1.0, 2.0], &[false, false], 0.95).unwrap();
        assert!(km
            .rows
            .iter()
            .all(|r| r.survival == 1.0 && r.ci_lower == 1.0));
        assert_eq!(km.median, None);
    }

    #[test]
    fn single_event_sample_drops_to_zero() {
        let km = kaplan_meier(&[4.0], &[true], 0.95).unwrap();
        assert_eq!(km.rows.len(), 2);
        assert_eq!(km.rows[1].survival, 0.0);
        assert_eq!(km.median, Some(4.0));
    }
}
