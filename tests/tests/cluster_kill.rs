//! Multi-process fault test: three `weir server` processes on loopback, a topic with replication
//! factor 3, records produced with acks=all in batches while nodes — the partition leaders among
//! them — are SIGKILLed and restarted several times. Afterwards every acknowledged record must be
//! readable exactly once at one offset, in order; no record at all may appear twice; and the
//! committed prefix of each partition's log must be identical on all replicas (entry index, term,
//! base offset and CRC of every batch).
//!
//! The CI test runs 6 kill rounds. The soak variant runs 60 (about 5 minutes):
//! `cargo test --release -p weir-tests --test cluster_kill -- --ignored`; `WEIR_KILL_ROUNDS`
//! overrides either.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use weir_client::Client;
use weir_tests::process_cluster::{ProcessCluster, committed_prefix};
use weir_tests::wait_for_leader;
use weir_tests::workload::{Workload, verify_exactly_once};

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 2;

/// How many values the producers must get acknowledged between two faults (and after the last):
/// every fault hits a cluster under load, and the cluster serves writes again after it.
const PROGRESS: usize = 200;
/// How long the cluster may take to serve again after a fault.
const RECOVERY: Duration = Duration::from_secs(30);
/// How long a killed leader stays down after its partition failed over: the restarted node then
/// rejoins as a follower of a newer term.
const DOWNTIME: Duration = Duration::from_millis(500);
/// How long the second node of every third round stays down.
const SECOND_DOWNTIME: Duration = Duration::from_millis(800);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_records_survive_sigkill_of_leaders() -> anyhow::Result<()> {
    kill_test(6).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "soak: about 5 minutes; run with --ignored"]
async fn soak_acknowledged_records_survive_many_sigkills() -> anyhow::Result<()> {
    kill_test(60).await
}

async fn kill_test(default_rounds: u32) -> anyhow::Result<()> {
    weir_tests::init_tracing();
    let rounds: u32 = std::env::var("WEIR_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_rounds);
    let mut cluster = ProcessCluster::start(3)?;
    let mut client = Client::new(&cluster.brokers())?;
    client.retry_for = Duration::from_secs(60);
    let client = Arc::new(client);
    client.create_topic(TOPIC, PARTITIONS, 3).await?;

    // Producers: one per partition, batches of 20 unique values, acks=all.
    let workload = Workload::start(Arc::clone(&client), TOPIC, PARTITIONS, 20);

    // Chaos: kill the leader of a partition (alternating), wait until another node leads it,
    // bring it back; every third round also kill a second node briefly after the first is back.
    for round in 0..rounds {
        workload
            .wait_progress(PROGRESS, RECOVERY, &format!("before round {round}"))
            .await?;
        let partition = round % PARTITIONS;
        let leader = wait_for_leader(&client, TOPIC, partition, 0, RECOVERY).await?;
        tracing::info!(round, partition, leader, "killing the leader");
        cluster.kill(leader)?;
        // Keep it down until the others elected a new leader (a leader restarted before anyone
        // replaced it simply resumes its term).
        wait_for_leader(&client, TOPIC, partition, leader, RECOVERY).await?;
        tokio::time::sleep(DOWNTIME).await;
        cluster.restart(leader)?;
        if round % 3 == 2 {
            cluster.wait_serving(leader, RECOVERY).await?;
            workload
                .wait_progress(
                    PROGRESS,
                    RECOVERY,
                    &format!("after restarting node {leader} in round {round}"),
                )
                .await?;
            let other = cluster
                .node_ids()
                .into_iter()
                .find(|id| *id != leader)
                .context("another node")?;
            tracing::info!(round, other, "killing a second node");
            cluster.kill(other)?;
            tokio::time::sleep(SECOND_DOWNTIME).await;
            cluster.restart(other)?;
        }
    }
    workload
        .wait_progress(PROGRESS, RECOVERY, "after the last restart")
        .await?;
    let (batches, acked) = workload.stop().await?;
    let total_acked: usize = acked.values().map(Vec::len).sum();
    ensure!(
        batches > 10,
        "too few batches acknowledged ({batches}) for a meaningful test"
    );

    // Replay every partition from the earliest offset: everything acknowledged, once, in order.
    let last_offsets = verify_exactly_once(&client, TOPIC, &acked).await?;

    // The CLI replays the same records.
    let cli = std::process::Command::new(cluster.binary())
        .args([
            "consume",
            TOPIC,
            "--from",
            "earliest",
            "--partition",
            "0",
            "--count",
        ])
        .arg(last_offsets[&0].to_string())
        .args(["--brokers", &cluster.brokers().join(",")])
        .output()?;
    ensure!(
        cli.status.success(),
        "weir consume failed: {}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let cli_values: Vec<&str> = std::str::from_utf8(&cli.stdout)?.lines().collect();
    let wanted0: Vec<&str> = acked
        .get(&0)
        .map(|v| v.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let cli_acked: Vec<&str> = cli_values
        .iter()
        .copied()
        .filter(|v| wanted0.contains(v))
        .collect();
    ensure!(
        cli_acked == wanted0,
        "weir consume does not replay partition 0's acknowledged records"
    );

    // Every replica holds the same committed prefix.
    cluster.stop_all()?;
    for partition in 0..PARTITIONS {
        let hw = last_offsets[&partition];
        let mut prefixes = Vec::new();
        for id in cluster.node_ids() {
            let entries = cluster.stored_entries(id, TOPIC, partition)?;
            prefixes.push((id, committed_prefix(&entries, hw)));
        }
        let (first_id, first) = &prefixes[0];
        ensure!(
            !first.is_empty(),
            "partition {partition} has no committed entries"
        );
        // Each kill of this partition's leader forced an election: the faults really happened.
        let last_term = first.iter().map(|(_, term, _, _)| *term).max().unwrap_or(0);
        let leader_kills = u64::from(rounds.div_ceil(PARTITIONS));
        ensure!(
            last_term > leader_kills,
            "partition {partition}: last term {last_term} after {leader_kills} leader kills"
        );
        for (id, prefix) in &prefixes[1..] {
            ensure!(
                prefix == first,
                "partition {partition}: committed log of node {id} differs from node {first_id}"
            );
        }
    }
    eprintln!(
        "kill test: {rounds} rounds, {batches} batches, {total_acked} records acknowledged, all read back exactly once"
    );
    Ok(())
}
