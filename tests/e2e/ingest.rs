//! Ingest through the CLI: counts, idempotence, bad input recorded in
//! `ingest_errors`, kill -9 at random moments, and the granary read back
//! as plain Lance.

use std::collections::BTreeSet;

use arrow::array::Array;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::fixture::{self, count, files, init, ok, run, sql};

#[test]
fn ingest_counts_sql_and_reingest_adds_nothing() {
    let dir = fixture::source(120, 4, 1);
    let src = fixture::src(&dir);
    let root = dir.path().join("g");
    init(&root);
    let (r, s) = (root.to_str().unwrap(), src.to_str().unwrap());
    let first = ok(&["ingest", r, s]);
    assert!(
        first.contains("124 new samples (120 images, 4 videos"),
        "{first}"
    );

    // Expected per-media averages from the files themselves, not from granary.
    let mut widths = Vec::new();
    for p in files(&src, &["jpg", "png", "webp"]) {
        let (w, _) = image::image_dimensions(&p).expect("decodable synthetic image");
        widths.push(f64::from(w));
    }
    assert_eq!(widths.len(), 120);
    let avg = widths.iter().sum::<f64>() / widths.len() as f64;
    let rows = sql(
        &root,
        "SELECT media, count(*) AS n, avg(width) AS w, min(height) AS h FROM samples GROUP BY media ORDER BY media",
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["media"], "image");
    assert_eq!(rows[0]["n"], 120);
    assert!(
        (rows[0]["w"].as_f64().unwrap() - avg).abs() < 1e-9,
        "{rows:?} vs {avg}"
    );
    assert_eq!(rows[1]["media"], "video");
    assert_eq!(rows[1]["n"], 4);
    assert_eq!(rows[1]["w"], 192.0);
    assert_eq!(rows[1]["h"], 128);

    // Video metadata comes from the container.
    let v = sql(
        &root,
        "SELECT frames, fps, duration_s FROM samples WHERE media = 'video'",
    );
    for row in &v {
        let frames = row["frames"].as_i64().unwrap();
        assert!((16..=48).contains(&frames), "{row}");
        assert!((row["fps"].as_f64().unwrap() - 12.0).abs() < 0.01, "{row}");
        let d = row["duration_s"].as_f64().unwrap();
        assert!((d - frames as f64 / 12.0).abs() < 0.01, "{row}");
    }

    let again = ok(&["ingest", r, s]);
    assert!(
        again.contains("0 new samples") && again.contains("124 already present"),
        "{again}"
    );
    assert_eq!(count(&root, "SELECT count(*) AS n FROM samples"), 124);
    assert_eq!(
        count(&root, "SELECT count(DISTINCT id) AS n FROM samples"),
        124
    );
    assert_eq!(count(&root, "SELECT count(*) AS n FROM ingest_errors"), 0);
}

/// Truncate a file to `keep` of its length.
fn truncate(p: &Path, keep: f64) {
    let bytes = std::fs::read(p).unwrap();
    std::fs::write(p, &bytes[..(bytes.len() as f64 * keep) as usize]).unwrap();
}

#[test]
fn corrupt_media_and_bad_sidecars_are_recorded_and_skipped() {
    let dir = fixture::source(160, 4, 2);
    let src = fixture::src(&dir);
    let by_ext = |e: &str| files(&src, &[e]);
    let (jpgs, pngs, webps, mp4s) = (by_ext("jpg"), by_ext("png"), by_ext("webp"), by_ext("mp4"));
    assert!(
        jpgs.len() >= 9 && pngs.len() >= 9 && webps.len() >= 7,
        "synth mix changed"
    );
    let mut planted = BTreeSet::new();
    let mut plant = |p: &Path| assert!(planted.insert(p.to_path_buf()), "planted twice: {p:?}");

    // 20 corrupt media files.
    for p in &jpgs[0..5] {
        truncate(p, 0.6);
        plant(p);
    }
    for p in &pngs[0..5] {
        truncate(p, 0.5);
        plant(p);
    }
    for p in &pngs[5..7] {
        // A flipped byte inside a chunk: PNG's CRC catches it.
        let mut b = std::fs::read(p).unwrap();
        let at = b.len() / 2;
        b[at] ^= 0x40;
        std::fs::write(p, b).unwrap();
        plant(p);
    }
    for p in &webps[0..3] {
        std::fs::write(p, b"RIFF\x10\x00\x00\x00WEBPVP8 garbage").unwrap();
        plant(p);
    }
    for p in &jpgs[5..8] {
        std::fs::write(p, b"").unwrap();
        plant(p);
    }
    for p in &mp4s[0..2] {
        truncate(p, 0.7);
        plant(p);
    }
    // 5 bad sidecars, on samples whose media is fine.
    let sidecar = |media: &Path, ext: &str| media.with_extension(ext);
    let bad_json: [&[u8]; 4] = [
        br#"{"aesthetic": "very high"}"#,
        b"{\"captions\": [",
        br#"{"embedding": [0.5, 0.5]}"#,
        br#"{"defects": [{"x0": 50, "y0": 10, "x1": 20, "y1": 30}]}"#,
    ];
    for (p, bad) in webps[3..7].iter().zip(bad_json) {
        std::fs::write(sidecar(p, "json"), bad).unwrap();
        plant(p);
    }
    std::fs::write(sidecar(&jpgs[8], "txt"), b"caption \xff\xfe not utf-8").unwrap();
    plant(&jpgs[8]);
    assert_eq!(planted.len(), 25);

    let root = dir.path().join("g");
    init(&root);
    let (r, s) = (root.to_str().unwrap(), src.to_str().unwrap());
    let out = ok(&["ingest", r, s]);
    assert!(
        out.contains("139 new samples") && out.contains("25 rejected"),
        "{out}"
    );
    let recorded: BTreeSet<_> = sql(&root, "SELECT path, reason FROM ingest_errors")
        .iter()
        .map(|row| Path::new(row["path"].as_str().unwrap()).to_path_buf())
        .collect();
    let planted: BTreeSet<_> = planted
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap())
        .collect();
    assert_eq!(recorded, planted);
    // Reasons name the damage.
    let reasons = sql(&root, "SELECT reason FROM ingest_errors");
    let text: String = reasons
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_owned() + "\n")
        .collect();
    for needle in [
        "truncated",
        "CRC mismatch",
        "empty file",
        "json sidecar",
        "not UTF-8",
        "mp4",
    ] {
        assert!(
            text.contains(needle),
            "no reason mentions {needle:?}:\n{text}"
        );
    }
    assert_eq!(count(&root, "SELECT count(*) AS n FROM samples"), 139);

    // Re-running records nothing twice.
    let again = ok(&["ingest", r, s]);
    assert!(
        again.contains("0 new samples") && again.contains("25 rejected"),
        "{again}"
    );
    assert_eq!(count(&root, "SELECT count(*) AS n FROM ingest_errors"), 25);
}

#[test]
fn ingest_killed_at_random_moments_resumes_exactly() {
    let (n, kills) = if fixture::slow() {
        (20_000, 12)
    } else {
        (20_000, 4)
    };
    let dir = fixture::source(n, 0, 3);
    let src = fixture::src(&dir);
    let root = dir.path().join("g");
    init(&root);
    let (r, s) = (root.to_str().unwrap(), src.to_str().unwrap());

    // Time one full run elsewhere to place kills inside a run's lifetime.
    let probe_root = dir.path().join("probe");
    init(&probe_root);
    let t = Instant::now();
    ok(&["ingest", probe_root.to_str().unwrap(), s, "--batch-mb", "1"]);
    let full = t.elapsed();

    let mut seed = 0x2545_F491_4F6C_DD1Du64 ^ std::process::id() as u64;
    let mut killed = 0;
    // A resumed run skips the ids already stored, so it is shorter than a
    // full one: a run that ends before its kill time sets the run length
    // the next delays are drawn from, and another attempt is made.
    let mut span = full;
    let mut attempts = 0;
    while killed < kills && attempts < 4 * kills {
        attempts += 1;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let frac = (seed % 1000) as f64 / 1000.0;
        let delay = span.mul_f64(0.05 + 0.9 * frac);
        let started = Instant::now();
        let mut child = Command::new(fixture::bin())
            .args(["ingest", r, s, "--batch-mb", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut ended = None;
        while started.elapsed() < delay {
            if child.try_wait().unwrap().is_some() {
                ended = Some(started.elapsed());
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        match ended {
            None if child.try_wait().unwrap().is_none() => {
                child.kill().unwrap(); // SIGKILL
                killed += 1;
                eprintln!("kill {attempts}: after {delay:?} (run length {span:?})");
            }
            _ => {
                span = ended.unwrap_or_else(|| started.elapsed());
                eprintln!(
                    "attempt {attempts}: the run ended after {span:?}, before its kill at {delay:?}"
                );
            }
        }
        child.wait().unwrap();
    }
    assert!(
        killed > 0,
        "no run was killed mid-way; the test proved nothing"
    );
    ok(&["ingest", r, s, "--batch-mb", "1"]);
    assert_eq!(count(&root, "SELECT count(*) AS n FROM samples"), n as u64);
    assert_eq!(
        count(&root, "SELECT count(DISTINCT id) AS n FROM samples"),
        n as u64
    );
    assert_eq!(
        count(&root, "SELECT count(DISTINCT key) AS n FROM samples"),
        n as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granary_is_plain_lance_and_blobs_read_back_byte_identical() {
    let dir = fixture::source(40, 2, 4);
    let src = fixture::src(&dir);
    let root = dir.path().join("g");
    init(&root);
    ok(&["ingest", root.to_str().unwrap(), src.to_str().unwrap()]);

    // Straight through the lance crate: no granary wrappers.
    let ds = lance::Dataset::open(root.join("samples.lance").to_str().unwrap())
        .await
        .unwrap();
    let meta = arrow::datatypes::Schema::from(ds.schema()).metadata;
    assert_eq!(
        meta.get("granary.schema_version").map(String::as_str),
        Some("1")
    );
    let ds = std::sync::Arc::new(ds);
    let batch = ds
        .scan()
        .project(&["key", "format"])
        .unwrap()
        .try_into_batch()
        .await
        .unwrap();
    let keys = batch
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap();
    let formats = batch
        .column(1)
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap();
    assert_eq!(keys.len(), 42);
    let indices: Vec<u64> = (0..keys.len() as u64).collect();
    let blobs = ds.take_blobs_by_indices(&indices, "bytes").await.unwrap();
    for (i, blob) in blobs.iter().enumerate() {
        let ext = match formats.value(i) {
            "jpeg" => "jpg",
            other => other,
        };
        let original = std::fs::read(src.join(format!("{}.{ext}", keys.value(i)))).unwrap();
        let stored = blob.as_ref().expect("non-null blob").read().await.unwrap();
        assert_eq!(
            stored.as_ref(),
            original.as_slice(),
            "blob of {}",
            keys.value(i)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_schema_version_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("g");
    init(&root);
    let mut ds = lance::Dataset::open(root.join("samples.lance").to_str().unwrap())
        .await
        .unwrap();
    ds.update_schema_metadata([("granary.schema_version", "999")])
        .await
        .unwrap();
    let out = run(&["info", root.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("schema version 999 is not supported"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Every sample's media bytes by id, read straight through the lance crate
/// at `version` (None: the latest).
async fn blobs_by_id(
    root: &Path,
    version: Option<u64>,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    let uri = root.join("samples.lance");
    let mut ds = lance::Dataset::open(uri.to_str().unwrap()).await.unwrap();
    if let Some(v) = version {
        ds = ds.checkout_version(v).await.unwrap();
    }
    let ds = std::sync::Arc::new(ds);
    let batch = ds
        .scan()
        .project(&["id"])
        .unwrap()
        .try_into_batch()
        .await
        .unwrap();
    let ids = batch
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap();
    let indices: Vec<u64> = (0..ids.len() as u64).collect();
    let blobs = ds.take_blobs_by_indices(&indices, "bytes").await.unwrap();
    let mut out = std::collections::BTreeMap::new();
    for (i, blob) in blobs.iter().enumerate() {
        let bytes = blob.as_ref().expect("non-null blob").read().await.unwrap();
        out.insert(ids.value(i).to_string(), bytes.to_vec());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_merges_fragments_and_keeps_every_row_blob_and_version() {
    // Three ingests, three fragments.
    let sources: Vec<_> = (5..8).map(|seed| fixture::source(20, 1, seed)).collect();
    let root = sources[0].path().join("g");
    init(&root);
    let r = root.to_str().unwrap();
    for dir in &sources {
        ok(&["ingest", r, fixture::src(dir).to_str().unwrap()]);
    }
    // A curation commit adds column files beside the ingest's fragments.
    ok(&["curate", r]);
    let info = |root: &str| -> serde_json::Value {
        ok(&["info", root, "--format", "json"])
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|t| t["table"] == "samples")
            .unwrap()
    };
    let before = info(r);
    let fragments = before["fragments"].as_u64().unwrap();
    assert!(
        fragments >= 3,
        "the ingest made {fragments} fragments; the test needs several"
    );
    let version = before["version"].as_u64().unwrap();
    // Every column but the blob descriptors (whose positions move), in id order.
    let all = "SELECT * EXCLUDE (bytes) FROM samples ORDER BY id";
    let rows = sql(&root, all);
    assert_eq!(rows.len(), 63);
    let blobs = blobs_by_id(&root, None).await;

    let out = ok(&["compact", r, "--json"]);
    let report: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let samples = report.iter().find(|t| t["table"] == "samples").unwrap();
    assert_eq!(samples["fragments_before"], fragments, "{out}");
    assert_eq!(samples["fragments_after"], 1, "{out}");
    assert_eq!(samples["rows"], 63, "{out}");
    assert_eq!(samples["version_before"], version, "{out}");
    let after = info(r);
    assert_eq!(after["fragments"], 1);
    assert!(after["version"].as_u64().unwrap() > version);
    assert_eq!(sql(&root, all), rows, "compaction changed a row");
    assert_eq!(blobs_by_id(&root, None).await, blobs);
    // The version before compaction still reads, from its own files.
    assert_eq!(blobs_by_id(&root, Some(version)).await, blobs);

    // Once merged, there is nothing left to do: no new version.
    let again = ok(&["compact", r]);
    assert!(
        again.contains("samples: 1 fragments, nothing to merge"),
        "{again}"
    );
    assert_eq!(info(r)["version"], after["version"]);
    let bad = run(&["compact", r, "--target-rows", "0"]);
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(info(r)["version"], after["version"]);
}
