//! The integration tests, one module per area, linked once into a single binary (as ripgrep's
//! `tests/` is): libtorch, HDF5 and OpenSlide are linked one time instead of once per file.
//! Run one area with `cargo test --test it <module>::`, e.g. `cargo test --test it chaos::`.
//!
//! The modules share one process, so a test that seeds or draws from libtorch's global random
//! generator goes through the library's `torch_rng` lock, as the stages themselves do.

mod common;

mod bad_inputs;
mod chaos;
mod cli;
mod cohort;
mod compare;
mod encoders;
mod features;
mod fit;
mod fit_equality;
mod genomics;
mod gpu;
mod mri;
mod parity;
mod predict;
mod registries;

mod report;
mod state_dicts;
mod survival_metrics;
mod survival_reference;
mod tile;
mod zoo;
