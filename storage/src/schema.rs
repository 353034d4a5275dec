//! Arrow schemas of the granary's tables and the metadata keys that version them.
//!
//! The layout is specified for outside readers in `docs/format.md`; a change
//! here is a format change and bumps [`SCHEMA_VERSION`].

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};

/// Version of the granary table layout this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;
/// Schema-metadata key holding [`SCHEMA_VERSION`] in every granary table.
pub const META_SCHEMA_VERSION: &str = "granary.schema_version";
/// Schema-metadata key naming the table (`samples`, `ingest_errors`).
pub const META_TABLE: &str = "granary.table";
/// Schema-metadata key of `samples` holding the embedding dimension.
pub const META_EMBEDDING_DIM: &str = "granary.embedding_dim";

/// Default embedding dimension of a new granary (the synthetic generator's descriptor size).
pub const DEFAULT_EMBEDDING_DIM: usize = 64;

pub const SAMPLES: &str = "samples";
pub const INGEST_ERRORS: &str = "ingest_errors";
pub const SAMPLING_PLANS: &str = "sampling_plans";

/// Columns that `granary curate` adds to `samples` (all nullable, so that
/// ingest, which does not fill them, can still append).
pub const KEEP: &str = "keep";
pub const DROP_REASON: &str = "drop_reason";
pub const LOSS_MASK: &str = "loss_mask";

/// Fields of one caption: `{text, lang, style}`.
pub fn caption_fields() -> Fields {
    Fields::from(vec![
        Field::new("text", DataType::Utf8, false),
        Field::new("lang", DataType::Utf8, false),
        Field::new("style", DataType::Utf8, false),
    ])
}

/// Fields of one defect box, in pixel coordinates, `x0 < x1`, `y0 < y1`.
pub fn defect_fields() -> Fields {
    Fields::from(vec![
        Field::new("x0", DataType::Int32, false),
        Field::new("y0", DataType::Int32, false),
        Field::new("x1", DataType::Int32, false),
        Field::new("y1", DataType::Int32, false),
        Field::new("kind", DataType::Utf8, false),
    ])
}

pub fn caption_item() -> Arc<Field> {
    Arc::new(Field::new(
        "item",
        DataType::Struct(caption_fields()),
        false,
    ))
}

pub fn defect_item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Struct(defect_fields()), false))
}

pub fn embedding_item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Float32, false))
}

fn metadata(table: &str, extra: &[(&str, String)]) -> HashMap<String, String> {
    let mut m = HashMap::from([
        (META_SCHEMA_VERSION.to_string(), SCHEMA_VERSION.to_string()),
        (META_TABLE.to_string(), table.to_string()),
    ]);
    for (k, v) in extra {
        m.insert((*k).to_string(), v.clone());
    }
    m
}

/// The `samples` table. `embedding_dim` is fixed per granary.
pub fn samples(embedding_dim: usize) -> SchemaRef {
    let dim = i32::try_from(embedding_dim).expect("embedding dim validated by the caller");
    Arc::new(Schema::new_with_metadata(
        vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("key", DataType::Utf8, false),
            Field::new("media", DataType::Utf8, false),
            Field::new("format", DataType::Utf8, false),
            lance::blob_field("bytes", false),
            Field::new("content_hash", DataType::Utf8, false),
            Field::new("size_bytes", DataType::UInt64, false),
            Field::new("width", DataType::Int32, false),
            Field::new("height", DataType::Int32, false),
            Field::new("frames", DataType::Int32, true),
            Field::new("fps", DataType::Float32, true),
            Field::new("duration_s", DataType::Float32, true),
            Field::new("captions", DataType::List(caption_item()), false),
            Field::new("source", DataType::Utf8, true),
            Field::new("aesthetic", DataType::Float32, true),
            Field::new("ocr_ratio", DataType::Float32, true),
            Field::new("motion", DataType::Float32, true),
            Field::new("defects", DataType::List(defect_item()), false),
            Field::new(
                "embedding",
                DataType::FixedSizeList(embedding_item(), dim),
                true,
            ),
        ],
        metadata(SAMPLES, &[(META_EMBEDDING_DIM, embedding_dim.to_string())]),
    ))
}

/// The `ingest_errors` table: one row per source sample that could not be ingested.
pub fn ingest_errors() -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        vec![
            Field::new("error_id", DataType::Utf8, false),
            Field::new("path", DataType::Utf8, false),
            Field::new("key", DataType::Utf8, false),
            Field::new("reason", DataType::Utf8, false),
            Field::new("source_format", DataType::Utf8, false),
            Field::new("recorded_at_ms", DataType::Int64, false),
        ],
        metadata(INGEST_ERRORS, &[]),
    ))
}

/// The curation columns of `samples`: `keep` (false: excluded from
/// training), `drop_reason` (why, when `keep` is false) and `loss_mask`
/// (boxes, in pixels, that the trainer masks out of the loss).
pub fn curation_fields() -> Vec<Field> {
    vec![
        Field::new(KEEP, DataType::Boolean, true),
        Field::new(DROP_REASON, DataType::Utf8, true),
        Field::new(LOSS_MASK, DataType::List(defect_item()), true),
    ]
}

/// The `sampling_plans` table: one row per (plan, sample) with the
/// sample's weight and its clusters on the two axes.
pub fn sampling_plans() -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        vec![
            Field::new("plan", DataType::Utf8, false),
            Field::new("sample_id", DataType::Utf8, false),
            Field::new("weight", DataType::Float64, false),
            Field::new("visual_cluster", DataType::Int32, false),
            Field::new("semantic_cluster", DataType::Int32, false),
            Field::new("created_at_ms", DataType::Int64, false),
        ],
        metadata(SAMPLING_PLANS, &[]),
    ))
}
