//! The bounds of issue 14's "hostile input", on an in-process node: idle connections are closed
//! while quiet streams stay open, Subscribe streams are bounded per node, a ProduceStream writes
//! to at most 64 partitions, a request over the client services' size limit is refused with a
//! status, and `acks=none` writes run through a counted budget.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::AsyncReadExt;
use tonic::Code;
use weir_proto::v1::broker_client::BrokerClient;
use weir_proto::v1::{Acks, ProduceRequest, StartFrom, SubscribeRequest};
use weir_tests::api::{ApiNode, WAIT, expect_status, produce, record, values};
use weir_tests::eventually;

/// The idle timeout of the node in [`silent_connections_are_closed_while_quiet_streams_stay`].
const IDLE: Duration = Duration::from_millis(1000);

fn subscribe_latest(topic: &str) -> SubscribeRequest {
    SubscribeRequest {
        topic: topic.into(),
        partition: 0,
        from: StartFrom::Latest as i32,
        ..SubscribeRequest::default()
    }
}

/// A client that connects and sends nothing is disconnected after the idle timeout, while a
/// Subscribe stream with nothing to deliver for several idle timeouts keeps its connection (the
/// server's HTTP/2 keepalive pings are answered) and delivers the next record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_while_quiet_streams_stay() -> anyhow::Result<()> {
    let node = ApiNode::start_with(|config| {
        config.limits.idle_timeout_ms = IDLE.as_millis() as u64;
    })
    .await?;
    node.api.create_topic("quiet", 1, &[]).await?;
    node.api.wait_for_leaders("quiet").await?;
    // The Subscribe on a connection of its own, at the end of the empty partition.
    let addr = node.node.local_addr();
    let mut subscriber = BrokerClient::connect(format!("http://{addr}")).await?;
    let mut stream = subscriber
        .subscribe(subscribe_latest("quiet"))
        .await?
        .into_inner();
    let opened = Instant::now();

    // A raw TCP client that sends nothing: the node closes it.
    let mut raw = tokio::net::TcpStream::connect(addr).await?;
    let connected = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(IDLE * 10, async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a silent connection is still open after {:?}",
        IDLE * 10
    );
    let after = connected.elapsed();
    assert!(
        after >= IDLE - Duration::from_millis(100),
        "closed after {after:?}, before the idle timeout"
    );

    // The quiet stream: three idle timeouts without a record, then one arrives on it.
    let quiet_for = IDLE * 3;
    if let Some(left) = quiet_for.checked_sub(opened.elapsed()) {
        tokio::time::sleep(left).await;
    }
    node.api
        .produce_values("quiet", 0, &["after the quiet".to_string()])
        .await?;
    let message = tokio::time::timeout(WAIT, stream.message())
        .await
        .context("no record on the quiet stream")??
        .context("the quiet stream ended")?;
    assert_eq!(values(&message.records), ["after the quiet"]);
    node.shutdown().await;
    Ok(())
}

/// A node serves at most `limits.subscribe_streams` Subscribe streams; past that a new one is
/// RESOURCE_EXHAUSTED naming the limit, and a stream closed frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_streams_are_bounded_per_node() -> anyhow::Result<()> {
    let node = ApiNode::start_with(|config| config.limits.subscribe_streams = 2).await?;
    node.api.create_topic("streams", 1, &[]).await?;
    node.api.wait_for_leaders("streams").await?;
    let mut broker = node.api.broker.clone();
    let first = broker.subscribe(subscribe_latest("streams")).await?;
    let _second = broker.subscribe(subscribe_latest("streams")).await?;
    expect_status(
        broker.subscribe(subscribe_latest("streams")).await,
        Code::ResourceExhausted,
        "limits.subscribe_streams",
    );
    let metrics = weir_tests::scrape_metrics(node.node.metrics_addr()).await?;
    assert!(metrics.contains("weir_subscribe_streams 2"), "{metrics}");
    drop(first);
    let _third = eventually(WAIT, "a closed stream's slot is free again", || {
        let mut broker = broker.clone();
        async move { Ok(broker.subscribe(subscribe_latest("streams")).await?) }
    })
    .await?;
    node.shutdown().await;
    Ok(())
}

/// One ProduceStream writes to at most 64 partitions: the request for a 65th is answered with
/// INVALID_ARGUMENT naming the limit, nothing of it written, and the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_stream_writes_to_at_most_64_partitions() -> anyhow::Result<()> {
    let node = ApiNode::start().await?;
    node.api.create_topic("wide", 65, &[]).await?;
    node.api.wait_for_leaders("wide").await?;
    let mut requests: Vec<ProduceRequest> = (0..65u32)
        .map(|partition| ProduceRequest {
            request_id: u64::from(partition),
            ..produce("wide", Some(partition), vec![record(None, "v")])
        })
        .collect();
    // Back to a partition the stream writes to already: still served.
    requests.push(ProduceRequest {
        request_id: 100,
        ..produce("wide", Some(0), vec![record(None, "again")])
    });
    let mut answers = node
        .api
        .broker
        .clone()
        .produce_stream(tokio_stream::iter(requests))
        .await?
        .into_inner();
    let mut by_id = std::collections::BTreeMap::new();
    while let Some(answer) = tokio::time::timeout(WAIT, answers.message()).await?? {
        by_id.insert(answer.request_id, answer);
    }
    assert_eq!(by_id.len(), 66, "{by_id:?}");
    for (id, answer) in &by_id {
        if *id == 64 {
            assert_eq!(
                answer.error_code,
                Code::InvalidArgument as i32,
                "{answer:?}"
            );
            assert!(
                answer.error_message.contains("at most 64 partitions"),
                "{answer:?}"
            );
        } else {
            assert_eq!(answer.error_code, 0, "{answer:?}");
            assert_eq!(answer.record_count, 1, "{answer:?}");
        }
    }
    assert!(node.api.fetch_all("wide", 64).await?.is_empty());
    assert_eq!(node.api.fetch_all("wide", 0).await?, ["v", "again"]);
    node.shutdown().await;
    Ok(())
}

/// A request larger than the client services accept (68 MiB) is refused with OUT_OF_RANGE
/// naming the limit; the node goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_size_limit_is_refused_with_a_status() -> anyhow::Result<()> {
    let node = ApiNode::start().await?;
    node.api.create_topic("big", 1, &[]).await?;
    node.api.wait_for_leaders("big").await?;
    let mut request = produce("big", Some(0), vec![]);
    request.batch = bytes::Bytes::from(vec![0u8; 69 << 20]);
    expect_status(
        node.api.broker.clone().produce(request).await,
        Code::OutOfRange,
        "too large",
    );
    node.api
        .produce_values("big", 0, &["small".to_string()])
        .await?;
    assert_eq!(node.api.fetch_all("big", 0).await?, ["small"]);
    node.shutdown().await;
    Ok(())
}

/// `acks=none` requests are answered without offsets, written in the background through the
/// node's budget (its gauge back at 0 once they are written), and every record arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_none_writes_go_through_a_counted_budget() -> anyhow::Result<()> {
    let node = ApiNode::start().await?;
    node.api.create_topic("fire", 1, &[]).await?;
    node.api.wait_for_leaders("fire").await?;
    let sends: Vec<_> = (0..200)
        .map(|i| {
            let mut broker = node.api.broker.clone();
            let request = ProduceRequest {
                acks: Acks::None as i32,
                ..produce("fire", Some(0), vec![record(None, &format!("r{i}"))])
            };
            tokio::spawn(async move { broker.produce(request).await })
        })
        .collect();
    for send in sends {
        let answer = send.await??.into_inner();
        assert_eq!(answer.base_offset, None);
        assert_eq!(answer.record_count, 1);
    }
    eventually(WAIT, "every acks=none record written", || async {
        let stored = node.api.fetch_all("fire", 0).await?.len();
        anyhow::ensure!(stored == 200, "{stored} of 200");
        let metrics = weir_tests::scrape_metrics(node.node.metrics_addr()).await?;
        anyhow::ensure!(
            metrics.contains("weir_acks_none_writes_in_flight 0"),
            "writes still in flight"
        );
        Ok(())
    })
    .await?;
    node.shutdown().await;
    Ok(())
}
