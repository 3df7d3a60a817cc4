//! The storage crate's error type: every variant says which file or offset, and what was expected.

use std::path::PathBuf;

use thiserror::Error;

use weir_format::batch::CodecError;

/// What can go wrong in a partition log. Callers map these to their own statuses (the broker maps
/// them to gRPC codes in one place); nothing here knows about transports.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("partition directory {} is in use by another process (lock file {} is held)", dir.display(), lock_file.display())]
    Locked { dir: PathBuf, lock_file: PathBuf },
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] CodecError),
    #[error("batch of {size} bytes exceeds the limit of {limit} bytes")]
    BatchTooLarge { size: usize, limit: u32 },
    #[error("offset {requested} is out of range: the log holds [{log_start}, {next_offset})")]
    OffsetOutOfRange {
        requested: u64,
        log_start: u64,
        next_offset: u64,
    },
    #[error("entry index {requested} is out of range: the log holds [{first}, {next})")]
    IndexOutOfRange {
        requested: u64,
        first: u64,
        next: u64,
    },
    #[error("offset {offset} is not the start of a batch")]
    NotBatchBoundary { offset: u64 },
    #[error("term {term} is below the log's last term {last_term}")]
    TermRegression { term: u64, last_term: u64 },
    #[error("corrupt data in {} at byte {position}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("partition log {} is stopped after an earlier failure: {reason}", dir.display())]
    Stopped { dir: PathBuf, reason: String },
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
    #[error("entry {index} was removed by a truncation before it became durable")]
    Truncated { index: u64 },
    #[error("the partition log is closed")]
    Closed,
}

impl From<crate::fs::FsError> for StorageError {
    fn from(err: crate::fs::FsError) -> Self {
        Self::Io {
            op: err.op,
            path: err.path,
            source: err.source,
        }
    }
}

impl StorageError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }

    /// True for errors after which the partition refuses further work until an operator acts.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Corrupt { .. } | Self::Stopped { .. })
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
