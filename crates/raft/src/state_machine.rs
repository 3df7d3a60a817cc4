//! [`StateMachine`]: openraft's state machine for one group. It holds metadata only — never a
//! copy of record data: the applied log id, the membership, the high watermark (the offset after
//! the last applied record) and a group-specific [`GroupState`] (producer state for a partition,
//! cluster metadata for the controller).
//!
//! Snapshots come in two kinds ([`SnapshotPoint`]):
//! - `Applied` (the controller): the whole state at the last applied entry; openraft may then
//!   purge the log up to it, as usual.
//! - `LogStart` (partitions): a snapshot *at the log start* — the entry before the first one the
//!   log still stores after retention. It carries the log start offset and the producer state, and
//!   no records. A follower behind the log start installs it and then receives every entry the
//!   leader still has, so it ends up with every record that still exists anywhere. Producer state
//!   in such a snapshot may be newer than its point; applying the same entries again must be a
//!   no-op for it ([`GroupState::apply`] merges).
//!
//! The current snapshot is kept in `raft.snapshot` (atomically replaced); on restart the state
//! machine starts from it and openraft re-applies the committed entries after it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use weir_format::batch::BatchHeader;

use crate::files;
use crate::log_store::{LogBoundary, LogStore, SharedBoundary};
use crate::types::{
    Applied, Entry, LogId, RaftStorageError, SnapshotData, SnapshotMeta, StoredMembership,
    TypeConfig,
};

/// File name of the current snapshot.
pub(crate) const SNAPSHOT_FILE: &str = "raft.snapshot";

/// The group-specific part of a state machine.
pub trait GroupState: Send + 'static {
    /// Applies one committed record batch, exactly as stored (stamped with its offsets). Returns
    /// the reply for the writer that proposed it. Must tolerate seeing a batch again after a
    /// snapshot that already includes it (see the module docs).
    fn apply(&mut self, header: &BatchHeader, batch: &Bytes) -> Bytes;
    /// The state, encoded for a snapshot.
    fn encode(&self) -> Bytes;
    /// Replaces the state with a snapshot's.
    fn restore(&mut self, data: &[u8]) -> Result<(), String>;
}

/// Where a group's snapshots are taken (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotPoint {
    Applied,
    LogStart,
}

/// What the rest of the node watches: how far the group has applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Index of the last applied entry (None before the first).
    pub applied_index: Option<u64>,
    /// The offset after the last applied (committed) record: readers see offsets below it.
    pub high_watermark: u64,
}

/// Where a snapshot says the log starts.
pub(crate) type SnapshotBoundary = LogBoundary;

/// Reads the log boundary out of a snapshot's data.
pub(crate) fn snapshot_boundary(data: &[u8]) -> Result<SnapshotBoundary, postcard::Error> {
    postcard::from_bytes::<SnapshotBody>(data).map(|body| body.boundary)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotBody {
    boundary: LogBoundary,
    state: Bytes,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    body: SnapshotBody,
}

impl StoredSnapshot {
    fn to_snapshot(&self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let bytes = postcard::to_stdvec(&self.body).map_err(sm_error)?;
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(SnapshotData(Bytes::from(bytes))),
        })
    }
}

struct Inner<S> {
    applied: Option<LogId>,
    membership: StoredMembership,
    /// Membership entries still needed to build a `LogStart` snapshot: the latest at or before
    /// the current snapshot point, and every later one.
    history: Vec<StoredMembership>,
    high_watermark: u64,
    state: S,
    current: Option<StoredSnapshot>,
    /// A purge point asked for by retention, with the log boundary after it.
    purge_target: Option<(LogId, LogBoundary)>,
    snapshots_built: u64,
}

struct Shared<S> {
    point: SnapshotPoint,
    snapshot_path: PathBuf,
    boundary: SharedBoundary,
    inner: Mutex<Inner<S>>,
    progress: watch::Sender<Progress>,
}

/// openraft's state machine for one group. Cheap to clone: the snapshot builder is a clone.
pub struct StateMachine<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for StateMachine<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> std::fmt::Debug for StateMachine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("point", &self.shared.point)
            .finish_non_exhaustive()
    }
}

pub(crate) fn sm_error(err: impl std::fmt::Display) -> RaftStorageError {
    RaftStorageError::from_io_error(
        openraft::ErrorSubject::StateMachine,
        openraft::ErrorVerb::Write,
        std::io::Error::other(err.to_string()),
    )
}

impl<S: GroupState> StateMachine<S> {
    /// Opens the state machine of the group in `dir`, starting from its stored snapshot if any.
    pub(crate) fn open(
        dir: &std::path::Path,
        point: SnapshotPoint,
        mut state: S,
        log: &LogStore,
        boundary: SharedBoundary,
    ) -> Result<Self, files::FileError> {
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let current: Option<StoredSnapshot> = files::read(&snapshot_path)?;
        let mut inner = Inner {
            applied: None,
            membership: StoredMembership::default(),
            history: Vec::new(),
            high_watermark: log.log().bounds().map(|b| b.log_start_offset).unwrap_or(0),
            state: {
                if let Some(snapshot) = &current {
                    state.restore(&snapshot.body.state).map_err(|reason| {
                        files::FileError::Decode {
                            path: snapshot_path.clone(),
                            reason,
                        }
                    })?;
                }
                state
            },
            current: None,
            purge_target: None,
            snapshots_built: 0,
        };
        if let Some(snapshot) = current {
            inner.applied = snapshot.meta.last_log_id;
            inner.membership = snapshot.meta.last_membership.clone();
            inner.history = vec![snapshot.meta.last_membership.clone()];
            inner.high_watermark = snapshot.body.boundary.next_offset;
            *boundary
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(snapshot.body.boundary);
            inner.current = Some(snapshot);
        }
        let (progress, _) = watch::channel(Progress {
            applied_index: inner.applied.map(|l| l.index),
            high_watermark: inner.high_watermark,
        });
        Ok(Self {
            shared: Arc::new(Shared {
                point,
                snapshot_path,
                boundary,
                inner: Mutex::new(inner),
                progress,
            }),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner<S>> {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Watches the applied index and high watermark.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.shared.progress.subscribe()
    }

    /// Runs `f` on the group state.
    pub fn with_state<T>(&self, f: impl FnOnce(&S) -> T) -> T {
        f(&self.inner().state)
    }

    /// Asks the next snapshot of a `LogStart` group to be taken at `point`, whose log boundary
    /// (the first kept entry and its offset) is `boundary`.
    pub(crate) fn set_purge_target(&self, point: LogId, boundary: LogBoundary) {
        let mut inner = self.inner();
        if inner.purge_target.is_none_or(|(old, _)| old < point) {
            inner.purge_target = Some((point, boundary));
        }
    }

    /// Snapshots built since the group opened.
    pub fn snapshots_built(&self) -> u64 {
        self.inner().snapshots_built
    }

    fn build(&self) -> Result<Option<StoredSnapshot>, RaftStorageError> {
        let mut inner = self.inner();
        let (meta, boundary) = match self.shared.point {
            SnapshotPoint::Applied => {
                let Some(applied) = inner.applied else {
                    return Ok(None);
                };
                let boundary = LogBoundary {
                    next_index: applied.index + 1,
                    next_offset: inner.high_watermark,
                };
                (
                    SnapshotMeta {
                        last_log_id: Some(applied),
                        last_membership: inner.membership.clone(),
                        snapshot_id: String::new(),
                    },
                    boundary,
                )
            }
            SnapshotPoint::LogStart => {
                let current = inner
                    .current
                    .as_ref()
                    .map(|c| (c.meta.last_log_id, c.body.boundary));
                let target = match (inner.purge_target, current) {
                    (Some((point, boundary)), _) => Some((point, boundary)),
                    (None, Some((Some(point), boundary))) => Some((point, boundary)),
                    _ => None,
                };
                let Some((point, boundary)) = target else {
                    return Ok(None);
                };
                if inner.applied.is_none_or(|applied| applied < point) {
                    return Err(sm_error(format!(
                        "snapshot point {point} is beyond the applied entry {:?}",
                        inner.applied
                    )));
                }
                let membership = inner
                    .history
                    .iter()
                    .rev()
                    .find(|m| m.log_id().is_none_or(|id| id <= point))
                    .cloned()
                    .unwrap_or_default();
                (
                    SnapshotMeta {
                        last_log_id: Some(point),
                        last_membership: membership,
                        snapshot_id: String::new(),
                    },
                    boundary,
                )
            }
        };
        let mut meta = meta;
        inner.snapshots_built += 1;
        meta.snapshot_id = format!(
            "{}-{}",
            meta.last_log_id.map_or(0, |l| l.index),
            inner.snapshots_built
        );
        let stored = StoredSnapshot {
            meta,
            body: SnapshotBody {
                boundary,
                state: inner.state.encode(),
            },
        };
        files::write_atomic(&self.shared.snapshot_path, &stored).map_err(sm_error)?;
        prune_history(&mut inner.history, stored.meta.last_log_id);
        inner.current = Some(stored.clone());
        tracing::info!(
            last_log_id = ?stored.meta.last_log_id,
            log_start_offset = boundary.next_offset,
            "snapshot built"
        );
        Ok(Some(stored))
    }

    fn publish(&self, inner: &Inner<S>) {
        let progress = Progress {
            applied_index: inner.applied.map(|l| l.index),
            high_watermark: inner.high_watermark,
        };
        self.shared.progress.send_if_modified(|old| {
            let changed = *old != progress;
            *old = progress;
            changed
        });
    }
}

/// Keeps the latest membership at or before `point` and every later one.
fn prune_history(history: &mut Vec<StoredMembership>, point: Option<LogId>) {
    let keep_from = history
        .iter()
        .rposition(|m| *m.log_id() <= point)
        .unwrap_or(0);
    history.drain(..keep_from);
}

impl<S: GroupState> RaftSnapshotBuilder<TypeConfig> for StateMachine<S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        match self.build()? {
            Some(stored) => stored.to_snapshot(),
            None => Ok(Snapshot {
                meta: SnapshotMeta::default(),
                snapshot: Box::new(SnapshotData::default()),
            }),
        }
    }
}

impl<S: GroupState> RaftStateMachine<TypeConfig> for StateMachine<S> {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        let inner = self.inner();
        Ok((inner.applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.inner();
        let mut replies = Vec::new();
        for entry in entries {
            inner.applied = Some(entry.log_id);
            let reply = match &entry.payload {
                EntryPayload::Normal(payload) => {
                    let header = BatchHeader::parse(&payload.0).map_err(sm_error)?;
                    let reply = inner.state.apply(&header, &payload.0);
                    inner.high_watermark = inner.high_watermark.max(header.next_offset());
                    Applied {
                        base_offset: header.base_offset,
                        next_offset: header.next_offset(),
                        reply,
                    }
                }
                EntryPayload::Membership(membership) => {
                    let stored = StoredMembership::new(Some(entry.log_id), membership.clone());
                    inner.membership = stored.clone();
                    inner.history.push(stored);
                    Applied {
                        base_offset: inner.high_watermark,
                        next_offset: inner.high_watermark,
                        reply: Bytes::new(),
                    }
                }
                EntryPayload::Blank => Applied {
                    base_offset: inner.high_watermark,
                    next_offset: inner.high_watermark,
                    reply: Bytes::new(),
                },
            };
            replies.push(reply);
        }
        self.publish(&inner);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, RaftStorageError> {
        Ok(Box::new(SnapshotData::default()))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), RaftStorageError> {
        let body: SnapshotBody = postcard::from_bytes(&snapshot.0).map_err(sm_error)?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            body,
        };
        *self
            .shared
            .boundary
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stored.body.boundary);
        files::write_atomic(&self.shared.snapshot_path, &stored).map_err(sm_error)?;
        let mut inner = self.inner();
        inner.state.restore(&stored.body.state).map_err(sm_error)?;
        inner.applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.history = vec![meta.last_membership.clone()];
        inner.high_watermark = stored.body.boundary.next_offset;
        inner.current = Some(stored);
        tracing::info!(last_log_id = ?meta.last_log_id, "snapshot installed");
        self.publish(&inner);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let current = self.inner().current.clone();
        current.map(|c| c.to_snapshot()).transpose()
    }
}
