//! The IPCW Brier score (Graf et al. 1999) and its integral over time, as scikit-survival 0.28's
//! `brier_score` and `integrated_brier_score` compute them.

use super::auc::check_rows;
use super::bins::{assign_bin, N_BINS};
use super::ipcw::CensoringDistribution;
use super::{check_survival, check_times, StatsError};

/// A discrete-time model's survival at time `t`: S_k of the bin k that contains t (the quartile
/// bins, intervals [a, b)), i.e. the probability of surviving through that bin, as the NLL's
/// censored term reads S_k for a patient censored in bin k.
pub fn bin_survival_at(curve: &[f64; N_BINS], edges: &[f64; N_BINS + 1], t: f64) -> f64 {
    curve[assign_bin(t, edges)]
}

/// The Brier score at each of `times` (strictly increasing, within [min, max) of the test
/// times); `survival[i][j]` is sample i's predicted probability of surviving past `times[j]`.
///
/// BS(t) = mean_i [ S_i(t)² · 1(t_i ≤ t, event) / G(t_i) + (1 − S_i(t))² · 1(t_i > t) / G(t) ],
/// G the censoring survival fitted on the training data, evaluated at t_i itself (not just
/// before it) as scikit-survival does; where G is 0 the sample weighs 0, as there.
pub fn brier_score(
    censoring: &CensoringDistribution,
    time: &[f64],
    event: &[bool],
    survival: &[Vec<f64>],
    times: &[f64],
) -> Result<Vec<f64>, StatsError> {
    check_survival(time, event)?;
    if !event.iter().any(|&e| e) {
        return Err(StatsError::AllCensored);
    }
    check_rows(survival, time.len(), times.len())?;
    check_times(time, times)?;
    let g_at_times: Vec<f64> = times
        .iter()
        .map(|&t| censoring.survival_at(t))
        .collect::<Result<_, _>>()?;
    let g_at_samples: Vec<f64> = time
        .iter()
        .map(|&t| censoring.survival_at(t))
        .collect::<Result<_, _>>()?;
    // sksurv divides by +inf where G = 0.
    let weighted = |value: f64, g: f64| if g == 0.0 { 0.0 } else { value / g };
    let n = time.len() as f64;
    Ok(times
        .iter()
        .enumerate()
        .map(|(j, &t)| {
            let total: f64 = (0..time.len())
                .map(|i| {
                    let s = survival[i][j];
                    if time[i] <= t && event[i] {
                        weighted(s * s, g_at_samples[i])
                    } else if time[i] > t {
                        weighted((1.0 - s) * (1.0 - s), g_at_times[j])
                    } else {
                        // Censored by t: unknown status, weight 0.
                        0.0
                    }
                })
                .sum();
            total / n
        })
        .collect())
}

/// The integrated Brier score: the trapezoid rule over `times` (at least two) of
/// [`brier_score`], divided by the length of the time range.
pub fn integrated_brier_score(
    censoring: &CensoringDistribution,
    time: &[f64],
    event: &[bool],
    survival: &[Vec<f64>],
    times: &[f64],
) -> Result<f64, StatsError> {
    let scores = brier_score(censoring, time, event, survival, times)?;
    if times.len() < 2 {
        return Err(StatsError::Undefined(
            "the integrated Brier score needs at least two time points".into(),
        ));
    }
    let area: f64 = times
        .windows(2)
        .zip(scores.windows(2))
        .map(|(t, b)| (t[1] - t[0]) * (b[1] + b[0]) / 2.0)
        .sum();
    Ok(area / (times[times.len() - 1] - times[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Times 1, 2, 3+, 4, 5+, 6+; G = 1 up to 2, 3/4 from 3, 3/8 from 5, 0 at 6.
    const TIME: [f64; 6] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    const EVENT: [bool; 6] = [true, true, false, true, false, false];

    fn fit() -> CensoringDistribution {
        CensoringDistribution::fit(&TIME, &EVENT).unwrap()
    }

    #[test]
    fn hand_computed_brier() {
        let s = [0.2, 0.4, 0.6, 0.5, 0.9, 1.0];
        let rows: Vec<Vec<f64>> = s.iter().map(|&v| vec![v, v]).collect();
        let bs = brier_score(&fit(), &TIME, &EVENT, &rows, &[2.5, 4.5]).unwrap();
        // t = 2.5: cases 1, 2 (G = 1), controls 3+, 4, 5+, 6+ (G(2.5) = 1).
        let want0 = (0.04 + 0.16 + 0.16 + 0.25 + 0.01 + 0.0) / 6.0;
        // t = 4.5: cases 1, 2, 4 (G(4) = 3/4), controls 5+, 6+ (G(4.5) = 3/4); 3+ weighs 0.
        let want1 = (0.04 + 0.16 + 0.25 / 0.75 + (0.01 + 0.0) / 0.75) / 6.0;
        assert!((bs[0] - want0).abs() < 1e-15, "{bs:?}");
        assert!((bs[1] - want1).abs() < 1e-15, "{bs:?}");
        let ibs = integrated_brier_score(&fit(), &TIME, &EVENT, &rows, &[2.5, 4.5]).unwrap();
        assert!((ibs - (want0 + want1) / 2.0).abs() < 1e-15);
    }

    #[test]
    fn bins_give_the_survival_through_the_bin() {
        let edges = [0.5, 2.0, 4.0, 6.0, 8.0];
        let curve = [0.9, 0.7, 0.4, 0.2];
        let at: Vec<f64> = [1.0, 2.0, 3.9, 6.0, 9.0]
            .iter()
            .map(|&t| bin_survival_at(&curve, &edges, t))
            .collect();
        assert_eq!(at, vec![0.9, 0.7, 0.7, 0.2, 0.2]);
    }

    #[test]
    fn refuses_what_scikit_survival_refuses() {
        let rows = vec![vec![0.5]; 6];
        assert!(matches!(
            integrated_brier_score(&fit(), &TIME, &EVENT, &rows, &[2.0]),
            Err(StatsError::Undefined(_))
        ));
        assert!(matches!(
            brier_score(&fit(), &TIME, &EVENT, &rows, &[6.0]),
            Err(StatsError::TimeOutsideFollowUp { .. })
        ));
        assert!(matches!(
            brier_score(&fit(), &TIME, &EVENT, &rows[..5], &[2.0]),
            Err(StatsError::LengthMismatch { .. })
        ));
        // G fitted on a shorter follow-up that ends above 0 is unknown at the later times.
        let g = CensoringDistribution::fit(&[1.0, 2.0, 3.0], &[true, false, true]).unwrap();
        assert!(matches!(
            brier_score(&g, &TIME, &EVENT, &rows, &[2.0]),
            Err(StatsError::BeyondFollowUp { .. })
        ));
        let nan = vec![vec![f64::NAN]; 6];
        assert!(matches!(
            brier_score(&fit(), &TIME, &EVENT, &nan, &[2.0]),
            Err(StatsError::NotFinite { .. })
        ));
    }
}
