//! The checkpoint metadata tables: `chunks` (one row per stored chunk) and
//! `steps` (one row per save attempt), their Arrow schemas, and the
//! conversion between rows and the structs the engine plans with.
//!
//! Rows read back are validated before anything is planned from them: a
//! file name must stay inside the checkpoint root, offsets and lengths must
//! not overflow, and a chunk's region, lengths and block lists must agree.
//! Metadata written by a buggy or hostile tool is an error, never a read
//! outside the root or a panic.

use std::path::{Component, Path};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, LargeBinaryArray, ListBuilder, RecordBatch, StringArray,
    UInt32Array, UInt64Array, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type, UInt64Type};

use super::codec::{Codec, block_count};
use super::dtype::DType;
use super::layout::Region;
use crate::error::{Error, Result};

/// Version of the checkpoint layout this build writes and reads (`docs/checkpoint-format.md`).
pub const CKPT_FORMAT_VERSION: u32 = 1;
pub const CHUNKS: &str = "chunks";
pub const STEPS: &str = "steps";

fn u64_list(name: &str) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("item", DataType::UInt64, true))),
        false,
    )
}

fn with_meta(fields: Vec<Field>, table: &str) -> SchemaRef {
    let meta = [
        (
            "granary.ckpt_format_version".to_string(),
            CKPT_FORMAT_VERSION.to_string(),
        ),
        ("granary.table".to_string(), table.to_string()),
    ];
    Arc::new(Schema::new(fields).with_metadata(meta.into_iter().collect()))
}

/// Schema of the `chunks` table.
pub fn chunks_schema() -> SchemaRef {
    with_meta(
        vec![
            Field::new("step", DataType::UInt64, false),
            Field::new("run", DataType::Utf8, false),
            Field::new("fqn", DataType::Utf8, false),
            Field::new("dtype", DataType::Utf8, false),
            u64_list("global_shape"),
            Field::new("kind", DataType::Utf8, false),
            u64_list("offsets"),
            u64_list("lengths"),
            Field::new("flat_start", DataType::UInt64, true),
            Field::new("flat_len", DataType::UInt64, true),
            Field::new("rank", DataType::UInt32, false),
            Field::new("file", DataType::Utf8, false),
            Field::new("byte_offset", DataType::UInt64, false),
            Field::new("byte_len", DataType::UInt64, false),
            Field::new("raw_len", DataType::UInt64, false),
            Field::new("codec", DataType::Utf8, false),
            Field::new("block_bytes", DataType::UInt64, false),
            u64_list("block_lens"),
            u64_list("checksums"),
        ],
        CHUNKS,
    )
}

/// Schema of the `steps` table.
pub fn steps_schema() -> SchemaRef {
    with_meta(
        vec![
            Field::new("step", DataType::UInt64, false),
            Field::new("run", DataType::Utf8, false),
            Field::new("world_size", DataType::UInt32, false),
            Field::new("framework", DataType::Utf8, false),
            Field::new("layout", DataType::Utf8, false),
            Field::new("extra", DataType::LargeBinary, false),
            Field::new("created_unix_ms", DataType::Int64, false),
            Field::new("tensors", DataType::UInt64, false),
            Field::new("chunks", DataType::UInt64, false),
            Field::new("bytes", DataType::UInt64, false),
        ],
        STEPS,
    )
}

/// One stored chunk: where its bytes are and which part of which tensor they hold.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkMeta {
    pub step: u64,
    pub run: String,
    pub fqn: String,
    pub dtype: DType,
    pub global_shape: Vec<u64>,
    pub region: Region,
    pub rank: u32,
    /// Path relative to the checkpoint root, `data/…`.
    pub file: String,
    pub byte_offset: u64,
    pub byte_len: u64,
    pub raw_len: u64,
    pub codec: Codec,
    pub block_bytes: u64,
    pub block_lens: Vec<u64>,
    pub checksums: Vec<u64>,
}

impl ChunkMeta {
    /// Stored byte range of block `i`, relative to the file: (offset, len).
    pub fn block_span(&self, i: usize) -> (u64, u64) {
        if self.codec == Codec::Raw {
            // Raw blocks are stored at their raw size (checked by `validate`).
            return (
                self.byte_offset + i as u64 * self.block_bytes,
                self.block_lens[i],
            );
        }
        let off: u64 = self.block_lens[..i].iter().sum();
        (self.byte_offset + off, self.block_lens[i])
    }

    /// Raw (decoded) byte range of block `i` within the chunk.
    pub fn block_raw(&self, i: usize) -> (u64, u64) {
        let start = i as u64 * self.block_bytes;
        (start, self.block_bytes.min(self.raw_len - start))
    }

    /// Check that the row is self-consistent and stays inside the root.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| {
            Error::Corrupt(format!("tensor {} chunk in {}: {why}", self.fqn, self.file))
        };
        check_rel_path(&self.file).map_err(bad)?;
        self.region.validate(&self.global_shape).map_err(bad)?;
        let want_raw = self
            .region
            .numel()
            .checked_mul(self.dtype.size() as u64)
            .ok_or_else(|| bad("element count overflows".into()))?;
        if want_raw != self.raw_len {
            return Err(bad(format!(
                "raw_len {} but the region holds {want_raw} bytes",
                self.raw_len
            )));
        }
        if self
            .byte_offset
            .checked_add(self.byte_len)
            .is_none_or(|e| e > i64::MAX as u64)
        {
            return Err(bad(format!(
                "byte range {}+{} overflows",
                self.byte_offset, self.byte_len
            )));
        }
        if self.block_bytes == 0 || !self.block_bytes.is_multiple_of(8) {
            return Err(bad(format!(
                "block_bytes {} is not a positive multiple of 8",
                self.block_bytes
            )));
        }
        let n = block_count(self.raw_len, self.block_bytes);
        if self.block_lens.len() as u64 != n || self.checksums.len() as u64 != n {
            return Err(bad(format!(
                "{} blocks expected, {} lengths and {} checksums stored",
                n,
                self.block_lens.len(),
                self.checksums.len()
            )));
        }
        let sum = self
            .block_lens
            .iter()
            .try_fold(0u64, |a, &b| a.checked_add(b));
        if sum != Some(self.byte_len) {
            return Err(bad(format!(
                "block lengths do not add up to byte_len {}",
                self.byte_len
            )));
        }
        if self.codec == Codec::Raw {
            for i in 0..n as usize {
                if self.block_lens[i] != self.block_raw(i).1 {
                    return Err(bad(format!(
                        "raw block {i} has stored length {}",
                        self.block_lens[i]
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A path from metadata must be relative, made of plain names only, and under `data/`.
pub fn check_rel_path(p: &str) -> std::result::Result<(), String> {
    let path = Path::new(p);
    let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain || !p.starts_with("data/") || p.contains('\0') {
        return Err(format!(
            "file name {p:?} points outside the checkpoint's data directory"
        ));
    }
    Ok(())
}

/// One save attempt's step-level metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct StepMeta {
    pub step: u64,
    pub run: String,
    pub world_size: u32,
    pub framework: String,
    /// The saver's world layout as JSON: for every rank, the shards it held.
    pub layout: String,
    /// User state: optimizer step, RNG states, dataloader position, … (bytes, often JSON).
    pub extra: Vec<u8>,
    pub created_unix_ms: i64,
    pub tensors: u64,
    pub chunks: u64,
    pub bytes: u64,
}

fn list_u64<'a>(rows: impl Iterator<Item = &'a [u64]>) -> ArrayRef {
    let mut b = ListBuilder::new(UInt64Builder::new());
    for r in rows {
        b.values().append_slice(r);
        b.append(true);
    }
    Arc::new(b.finish())
}

/// Chunk rows as one record batch of [`chunks_schema`].
pub fn chunks_batch(rows: &[ChunkMeta]) -> Result<RecordBatch> {
    let s = |f: &dyn Fn(&ChunkMeta) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let u = |f: &dyn Fn(&ChunkMeta) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(f)))
    };
    let (offs, lens): (Vec<Vec<u64>>, Vec<Vec<u64>>) = rows
        .iter()
        .map(|r| match &r.region {
            Region::Box { offsets, lengths } => (offsets.clone(), lengths.clone()),
            Region::Flat { .. } => (Vec::new(), Vec::new()),
        })
        .unzip();
    let flat = |pick: fn(u64, u64) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter(rows.iter().map(
            |r| match r.region {
                Region::Flat { start, len } => Some(pick(start, len)),
                Region::Box { .. } => None,
            },
        )))
    };
    let cols: Vec<ArrayRef> = vec![
        u(&|r| r.step),
        s(&|r| r.run.clone()),
        s(&|r| r.fqn.clone()),
        s(&|r| r.dtype.name().into()),
        list_u64(rows.iter().map(|r| r.global_shape.as_slice())),
        s(&|r| match r.region {
            Region::Box { .. } => "box".into(),
            Region::Flat { .. } => "flat".into(),
        }),
        list_u64(offs.iter().map(Vec::as_slice)),
        list_u64(lens.iter().map(Vec::as_slice)),
        flat(|s, _| s),
        flat(|_, l| l),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.rank))),
        s(&|r| r.file.clone()),
        u(&|r| r.byte_offset),
        u(&|r| r.byte_len),
        u(&|r| r.raw_len),
        s(&|r| r.codec.name().into()),
        u(&|r| r.block_bytes),
        list_u64(rows.iter().map(|r| r.block_lens.as_slice())),
        list_u64(rows.iter().map(|r| r.checksums.as_slice())),
    ];
    Ok(RecordBatch::try_new(chunks_schema(), cols)?)
}

/// The step row as one record batch of [`steps_schema`].
pub fn steps_batch(m: &StepMeta) -> Result<RecordBatch> {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(vec![m.step])),
        Arc::new(StringArray::from(vec![m.run.as_str()])),
        Arc::new(UInt32Array::from(vec![m.world_size])),
        Arc::new(StringArray::from(vec![m.framework.as_str()])),
        Arc::new(StringArray::from(vec![m.layout.as_str()])),
        Arc::new(LargeBinaryArray::from(vec![m.extra.as_slice()])),
        Arc::new(Int64Array::from(vec![m.created_unix_ms])),
        Arc::new(UInt64Array::from(vec![m.tensors])),
        Arc::new(UInt64Array::from(vec![m.chunks])),
        Arc::new(UInt64Array::from(vec![m.bytes])),
    ];
    Ok(RecordBatch::try_new(steps_schema(), cols)?)
}

fn col<'a>(b: &'a RecordBatch, name: &str, table: &str) -> Result<&'a ArrayRef> {
    b.column_by_name(name)
        .ok_or_else(|| Error::Corrupt(format!("{table} table has no column {name}")))
}

fn typed<'a, T: 'static>(b: &'a RecordBatch, name: &str, table: &str) -> Result<&'a T> {
    let c = col(b, name, table)?;
    c.as_any().downcast_ref::<T>().ok_or_else(|| {
        Error::Corrupt(format!(
            "{table} column {name} has type {}, not the one this build writes",
            c.data_type()
        ))
    })
}

fn list_at(b: &RecordBatch, name: &str, row: usize) -> Result<Vec<u64>> {
    let c = col(b, name, CHUNKS)?;
    let l = c.as_list_opt::<i32>().ok_or_else(|| {
        Error::Corrupt(format!(
            "chunks column {name} has type {}, expected list<u64>",
            c.data_type()
        ))
    })?;
    if l.is_null(row) {
        return Ok(Vec::new());
    }
    let v = l.value(row);
    let v = v.as_primitive_opt::<UInt64Type>().ok_or_else(|| {
        Error::Corrupt(format!(
            "chunks column {name} holds {}, expected u64",
            v.data_type()
        ))
    })?;
    if v.null_count() > 0 {
        return Err(Error::Corrupt(format!(
            "chunks column {name} has a null element"
        )));
    }
    Ok(v.values().to_vec())
}

/// Decode and validate chunk rows.
pub fn chunks_from_batch(b: &RecordBatch) -> Result<Vec<ChunkMeta>> {
    let step = typed::<UInt64Array>(b, "step", CHUNKS)?;
    let run = typed::<StringArray>(b, "run", CHUNKS)?;
    let fqn = typed::<StringArray>(b, "fqn", CHUNKS)?;
    let dtype = typed::<StringArray>(b, "dtype", CHUNKS)?;
    let kind = typed::<StringArray>(b, "kind", CHUNKS)?;
    let flat_start = typed::<UInt64Array>(b, "flat_start", CHUNKS)?;
    let flat_len = typed::<UInt64Array>(b, "flat_len", CHUNKS)?;
    let rank = col(b, "rank", CHUNKS)?
        .as_primitive_opt::<UInt32Type>()
        .ok_or_else(|| Error::Corrupt("chunks column rank is not u32".into()))?;
    let file = typed::<StringArray>(b, "file", CHUNKS)?;
    let byte_offset = typed::<UInt64Array>(b, "byte_offset", CHUNKS)?;
    let byte_len = typed::<UInt64Array>(b, "byte_len", CHUNKS)?;
    let raw_len = typed::<UInt64Array>(b, "raw_len", CHUNKS)?;
    let codec = typed::<StringArray>(b, "codec", CHUNKS)?;
    let block_bytes = typed::<UInt64Array>(b, "block_bytes", CHUNKS)?;
    let mut out = Vec::with_capacity(b.num_rows());
    for i in 0..b.num_rows() {
        let name = fqn.value(i).to_string();
        let bad = |why: String| Error::Corrupt(format!("tensor {name}: {why}"));
        let region = match kind.value(i) {
            "box" => Region::Box {
                offsets: list_at(b, "offsets", i)?,
                lengths: list_at(b, "lengths", i)?,
            },
            "flat" => {
                if flat_start.is_null(i) || flat_len.is_null(i) {
                    return Err(bad("flat chunk without flat_start/flat_len".into()));
                }
                Region::Flat {
                    start: flat_start.value(i),
                    len: flat_len.value(i),
                }
            }
            other => return Err(bad(format!("unknown chunk kind {other:?}"))),
        };
        let m = ChunkMeta {
            step: step.value(i),
            run: run.value(i).to_string(),
            fqn: name.clone(),
            dtype: dtype.value(i).parse().map_err(bad)?,
            global_shape: list_at(b, "global_shape", i)?,
            region,
            rank: rank.value(i),
            file: file.value(i).to_string(),
            byte_offset: byte_offset.value(i),
            byte_len: byte_len.value(i),
            raw_len: raw_len.value(i),
            codec: codec.value(i).parse().map_err(bad)?,
            block_bytes: block_bytes.value(i),
            block_lens: list_at(b, "block_lens", i)?,
            checksums: list_at(b, "checksums", i)?,
        };
        m.validate()?;
        out.push(m);
    }
    Ok(out)
}

/// Decode step rows.
pub fn steps_from_batch(b: &RecordBatch) -> Result<Vec<StepMeta>> {
    let step = typed::<UInt64Array>(b, "step", STEPS)?;
    let run = typed::<StringArray>(b, "run", STEPS)?;
    let world = typed::<UInt32Array>(b, "world_size", STEPS)?;
    let framework = typed::<StringArray>(b, "framework", STEPS)?;
    let layout = typed::<StringArray>(b, "layout", STEPS)?;
    let extra = typed::<LargeBinaryArray>(b, "extra", STEPS)?;
    let created = typed::<Int64Array>(b, "created_unix_ms", STEPS)?;
    let tensors = typed::<UInt64Array>(b, "tensors", STEPS)?;
    let chunks = typed::<UInt64Array>(b, "chunks", STEPS)?;
    let bytes = typed::<UInt64Array>(b, "bytes", STEPS)?;
    Ok((0..b.num_rows())
        .map(|i| StepMeta {
            step: step.value(i),
            run: run.value(i).to_string(),
            world_size: world.value(i),
            framework: framework.value(i).to_string(),
            layout: layout.value(i).to_string(),
            extra: extra.value(i).to_vec(),
            created_unix_ms: created.value(i),
            tensors: tensors.value(i),
            chunks: chunks.value(i),
            bytes: bytes.value(i),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk() -> ChunkMeta {
        ChunkMeta {
            step: 7,
            run: "r1".into(),
            fqn: "layer.0.w".into(),
            dtype: DType::BF16,
            global_shape: vec![4, 6],
            region: Region::Box {
                offsets: vec![2, 0],
                lengths: vec![2, 6],
            },
            rank: 1,
            file: "data/step-7-r1/rank-1.bin".into(),
            byte_offset: 4096,
            byte_len: 24,
            raw_len: 24,
            codec: Codec::Raw,
            block_bytes: 16,
            block_lens: vec![16, 8],
            checksums: vec![1, 2],
        }
    }

    #[test]
    fn rows_round_trip_through_arrow() {
        let mut flat = chunk();
        flat.region = Region::Flat { start: 3, len: 12 };
        let rows = vec![chunk(), flat];
        let b = chunks_batch(&rows).unwrap();
        assert_eq!(chunks_from_batch(&b).unwrap(), rows);
    }

    #[test]
    fn hostile_rows_are_rejected() {
        for (name, edit) in [
            (
                "escape",
                Box::new(|c: &mut ChunkMeta| c.file = "../../etc/passwd".into())
                    as Box<dyn Fn(&mut ChunkMeta)>,
            ),
            (
                "abs",
                Box::new(|c: &mut ChunkMeta| c.file = "/etc/passwd".into()),
            ),
            (
                "dotdot inside",
                Box::new(|c: &mut ChunkMeta| c.file = "data/../../x".into()),
            ),
            (
                "overflow",
                Box::new(|c: &mut ChunkMeta| c.byte_offset = u64::MAX - 3),
            ),
            (
                "region",
                Box::new(|c: &mut ChunkMeta| {
                    c.region = Region::Flat {
                        start: u64::MAX,
                        len: 2,
                    }
                }),
            ),
            ("raw_len", Box::new(|c: &mut ChunkMeta| c.raw_len = 1 << 40)),
            (
                "blocks",
                Box::new(|c: &mut ChunkMeta| c.block_lens = vec![24]),
            ),
        ] {
            let mut c = chunk();
            edit(&mut c);
            let b = chunks_batch(&[c]).unwrap();
            let err = chunks_from_batch(&b).unwrap_err();
            assert!(matches!(err, Error::Corrupt(_)), "{name}: {err}");
        }
    }
}
