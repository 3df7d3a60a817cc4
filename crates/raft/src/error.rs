//! The replication crate's errors: [`GroupError`], what a caller of a group (the broker, the
//! controller) can get back, and [`StorageFault`], why a group's Raft core stopped.
//!
//! Every failure a client may eventually see is its own variant, never a string: the broker maps
//! them to gRPC codes in one table (`weir-broker`'s `status` module), and that table decides
//! whether a client may retry and whether the write may have happened. Strings survive only as
//! the human-readable detail inside a variant.
//!
//! Invariant: a failure that repeats on retry (corrupt data, a full disk, an I/O error, a fenced
//! producer) is never one of the retryable variants (`NotLeader`, `Timeout`, `ShuttingDown`,
//! `Forward`, `Replication`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_storage::StorageError;

use crate::types::NodeId;

/// What can go wrong running a Raft group or writing through it.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// This replica does not lead the group; `leader` is the one it knows of, if any.
    #[error("this node does not lead the group (leader: {leader:?} at {leader_addr:?})")]
    NotLeader {
        leader: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// The segment log refused an operation (bad batch, offset out of range, stopped log, ...).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The group's Raft core stopped after its log storage failed; it serves nothing until the
    /// node restarts (and, for corrupt data, an operator repairs it).
    #[error("the partition stopped after a storage failure: {0}")]
    Halted(StorageFault),
    /// A batch the leader refused (found invalid on another node that forwarded it).
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid raft configuration: {0}")]
    Config(String),
    /// An operation did not finish in time: the outcome of a write is unknown.
    #[error("{what} did not complete within {within:?}")]
    Timeout { what: String, within: Duration },
    /// The group is shutting down (the replica moves away, or the node stops).
    #[error("the group is shutting down")]
    ShuttingDown,
    /// The leader could not be reached to forward a write to it: the outcome is unknown.
    #[error("forwarding to leader {leader} at {addr}: {reason}")]
    Forward {
        leader: NodeId,
        addr: String,
        reason: String,
    },
    /// openraft refused the operation for a transient reason (a membership change in progress,
    /// leadership lost while replicating).
    #[error("replication: {0}")]
    Replication(String),
    /// An idempotent batch's sequence does not follow its producer's last one.
    #[error("producer {producer_id} sent sequence {sequence} but {expected} was expected")]
    OutOfOrderSequence {
        producer_id: i64,
        sequence: i32,
        expected: i32,
    },
    /// An idempotent batch comes from an older epoch than one the partition has seen: another
    /// producer with the same id took over. Final for this producer.
    #[error("producer {producer_id} epoch {epoch} is fenced by epoch {current}")]
    FencedEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    /// A retry of a batch older than the newest one this producer wrote: it was written before.
    #[error(
        "duplicate of an earlier batch of producer {producer_id} (sequence {sequence}); it was written before"
    )]
    Duplicate { producer_id: i64, sequence: i32 },
}

/// Why a group's log storage failed, kept as a kind (what a client is told) and the detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StorageFault {
    /// Data on disk failed its checks (CRC, layout): the partition refuses to serve it.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The disk is full.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// Any other I/O failure.
    #[error("I/O error: {0}")]
    Io(String),
}

impl StorageFault {
    /// The fault behind a storage error.
    pub fn of(err: &StorageError) -> Self {
        let detail = err.to_string();
        match err {
            StorageError::Corrupt { .. } | StorageError::Stopped { .. } => Self::Corrupt(detail),
            StorageError::Io { source, .. } if is_disk_full(source) => Self::DiskFull(detail),
            _ => Self::Io(detail),
        }
    }
}

/// True for "no space left on device" (and the quota flavour of it).
pub(crate) fn is_disk_full(err: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    err.kind() == std::io::ErrorKind::StorageFull
        || matches!(err.raw_os_error(), Some(ENOSPC | EDQUOT))
}

/// A write's failure in a form that can be cloned (for every caller waiting on one queued batch)
/// and sent between nodes (the answer to a forwarded write).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Failure {
    NotLeader {
        leader: Option<NodeId>,
        leader_addr: Option<String>,
    },
    Halted(StorageFault),
    InvalidBatch(String),
    Timeout {
        what: String,
        within_ms: u64,
    },
    ShuttingDown,
    Replication(String),
    OutOfOrderSequence {
        producer_id: i64,
        sequence: i32,
        expected: i32,
    },
    FencedEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    Duplicate {
        producer_id: i64,
        sequence: i32,
    },
}

impl From<GroupError> for Failure {
    fn from(err: GroupError) -> Self {
        match err {
            GroupError::NotLeader {
                leader,
                leader_addr,
            } => Self::NotLeader {
                leader,
                leader_addr,
            },
            GroupError::Storage(StorageError::InvalidBatch(e)) => Self::InvalidBatch(e.to_string()),
            GroupError::Storage(err) => Self::Halted(StorageFault::of(&err)),
            GroupError::Halted(fault) => Self::Halted(fault),
            GroupError::InvalidBatch(reason) => Self::InvalidBatch(reason),
            GroupError::File(err) => Self::Halted(StorageFault::Io(err.to_string())),
            GroupError::Io { path, source } => {
                Self::Halted(StorageFault::Io(format!("{}: {source}", path.display())))
            }
            GroupError::Timeout { what, within } => Self::Timeout {
                what,
                within_ms: u64::try_from(within.as_millis()).unwrap_or(u64::MAX),
            },
            GroupError::ShuttingDown => Self::ShuttingDown,
            err @ (GroupError::Config(_)
            | GroupError::Forward { .. }
            | GroupError::Replication(_)) => Self::Replication(err.to_string()),
            GroupError::OutOfOrderSequence {
                producer_id,
                sequence,
                expected,
            } => Self::OutOfOrderSequence {
                producer_id,
                sequence,
                expected,
            },
            GroupError::FencedEpoch {
                producer_id,
                epoch,
                current,
            } => Self::FencedEpoch {
                producer_id,
                epoch,
                current,
            },
            GroupError::Duplicate {
                producer_id,
                sequence,
            } => Self::Duplicate {
                producer_id,
                sequence,
            },
        }
    }
}

impl From<Failure> for GroupError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::NotLeader {
                leader,
                leader_addr,
            } => Self::NotLeader {
                leader,
                leader_addr,
            },
            Failure::Halted(fault) => Self::Halted(fault),
            Failure::InvalidBatch(reason) => Self::InvalidBatch(reason),
            Failure::Timeout { what, within_ms } => Self::Timeout {
                what,
                within: Duration::from_millis(within_ms),
            },
            Failure::ShuttingDown => Self::ShuttingDown,
            Failure::Replication(reason) => Self::Replication(reason),
            Failure::OutOfOrderSequence {
                producer_id,
                sequence,
                expected,
            } => Self::OutOfOrderSequence {
                producer_id,
                sequence,
                expected,
            },
            Failure::FencedEpoch {
                producer_id,
                epoch,
                current,
            } => Self::FencedEpoch {
                producer_id,
                epoch,
                current,
            },
            Failure::Duplicate {
                producer_id,
                sequence,
            } => Self::Duplicate {
                producer_id,
                sequence,
            },
        }
    }
}
