//! The `parquet` source: one `.parquet` file or a directory of them, with an
//! image column (raw binary, or Hugging Face datasets' `struct{bytes, path}`)
//! and optional caption, key and JSON-metadata columns. Read in small
//! record batches so memory stays bounded.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch, StructArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Schema};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{ParquetColumns, RawItem, Source, display, source_files};
use crate::error::{Error, Result};

pub(crate) struct ParquetSource {
    files: Vec<PathBuf>,
    cols: ParquetColumns,
    total: u64,
}

impl ParquetSource {
    pub(crate) fn open(src: &Path, cols: &ParquetColumns) -> Result<ParquetSource> {
        let files = source_files(src, "parquet")?;
        // Check every file's schema up front: a wrong schema is a usage
        // error for the whole run, not thousands of per-row errors.
        let mut total = 0;
        for f in &files {
            let builder = builder(f)?;
            check_schema(f, builder.schema(), cols)?;
            total += builder.metadata().file_metadata().num_rows().max(0) as u64;
        }
        Ok(ParquetSource {
            files,
            cols: cols.clone(),
            total,
        })
    }
}

fn builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
        Error::InvalidInput(format!(
            "{}: not a readable Parquet file: {e}",
            path.display()
        ))
    })
}

fn check_schema(path: &Path, schema: &Schema, cols: &ParquetColumns) -> Result<()> {
    let names = || {
        schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let field = |name: &str| {
        schema.field_with_name(name).map_err(|_| {
            Error::InvalidInput(format!(
                "{}: no column {name:?} (columns: {})",
                path.display(),
                names()
            ))
        })
    };
    let image = field(&cols.image)?;
    let ok_image = match image.data_type() {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => true,
        DataType::Struct(fields) => fields.iter().any(|f| f.name() == "bytes"),
        _ => false,
    };
    if !ok_image {
        return Err(Error::InvalidInput(format!(
            "{}: column {:?} has type {}; expected binary or struct{{bytes, path}}",
            path.display(),
            cols.image,
            image.data_type()
        )));
    }
    for name in [&cols.caption, &cols.key, &cols.meta].into_iter().flatten() {
        let f = field(name)?;
        if !matches!(
            f.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) {
            return Err(Error::InvalidInput(format!(
                "{}: column {name:?} has type {}; expected a string",
                path.display(),
                f.data_type()
            )));
        }
    }
    Ok(())
}

/// A string column as Utf8 (whatever string flavour it was stored as).
fn utf8(batch: &RecordBatch, name: &Option<String>) -> Result<Option<arrow::array::StringArray>> {
    let Some(name) = name else { return Ok(None) };
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| Error::Internal(format!("projected column {name} missing")))?;
    Ok(Some(cast(col, &DataType::Utf8)?.as_string::<i32>().clone()))
}

impl Source for ParquetSource {
    fn total(&self) -> Option<u64> {
        Some(self.total)
    }

    fn run(self: Box<Self>, emit: &mut dyn FnMut(RawItem) -> bool) -> Result<()> {
        let cols = &self.cols;
        for path in &self.files {
            let builder = builder(path)?;
            let wanted: Vec<usize> = builder
                .schema()
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| {
                    let n = Some(f.name());
                    n == Some(&cols.image)
                        || n == cols.caption.as_ref()
                        || n == cols.key.as_ref()
                        || n == cols.meta.as_ref()
                })
                .map(|(i, _)| i)
                .collect();
            let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
            let reader = builder.with_projection(mask).with_batch_size(64).build()?;
            let file_stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut row = 0u64;
            for batch in reader {
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        let item = RawItem {
                            key: display(path),
                            path: format!("{}#{row}", display(path)),
                            read_error: Some(format!("corrupt Parquet data: {e}")),
                            ..RawItem::default()
                        };
                        emit(item);
                        break;
                    }
                };
                let image = batch
                    .column_by_name(&cols.image)
                    .ok_or_else(|| Error::Internal("image column missing".into()))?;
                let (bytes, img_path) = match image.data_type() {
                    DataType::Struct(_) => {
                        let s: &StructArray = image.as_struct();
                        let bytes = s
                            .column_by_name("bytes")
                            .ok_or_else(|| Error::Internal("image.bytes missing".into()))?;
                        let p = match s.column_by_name("path") {
                            Some(p) => Some(cast(p, &DataType::Utf8)?.as_string::<i32>().clone()),
                            None => None,
                        };
                        (cast(bytes, &DataType::LargeBinary)?, p)
                    }
                    _ => (cast(image, &DataType::LargeBinary)?, None),
                };
                let bytes = bytes.as_binary::<i64>();
                let captions = utf8(&batch, &cols.caption)?;
                let keys = utf8(&batch, &cols.key)?;
                let metas = utf8(&batch, &cols.meta)?;
                for i in 0..batch.num_rows() {
                    let get = |a: &Option<arrow::array::StringArray>| {
                        a.as_ref()
                            .filter(|a| a.is_valid(i))
                            .map(|a| a.value(i).to_string())
                    };
                    let key = get(&keys)
                        .or_else(|| {
                            get(&img_path).map(|p| match p.rfind('.') {
                                Some(dot) if !p[dot..].contains('/') => p[..dot].to_string(),
                                _ => p,
                            })
                        })
                        .unwrap_or_else(|| format!("{file_stem}/{row}"));
                    let item = RawItem {
                        key,
                        path: format!("{}#{row}", display(path)),
                        media: bytes.is_valid(i).then(|| bytes.value(i).to_vec()),
                        txt: get(&captions).map(String::into_bytes),
                        json: get(&metas).map(String::into_bytes),
                        read_error: None,
                    };
                    row += 1;
                    if !emit(item) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}
