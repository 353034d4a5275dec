//! SQL UDFs, output formats, the shell, defect-aware curation and
//! dual-axis sampling plans, through the CLI on a synthetic granary.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::fixture::{self, count, init, ok, run, sql};

/// A granary of `n` skewed synthetic images (circle = 80%).
fn skewed_granary(n: usize, seed: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let opts = granary::synth::SynthOptions {
        n,
        videos: 2,
        seed,
        skew: granary::synth::parse_skew("circle=0.8").unwrap(),
        ..Default::default()
    };
    granary::synth::synth(&src, &opts, &|_| {}).unwrap();
    let root = dir.path().join("g");
    init(&root);
    ok(&["ingest", root.to_str().unwrap(), src.to_str().unwrap()]);
    (dir, root)
}

/// Union area of the defect boxes of every sidecar, computed here by
/// counting pixels, as the reference for `defect_area_ratio`.
fn sidecar_ratios(src: &Path) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for f in fixture::files(src, &["json"]) {
        let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        let Some(defects) = j["defects"].as_array() else {
            continue;
        };
        let img = fixture::files(f.parent().unwrap(), &["jpg", "png", "webp"])
            .into_iter()
            .find(|p| p.file_stem() == f.file_stem());
        let Some(img) = img else { continue };
        let (w, h) = image::image_dimensions(&img).unwrap();
        let mut covered = 0u64;
        for y in 0..h as i64 {
            for x in 0..w as i64 {
                if defects.iter().any(|d| {
                    let g = |k: &str| d[k].as_i64().unwrap();
                    g("x0") <= x && x < g("x1") && g("y0") <= y && y < g("y1")
                }) {
                    covered += 1;
                }
            }
        }
        let key = f.file_stem().unwrap().to_string_lossy().into_owned();
        out.push((key, covered as f64 / f64::from(w * h)));
    }
    out
}

#[test]
fn udfs_formats_and_shell() {
    let (dir, root) = skewed_granary(240, 3);
    let r = root.to_str().unwrap();
    // defect_area_ratio against a pixel count of every sidecar's boxes.
    let reference = sidecar_ratios(&dir.path().join("src"));
    assert!(reference.iter().filter(|(_, v)| *v > 0.0).count() > 20);
    let rows = sql(
        &root,
        "SELECT key, defect_area_ratio(defects, width, height) AS r FROM samples WHERE media = 'image'",
    );
    assert_eq!(rows.len(), reference.len());
    for (key, want) in &reference {
        let row = rows
            .iter()
            .find(|row| {
                let k = row["key"].as_str().unwrap();
                Path::new(k).file_stem().is_some_and(|s| s == key.as_str())
            })
            .unwrap_or_else(|| panic!("no row for {key}"));
        let got = row["r"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-9, "{key}: {got} vs {want}");
    }
    // aspect_bucket: the three synthetic canvases.
    let buckets = sql(
        &root,
        "SELECT aspect_bucket(width, height) AS b, count(*) AS n FROM samples WHERE media = 'image' GROUP BY 1 ORDER BY 1",
    );
    let names: Vec<&str> = buckets.iter().map(|b| b["b"].as_str().unwrap()).collect();
    assert_eq!(names, ["16:9", "1:1", "9:16"]);
    // caption() and blob_size() (from the blob descriptor, equal to the file size).
    assert_eq!(
        count(
            &root,
            "SELECT count(*) AS n FROM samples WHERE media = 'image' AND caption(captions, 'zh', 'short') LIKE '%背景%'"
        ),
        240
    );
    assert_eq!(
        count(
            &root,
            "SELECT count(*) AS n FROM samples WHERE blob_size(bytes) = size_bytes"
        ),
        242
    );
    // A wrong UDF call is a one-line plan error.
    let out = run(&["sql", r, "SELECT aspect_bucket(key, 1) FROM samples"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: aspect_bucket"));

    // Parquet and CSV to a file.
    let pq = dir.path().join("out.parquet");
    ok(&[
        "sql",
        r,
        "SELECT id, width, captions FROM samples",
        "--format",
        "parquet",
        "--out",
        pq.to_str().unwrap(),
    ]);
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&pq).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let n: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(n, 242);

    // Writes are refused unless --allow-write, which allows session-local views.
    let out = run(&["sql", r, "CREATE VIEW v AS SELECT 1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"));
    ok(&["sql", r, "CREATE VIEW v AS SELECT 1", "--allow-write"]);

    // The shell reads statements from a pipe: multi-line, errors go on.
    let mut child = Command::new(fixture::bin())
        .args(["sql", r, "--format", "csv"])
        .env("HOME", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SELECT count(*) AS n\n FROM samples;\nSELEC broken;\n\\d\nSELECT 41 + 1 AS answer;\n\\q\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("n\n242\n"), "{stdout}");
    assert!(stdout.contains("answer\n42\n"), "{stdout}");
    assert!(stdout.contains("samples ("), "{stdout}");
    assert!(stderr.contains("error:"), "{stderr}");
}

#[test]
fn curate_masks_small_defects_drops_large_ones_and_keeps_history() {
    let (dir, root) = skewed_granary(300, 5);
    let r = root.to_str().unwrap();
    let reference = sidecar_ratios(&dir.path().join("src"));
    let want_dropped = reference.iter().filter(|(_, v)| *v >= 0.2).count() as u64;
    let want_masked = reference
        .iter()
        .filter(|(_, v)| *v > 0.0 && *v < 0.2)
        .count() as u64;
    assert!(want_dropped > 0 && want_masked > 0);

    let before = count(&root, "SELECT count(*) AS n FROM samples");
    let dry: serde_json::Value =
        serde_json::from_str(ok(&["curate", r, "--dry-run", "--json"]).trim()).unwrap();
    assert_eq!(dry["version"], serde_json::Value::Null);
    let cols = sql(&root, "SELECT * FROM samples LIMIT 1");
    assert!(cols[0].get("keep").is_none(), "a dry run writes nothing");

    let rep: serde_json::Value = serde_json::from_str(ok(&["curate", r, "--json"]).trim()).unwrap();
    assert_eq!(rep["dropped"], want_dropped);
    assert_eq!(rep["kept_masked"], want_masked);
    assert_eq!(rep["dropped_by"]["defect_area"], want_dropped);
    assert_eq!(count(&root, "SELECT count(*) AS n FROM samples"), before);
    assert_eq!(
        count(
            &root,
            "SELECT count(*) AS n FROM samples WHERE keep = false"
        ),
        want_dropped
    );
    // The loss mask is the defect list of kept samples, null for dropped ones.
    assert_eq!(
        count(
            &root,
            "SELECT count(*) AS n FROM samples WHERE keep AND cardinality(loss_mask) > 0 \
             AND loss_mask = defects"
        ),
        want_masked
    );
    assert_eq!(
        count(
            &root,
            "SELECT count(*) AS n FROM samples WHERE NOT keep AND loss_mask IS NULL"
        ),
        want_dropped
    );
    let reasons = sql(
        &root,
        "SELECT drop_reason FROM samples WHERE NOT keep LIMIT 1",
    );
    assert!(
        reasons[0]["drop_reason"]
            .as_str()
            .unwrap()
            .contains("defect area")
    );

    // The version before curation is still readable and has no keep column.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let path = root.join("samples.lance");
        let ds = lance::Dataset::open(path.to_str().unwrap()).await.unwrap();
        let v = ds.version().version;
        let old = ds.checkout_version(v - 2).await.unwrap();
        assert!(old.schema().field("keep").is_none());
        assert_eq!(old.count_rows(None).await.unwrap() as u64, before);
    });

    // Stricter thresholds re-curate in place; a second ingest still appends.
    let rep: serde_json::Value = serde_json::from_str(
        ok(&[
            "curate",
            r,
            "--min-aesthetic",
            "5.5",
            "--min-side",
            "150",
            "--json",
        ])
        .trim(),
    )
    .unwrap();
    assert!(rep["dropped_by"]["aesthetic"].as_u64().unwrap() > 0);
    assert_eq!(rep["dropped_by"]["resolution"], 2, "the two 192x128 videos");
    let more = fixture::source(10, 0, 99);
    ok(&["ingest", r, fixture::src(&more).to_str().unwrap()]);
    assert_eq!(
        count(&root, "SELECT count(*) AS n FROM samples"),
        before + 10
    );
    assert_eq!(
        count(
            &root,
            "SELECT count(*) AS n FROM samples WHERE keep IS NULL"
        ),
        10
    );
    // Bad thresholds: one line, exit 2.
    let out = run(&["curate", r, "--max-defect-ratio", "1.5"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Plant NaN embeddings on `n` samples through the storage API.
fn plant_nan_embeddings(root: &Path, n: usize) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let g = granary_storage::Granary::open(root).await.unwrap();
        let ids: Vec<String> = sql(
            root,
            &format!("SELECT id FROM samples WHERE media = 'image' ORDER BY id LIMIT {n}"),
        )
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
        let dim = g.embedding_dim();
        let item = Arc::new(arrow::datatypes::Field::new(
            "item",
            arrow::datatypes::DataType::Float32,
            false,
        ));
        let values = arrow::array::Float32Array::from(vec![f32::NAN; n * dim]);
        let list = arrow::array::FixedSizeListArray::try_new(
            item.clone(),
            dim as i32,
            Arc::new(values),
            None,
        )
        .unwrap();
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Utf8, false),
            arrow::datatypes::Field::new(
                "embedding",
                arrow::datatypes::DataType::FixedSizeList(item, dim as i32),
                true,
            ),
        ]));
        let batch = arrow::array::RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(arrow::array::StringArray::from(ids)),
                Arc::new(list),
            ],
        )
        .unwrap();
        g.update_columns("samples", "id", schema, vec![batch])
            .await
            .unwrap();
    });
}

#[test]
fn plan_writes_weights_that_flatten_the_skew_and_refuses_bad_input() {
    let (dir, root) = skewed_granary(600, 11);
    let r = root.to_str().unwrap();
    plant_nan_embeddings(&root, 7);
    let plot = dir.path().join("plan.png");
    let rep: serde_json::Value = serde_json::from_str(
        ok(&[
            "plan",
            r,
            "--name",
            "p1",
            "--tau",
            "0.5",
            "--visual-k",
            "6",
            "--semantic-k",
            "6",
            "--where",
            "media = 'image'",
            "--plot",
            plot.to_str().unwrap(),
            "--json",
        ])
        .trim(),
    )
    .unwrap();
    assert_eq!(rep["skipped_nan"], 7);
    assert_eq!(rep["samples"], 593);
    assert!(rep["ipf_converged"].as_bool().unwrap(), "{rep}");
    for axis in ["visual", "semantic"] {
        let a = &rep[axis];
        assert!(
            a["entropy_after"].as_f64().unwrap() > a["entropy_before"].as_f64().unwrap(),
            "{axis}: {a}"
        );
        for c in a["clusters"].as_array().unwrap() {
            let (after, target) = (c["after"].as_f64().unwrap(), c["target"].as_f64().unwrap());
            assert!((after - target).abs() < 0.01, "{axis}: {c}");
        }
    }
    let img = image::open(&plot).unwrap();
    assert!(img.width() >= 800 && img.height() >= 600);

    assert_eq!(
        count(
            &root,
            "SELECT count(*) AS n FROM sampling_plans WHERE plan = 'p1'"
        ),
        593
    );
    // Every planned id is a sample; weights are positive with mean 1.
    let j = sql(
        &root,
        "SELECT count(*) AS n, min(p.weight) AS lo, avg(p.weight) AS mean FROM sampling_plans p \
         JOIN samples s ON s.id = p.sample_id WHERE p.plan = 'p1'",
    );
    assert_eq!(j[0]["n"], 593);
    assert!(j[0]["lo"].as_f64().unwrap() > 0.0);
    assert!((j[0]["mean"].as_f64().unwrap() - 1.0).abs() < 1e-6);

    // An existing name is refused without --replace, and nothing is written.
    let version = |root: &Path| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let p = root.join("sampling_plans.lance");
            lance::Dataset::open(p.to_str().unwrap())
                .await
                .unwrap()
                .version()
                .version
        })
    };
    let v = version(&root);
    let out = run(&["plan", r, "--name", "p1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(version(&root), v);
    // --replace swaps the rows in one commit (not appended twice).
    ok(&[
        "plan",
        r,
        "--name",
        "p1",
        "--replace",
        "--tau",
        "0",
        "--visual-k",
        "4",
        "--semantic-k",
        "4",
    ]);
    assert_eq!(version(&root), v + 1);
    assert_eq!(
        count(
            &root,
            "SELECT count(*) AS n FROM sampling_plans WHERE plan = 'p1'"
        ),
        595
    );
    // Same seed, same plan.
    let args = [
        "plan",
        r,
        "--name",
        "p2",
        "--dry-run",
        "--json",
        "--seed",
        "3",
    ];
    let (a, b) = (ok(&args), ok(&args));
    let strip = |s: &str| {
        let mut v: serde_json::Value = serde_json::from_str(s.trim()).unwrap();
        v.as_object_mut().unwrap().remove("timings");
        v
    };
    assert_eq!(strip(&a), strip(&b));
    // As tau falls, the tail clusters gain mass (clusters do not depend on tau).
    let tail_mass = |tau: &str| {
        let out = ok(&[
            "plan",
            r,
            "--name",
            "t",
            "--dry-run",
            "--json",
            "--tau",
            tau,
            "--visual-k",
            "6",
            "--semantic-k",
            "6",
        ]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let clusters = v["visual"]["clusters"].as_array().unwrap().clone();
        let smallest = clusters
            .iter()
            .min_by_key(|c| c["count"].as_u64().unwrap())
            .unwrap();
        (
            smallest["before"].as_f64().unwrap(),
            smallest["after"].as_f64().unwrap(),
        )
    };
    let (raw, at1) = tail_mass("1");
    let (_, at05) = tail_mass("0.5");
    let (_, at0) = tail_mass("0");
    assert!(
        (raw - at1).abs() < 1e-3,
        "tau 1 keeps the raw distribution: {raw} {at1}"
    );
    assert!(at1 < at05 && at05 < at0, "{at1} {at05} {at0}");
    // An empty selection and bad options: one line, exit 2, nothing written.
    let v = version(&root);
    for args in [
        vec!["plan", r, "--name", "e", "--where", "width > 100000"],
        vec!["plan", r, "--name", "e", "--tau", "1.5"],
        vec!["plan", r, "--name", "e", "--where", "nonsense_column = 1"],
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    assert_eq!(version(&root), v);
}

#[test]
fn plan_without_embeddings_computes_and_stores_pixel_descriptors() {
    let (_dir, root) = skewed_granary(120, 13);
    let r = root.to_str().unwrap();
    let rep: serde_json::Value = serde_json::from_str(
        ok(&[
            "plan",
            r,
            "--name",
            "px",
            "--visual-features",
            "builtin",
            "--visual-k",
            "4",
            "--semantic-k",
            "4",
            "--json",
        ])
        .trim(),
    )
    .unwrap();
    assert_eq!(rep["visual_source"], "built-in descriptor");
    // Images got a descriptor; the two videos did not and are skipped.
    assert_eq!(
        count(
            &root,
            "SELECT count(*) AS n FROM samples WHERE visual_descriptor IS NOT NULL"
        ),
        120
    );
    assert_eq!(rep["skipped_missing"], 2);
    assert_eq!(rep["samples"], 120);
}
