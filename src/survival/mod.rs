//! Survival statistics with the conventions of scikit-survival, lifelines and scipy.
//!
//! Every function here is checked against values those libraries computed on real datasets
//! (`fixtures/survival/reference/`, and `fixtures/survival/metrics/` for Uno's C, the dynamic AUC,
//! the Brier scores and the Cox fits).

pub mod auc;
pub mod bins;
pub mod brier;
pub mod cindex;
pub mod cox;
pub mod ipcw;
pub mod km;
pub mod logrank;
pub mod quantile;
pub mod split;
pub mod ttest;

pub use auc::{cumulative_dynamic_auc, cumulative_dynamic_auc_by_time, DynamicAuc};
pub use bins::{assign_bin, quartile_edges, N_BINS};
pub use brier::{bin_survival_at, brier_score, integrated_brier_score};
pub use cindex::{concordance_index, Concordance, TIED_TOL};
pub use cox::{cox_ph, CoxFit};
pub use ipcw::{concordance_index_ipcw, CensoringDistribution, StepSurvival};
pub use km::{kaplan_meier, KaplanMeier, KmRow};
pub use logrank::{logrank_test, LogRank};
pub use quantile::{median, quantile};
pub use split::{risk_split, RiskSplit, RiskSplitRule};
pub use ttest::{welch_student_ttests, TTest, TTestPair};

/// Why a statistic cannot be computed from the data it was given.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StatsError {
    #[error("no samples")]
    Empty,
    #[error("{what} has {got} values, expected {expected}")]
    LengthMismatch {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("{what} at position {index} is not a finite number ({value})")]
    NotFinite {
        what: &'static str,
        index: usize,
        value: f64,
    },
    #[error("all samples are censored: the C-index needs at least one event")]
    AllCensored,
    #[error("no comparable pairs: the C-index is undefined")]
    NoComparablePairs,
    #[error("quantile {0} is outside [0, 1]")]
    BadQuantile(f64),
    /// scikit-survival: "time must be smaller than largest observed time point".
    #[error(
        "time {time} is after the last time of the Kaplan–Meier estimate ({last}), which had not \
         reached 0 there, so it is unknown: evaluate at earlier times (or fit the censoring \
         distribution on data that follow up longer)"
    )]
    BeyondFollowUp { time: f64, last: f64 },
    /// scikit-survival: "censoring survival function is zero at one or more time points".
    #[error(
        "the censoring survival function is 0 at the event time {time} (everyone still at risk \
         then was censored), so its inverse probability of censoring weight is infinite: for \
         Uno's C choose a tau at or below {time}; the dynamic AUC weighs every event, so fit the \
         censoring distribution on data that follow up longer"
    )]
    CensoringSurvivalZero { time: f64 },
    /// scikit-survival: "all times must be within follow-up time of test data".
    #[error("evaluation time {time} is outside the follow-up of the test data, [{min}; {max}[")]
    TimeOutsideFollowUp { time: f64, min: f64, max: f64 },
    #[error(
        "evaluation times must be strictly increasing, but {next} follows {previous} \
         (scikit-survival sorts and de-duplicates them without reordering the estimate's columns)"
    )]
    TimesNotIncreasing { previous: f64, next: f64 },
    #[error("{0}")]
    Undefined(String),
}

/// Checks that `values` has `expected` entries, all finite.
pub(crate) fn check_finite(
    what: &'static str,
    values: &[f64],
    expected: usize,
) -> Result<(), StatsError> {
    if values.len() != expected {
        return Err(StatsError::LengthMismatch {
            what,
            got: values.len(),
            expected,
        });
    }
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(StatsError::NotFinite {
            what,
            index,
            value: values[index],
        }),
        None => Ok(()),
    }
}

/// Checks a (time, event) pair of columns: same length, non-empty, finite times.
pub(crate) fn check_survival(time: &[f64], event: &[bool]) -> Result<(), StatsError> {
    if time.is_empty() {
        return Err(StatsError::Empty);
    }
    check_finite("time", time, event.len())
}

/// Checks evaluation times as scikit-survival's `_check_times` does (finite, within [min, max)
/// of the test times), and that they are strictly increasing: sksurv sorts and de-duplicates
/// them but leaves the estimate's columns as they were, which would mislabel them.
pub(crate) fn check_times(test_time: &[f64], times: &[f64]) -> Result<(), StatsError> {
    if times.is_empty() {
        return Err(StatsError::Undefined("no evaluation times".into()));
    }
    check_finite("times", times, times.len())?;
    if let Some(w) = times.windows(2).find(|w| w[0] >= w[1]) {
        return Err(StatsError::TimesNotIncreasing {
            previous: w[0],
            next: w[1],
        });
    }
    let (min, max) = test_time
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &t| {
            (lo.min(t), hi.max(t))
        });
    match times.iter().find(|&&t| t < min || t >= max) {
        Some(&time) => Err(StatsError::TimeOutsideFollowUp { time, min, max }),
        None => Ok(()),
    }
}
