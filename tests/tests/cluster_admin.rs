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

/// Stored `.log` segment files of partition `p` of `topic` on node `id`.
fn segment_files(cluster: &ProcessCluster, id: u64, topic: &str, p: u32) -> usize {
    cluster
        .partition_dir(id, topic, p)
        .and_then(|dir| std::fs::read_dir(dir.join("log")).ok())
        .map_or(0, |entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .count()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topics_grow_and_change_settings_online_and_groups_are_deleted() -> anyhow::Result<()> {
    weir_tests::init_tracing();
    let cluster = ProcessCluster::start_with_args(3, &["--retention-check-ms", "300"])?;
    let mut client = Client::new(&cluster.brokers())?;
    client.retry_for = Duration::from_secs(60);
    client.create_topic("grow", 2, 3).await?;
    produce(&client, "grow", 0, &["a", "b", "c"]).await?;

    // Partitions: only ever more; the new ones get replicas and leaders and take writes, the
    // old ones keep their records.
    for bad in [1, 2, 10_001] {
        let refused = client.create_partitions("grow", bad).await;
        ensure!(
            refused.as_ref().err().and_then(|e| e.code()) == Some(tonic::Code::InvalidArgument),
            "growing to {bad}: {refused:?}"
        );
    }
    let refused = client.create_partitions("missing", 3).await;
    ensure!(refused.err().and_then(|e| e.code()) == Some(tonic::Code::NotFound));
    let grown = client.create_partitions("grow", 4).await?;
    ensure!(grown.partitions.len() == 4, "{grown:?}");
    for p in [2, 3] {
        ensure!(grown.partitions[p].replicas.len() == 3, "{grown:?}");
    }
    let offset = produce(&client, "grow", 3, &["new"]).await?;
    ensure!(offset == 0, "first record of a new partition at {offset}");
    ensure!(produce(&client, "grow", 0, &["d"]).await? == 3);
    let described = client.describe_topic("grow").await?;
    ensure!(described.partitions.len() == 4);
    ensure!(described.partitions[3].high_watermark == 1);

    // Settings: all or nothing; the logs take them at once (segments roll at the new size,
    // retention keeps the new size).
    let bad = client
        .alter_topic_config(
            "grow",
            &[
                ("segment.bytes".to_string(), "1048576".to_string()),
                ("retention.ms".to_string(), "0".to_string()),
            ]
            .into(),
            &[],
        )
        .await;
    ensure!(
        bad.as_ref().err().and_then(|e| e.code()) == Some(tonic::Code::InvalidArgument),
        "{bad:?}"
    );
    ensure!(client.describe_topic("grow").await?.configs["segment.bytes"] == "1073741824");
    let internal = client
        .alter_topic_config(
            "__consumer_offsets",
            &[("retention.ms".to_string(), "1000".to_string())].into(),
            &[],
        )
        .await;
    ensure!(
        internal.as_ref().err().and_then(|e| e.code()) == Some(tonic::Code::InvalidArgument)
            || internal.as_ref().err().and_then(|e| e.code()) == Some(tonic::Code::NotFound),
        "{internal:?}"
    );
    let altered = client
        .alter_topic_config(
            "grow",
            &[("segment.bytes".to_string(), "1048576".to_string())].into(),
            &[],
        )
        .await?;
    ensure!(altered.configs["segment.bytes"] == "1048576", "{altered:?}");
    // Incompressible, so the batches stay about 100 KiB whatever the client's compression.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let big: String = (0..100 * 1024)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            char::from(b'!' + (seed % 90) as u8)
        })
        .collect();
    for _ in 0..30 {
        produce(&client, "grow", 1, &[&big]).await?;
    }
    let leader = client.metadata(&["grow".to_string()]).await?.topics[0].partitions[1].leader;
    eventually(
        Duration::from_secs(20),
        "segments rolled at 1 MiB",
        || async {
            let segments = segment_files(&cluster, leader, "grow", 1);
            let all: Vec<usize> = cluster
                .node_ids()
                .into_iter()
                .map(|id| segment_files(&cluster, id, "grow", 1))
                .collect();
            ensure!(
                segments >= 3,
                "{segments} segments for 3 MiB on the leader {leader}; {all:?} on each node"
            );
            Ok(())
        },
    )
    .await?;
    client
        .alter_topic_config(
            "grow",
            &[("retention.bytes".to_string(), "1048576".to_string())].into(),
            &[],
        )
        .await?;
    eventually(
        Duration::from_secs(20),
        "retention at the new size",
        || async {
            let p = &client.describe_topic("grow").await?.partitions[1];
            ensure!(p.log_start_offset > 0, "log start {}", p.log_start_offset);
            ensure!(p.high_watermark == 30);
            Ok(())
        },
    )
    .await?;
    let reset = client
        .alter_topic_config(
            "grow",
            &Default::default(),
            &["retention.bytes".to_string()],
        )
        .await?;
    ensure!(reset.configs["retention.bytes"] == "-1", "{reset:?}");

    // Groups: deleting removes every committed offset; a missing group is NOT_FOUND.
    let committed = client
        .reset_offsets("doomed", "grow", &[], weir_client::Start::Latest)
        .await?;
    ensure!(committed.len() == 4);
    ensure!(
        client
            .list_groups()
            .await?
            .iter()
            .any(|g| g.group == "doomed")
    );
    ensure!(client.delete_group("doomed").await? == 4);
    ensure!(
        !client
            .list_groups()
            .await?
            .iter()
            .any(|g| g.group == "doomed")
    );
    ensure!(
        client
            .fetch_offsets("doomed", &["grow".to_string()])
            .await?
            .is_empty()
    );
    let again = client.delete_group("doomed").await;
    ensure!(
        again.as_ref().err().and_then(|e| e.code()) == Some(tonic::Code::NotFound),
        "{again:?}"
    );
    Ok(())
}
