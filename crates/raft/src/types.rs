//! The openraft type configuration shared by every Raft group on a node (the controller group and
//! one group per partition), and the small value types that cross the replication boundary.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A broker's id: its Raft node id in every group it belongs to.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Weir's openraft types. With `single-term-leader`, a log id is (term, index) — exactly what
    /// a stored batch header carries — so every entry's log id is read back from the batch itself.
    pub TypeConfig:
        D = Payload,
        R = Applied,
        NodeId = NodeId,
        Node = PeerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Membership = openraft::Membership<NodeId, PeerNode>;
pub type StoredMembership = openraft::StoredMembership<NodeId, PeerNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, PeerNode>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type RaftStorageError = openraft::StorageError<NodeId>;

/// How a node is reached: one gRPC address serves clients and peers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// `host:port`.
    pub addr: String,
}

impl PeerNode {
    pub fn new(addr: impl Into<String>) -> Self {
        Self { addr: addr.into() }
    }
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// A normal Raft entry's data: one record batch in Weir's batch format. What a writer proposes is
/// the batch as produced (unstamped); what the log returns is the batch as stored, stamped with
/// its base offset, term and entry index. The bytes are never re-encoded on the way.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload(pub Bytes);

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch of {} bytes", self.0.len())
    }
}

/// What applying a committed entry produced, handed back to the writer that proposed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Offset of the entry's first record (for entries without records: the next offset).
    pub base_offset: u64,
    /// The offset after the entry's last record.
    pub next_offset: u64,
    /// A group-specific answer (the controller's reply to a metadata command); empty otherwise.
    pub reply: Bytes,
}

/// A snapshot's content: the group state's own encoding (metadata only; see
/// [`crate::GroupState`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotData(pub Bytes);

/// Builds a log id from what a batch header stores.
pub fn log_id(term: u64, index: u64) -> LogId {
    openraft::LogId::new(openraft::CommittedLeaderId::new(term, 0), index)
}
