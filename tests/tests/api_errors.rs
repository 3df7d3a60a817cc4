//! Bad input over the public gRPC API gets a precise status and loses nothing: one in-process
//! node holding topic `events` (2 partitions, five records in partition 0), every documented
//! error path, and a check that the bad requests together leave those records as they were. Each
//! test starts its own node (a fraction of a second) and checks one behaviour.

use bytes::Bytes;
use tonic::Code;
use weir_format::batch::{BatchBuilder, Compression, encode_control_batch};
use weir_proto::v1::{
    CreateTopicRequest, DeleteTopicRequest, FetchRequest, ListOffsetsRequest, ProduceRequest,
    ReassignPartitionRequest, Record,
};
use weir_tests::api::{Api, ApiNode, WAIT, expect_status as expect, record, values};
use weir_tests::eventually;
use weir_tests::hostile::{self, Hostile};

fn produce(topic: &str, partition: u32, records: Vec<Record>) -> ProduceRequest {
    weir_tests::api::produce(topic, Some(partition), records)
}

fn create(name: &str, partitions: u32, replication_factor: u32) -> CreateTopicRequest {
    CreateTopicRequest {
        replication_factor,
        ..weir_tests::api::create(name, partitions, &[])
    }
}

/// The values written to `events`/0 before any bad request.
fn kept() -> Vec<String> {
    (0..5).map(|i| format!("kept-{i}")).collect()
}

/// A node with topic `events` (2 partitions) and [`kept`] in partition 0, at offsets 0 to 4.
async fn events() -> anyhow::Result<ApiNode> {
    let node = ApiNode::start().await?;
    node.api.create_topic("events", 2, &[]).await?;
    let response = node.api.produce_values("events", 0, &kept()).await?;
    assert_eq!(response.base_offset, Some(0));
    Ok(node)
}

/// Topic creation and deletion, and reassignment, refuse bad input with its status.
async fn check_admin_errors(api: &mut Api) -> anyhow::Result<()> {
    let admin = &mut api.admin;
    expect(
        admin.create_topic(create("events", 1, 1)).await,
        Code::AlreadyExists,
        "already exists",
    );
    expect(
        admin.create_topic(create("bad name", 1, 1)).await,
        Code::InvalidArgument,
        "invalid topic name",
    );
    expect(
        admin.create_topic(create("__reserved", 1, 1)).await,
        Code::InvalidArgument,
        "reserved",
    );
    expect(
        admin.create_topic(create(&"x".repeat(201), 1, 1)).await,
        Code::InvalidArgument,
        "200",
    );
    expect(
        admin.create_topic(create("zero", 0, 1)).await,
        Code::InvalidArgument,
        "partition count",
    );
    expect(
        admin.create_topic(create("rf0", 1, 0)).await,
        Code::InvalidArgument,
        "replication factor",
    );
    expect(
        admin
            .delete_topic(DeleteTopicRequest {
                name: "nope".into(),
            })
            .await,
        Code::NotFound,
        "unknown topic",
    );
    expect(
        admin
            .reassign_partition(ReassignPartitionRequest {
                topic: "events".into(),
                partition: 0,
                replicas: vec![9],
            })
            .await,
        Code::InvalidArgument,
        "unknown broker 9",
    );
    Ok(())
}

/// A replication factor above the number of brokers is refused at once and for good
/// (INVALID_ARGUMENT), naming both numbers. (While brokers are only down, not missing, the
/// answer is UNAVAILABLE with a retry hint: `weir-broker`'s status tests.)
async fn check_replication_factor_too_large(api: &mut Api) -> anyhow::Result<()> {
    let too_many = api.admin.create_topic(create("rf3", 1, 3)).await;
    expect(too_many, Code::InvalidArgument, "replication factor 3");
    let too_many = api.admin.create_topic(create("rf3", 1, 3)).await;
    expect(too_many, Code::InvalidArgument, "1 broker");
    Ok(())
}

/// Produce refuses unknown places, empty and oversized requests, damaged and control batches
/// and unknown acks (two of them NOT_FOUND).
async fn check_produce_errors(api: &mut Api) -> anyhow::Result<()> {
    let broker = &mut api.broker;
    expect(
        broker
            .produce(produce("nope", 0, vec![record(None, "x")]))
            .await,
        Code::NotFound,
        "unknown topic",
    );
    expect(
        broker
            .produce(produce("events", 7, vec![record(None, "x")]))
            .await,
        Code::NotFound,
        "partition 7",
    );
    expect(
        broker.produce(produce("events", 0, vec![])).await,
        Code::InvalidArgument,
        "no records",
    );
    let huge = Record {
        value: Some(Bytes::from(vec![b'x'; 9 << 20])),
        ..record(None, "")
    };
    expect(
        broker.produce(produce("events", 0, vec![huge])).await,
        Code::InvalidArgument,
        "max.message.bytes",
    );
    let mut corrupt = {
        let mut b = BatchBuilder::new(Compression::None);
        b.push(1, None, Some(b"v"), &[]);
        b.build().map(|b| b.to_vec()).unwrap_or_default()
    };
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let mut bad_batch = produce("events", 0, vec![]);
    bad_batch.batch = Bytes::from(corrupt);
    expect(
        broker.produce(bad_batch).await,
        Code::InvalidArgument,
        "CRC",
    );
    let mut control = produce("events", 0, vec![]);
    control.batch = encode_control_batch(1, b"sneaky");
    expect(
        broker.produce(control).await,
        Code::InvalidArgument,
        "must hold records",
    );
    let mut bad_acks = produce("events", 0, vec![record(None, "x")]);
    bad_acks.acks = 42;
    expect(
        broker.produce(bad_acks).await,
        Code::InvalidArgument,
        "acks",
    );
    Ok(())
}

fn fetch(offset: u64) -> FetchRequest {
    FetchRequest {
        topic: "events".into(),
        partition: 0,
        offset,
        ..FetchRequest::default()
    }
}

/// Fetch and ListOffsets refuse offsets, partitions and topics that are not there.
async fn check_fetch_errors(api: &mut Api) -> anyhow::Result<()> {
    let broker = &mut api.broker;
    expect(broker.fetch(fetch(99)).await, Code::OutOfRange, "outside");
    expect(
        broker
            .fetch(FetchRequest {
                topic: "events".into(),
                partition: 5,
                ..FetchRequest::default()
            })
            .await,
        Code::NotFound,
        "partition 5",
    );
    expect(
        broker
            .list_offsets(ListOffsetsRequest {
                topic: "nope".into(),
                partition: 0,
                timestamp_ms: None,
            })
            .await,
        Code::NotFound,
        "unknown topic",
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_errors_have_their_statuses() -> anyhow::Result<()> {
    let mut node = events().await?;
    check_admin_errors(&mut node.api).await?;
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_factor_above_the_broker_count_is_invalid_argument() -> anyhow::Result<()> {
    let mut node = events().await?;
    check_replication_factor_too_large(&mut node.api).await?;
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_errors_have_their_statuses() -> anyhow::Result<()> {
    let mut node = events().await?;
    check_produce_errors(&mut node.api).await?;
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_and_offset_errors_have_their_statuses() -> anyhow::Result<()> {
    let mut node = events().await?;
    check_fetch_errors(&mut node.api).await?;
    node.shutdown().await;
    Ok(())
}

/// Nothing was lost or added by all the bad requests together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_lose_and_add_nothing() -> anyhow::Result<()> {
    let mut node = events().await?;
    check_admin_errors(&mut node.api).await?;
    check_replication_factor_too_large(&mut node.api).await?;
    check_produce_errors(&mut node.api).await?;
    check_fetch_errors(&mut node.api).await?;
    let fetched = node.api.broker.fetch(fetch(0)).await?.into_inner();
    assert_eq!(values(&fetched.records), kept());
    assert_eq!(fetched.high_watermark, 5);
    node.shutdown().await;
    Ok(())
}

/// gRPC health says SERVING (the node loaded its metadata), overall and per service; server
/// reflection lists the services, so grpcurl and generated stubs need no .proto files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_and_reflection_lists_the_services() -> anyhow::Result<()> {
    let node = events().await?;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", node.node.local_addr()))?
            .connect()
            .await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    // The health reporter notices the loaded metadata within 100 ms of the node serving it.
    for service in ["", "weir.v1.Broker", "weir.v1.Admin", "weir.v1.Groups"] {
        eventually(WAIT, &format!("health of {service:?} SERVING"), || {
            let mut health = health.clone();
            async move {
                let status = health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: service.into(),
                    })
                    .await?
                    .into_inner()
                    .status;
                anyhow::ensure!(
                    status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
                    "status {status}"
                );
                Ok(())
            }
        })
        .await?;
    }
    let unknown = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "no.Such".into(),
        })
        .await;
    assert_eq!(unknown.err().map(|s| s.code()), Some(Code::NotFound));
    // v1alpha too: Python's grpcio-reflection and older grpcurl builds speak only that.
    let mut alpha =
        tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(
            channel.clone(),
        );
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let answer = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner()
        .message()
        .await?
        .and_then(|a| a.message_response);
    let Some(
        tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(
            list,
        ),
    ) = answer
    else {
        anyhow::bail!("v1alpha reflection did not list services: {answer:?}");
    };
    assert!(
        list.service.iter().any(|s| s.name == "weir.v1.Broker"),
        "{list:?}"
    );
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let answer = answers.message().await?.and_then(|a| a.message_response);
    let Some(
        tonic_reflection::pb::v1::server_reflection_response::MessageResponse::ListServicesResponse(
            list,
        ),
    ) = answer
    else {
        anyhow::bail!("reflection did not list services: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "weir.v1.Broker",
        "weir.v1.Admin",
        "weir.v1.Groups",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == service),
            "{service} not in {names:?}"
        );
    }
    node.shutdown().await;
    Ok(())
}

/// The metrics endpoint shows the partition and the requests, errors by code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_partition_and_produce_requests_by_result() -> anyhow::Result<()> {
    let mut node = events().await?;
    check_produce_errors(&mut node.api).await?;
    let metrics = weir_tests::scrape_metrics(node.node.metrics_addr()).await?;
    for line in [
        "weir_partition_high_watermark{topic=\"events\",partition=\"0\"} 5",
        "weir_partition_is_leader{topic=\"events\",partition=\"0\"} 1",
        "weir_produce_requests_total{result=\"ok\"} 1",
        "weir_produce_requests_total{result=\"NotFound\"} 2",
        "weir_produced_records_total 5",
        "weir_controller_is_leader 1",
    ] {
        assert!(metrics.contains(line), "metrics lack {line:?}:\n{metrics}");
    }
    node.shutdown().await;
    Ok(())
}

/// Batches whose records do not match their header are refused whole (INVALID_ARGUMENT) and
/// nothing of them is stored: the partition stays readable from offset 0 and its offsets dense.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_that_do_not_match_their_header_are_refused_whole() -> anyhow::Result<()> {
    let mut node = events().await?;
    // The hostile batches: garbage lz4, 2^31-1 records over one, declared sizes of
    // 256 MiB and 4 GiB, an lz4 bomb past the topic's limit (8 MiB).
    for Hostile {
        what,
        batch,
        mentions,
    } in hostile::batches(hostile::DEFAULT_TOPIC_LIMIT)
    {
        assert!(
            batch.len() < 1 << 20,
            "{what}: {} bytes on the wire",
            batch.len()
        );
        let mut request = produce("events", 0, vec![]);
        request.batch = batch;
        let (code, message) = weir_tests::api::status_of(&node.api.broker.produce(request).await);
        assert_eq!(code, Code::InvalidArgument, "{what}: {message}");
        assert!(
            message.contains(&mentions),
            "{what}: {message:?} should mention {mentions:?}"
        );
    }
    // Nothing was stored: every reader still reads the partition from 0, and the next record
    // takes the next offset.
    assert_eq!(node.api.fetch_all("events", 0).await?, kept());
    let next = node
        .api
        .produce_values("events", 0, &["after".to_string()])
        .await?;
    assert_eq!(next.base_offset, Some(5));
    node.shutdown().await;
    Ok(())
}

/// Only the cluster writes to internal topics: a client's produce to `__consumer_offsets` is
/// PERMISSION_DENIED (its records would corrupt committed offsets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_write_to_internal_topics() -> anyhow::Result<()> {
    let mut node = events().await?;
    // The offsets topic is created on a group's first use.
    let groups = node.api.groups.clone();
    weir_tests::retry_unavailable(WAIT, "the offsets topic", || {
        let mut groups = groups.clone();
        async move {
            groups
                .fetch_offsets(weir_proto::v1::FetchOffsetsRequest {
                    group: "g".into(),
                    topics: Vec::new(),
                })
                .await
        }
    })
    .await?;
    for partition in 0..4 {
        expect(
            node.api
                .broker
                .produce(produce(
                    "__consumer_offsets",
                    partition,
                    vec![record(None, "garbage")],
                ))
                .await,
            Code::PermissionDenied,
            "internal",
        );
    }
    node.shutdown().await;
    Ok(())
}
