//! A granary: one root directory holding Lance datasets, one per table
//! (`ROOT/samples.lance`, `ROOT/ingest_errors.lance`, …). This module
//! creates, opens and describes them; it checks the schema version on open.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchIterator};
use arrow::datatypes::{Field, Schema, SchemaRef};
use lance::Dataset;
use lance::dataset::optimize::{CompactionOptions, compact_files};
use lance::dataset::{
    MergeInsertBuilder, NewColumnTransform, WhenMatched, WhenNotMatched, WhenNotMatchedBySource,
    WriteMode, WriteParams,
};

use crate::error::{Error, Result};
use crate::schema::{self, META_EMBEDDING_DIM, META_SCHEMA_VERSION, SCHEMA_VERSION};

/// An opened granary root.
#[derive(Debug, Clone)]
pub struct Granary {
    root: PathBuf,
    embedding_dim: usize,
}

/// What `granary info` reports about one table.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub name: String,
    pub rows: usize,
    pub version: u64,
    pub fragments: usize,
    pub size_bytes: u64,
    pub schema: SchemaRef,
}

/// What `compact` did to one table.
#[derive(Debug, Clone)]
pub struct CompactReport {
    pub table: String,
    pub fragments_before: usize,
    pub fragments_after: usize,
    /// Fragments rewritten into the new ones (0: the table was left as is).
    pub fragments_removed: usize,
    pub rows: usize,
    pub version_before: u64,
    pub version: u64,
}

impl Granary {
    /// Create a new granary at `root` (created if missing; must be empty if it exists).
    pub async fn init(root: &Path, embedding_dim: usize) -> Result<Granary> {
        if embedding_dim == 0 || embedding_dim > 65_536 {
            return Err(Error::InvalidInput(format!(
                "embedding dimension must be in 1..=65536, got {embedding_dim}"
            )));
        }
        if root.join(table_dir(schema::SAMPLES)).exists() {
            return Err(Error::AlreadyExists(root.to_path_buf()));
        }
        if root.exists() {
            let mut entries = std::fs::read_dir(root).map_err(|e| Error::io(root, e))?;
            if entries.next().is_some() {
                return Err(Error::InvalidInput(format!(
                    "{} exists and is not empty; give a new or empty directory",
                    root.display()
                )));
            }
        }
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        let root = std::fs::canonicalize(root).map_err(|e| Error::io(root, e))?;
        let g = Granary {
            root,
            embedding_dim,
        };
        // `samples` last: its presence is what marks a granary, so an init
        // killed half-way leaves a directory `init` can be re-run on.
        g.create_table(schema::INGEST_ERRORS, schema::ingest_errors())
            .await?;
        g.create_table(schema::SAMPLES, schema::samples(embedding_dim))
            .await?;
        Ok(g)
    }

    /// Open an existing granary, checking its schema version.
    pub async fn open(root: &Path) -> Result<Granary> {
        if !root.is_dir() {
            return Err(Error::NotAGranary {
                path: root.to_path_buf(),
                reason: "no such directory".into(),
            });
        }
        let root = std::fs::canonicalize(root).map_err(|e| Error::io(root, e))?;
        let samples_dir = root.join(table_dir(schema::SAMPLES));
        if !samples_dir.is_dir() {
            return Err(Error::NotAGranary {
                path: root.clone(),
                reason: "no samples.lance table (create one with `granary init`)".into(),
            });
        }
        let ds = Dataset::open(&uri(&samples_dir)).await?;
        let meta = Schema::from(ds.schema()).metadata;
        check_version(&samples_dir, meta.get(META_SCHEMA_VERSION))?;
        let embedding_dim = meta
            .get(META_EMBEDDING_DIM)
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| Error::NotAGranary {
                path: root.clone(),
                reason: format!("samples table lacks a valid {META_EMBEDDING_DIM}"),
            })?;
        let g = Granary {
            root,
            embedding_dim,
        };
        if !g.table_path(schema::INGEST_ERRORS).is_dir() {
            g.create_table(schema::INGEST_ERRORS, schema::ingest_errors())
                .await?;
        }
        Ok(g)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The fixed embedding dimension of this granary's `samples`.
    pub fn embedding_dim(&self) -> usize {
        self.embedding_dim
    }

    /// Directory of a table's Lance dataset.
    pub fn table_path(&self, name: &str) -> PathBuf {
        self.root.join(table_dir(name))
    }

    /// Open a table at its latest version, checking its schema version.
    pub async fn table(&self, name: &str) -> Result<Dataset> {
        let path = self.table_path(name);
        if !path.is_dir() {
            return Err(Error::InvalidInput(format!(
                "granary {} has no table {name}",
                self.root.display()
            )));
        }
        let ds = Dataset::open(&uri(&path)).await?;
        let meta = Schema::from(ds.schema()).metadata;
        if let Some(v) = meta.get(META_SCHEMA_VERSION) {
            check_version(&path, Some(v))?;
        }
        Ok(ds)
    }

    /// Names of all tables (Lance datasets directly under the root), sorted.
    pub fn table_names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(|e| Error::io(&self.root, e))? {
            let entry = entry.map_err(|e| Error::io(&self.root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".lance")
                && entry.path().is_dir()
            {
                names.push(stem.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Row counts, versions, sizes and schemas of every table.
    pub async fn info(&self) -> Result<Vec<TableInfo>> {
        let mut out = Vec::new();
        for name in self.table_names()? {
            let ds = self.table(&name).await?;
            out.push(TableInfo {
                rows: ds.count_rows(None).await?,
                version: ds.version().version,
                fragments: ds.count_fragments(),
                size_bytes: dir_size(&self.table_path(&name))?,
                schema: Arc::new(Schema::from(ds.schema())),
                name,
            });
        }
        Ok(out)
    }

    /// Rewrite each table's small fragments into fragments of up to
    /// `target_rows` rows (Lance's `compact_files`), one commit per table.
    /// Every append (an ingest batch, a plan) adds a fragment, and each
    /// query pays a file open and a few reads per fragment, so a granary
    /// built by many small commits scans faster once compacted. Rows, their
    /// order within a fragment and every column are kept; blob payloads are
    /// copied into the new files. Nothing is deleted: earlier versions stay
    /// readable from their own files. Lance row ids (`_rowid`) change, so
    /// they are only meaningful within one version, as they already were.
    /// Tables with nothing to merge are left at their version.
    pub async fn compact(
        &self,
        target_rows: usize,
        progress: &dyn Fn(&str),
    ) -> Result<Vec<CompactReport>> {
        if target_rows == 0 {
            return Err(Error::InvalidInput(
                "the target rows per fragment must be at least 1".into(),
            ));
        }
        let mut out = Vec::new();
        for name in self.table_names()? {
            let mut ds = self.table(&name).await?;
            let fragments_before = ds.count_fragments();
            let version_before = ds.version().version;
            progress(&format!("{name}: {fragments_before} fragments"));
            let options = CompactionOptions {
                target_rows_per_fragment: target_rows,
                ..Default::default()
            };
            let metrics = compact_files(&mut ds, options, None).await?;
            out.push(CompactReport {
                fragments_before,
                fragments_after: ds.count_fragments(),
                fragments_removed: metrics.fragments_removed,
                rows: ds.count_rows(None).await?,
                version_before,
                version: ds.version().version,
                table: name,
            });
        }
        Ok(out)
    }

    /// Set the non-key columns of `batches` on the rows of `table` whose
    /// `key` matches, in one Lance commit that attaches new column files and
    /// never rewrites blob payloads. Columns the table lacks are first added
    /// as nullable all-null columns (one more commit). The previous versions
    /// stay readable. Returns the new version and the number of rows updated.
    pub async fn update_columns(
        &self,
        table: &str,
        key: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<(u64, u64)> {
        if schema.field_with_name(key).is_err() {
            return Err(Error::Internal(format!(
                "update_columns: the batches lack the key column {key}"
            )));
        }
        let mut ds = self.table(table).await?;
        let existing = Schema::from(ds.schema());
        let missing: Vec<Field> = schema
            .fields()
            .iter()
            .filter(|f| f.name() != key && existing.field_with_name(f.name()).is_err())
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        if !missing.is_empty() {
            let nulls = Arc::new(Schema::new(missing));
            ds.add_columns(NewColumnTransform::AllNulls(nulls), None, None)
                .await?;
        }
        let mut builder = MergeInsertBuilder::try_new(Arc::new(ds), vec![key.to_string()])?;
        builder
            .when_matched(WhenMatched::UpdateAll)
            .when_not_matched(WhenNotMatched::DoNothing)
            .write_mode(lance::dataset::MergeInsertWriteMode::RewriteColumns);
        let source = RecordBatchIterator::new(batches.into_iter().map(Ok), schema);
        let (ds, stats) = builder.try_build()?.execute_reader(source).await?;
        Ok((ds.version().version, stats.num_updated_rows))
    }

    /// Whether the `sampling_plans` table holds a plan called `name`.
    pub async fn plan_exists(&self, name: &str) -> Result<bool> {
        if !self.table_path(schema::SAMPLING_PLANS).is_dir() {
            return Ok(false);
        }
        let ds = self.table(schema::SAMPLING_PLANS).await?;
        Ok(ds.count_rows(Some(plan_filter(name))).await? > 0)
    }

    /// Write the rows of plan `name` into `sampling_plans` (created on first
    /// use) in one commit. An existing plan of that name is an error unless
    /// `replace`, which swaps its rows for the new ones atomically (readers
    /// see the old plan or the new one, never a mix). Returns the version.
    pub async fn write_plan(
        &self,
        name: &str,
        batches: Vec<RecordBatch>,
        replace: bool,
    ) -> Result<u64> {
        let plan_schema = schema::sampling_plans();
        let path = self.table_path(schema::SAMPLING_PLANS);
        if !path.is_dir() {
            self.create_table(schema::SAMPLING_PLANS, plan_schema.clone())
                .await?;
        }
        let exists = self.plan_exists(name).await?;
        if exists && !replace {
            return Err(Error::AlreadyExists(PathBuf::from(format!(
                "sampling plan {name:?} (pass --replace to overwrite it)"
            ))));
        }
        let batches = batches
            .into_iter()
            .map(|b| RecordBatch::try_new(plan_schema.clone(), b.columns().to_vec()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let source = RecordBatchIterator::new(batches.into_iter().map(Ok), plan_schema);
        if !exists {
            let params = WriteParams {
                mode: WriteMode::Append,
                ..Default::default()
            };
            let ds = Dataset::write(source, uri(&path).as_str(), Some(params)).await?;
            return Ok(ds.version().version);
        }
        let ds = Arc::new(self.table(schema::SAMPLING_PLANS).await?);
        let delete_old = WhenNotMatchedBySource::delete_if(&ds, &plan_filter(name))?;
        let mut builder =
            MergeInsertBuilder::try_new(ds, vec!["plan".to_string(), "sample_id".to_string()])?;
        builder
            .when_matched(WhenMatched::UpdateAll)
            .when_not_matched(WhenNotMatched::InsertAll)
            .when_not_matched_by_source(delete_old);
        let (ds, _) = builder.try_build()?.execute_reader(source).await?;
        Ok(ds.version().version)
    }

    async fn create_table(&self, name: &str, schema: SchemaRef) -> Result<Dataset> {
        let path = self.table_path(name);
        let params = WriteParams {
            mode: WriteMode::Create,
            ..Default::default()
        };
        let empty = RecordBatchIterator::new(Vec::new(), schema);
        Ok(Dataset::write(empty, uri(&path).as_str(), Some(params)).await?)
    }
}

fn check_version(path: &Path, found: Option<&String>) -> Result<()> {
    match found {
        Some(v) if v.parse::<u32>().ok() == Some(SCHEMA_VERSION) => Ok(()),
        Some(v) => Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found: v.clone(),
            supported: SCHEMA_VERSION,
        }),
        None => Err(Error::NotAGranary {
            path: path.to_path_buf(),
            reason: format!("table has no {META_SCHEMA_VERSION} in its schema metadata"),
        }),
    }
}

/// A Lance filter selecting one plan's rows (the name quoted as an SQL string).
pub fn plan_filter(name: &str) -> String {
    format!("plan = '{}'", name.replace('\'', "''"))
}

fn table_dir(name: &str) -> String {
    format!("{name}.lance")
}

/// The string Lance opens a local dataset directory by.
pub fn uri(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Total size of the files under `path`.
pub fn dir_size(path: &Path) -> Result<u64> {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let meta = entry.metadata().map_err(|e| Error::io(entry.path(), e))?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    Ok(total)
}
