//! Cox proportional hazards as lifelines 0.30's `CoxPHFitter()` fits it with its defaults:
//! Efron's tie correction, no penalty, covariates standardised (mean 0, sample std 1) inside
//! the fit, Newton–Raphson from β = 0 with lifelines' step-size rule and stopping tests, and
//! Wald statistics from the inverse Hessian.

use statrs::distribution::{ContinuousCDF, Normal};
use statrs::function::erf::erfc;

use super::{check_finite, check_survival, StatsError};

// lifelines' `_newton_raphson_for_efron_model` defaults.
const STEP_SIZE: f64 = 0.95;
const PRECISION: f64 = 1e-7;
const R_PRECISION: f64 = 1e-9;
const MAX_STEPS: usize = 500;

#[derive(Debug, Clone, PartialEq)]
pub struct CoxFit {
    /// Log hazard ratio per unit of each covariate.
    pub coef: Vec<f64>,
    pub se: Vec<f64>,
    /// Wald z = coef / se.
    pub z: Vec<f64>,
    /// Two-sided Wald p-value, chi-squared(1) survival of z².
    pub p_value: Vec<f64>,
    pub hazard_ratio: Vec<f64>,
    /// exp(coef ∓ z_{(1+level)/2} · se).
    pub hr_ci_lower: Vec<f64>,
    pub hr_ci_upper: Vec<f64>,
    pub ci_level: f64,
    /// Covariance matrix of `coef`, row-major d × d.
    pub variance: Vec<f64>,
    /// Log partial likelihood (Efron) at the estimate, and at β = 0.
    pub log_likelihood: f64,
    pub log_likelihood_null: f64,
    /// The means and sample standard deviations the covariates were standardised with.
    pub norm_mean: Vec<f64>,
    pub norm_std: Vec<f64>,
    /// Newton–Raphson iterations (gradient evaluations).
    pub iterations: usize,
    /// False where lifelines warns that Newton–Raphson failed to converge (it still returns
    /// the last iterate, as this does).
    pub converged: bool,
}

/// Fits h(t | x) = h₀(t) exp(β·x) to right-censored data; `covariates` holds one column
/// (n values) per covariate. `ci_level` is lifelines' 1 − alpha (0.95 by default there).
pub fn cox_ph<C: AsRef<[f64]>>(
    time: &[f64],
    event: &[bool],
    covariates: &[C],
    ci_level: f64,
) -> Result<CoxFit, StatsError> {
    check_survival(time, event)?;
    if !(ci_level > 0.0 && ci_level < 1.0) {
        return Err(StatsError::Undefined(format!(
            "confidence level {ci_level} is not in (0, 1)"
        )));
    }
    if covariates.is_empty() {
        return Err(StatsError::Undefined(
            "a Cox model needs a covariate".into(),
        ));
    }
    let n = time.len();
    for column in covariates {
        check_finite("covariate", column.as_ref(), n)?;
    }
    if !event.iter().any(|&e| e) {
        return Err(StatsError::AllCensored);
    }
    let d = covariates.len();

    // pandas' mean and std (ddof 1); a constant column cannot be standardised.
    let mut norm_mean = Vec::with_capacity(d);
    let mut norm_std = Vec::with_capacity(d);
    for (j, column) in covariates.iter().enumerate() {
        let column = column.as_ref();
        let mean = column.iter().sum::<f64>() / n as f64;
        let ss: f64 = column.iter().map(|x| (x - mean) * (x - mean)).sum();
        let std = (ss / (n as f64 - 1.0)).sqrt();
        if !(std > 0.0 && std.is_finite()) {
            return Err(StatsError::Undefined(format!(
                "covariate {j} has no variance: its hazard ratio cannot be estimated"
            )));
        }
        norm_mean.push(mean);
        norm_std.push(std);
    }

    // lifelines sorts by (time, event); the order only changes the rounding of the sums.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| time[a].total_cmp(&time[b]).then(event[a].cmp(&event[b])));
    let (mean, std) = (&norm_mean, &norm_std);
    let data = Sorted {
        time: order.iter().map(|&i| time[i]).collect(),
        event: order.iter().map(|&i| event[i]).collect(),
        x: order
            .iter()
            .flat_map(|&i| {
                covariates
                    .iter()
                    .enumerate()
                    .map(move |(j, c)| (c.as_ref()[i] - mean[j]) / std[j])
            })
            .collect(),
        d,
    };

    let fit = newton_raphson(&data)?;

    // Back to the covariates' own scale.
    let coef: Vec<f64> = (0..d).map(|j| fit.beta[j] / norm_std[j]).collect();
    let negated: Vec<f64> = fit.hessian.iter().map(|h| -h).collect();
    let inverse = cholesky(&negated, d)
        .map(|l| cholesky_inverse(&l, d))
        .ok_or_else(not_positive_definite)?;
    let variance: Vec<f64> = (0..d * d)
        .map(|k| inverse[k] / (norm_std[k / d] * norm_std[k % d]))
        .collect();
    let se: Vec<f64> = (0..d).map(|j| variance[j * d + j].sqrt()).collect();
    let z: Vec<f64> = coef.iter().zip(&se).map(|(c, s)| c / s).collect();
    // chi2.sf(z², 1) = erfc(|z| / √2), without losing the tail to 1 − cdf.
    let p_value: Vec<f64> = z
        .iter()
        .map(|z| erfc(z.abs() / std::f64::consts::SQRT_2))
        .collect();
    let z_crit = Normal::standard().inverse_cdf(1.0 - (1.0 - ci_level) / 2.0);
    let bound = |sign: f64| -> Vec<f64> {
        coef.iter()
            .zip(&se)
            .map(|(c, s)| (c + sign * z_crit * s).exp())
            .collect()
    };
    Ok(CoxFit {
        hazard_ratio: coef.iter().map(|c| c.exp()).collect(),
        hr_ci_lower: bound(-1.0),
        hr_ci_upper: bound(1.0),
        coef,
        se,
        z,
        p_value,
        ci_level,
        variance,
        log_likelihood: fit.log_likelihood,
        log_likelihood_null: fit.log_likelihood_null,
        norm_mean,
        norm_std,
        iterations: fit.iterations,
        converged: fit.converged,
    })
}

/// The standardised covariates (row-major n × d) sorted by (time, event).
struct Sorted {
    time: Vec<f64>,
    event: Vec<bool>,
    x: Vec<f64>,
    d: usize,
}

struct NewtonRaphson {
    beta: Vec<f64>,
    hessian: Vec<f64>,
    log_likelihood: f64,
    log_likelihood_null: f64,
    iterations: usize,
    converged: bool,
}

fn not_positive_definite() -> StatsError {
    StatsError::Undefined(
        "the Cox partial likelihood's Hessian is not negative definite (collinear covariates \
         or complete separation?): lifelines stops with a ConvergenceError here"
            .into(),
    )
}

/// lifelines' loop: the step to β + step·δ is taken at the top, so the returned β is the one
/// whose Newton step δ passed a stopping test (that last δ is not applied).
fn newton_raphson(data: &Sorted) -> Result<NewtonRaphson, StatsError> {
    let d = data.d;
    let mut beta = vec![0.0; d];
    let mut delta = vec![0.0; d];
    let mut sizer = StepSizer::new(STEP_SIZE);
    let mut step_size = sizer.step_size;
    let (mut previous_ll, mut ll_null) = (0.0, 0.0);
    let mut i = 0;
    loop {
        for (b, dl) in beta.iter_mut().zip(&delta) {
            *b += step_size * dl;
        }
        i += 1;
        let (hessian, gradient, ll) = efron(data, &beta);
        if i == 1 {
            ll_null = ll;
        }
        let negated: Vec<f64> = hessian.iter().map(|h| -h).collect();
        let l = cholesky(&negated, d).ok_or_else(not_positive_definite)?;
        delta = cholesky_solve(&l, &gradient, d);
        if delta.iter().any(|v| v.is_nan()) {
            return Err(StatsError::Undefined(
                "the Cox model's Newton step is not a number: convergence halted".into(),
            ));
        }
        let norm_delta = delta.iter().map(|v| v * v).sum::<f64>().sqrt();
        let newton_decrement = gradient.iter().zip(&delta).map(|(g, v)| g * v).sum::<f64>() / 2.0;

        // lifelines' stopping tests, in its order.
        let stop = if norm_delta < PRECISION
            || (previous_ll != 0.0 && (ll - previous_ll).abs() / (-previous_ll) < R_PRECISION)
            || newton_decrement < PRECISION
        {
            Some(true)
        } else if i >= MAX_STEPS || step_size <= 0.00001 || (ll.abs() < 0.0001 && norm_delta > 1.0)
        {
            Some(false)
        } else {
            None
        };
        if let Some(converged) = stop {
            return Ok(NewtonRaphson {
                beta,
                hessian,
                log_likelihood: ll,
                log_likelihood_null: ll_null,
                iterations: i,
                converged,
            });
        }
        previous_ll = ll;
        sizer.update(norm_delta);
        step_size = sizer.step_size;
    }
}

/// lifelines' `utils.StepSizer`.
struct StepSizer {
    initial: f64,
    step_size: f64,
    temper_back_up: bool,
    norms: Vec<f64>,
}

impl StepSizer {
    fn new(initial: f64) -> Self {
        Self {
            initial,
            step_size: initial,
            temper_back_up: false,
            norms: Vec::new(),
        }
    }

    fn update(&mut self, norm_delta: f64) {
        const SCALE: f64 = 1.3;
        const LOOKBACK: usize = 3;
        self.norms.push(norm_delta);
        if self.temper_back_up {
            self.step_size = (self.step_size * SCALE).min(self.initial);
        }
        // Large steps are shrunk (and allowed to grow back later).
        if norm_delta >= 15.0 {
            self.step_size *= 0.1;
            self.temper_back_up = true;
        } else if norm_delta > 5.0 {
            self.step_size *= 0.25;
            self.temper_back_up = true;
        }
        if self.norms.len() >= LOOKBACK {
            let recent = &self.norms[self.norms.len() - LOOKBACK..];
            if recent.windows(2).all(|w| w[1] - w[0] < 0.0) {
                self.step_size = (self.step_size * SCALE).min(1.0);
            } else {
                self.step_size *= 0.98;
            }
        }
    }
}

/// Hessian (d × d), gradient and log partial likelihood with Efron's ties at `beta`, as
/// lifelines' `_get_efron_values_single`: one backward pass accumulating the risk set.
fn efron(data: &Sorted, beta: &[f64]) -> (Vec<f64>, Vec<f64>, f64) {
    let d = data.d;
    let n = data.time.len();
    let row = |i: usize| &data.x[i * d..(i + 1) * d];
    let mut hessian = vec![0.0; d * d];
    let mut gradient = vec![0.0; d];
    let mut log_lik = 0.0;

    let (mut risk_phi, mut tie_phi) = (0.0, 0.0);
    let (mut risk_phi_x, mut tie_phi_x) = (vec![0.0; d], vec![0.0; d]);
    let (mut risk_phi_x_x, mut tie_phi_x_x) = (vec![0.0; d * d], vec![0.0; d * d]);
    let mut x_death_sum = vec![0.0; d];
    let mut tied_deaths = 0usize;

    for i in (0..n).rev() {
        let xi = row(i);
        let phi = xi.iter().zip(beta).map(|(x, b)| x * b).sum::<f64>().exp();
        for a in 0..d {
            risk_phi_x[a] += phi * xi[a];
            for b in 0..d {
                risk_phi_x_x[a * d + b] += xi[a] * (phi * xi[b]);
            }
        }
        risk_phi += phi;
        if data.event[i] {
            for a in 0..d {
                x_death_sum[a] += xi[a];
                tie_phi_x[a] += phi * xi[a];
                for b in 0..d {
                    tie_phi_x_x[a * d + b] += xi[a] * (phi * xi[b]);
                }
            }
            tie_phi += phi;
            tied_deaths += 1;
        }
        if (i > 0 && data.time[i - 1] == data.time[i]) || tied_deaths == 0 {
            continue;
        }

        // Efron: the l-th of m tied deaths sees the risk set less l/m of the tied ones.
        let m = tied_deaths as f64;
        let (mut sum_denom, mut sum_frac_denom) = (0.0, 0.0);
        let mut summand_sum = vec![0.0; d];
        let mut a2 = vec![0.0; d * d];
        for l in 0..tied_deaths {
            let frac = l as f64 / m;
            let denom = 1.0 / (risk_phi - frac * tie_phi);
            let summand: Vec<f64> = (0..d)
                .map(|a| (risk_phi_x[a] - frac * tie_phi_x[a]) * denom)
                .collect();
            for a in 0..d {
                summand_sum[a] += summand[a];
                for b in 0..d {
                    a2[a * d + b] += summand[a] * summand[b];
                }
            }
            sum_denom += denom;
            sum_frac_denom += frac * denom;
            log_lik += denom.ln();
        }
        for a in 0..d {
            gradient[a] += x_death_sum[a] - summand_sum[a];
            log_lik += x_death_sum[a] * beta[a];
            for b in 0..d {
                let a1 =
                    risk_phi_x_x[a * d + b] * sum_denom - tie_phi_x_x[a * d + b] * sum_frac_denom;
                hessian[a * d + b] += a2[a * d + b] - a1;
            }
        }

        tied_deaths = 0;
        tie_phi = 0.0;
        tie_phi_x.iter_mut().for_each(|v| *v = 0.0);
        tie_phi_x_x.iter_mut().for_each(|v| *v = 0.0);
        x_death_sum.iter_mut().for_each(|v| *v = 0.0);
    }
    (hessian, gradient, log_lik)
}

/// Lower Cholesky factor of a symmetric positive definite d × d matrix; `None` if it is not
/// (LAPACK's `posv`, which scipy's `solve(..., assume_a="pos")` calls, fails there too).
fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum();
            if i == j {
                let pivot = a[i * d + i] - s;
                // Also refuses NaN.
                if pivot.is_nan() || pivot <= 0.0 {
                    return None;
                }
                l[i * d + i] = pivot.sqrt();
            } else {
                l[i * d + j] = (a[i * d + j] - s) / l[j * d + j];
            }
        }
    }
    Some(l)
}

/// Solves L Lᵀ x = b.
fn cholesky_solve(l: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut y = vec![0.0; d];
    for i in 0..d {
        let s: f64 = (0..i).map(|k| l[i * d + k] * y[k]).sum();
        y[i] = (b[i] - s) / l[i * d + i];
    }
    let mut x = vec![0.0; d];
    for i in (0..d).rev() {
        let s: f64 = (i + 1..d).map(|k| l[k * d + i] * x[k]).sum();
        x[i] = (y[i] - s) / l[i * d + i];
    }
    x
}

/// (L Lᵀ)⁻¹, row-major.
fn cholesky_inverse(l: &[f64], d: usize) -> Vec<f64> {
    let mut inverse = vec![0.0; d * d];
    for j in 0..d {
        let e: Vec<f64> = (0..d).map(|i| if i == j { 1.0 } else { 0.0 }).collect();
        for (i, v) in cholesky_solve(l, &e, d).into_iter().enumerate() {
            inverse[i * d + j] = v;
        }
    }
    inverse
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn efron_ties_by_hand() {
        // Times 1, 1, 2, 3 (all events), x = 1, 0, 1, 0: at t = 1 two tied deaths out of four.
        // At β = 0 (standardised x is ±c), Efron's log-likelihood is
        // −[ln 4 + ln(4 − 1/2 · 2)] − ln 2 − ln 1 = −ln 4 − ln 3 − ln 2.
        let time = [1.0, 1.0, 2.0, 3.0];
        let event = [true; 4];
        let x = [1.0, 0.0, 1.0, 0.0];
        let fit = cox_ph(&time, &event, &[x], 0.95).unwrap();
        let want = -(4.0f64.ln() + 3.0f64.ln() + 2.0f64.ln());
        assert!((fit.log_likelihood_null - want).abs() < 1e-12);
        assert!(fit.converged);
        // The Efron score is 2 − 3r/(r + 1) with r = e^β (the l = 1 tied death sees
        // (2r − r/2) / (2r + 2 − (r + 1)/2) = r/(r + 1)), so β̂ = ln 2. lifelines stops short
        // of it, at its relative log-likelihood test, and so do we: its values, to 1e-12.
        assert!((fit.coef[0] - 2.0f64.ln()).abs() < 1e-5);
        assert!((fit.coef[0] - 0.6931451187419548).abs() < 1e-12);
        assert!((fit.se[0] - 1.2247444505254048).abs() < 1e-12);
        assert!((fit.log_likelihood - -3.0081547935539654).abs() < 1e-12);
        assert!((fit.p_value[0] - 0.5714272171861401).abs() < 1e-12);
        assert!((fit.hazard_ratio[0] - fit.coef[0].exp()).abs() < 1e-15);
        assert!(fit.hr_ci_lower[0] < fit.hazard_ratio[0]);
        assert!(fit.hazard_ratio[0] < fit.hr_ci_upper[0]);
        // z = ±1.96 gives p = 0.05 (statrs' erfc is good to about 1e-10 relative here).
        let p = erfc(1.959963984540054 / std::f64::consts::SQRT_2);
        assert!((p - 0.05).abs() < 1e-11, "{p:e}");
    }

    #[test]
    fn separation_stops_where_lifelines_does() {
        // Events at 1 (x = 1) then 2 (x = 0): the likelihood e^β / (e^β + 1) has no maximum.
        // lifelines stops once the Newton decrement is tiny and calls it a success (with a
        // warning that the step is still large): β = 16.0698…
        let fit = cox_ph(&[1.0, 2.0], &[true, true], &[[1.0, 0.0]], 0.95).unwrap();
        assert!(
            (fit.coef[0] - 16.069843231763205).abs() < 1e-9,
            "{}",
            fit.coef[0]
        );
        assert!((fit.log_likelihood - -1.0494354718559862e-07).abs() < 1e-15);
    }

    #[test]
    fn standardisation_does_not_change_the_estimate() {
        // Rescaling and shifting a covariate rescales β and its se by the same factor.
        let time = [5.0, 3.0, 9.0, 8.0, 7.0, 4.0, 4.0, 3.0, 2.0, 5.0, 6.0, 7.0];
        let event = [
            true, true, true, true, true, true, false, false, true, true, true, false,
        ];
        let x = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0];
        let scaled: Vec<f64> = x.iter().map(|v| 10.0 * v + 3.0).collect();
        let a = cox_ph(&time, &event, &[x.to_vec()], 0.95).unwrap();
        let b = cox_ph(&time, &event, &[scaled], 0.95).unwrap();
        assert!((a.coef[0] - 10.0 * b.coef[0]).abs() < 1e-12);
        assert!((a.se[0] - 10.0 * b.se[0]).abs() < 1e-12);
        assert!((a.p_value[0] - b.p_value[0]).abs() < 1e-12);
    }

    #[test]
    fn refuses_bad_input() {
        let time = [1.0, 2.0, 3.0];
        let event = [true, false, true];
        assert!(matches!(
            cox_ph(&time, &event, &[[1.0, 1.0, 1.0]], 0.95),
            Err(StatsError::Undefined(_))
        ));
        assert!(matches!(
            cox_ph(&time, &event, &[[1.0, f64::NAN, 1.0]], 0.95),
            Err(StatsError::NotFinite { .. })
        ));
        assert!(matches!(
            cox_ph(&time, &event, &[[1.0, 2.0]], 0.95),
            Err(StatsError::LengthMismatch { .. })
        ));
        assert_eq!(
            cox_ph(&time, &[false; 3], &[[1.0, 2.0, 3.0]], 0.95),
            Err(StatsError::AllCensored)
        );
        let none: [[f64; 3]; 0] = [];
        assert!(cox_ph(&time, &event, &none, 0.95).is_err());
    }
}
