//! The command line as a user meets it: exit codes, one-line errors, help.

use crate::fixture::{self, init, ok, run};

fn fails_with(args: &[&str], code: i32, needle: &str) {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "{args:?} should fail in one line: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_paths_and_queries_fail_in_one_line_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("g");
    let r = root.to_str().unwrap();
    fails_with(
        &["ingest", r, "/nonexistent/src"],
        2,
        "no such file or directory",
    );
    fails_with(
        &["ingest", "/nonexistent/root", dir.path().to_str().unwrap()],
        2,
        "not a granary",
    );
    fails_with(
        &["sql", "/nonexistent/root", "SELECT 1"],
        2,
        "not a granary",
    );
    init(&root);
    fails_with(&["init", r], 2, "already exists");
    fails_with(&["sql", r, "SELEC oops"], 2, "error:");
    fails_with(&["sql", r, "SELECT nope FROM samples"], 2, "nope");
    fails_with(
        &["sql", r, "SELECT * FROM missing_table"],
        2,
        "missing_table",
    );
    fails_with(&["sql", r, "DROP TABLE samples"], 2, "read-only");
    fails_with(
        &["synth", dir.path().to_str().unwrap(), "--skew", "blob=0.5"],
        2,
        "unknown shape",
    );
    // An empty source is an error, not a silent success.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    fails_with(
        &["ingest", r, empty.to_str().unwrap()],
        2,
        "no samples found",
    );
}

#[test]
fn help_explains_every_command() {
    let help = ok(&["--help"]);
    for cmd in [
        "init", "ingest", "synth", "sql", "info", "compact", "curate", "plan", "ckpt", "demo",
    ] {
        assert!(help.contains(cmd), "{help}");
    }
    let ingest = ok(&["ingest", "--help"]);
    assert!(
        ingest.contains("Idempotent") && ingest.contains("--format"),
        "{ingest}"
    );
}

#[test]
fn info_reports_tables_rows_and_schema() {
    let dir = fixture::source(12, 0, 7);
    let root = dir.path().join("g");
    init(&root);
    ok(&[
        "ingest",
        root.to_str().unwrap(),
        fixture::src(&dir).to_str().unwrap(),
    ]);
    let lines: Vec<serde_json::Value> = ok(&["info", root.to_str().unwrap(), "--format", "json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let samples = lines
        .iter()
        .find(|l| l["table"] == "samples")
        .expect("samples table");
    assert_eq!(samples["rows"], 12);
    assert!(samples["size_bytes"].as_u64().unwrap() > 10_000);
    let fields: Vec<&str> = samples["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for f in [
        "id",
        "bytes",
        "captions",
        "defects",
        "embedding",
        "width",
        "frames",
    ] {
        assert!(fields.contains(&f), "{fields:?}");
    }
    assert!(lines.iter().any(|l| l["table"] == "ingest_errors"));
}

#[test]
fn synth_is_deterministic() {
    let a = fixture::source(20, 1, 9);
    let b = fixture::source(20, 1, 9);
    let fa = fixture::files(
        &fixture::src(&a),
        &["jpg", "png", "webp", "mp4", "json", "txt"],
    );
    let fb = fixture::files(
        &fixture::src(&b),
        &["jpg", "png", "webp", "mp4", "json", "txt"],
    );
    assert_eq!(fa.len(), 63);
    for (x, y) in fa.iter().zip(&fb) {
        assert_eq!(
            std::fs::read(x).unwrap(),
            std::fs::read(y).unwrap(),
            "{x:?}"
        );
    }
}
