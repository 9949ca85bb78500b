//! hdmoe-pipe: from a cancer cohort's raw data to a trained HDMoE survival model and its
//! clinical tables. The map, top to bottom:
//!
//! ```text
//! stages      slide (tile) · features · genomics · mri · train (fit, predict) · report
//!             pipeline (`run`: every stage as a child process) · labels (`cohort`) · doctor
//!             compare (Table 2: every model on the same folds, tested against HDMoE)
//! contract    stage: StageOptions, decide (keep/make/refuse), Ledger (manifest rows, saves,
//!             progress), StageSummary (prints itself, exit 0/3/1), Outcome for every command
//! cache       cache: HDF5 written atomically, stamped with Parameters; atomic, shard, progress
//! registries  encode::registry (patch and volume encoders: one entry each)
//!             model::registry  (survival models behind the SurvivalModel trait)
//! support     config (the YAML schema, one validate() per section), cohort, survival
//!             (C-index, Kaplan–Meier, log-rank, t-tests), torch_rng, profile (step phases),
//!             kernels (the training kernels the speed work replaced, for the equality test),
//!             memory (keeps freed tensor pages mapped between training steps), omp (our CPU
//!             loops on libtorch's OpenMP team)
//! ```
//!
//! `main.rs` only parses arguments and dispatches to a stage's `run`; each module's header says
//! how to extend it (a stage: `stage`; an encoder: `encode::registry`; a model:
//! `model::registry`; a configuration key: `config`).

pub mod atomic;
pub mod cache;
pub mod cohort;
pub mod compare;
pub mod config;
pub mod doctor;
pub mod encode;
pub mod features;
pub mod genomics;
pub mod kernels;
pub mod labels;
pub mod memory;
pub mod model;
pub mod mri;
pub mod omp;
pub mod pipeline;
pub mod profile;
pub mod progress;
pub mod report;
pub mod shard;
pub mod slide;
pub mod stage;
pub mod survival;
pub mod torch_rng;
pub mod train;

/// Version stamped into every output so readers can refuse mismatched caches.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
