//! When appended data becomes durable: the written and durable watermarks, the flusher thread
//! that syncs files (group commit: one `fdatasync` covers every append written before it
//! started), and the callbacks and waiters that are told when an entry is durable.
//!
//! Invariants:
//! - `durable <= written`, both as entry indexes (exclusive ends); `durable` only moves forward,
//!   except that a suffix truncation lowers both to the cut;
//! - a sync result is published only if no truncation happened while it ran (`generation`), so a
//!   sync of since-removed data never marks the replacement data durable;
//! - a failed sync is fatal for the log (after a failed `fsync` the page cache state is unknown):
//!   every waiter is failed and the log stops;
//! - callbacks run on the flusher thread (or the thread that truncates or closes), never under
//!   a lock: they must be quick and must not call back into the log's writing methods.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::Durability;
use crate::error::StorageError;
use crate::metrics::Counters;

/// A position in the log: every batch with an entry index below `next_index` (and every record
/// below `next_offset`) is covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Watermark {
    pub next_offset: u64,
    pub next_index: u64,
}

/// Called once the entry it waits for is durable, or with the reason it never will be.
pub type DurableCallback = Box<dyn FnOnce(Result<(), StorageError>) + Send + 'static>;

/// Shared between the log (which writes and truncates) and the flusher thread.
pub(crate) struct SyncState {
    pub(crate) written: Watermark,
    pub(crate) durable: Watermark,
    /// Bumped by every truncation.
    pub(crate) generation: u64,
    requested: bool,
    /// Segment files sealed since the last sync; they must be synced too.
    pending_files: Vec<(Arc<File>, PathBuf)>,
    /// The directory gained or lost files since the last sync.
    dir_dirty: bool,
    active_file: (Arc<File>, PathBuf),
    /// (entry index waited for, callback).
    callbacks: Vec<(u64, DurableCallback)>,
    shutdown: bool,
    failure: Option<String>,
}

impl std::fmt::Debug for SyncState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncState")
            .field("written", &self.written)
            .field("durable", &self.durable)
            .field("generation", &self.generation)
            .field("callbacks", &self.callbacks.len())
            .finish_non_exhaustive()
    }
}

/// The durability half of a partition log.
#[derive(Debug)]
pub(crate) struct Syncer {
    dir: PathBuf,
    pub(crate) counters: Arc<Counters>,
    policy: Durability,
    state: Mutex<SyncState>,
    wakeup: Condvar,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Syncer {
    pub(crate) fn new(
        dir: PathBuf,
        policy: Durability,
        at: Watermark,
        active_file: (Arc<File>, PathBuf),
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            dir,
            counters,
            policy,
            state: Mutex::new(SyncState {
                written: at,
                durable: at,
                generation: 0,
                requested: false,
                pending_files: Vec::new(),
                dir_dirty: false,
                active_file,
                callbacks: Vec::new(),
                shutdown: false,
                failure: None,
            }),
            wakeup: Condvar::new(),
        }
    }

    pub(crate) fn durable(&self) -> Watermark {
        lock(&self.state).durable
    }

    /// Records an append; under `Always` it asks for a sync at once.
    pub(crate) fn written(&self, at: Watermark) {
        let mut state = lock(&self.state);
        state.written = at;
        match self.policy {
            Durability::Always => {
                state.requested = true;
                self.wakeup.notify_all();
            }
            // The flusher may be parked with nothing to sync; it must start its timer now.
            Durability::Interval { .. } => self.wakeup.notify_all(),
            Durability::Never => {}
        }
    }

    /// Records a segment roll: the sealed file and the directory need a sync.
    pub(crate) fn rolled(&self, sealed: (Arc<File>, PathBuf), active: (Arc<File>, PathBuf)) {
        let mut state = lock(&self.state);
        state.pending_files.push(sealed);
        state.active_file = active;
        state.dir_dirty = true;
        state.requested = true;
        self.wakeup.notify_all();
    }

    /// Records a suffix truncation to `at`: the watermarks drop to the cut and the callbacks of
    /// removed entries fail. With `reset`, the log was emptied and restarted at `at` (after its
    /// files were synced): everything before `at` is gone, so all waiters below it fail too, and
    /// the empty log is durable as it stands.
    pub(crate) fn truncated(&self, at: Watermark, active: (Arc<File>, PathBuf), reset: bool) {
        let failed = {
            let mut state = lock(&self.state);
            state.generation += 1;
            state.written = at;
            if reset || state.durable.next_index > at.next_index {
                state.durable = at;
            }
            state.active_file = active;
            state.dir_dirty = true;
            let (gone, kept) = std::mem::take(&mut state.callbacks)
                .into_iter()
                .partition(|(index, _)| reset || *index >= at.next_index);
            state.callbacks = kept;
            state.requested = true;
            self.wakeup.notify_all();
            gone
        };
        for (index, callback) in failed {
            callback(Err(StorageError::Truncated { index }));
        }
    }

    /// Calls `callback` once entry `index` is durable. Does not itself ask for a sync.
    pub(crate) fn on_durable(&self, index: u64, callback: DurableCallback) {
        let mut state = lock(&self.state);
        if let Some(reason) = &state.failure {
            let reason = reason.clone();
            drop(state);
            return callback(Err(self.stopped(reason)));
        }
        if state.shutdown {
            drop(state);
            return callback(Err(StorageError::Closed));
        }
        if index < state.durable.next_index {
            drop(state);
            return callback(Ok(()));
        }
        state.callbacks.push((index, callback));
    }

    /// Asks the flusher for a sync as soon as possible.
    pub(crate) fn request(&self) {
        let mut state = lock(&self.state);
        state.requested = true;
        self.wakeup.notify_all();
    }

    /// Blocks until entry `index` is durable, asking for a sync.
    pub(crate) fn wait(&self, index: u64) -> Result<(), StorageError> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        self.on_durable(
            index,
            Box::new(move |result| {
                let _ = sender.send(result);
            }),
        );
        self.request();
        receiver.recv().unwrap_or(Err(StorageError::Closed))
    }

    fn stopped(&self, reason: String) -> StorageError {
        StorageError::Stopped {
            dir: self.dir.clone(),
            reason,
        }
    }

    /// Stops the flusher after one last sync.
    pub(crate) fn shut_down(&self) {
        let mut state = lock(&self.state);
        state.shutdown = true;
        state.requested = true;
        self.wakeup.notify_all();
    }

    /// The flusher thread's body. `on_failure` stops the log when a sync fails.
    pub(crate) fn run(&self, on_failure: impl Fn(&str)) {
        let interval = match self.policy {
            Durability::Interval { ms } => Some(Duration::from_millis(ms)),
            Durability::Always | Durability::Never => None,
        };
        let mut last_sync = Instant::now();
        loop {
            let (target, generation, mut files, dir_dirty, last_round) = {
                let mut state = lock(&self.state);
                loop {
                    let dirty = state.written != state.durable
                        || !state.pending_files.is_empty()
                        || state.dir_dirty;
                    if state.shutdown || (state.requested && dirty) {
                        break;
                    }
                    if state.requested {
                        // Nothing to sync: everything written is durable already.
                        state.requested = false;
                        let ready = take_ready(&mut state);
                        drop(state);
                        run_ready(ready);
                        state = lock(&self.state);
                        continue;
                    }
                    state = match interval {
                        Some(every) if dirty => {
                            let due = last_sync + every;
                            let now = Instant::now();
                            if now >= due {
                                break;
                            }
                            self.wakeup
                                .wait_timeout(state, due - now)
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .0
                        }
                        _ => self
                            .wakeup
                            .wait(state)
                            .unwrap_or_else(std::sync::PoisonError::into_inner),
                    };
                }
                state.requested = false;
                (
                    state.written,
                    state.generation,
                    std::mem::take(&mut state.pending_files),
                    std::mem::take(&mut state.dir_dirty),
                    state.shutdown,
                )
            };
            let active = lock(&self.state).active_file.clone();
            files.push(active);
            let started = Instant::now();
            let outcome = sync_all(&files, dir_dirty.then_some(&self.dir));
            last_sync = Instant::now();
            Counters::add(&self.counters.syncs, 1);
            Counters::add(
                &self.counters.sync_micros,
                u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            );
            let ready = {
                let mut state = lock(&self.state);
                match outcome {
                    Err(reason) => {
                        tracing::error!(dir = %self.dir.display(), %reason, "sync failed; stopping the partition log");
                        state.failure = Some(reason.clone());
                        drop(state);
                        on_failure(&reason);
                        let all = std::mem::take(&mut lock(&self.state).callbacks);
                        for (_, callback) in all {
                            callback(Err(self.stopped(reason.clone())));
                        }
                        return;
                    }
                    Ok(()) if generation == state.generation => {
                        if target.next_index >= state.durable.next_index {
                            state.durable = target;
                        }
                    }
                    Ok(()) => state.requested = true,
                }
                take_ready(&mut state)
            };
            run_ready(ready);
            if last_round {
                let rest = std::mem::take(&mut lock(&self.state).callbacks);
                for (_, callback) in rest {
                    callback(Err(StorageError::Closed));
                }
                return;
            }
        }
    }
}

fn take_ready(state: &mut SyncState) -> Vec<DurableCallback> {
    let durable = state.durable.next_index;
    let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut state.callbacks)
        .into_iter()
        .partition(|(index, _)| *index < durable);
    state.callbacks = waiting;
    ready.into_iter().map(|(_, callback)| callback).collect()
}

fn run_ready(ready: Vec<DurableCallback>) {
    for callback in ready {
        callback(Ok(()));
    }
}

fn sync_all(files: &[(Arc<File>, PathBuf)], dir: Option<&PathBuf>) -> Result<(), String> {
    for (file, path) in files {
        file.sync_data()
            .map_err(|err| format!("fdatasync {}: {err}", path.display()))?;
    }
    if let Some(dir) = dir {
        crate::fs::sync_dir(dir).map_err(|err| err.to_string())?;
    }
    Ok(())
}
