//! End-to-end tests across crates, one binary. They run the real command
//! line (`granary-e2e`, the same code as `granary`) as child processes on
//! synthetic sources made in temporary directories; nothing is downloaded.
//!
//! `GRANARY_SLOW_TESTS=1` runs the full-size variants (20k-sample sources).

mod ckpt;
mod cli;
mod curation;
mod fixture;
mod formats;
mod ingest;
mod lockfile;
