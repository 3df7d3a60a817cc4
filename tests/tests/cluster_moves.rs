//! Multi-process membership test: while a producer writes with acks=all, a fourth node joins,
//! `weir cluster rebalance` moves replicas onto it (learner → caught up → voter → old replica
//! removed), then `weir cluster remove-node 1` drains node 1 and it is stopped. Every acknowledged
//! record must be readable exactly once, in order, and the replicas of every partition must hold
//! the same committed log.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use weir_client::Client;
use weir_tests::eventually;
use weir_tests::process_cluster::ProcessCluster;
use weir_tests::workload::{Workload, verify_exactly_once};

const TOPIC: &str = "moves";
const PARTITIONS: u32 = 4;
/// Values the producers get acknowledged before the join and after the drain: the membership
/// changes happen under load, and writes go on after them.
const PROGRESS: usize = 100;
/// How long each step may take.
const WAIT: Duration = Duration::from_secs(60);

fn weir(cluster: &ProcessCluster, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(cluster.binary())
        .args(args)
        .args(["--brokers", &cluster.brokers().join(",")])
        .output()?;
    ensure!(
        output.status.success(),
        "weir {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_move_onto_a_new_node_and_off_a_drained_one_under_load() -> anyhow::Result<()> {
    weir_tests::init_tracing();
    let mut cluster = ProcessCluster::start(3)?;
    let mut client = Client::new(&cluster.brokers())?;
    client.retry_for = Duration::from_secs(60);
    let client = Arc::new(client);
    client.create_topic(TOPIC, PARTITIONS, 3).await?;

    let workload = Workload::start(Arc::clone(&client), TOPIC, PARTITIONS, 10);
    workload
        .wait_progress(PROGRESS, WAIT, "before node 4 joins")
        .await?;

    // Node 4 joins; rebalance moves replicas onto it.
    cluster.add_node(4)?;
    eventually(WAIT, "node 4 registered", || async {
        let brokers: Vec<u64> = client
            .metadata(&[])
            .await?
            .brokers
            .iter()
            .map(|b| b.id)
            .collect();
        ensure!(brokers.contains(&4), "brokers {brokers:?}");
        Ok(())
    })
    .await?;
    let rebalance = weir(&cluster, &["cluster", "rebalance", "--wait"])?;
    ensure!(rebalance.contains("rebalanced"), "{rebalance}");
    let metadata = client.metadata(&[]).await?;
    let on_4 = metadata.topics[0]
        .partitions
        .iter()
        .filter(|p| p.replicas.contains(&4))
        .count();
    ensure!(
        on_4 == 3,
        "node 4 holds {on_4} replicas after the rebalance, expected 3"
    );

    // Node 1 drains and stops.
    let drain = weir(&cluster, &["cluster", "remove-node", "1", "--wait"])?;
    ensure!(drain.contains("holds no replicas"), "{drain}");
    let metadata = client.metadata(&[]).await?;
    ensure!(
        metadata.topics[0]
            .partitions
            .iter()
            .all(|p| !p.replicas.contains(&1)),
        "node 1 still holds replicas"
    );
    workload
        .wait_progress(PROGRESS, WAIT, "after node 1 was drained")
        .await?;
    let (batches, acked) = workload.stop().await?;
    ensure!(batches > 20, "only {batches} batches acknowledged");

    // Everything acknowledged is there exactly once, in order, read through nodes 2-4.
    let mut reader = Client::new(&cluster.brokers()[1..])?;
    reader.retry_for = Duration::from_secs(30);
    let high_watermarks = verify_exactly_once(&reader, TOPIC, &acked).await?;

    // The current replicas of each partition hold the same committed log.
    let metadata = reader.metadata(&[]).await?;
    cluster.stop_all()?;
    for info in &metadata.topics[0].partitions {
        let hw = high_watermarks[&info.partition];
        let mut logs = Vec::new();
        for id in &info.replicas {
            let entries = cluster.stored_entries(*id, TOPIC, info.partition)?;
            let committed: Vec<_> = entries
                .into_iter()
                .filter(|(_, _, base, _)| *base < hw)
                .collect();
            logs.push((*id, committed));
        }
        for (id, log) in &logs[1..] {
            ensure!(
                *log == logs[0].1,
                "partition {}: node {id}'s log differs from node {}'s",
                info.partition,
                logs[0].0
            );
        }
        ensure!(
            cluster.partition_dir(1, TOPIC, info.partition).is_none(),
            "node 1 still has files of partition {}",
            info.partition
        );
    }
    eprintln!("moves test: {batches} batches acknowledged through a join, a rebalance and a drain");
    Ok(())
}
