//! The MCAT-family discrete time labels: four bins from the quartiles of the uncensored times.

use super::quantile::quantile_sorted;
use super::{check_survival, StatsError};

/// Number of discrete time bins (the model's hazard outputs).
pub const N_BINS: usize = 4;

/// Added below the smallest and above the largest time so every sample falls inside a bin.
const EDGE_EPS: f64 = 1e-6;

/// Bin edges as MCAT computes them (`pd.qcut` on the uncensored times, then the outer edges
/// replaced by min − 1e-6 and max + 1e-6 over all samples).
pub fn quartile_edges(time: &[f64], event: &[bool]) -> Result<[f64; N_BINS + 1], StatsError> {
    check_survival(time, event)?;
    let mut uncensored: Vec<f64> = time
        .iter()
        .zip(event)
        .filter(|(_, &e)| e)
        .map(|(&t, _)| t)
        .collect();
    if uncensored.is_empty() {
        return Err(StatsError::Undefined(
            "no uncensored samples: the quartile time bins are undefined".into(),
        ));
    }
    uncensored.sort_by(f64::total_cmp);
    let mut edges = [0.0; N_BINS + 1];
    for (k, edge) in edges.iter_mut().enumerate() {
        *edge = quantile_sorted(&uncensored, k as f64 / N_BINS as f64)?;
    }
    let (min, max) = time
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &t| {
            (lo.min(t), hi.max(t))
        });
    edges[0] = min - EDGE_EPS;
    edges[N_BINS] = max + EDGE_EPS;
    // pd.qcut refuses repeated edges; so do we, with the reason.
    if edges.windows(2).any(|w| w[0] >= w[1]) {
        return Err(StatsError::Undefined(format!(
            "the quartile bin edges {edges:?} are not increasing: too few distinct event times"
        )));
    }
    Ok(edges)
}

/// The bin of `t`, with left-closed intervals [e_k, e_{k+1}) (`pd.cut(..., right=False)`).
/// Times outside the edges are clamped to the first or last bin.
pub fn assign_bin(t: f64, edges: &[f64; N_BINS + 1]) -> usize {
    edges[1..N_BINS].iter().filter(|&&e| e <= t).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_edges_and_bins() {
        // Uncensored times 2, 4, 6, 8, 10 → quartiles 4, 6, 8; censored 1 and 12 set the outer edges.
        let time = [2.0, 4.0, 6.0, 8.0, 10.0, 1.0, 12.0];
        let event = [true, true, true, true, true, false, false];
        let edges = quartile_edges(&time, &event).unwrap();
        assert_eq!(edges, [1.0 - 1e-6, 4.0, 6.0, 8.0, 12.0 + 1e-6]);
        let bins: Vec<usize> = time.iter().map(|&t| assign_bin(t, &edges)).collect();
        // Left-closed: 4 starts bin 1, 8 starts bin 3.
        assert_eq!(bins, vec![0, 1, 2, 3, 3, 0, 3]);
    }

    #[test]
    fn repeated_edges_are_refused() {
        let time = [5.0, 5.0, 5.0, 5.0, 9.0];
        let event = [true, true, true, true, false];
        assert!(matches!(
            quartile_edges(&time, &event),
            Err(StatsError::Undefined(_))
        ));
        assert!(quartile_edges(&[1.0, 2.0], &[false, false]).is_err());
    }
}
