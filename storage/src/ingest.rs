//! Ingest: turn a source (a folder, WebDataset tar shards, or Parquet) into
//! rows of `samples`, idempotently and resumably.
//!
//! Pipeline: a producer thread walks the source, reads each sample's media
//! and sidecars, probes and hashes them ([`crate::media`],
//! [`crate::sidecar`]) and fills batches bounded by bytes; the caller's task
//! appends each batch to Lance as one commit. Memory is bounded by two
//! batches in flight, whatever the source size.
//!
//! Idempotence: a sample's `id` is `xxh3-128(key, xxh3-128(media bytes))`,
//! with `key` the format-independent source key (relative path without
//! extension). Ids already in `samples` are skipped, so a re-run adds
//! nothing, and a run killed at any instant leaves only whole committed
//! batches (Lance commits are atomic): re-running completes it with nothing
//! lost and nothing duplicated.

mod batch;
mod folder;
mod parquet;
mod webdataset;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, RecordBatchIterator, StringArray};
use futures::TryStreamExt;
use lance::Dataset;
use xxhash_rust::xxh3::xxh3_128;

use crate::error::{Error, Result};
use crate::granary::Granary;
use crate::media;
use crate::schema;
use crate::sidecar::Sidecar;

pub use batch::{ErrorRow, Sample};

/// The layout of an ingest source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// A directory tree of media files with optional `NAME.txt`/`NAME.json` sidecars.
    Folder,
    /// One `.tar` shard or a directory of them, grouped by key (WebDataset convention).
    WebDataset,
    /// One `.parquet` file or a directory of them.
    Parquet,
}

impl SourceFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::Folder => "folder",
            SourceFormat::WebDataset => "webdataset",
            SourceFormat::Parquet => "parquet",
        }
    }
}

/// Column names of a Parquet source.
#[derive(Debug, Clone)]
pub struct ParquetColumns {
    /// Encoded media: binary, or Hugging Face's `struct{bytes, path}`.
    pub image: String,
    /// Caption text (optional column).
    pub caption: Option<String>,
    /// Source key; default: the image struct's `path` without extension, else `FILE/ROW`.
    pub key: Option<String>,
    /// A JSON string with the same fields as a `NAME.json` sidecar (optional).
    pub meta: Option<String>,
}

impl Default for ParquetColumns {
    fn default() -> Self {
        ParquetColumns {
            image: "image".into(),
            caption: Some("caption".into()),
            key: None,
            meta: None,
        }
    }
}

/// How to ingest.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub format: SourceFormat,
    pub parquet: ParquetColumns,
    /// Value of the `source` column when a sidecar names none.
    pub source_name: Option<String>,
    /// A batch is committed when its media bytes reach this many.
    pub batch_bytes: usize,
    /// … or when it holds this many samples.
    pub batch_rows: usize,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            format: SourceFormat::Folder,
            parquet: ParquetColumns::default(),
            source_name: None,
            batch_bytes: 64 << 20,
            batch_rows: 8192,
        }
    }
}

/// Receives progress of a running ingest (called from the producer thread).
pub trait IngestProgress: Send + Sync {
    /// The number of samples the source holds, when it is known up front.
    fn total(&self, _items: u64) {}
    /// One more source sample was read (`bytes` of media).
    fn advance(&self, _bytes: u64) {}
}

/// A progress sink that ignores everything.
pub struct NoProgress;
impl IngestProgress for NoProgress {}

/// What an ingest did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestSummary {
    /// Samples found in the source.
    pub scanned: u64,
    /// Samples added to `samples` by this run.
    pub ingested: u64,
    /// Images and videos among `ingested`.
    pub images: u64,
    pub videos: u64,
    /// Media bytes added.
    pub bytes: u64,
    /// Samples skipped because their id was already in the granary.
    pub already_present: u64,
    /// Samples rejected by this run (new and previously recorded).
    pub errors: u64,
    /// Commits (batches) made.
    pub commits: u64,
    pub elapsed: Duration,
}

/// One source sample before probing: its key and raw files.
#[derive(Debug, Default)]
pub(crate) struct RawItem {
    /// Format-independent key (relative path without extension, `/`-separated).
    pub key: String,
    /// Where it came from, for error reports (file path, `shard.tar:member`, `file.parquet#row`).
    pub path: String,
    pub media: Option<Vec<u8>>,
    pub txt: Option<Vec<u8>>,
    pub json: Option<Vec<u8>>,
    /// Set when the sample could not even be read.
    pub read_error: Option<String>,
}

/// A source walks its samples and hands each to `emit`; `emit` returns
/// `false` to stop early (the consumer is gone).
pub(crate) trait Source {
    fn total(&self) -> Option<u64>;
    fn run(self: Box<Self>, emit: &mut dyn FnMut(RawItem) -> bool) -> Result<()>;
}

enum Msg {
    Batch(Vec<Sample>, Vec<ErrorRow>),
    Done(Stats),
}

#[derive(Default)]
struct Stats {
    scanned: u64,
    already_present: u64,
    errors: u64,
}

/// Ingest `src` into the granary. See the module docs for the guarantees.
pub async fn ingest(
    granary: &Granary,
    src: &Path,
    opts: &IngestOptions,
    progress: Arc<dyn IngestProgress>,
) -> Result<IngestSummary> {
    let started = Instant::now();
    let src = std::fs::canonicalize(src).map_err(|e| Error::io(src, e))?;
    let source: Box<dyn Source + Send> = match opts.format {
        SourceFormat::Folder => Box::new(folder::Folder::open(&src)?),
        SourceFormat::WebDataset => Box::new(webdataset::Shards::open(&src)?),
        SourceFormat::Parquet => Box::new(parquet::ParquetSource::open(&src, &opts.parquet)?),
    };
    if let Some(n) = source.total() {
        progress.total(n);
    }

    let mut samples = granary.table(schema::SAMPLES).await?;
    let mut errors_table = granary.table(schema::INGEST_ERRORS).await?;
    let known_ids = load_ids(&samples, "id").await?;
    let known_errors = load_ids(&errors_table, "error_id").await?;

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(1);
    let ctx = Producer {
        dim: granary.embedding_dim(),
        format: opts.format,
        source_name: opts.source_name.clone(),
        batch_bytes: opts.batch_bytes.max(1),
        batch_rows: opts.batch_rows.max(1),
        known_ids,
        known_errors,
    };
    let progress2 = progress.clone();
    let producer = std::thread::Builder::new()
        .name("granary-ingest-read".into())
        .spawn(move || ctx.run(source, tx, progress2.as_ref()))
        .map_err(|e| Error::Internal(format!("cannot start the reader thread: {e}")))?;

    let mut summary = IngestSummary::default();
    let samples_schema = schema::samples(granary.embedding_dim());
    let errors_schema = schema::ingest_errors();
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Batch(rows, errs) => {
                if !rows.is_empty() {
                    for s in &rows {
                        summary.bytes += s.bytes.len() as u64;
                        match s.info.format.media() {
                            media::Media::Image => summary.images += 1,
                            media::Media::Video => summary.videos += 1,
                        }
                    }
                    summary.ingested += rows.len() as u64;
                    let batch = batch::samples_batch(&rows, &samples_schema)?;
                    drop(rows);
                    append(&mut samples, batch).await?;
                    summary.commits += 1;
                }
                if !errs.is_empty() {
                    let batch = batch::errors_batch(&errs, &errors_schema)?;
                    append(&mut errors_table, batch).await?;
                    summary.commits += 1;
                }
            }
            Msg::Done(stats) => {
                summary.scanned = stats.scanned;
                summary.already_present = stats.already_present;
                summary.errors = stats.errors;
            }
        }
    }
    match producer.join() {
        Ok(r) => r?,
        Err(_) => return Err(Error::Internal("the reader thread panicked".into())),
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Append already-built sample rows to `samples` in one commit, without
/// probing or de-duplication: for generators and benchmarks that make rows
/// directly (ids must be unique; `ingest` is the path for real sources).
pub async fn append_samples(g: &Granary, rows: &[Sample]) -> Result<()> {
    let schema = schema::samples(g.embedding_dim());
    let batch = batch::samples_batch(rows, &schema)?;
    let mut ds = g.table(schema::SAMPLES).await?;
    append(&mut ds, batch).await
}

async fn append(ds: &mut Dataset, batch: arrow::array::RecordBatch) -> Result<()> {
    let schema = batch.schema();
    ds.append(RecordBatchIterator::new(vec![Ok(batch)], schema), None)
        .await?;
    Ok(())
}

/// All values of a hex-id column, as u128.
async fn load_ids(ds: &Dataset, column: &str) -> Result<HashSet<u128>> {
    let mut out = HashSet::new();
    let mut scan = ds.scan();
    scan.project(&[column])?;
    let mut stream = scan.try_into_stream().await?;
    while let Some(batch) = stream.try_next().await? {
        let col = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| Error::Internal(format!("{column} is not Utf8")))?;
        out.reserve(col.len());
        for v in col.iter().flatten() {
            if let Ok(id) = u128::from_str_radix(v, 16) {
                out.insert(id);
            }
        }
    }
    Ok(out)
}

/// The stable sample id of a key and its media bytes.
pub fn sample_id(key: &str, media: &[u8]) -> (u128, u128) {
    let content = xxh3_128(media);
    let mut buf = Vec::with_capacity(key.len() + 17);
    buf.extend_from_slice(key.as_bytes());
    buf.push(0);
    buf.extend_from_slice(&content.to_le_bytes());
    (xxh3_128(&buf), content)
}

struct Producer {
    dim: usize,
    format: SourceFormat,
    source_name: Option<String>,
    batch_bytes: usize,
    batch_rows: usize,
    known_ids: HashSet<u128>,
    known_errors: HashSet<u128>,
}

impl Producer {
    fn run(
        mut self,
        source: Box<dyn Source + Send>,
        tx: tokio::sync::mpsc::Sender<Msg>,
        progress: &dyn IngestProgress,
    ) -> Result<()> {
        let mut stats = Stats::default();
        let mut rows: Vec<Sample> = Vec::new();
        let mut errs: Vec<ErrorRow> = Vec::new();
        let mut bytes = 0usize;
        let mut closed = false;
        let mut emit = |item: RawItem| -> bool {
            stats.scanned += 1;
            let len = item.media.as_ref().map_or(0, Vec::len);
            progress.advance(len as u64);
            match self.process(item) {
                Ok(Some(s)) => {
                    bytes += s.bytes.len();
                    rows.push(s);
                }
                Ok(None) => stats.already_present += 1,
                Err(e) => {
                    stats.errors += 1;
                    if self.known_errors.insert(e.error_id) {
                        errs.push(e);
                    }
                }
            }
            if bytes >= self.batch_bytes || rows.len() >= self.batch_rows || errs.len() >= 4096 {
                bytes = 0;
                let msg = Msg::Batch(std::mem::take(&mut rows), std::mem::take(&mut errs));
                if tx.blocking_send(msg).is_err() {
                    closed = true;
                    return false;
                }
            }
            true
        };
        source.run(&mut emit)?;
        if closed {
            return Ok(());
        }
        // The consumer may be gone after an error of its own; it reports that.
        let _ = tx.blocking_send(Msg::Batch(rows, errs));
        let _ = tx.blocking_send(Msg::Done(stats));
        Ok(())
    }

    /// `Ok(None)`: already in the granary (or earlier in this run).
    fn process(&mut self, item: RawItem) -> Result<Option<Sample>, ErrorRow> {
        let fail = |item: &RawItem, reason: String| ErrorRow::new(item, reason, self.format);
        if let Some(reason) = &item.read_error {
            return Err(fail(&item, reason.clone()));
        }
        let Some(bytes) = item.media.as_deref() else {
            return Err(fail(&item, "no media file for this key".into()));
        };
        let info = media::probe(bytes).map_err(|r| fail(&item, r))?;
        let sidecar = Sidecar::parse(
            item.txt.as_deref(),
            item.json.as_deref(),
            info.width,
            info.height,
            self.dim,
        )
        .map_err(|r| fail(&item, r))?;
        let (id, content) = sample_id(&item.key, bytes);
        if !self.known_ids.insert(id) {
            return Ok(None);
        }
        let RawItem { key, media, .. } = item;
        Ok(Some(Sample {
            id: format!("{id:032x}"),
            key,
            content_hash: format!("{content:032x}"),
            bytes: media.unwrap_or_default(),
            info,
            source: sidecar.source.clone().or_else(|| self.source_name.clone()),
            sidecar,
        }))
    }
}

/// The files a shard-style source names: `src` itself when it is a file, else
/// the files directly in the directory `src` whose extension is `ext`, sorted.
pub(crate) fn source_files(src: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    if !src.is_dir() {
        return Ok(vec![src.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(src).map_err(|e| Error::io(src, e))? {
        let path = entry.map_err(|e| Error::io(src, e))?.path();
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case(ext))
        {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{}: no .{ext} files in this directory",
            src.display()
        )));
    }
    files.sort();
    Ok(files)
}

/// Path as a display string for error rows.
pub(crate) fn display(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Key of a file under `root`: its relative path without the extension, `/`-separated.
pub(crate) fn key_of(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let mut key = PathBuf::from(rel);
    key.set_extension("");
    let parts: Vec<String> = key
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    Some(parts.join("/"))
}
