//! `granary ckpt` end to end: SIGKILL during saves, corruption found by
//! `verify`, safetensors interop with Python, SQL over the index, gc.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use granary::storage::checkpoint::safetensors::read_header;
use xxhash_rust::xxh3::xxh3_64;

use crate::fixture::{self, ok, run};

/// A safetensors file of transformer-ish tensors, about `mb` MB, written
/// without Python.
fn write_model(path: &Path, mb: usize) {
    // The tensors below hold about 46·d² bytes.
    let d = ((mb.max(1) as f64 * 1e6 / 46.0).sqrt() as usize).next_multiple_of(8);
    let tensors: Vec<(String, &str, Vec<usize>, usize)> = vec![
        ("embed.weight".into(), "F32", vec![d * 4, d], 4),
        ("blocks.0.attn.qkv".into(), "BF16", vec![d, 3 * d + 5], 2),
        ("blocks.0.mlp.w1".into(), "F32", vec![d, 4 * d], 4),
        ("blocks.0.mlp.w2".into(), "F16", vec![4 * d, d], 2),
        ("blocks.0.norm.scale".into(), "F32", vec![d], 4),
        ("step".into(), "I64", vec![], 8),
    ];
    let mut header = serde_json::Map::new();
    let mut at = 0usize;
    for (name, dtype, shape, es) in &tensors {
        let n = shape.iter().product::<usize>() * es;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [at, at + n]}),
        );
        at += n;
    }
    let h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    let mut x = 0x1234_5678_9abc_def1u64;
    bytes.extend((0..at).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    std::fs::write(path, bytes).unwrap();
}

/// Tensor name → bytes of a safetensors file.
fn tensors_of(path: &Path) -> Vec<(String, String, Vec<u64>, Vec<u8>)> {
    let (entries, start) = read_header(path).unwrap();
    let data = std::fs::read(path).unwrap();
    let mut out: Vec<_> = entries
        .into_iter()
        .map(|e| {
            let b = data[(start + e.begin) as usize..(start + e.end) as usize].to_vec();
            (e.name, e.dtype.to_string(), e.shape, b)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn data_dirs(root: &Path) -> usize {
    std::fs::read_dir(root.join("data")).map_or(0, |r| r.count())
}

#[test]
fn save_killed_at_random_moments_leaves_latest_loadable_and_verified() {
    let trials = if fixture::slow() {
        200
    } else {
        std::env::var("GRANARY_CKPT_KILLS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20)
    };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.safetensors");
    write_model(&model, 24);
    let want = tensors_of(&model);
    let root = dir.path().join("ckpt");
    ok(&["ckpt", "import", p(&model), p(&root), "--step", "0"]);
    let t0 = Instant::now();
    ok(&["ckpt", "import", p(&model), p(&root), "--step", "1"]);
    let full = t0.elapsed();
    let mut interrupted = 0;
    for i in 0..trials {
        let step = (10 + i).to_string();
        let frac = (xxh3_64(&(i as u64).to_le_bytes()) % 1000) as f64 / 1000.0;
        let delay = full.mul_f64(frac * 1.1);
        let mut cmd = Command::new(fixture::bin());
        cmd.args(["ckpt", "import", p(&model), p(&root), "--step", &step])
            .env("RUST_LOG", "error");
        if i % 2 == 1 {
            cmd.env("GRANARY_IO", "pwrite");
        }
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            interrupted += 1;
        }
        child.wait().unwrap();
        // Whatever happened, `latest` verifies and loads bit-exactly.
        let v = ok(&["ckpt", "verify", p(&root)]);
        assert!(v.contains(": ok"), "trial {i}: {v}");
        let out = dir.path().join(format!("latest-{i}.safetensors"));
        ok(&["ckpt", "export", p(&root), "--out", p(&out)]);
        assert!(
            tensors_of(&out) == want,
            "trial {i}: latest differs from the saved model"
        );
        std::fs::remove_file(&out).unwrap();
        eprintln!("trial {i}: kill after {delay:?} (a full save takes {full:?})");
    }
    assert!(
        interrupted > 0,
        "no save was interrupted; the kill window missed"
    );
    // Every committed step verifies; then gc reclaims the partial saves.
    let listed = ok(&["ckpt", "list", p(&root), "--format", "csv"]);
    let steps: Vec<String> = listed
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    assert!(steps.len() >= 2, "{listed}");
    eprintln!(
        "{interrupted} of {trials} saves killed before exiting; {} steps committed in all",
        steps.len()
    );
    for s in &steps {
        ok(&["ckpt", "verify", p(&root), "--step", s]);
    }
    ok(&[
        "ckpt",
        "gc",
        p(&root),
        "--keep-last",
        "2",
        "--min-age-s",
        "0",
    ]);
    assert_eq!(
        data_dirs(&root),
        2,
        "gc leaves exactly the kept steps' files"
    );
    assert!(ok(&["ckpt", "verify", p(&root)]).contains(": ok"));
    let listed = ok(&["ckpt", "list", p(&root), "--format", "csv"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
}

fn latest_chunk_file(root: &Path) -> PathBuf {
    let rows = fixture::sql(
        root,
        "SELECT file FROM chunks WHERE fqn = 'blocks.0.mlp.w1'",
    );
    // The import commits one step, so the only row is the committed one.
    assert_eq!(rows.len(), 1, "{rows:?}");
    root.join(rows[0]["file"].as_str().unwrap())
}

#[test]
fn verify_names_tensor_and_file_for_a_flipped_byte_and_a_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.safetensors");
    write_model(&model, 2);
    let root = dir.path().join("ck");
    ok(&["ckpt", "import", p(&model), p(&root), "--step", "7"]);
    let file = latest_chunk_file(&root);
    let pristine = std::fs::read(&file).unwrap();
    let info = fixture::sql(
        &root,
        "SELECT byte_offset FROM chunks WHERE fqn = 'blocks.0.mlp.w1'",
    );
    let off = info[0]["byte_offset"].as_u64().unwrap() as usize;

    let mut bad = pristine.clone();
    bad[off + 100] ^= 0x01;
    std::fs::write(&file, &bad).unwrap();
    let out = run(&["ckpt", "verify", p(&root)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("blocks.0.mlp.w1") && text.contains("rank-0.bin"),
        "{text}"
    );
    let exp = run(&[
        "ckpt",
        "export",
        p(&root),
        "--out",
        p(&dir.path().join("x.safetensors")),
    ]);
    let err = String::from_utf8_lossy(&exp.stderr);
    assert_eq!(exp.status.code(), Some(2), "{err}");
    assert!(
        err.contains("blocks.0.mlp.w1") && err.contains("checksum"),
        "{err}"
    );

    std::fs::write(&file, &pristine[..pristine.len() / 2]).unwrap();
    let out = run(&["ckpt", "verify", p(&root)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("rank-0.bin") && text.contains("truncated"),
        "{text}"
    );
    std::fs::write(&file, &pristine).unwrap();
    assert!(ok(&["ckpt", "verify", p(&root)]).contains(": ok"));
    // Bad input is one clear line, exit 2.
    for args in [
        vec!["ckpt", "verify", p(&root), "--step", "8"],
        vec!["ckpt", "list", p(dir.path())],
        vec![
            "ckpt",
            "import",
            p(&root.join("CHECKPOINT.json")),
            p(&root),
            "--step",
            "9",
        ],
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

fn python_ok() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import safetensors, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var_os("GRANARY_REQUIRE_PYTHON").is_some() {
        panic!("GRANARY_REQUIRE_PYTHON is set but python3 cannot import safetensors and numpy");
    }
    ok
}

#[test]
fn safetensors_round_trip_with_python_and_sql_over_the_index() {
    if !python_ok() {
        eprintln!(
            "skipped: python3 with safetensors and numpy is not available (pip install safetensors numpy)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("py.safetensors"),
        dir.path().join("back.safetensors"),
    );
    let root = dir.path().join("ck");
    let py = |code: &str| {
        let out = Command::new("python3")
            .arg("-c")
            .arg(code)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    py(&format!(
        "import numpy as np; from safetensors.numpy import save_file; r=np.random.default_rng(1); \
         save_file({{'w': r.standard_normal((33,17)).astype(np.float32), 'h': r.standard_normal((5,9)).astype(np.float16), \
         'd': r.standard_normal(7), 'i': r.integers(-9,9,(4,4)).astype(np.int64), 'm': r.random(6)>0.5, \
         'u': r.integers(0,255,3).astype(np.uint8), 's': np.array(2.5, dtype=np.float32)}}, '{}')",
        a.display()
    ));
    ok(&[
        "ckpt",
        "import",
        p(&a),
        p(&root),
        "--step",
        "3",
        "--codec",
        "shuffle-zstd",
    ]);
    ok(&["ckpt", "export", p(&root), "--step", "3", "--out", p(&b)]);
    let same = py(&format!(
        "import numpy as np; from safetensors.numpy import load_file; a=load_file('{}'); b=load_file('{}'); \
         print(sorted(a)==sorted(b) and all(a[k].dtype==b[k].dtype and a[k].shape==b[k].shape and np.array_equal(a[k],b[k]) for k in a))",
        a.display(),
        b.display()
    ));
    assert_eq!(same.trim(), "True");
    let rows = fixture::sql(
        &root,
        "SELECT count(*) AS n, sum(raw_len) AS raw FROM chunks WHERE step = 3",
    );
    assert_eq!(rows[0]["n"], 7);
    assert_eq!(
        rows[0]["raw"],
        33 * 17 * 4 + 5 * 9 * 2 + 7 * 8 + 16 * 8 + 6 + 3 + 4
    );
    // Only committed rows, through the `committed` table.
    let rows = fixture::sql(
        &root,
        "SELECT c.step, count(*) AS n FROM chunks c JOIN committed k \
         ON c.step = k.step AND c.run = k.run WHERE k.latest GROUP BY c.step",
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0]["step"].as_u64(), rows[0]["n"].as_u64()),
        (Some(3), Some(7))
    );
}
