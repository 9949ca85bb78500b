//! Survival statistics with the conventions of scikit-survival, lifelines and scipy.
//!
//! Every function here is checked against values those libraries computed on real datasets
//! (`fixtures/survival/reference/`).

pub mod bins;
pub mod cindex;
pub mod km;
pub mod logrank;
pub mod quantile;
pub mod split;
pub mod ttest;

pub use bins::{assign_bin, quartile_edges, N_BINS};
pub use cindex::{concordance_index, Concordance, TIED_TOL};
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
