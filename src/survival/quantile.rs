//! Quantiles with numpy's default ("linear") method, bit for bit.

use super::{check_finite, StatsError};

/// `np.quantile(values, q)` with linear interpolation. `values` need not be sorted.
pub fn quantile(values: &[f64], q: f64) -> Result<f64, StatsError> {
    if values.is_empty() {
        return Err(StatsError::Empty);
    }
    check_finite("values", values, values.len())?;
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    quantile_sorted(&sorted, q)
}

/// Same as [`quantile`] on data already sorted ascending.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> Result<f64, StatsError> {
    if sorted.is_empty() {
        return Err(StatsError::Empty);
    }
    if !(0.0..=1.0).contains(&q) {
        return Err(StatsError::BadQuantile(q));
    }
    let position = q * (sorted.len() - 1) as f64;
    let below = position.floor();
    let lo = below as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    let t = position - below;
    Ok(lerp(sorted[lo], sorted[hi], t))
}

/// numpy's `_lerp`: interpolates from the nearer end so that t = 1 returns `b` exactly.
fn lerp(a: f64, b: f64, t: f64) -> f64 {
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

/// `np.median(values)`.
pub fn median(values: &[f64]) -> Result<f64, StatsError> {
    quantile(values, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_hand_values() {
        // np.quantile([1, 2, 3, 4], [0, .25, .5, .75, 1]) = [1, 1.75, 2.5, 3.25, 4]
        let v = [4.0, 1.0, 3.0, 2.0];
        let got: Vec<f64> = [0.0, 0.25, 0.5, 0.75, 1.0]
            .iter()
            .map(|&q| quantile(&v, q).unwrap())
            .collect();
        assert_eq!(got, vec![1.0, 1.75, 2.5, 3.25, 4.0]);
        assert_eq!(median(&[5.0]).unwrap(), 5.0);
        assert_eq!(median(&[1.0, 2.0, 10.0]).unwrap(), 2.0);
    }

    #[test]
    fn refuses_bad_input() {
        assert_eq!(quantile(&[], 0.5), Err(StatsError::Empty));
        assert_eq!(quantile(&[1.0], 1.5), Err(StatsError::BadQuantile(1.5)));
        assert!(matches!(
            quantile(&[1.0, f64::NAN], 0.5),
            Err(StatsError::NotFinite { index: 1, .. })
        ));
    }
}
