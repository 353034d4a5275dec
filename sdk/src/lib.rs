//! granary: the public facade over Granary's crates, and the home of the
//! `granary` command line (see `main.rs`).
//!
//! Architecture invariant: only this crate knows argv, stdout and exit
//! codes. Libraries below return typed errors; formatting data for people
//! (`output`) and generating fixture data (`synth`) live here.

pub mod ckpt;
pub mod cli;
pub mod curation;
pub mod output;
mod repl;
pub mod synth;

pub use granary_query as query;
pub use granary_storage as storage;
pub use granary_trainer as trainer;
