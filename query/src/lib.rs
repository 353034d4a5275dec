//! granary-query: a DataFusion session over a granary's tables.
//!
//! Every table of the granary is registered under its name through Lance's
//! DataFusion table provider, which pushes projections, filters and limits
//! down into the Lance scan: a query over scalar columns never reads media
//! bytes. Blob columns read back as their descriptor struct
//! (`kind, position, size, blob_id, blob_uri`), not as payloads.
//!
//! Architecture invariant: query never writes files; it reads through
//! granary-storage and returns Arrow batches. Formatting is the caller's.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
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

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A SQL session with every table of one granary registered.
pub struct Session {
    ctx: SessionContext,
    tables: Vec<String>,
}

impl Session {
    /// Register every table of `granary` at its latest version.
    pub async fn open(granary: &Granary) -> Result<Session> {
        let config = SessionConfig::new().with_information_schema(true);
        let ctx = SessionContext::new_with_config(config);
        let mut tables = Vec::new();
        for name in granary.table_names()? {
            let ds = granary.table(&name).await?;
            let provider = LanceTableProvider::new(Arc::new(ds), false, false);
            ctx.register_table(name.as_str(), Arc::new(provider))?;
            tables.push(name);
        }
        Ok(Session { ctx, tables })
    }

    /// Register the `chunks` and `steps` tables of a checkpoint root.
    pub async fn open_checkpoint(root: &std::path::Path) -> Result<Session> {
        let config = SessionConfig::new().with_information_schema(true);
        let ctx = SessionContext::new_with_config(config);
        let ck = granary_storage::checkpoint::CkptRoot::open(root, false).await?;
        let mut tables = Vec::new();
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
        Ok(Session { ctx, tables })
    }

    /// Names of the registered tables.
    pub fn tables(&self) -> &[String] {
        &self.tables
    }

    /// The underlying DataFusion context (to register UDFs, more tables, …).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Run one read-only statement and collect its result.
    pub async fn sql(&self, query: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let options = datafusion::execution::context::SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
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
                            "{} (granary sql is read-only)",
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
