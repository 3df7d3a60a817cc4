//! Container fault test: the compose cluster of `deploy/` (the image built from this build's
//! `weir` with `deploy/build-image.sh`, nothing pulled) under producers writing unique values
//! with acks=all and a consumer reading along, while the test `docker kill`s a partition leader,
//! pauses and unpauses a node, disconnects one from the cluster's network and connects it back,
//! and restarts every node in turn. At the end everything is read back through the published
//! loopback ports: every acknowledged value exactly once, in order per partition; each replica's
//! log end catches up with the high watermark; and, once the nodes stopped, every replica's
//! stored log holds the same committed entries. A summary line goes to the test output.
//!
//! Skipped, with a message saying why, where no Docker engine answers — unless
//! `WEIR_DOCKER_TESTS=1` (which `.ci/run` sets where it finds an engine): then a missing engine or
//! Compose fails them. Everything the test
//! creates (containers, network, volumes, image) is removed when it ends, also on failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use weir_client::{Client, Consumer, ConsumerConfig, Start};
use weir_tests::docker::{ComposeCluster, NODES, Needs, StatefulSetLike, available};
use weir_tests::process_cluster::{committed_prefix, stored_entries_in};
use weir_tests::workload::{Workload, read_back};
use weir_tests::{abort, eventually, wait_for_leader};

const TOPIC: &str = "faults";
const PARTITIONS: u32 = 3;
/// How long a paused or disconnected node stays out: several election timeouts.
const OUTAGE: Duration = Duration::from_secs(6);
/// How long the cluster may take to serve again after a fault.
const RECOVERY: Duration = Duration::from_secs(90);

/// Prints a line for the test output and appends it to `target/tmp/docker-tests.log`, which
/// `.ci/run` shows after the tests (cargo hides a passing test's output).
fn report(line: &str) {
    use std::io::Write;
    eprintln!("{line}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("docker-tests.log");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "{line}");
    }
}

/// What the reading consumer saw.
#[derive(Debug, Default)]
struct LiveReads {
    read: AtomicUsize,
    /// Offsets that came again, or went backwards, within one partition's stream.
    repeated: AtomicUsize,
}

/// One container fault test: the faults run in sequence on one cluster under load (an image build
/// and a compose cluster per fault would take minutes each), and the phases below say which
/// behaviour failed: the cluster serving through its published ports, each fault's failover and
/// recovery, the exactly-once read back, the live consumer, the replicas catching up, and the
/// replicas' stored logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compose_cluster_survives_kills_pauses_partitions_and_restarts() -> anyhow::Result<()> {
    weir_tests::init_tracing();
    if !available(
        "compose_cluster_survives_kills_pauses_partitions_and_restarts",
        Needs::Compose,
    )? {
        return Ok(());
    }
    let cluster = ComposeCluster::start()?;
    let client = serve_through_published_ports(&cluster)
        .await
        .context("the compose cluster serves the test topic through its published ports")?;

    let workload = Workload::start(Arc::clone(&client), TOPIC, PARTITIONS, 20);
    let reads = Arc::new(LiveReads::default());
    let stop_reading = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_along(
        Arc::clone(&client),
        Arc::clone(&reads),
        Arc::clone(&stop_reading),
    ));
    await_progress(&workload, &cluster, "at the start").await?;
    let faults = inject_faults(&client, &workload, &cluster).await?;

    let (batches, acked) = workload.stop().await?;
    stop_reading.store(true, Ordering::Relaxed);
    reader
        .await?
        .context("the live consumer read along through every fault")?;
    let readback = read_back(&client, TOPIC, &acked).await?;
    report(&format!(
        "docker fault test: acknowledged {}, read {}, lost {}, duplicated {}, out of order {:?}; \
         {} batches; live consumer read {} (repeated {}); faults injected {}: {}",
        readback.acknowledged,
        readback.read,
        readback.lost,
        readback.duplicated,
        readback.out_of_order,
        batches,
        reads.read.load(Ordering::Relaxed),
        reads.repeated.load(Ordering::Relaxed),
        faults.len(),
        faults.join("; ")
    ));
    ensure!(
        readback.exactly_once(),
        "acknowledged records lost, duplicated or reordered: {readback:?}"
    );
    ensure!(
        readback.acknowledged > 1000,
        "too few records acknowledged ({}) for a meaningful test",
        readback.acknowledged
    );
    ensure!(
        reads.repeated.load(Ordering::Relaxed) == 0,
        "the live consumer saw an offset twice"
    );
    ensure!(
        reads.read.load(Ordering::Relaxed) > 0,
        "the live consumer read nothing"
    );

    // Every replica catches up with the high watermark ...
    wait_replicas_caught_up(&cluster, &readback.high_watermarks).await?;
    // ... and, the nodes stopped, every replica stores the same committed log.
    replicas_store_the_same_committed_log(&cluster, &readback.high_watermarks)?;
    report(&format!(
        "docker fault test: all {NODES} replicas of {PARTITIONS} partitions store the same committed log"
    ));
    Ok(())
}

/// Waits until every node serves, creates the test topic and waits for its leaders; checks that
/// metadata asked through a published port names the brokers by their published addresses.
async fn serve_through_published_ports(cluster: &ComposeCluster) -> anyhow::Result<Arc<Client>> {
    cluster.wait_healthy(RECOVERY).await?;
    let client = Arc::new(Client::new(&cluster.brokers())?);
    client.create_topic(TOPIC, PARTITIONS, 3).await?;
    wait_for_leaders(&client).await?;
    let brokers = client.metadata(&[]).await?.brokers;
    ensure!(
        brokers.len() == NODES as usize
            && brokers
                .iter()
                .all(|b| cluster.brokers().contains(&b.address)),
        "metadata from the published port must name the published addresses: {brokers:?}"
    );
    // Kafka clients on the host reach the published Kafka ports, named in Kafka's metadata.
    let bootstrap = cluster.kafka_bootstrap();
    weir_tests::eventually(
        RECOVERY,
        "kcat -L through the published Kafka ports",
        || async {
            let out = tokio::process::Command::new("kcat")
                .args(["-b", &bootstrap, "-L", "-t", TOPIC, "-m", "5"])
                .output()
                .await
                .context("running kcat (Debian package kcat)")?;
            let text = String::from_utf8_lossy(&out.stdout);
            ensure!(
                out.status.success(),
                "kcat -L: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            ensure!(
                text.contains(&format!(" {NODES} brokers:"))
                    && bootstrap.split(',').all(|addr| text.contains(addr))
                    && text.contains(&format!("topic \"{TOPIC}\" with {PARTITIONS} partitions")),
                "{text}"
            );
            Ok(())
        },
    )
    .await?;
    Ok(client)
}

/// The faults, one after the other while the workload runs; each must fail over (when it takes
/// a leader out) and let writes go on, and the cluster must serve again after it. Returns what
/// was injected.
async fn inject_faults(
    client: &Client,
    workload: &Workload,
    cluster: &ComposeCluster,
) -> anyhow::Result<Vec<String>> {
    let mut faults: Vec<String> = Vec::new();

    // 1. SIGKILL the leader of partition 0; it comes back on its volume.
    let fault = leader_kill(client, workload, cluster, "the leader kill")
        .await
        .context("fault 1: docker kill of a partition leader")?;
    faults.push(fault);

    // 2. Freeze the leader of partition 1 past its election timeout, then thaw it.
    let fault = leader_outage(
        client,
        workload,
        cluster,
        1,
        "pause/unpause",
        |c, id| c.pause(id),
        |c, id| c.unpause(id),
    )
    .await
    .context("fault 2: docker pause of a partition leader")?;
    faults.push(fault);

    // 3. Cut the leader of partition 2 off the network (a partition), then heal it.
    let fault = leader_outage(
        client,
        workload,
        cluster,
        2,
        "network disconnect/connect",
        |c, id| c.disconnect(id),
        |c, id| c.connect(id),
    )
    .await
    .context("fault 3: a partition leader cut off the network")?;
    faults.push(fault);

    // 4. Restart every node in turn (SIGTERM, start), as a rolling upgrade does.
    for id in 1..=NODES {
        cluster.restart(id)?;
        faults.push(format!("docker restart node {id}"));
        cluster
            .wait_healthy(RECOVERY)
            .await
            .with_context(|| format!("fault 4: rolling restart, node {id}"))?;
        await_progress(workload, cluster, &format!("after restarting node {id}"))
            .await
            .with_context(|| format!("fault 4: rolling restart, node {id}"))?;
    }

    // 5. SIGKILL whichever node leads partition 0 now, once more, while traffic runs.
    let fault = leader_kill(client, workload, cluster, "the second kill")
        .await
        .context("fault 5: a second docker kill of a partition leader")?;
    faults.push(fault);
    await_progress(workload, cluster, "with every node back").await?;
    Ok(faults)
}

/// SIGKILLs the leader of partition 0, waits for the failover and for writes to go on, starts
/// it again and waits until every node serves. Returns the fault's description.
async fn leader_kill(
    client: &Client,
    workload: &Workload,
    cluster: &ComposeCluster,
    what: &str,
) -> anyhow::Result<String> {
    let leader = leader_of(client, 0).await?;
    cluster.kill(leader)?;
    wait_new_leader(client, 0, leader).await?;
    await_progress(workload, cluster, &format!("after {what}")).await?;
    cluster.start_node(leader)?;
    cluster.wait_healthy(RECOVERY).await?;
    Ok(format!("docker kill node {leader} (leader of {TOPIC}/0)"))
}

/// Stops the nodes, copies their data out and checks that every replica of every partition
/// stores the same committed log (entries below the high watermark).
fn replicas_store_the_same_committed_log(
    cluster: &ComposeCluster,
    high_watermarks: &BTreeMap<u32, u64>,
) -> anyhow::Result<()> {
    let copies = tempfile::tempdir()?;
    let data_dirs = cluster.stop_and_copy_data(copies.path())?;
    for partition in 0..PARTITIONS {
        let hw = high_watermarks[&partition];
        let mut prefixes = Vec::new();
        for dir in &data_dirs {
            let entries = stored_entries_in(dir, TOPIC, partition)?;
            prefixes.push(committed_prefix(&entries, hw));
        }
        ensure!(
            !prefixes[0].is_empty(),
            "partition {partition}: no committed entries"
        );
        for (i, prefix) in prefixes.iter().enumerate().skip(1) {
            ensure!(
                prefix == &prefixes[0],
                "partition {partition}: node {}'s committed log differs from node 1's",
                i + 1
            );
        }
    }
    Ok(())
}

/// Takes the leader of `partition` out with `cut`, waits until another node leads it and writes
/// go on without the old leader for [`OUTAGE`], then brings it back with `heal` and waits until
/// every node serves. Returns the fault's description.
async fn leader_outage(
    client: &Client,
    workload: &Workload,
    cluster: &ComposeCluster,
    partition: u32,
    what: &str,
    cut: impl Fn(&ComposeCluster, u64) -> anyhow::Result<()>,
    heal: impl Fn(&ComposeCluster, u64) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let leader = leader_of(client, partition).await?;
    cut(cluster, leader)?;
    wait_new_leader(client, partition, leader).await?;
    tokio::time::sleep(OUTAGE).await;
    await_progress(
        workload,
        cluster,
        &format!("during docker {what} of node {leader}"),
    )
    .await?;
    heal(cluster, leader)?;
    cluster.wait_healthy(RECOVERY).await?;
    Ok(format!(
        "docker {what} node {leader} (leader of {TOPIC}/{partition})"
    ))
}

/// Reads every partition from the start while the faults happen, checking that no partition's
/// stream repeats an offset.
async fn read_along(
    client: Arc<Client>,
    reads: Arc<LiveReads>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut consumer = Consumer::new(client, ConsumerConfig::default());
    consumer.assign(TOPIC, &[], Start::Earliest).await?;
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let records = match tokio::time::timeout(Duration::from_secs(1), consumer.poll()).await {
            Ok(records) => records?,
            Err(_) => continue,
        };
        for record in records {
            let expected = next.entry(record.partition).or_insert(0);
            if record.offset < *expected {
                reads.repeated.fetch_add(1, Ordering::Relaxed);
            }
            *expected = record.offset + 1;
            reads.read.fetch_add(1, Ordering::Relaxed);
        }
    }
    consumer.close().await?;
    Ok(())
}

/// The node leading `partition` of the topic.
async fn leader_of(client: &Client, partition: u32) -> anyhow::Result<u64> {
    wait_for_leader(client, TOPIC, partition, 0, RECOVERY).await
}

/// Waits until a node other than `old` leads `partition`: after a fault, the failover.
async fn wait_new_leader(client: &Client, partition: u32, old: u64) -> anyhow::Result<u64> {
    wait_for_leader(client, TOPIC, partition, old, RECOVERY).await
}

async fn wait_for_leaders(client: &Client) -> anyhow::Result<()> {
    for partition in 0..PARTITIONS {
        leader_of(client, partition).await?;
    }
    Ok(())
}

/// Waits until the producers had more values acknowledged: the cluster serves writes.
async fn await_progress(
    workload: &Workload,
    cluster: &ComposeCluster,
    when: &str,
) -> anyhow::Result<()> {
    workload
        .wait_progress(200, RECOVERY, when)
        .await
        .map_err(|err| anyhow::anyhow!("{err:#}\n{}", cluster.logs().unwrap_or_default()))
}

/// Waits until every node's log end offset (its metrics, through the published port) reaches
/// the high watermark of each partition it holds, on every node.
async fn wait_replicas_caught_up(
    cluster: &ComposeCluster,
    high_watermarks: &BTreeMap<u32, u64>,
) -> anyhow::Result<()> {
    eventually(
        RECOVERY,
        "every replica caught up with the high watermark",
        || async {
            let mut behind = Vec::new();
            for id in 1..=NODES {
                let text = weir_tests::scrape_metrics(Some(cluster.metrics_addr(id)))
                    .await
                    .with_context(|| format!("metrics of node {id}"))?;
                let ends = log_ends(&text);
                for (&partition, &hw) in high_watermarks {
                    match ends.get(&partition) {
                        Some(&end) if end >= hw => {}
                        other => {
                            behind.push(format!("node {id} {TOPIC}/{partition}: {other:?} < {hw}"))
                        }
                    }
                }
            }
            ensure!(behind.is_empty(), "behind: {}", behind.join(", "));
            Ok(())
        },
    )
    .await
}

/// `weir_partition_log_end_offset` of the test topic's partitions, from Prometheus text.
fn log_ends(metrics: &str) -> BTreeMap<u32, u64> {
    let topic_label = format!("topic=\"{TOPIC}\"");
    let mut ends = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("weir_partition_log_end_offset{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        if !labels.split(',').any(|l| l == topic_label) {
            continue;
        }
        let partition = labels
            .split(',')
            .find_map(|l| l.strip_prefix("partition=\""))
            .and_then(|p| p.trim_end_matches('"').parse::<u32>().ok());
        if let (Some(partition), Ok(value)) = (partition, value.trim().parse::<u64>()) {
            ends.insert(partition, value);
        }
    }
    ends
}

#[test]
fn log_ends_parse_prometheus_text() {
    let text = "# HELP x\n\
        weir_partition_log_end_offset{topic=\"faults\",partition=\"0\"} 17\n\
        weir_partition_log_end_offset{topic=\"other\",partition=\"0\"} 99\n\
        weir_partition_log_end_offset{topic=\"faults\",partition=\"2\"} 5\n";
    let ends = log_ends(text);
    assert_eq!(ends, BTreeMap::from([(0, 17), (2, 5)]));
}

/// The Kubernetes manifest's way of running nodes, on Docker: pods `weir-0..2` take node ids
/// 1..3 from their host names and find each other as `weir-N.weir-headless`; a fourth pod
/// (`weir-3`, node 4) joins through the peer list by itself; `weir cluster rebalance` moves
/// replicas onto it; `weir cluster remove-node` drains it before it is deleted. The records
/// written before stay readable throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_style_nodes_take_ids_from_host_names_and_scale_out_and_in()
-> anyhow::Result<()> {
    weir_tests::init_tracing();
    if !available(
        "statefulset_style_nodes_take_ids_from_host_names_and_scale_out_and_in",
        Needs::Engine,
    )? {
        return Ok(());
    }
    let mut set = StatefulSetLike::new()?;
    for ordinal in 0..3 {
        set.start_pod(ordinal)?;
    }
    let status = wait_status(&set, "three nodes with ids 1 to 3", |s| {
        alive_ids(s) == [1, 2, 3]
    })
    .await?;
    ensure!(status["controller_leader"].as_u64().is_some());

    set.weir(
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "6",
            "--replication-factor",
            "3",
        ],
        None,
    )?;
    let lines: String = (1..=300).map(|i| format!("order-{i}\n")).collect();
    set.weir(&["produce", "orders"], Some(&lines))?;
    let read_all = |set: &StatefulSetLike| -> anyhow::Result<usize> {
        let out = set.weir(
            &["consume", "orders", "--from", "earliest", "--count", "300"],
            None,
        )?;
        Ok(out.lines().filter(|l| l.starts_with("order-")).count())
    };
    ensure!(read_all(&set)? == 300, "300 records before scaling");

    // Scale out: weir-3 becomes node 4 and joins through the peers; a rebalance gives it
    // replicas while the cluster serves.
    set.start_pod(3)?;
    wait_status(&set, "node 4 joined", |s| alive_ids(s) == [1, 2, 3, 4]).await?;
    set.weir(&["cluster", "rebalance", "--wait"], None)?;
    let status = wait_status(&set, "node 4 holds replicas", |s| replicas_of(s, 4) > 0).await?;
    report(&format!(
        "statefulset test: after the rebalance node 4 holds {} replicas",
        replicas_of(&status, 4)
    ));
    ensure!(read_all(&set)? == 300, "300 records after scaling out");

    // Scale in: drain node 4, then delete its pod and volume.
    set.weir(&["cluster", "remove-node", "4", "--wait"], None)?;
    // Leaders of the partitions that moved off node 4 are elected right after the move.
    wait_status(&set, "node 4 drained", |s| {
        replicas_of(s, 4) == 0 && s["partitions_without_leader"].as_u64() == Some(0)
    })
    .await?;
    set.delete_pod(3)?;
    let status = wait_status(&set, "no under-replicated partitions without node 4", |s| {
        s["under_replicated"].as_array().is_some_and(Vec::is_empty)
            && s["partitions_without_leader"].as_u64() == Some(0)
    })
    .await?;
    ensure!(replicas_of(&status, 1) + replicas_of(&status, 2) + replicas_of(&status, 3) > 0);
    ensure!(read_all(&set)? == 300, "300 records after scaling in");
    report("statefulset test: ids from host names, join, rebalance and drain all worked");
    Ok(())
}

/// Polls `weir cluster status --output json` until `done` holds.
async fn wait_status(
    set: &StatefulSetLike,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    eventually(RECOVERY, what, || async {
        let out = set.weir(&["cluster", "status", "--output", "json"], None)?;
        let status: serde_json::Value = serde_json::from_str(&out)
            .map_err(|err| abort(anyhow::anyhow!("cluster status is not JSON ({err}): {out}")))?;
        ensure!(done(&status), "status {out}");
        Ok(status)
    })
    .await
    .map_err(|err| anyhow::anyhow!("{err:#}\n{}", set.logs()))
}

/// Ids of the brokers `cluster status` shows alive.
fn alive_ids(status: &serde_json::Value) -> Vec<u64> {
    status["brokers"]
        .as_array()
        .map(|brokers| {
            brokers
                .iter()
                .filter(|b| b["alive"].as_bool() == Some(true))
                .filter_map(|b| b["id"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

/// Replicas `cluster status` counts on broker `id`.
fn replicas_of(status: &serde_json::Value, id: u64) -> u64 {
    status["brokers"]
        .as_array()
        .and_then(|brokers| brokers.iter().find(|b| b["id"].as_u64() == Some(id)))
        .and_then(|b| b["replicas"].as_u64())
        .unwrap_or(0)
}

/// The TLS variant of the compose cluster (`deploy/docker-compose.tls.yml`, certificates mounted
/// read-only): the nodes are healthy over TLS (their health check speaks TLS too), replicate
/// over mutual TLS, serve the super user by its client certificate through the published ports,
/// and refuse a client without credentials and a plaintext client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_compose_variant_serves_authenticated_clients_only() -> anyhow::Result<()> {
    weir_tests::init_tracing();
    if !available(
        "the_tls_compose_variant_serves_authenticated_clients_only",
        Needs::Compose,
    )? {
        return Ok(());
    }
    let cluster = ComposeCluster::start_tls()?;
    cluster.wait_healthy(RECOVERY).await?;
    let admin = Arc::new(Client::with_security(
        &cluster.brokers(),
        cluster.security(Some("admin"))?,
    )?);
    let who = admin
        .who_am_i(weir_client::access::WhoAmIRequest {})
        .await?;
    ensure!(who.principal == "User:admin" && who.super_user, "{who:?}");
    admin.create_topic("tls", 1, 3).await?;
    let batch = {
        let mut builder =
            weir_format::batch::BatchBuilder::new(weir_format::batch::Compression::None);
        builder.push(0, None, Some(b"sealed"), &[]);
        builder.build().context("a batch")?
    };
    admin.produce_batch("tls", 0, batch).await?;
    let fetched = admin.fetch("tls", 0, 0, 1 << 20).await?;
    ensure!(fetched.records.len() == 1, "{fetched:?}");

    let mut anonymous = Client::with_security(&cluster.brokers(), cluster.security(None)?)?;
    anonymous.retry_for = Duration::from_secs(3);
    let refused = anonymous.list_topics().await;
    ensure!(
        refused.as_ref().err().and_then(|e| e.code()) == Some(tonic::Code::Unauthenticated),
        "{refused:?}"
    );
    let mut plain = Client::new(&cluster.brokers())?;
    plain.retry_for = Duration::from_secs(3);
    ensure!(plain.list_topics().await.is_err(), "plaintext was answered");
    Ok(())
}
