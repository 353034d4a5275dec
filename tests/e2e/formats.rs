//! The same samples through `folder`, `webdataset` (tar shards made from the
//! folder) and `parquet` (Hugging Face's `struct{bytes, path}` image column)
//! give the same ids and rows.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, RecordBatch, StringArray, StructArray};
use arrow::datatypes::{DataType, Field, Fields, Schema};

use crate::fixture::{self, files, init, ok, run, sql};

/// Tar shards in WebDataset layout: members `images/000001.jpg`, `.txt`, `.json`, adjacent per key.
fn make_shards(src: &Path, out: &Path, shards: usize) {
    std::fs::create_dir_all(out).unwrap();
    let media = files(src, &["jpg", "png", "webp", "mp4"]);
    let per = media.len().div_ceil(shards);
    for (k, chunk) in media.chunks(per).enumerate() {
        let f = std::fs::File::create(out.join(format!("shard-{k:04}.tar"))).unwrap();
        let mut tar = tar::Builder::new(f);
        for m in chunk {
            for p in [m.clone(), m.with_extension("txt"), m.with_extension("json")] {
                if p.exists() {
                    let name = p.strip_prefix(src).unwrap();
                    tar.append_path_with_name(&p, name).unwrap();
                }
            }
        }
        tar.finish().unwrap();
    }
}

/// One Parquet file: `image: struct{bytes, path}`, `caption`, `meta` (the JSON sidecar).
fn make_parquet(src: &Path, out: &Path) {
    let media = files(src, &["jpg", "png", "webp", "mp4"]);
    let read_opt = |p: &Path| std::fs::read_to_string(p).ok();
    let bytes: Vec<Vec<u8>> = media.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let paths: Vec<String> = media
        .iter()
        .map(|p| p.strip_prefix(src).unwrap().to_string_lossy().into_owned())
        .collect();
    let captions: Vec<Option<String>> = media
        .iter()
        .map(|p| read_opt(&p.with_extension("txt")))
        .collect();
    let metas: Vec<Option<String>> = media
        .iter()
        .map(|p| read_opt(&p.with_extension("json")))
        .collect();
    let image_fields = Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]);
    let image = StructArray::new(
        image_fields.clone(),
        vec![
            Arc::new(BinaryArray::from_iter_values(bytes.iter())) as ArrayRef,
            Arc::new(StringArray::from_iter_values(paths.iter())),
        ],
        None,
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new("image", DataType::Struct(image_fields), true),
        Field::new("caption", DataType::Utf8, true),
        Field::new("meta", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(image),
            Arc::new(StringArray::from(captions)),
            Arc::new(StringArray::from(metas)),
        ],
    )
    .unwrap();
    write_parquet(out, &batch);
}

fn write_parquet(path: &Path, batch: &RecordBatch) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

const ROWS: &str = "SELECT id, key, media, format, content_hash, size_bytes, width, height, frames, fps, \
    duration_s, captions, source, aesthetic, ocr_ratio, motion, defects, embedding FROM samples ORDER BY id";

#[test]
fn folder_webdataset_and_parquet_give_the_same_rows() {
    let n = if fixture::slow() { 20_000 } else { 1_000 };
    let dir = fixture::source(n, 3, 5);
    let src = fixture::src(&dir);
    let shards = dir.path().join("shards");
    make_shards(&src, &shards, 3);
    let pq = dir.path().join("data.parquet");
    make_parquet(&src, &pq);

    let mut results = Vec::new();
    for (name, path, extra) in [
        ("folder", &src, vec![]),
        ("webdataset", &shards, vec!["--format", "webdataset"]),
        (
            "parquet",
            &pq,
            vec!["--format", "parquet", "--meta-column", "meta"],
        ),
    ] {
        let root = dir.path().join(format!("g-{name}"));
        init(&root);
        let mut args = vec!["ingest", root.to_str().unwrap(), path.to_str().unwrap()];
        args.extend(extra);
        let out = ok(&args);
        assert!(
            out.contains(&format!("{} new samples", n + 3)),
            "{name}: {out}"
        );
        results.push((name, sql(&root, ROWS)));
    }
    let (_, folder) = &results[0];
    assert_eq!(folder.len(), n + 3);
    assert!(
        folder
            .iter()
            .all(|r| r["captions"].as_array().is_some_and(|c| c.len() >= 3))
    );
    for (name, rows) in &results[1..] {
        assert_eq!(rows.len(), folder.len(), "{name}");
        for (a, b) in folder.iter().zip(rows) {
            assert_eq!(a, b, "{name} differs from folder");
        }
    }
}

#[test]
fn parquet_with_a_wrong_schema_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let pq = dir.path().join("bad.parquet");
    let schema = Arc::new(Schema::new(vec![Field::new("img", DataType::Utf8, true)]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec!["x"]))]).unwrap();
    write_parquet(&pq, &batch);
    let root = dir.path().join("g");
    init(&root);
    let out = run(&[
        "ingest",
        root.to_str().unwrap(),
        pq.to_str().unwrap(),
        "--format",
        "parquet",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no column \"image\"") && err.contains("columns: img"),
        "{err}"
    );
    // The image column exists but has the wrong type.
    let out = run(&[
        "ingest",
        root.to_str().unwrap(),
        pq.to_str().unwrap(),
        "--format",
        "parquet",
        "--image-column",
        "img",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected binary"));
}

#[test]
fn a_truncated_tar_shard_keeps_what_precedes_the_damage() {
    let dir = fixture::source(30, 0, 6);
    let src = fixture::src(&dir);
    let shards = dir.path().join("shards");
    make_shards(&src, &shards, 2);
    let first = shards.join("shard-0000.tar");
    let len = std::fs::metadata(&first).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&first)
        .unwrap();
    f.set_len(len / 2).unwrap();
    let root = dir.path().join("g");
    init(&root);
    let out = ok(&[
        "ingest",
        root.to_str().unwrap(),
        shards.to_str().unwrap(),
        "--format",
        "webdataset",
    ]);
    let got = fixture::count(&root, "SELECT count(*) AS n FROM samples");
    // The intact shard is whole; the damaged one contributes only whole samples before the cut.
    assert!((15..30).contains(&got), "{got}: {out}");
    let errs = sql(&root, "SELECT path, reason FROM ingest_errors");
    assert!(!errs.is_empty(), "{out}");
    assert!(
        errs.iter()
            .any(|e| e["path"].as_str().unwrap().contains("shard-0000.tar")),
        "{errs:?}"
    );
}
