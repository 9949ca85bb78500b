//! `--shard I/N`: which items of a stage this process handles, so a scheduler's job array can
//! split a cohort with no coordination beyond the shared cache directory.

use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole cohort.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Item `k` (in the stage's sorted item order) belongs to this shard.
    pub fn owns(&self, k: usize) -> bool {
        k % self.count == self.index
    }

    /// The stage's manifest name: `tile` for the whole cohort, `tile_shard0of3` for a shard
    /// (shards never share a manifest).
    pub fn manifest_name(&self, stage: &str) -> String {
        if *self == Shard::ALL {
            stage.to_owned()
        } else {
            format!("{stage}_shard{}of{}", self.index, self.count)
        }
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("shard {text:?}: expected I/N with 0 <= I < N (e.g. 0/3)");
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_items() {
        let shards: Vec<Shard> = ["0/3", "1/3", "2/3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        for k in 0..10 {
            assert_eq!(shards.iter().filter(|s| s.owns(k)).count(), 1);
        }
        assert!("3/3".parse::<Shard>().is_err());
        assert!("1".parse::<Shard>().is_err());
        assert!("0/0".parse::<Shard>().is_err());
        assert_eq!(Shard::ALL.manifest_name("tile"), "tile");
        assert_eq!(shards[1].manifest_name("mri"), "mri_shard1of3");
    }
}
