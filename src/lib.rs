//! hdmoe-pipe: from a cancer cohort's raw data to a trained HDMoE survival model and its
//! clinical tables. Each stage is a module with a `run` function; the binary only parses
//! arguments and dispatches.

pub mod atomic;
pub mod cache;
pub mod cohort;
pub mod config;
pub mod doctor;
pub mod encode;
pub mod features;
pub mod genomics;
pub mod labels;
pub mod model;
pub mod mri;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod shard;
pub mod slide;
pub mod survival;
pub mod train;

/// Version stamped into every output so readers can refuse mismatched caches.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
