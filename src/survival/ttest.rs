//! Two-sample t-tests as `scipy.stats.ttest_ind` computes them, and the paired test of
//! `scipy.stats.ttest_rel` (both two-sided).

use statrs::distribution::{ContinuousCDF, StudentsT};

use super::{check_finite, StatsError};

#[derive(Debug, Clone, PartialEq)]
pub struct TTest {
    pub t: f64,
    pub df: f64,
    pub p_value: f64,
}

/// Student's (pooled variance) and Welch's (unequal variances) test of mean(a) − mean(b).
#[derive(Debug, Clone, PartialEq)]
pub struct TTestPair {
    pub n_a: usize,
    pub n_b: usize,
    pub mean_a: f64,
    pub mean_b: f64,
    pub student: TTest,
    pub welch: TTest,
}

fn mean_var(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var)
}

fn two_sided(t: f64, df: f64) -> Result<TTest, StatsError> {
    if !t.is_finite() || !df.is_finite() || df <= 0.0 {
        return Err(StatsError::Undefined(format!(
            "t-test undefined (t = {t}, df = {df}): both groups have zero variance"
        )));
    }
    let dist = StudentsT::new(0.0, 1.0, df).map_err(|e| StatsError::Undefined(e.to_string()))?;
    Ok(TTest {
        t,
        df,
        p_value: 2.0 * dist.sf(t.abs()),
    })
}

/// Both tests at once; each group needs at least two values.
pub fn welch_student_ttests(a: &[f64], b: &[f64]) -> Result<TTestPair, StatsError> {
    check_finite("first group", a, a.len())?;
    check_finite("second group", b, b.len())?;
    if a.len() < 2 || b.len() < 2 {
        return Err(StatsError::Undefined(format!(
            "t-test needs at least two values per group (got {} and {})",
            a.len(),
            b.len()
        )));
    }
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let ((mean_a, var_a), (mean_b, var_b)) = (mean_var(a), mean_var(b));
    let diff = mean_a - mean_b;

    let df_student = na + nb - 2.0;
    let pooled = ((na - 1.0) * var_a + (nb - 1.0) * var_b) / df_student;
    let student = two_sided(diff / (pooled * (1.0 / na + 1.0 / nb)).sqrt(), df_student)?;

    let (sa, sb) = (var_a / na, var_b / nb);
    let df_welch = (sa + sb).powi(2) / (sa * sa / (na - 1.0) + sb * sb / (nb - 1.0));
    let welch = two_sided(diff / (sa + sb).sqrt(), df_welch)?;

    Ok(TTestPair {
        n_a: a.len(),
        n_b: b.len(),
        mean_a,
        mean_b,
        student,
        welch,
    })
}

/// The paired test of mean(a − b) = 0 (`scipy.stats.ttest_rel`): a one-sample t-test on the
/// differences, n − 1 degrees of freedom; at least two pairs.
pub fn paired_ttest(a: &[f64], b: &[f64]) -> Result<TTest, StatsError> {
    check_finite("first sample", a, a.len())?;
    check_finite("second sample", b, a.len())?;
    if a.len() < 2 {
        return Err(StatsError::Undefined(format!(
            "a paired t-test needs at least two pairs (got {})",
            a.len()
        )));
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let n = d.len() as f64;
    let (mean, var) = mean_var(&d);
    two_sided(mean / (var / n).sqrt(), n - 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_values() {
        // a = 1,2,3 (mean 2, var 1); b = 4,6,8 (mean 6, var 4).
        // Student: sp² = 2.5, t = −4/√(2.5·2/3) = −3.0984, df 4.
        // Welch: se² = 1/3 + 4/3, t = −4/√(5/3), df = (5/3)²/((1/9)/2 + (16/9)/2) = 2.9412.
        let r = welch_student_ttests(&[1.0, 2.0, 3.0], &[4.0, 6.0, 8.0]).unwrap();
        assert!((r.student.t + 4.0 / (2.5f64 * 2.0 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(r.student.df, 4.0);
        assert!((r.welch.t + 4.0 / (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((r.welch.df - (25.0 / 9.0) / (17.0 / 18.0)).abs() < 1e-12);
        // scipy.stats.ttest_ind([1, 2, 3], [4, 6, 8], equal_var=True / False).pvalue
        assert!((r.student.p_value - 0.036_277_824_521_899_12).abs() < 1e-12);
        assert!((r.welch.p_value - 0.054_786_766_041_076_435).abs() < 1e-12);
    }

    #[test]
    fn paired_test_equals_scipys_ttest_rel() {
        let a = [0.61, 0.58, 0.66, 0.60, 0.63];
        let b = [0.57, 0.59, 0.60, 0.55, 0.61];
        let r = paired_ttest(&a, &b).unwrap();
        // scipy.stats.ttest_rel(a, b) (scipy 1.17.1): statistic, pvalue, df.
        assert!((r.t - 2.578_633_484_881_217).abs() < 1e-12, "{}", r.t);
        assert!((r.p_value - 0.061_415_973_525_170_475).abs() < 1e-12);
        assert_eq!(r.df, 4.0);
        assert!(paired_ttest(&[0.5], &[0.4]).is_err());
        assert!(paired_ttest(&[0.5, 0.6], &[0.4]).is_err());
        // Identical differences: no variance, undefined.
        assert!(paired_ttest(&[1.0, 2.0], &[0.0, 1.0]).is_err());
    }

    #[test]
    fn degenerate_groups_are_errors() {
        assert!(welch_student_ttests(&[1.0], &[2.0, 3.0]).is_err());
        assert!(welch_student_ttests(&[1.0, 1.0], &[1.0, 1.0]).is_err());
    }
}
