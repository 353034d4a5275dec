//! Rows in memory (`Sample`, `ErrorRow`) and their conversion to Arrow
//! record batches of the `samples` and `ingest_errors` schemas.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::{
    ArrayRef, FixedSizeListArray, Float32Array, Int32Array, Int64Array, ListArray, RecordBatch,
    StringArray, StructArray, UInt64Array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::SchemaRef;
use xxhash_rust::xxh3::xxh3_128;

use super::{RawItem, SourceFormat};
use crate::error::Result;
use crate::media::MediaInfo;
use crate::schema;
use crate::sidecar::Sidecar;

/// One sample ready to be written.
#[derive(Debug)]
pub struct Sample {
    pub id: String,
    pub key: String,
    pub content_hash: String,
    pub bytes: Vec<u8>,
    pub info: MediaInfo,
    pub source: Option<String>,
    pub sidecar: Sidecar,
}

/// One rejected source sample.
#[derive(Debug)]
pub struct ErrorRow {
    pub error_id: u128,
    pub path: String,
    pub key: String,
    pub reason: String,
    pub format: SourceFormat,
}

impl ErrorRow {
    pub(crate) fn new(item: &RawItem, reason: String, format: SourceFormat) -> ErrorRow {
        let mut buf = item.path.clone().into_bytes();
        buf.push(0);
        buf.extend_from_slice(reason.as_bytes());
        ErrorRow {
            error_id: xxh3_128(&buf),
            path: item.path.clone(),
            key: item.key.clone(),
            reason,
            format,
        }
    }
}

fn strings<'a>(v: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from(v.collect::<Vec<&str>>()))
}

/// Build a `samples` batch.
pub fn samples_batch(rows: &[Sample], schema: &SchemaRef) -> Result<RecordBatch> {
    let n = rows.len();
    let mut blobs = lance::BlobArrayBuilder::new(n);
    for r in rows {
        blobs.push_bytes(&r.bytes)?;
    }

    // captions: List<Struct{text, lang, style}>
    let caps = rows.iter().flat_map(|r| r.sidecar.captions.iter());
    let captions = ListArray::try_new(
        schema::caption_item(),
        OffsetBuffer::from_lengths(rows.iter().map(|r| r.sidecar.captions.len())),
        Arc::new(StructArray::try_new(
            schema::caption_fields(),
            vec![
                strings(caps.clone().map(|c| c.text.as_str())),
                strings(caps.clone().map(|c| c.lang.as_str())),
                strings(caps.map(|c| c.style.as_str())),
            ],
            None,
        )?),
        None,
    )?;

    // defects: List<Struct{x0, y0, x1, y1, kind}>
    let defs: Vec<_> = rows.iter().flat_map(|r| r.sidecar.defects.iter()).collect();
    let coord = |f: fn(&crate::sidecar::Defect) -> i32| -> ArrayRef {
        Arc::new(Int32Array::from_iter_values(defs.iter().map(|d| f(d))))
    };
    let defects = ListArray::try_new(
        schema::defect_item(),
        OffsetBuffer::from_lengths(rows.iter().map(|r| r.sidecar.defects.len())),
        Arc::new(StructArray::try_new(
            schema::defect_fields(),
            vec![
                coord(|d| d.x0),
                coord(|d| d.y0),
                coord(|d| d.x1),
                coord(|d| d.y1),
                strings(defs.iter().map(|d| d.kind.as_str())),
            ],
            None,
        )?),
        None,
    )?;

    // embedding: FixedSizeList<f32, dim>, null when absent
    let dim = match schema.field_with_name("embedding")?.data_type() {
        arrow::datatypes::DataType::FixedSizeList(_, d) => *d as usize,
        other => {
            return Err(crate::Error::Internal(format!(
                "embedding column has type {other}"
            )));
        }
    };
    let mut values = Vec::with_capacity(n * dim);
    let mut valid = Vec::with_capacity(n);
    for r in rows {
        match &r.sidecar.embedding {
            Some(e) => {
                values.extend_from_slice(e);
                valid.push(true);
            }
            None => {
                values.resize(values.len() + dim, 0.0);
                valid.push(false);
            }
        }
    }
    let embedding = FixedSizeListArray::try_new(
        schema::embedding_item(),
        dim as i32,
        Arc::new(Float32Array::from(values)),
        Some(NullBuffer::from(valid)),
    )?;

    let f32s = |f: fn(&Sample) -> Option<f32>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<Float32Array>())
    };
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| r.id.as_str())),
        strings(rows.iter().map(|r| r.key.as_str())),
        strings(rows.iter().map(|r| r.info.format.media().as_str())),
        strings(rows.iter().map(|r| r.info.format.as_str())),
        blobs.finish()?,
        strings(rows.iter().map(|r| r.content_hash.as_str())),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.bytes.len() as u64),
        )),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| r.info.width as i32),
        )),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| r.info.height as i32),
        )),
        Arc::new(
            rows.iter()
                .map(|r| r.info.frames.map(|f| f as i32))
                .collect::<Int32Array>(),
        ),
        f32s(|r| r.info.fps),
        f32s(|r| r.info.duration_s),
        Arc::new(captions),
        Arc::new(
            rows.iter()
                .map(|r| r.source.as_deref())
                .collect::<StringArray>(),
        ),
        f32s(|r| r.sidecar.aesthetic),
        f32s(|r| r.sidecar.ocr_ratio),
        f32s(|r| r.sidecar.motion),
        Arc::new(defects),
        Arc::new(embedding),
    ];
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Build an `ingest_errors` batch.
pub fn errors_batch(rows: &[ErrorRow], schema: &SchemaRef) -> Result<RecordBatch> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let ids: Vec<String> = rows
        .iter()
        .map(|r| format!("{:032x}", r.error_id))
        .collect();
    let columns: Vec<ArrayRef> = vec![
        strings(ids.iter().map(String::as_str)),
        strings(rows.iter().map(|r| r.path.as_str())),
        strings(rows.iter().map(|r| r.key.as_str())),
        strings(rows.iter().map(|r| r.reason.as_str())),
        strings(rows.iter().map(|r| r.format.as_str())),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|_| now))),
    ];
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
