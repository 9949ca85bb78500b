//! The encoders this build has, by the name the configuration uses: patch (2-D) encoders for
//! `features.encoder`, volume (3-D) encoders for `mri.encoder`. The two are separate kinds, so
//! a configuration cannot put one where the other belongs; each entry carries its name, output
//! width, input size, normalisation, the state dict it loads and its builder (as TRIDENT's
//! `encoder_registry`, one class per encoder carrying its own preprocessing).
//!
//! To add an encoder: write its network (`src/encode/<name>.rs`, parameters named as its
//! released state dict names them) with a `pub static` [`PatchEncoder`] or [`VolumeEncoder`]
//! beside it, add one line to [`PATCH_ENCODERS`] or [`VOLUME_ENCODERS`], and prove it against
//! the official implementation in `tests/it/encoders.rs` (a float64 reference made by running it
//! on deterministic weights). The stages, the configuration and the cache stamps need nothing
//! else.

use std::fmt;
use std::ops::Deref;

use tch::nn;

use super::{resnet2d, resnet3d};

/// A network mapping an image or a volume to one feature vector.
pub struct Network {
    /// The configuration's name, stamped into every output.
    pub name: &'static str,
    pub feature_dim: i64,
    /// The state dict it loads (by parameter name), for messages.
    pub weights: &'static str,
    /// Builds it under `vs` with the state dict's parameter names.
    pub build: fn(&nn::Path) -> nn::SequentialT,
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for Network {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// Per-channel normalisation of RGB in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub name: &'static str,
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

impl Normalization {
    /// The features' `normalization` stamp, e.g.
    /// `imagenet mean=[0.485,0.456,0.406] std=[0.229,0.224,0.225]`.
    pub fn stamp(&self) -> String {
        let list = |v: &[f64; 3]| format!("[{},{},{}]", v[0], v[1], v[2]);
        format!(
            "{} mean={} std={}",
            self.name,
            list(&self.mean),
            list(&self.std)
        )
    }
}

/// torchvision's ImageNet statistics.
pub const IMAGENET: Normalization = Normalization {
    name: "imagenet",
    mean: [0.485, 0.456, 0.406],
    std: [0.229, 0.224, 0.225],
};

/// A patch encoder (`features.encoder`).
#[derive(Debug, PartialEq)]
pub struct PatchEncoder {
    pub network: Network,
    /// The input side it needs (a ViT's 224), or None when any side works (a ResNet's
    /// average pooling): then `features.resize`, else the patch size.
    pub input_size: Option<u32>,
    pub normalization: Normalization,
}

impl Deref for PatchEncoder {
    type Target = Network;

    fn deref(&self) -> &Network {
        &self.network
    }
}

/// How a volume encoder sees a prepared [z, y, x] crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeInput {
    /// One 3-channel clip [1, 3, z, y, x] (the crop repeated on the channels).
    Clip,
    /// The axial slices as a batch of 3-channel images [z, 3, y, x]; features averaged.
    AxialSlices,
}

/// A volume encoder (`mri.encoder`).
#[derive(Debug, PartialEq)]
pub struct VolumeEncoder {
    pub network: Network,
    pub input: VolumeInput,
}

impl Deref for VolumeEncoder {
    type Target = Network;

    fn deref(&self) -> &Network {
        &self.network
    }
}

/// Every patch encoder, first the default.
pub static PATCH_ENCODERS: &[&PatchEncoder] = &[&resnet2d::RESNET50_TRUNC, &resnet2d::RESNET50];

/// Every volume encoder, first the default.
pub static VOLUME_ENCODERS: &[&VolumeEncoder] = &[&resnet3d::R3D_18, &resnet2d::RESNET50_SLICES];

fn names<T: Deref<Target = Network>>(list: &[&T]) -> String {
    list.iter().map(|e| e.name).collect::<Vec<_>>().join(", ")
}

/// The patch encoder `name`; the error says what the name is instead.
pub fn patch_encoder(name: &str) -> Result<&'static PatchEncoder, String> {
    if let Some(e) = PATCH_ENCODERS.iter().find(|e| e.name == name) {
        return Ok(e);
    }
    if VOLUME_ENCODERS.iter().any(|e| e.name == name) {
        return Err(format!(
            "`{name}` is an MRI (volume) encoder, not a slide encoder; use {}",
            names(PATCH_ENCODERS)
        ));
    }
    Err(format!(
        "unknown slide encoder `{name}`; this build has {}",
        names(PATCH_ENCODERS)
    ))
}

/// The volume encoder `name`; the error says what the name is instead.
pub fn volume_encoder(name: &str) -> Result<&'static VolumeEncoder, String> {
    if let Some(e) = VOLUME_ENCODERS.iter().find(|e| e.name == name) {
        return Ok(e);
    }
    if PATCH_ENCODERS.iter().any(|e| e.name == name) {
        return Err(format!(
            "`{name}` is a slide encoder; use {}",
            names(VOLUME_ENCODERS).replacen(", ", " or ", 1)
        ));
    }
    Err(format!(
        "unknown MRI encoder `{name}`; this build has {}",
        names(VOLUME_ENCODERS)
    ))
}

/// `#[serde(with = "patch")]`: a patch encoder as its name.
pub mod patch {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::PatchEncoder;

    pub fn serialize<S: Serializer>(
        encoder: &&'static PatchEncoder,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(encoder.name)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<&'static PatchEncoder, D::Error> {
        let name = String::deserialize(deserializer)?;
        super::patch_encoder(&name).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "volume")]`: a volume encoder as its name.
pub mod volume {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::VolumeEncoder;

    pub fn serialize<S: Serializer>(
        encoder: &&'static VolumeEncoder,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(encoder.name)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<&'static VolumeEncoder, D::Error> {
        let name = String::deserialize(deserializer)?;
        super::volume_encoder(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_across_both_kinds() {
        let all: Vec<&str> = PATCH_ENCODERS
            .iter()
            .map(|e| e.name)
            .chain(VOLUME_ENCODERS.iter().map(|e| e.name))
            .collect();
        let unique: std::collections::BTreeSet<&str> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len(), "{all:?}");
    }

    #[test]
    fn a_name_of_the_other_kind_is_refused_with_what_it_is() {
        assert_eq!(patch_encoder("resnet50").unwrap().feature_dim, 2048);
        assert_eq!(volume_encoder("resnet3d_18").unwrap().feature_dim, 512);
        let e = volume_encoder("resnet50").unwrap_err();
        assert_eq!(
            e,
            "`resnet50` is a slide encoder; use resnet3d_18 or resnet50_slices"
        );
        let e = patch_encoder("resnet3d_18").unwrap_err();
        assert!(e.contains("MRI (volume) encoder"), "{e}");
        assert!(patch_encoder("uni")
            .unwrap_err()
            .contains("resnet50_trunc, resnet50"));
    }

    #[test]
    fn imagenet_stamp_is_the_one_caches_carry() {
        assert_eq!(
            IMAGENET.stamp(),
            "imagenet mean=[0.485,0.456,0.406] std=[0.229,0.224,0.225]"
        );
    }
}
