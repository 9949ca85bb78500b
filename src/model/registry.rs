//! The survival models `fit` and `predict` can build, by `model.architecture` name.
//!
//! To add a model: write `src/model/<name>.rs` with a type implementing
//! [`SurvivalModel`](super::SurvivalModel) and a `pub static ENTRY: ModelEntry`, add one line
//! to [`MODELS`], and prove it against its released code in `tests/it/parity.rs` (a fixture
//! made by running the official class on deterministic weights). Training, model selection,
//! checkpoints and `predict` use the trait only.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tch::nn;

use super::{
    abmil, ccl, clam, cmta, hdmoe, ld_cvae, mcat, mil, mome, motcat, pibd, snn, snn_trans,
    survpath, transmil,
};
use super::{GenomicsInput, ModelSpec, SurvivalModel};
use crate::config::Modality;

/// One model: its name in the configuration, what it needs, how to build it.
pub struct ModelEntry {
    /// `model.architecture` value.
    pub name: &'static str,
    /// The released code it reproduces (repository, file, class).
    pub official: &'static str,
    /// How it reads genomics (the six groups, or every gene column once).
    pub genomics: GenomicsInput,
    /// Whether it takes these modalities; the message says what it takes.
    pub accepts: fn(&[Modality]) -> Result<(), String>,
    /// Builds it under `vs` with parameters named as its released code names them.
    pub build: fn(&nn::Path, ModelSpec) -> Box<dyn SurvivalModel>,
}

/// Every model this build has.
pub static MODELS: &[&ModelEntry] = &[
    &mil::MAX_ENTRY,
    &mil::MEAN_ENTRY,
    &abmil::ENTRY,
    &clam::SB_ENTRY,
    &clam::MB_ENTRY,
    &transmil::ENTRY,
    &snn::ENTRY,
    &snn_trans::ENTRY,
    &mcat::ENTRY,
    &motcat::ENTRY,
    &cmta::ENTRY,
    &survpath::ENTRY,
    &mome::ENTRY,
    &ccl::ENTRY,
    &pibd::ENTRY,
    &ld_cvae::ENTRY,
    &hdmoe::ENTRY,
];

/// A registered model, as `model.architecture` names it.
#[derive(Clone, Copy)]
pub struct Architecture(pub &'static ModelEntry);

impl Architecture {
    pub const HDMOE: Architecture = Architecture(&hdmoe::ENTRY);
    pub const SNN: Architecture = Architecture(&snn::ENTRY);

    pub fn name(self) -> &'static str {
        self.0.name
    }

    pub fn entry(self) -> &'static ModelEntry {
        self.0
    }

    /// The model called `name`; the error lists the registered names.
    pub fn find(name: &str) -> Result<Self, String> {
        MODELS
            .iter()
            .find(|m| m.name == name)
            .map(|m| Architecture(m))
            .ok_or_else(|| {
                let names: Vec<&str> = MODELS.iter().map(|m| m.name).collect();
                format!(
                    "unknown model `{name}`; this build has {}",
                    names.join(", ")
                )
            })
    }
}

impl PartialEq for Architecture {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for Architecture {}

impl fmt::Debug for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name)
    }
}

impl Serialize for Architecture {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.name)
    }
}

impl<'de> Deserialize<'de> for Architecture {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Architecture::find(&name).map_err(serde::de::Error::custom)
    }
}

/// Builds the model `spec.architecture` names.
pub fn build(vs: &nn::Path, spec: ModelSpec) -> Box<dyn SurvivalModel> {
    (spec.architecture.0.build)(vs, spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for m in MODELS {
            assert_eq!(Architecture::find(m.name).unwrap().name(), m.name);
            assert_eq!(MODELS.iter().filter(|n| n.name == m.name).count(), 1);
        }
        let e = Architecture::find("mcat_v2").unwrap_err();
        assert!(e.contains("unknown model `mcat_v2`"), "{e}");
        assert!(e.contains("maxmil, meanmil, abmil"), "{e}");
    }
}
