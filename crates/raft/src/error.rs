//! The replication crate's error type.

use std::path::PathBuf;

use crate::types::NodeId;

/// What can go wrong running a Raft group.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("this node does not lead the group (leader: {leader:?} at {leader_addr:?})")]
    NotLeader {
        leader: Option<NodeId>,
        leader_addr: Option<String>,
    },
    #[error(transparent)]
    Storage(#[from] weir_storage::StorageError),
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
    #[error("raft: {0}")]
    Raft(String),
    #[error("producer sequence: {0}")]
    Sequence(String),
    #[error(
        "duplicate of an earlier batch of producer {producer_id} (sequence {sequence}); it was written before"
    )]
    Duplicate { producer_id: i64, sequence: i32 },
}
