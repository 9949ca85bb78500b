//! Splitting patients into high- and low-risk groups by their predicted risk.

use super::quantile::quantile;
use super::StatsError;

/// Where the risk threshold comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskSplitRule {
    /// The 50th percentile of the risks (linear interpolation).
    Median,
    /// The arithmetic mean of the risks.
    Mean,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RiskSplit {
    pub threshold: f64,
    /// `high[i]` is true iff risk_i ≥ threshold.
    pub high: Vec<bool>,
}

impl RiskSplit {
    pub fn n_high(&self) -> usize {
        self.high.iter().filter(|&&h| h).count()
    }

    pub fn n_low(&self) -> usize {
        self.high.len() - self.n_high()
    }
}

pub fn risk_split(risk: &[f64], rule: RiskSplitRule) -> Result<RiskSplit, StatsError> {
    let threshold = match rule {
        RiskSplitRule::Median => quantile(risk, 0.5)?,
        RiskSplitRule::Mean => {
            quantile(risk, 0.5)?; // same emptiness and finiteness checks
            risk.iter().sum::<f64>() / risk.len() as f64
        }
    };
    Ok(RiskSplit {
        threshold,
        high: risk.iter().map(|&r| r >= threshold).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_at_the_median_go_high() {
        let s = risk_split(&[1.0, 2.0, 2.0, 3.0], RiskSplitRule::Median).unwrap();
        assert_eq!(s.threshold, 2.0);
        assert_eq!(s.high, vec![false, true, true, true]);
        let s = risk_split(&[1.0, 1.0, 1.0], RiskSplitRule::Median).unwrap();
        assert_eq!((s.n_high(), s.n_low()), (3, 0));
        let s = risk_split(&[0.0, 0.0, 3.0], RiskSplitRule::Mean).unwrap();
        assert_eq!(s.high, vec![false, false, true]);
    }
}
