//! granary-query: a DataFusion session over a granary's tables.
//!
//! Every table of the granary is registered under its name through Lance's
//! DataFusion table provider, which pushes projections, filters and limits
//! down into the Lance scan: a query over scalar columns never reads media
//! bytes. [`scan`] narrows filter-only nested columns to the parts a filter
//! reads, materialises a top-k's wide columns late, and splits unlimited
//! scans into one partition per core. Blob columns read back as their
//! descriptor struct (`kind, position, size, blob_id, blob_uri`), not as
//! payloads.
//!
//! Architecture invariant: query never writes files; it reads through
//! granary-storage and returns Arrow batches. Formatting is the caller's.

pub mod builtins;
pub mod curate;
pub mod descriptor;
pub mod ipf;
pub mod kmeans;
pub mod plan;
pub mod plot;
pub mod scan;
pub mod tfidf;
pub mod udf;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use granary_storage::Granary;
use lance::datafusion::LanceTableProvider;

/// Errors from granary-query.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The query was wrong: syntax, unknown table or column, type mismatch.
    #[error("{0}")]
    Query(String),
    /// The statement would modify data.
    #[error("refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Storage(#[from] granary_storage::Error),
    /// Execution failed inside DataFusion or Lance.
    #[error("query failed: {0}")]
    Execution(#[source] DataFusionError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        match e.find_root() {
            DataFusionError::SQL(..)
            | DataFusionError::Plan(..)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(..) => {
                Error::Query(one_line(&e.find_root().to_string()))
            }
            _ => Error::Execution(e),
        }
    }
}

impl From<lance::Error> for Error {
    fn from(e: lance::Error) -> Self {
        Error::Storage(granary_storage::Error::from(e))
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A SQL session with every table of one granary registered.
pub struct Session {
    ctx: SessionContext,
    tables: Vec<String>,
    allow_write: bool,
}

/// Where a granary keeps its checkpoint root, if it has one; its `chunks`,
/// `steps` and `committed` tables are then registered beside the samples.
pub const CHECKPOINTS_DIR: &str = "checkpoints";

fn new_context() -> SessionContext {
    let config = SessionConfig::new().with_information_schema(true);
    let mut builder = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_optimizer_rule(Arc::new(scan::LateTopK));
    builtins::install(&mut builder);
    let ctx = SessionContext::new_with_state(builder.build());
    udf::register(&ctx);
    ctx
}

impl Session {
    /// Register every table of `granary` at its latest version, and the
    /// checkpoint tables of `ROOT/checkpoints` when it is a checkpoint root.
    pub async fn open(granary: &Granary) -> Result<Session> {
        let ctx = new_context();
        let mut tables = Vec::new();
        for name in granary.table_names()? {
            let ds = granary.table(&name).await?;
            let provider = scan::GranaryTable::new(Arc::new(ds));
            ctx.register_table(name.as_str(), Arc::new(provider))?;
            tables.push(name);
        }
        let ckpt = granary.root().join(CHECKPOINTS_DIR);
        if granary_storage::checkpoint::CkptRoot::is_root(&ckpt) {
            register_checkpoint(&ctx, &ckpt, &mut tables).await?;
        }
        Ok(Session {
            ctx,
            tables,
            allow_write: false,
        })
    }

    /// Register the `chunks`, `steps` and `committed` tables of a checkpoint root.
    pub async fn open_checkpoint(root: &std::path::Path) -> Result<Session> {
        let ctx = new_context();
        let mut tables = Vec::new();
        register_checkpoint(&ctx, root, &mut tables).await?;
        Ok(Session {
            ctx,
            tables,
            allow_write: false,
        })
    }

    /// Re-register `table` of `granary` (at its latest version) so that its
    /// scans also offer Lance's `_rowid` column: an id of the row within
    /// this snapshot, which lets two scans of one selection be lined up.
    pub async fn expose_row_ids(&self, granary: &Granary, table: &str) -> Result<()> {
        let ds = granary.table(table).await?;
        self.ctx.deregister_table(table)?;
        let provider = LanceTableProvider::new(Arc::new(ds), true, false);
        self.ctx.register_table(table, Arc::new(provider))?;
        Ok(())
    }

    /// Allow statements beyond queries: session-local DDL such as `CREATE
    /// VIEW` or `CREATE TABLE … AS`, and `SET`. Granary tables themselves are
    /// changed only by granary commands (ingest, curate, plan); DML on them
    /// still fails, since their provider accepts no writes.
    pub fn allow_write(mut self, allow: bool) -> Self {
        self.allow_write = allow;
        self
    }

    /// Table names and their column names, for completion in a REPL.
    pub async fn completions(&self) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for t in &self.tables {
            if let Ok(p) = self.ctx.table_provider(t.as_str()).await {
                let cols = p
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect();
                out.push((t.clone(), cols));
            }
        }
        out
    }

    /// Names of the registered tables.
    pub fn tables(&self) -> &[String] {
        &self.tables
    }

    /// The underlying DataFusion context (to register UDFs, more tables, …).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Run one read-only query and stream its result batch by batch.
    pub async fn stream(
        &self,
        query: &str,
    ) -> Result<datafusion::physical_plan::SendableRecordBatchStream> {
        let df = self.ctx.sql_with_options(query, sql_options(false)).await?;
        Ok(df.execute_stream().await?)
    }

    /// Run one statement and collect its result. Only queries are allowed
    /// unless the session was opened with [`Session::allow_write`].
    pub async fn sql(&self, query: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let options = sql_options(self.allow_write);
        let df =
            self.ctx
                .sql_with_options(query, options)
                .await
                .map_err(|e| match Error::from(e) {
                    Error::Query(m)
                        if ["DDL", "DML", "Statement"]
                            .iter()
                            .any(|k| m.contains(&format!("{k} not supported"))) =>
                    {
                        Error::Refused(format!(
                            "{} (granary sql is read-only; --allow-write permits session-local statements)",
                            m.trim_start_matches("Error during planning: ")
                        ))
                    }
                    other => other,
                })?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        Ok((schema, batches))
    }
}

/// What a statement may do: queries only, or also DDL, DML and `SET`.
fn sql_options(allow_write: bool) -> datafusion::execution::context::SQLOptions {
    datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(allow_write)
        .with_allow_dml(allow_write)
        .with_allow_statements(allow_write)
}

async fn register_checkpoint(
    ctx: &SessionContext,
    root: &std::path::Path,
    tables: &mut Vec<String>,
) -> Result<()> {
    let ck = granary_storage::checkpoint::CkptRoot::open(root, false).await?;
    for name in [
        granary_storage::checkpoint::meta::CHUNKS,
        granary_storage::checkpoint::meta::STEPS,
    ] {
        let ds = ck.dataset(name).await?;
        let provider = LanceTableProvider::new(Arc::new(ds), false, false);
        ctx.register_table(name, Arc::new(provider))?;
        tables.push(name.to_string());
    }
    // `committed`: the (step, run) pairs the step tags make visible, to
    // join with `chunks`/`steps` (which also hold rows of crashed or
    // beaten attempts until `granary ckpt gc`).
    let steps = ck.committed_steps().await?;
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("step", arrow::datatypes::DataType::UInt64, false),
        arrow::datatypes::Field::new("run", arrow::datatypes::DataType::Utf8, false),
        arrow::datatypes::Field::new("version", arrow::datatypes::DataType::UInt64, false),
        arrow::datatypes::Field::new("latest", arrow::datatypes::DataType::Boolean, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(arrow::array::UInt64Array::from_iter_values(
                steps.iter().map(|s| s.step),
            )),
            Arc::new(arrow::array::StringArray::from_iter_values(
                steps.iter().map(|s| s.run.as_str()),
            )),
            Arc::new(arrow::array::UInt64Array::from_iter_values(
                steps.iter().map(|s| s.version),
            )),
            Arc::new(arrow::array::BooleanArray::from_iter(
                steps.iter().map(|s| Some(s.is_latest)),
            )),
        ],
    )
    .map_err(|e| Error::Execution(DataFusionError::ArrowError(Box::new(e), None)))?;
    let mem = datafusion::datasource::MemTable::try_new(schema, vec![vec![batch]])?;
    ctx.register_table("committed", Arc::new(mem))?;
    tables.push("committed".to_string());
    Ok(())
}
