//! safetensors export and import, so checkpoints move to and from the
//! Python ecosystem (`safetensors.numpy.load_file`, `torch` via
//! `safetensors.torch`). Format: an 8-byte little-endian header length, a
//! JSON header `{name: {dtype, shape, data_offsets: [begin, end]}, …,
//! "__metadata__": {…}}`, then the tensor bytes back to back.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde_json::{Map, Value};

use super::dtype::DType;
use super::layout::Region;
use super::load::{Checkpoint, LoadOptions, Target};
use super::save::{SaveOptions, SaveReport, Saver, Shard};
use crate::error::{Error, Result};

/// Header size limit, as the reference implementation has (100 MB).
const MAX_HEADER: u64 = 100_000_000;

#[derive(Debug, Clone, Default)]
pub struct ExportReport {
    pub tensors: usize,
    pub bytes: u64,
}

/// Write every tensor of `ck` (whole, in its stored dtype) to `out`. Memory
/// use is the largest tensor; the file appears complete or not at all.
pub fn export(ck: &Checkpoint, out: &Path) -> Result<ExportReport> {
    let tensors = ck.tensors();
    let mut header = Map::new();
    let mut meta = Map::new();
    meta.insert("format".into(), Value::from("pt"));
    meta.insert("granary.step".into(), Value::from(ck.step.step.to_string()));
    header.insert("__metadata__".into(), Value::Object(meta));
    let mut at = 0u64;
    for t in &tensors {
        let n = t.global_shape.iter().product::<u64>() * t.dtype.size() as u64;
        header.insert(
            t.fqn.clone(),
            serde_json::json!({ "dtype": t.dtype.name(), "shape": t.global_shape, "data_offsets": [at, at + n] }),
        );
        at += n;
    }
    let mut h =
        serde_json::to_vec(&Value::Object(header)).map_err(|e| Error::Internal(e.to_string()))?;
    // Pad with spaces to 8 bytes, as the reference writer does, so the data is aligned.
    while (h.len() + 8) % 8 != 0 {
        h.push(b' ');
    }
    let tmp = out.with_extension("safetensors.partial");
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(&(h.len() as u64).to_le_bytes())
        .map_err(|e| Error::io(&tmp, e))?;
    f.write_all(&h).map_err(|e| Error::io(&tmp, e))?;
    let mut buf = Vec::new();
    for t in &tensors {
        let n = t.global_shape.iter().product::<u64>() as usize * t.dtype.size();
        buf.resize(n, 0);
        ck.load(
            &mut [Target {
                fqn: t.fqn.clone(),
                dtype: t.dtype,
                region: Region::full(&t.global_shape),
                buf: &mut buf,
            }],
            &LoadOptions::default(),
        )?;
        f.write_all(&buf).map_err(|e| Error::io(&tmp, e))?;
    }
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Ok(ExportReport {
        tensors: tensors.len(),
        bytes: at,
    })
}

/// One tensor entry of a safetensors header.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub begin: u64,
    pub end: u64,
}

/// Parse and validate a safetensors header: known dtypes, sizes that match
/// shapes, offsets inside the file and not overlapping.
pub fn read_header(path: &Path) -> Result<(Vec<Entry>, u64)> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let bad = |why: String| {
        Error::InvalidInput(format!(
            "{}: not a valid safetensors file: {why}",
            path.display()
        ))
    };
    let mut len8 = [0u8; 8];
    f.read_exact(&mut len8)
        .map_err(|_| bad("shorter than 8 bytes".into()))?;
    let hlen = u64::from_le_bytes(len8);
    if hlen > MAX_HEADER || 8 + hlen > file_len {
        return Err(bad(format!(
            "header length {hlen} does not fit the {file_len}-byte file"
        )));
    }
    let mut h = vec![0u8; hlen as usize];
    f.read_exact(&mut h).map_err(|e| Error::io(path, e))?;
    let v: Value = serde_json::from_slice(&h).map_err(|e| bad(format!("header JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("header is not a JSON object".into()))?;
    let data_start = 8 + hlen;
    let data_len = file_len - data_start;
    let mut out = Vec::new();
    for (name, e) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype: DType = e
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("{name}: no dtype")))?
            .parse()
            .map_err(|m| bad(format!("{name}: {m}")))?;
        let shape: Vec<u64> = e
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_u64).collect())
            .ok_or_else(|| {
                bad(format!(
                    "{name}: shape is not a list of non-negative integers"
                ))
            })?;
        let offs: Vec<u64> = e
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_u64).collect())
            .ok_or_else(|| {
                bad(format!(
                    "{name}: data_offsets is not two non-negative integers"
                ))
            })?;
        let [begin, end] = offs[..] else {
            return Err(bad(format!(
                "{name}: data_offsets has {} entries",
                offs.len()
            )));
        };
        let n = shape
            .iter()
            .try_fold(dtype.size() as u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("{name}: shape {shape:?} overflows")))?;
        if begin > end || end > data_len || end - begin != n {
            return Err(bad(format!(
                "{name}: offsets {begin}..{end} for {n} bytes of {dtype} {shape:?} (data section is {data_len} bytes)"
            )));
        }
        out.push(Entry {
            name: name.clone(),
            dtype,
            shape,
            begin,
            end,
        });
    }
    out.sort_by_key(|e| e.begin);
    for w in out.windows(2) {
        if w[1].begin < w[0].end {
            return Err(bad(format!("{} and {} overlap", w[0].name, w[1].name)));
        }
    }
    Ok((out, data_start))
}

/// Import a safetensors file as `step` of the checkpoint root `root`
/// (created if missing), saved as one rank holding every tensor whole.
pub async fn import(
    file: &Path,
    root: &Path,
    step: u64,
    run: &str,
    opts: SaveOptions,
) -> Result<SaveReport> {
    let (entries, data_start) = read_header(file)?;
    if entries.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{} holds no tensors",
            file.display()
        )));
    }
    let f = File::open(file).map_err(|e| Error::io(file, e))?;
    let mut datas: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for e in &entries {
        let mut b = vec![0u8; (e.end - e.begin) as usize];
        f.read_exact_at(&mut b, data_start + e.begin)
            .map_err(|x| Error::io(file, x))?;
        datas.insert(e.name.clone(), b);
    }
    let shards: Vec<Shard> = entries
        .iter()
        .map(|e| Shard {
            fqn: e.name.clone(),
            dtype: e.dtype,
            global_shape: e.shape.clone(),
            region: Region::full(&e.shape),
            data: &datas[&e.name],
        })
        .collect();
    let saver = Saver::new(root, 0, 1, run, opts).await?;
    let handle = saver.save_async(step, &shards, b"")?;
    tokio::task::spawn_blocking(move || handle.wait())
        .await
        .map_err(|e| Error::Internal(format!("save thread: {e}")))?
}
