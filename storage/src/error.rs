//! The storage error type: bad input, a directory that is not a granary,
//! I/O, and failures inside Lance/Arrow/Parquet are distinct variants.

use std::path::PathBuf;

/// Errors from granary-storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller's input was wrong (a flag, a path, a value).
    #[error("{0}")]
    InvalidInput(String),
    /// The directory exists but does not hold a granary.
    #[error("not a granary: {path}: {reason}")]
    NotAGranary { path: PathBuf, reason: String },
    /// The granary was written by a build with a schema version this one does not read.
    #[error(
        "{path}: schema version {found} is not supported by this build (it reads version {supported}); upgrade granary"
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: String,
        supported: u32,
    },
    /// Refused to overwrite something that exists.
    #[error("{0} already exists")]
    AlreadyExists(PathBuf),
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lance: {0}")]
    Lance(#[from] lance::Error),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Stored data failed an integrity check (checksum, length, truncation).
    /// The message names the tensor and the file.
    #[error("corrupt checkpoint: {0}")]
    Corrupt(String),
    /// Another writer got there first (two savers on one checkpoint step).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A bug: an invariant of this crate did not hold.
    #[error("internal error (a bug, please report): {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
