//! Replication tests on in-process clusters over a fault-injecting transport: leader failover,
//! no acknowledged write lost under crashes and partitions, truncation of a divergent uncommitted
//! suffix, follower catch-up by log and by snapshot after retention, and a membership change
//! under load.
//!
//! Every fault plan is seeded, and so is the choice of faults in the chaos test, so a failure can
//! be replayed with the same seed. Tests wait for conditions with deadlines; they never sleep to
//! let something happen.
//!
//! Debug with `RUST_LOG=info cargo test -p weir-tests --test raft_cluster -- --nocapture NAME`.

use std::collections::{BTreeSet, HashMap};
use std::future::ready;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use weir_raft::{NodeId, PeerNode};
use weir_storage::LogConfig;
use weir_tests::crash::SplitMix64;
use weir_tests::raft_cluster::{Converged, RaftCluster, WriterReport, record_batch, spawn_writer};
use weir_tests::{eventually, init_tracing};

const GROUP: &str = "t/0";
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_and_agree_on_offsets() -> anyhow::Result<()> {
    init_tracing();
    let mut cluster = RaftCluster::start(3, 1).await?;
    cluster
        .create_group(GROUP, &[1, 2, 3], LogConfig::default())
        .await?;
    let mut last = None;
    for i in 0..50 {
        let applied = cluster
            .write(GROUP, record_batch(&format!("v{i}")), WAIT)
            .await?;
        assert_eq!(applied.base_offset, i);
        assert_eq!(applied.next_offset, i + 1);
        last = Some(applied);
    }
    assert!(last.is_some());
    let leader = cluster.leader(GROUP, WAIT).await?;
    let last_index = cluster
        .group(leader, GROUP)
        .and_then(|g| g.progress().borrow().applied_index);
    cluster
        .wait_applied(GROUP, last_index.unwrap_or(0), WAIT)
        .await?;
    let expected: Vec<(u64, String)> = (0..50).map(|i| (i, format!("v{i}"))).collect();
    for node in cluster.node_ids() {
        assert_eq!(
            cluster.read_all(node, GROUP, true)?,
            expected,
            "node {node}"
        );
    }
    cluster.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Writes `{prefix}-{i}` for every `i` in `range`, one after the other through the current leader,
/// and returns (offset, value) of each. Each write must land at the offset after the previous one.
async fn write_values(
    cluster: &RaftCluster,
    prefix: &str,
    range: std::ops::Range<u64>,
) -> anyhow::Result<Vec<(u64, String)>> {
    let mut written: Vec<(u64, String)> = Vec::new();
    for i in range {
        let value = format!("{prefix}-{i}");
        let applied = cluster.write(GROUP, record_batch(&value), WAIT).await?;
        ensure!(
            applied.next_offset == applied.base_offset + 1,
            "one record, one offset: {applied:?}"
        );
        if let Some((last, _)) = written.last() {
            ensure!(
                applied.base_offset == last + 1,
                "{value} acknowledged at {} after {last}",
                applied.base_offset
            );
        }
        written.push((applied.base_offset, value));
    }
    Ok(written)
}

/// The term of `node`'s replica of the group.
fn term(cluster: &RaftCluster, node: NodeId) -> anyhow::Result<u64> {
    let g = cluster.group(node, GROUP).context("replica not running")?;
    Ok(g.raft().metrics().borrow().current_term)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Waits until retention has nothing more to remove on any running replica.
async fn wait_retention_done(cluster: &RaftCluster, within: Duration) -> anyhow::Result<()> {
    eventually(within, "retention done on every replica", || {
        ready((|| {
            for node in cluster.running_replicas(GROUP) {
                let g = cluster.group(node, GROUP).context("replica")?;
                let plan = g.log().retention_plan(now_ms())?;
                ensure!(plan.is_none(), "node {node} still plans {plan:?}");
            }
            Ok(())
        })())
    })
    .await
}

/// Waits until at least `target` writes have been acknowledged in all.
async fn wait_for_acks(acks: &AtomicU64, target: u64, within: Duration) -> anyhow::Result<()> {
    eventually(within, &format!("{target} writes acknowledged"), || {
        let now = acks.load(Ordering::SeqCst);
        ready(if now >= target {
            Ok(())
        } else {
            Err(anyhow::anyhow!("{now} acknowledged"))
        })
    })
    .await
}

/// Every converged replica holds exactly `expected` (committed and stored alike).
fn assert_records(
    cluster: &RaftCluster,
    converged: &Converged,
    expected: &[(u64, String)],
) -> anyhow::Result<()> {
    for &node in &converged.nodes {
        assert_eq!(
            cluster.read_all(node, GROUP, true)?,
            expected,
            "committed records on node {node}"
        );
        assert_eq!(
            cluster.read_all(node, GROUP, false)?,
            expected,
            "stored records on node {node}"
        );
    }
    Ok(())
}

/// The stored entries (index, term, base offset, CRC) of every converged replica are the same,
/// from the same first entry up to the last applied one.
fn assert_identical_entries(cluster: &RaftCluster, converged: &Converged) -> anyhow::Result<()> {
    let leader = cluster.all_entries(converged.leader, GROUP)?;
    assert_eq!(
        leader.last().map(|e| e.0),
        Some(converged.last_index),
        "the leader's log ends at the converged index"
    );
    for &node in &converged.nodes {
        assert_eq!(
            cluster.all_entries(node, GROUP)?,
            leader,
            "entries on node {node} against leader {}",
            converged.leader
        );
    }
    Ok(())
}

/// Checks what writers that ran through faults left behind, against the committed log `log`
/// (offset order) that starts at `start`: every acknowledged value at or after the start is
/// there exactly once at the offset its write returned, each writer's acknowledged values are
/// in acknowledgement order, nothing is duplicated, offsets are dense and nothing in the log was
/// never written.
fn check_writers(
    log: &[(u64, String)],
    start: u64,
    reports: &[WriterReport],
) -> anyhow::Result<()> {
    ensure!(
        log.first().is_none_or(|(o, _)| *o == start),
        "the log does not begin at its start {start}"
    );
    for (i, (offset, _)) in log.iter().enumerate() {
        ensure!(
            *offset == start + i as u64,
            "offsets are not dense at {offset}"
        );
    }
    let mut at: HashMap<&str, u64> = HashMap::new();
    for (offset, value) in log {
        if let Some(first) = at.insert(value.as_str(), *offset) {
            bail!("{value} is in the log twice, at {first} and {offset}");
        }
    }
    let mut attempted: BTreeSet<&str> = BTreeSet::new();
    for report in reports {
        let mut previous = None;
        for (value, applied) in &report.acked {
            attempted.insert(value);
            if applied.base_offset < start {
                // Removed by retention since.
                ensure!(
                    !at.contains_key(value.as_str()),
                    "{value}, acknowledged at {}, is in the log after its start {start}",
                    applied.base_offset
                );
                continue;
            }
            let Some(&offset) = at.get(value.as_str()) else {
                bail!("acknowledged {value} (at {}) is lost", applied.base_offset);
            };
            ensure!(
                offset == applied.base_offset && applied.next_offset == offset + 1,
                "{value} was acknowledged at {applied:?} but is at {offset}"
            );
            ensure!(
                previous.is_none_or(|p| p < offset),
                "{value} at {offset} is before an earlier acknowledged write at {previous:?}"
            );
            previous = Some(offset);
        }
        attempted.extend(report.unacked.iter().map(String::as_str));
    }
    for (offset, value) in log {
        ensure!(
            attempted.contains(value.as_str()),
            "{value} at {offset} was never written"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. Leader failover
// ---------------------------------------------------------------------------------------------

/// On `n` nodes: write, crash the leader `crashes` times in a row (each time a new leader must be
/// elected among the survivors and take writes), then restart the crashed nodes: every replica
/// converges to the same log holding every write, at dense offsets.
async fn leader_failover(n: u64, crashes: usize, seed: u64) -> anyhow::Result<()> {
    init_tracing();
    let mut cluster = RaftCluster::start(n, seed).await?;
    let replicas: Vec<NodeId> = (1..=n).collect();
    cluster
        .create_group(GROUP, &replicas, LogConfig::default())
        .await?;
    let mut expected = write_values(&cluster, "before", 0..20).await?;
    assert_eq!(expected.first().map(|e| e.0), Some(0));
    let mut crashed = Vec::new();
    for round in 0..crashes {
        let old = cluster.leader(GROUP, WAIT).await?;
        let old_term = term(&cluster, old)?;
        cluster.crash(old).await?;
        crashed.push(old);
        let new = cluster.leader(GROUP, WAIT).await?;
        assert!(!crashed.contains(&new), "node {new} leads but is down");
        assert!(
            term(&cluster, new)? > old_term,
            "the new leader {new} has a newer term than {old_term}"
        );
        let more = write_values(&cluster, &format!("after{round}"), 0..20).await?;
        assert_eq!(
            more.first().map(|e| e.0),
            expected.last().map(|e| e.0 + 1),
            "writes continue at the next offset after the failover"
        );
        expected.extend(more);
    }
    for &node in &crashed {
        cluster.restart(node).await?;
    }
    let converged = cluster.converge(GROUP, WAIT).await?;
    assert_eq!(
        converged.nodes.len(),
        replicas.len(),
        "every replica converged"
    );
    assert_records(&cluster, &converged, &expected)?;
    assert_identical_entries(&cluster, &converged)?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_failover_three_nodes() -> anyhow::Result<()> {
    leader_failover(3, 1, 11).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_failover_five_nodes_twice() -> anyhow::Result<()> {
    // Two leaders in a row: three of five nodes are still a majority.
    leader_failover(5, 2, 12).await
}

// ---------------------------------------------------------------------------------------------
// 2. No acknowledged write lost
// ---------------------------------------------------------------------------------------------

/// Three writers write unique values while the test, for `rounds` rounds, crashes a node or cuts
/// it off (the leader in about half the rounds; on five nodes sometimes a second node too),
/// sometimes with random message loss on every link, waits until writes are acknowledged despite
/// the fault, and undoes the fault. Then every replica must hold the same committed log with
/// every acknowledged value exactly once.
async fn chaos(nodes: u64, seed: u64, rounds: u32) -> anyhow::Result<()> {
    init_tracing();
    let mut cluster = RaftCluster::start(nodes, seed).await?;
    let replicas: Vec<NodeId> = (1..=nodes).collect();
    cluster
        .create_group(GROUP, &replicas, LogConfig::default())
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            spawn_writer(
                cluster.client(GROUP),
                format!("w{w}"),
                Arc::clone(&stop),
                Arc::clone(&acks),
            )
        })
        .collect();
    wait_for_acks(&acks, 20, WAIT).await?;
    let mut rng = SplitMix64::new(seed);
    for round in 0..rounds {
        // The first four rounds go through the four kinds of fault in order (crash the leader,
        // crash a follower, cut the leader off, cut a follower off); later rounds pick at random.
        let kind = if round < 4 {
            u64::from(round)
        } else {
            rng.below(4)
        };
        let crash = kind < 2;
        let on_leader = kind % 2 == 0;
        let drop_one_in = if rng.below(2) == 0 { 0 } else { 20 };
        cluster.faults.set_drop_one_in(drop_one_in);
        let leader = cluster.leader(GROUP, WAIT).await?;
        let followers: Vec<NodeId> = replicas.iter().copied().filter(|&n| n != leader).collect();
        let mut victims = vec![(
            if on_leader {
                leader
            } else {
                followers[rng.below(followers.len() as u64) as usize]
            },
            crash,
        )];
        // With five nodes or more, a second node fails at the same time in some rounds: a
        // majority is still up.
        if nodes >= 5 && rng.below(2) == 0 {
            let others: Vec<NodeId> = followers
                .iter()
                .copied()
                .filter(|&n| n != victims[0].0)
                .collect();
            victims.push((
                others[rng.below(others.len() as u64) as usize],
                rng.below(2) == 0,
            ));
        }
        tracing::info!(round, ?victims, leader, drop_one_in, "chaos: faults start");
        for &(victim, crash) in &victims {
            if crash {
                cluster.crash(victim).await?;
            } else {
                cluster
                    .faults
                    .isolate(victim, replicas.iter().copied().filter(|&n| n != victim));
            }
        }
        // A majority is up and connected: writes must go on.
        let target = acks.load(Ordering::SeqCst) + 15;
        wait_for_acks(&acks, target, WAIT)
            .await
            .with_context(|| format!("round {round}: (node, crashed) {victims:?} down"))?;
        for &(victim, crash) in &victims {
            if crash {
                cluster.restart(victim).await?;
            }
        }
        cluster.faults.heal();
    }
    cluster.faults.set_drop_one_in(0);
    let target = acks.load(Ordering::SeqCst) + 10;
    wait_for_acks(&acks, target, WAIT).await?;
    stop.store(true, Ordering::SeqCst);
    let mut reports = Vec::new();
    for writer in writers {
        reports.push(writer.await?);
    }
    let acked: usize = reports.iter().map(|r| r.acked.len()).sum();
    let unacked: usize = reports.iter().map(|r| r.unacked.len()).sum();
    tracing::info!(acked, unacked, rounds, "chaos: writers stopped");

    let converged = cluster.converge(GROUP, WAIT).await?;
    assert_eq!(
        converged.nodes.len(),
        replicas.len(),
        "every replica converged"
    );
    let log = cluster.read_all(converged.leader, GROUP, true)?;
    check_writers(&log, 0, &reports)?;
    assert_records(&cluster, &converged, &log)?;
    assert_identical_entries(&cluster, &converged)?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_acknowledged_write_lost_under_crashes_and_partitions() -> anyhow::Result<()> {
    chaos(3, 21, 6).await
}

/// The long version of the chaos test: many more rounds on five nodes, where some rounds take
/// two nodes down at once.
///
/// `WEIR_SOAK_ROUNDS` (default 60) and `WEIR_SOAK_SEED` (default 2024) choose the run:
///
/// ```text
/// WEIR_SOAK_ROUNDS=200 WEIR_SOAK_SEED=7 cargo test -p weir-tests --test raft_cluster \
///     -- --ignored soak_no_acknowledged_write_lost
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "soak test: minutes long; run explicitly"]
async fn soak_no_acknowledged_write_lost() -> anyhow::Result<()> {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let rounds = u32::try_from(env("WEIR_SOAK_ROUNDS", 60)).unwrap_or(60);
    chaos(5, env("WEIR_SOAK_SEED", 2024), rounds).await
}

// ---------------------------------------------------------------------------------------------
// 3. Divergent uncommitted suffix
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn divergent_uncommitted_suffix_is_truncated_on_the_old_leader() -> anyhow::Result<()> {
    init_tracing();
    let mut cluster = RaftCluster::start(3, 31).await?;
    cluster
        .create_group(GROUP, &[1, 2, 3], LogConfig::default())
        .await?;
    let mut expected = write_values(&cluster, "base", 0..10).await?;
    let old = cluster.leader(GROUP, WAIT).await?;
    let others: Vec<NodeId> = cluster
        .node_ids()
        .into_iter()
        .filter(|&n| n != old)
        .collect();
    let old_group = cluster.group(old, GROUP).context("old leader's replica")?;
    let before = cluster.replica_state(old, GROUP)?;

    cluster.faults.isolate(old, others.iter().copied());
    const DIVERGENT: u64 = 5;
    let mut doomed = Vec::new();
    for i in 0..DIVERGENT {
        let g = Arc::clone(&old_group);
        // One at a time, so they are appended in this order (each task starts on its own).
        let next = before.next_index + i;
        doomed.push(tokio::spawn(async move {
            g.write(record_batch(&format!("divergent-{i}"))).await
        }));
        eventually(WAIT, &format!("divergent-{i} appended"), || {
            ready(cluster.replica_state(old, GROUP).and_then(|state| {
                ensure!(state.next_index > next, "next index {}", state.next_index);
                Ok(())
            }))
        })
        .await?;
    }
    // The old leader stores them but cannot commit them.
    let stored = cluster.read_all(old, GROUP, false)?;
    assert_eq!(stored.len(), expected.len() + DIVERGENT as usize);
    assert!(
        stored[expected.len()..]
            .iter()
            .all(|(_, v)| v.starts_with("divergent-"))
    );
    assert_eq!(cluster.read_all(old, GROUP, true)?, expected);

    // The majority elects a new leader (of a newer term than the isolated one) and commits more
    // entries than the divergent suffix holds, at the same offsets.
    let client = cluster.client(GROUP);
    let new = eventually(WAIT, "the majority to elect a leader", || {
        // The old leader still believes it leads, in its old term.
        ready(match client.current_leader() {
            Some((node, _)) if node != old => Ok(node),
            other => Err(anyhow::anyhow!("leader: {:?}", other.map(|(node, _)| node))),
        })
    })
    .await?;
    assert!(term(&cluster, new)? > term(&cluster, old)?);
    let majority = write_values(&cluster, "majority", 0..(2 * DIVERGENT)).await?;
    assert_eq!(
        majority.first().map(|e| e.0),
        Some(expected.len() as u64),
        "the majority's records reuse the offsets of the divergent ones"
    );
    expected.extend(majority);
    for (i, task) in doomed.iter().enumerate() {
        assert!(
            !task.is_finished(),
            "divergent-{i} was answered while cut off"
        );
    }

    cluster.faults.heal();
    for (i, task) in doomed.into_iter().enumerate() {
        let result = tokio::time::timeout(WAIT, task)
            .await
            .with_context(|| format!("divergent-{i} never answered"))??;
        assert!(
            result.is_err(),
            "divergent-{i} was acknowledged: {result:?}"
        );
    }
    let converged = cluster.converge(GROUP, WAIT).await?;
    assert!(converged.nodes.contains(&old));
    assert_eq!(converged.nodes.len(), 3);
    assert_records(&cluster, &converged, &expected)?;
    assert_identical_entries(&cluster, &converged)?;
    assert_eq!(
        cluster.read_all(old, GROUP, false)?,
        cluster.read_all(converged.leader, GROUP, false)?,
        "the old leader's log equals the leader's"
    );
    cluster.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Follower catch-up after restart
// ---------------------------------------------------------------------------------------------

/// Writes `{prefix}-{w}-{i}` from `writers` concurrent tasks, `each` per task, and returns
/// (offset, value) of all of them in offset order.
async fn write_concurrently(
    cluster: &RaftCluster,
    prefix: &str,
    writers: u64,
    each: u64,
) -> anyhow::Result<Vec<(u64, String)>> {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let client = cluster.client(GROUP);
        let prefix = format!("{prefix}-{w}");
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..each {
                let value = format!("{prefix}-{i}");
                let applied = client.write(record_batch(&value), WAIT).await?;
                out.push((applied.base_offset, value));
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    all.sort();
    Ok(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_catches_up_after_restart() -> anyhow::Result<()> {
    init_tracing();
    let mut cluster = RaftCluster::start(3, 41).await?;
    cluster
        .create_group(GROUP, &[1, 2, 3], LogConfig::default())
        .await?;
    let mut expected = write_values(&cluster, "first", 0..20).await?;
    let leader = cluster.leader(GROUP, WAIT).await?;
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|&n| n != leader)
        .context("a follower")?;
    cluster.crash(follower).await?;
    let more = write_concurrently(&cluster, "while-down", 4, 100).await?;
    expected.extend(more);
    let offsets: Vec<u64> = expected.iter().map(|e| e.0).collect();
    assert_eq!(offsets, (0..expected.len() as u64).collect::<Vec<_>>());

    cluster.restart(follower).await?;
    let last = cluster
        .applied_index(cluster.leader(GROUP, WAIT).await?, GROUP)
        .context("leader applied nothing")?;
    cluster.wait_applied(GROUP, last, WAIT).await?;
    let converged = cluster.converge(GROUP, WAIT).await?;
    assert!(converged.nodes.contains(&follower));
    assert_eq!(converged.nodes.len(), 3);
    assert_records(&cluster, &converged, &expected)?;
    assert_identical_entries(&cluster, &converged)?;
    cluster.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Catch-up through a snapshot after retention
// ---------------------------------------------------------------------------------------------

/// 4 KiB segments, and retention keeps about 16 KiB: a few hundred small records roll many
/// segments and move the log start.
fn small_segments_with_retention() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        segment_ms: None,
        retention_bytes: Some(16 * 1024),
        retention_ms: None,
        ..LogConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_behind_the_log_start_catches_up_through_a_snapshot() -> anyhow::Result<()> {
    init_tracing();
    let log = small_segments_with_retention();
    let mut cluster = RaftCluster::start(3, 51).await?;
    cluster.create_group(GROUP, &[1, 2, 3], log).await?;
    let pad = "x".repeat(300);
    let mut expected = write_values(&cluster, &format!("early-{pad}"), 0..10).await?;
    let leader = cluster.leader(GROUP, WAIT).await?;
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|&n| n != leader)
        .context("a follower")?;
    let behind = cluster.replica_state(follower, GROUP)?;
    cluster.crash(follower).await?;

    // About ten records per 4 KiB segment: 40 segments, of which retention keeps about four.
    expected.extend(write_concurrently(&cluster, &format!("later-{pad}"), 4, 100).await?);
    let what = format!(
        "retention to move the leader's log start past {}",
        behind.next_offset
    );
    let leader = eventually(WAIT, &what, || async {
        let leader = cluster.leader(GROUP, WAIT).await?;
        let start = cluster.replica_state(leader, GROUP)?.log_start_offset;
        ensure!(
            start > behind.next_offset,
            "node {leader}'s log starts at {start}"
        );
        Ok(leader)
    })
    .await?;
    // Let retention finish with what was written, so that the log start the follower must
    // reach stays put.
    wait_retention_done(&cluster, WAIT).await?;
    let leader_state = cluster.replica_state(leader, GROUP)?;
    assert!(leader_state.log_start_offset > 0);
    assert!(
        leader_state
            .first_index
            .is_some_and(|i| i > behind.next_index)
    );

    cluster.restart(follower).await?;
    let converged = cluster.converge(GROUP, WAIT).await?;
    assert!(converged.nodes.contains(&follower));
    assert_eq!(converged.nodes.len(), 3);
    let start = cluster
        .replica_state(converged.leader, GROUP)?
        .log_start_offset;
    assert_eq!(start, leader_state.log_start_offset);
    let follower_state = cluster.replica_state(follower, GROUP)?;
    assert_eq!(follower_state.log_start_offset, start);
    let snapshot = cluster
        .group(follower, GROUP)
        .context("follower replica")?
        .raft()
        .metrics()
        .borrow()
        .snapshot;
    assert_eq!(
        snapshot.map(|s| s.index + 1),
        leader_state.first_index,
        "the follower installed the snapshot at the leader's log start"
    );
    let kept: Vec<(u64, String)> = expected
        .iter()
        .filter(|(offset, _)| *offset >= start)
        .cloned()
        .collect();
    assert!(!kept.is_empty());
    assert_records(&cluster, &converged, &kept)?;
    assert_identical_entries(&cluster, &converged)?;
    cluster.shutdown().await;
    Ok(())
}

/// The same catch-up while writes go on: the leader's log start keeps moving while the follower
/// restarts, installs a snapshot and replicates, so it may need several snapshots and purges its
/// own log on its own. Afterwards it holds exactly what the leader holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_catches_up_while_retention_moves_the_log_start() -> anyhow::Result<()> {
    init_tracing();
    let log = small_segments_with_retention();
    let mut cluster = RaftCluster::start(3, 52).await?;
    cluster.create_group(GROUP, &[1, 2, 3], log).await?;
    let pad = "y".repeat(300);
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            spawn_writer(
                cluster.client(GROUP),
                format!("w{w}-{pad}"),
                Arc::clone(&stop),
                Arc::clone(&acks),
            )
        })
        .collect();
    wait_for_acks(&acks, 10, WAIT).await?;
    let leader = cluster.leader(GROUP, WAIT).await?;
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|&n| n != leader)
        .context("a follower")?;
    let behind = cluster.replica_state(follower, GROUP)?;
    cluster.crash(follower).await?;
    let what = format!(
        "retention to move the leader's log start past {}",
        behind.next_offset
    );
    let start_at_restart = eventually(WAIT, &what, || async {
        let leader = cluster.leader(GROUP, WAIT).await?;
        let start = cluster.replica_state(leader, GROUP)?.log_start_offset;
        ensure!(
            start > behind.next_offset,
            "node {leader}'s log starts at {start}"
        );
        Ok(start)
    })
    .await?;

    cluster.restart(follower).await?;
    // Writes go on until the follower has caught up through a snapshot and the leader's log
    // start has moved on again.
    eventually(
        WAIT,
        "the follower caught up through a snapshot",
        || async {
            let leader = cluster.leader(GROUP, WAIT).await?;
            let start = cluster.replica_state(leader, GROUP)?.log_start_offset;
            let state = cluster.replica_state(follower, GROUP)?;
            ensure!(
                start > start_at_restart && state.log_start_offset > behind.next_offset,
                "leader's log start {start}, follower at {state:?}"
            );
            Ok(())
        },
    )
    .await?;
    let target = acks.load(Ordering::SeqCst) + 20;
    wait_for_acks(&acks, target, WAIT).await?;
    stop.store(true, Ordering::SeqCst);
    let mut reports = Vec::new();
    for writer in writers {
        reports.push(writer.await?);
    }
    wait_retention_done(&cluster, WAIT).await?;

    let converged = cluster.converge(GROUP, WAIT).await?;
    assert_eq!(converged.nodes.len(), 3);
    let start = cluster
        .replica_state(converged.leader, GROUP)?
        .log_start_offset;
    assert!(start > start_at_restart);
    let log = cluster.read_all(converged.leader, GROUP, true)?;
    check_writers(&log, start, &reports)?;
    assert_records(&cluster, &converged, &log)?;
    assert_identical_entries(&cluster, &converged)?;
    cluster.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Membership change under load
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_change_under_load() -> anyhow::Result<()> {
    init_tracing();
    let mut cluster = RaftCluster::start(4, 61).await?;
    cluster
        .create_group(GROUP, &[1, 2, 3], LogConfig::default())
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            spawn_writer(
                cluster.client(GROUP),
                format!("w{w}"),
                Arc::clone(&stop),
                Arc::clone(&acks),
            )
        })
        .collect();
    wait_for_acks(&acks, 30, WAIT).await?;

    cluster.add_empty_replica(GROUP, 4).await?;
    let leader = cluster.leader(GROUP, WAIT).await?;
    let raft = cluster
        .group(leader, GROUP)
        .context("leader replica")?
        .raft()
        .clone();
    let node4: PeerNode = cluster
        .members(&[4])
        .remove(&4)
        .context("node 4's address")?;
    raft.add_learner(4, node4, true).await?;
    let target = acks.load(Ordering::SeqCst) + 20;
    wait_for_acks(&acks, target, WAIT).await?;

    // Swap the leader out for node 4: the leader commits the change, then steps down.
    let voters: BTreeSet<NodeId> = [1, 2, 3, 4].into_iter().filter(|&n| n != leader).collect();
    raft.change_membership(voters.clone(), false).await?;
    let target = acks.load(Ordering::SeqCst) + 30;
    wait_for_acks(&acks, target, WAIT)
        .await
        .context("writes after the membership change")?;
    stop.store(true, Ordering::SeqCst);
    let mut reports = Vec::new();
    for writer in writers {
        reports.push(writer.await?);
    }

    let converged = cluster.converge(GROUP, WAIT).await?;
    assert_ne!(converged.leader, leader, "the removed leader stepped down");
    let new_leader = cluster.group(converged.leader, GROUP).context("leader")?;
    assert_eq!(new_leader.members(), (voters.clone(), BTreeSet::new()));
    assert_eq!(
        converged.nodes.iter().copied().collect::<BTreeSet<_>>(),
        voters,
        "the new voters converged"
    );
    let log = cluster.read_all(converged.leader, GROUP, true)?;
    assert_eq!(
        log.first().map(|e| e.0),
        Some(0),
        "node 4 holds the whole log"
    );
    check_writers(&log, 0, &reports)?;
    assert_records(&cluster, &converged, &log)?;
    assert_identical_entries(&cluster, &converged)?;
    cluster.shutdown().await;
    Ok(())
}

/// A batch of one record from idempotent producer 7 with sequence `sequence`.
fn idempotent_batch(sequence: i32, value: &str) -> bytes::Bytes {
    let mut builder = weir_format::batch::BatchBuilder::new(weir_format::batch::Compression::None)
        .producer(weir_format::batch::ProducerInfo {
            producer_id: 7,
            producer_epoch: 0,
            base_sequence: sequence,
        });
    builder.push(1_700_000_000_000, None, Some(value.as_bytes()), &[]);
    builder.build().unwrap_or_default()
}

/// Retries of an idempotent producer's batch are written once — also when the first attempt's
/// caller gave up while it was in flight — and sequence gaps and stale retries are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retried_idempotent_batches_are_written_once() -> anyhow::Result<()> {
    init_tracing();
    let mut cluster = RaftCluster::start(3, 11).await?;
    cluster
        .create_group(GROUP, &[1, 2, 3], LogConfig::default())
        .await?;
    let leader = cluster.leader(GROUP, WAIT).await?;
    let group = weir_raft::Partition::new(cluster.group(leader, GROUP).context("leader group")?);

    let first = group
        .write_deduplicated(idempotent_batch(0, "a"), WAIT)
        .await?;
    let again = group
        .write_deduplicated(idempotent_batch(0, "a"), WAIT)
        .await?;
    ensure!(
        first == again,
        "a retry got {again:?}, the first write {first:?}"
    );

    for round in 0..20 {
        let batch = idempotent_batch(1 + round, &format!("v{round}"));
        let attempt = tokio::spawn({
            let group = Arc::clone(&group);
            let batch = batch.clone();
            async move { group.write_deduplicated(batch, WAIT).await }
        });
        // Give up on the attempt at some point while it runs, then retry the same bytes.
        tokio::time::sleep(Duration::from_micros(200 * u64::from(round.unsigned_abs()))).await;
        attempt.abort();
        group.write_deduplicated(batch, WAIT).await?;
    }
    let gap = group
        .write_deduplicated(idempotent_batch(40, "gap"), WAIT)
        .await;
    ensure!(
        matches!(gap, Err(weir_raft::GroupError::OutOfOrderSequence { .. })),
        "a sequence gap was not refused: {gap:?}"
    );
    let stale = group
        .write_deduplicated(idempotent_batch(0, "a"), WAIT)
        .await;
    ensure!(
        matches!(stale, Err(weir_raft::GroupError::Duplicate { .. })),
        "a stale retry was not refused: {stale:?}"
    );

    let applied = group.progress().borrow().applied_index.unwrap_or(0);
    cluster.wait_applied(GROUP, applied, WAIT).await?;
    let mut expected = vec![(0, "a".to_string())];
    expected.extend((0..20).map(|round| (round + 1, format!("v{round}"))));
    for node in cluster.node_ids() {
        ensure!(
            cluster.read_all(node, GROUP, true)? == expected,
            "node {node} does not hold each batch exactly once"
        );
    }
    cluster.shutdown().await;
    Ok(())
}

/// Idempotent writes go on across leader restarts (a leader restarted before anyone replaced it
/// resumes its term without knowing how far its log was committed): every batch is written once
/// and none is refused as out of sequence. The multi-process kill test hit that refusal once;
/// this in-process variant exercises the path but does not reliably reproduce the old failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotent_writes_continue_on_a_leader_restarted_into_its_term() -> anyhow::Result<()> {
    init_tracing();
    let mut cluster = RaftCluster::start(3, 12).await?;
    cluster
        .create_group(GROUP, &[1, 2, 3], LogConfig::default())
        .await?;
    let mut sequence = 0;
    let mut expected = Vec::new();
    for round in 0..5 {
        for _ in 0..10 {
            let leader = cluster.leader(GROUP, WAIT).await?;
            let group =
                weir_raft::Partition::new(cluster.group(leader, GROUP).context("leader group")?);
            let value = format!("r{round}-s{sequence}");
            let applied = group
                .write_deduplicated(idempotent_batch(sequence, &value), WAIT)
                .await?;
            expected.push((applied.base_offset, value));
            sequence += 1;
        }
        // Restart the leader at once: it comes back as the leader of its old term.
        let leader = cluster.leader(GROUP, WAIT).await?;
        cluster.crash(leader).await?;
        cluster.restart(leader).await?;
    }
    let leader = cluster.leader(GROUP, WAIT).await?;
    let group = weir_raft::Partition::new(cluster.group(leader, GROUP).context("leader group")?);
    let applied = group
        .write_deduplicated(idempotent_batch(sequence, "last"), WAIT)
        .await?;
    expected.push((applied.base_offset, "last".to_string()));
    let last = group.progress().borrow().applied_index.unwrap_or(0);
    cluster.wait_applied(GROUP, last, WAIT).await?;
    for node in cluster.node_ids() {
        ensure!(
            cluster.read_all(node, GROUP, true)? == expected,
            "node {node} does not hold each batch exactly once"
        );
    }
    cluster.shutdown().await;
    Ok(())
}
