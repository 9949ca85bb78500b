//! Two-group log-rank test as lifelines' `logrank_test` computes it.

use statrs::distribution::{ChiSquared, ContinuousCDF};

use super::{check_survival, StatsError};

#[derive(Debug, Clone, PartialEq)]
pub struct LogRank {
    /// (O_a − E_a)² / V, chi-squared with one degree of freedom under the null.
    pub statistic: f64,
    pub p_value: f64,
    pub observed_a: f64,
    pub expected_a: f64,
    pub observed_b: f64,
    pub expected_b: f64,
}

/// Compares group A with group B. Uses the hypergeometric variance, which accounts for tied
/// event times.
pub fn logrank_test(
    time_a: &[f64],
    event_a: &[bool],
    time_b: &[f64],
    event_b: &[bool],
) -> Result<LogRank, StatsError> {
    check_survival(time_a, event_a)?;
    check_survival(time_b, event_b)?;
    let mut all: Vec<(f64, bool, bool)> = time_a
        .iter()
        .zip(event_a)
        .map(|(&t, &e)| (t, e, true))
        .chain(time_b.iter().zip(event_b).map(|(&t, &e)| (t, e, false)))
        .collect();
    radsort::sort_by_key(&mut all, |x| x.0);

    let (mut n_a, mut n_b) = (time_a.len() as f64, time_b.len() as f64);
    let (mut observed_a, mut expected_a, mut observed_b, mut variance) = (0.0, 0.0, 0.0, 0.0);
    let mut start = 0;
    while start < all.len() {
        let t = all[start].0;
        let mut end = start;
        let (mut d_a, mut d_b, mut leave_a, mut leave_b) = (0.0, 0.0, 0.0, 0.0);
        while end < all.len() && all[end].0 == t {
            let (_, is_event, in_a) = all[end];
            match (is_event, in_a) {
                (true, true) => d_a += 1.0,
                (true, false) => d_b += 1.0,
                _ => {}
            }
            if in_a {
                leave_a += 1.0;
            } else {
                leave_b += 1.0;
            }
            end += 1;
        }
        let n = n_a + n_b;
        let d = d_a + d_b;
        if d > 0.0 {
            observed_a += d_a;
            observed_b += d_b;
            expected_a += d * n_a / n;
            if n > 1.0 {
                variance += n_a * n_b * d * (n - d) / (n * n * (n - 1.0));
            }
        }
        n_a -= leave_a;
        n_b -= leave_b;
        start = end;
    }
    if variance <= 0.0 {
        return Err(StatsError::Undefined(
            "log-rank variance is zero (no events while both groups are at risk)".into(),
        ));
    }
    let statistic = (observed_a - expected_a).powi(2) / variance;
    let chi2 = ChiSquared::new(1.0).map_err(|e| StatsError::Undefined(e.to_string()))?;
    let total_events = observed_a + observed_b;
    Ok(LogRank {
        statistic,
        p_value: chi2.sf(statistic),
        observed_a,
        expected_a,
        observed_b,
        expected_b: total_events - expected_a,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_two_by_two() {
        // A: events at 1 and 3; B: event at 2, censored at 4.
        // t=1: n=4 (2,2), d=1 → E_a = 0.5, V = 2·2·1·3/(16·3) = 0.25
        // t=2: n=3 (1,2), d=1 → E_a = 1/3, V = 1·2·1·2/(9·2) = 2/9
        // t=3: n=2 (1,1), d=1 → E_a = 0.5, V = 1·1·1·1/(4·1) = 0.25
        let r = logrank_test(&[1.0, 3.0], &[true, true], &[2.0, 4.0], &[true, false]).unwrap();
        let expected_a = 0.5 + 1.0 / 3.0 + 0.5;
        let variance = 0.25 + 2.0 / 9.0 + 0.25;
        assert!((r.expected_a - expected_a).abs() < 1e-15);
        assert!((r.statistic - (2.0 - expected_a).powi(2) / variance).abs() < 1e-12);
        assert!(r.p_value > 0.0 && r.p_value < 1.0);
        assert_eq!(r.observed_b, 1.0);
    }

    #[test]
    fn no_events_is_undefined() {
        assert!(logrank_test(&[1.0], &[false], &[2.0], &[false]).is_err());
        assert_eq!(
            logrank_test(&[], &[], &[2.0], &[true]),
            Err(StatsError::Empty)
        );
    }
}
