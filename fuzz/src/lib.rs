//! Sluice's fuzzing entry points; see `entries.rs` and `../README.md`.
pub mod entries;
