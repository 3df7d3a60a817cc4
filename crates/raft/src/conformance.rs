//! openraft's storage conformance suite (`openraft::testing::Suite`) run against [`LogStore`] and
//! [`StateMachine`], each case as its own test so a failure names the case.

use std::sync::{Arc, Mutex};

use openraft::storage::{LogState, RaftLogStorage};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{RaftLogReader, StorageError};
use tempfile::TempDir;
use weir_storage::{LogConfig, PartitionLog};

use crate::log_store::{LogBoundary, LogStore, SharedBoundary};
use crate::partition::PartitionState;
use crate::state_machine::{SnapshotPoint, StateMachine};
use crate::types::{NodeId, TypeConfig, log_id};

type Sm = StateMachine<PartitionState>;
type TheSuite = Suite<TypeConfig, LogStore, Sm, Builder, TempDir>;

/// Builds a store as `Group::open` does, in a fresh directory that lives as long as the guard.
struct Builder;

fn build_error(err: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageError::from_io_error(
        openraft::ErrorSubject::Store,
        openraft::ErrorVerb::Write,
        std::io::Error::other(err.to_string()),
    )
}

/// The segment log and log store of a group in `dir`, as `Group::open` opens them.
fn open_store(dir: &TempDir) -> Result<(LogStore, SharedBoundary), StorageError<NodeId>> {
    let log =
        PartitionLog::open(dir.path().join("log"), LogConfig::default()).map_err(build_error)?;
    let boundary: SharedBoundary = Arc::new(Mutex::new(None));
    let store =
        LogStore::open(Arc::new(log), dir.path(), Arc::clone(&boundary)).map_err(build_error)?;
    Ok((store, boundary))
}

impl StoreBuilder<TypeConfig, LogStore, Sm, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, Sm), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(build_error)?;
        let (log_store, boundary) = open_store(&dir)?;
        // `SnapshotPoint::Applied`: the suite's snapshot cases (`snapshot_meta`,
        // `transfer_snapshot`) expect openraft's usual snapshot — the state at the last applied
        // entry, with the membership applied so far — built on demand whenever anything was
        // applied. A `LogStart` state machine builds snapshots only at retention points (or
        // rebuilds its current one), so it would return an empty snapshot there. The group state
        // is irrelevant to the suite (it never applies a normal entry); a partition's producer
        // state is the simplest real one.
        let sm = StateMachine::open(
            dir.path(),
            SnapshotPoint::Applied,
            PartitionState::default(),
            &log_store,
            boundary,
        )
        .map_err(build_error)?;
        Ok((dir, log_store, sm))
    }
}

/// Runs one case on a fresh store in a fresh runtime, as the suite's own `test_store` does.
fn run<F, Fut>(case: F)
where
    F: FnOnce(LogStore, Sm) -> Fut,
    Fut: Future<Output = Result<(), StorageError<NodeId>>>,
{
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (_guard, store, sm) = Builder.build().await.expect("build store");
        case(store, sm).await.expect("case failed");
    });
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                run(TheSuite::$case);
            }
        )*
    };
}

// Every case of `Suite::test_store` but the excluded ones below. The suite never builds a normal
// entry (openraft cannot construct a `C::D`; the normal-entry part of `apply_single` is commented
// out upstream), so `Payload` needing a valid Weir batch does not matter here: all entries are
// blank or membership entries, i.e. control batches.
cases!(
    last_membership_in_log_initial,
    get_membership_initial,
    get_membership_from_empty_log_and_sm,
    get_initial_state_without_init,
    get_initial_state_with_state,
    get_initial_state_last_log_gt_sm,
    get_initial_state_log_ids,
    save_vote,
    get_log_entries,
    limited_get_log_entries,
    try_get_log_entry,
    initial_logs,
    get_log_id,
    last_id_in_log,
    last_applied_state,
    purge_logs_upto_0,
    purge_logs_upto_5,
    delete_logs_since_11,
    delete_logs_since_0,
    append_to_log,
    snapshot_meta,
    apply_single,
    apply_multiple,
);

#[test]
fn transfer_snapshot() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(TheSuite::transfer_snapshot(&Builder))
        .expect("case failed");
}

// Excluded cases. Each one does something a real openraft node never does, and the store rightly
// refuses it; `excluded_cases_fail_only_on_the_refusal` checks that the refusal is all that stops
// them.
//
// 1. An append that does not continue the log. openraft always appends right after its last log
//    id (after truncating a conflict, or after purging up to an installed snapshot, where
//    `LogStore` restarts the log at the snapshot's boundary); its own contract forbids holes. The
//    segment log assigns dense entry indexes, so the store refuses such an append rather than
//    storing the entry under another index:
//    - `last_membership_in_log`, `last_membership_in_log_multi_step`,
//      `get_membership_from_log_and_empty_sm`, `get_membership_from_log_le_sm_last_applied`,
//      `get_membership_from_log_gt_sm_last_applied_1`,
//      `get_membership_from_log_gt_sm_last_applied_2`: the first append to an empty log is at
//      index 1 (a real log starts at index 0: `initialize` writes the membership at (0, 0), and
//      a follower is sent entries from 0 or a snapshot);
//    - `get_initial_state_last_log_lt_sm`, `get_initial_state_re_apply_committed`: the first
//      append to an empty log is at index 2.
//
// 2. A purge beyond the log's end without a snapshot. Purging past the last stored entry empties
//    the log and restarts it after the purge point, at the offset of the first record after it —
//    which only the snapshot covering that point knows (`LogBoundary`). openraft purges beyond its
//    log only after installing a snapshot, or at startup when the state machine (restored from a
//    stored snapshot) is ahead of the log; both set the boundary. The suite purges there with a
//    state machine that has no snapshot (or none at all), so the store has no offset to restart
//    at and refuses:
//    - `purge_logs_upto_20`: purges (1, 20) over a log ending at index 10;
//    - `get_log_state`: its last step purges (2, 3) over a log ending at index 2 (the steps
//      before it pass);
//    - `get_initial_state_membership_from_log_and_sm`: entries applied straight to the state
//      machine, with an empty log, make `get_initial_state` purge up to them (openraft's "snapshot
//      installed but logs not cleaned" repair). Its next steps would then append at index 1 and 3
//      (kind 1).
//
// `purge_beyond_the_log_end_after_a_snapshot` below checks what `purge_logs_upto_20` checks the
// way a real node gets there.

/// Runs a case expecting it to stop with the store's refusal `reason`, and nothing else.
fn run_refused<F, Fut>(name: &str, case: F, reason: &str)
where
    F: FnOnce(LogStore, Sm) -> Fut,
    Fut: Future<Output = Result<(), StorageError<NodeId>>>,
{
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (_guard, store, sm) = Builder.build().await.expect("build store");
        let err = case(store, sm)
            .await
            .expect_err(&format!("{name} now passes: run it again"));
        let err = err.to_string();
        assert!(err.contains(reason), "{name} failed otherwise: {err}");
    });
}

#[test]
fn excluded_cases_fail_only_on_the_refusal() {
    const HOLE: &str = "but the log's next index is 0";
    const NO_SNAPSHOT: &str = "with no snapshot boundary";
    run_refused(
        "last_membership_in_log",
        TheSuite::last_membership_in_log,
        HOLE,
    );
    run_refused(
        "last_membership_in_log_multi_step",
        TheSuite::last_membership_in_log_multi_step,
        HOLE,
    );
    run_refused(
        "get_membership_from_log_and_empty_sm",
        TheSuite::get_membership_from_log_and_empty_sm,
        HOLE,
    );
    run_refused(
        "get_membership_from_log_le_sm_last_applied",
        TheSuite::get_membership_from_log_le_sm_last_applied,
        HOLE,
    );
    run_refused(
        "get_membership_from_log_gt_sm_last_applied_1",
        TheSuite::get_membership_from_log_gt_sm_last_applied_1,
        HOLE,
    );
    run_refused(
        "get_membership_from_log_gt_sm_last_applied_2",
        TheSuite::get_membership_from_log_gt_sm_last_applied_2,
        HOLE,
    );
    run_refused(
        "get_initial_state_last_log_lt_sm",
        TheSuite::get_initial_state_last_log_lt_sm,
        HOLE,
    );
    run_refused(
        "get_initial_state_re_apply_committed",
        TheSuite::get_initial_state_re_apply_committed,
        HOLE,
    );
    run_refused(
        "purge_logs_upto_20",
        TheSuite::purge_logs_upto_20,
        NO_SNAPSHOT,
    );
    run_refused("get_log_state", TheSuite::get_log_state, NO_SNAPSHOT);
    run_refused(
        "get_initial_state_membership_from_log_and_sm",
        TheSuite::get_initial_state_membership_from_log_and_sm,
        NO_SNAPSHOT,
    );
}

/// `purge_logs_upto_20` as a real node gets there: a snapshot at (1, 20) has recorded where the
/// log restarts before openraft purges up to it.
#[test]
fn purge_beyond_the_log_end_after_a_snapshot() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, boundary) = open_store(&dir).expect("build store");
        TheSuite::feed_10_logs_vote_self(&mut store)
            .await
            .expect("feed");
        let next_offset = store.log().bounds().expect("bounds").next_offset;
        *boundary.lock().expect("boundary") = Some(LogBoundary {
            next_index: 21,
            next_offset,
        });
        store.purge(log_id(1, 20)).await.expect("purge");
        let left = store.try_get_log_entries(0..100).await.expect("read");
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(
            store.get_log_state().await.expect("log state"),
            LogState {
                last_purged_log_id: Some(log_id(1, 20)),
                last_log_id: Some(log_id(1, 20)),
            }
        );
        assert_eq!(store.log().bounds().expect("bounds").next_index, 21);
    });
}
