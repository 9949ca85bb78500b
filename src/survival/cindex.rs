//! Harrell's concordance index with scikit-survival's `concordance_index_censored` conventions,
//! in O(n log n) with a Fenwick tree over risk ranks.

use super::{check_finite, check_survival, StatsError};

/// Risk differences at or below this count as ties (scikit-survival's default `tied_tol`).
pub const TIED_TOL: f64 = 1e-8;

/// The C-index and the pair counts behind it, as `concordance_index_censored` returns them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Concordance {
    pub c_index: f64,
    pub concordant: u64,
    pub discordant: u64,
    /// Comparable pairs whose risks differ by at most [`TIED_TOL`] (each counts 0.5).
    pub tied_risk: u64,
    /// Comparable pairs of an event and a censoring at the same time.
    pub tied_time: u64,
}

impl Concordance {
    pub fn comparable(&self) -> u64 {
        self.concordant + self.discordant + self.tied_risk
    }
}

/// Harrell's C: a pair (i, j) is comparable when i has an event and t_i < t_j, or t_i == t_j
/// and j is censored; it is concordant when risk_i > risk_j.
pub fn concordance_index(
    time: &[f64],
    event: &[bool],
    risk: &[f64],
) -> Result<Concordance, StatsError> {
    check_survival(time, event)?;
    check_finite("risk", risk, time.len())?;
    if !event.iter().any(|&e| e) {
        return Err(StatsError::AllCensored);
    }
    let n = time.len();

    let mut by_risk: Vec<usize> = (0..n).collect();
    by_risk.sort_by(|&a, &b| risk[a].total_cmp(&risk[b]));
    let sorted_risk: Vec<f64> = by_risk.iter().map(|&i| risk[i]).collect();
    let mut rank = vec![0usize; n];
    for (r, &i) in by_risk.iter().enumerate() {
        rank[i] = r;
    }

    let mut by_time: Vec<usize> = (0..n).collect();
    by_time.sort_by(|&a, &b| time[a].total_cmp(&time[b]));

    // Walk the time groups from the latest down; `later` holds every sample with a larger time.
    let mut later = Fenwick::new(n);
    let (mut concordant, mut discordant, mut tied_risk, mut tied_time) = (0u64, 0u64, 0u64, 0u64);
    let mut end = n;
    while end > 0 {
        let t = time[by_time[end - 1]];
        let mut start = end - 1;
        while start > 0 && time[by_time[start - 1]] == t {
            start -= 1;
        }
        let group = &by_time[start..end];
        // A censoring at the same time as an event counts as surviving longer.
        let censored_here = group.iter().filter(|&&i| !event[i]).count() as u64;
        for &i in group.iter().filter(|&&i| !event[i]) {
            later.add(rank[i]);
        }
        for &i in group.iter().filter(|&&i| event[i]) {
            let r = risk[i];
            let is_tie = |v: f64| (v - r).abs() <= TIED_TOL;
            // Ranks [0, lo) have lower risk (concordant), [hi, n) higher (discordant).
            let lo = sorted_risk.partition_point(|&v| v < r && !is_tie(v));
            let hi = sorted_risk.partition_point(|&v| v <= r || is_tie(v));
            let below = later.prefix(lo);
            let up_to_hi = later.prefix(hi);
            concordant += below;
            tied_risk += up_to_hi - below;
            discordant += later.total() - up_to_hi;
            tied_time += censored_here;
        }
        for &i in group.iter().filter(|&&i| event[i]) {
            later.add(rank[i]);
        }
        end = start;
    }

    let comparable = concordant + discordant + tied_risk;
    if comparable == 0 {
        return Err(StatsError::NoComparablePairs);
    }
    Ok(Concordance {
        c_index: (concordant as f64 + 0.5 * tied_risk as f64) / comparable as f64,
        concordant,
        discordant,
        tied_risk,
        tied_time,
    })
}

/// Counts of inserted positions, with prefix sums in O(log n).
struct Fenwick {
    tree: Vec<u64>,
    total: u64,
}

impl Fenwick {
    fn new(n: usize) -> Self {
        Self {
            tree: vec![0; n + 1],
            total: 0,
        }
    }

    fn add(&mut self, position: usize) {
        self.total += 1;
        let mut k = position + 1;
        while k < self.tree.len() {
            self.tree[k] += 1;
            k += k & k.wrapping_neg();
        }
    }

    /// Number of inserted positions < `end`.
    fn prefix(&self, end: usize) -> u64 {
        let mut sum = 0;
        let mut k = end;
        while k > 0 {
            sum += self.tree[k];
            k -= k & k.wrapping_neg();
        }
        sum
    }

    fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct O(n²) transcription of scikit-survival's pair rules, for cross-checking.
    fn brute_force(time: &[f64], event: &[bool], risk: &[f64]) -> (u64, u64, u64, u64) {
        let (mut con, mut dis, mut tie, mut tt) = (0, 0, 0, 0);
        for i in 0..time.len() {
            if !event[i] {
                continue;
            }
            for j in 0..time.len() {
                let comparable = time[j] > time[i] || (time[j] == time[i] && !event[j]);
                if !comparable {
                    continue;
                }
                if time[j] == time[i] {
                    tt += 1;
                }
                if (risk[j] - risk[i]).abs() <= TIED_TOL {
                    tie += 1;
                } else if risk[j] < risk[i] {
                    con += 1;
                } else {
                    dis += 1;
                }
            }
        }
        (con, dis, tie, tt)
    }

    #[test]
    fn hand_computed_small_case() {
        // Times 1(event) 2(event) 3(censored) 3(event); risks 3, 2, 1, 1.
        // Event at 1: vs 2, 3c, 3 → risk 3 beats 2, 1, 1: 3 concordant.
        // Event at 2: vs 3c, 3 → risk 2 beats 1, 1: 2 concordant.
        // Event at 3: vs 3c (censored, same time) → tie in risk, tied time.
        let c = concordance_index(
            &[1.0, 2.0, 3.0, 3.0],
            &[true, true, false, true],
            &[3.0, 2.0, 1.0, 1.0],
        )
        .unwrap();
        assert_eq!(
            (c.concordant, c.discordant, c.tied_risk, c.tied_time),
            (5, 0, 1, 1)
        );
        assert!((c.c_index - 5.5 / 6.0).abs() < 1e-15);
    }

    #[test]
    fn agrees_with_pairwise_rules_on_ties() {
        // Pseudo-random data with many ties in time and in risk (including near-ties within tol).
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as f64 / (1u64 << 31) as f64
        };
        for _ in 0..20 {
            let n = 60;
            let time: Vec<f64> = (0..n).map(|_| (next() * 8.0).floor()).collect();
            let event: Vec<bool> = (0..n).map(|_| next() < 0.6).collect();
            let risk: Vec<f64> = (0..n)
                .map(|_| (next() * 5.0).floor() + if next() < 0.2 { 5e-9 } else { 0.0 })
                .collect();
            if !event.iter().any(|&e| e) {
                continue;
            }
            let c = concordance_index(&time, &event, &risk).unwrap();
            assert_eq!(
                (c.concordant, c.discordant, c.tied_risk, c.tied_time),
                brute_force(&time, &event, &risk)
            );
        }
    }

    #[test]
    fn undefined_cases_are_errors() {
        assert_eq!(
            concordance_index(&[1.0, 2.0], &[false, false], &[1.0, 2.0]),
            Err(StatsError::AllCensored)
        );
        // The only event is the last time: nobody outlives it.
        assert_eq!(
            concordance_index(&[1.0, 2.0], &[false, true], &[1.0, 2.0]),
            Err(StatsError::NoComparablePairs)
        );
        assert_eq!(
            concordance_index(&[5.0], &[true], &[0.3]),
            Err(StatsError::NoComparablePairs)
        );
        assert!(matches!(
            concordance_index(&[1.0, 2.0], &[true, true], &[f64::NAN, 1.0]),
            Err(StatsError::NotFinite {
                what: "risk",
                index: 0,
                ..
            })
        ));
        assert_eq!(concordance_index(&[], &[], &[]), Err(StatsError::Empty));
    }
}
