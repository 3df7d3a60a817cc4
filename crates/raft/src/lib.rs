//! # weir-raft
//!
//! Replication for Weir: every partition is a Raft group (openraft 0.9) whose log *is* the
//! partition's segment log — a Raft entry is a record batch stored once, with its term and index in
//! the batch header. The controller's metadata group runs on the same machinery.
//!
//! - [`types`]: the openraft type configuration (`single-term-leader`: a log id is (term, index)).
//! - [`entry`]: entries ⇄ stored batches (blank and membership entries are control batches).
//! - [`LogStore`]: `RaftLogStorage` on [`weir_storage::PartitionLog`]; vote and purge point in a
//!   small atomically written file.
//! - [`StateMachine`]: applied log id, membership, high watermark and a [`GroupState`]; snapshots
//!   carry metadata only.
//! - [`Partition`]: one partition replica — the narrow API the broker and controller use (write
//!   with idempotence and wait semantics, read, progress, leader hint, membership changes).
//! - [`PartitionState`]: producer state for idempotence.
//! - [`Group`] / [`GroupRegistry`]: running groups, created and removed at run time.
//! - [`PeerTransport`] / [`PeerService`]: one gRPC connection per peer shared by all groups, with
//!   optional fault injection for tests.
//!
//! Errors are [`GroupError`] variants (a stopped group says why: [`StorageFault`]), never strings
//! that a caller would have to parse.
//!
//! Invariants: an entry is stored once (the Raft log is the segment log); an entry is
//! acknowledged only once a majority has it durable; a group whose storage failed stops and
//! reports the typed fault; the broker and the controller use [`Partition`] and [`Group`]'s
//! methods, never openraft directly.
//!
//! Known gaps: state machines are rebuilt by re-applying the log after the last snapshot on
//! restart (fast — they hold metadata only — but proportional to the log); partition groups
//! heartbeat independently (no coalescing across groups yet).

// openraft's `StorageError` (~200 bytes) is the error type its storage traits return; the helpers
// that build it return it as is rather than boxing it only to unbox it at the trait boundary.
#![allow(clippy::result_large_err)]

#[cfg(test)]
mod conformance;
pub mod entry;
mod error;
mod files;
mod group;
mod idempotence;
mod log_store;
mod network;
mod partition;
mod service;
mod state_machine;
pub mod tls;
pub mod types;

pub use error::{GroupError, StorageFault};
pub use files::FileError;
pub use group::{Group, GroupConfig, GroupHandle, GroupRegistry, RaftTiming, remove_group_files};
pub use idempotence::ProducerEntry;
pub use log_store::{LogBoundary, LogStore};
pub use network::{FaultPlan, LinkAction, LinkFaults, PeerError, PeerTransport};
pub use partition::{Partition, PartitionState, WaitFor};
pub use service::PeerService;
pub use state_machine::{GroupState, Progress, SnapshotPoint, StateMachine};
pub use types::{Applied, NodeId, PeerNode, Raft};
