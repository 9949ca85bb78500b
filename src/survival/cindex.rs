//! Harrell's concordance index with scikit-survival's `concordance_index_censored` conventions,
//! in O(n log n): samples visited from the latest time down, earlier-lived ones counted by risk
//! rank in a bit set with a Fenwick tree over its blocks.

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
    let (mut concordant, mut discordant, mut tied_risk, mut tied_time) = (0u64, 0u64, 0u64, 0u64);
    for_each_event(time, event, risk, |pairs| {
        concordant += pairs.lower;
        tied_risk += pairs.tied;
        discordant += pairs.higher;
        tied_time += pairs.tied_time;
    })?;
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

/// The comparable pairs of one event sample (the pairs in which it is the earlier one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct EventPairs {
    /// The event's time.
    pub time: f64,
    /// Comparable samples with a lower risk (concordant pairs).
    pub lower: u64,
    /// Comparable samples whose risk is within [`TIED_TOL`].
    pub tied: u64,
    /// Comparable samples with a higher risk (discordant pairs).
    pub higher: u64,
    /// Comparable samples censored at the same time.
    pub tied_time: u64,
}

/// Checks the inputs as [`concordance_index`] does, then calls `visit` once per event sample
/// with its comparable pairs, from the latest time down. Uno's C reuses this walk with a weight
/// per event time.
pub(crate) fn for_each_event(
    time: &[f64],
    event: &[bool],
    risk: &[f64],
    mut visit: impl FnMut(EventPairs),
) -> Result<(), StatsError> {
    check_survival(time, event)?;
    check_finite("risk", risk, time.len())?;
    if !event.iter().any(|&e| e) {
        return Err(StatsError::AllCensored);
    }
    let n = time.len();

    // Every step below is a linear pass or a stable radix sort, so memory is read in order:
    // at a million samples, random access (not the comparisons) is what costs.
    let mut samples: Vec<(f64, f64, bool)> = (0..n).map(|i| (time[i], risk[i], event[i])).collect();
    radsort::sort_by_key(&mut samples, |s| s.0);
    let ranked = rank_with_tie_windows(&samples);

    // Walk the time groups from the latest down; `later` holds every sample with a larger time.
    let mut later = RankSet::new(n);
    let mut end = n;
    while end > 0 {
        let t = samples[end - 1].0;
        let mut start = end - 1;
        while start > 0 && samples[start - 1].0 == t {
            start -= 1;
        }
        let group = start..end;
        let is_event = |k: &usize| samples[*k].2;
        // A censoring at the same time as an event counts as surviving longer.
        let censored_here = group.clone().filter(|k| !is_event(k)).count() as u64;
        for k in group.clone().filter(|k| !is_event(k)) {
            later.insert(ranked[k].rank);
        }
        for k in group.clone().filter(is_event) {
            let lower = later.count_below(ranked[k].below);
            let lower_or_tied = later.count_below(ranked[k].up_to);
            visit(EventPairs {
                time: t,
                lower,
                tied: lower_or_tied - lower,
                higher: later.len() - lower_or_tied,
                tied_time: censored_here,
            });
        }
        for k in group.filter(is_event) {
            later.insert(ranked[k].rank);
        }
        end = start;
    }
    Ok(())
}

/// A sample's risk rank and tie window.
#[derive(Debug, Clone, Copy, Default)]
struct Ranked {
    /// Position in the risk-sorted order.
    rank: u32,
    /// Ranks `[0, below)` have a risk lower by more than [`TIED_TOL`], `[below, up_to)` are tied
    /// with this one (|Δ| ≤ tol, scikit-survival's test), the rest are higher.
    below: u32,
    up_to: u32,
}

/// Ranks and tie windows of time-sorted `samples` (time, risk, event), in the same order.
/// Both window ends only move forward along the sorted risks, so two pointers find them in
/// O(n); radix sorts carry the results back to time order without random access.
fn rank_with_tie_windows(samples: &[(f64, f64, bool)]) -> Vec<Ranked> {
    let n = samples.len();
    let mut by_risk: Vec<(f64, u32)> = samples
        .iter()
        .enumerate()
        .map(|(k, s)| (s.1, k as u32))
        .collect();
    radsort::sort_by_key(&mut by_risk, |p| p.0);
    let mut windows: Vec<(u32, Ranked)> = Vec::with_capacity(n);
    let (mut lo, mut hi) = (0usize, 0usize);
    for (p, &(r, k)) in by_risk.iter().enumerate() {
        let is_tie = |v: f64| (v - r).abs() <= TIED_TOL;
        while lo < n && by_risk[lo].0 < r && !is_tie(by_risk[lo].0) {
            lo += 1;
        }
        while hi < n && (by_risk[hi].0 <= r || is_tie(by_risk[hi].0)) {
            hi += 1;
        }
        let ranked = Ranked {
            rank: p as u32,
            below: lo as u32,
            up_to: hi as u32,
        };
        windows.push((k, ranked));
    }
    radsort::sort_by_key(&mut windows, |w| w.0);
    windows.into_iter().map(|(_, ranked)| ranked).collect()
}

/// The set of inserted rank positions (each inserted at most once), with prefix counts in
/// O(log n): one bit per position plus a Fenwick tree over blocks of 512 bits. For a million
/// samples that is 133 kB, small enough to stay in cache while the positions arrive in random
/// order, which a plain Fenwick tree of counts (4 MB) does not.
struct RankSet {
    bits: Vec<u64>,
    blocks: Vec<u32>,
    total: u64,
}

const WORDS_PER_BLOCK: usize = 8;
const BITS_PER_BLOCK: usize = 64 * WORDS_PER_BLOCK;

impl RankSet {
    fn new(n: usize) -> Self {
        let words = n.div_ceil(64).next_multiple_of(WORDS_PER_BLOCK);
        Self {
            bits: vec![0; words],
            blocks: vec![0; words / WORDS_PER_BLOCK + 1],
            total: 0,
        }
    }

    fn insert(&mut self, position: u32) {
        let position = position as usize;
        self.bits[position / 64] |= 1 << (position % 64);
        self.total += 1;
        let mut k = position / BITS_PER_BLOCK + 1;
        while k < self.blocks.len() {
            self.blocks[k] += 1;
            k += k & k.wrapping_neg();
        }
    }

    /// Number of inserted positions < `end`.
    fn count_below(&self, end: u32) -> u64 {
        let end = end as usize;
        let block = end / BITS_PER_BLOCK;
        let mut sum = 0u64;
        let mut k = block;
        while k > 0 {
            sum += u64::from(self.blocks[k]);
            k -= k & k.wrapping_neg();
        }
        let word = end / 64;
        for w in &self.bits[block * WORDS_PER_BLOCK..word] {
            sum += u64::from(w.count_ones());
        }
        let partial = end % 64;
        if partial > 0 {
            sum += u64::from((self.bits[word] & ((1u64 << partial) - 1)).count_ones());
        }
        sum
    }

    fn len(&self) -> u64 {
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
