//! Multi-process admin behaviour: deleting a topic removes its data from every node and the name
//! can be used again from scratch; after a node restarts, leadership of the partitions it is the
//! preferred replica of returns to it (leader balancing); every node, whichever is asked, reports
//! which brokers are alive.

use std::time::Duration;

use anyhow::ensure;
use weir_client::{Client, IdempotentBatcher};
use weir_proto::v1::MetadataRequest;
use weir_proto::v1::broker_client::BrokerClient;
use weir_tests::process_cluster::ProcessCluster;
use weir_tests::{eventually, wait_for_leader};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn produce(
    client: &Client,
    topic: &str,
    partition: u32,
    values: &[&str],
) -> anyhow::Result<u64> {
    let (producer_id, epoch) = client.init_producer().await?;
    let mut producer = IdempotentBatcher::new(producer_id, epoch);
    let now = now_ms();
    let batch = producer
        .batch(partition, values.iter().map(|v| (now, None, v.as_bytes())))
        .ok_or_else(|| anyhow::anyhow!("empty batch"))?;
    client
        .produce_batch(topic, partition, batch)
        .await?
        .base_offset
        .ok_or_else(|| anyhow::anyhow!("acks=all answered without an offset"))
}

/// Leader of every partition of `topic` (0 when unknown), as the cluster reports it.
async fn leaders(client: &Client, topic: &str) -> anyhow::Result<Vec<(Vec<u64>, u64)>> {
    let metadata = client.metadata(&[topic.to_string()]).await?;
    Ok(metadata.topics[0]
        .partitions
        .iter()
        .map(|p| (p.replicas.clone(), p.leader))
        .collect())
}

/// Nodes of `cluster` whose data directory holds (`present`) or lacks partition `p` of `topic`.
fn nodes_where(cluster: &ProcessCluster, topic: &str, p: u32, present: bool) -> Vec<u64> {
    cluster
        .node_ids()
        .into_iter()
        .filter(|id| cluster.partition_dir(*id, topic, p).is_some() == present)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_topic_and_leader_balancing() -> anyhow::Result<()> {
    weir_tests::init_tracing();
    let mut cluster = ProcessCluster::start(3)?;
    let mut client = Client::new(&cluster.brokers())?;
    client.retry_for = Duration::from_secs(60);

    // Delete removes the data everywhere; the name starts over.
    client.create_topic("gone", 2, 3).await?;
    produce(&client, "gone", 0, &["old-1", "old-2", "old-3"]).await?;
    eventually(
        Duration::from_secs(20),
        "partition files on all nodes",
        || async {
            let missing = nodes_where(&cluster, "gone", 0, false);
            ensure!(missing.is_empty(), "gone/0 missing on nodes {missing:?}");
            Ok(())
        },
    )
    .await?;
    client.delete_topic("gone").await?;
    let missing = client.metadata(&["gone".to_string()]).await;
    ensure!(
        missing.as_ref().err().and_then(|e| e.code()) == Some(tonic::Code::NotFound),
        "deleted topic still in metadata: {missing:?}"
    );
    eventually(
        Duration::from_secs(20),
        "partition files removed",
        || async {
            for p in 0..2 {
                let left = nodes_where(&cluster, "gone", p, true);
                ensure!(left.is_empty(), "gone/{p} still on nodes {left:?}");
            }
            Ok(())
        },
    )
    .await?;
    client.create_topic("gone", 1, 3).await?;
    let base = produce(&client, "gone", 0, &["new-1"]).await?;
    ensure!(base == 0, "the re-created topic starts at offset {base}");
    let fetched = client.fetch("gone", 0, 0, 1 << 20).await?;
    let values: Vec<_> = fetched
        .records
        .iter()
        .filter_map(|r| r.value.clone())
        .collect();
    ensure!(
        values == vec![bytes::Bytes::from_static(b"new-1")],
        "{values:?}"
    );

    // Leader balancing: three partitions, one preferred leader per node.
    client.create_topic("balanced", 3, 3).await?;
    eventually(Duration::from_secs(40), "preferred leaders", || async {
        let leaders = leaders(&client, "balanced").await?;
        ensure!(
            leaders.iter().all(|(r, l)| *l == r[0]),
            "(replicas, leader) per partition: {leaders:?}"
        );
        Ok(())
    })
    .await?;
    let victim = leaders(&client, "balanced").await?[0].1;
    cluster.kill(victim)?;
    wait_for_leader(&client, "balanced", 0, victim, Duration::from_secs(30)).await?;
    produce(&client, "balanced", 0, &["while-away"]).await?;
    cluster.restart(victim)?;
    eventually(
        Duration::from_secs(45),
        "leadership back on the preferred replica",
        || async {
            let leader = leaders(&client, "balanced").await?[0].1;
            ensure!(
                leader == victim,
                "balanced/0 is led by {leader}, not {victim}"
            );
            Ok(())
        },
    )
    .await?;
    let fetched = client.fetch("balanced", 0, 0, 1 << 20).await?;
    ensure!(
        fetched.records.len() == 1,
        "partition 0 holds {} records",
        fetched.records.len()
    );
    cluster.stop_all()?;
    Ok(())
}

/// How long a broker counts as alive after it last answered (`LIVENESS_WINDOW` in
/// crates/controller).
const LIVENESS_WINDOW: Duration = Duration::from_secs(5);

/// The ids of the brokers that node `id`, asked directly, reports alive.
async fn alive_as_seen_by(cluster: &ProcessCluster, id: u64) -> anyhow::Result<Vec<u64>> {
    let mut broker = BrokerClient::connect(format!("http://{}", cluster.addr(id))).await?;
    let metadata = broker
        .metadata(MetadataRequest { topics: vec![] })
        .await?
        .into_inner();
    Ok(metadata
        .brokers
        .iter()
        .filter(|b| b.alive)
        .map(|b| b.id)
        .collect())
}

/// Fails unless every node in `asked` reports exactly `alive` alive.
async fn every_view_is(
    cluster: &ProcessCluster,
    asked: &[u64],
    alive: &[u64],
) -> anyhow::Result<()> {
    for &id in asked {
        let seen = alive_as_seen_by(cluster, id).await?;
        ensure!(seen == alive, "node {id} reports {seen:?} alive");
    }
    Ok(())
}

/// The metadata's `alive` flag is the answering node's view, and every node's view covers every
/// broker: with no topic yet, only the controller leader has Raft traffic with all nodes, yet a
/// follower asked directly reports them all alive — and still does after the liveness window
/// (it probes the brokers it does not otherwise hear from). `weir cluster status` asks whichever
/// node answers first; before, a follower reported live brokers down once they had not answered
/// it for 5 s (the StatefulSet test's flake). A killed node is reported down by the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_reports_every_live_broker_alive() -> anyhow::Result<()> {
    weir_tests::init_tracing();
    let mut cluster = ProcessCluster::start(3)?;
    eventually(
        Duration::from_secs(30),
        "every node reporting brokers 1, 2 and 3 alive",
        || every_view_is(&cluster, &[1, 2, 3], &[1, 2, 3]),
    )
    .await?;
    // The views stay whole past the window, with no topic (no partition traffic) at all.
    tokio::time::sleep(LIVENESS_WINDOW + Duration::from_secs(1)).await;
    every_view_is(&cluster, &[1, 2, 3], &[1, 2, 3]).await?;

    cluster.kill(3)?;
    eventually(
        LIVENESS_WINDOW + Duration::from_secs(10),
        "nodes 1 and 2 reporting node 3 down",
        || every_view_is(&cluster, &[1, 2], &[1, 2]),
    )
    .await?;
    cluster.stop_all()?;
    Ok(())
}
