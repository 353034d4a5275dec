//! granary-storage: everything that touches files. A granary is a root
//! directory of Lance datasets (`samples`, `ingest_errors`, later sampling
//! plans and checkpoints); this crate creates, opens and appends to them.
//!
//! Architecture invariant: storage knows nothing of SQL, curation or
//! training. It hands out Lance datasets and Arrow schemas; the layers above
//! decide what to do with them.

pub mod checkpoint;
mod error;
pub mod granary;
pub mod ingest;
pub mod media;
pub mod schema;
pub mod sidecar;

pub use error::{Error, Result};
pub use granary::{CompactReport, Granary, TableInfo};
pub use ingest::{IngestOptions, IngestProgress, IngestSummary, ParquetColumns, SourceFormat};

/// Re-export so upper crates use exactly the Lance (and so Arrow) that storage uses.
pub use lance;
