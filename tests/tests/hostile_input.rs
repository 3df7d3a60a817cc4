//! Issue 14's hostile batches against a cluster of three `weir` processes, so that each node's
//! memory is its own process's: garbage lz4, record counts of 2 and 2^31-1 over one record,
//! declared uncompressed sizes of 256 MiB and 4 GiB, and a real lz4 bomb that expands past the
//! topic's message limit, each sent several times to every node, one after another and then all
//! at once. Each is INVALID_ARGUMENT, the partition stays readable from offset 0 on every node
//! with dense offsets, and no node's resident memory grows by more than 64 MiB. A request over
//! the client services' size limit is refused with a status, and the node goes on serving.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tonic::Code;
use weir_proto::v1::{CreateTopicRequest, FetchRequest, StartFrom};
use weir_tests::api::{Api, WAIT, status_of};
use weir_tests::hostile::{self, DEFAULT_TOPIC_LIMIT, Hostile, RECORD_COUNT_AT, recrc};
use weir_tests::process_cluster::ProcessCluster;

const TOPIC: &str = "hostile";
/// How much any node's resident memory may grow while it refuses the batches.
const MAX_GROWTH_KIB: u64 = 64 << 10;
/// Sends of each batch to each node, one after another and again all at once.
const ROUNDS: usize = 4;

/// A line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with(&format!("{field}:")))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    line.split_whitespace()
        .nth(1)
        .context("no number")?
        .parse()
        .context("not a number")
}

fn kept() -> Vec<String> {
    (0..5).map(|i| format!("kept-{i}")).collect()
}

/// The batches, plus a record count of 2 over one record.
fn batches() -> Vec<Hostile> {
    let mut batches = hostile::batches(DEFAULT_TOPIC_LIMIT);
    batches.push(Hostile {
        what: "2 records over one",
        batch: recrc(&hostile::lz4_batch(b"one"), |b| {
            b[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&2u32.to_le_bytes());
        }),
        mentions: "declares 2 records".into(),
    });
    batches
}

/// Sends `batch` to `api` and checks the refusal.
async fn refused(api: &Api, node: u64, hostile: &Hostile) -> anyhow::Result<()> {
    let mut request = weir_tests::api::produce(TOPIC, Some(0), Vec::new());
    request.batch = hostile.batch.clone();
    let (code, message) = status_of(&api.broker.clone().produce(request).await);
    anyhow::ensure!(
        code == Code::InvalidArgument && message.contains(&hostile.mentions),
        "node {node}, {}: {code:?} {message:?} (want INVALID_ARGUMENT mentioning {:?})",
        hostile.what,
        hostile.mentions
    );
    Ok(())
}

/// The partition read from offset 0 through `api`: the kept values at offsets 0, 1, 2, ...
async fn check_readable(api: &Api, node: u64, expected: &[String]) -> anyhow::Result<()> {
    let fetched = api
        .broker
        .clone()
        .fetch(FetchRequest {
            topic: TOPIC.into(),
            partition: 0,
            from: StartFrom::Earliest as i32,
            ..FetchRequest::default()
        })
        .await?
        .into_inner();
    let offsets: Vec<u64> = fetched.records.iter().map(|r| r.offset).collect();
    let dense: Vec<u64> = (0..expected.len() as u64).collect();
    anyhow::ensure!(offsets == dense, "node {node}: offsets {offsets:?}");
    anyhow::ensure!(
        weir_tests::api::values(&fetched.records) == expected,
        "node {node}: {:?}",
        fetched.records
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_batches_are_refused_without_growing_any_node() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3)?;
    let ids = cluster.node_ids();
    let mut apis = Vec::new();
    for &id in &ids {
        cluster.wait_serving(id, Duration::from_secs(60)).await?;
        let addr: SocketAddr = cluster.addr(id).parse()?;
        apis.push((id, Api::connect(addr).await?));
    }
    let (_, first) = &apis[0];
    let create = CreateTopicRequest {
        replication_factor: 3,
        ..weir_tests::api::create(TOPIC, 1, &[])
    };
    weir_tests::retry_unavailable(WAIT, "topic created", || {
        let mut admin = first.admin.clone();
        let create = create.clone();
        async move { admin.create_topic(create).await }
    })
    .await?;
    first.wait_for_leaders(TOPIC).await?;
    first.produce_values(TOPIC, 0, &kept()).await?;
    // Settled: every node serves the records (its read path warmed), then the baseline.
    let kept = kept();
    for (id, api) in &apis {
        weir_tests::eventually(WAIT, &format!("node {id} reads the kept records"), || {
            check_readable(api, *id, &kept)
        })
        .await?;
    }
    let mut before = Vec::new();
    for &id in &ids {
        let pid = cluster.pid(id).context("node not running")?;
        before.push((id, pid, proc_status_kib(pid, "VmRSS")?));
    }

    let batches = batches();
    for hostile in &batches {
        assert!(
            hostile.batch.len() < 1 << 20,
            "{}: {} bytes on the wire",
            hostile.what,
            hostile.batch.len()
        );
    }
    // One after another, to every node (each checks a batch itself before forwarding it).
    for _ in 0..ROUNDS {
        for (id, api) in &apis {
            for hostile in &batches {
                refused(api, *id, hostile).await?;
            }
        }
    }
    // All at once.
    let mut sends = tokio::task::JoinSet::new();
    for _ in 0..ROUNDS {
        for (id, api) in &apis {
            for hostile in &batches {
                let (id, api, hostile) = (*id, api.clone(), hostile.clone());
                sends.spawn(async move { refused(&api, id, &hostile).await });
            }
        }
    }
    while let Some(sent) = sends.join_next().await {
        sent??;
    }

    // Nothing stored: every node reads the partition from 0, dense; the next record takes 5.
    for (id, api) in &apis {
        check_readable(api, *id, &kept).await?;
    }
    for (id, pid, rss_before) in &before {
        let rss = proc_status_kib(*pid, "VmRSS")?;
        let peak = proc_status_kib(*pid, "VmHWM")?;
        eprintln!("node {id}: VmRSS {rss_before} KiB before, {rss} KiB after, peak {peak} KiB");
        assert!(
            rss.saturating_sub(*rss_before) <= MAX_GROWTH_KIB,
            "node {id} grew from {rss_before} KiB to {rss} KiB"
        );
        // Nor for a moment: the peak since the node started, taken after the batches.
        assert!(
            peak.saturating_sub(*rss_before) <= MAX_GROWTH_KIB,
            "node {id} peaked at {peak} KiB, from {rss_before} KiB"
        );
    }

    // A request over the client services' limit (68 MiB): a status, not a crash.
    let mut request = weir_tests::api::produce(TOPIC, Some(0), Vec::new());
    request.batch = bytes::Bytes::from(vec![0u8; 69 << 20]);
    let (code, message) = status_of(&first.broker.clone().produce(request).await);
    assert_eq!(code, Code::OutOfRange, "{message}");
    assert!(message.contains("too large"), "{message}");
    let next = first
        .produce_values(TOPIC, 0, &["after".to_string()])
        .await?;
    assert_eq!(next.base_offset, Some(5));
    let mut all = kept.clone();
    all.push("after".into());
    for (id, api) in &apis {
        weir_tests::eventually(WAIT, &format!("node {id} reads every record"), || {
            check_readable(api, *id, &all)
        })
        .await?;
    }
    Ok(())
}
