//! Shared test fixtures: synthetic sources, the CLI as a child process, SQL
//! through the CLI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use granary::synth::{SynthOptions, synth};

/// Full-size variants requested?
pub fn slow() -> bool {
    std::env::var_os("GRANARY_SLOW_TESTS").is_some_and(|v| v != "0")
}

/// A synthetic folder source with `n` images and `videos` clips.
pub fn source(n: usize, videos: usize, seed: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("src");
    let opts = SynthOptions {
        n,
        videos,
        seed,
        ..SynthOptions::default()
    };
    synth(&out, &opts, &|_| {}).expect("synth");
    dir
}

pub fn src(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("src")
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_granary-e2e")
}

/// Run the CLI to completion.
pub fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("spawn granary-e2e")
}

/// Run the CLI and insist on success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "granary {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// `granary init ROOT`.
pub fn init(root: &Path) {
    ok(&["init", root.to_str().unwrap()]);
}

/// Run SQL through the CLI, JSON Lines parsed.
pub fn sql(root: &Path, query: &str) -> Vec<serde_json::Value> {
    ok(&["sql", root.to_str().unwrap(), query, "--format", "json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// A single integer from `SELECT count(*) AS n …`.
pub fn count(root: &Path, query: &str) -> u64 {
    let rows = sql(root, query);
    assert_eq!(rows.len(), 1, "{query}: {rows:?}");
    rows[0]["n"]
        .as_u64()
        .unwrap_or_else(|| panic!("{query}: {rows:?}"))
}

/// Files of a folder source with one of the given extensions, sorted.
pub fn files(root: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| exts.iter().any(|e| x == *e)) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
