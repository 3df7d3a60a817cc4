//! Bad input over the public gRPC API gets a precise status and loses nothing: one in-process
//! node, every documented error path, and a check afterwards that the records written before the
//! bad requests are all still there.

use std::time::Duration;

use bytes::Bytes;
use tonic::Code;
use weir_broker::Node;
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::broker_client::BrokerClient;
use weir_proto::v1::{
    CreateTopicRequest, DeleteTopicRequest, FetchRequest, ListOffsetsRequest, ProduceRequest,
    ReassignPartitionRequest, Record,
};
use weir_storage::codec::{BatchBuilder, Compression, encode_control_batch};
use weir_tests::retry_unavailable;

/// How long the node may take to form its groups.
const WAIT: Duration = Duration::from_secs(20);

fn record(value: &str) -> Record {
    Record {
        key: None,
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: Vec::new(),
        timestamp_ms: 0,
    }
}

fn produce(topic: &str, partition: u32, records: Vec<Record>) -> ProduceRequest {
    ProduceRequest {
        topic: topic.into(),
        partition: Some(partition),
        records,
        acks: 0,
        batch: Bytes::new(),
        request_id: 0,
    }
}

fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Option<(Code, String)> {
    match result {
        Ok(_) => None,
        Err(status) => Some((status.code(), status.message().to_string())),
    }
}

fn expect(got: Option<(Code, String)>, code: Code, mentions: &str) {
    let (got_code, message) = got.unwrap_or((Code::Ok, String::new()));
    assert_eq!(got_code, code, "message: {message}");
    assert!(
        message.contains(mentions),
        "{message:?} should mention {mentions:?}"
    );
}

async fn start() -> anyhow::Result<(Node, tempfile::TempDir, String)> {
    let dir = tempfile::tempdir()?;
    let node = weir_tests::start_single_node(dir.path()).await?;
    let addr = format!("http://{}", node.local_addr());
    Ok((node, dir, addr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_path_has_its_status_and_loses_nothing() -> anyhow::Result<()> {
    weir_tests::init_tracing();
    let (node, _dir, addr) = start().await?;
    let mut admin = AdminClient::connect(addr.clone()).await?;
    let mut broker = BrokerClient::connect(addr).await?;

    // Topic creation waits for the node to register itself; retry UNAVAILABLE meanwhile.
    let create = |name: &str, partitions, rf| CreateTopicRequest {
        name: name.into(),
        partitions,
        replication_factor: rf,
        configs: Default::default(),
    };
    retry_unavailable(WAIT, "topic events created", || {
        let mut admin = admin.clone();
        async move { admin.create_topic(create("events", 2, 1)).await }
    })
    .await?;
    let before: Vec<String> = (0..5).map(|i| format!("kept-{i}")).collect();
    let request = produce("events", 0, before.iter().map(|v| record(v)).collect());
    let response = retry_unavailable(WAIT, "the first records produced", || {
        let mut broker = broker.clone();
        let request = request.clone();
        async move { broker.produce(request).await }
    })
    .await?;
    assert_eq!(response.base_offset, Some(0));

    // Admin.
    expect(
        code(admin.create_topic(create("events", 1, 1)).await),
        Code::AlreadyExists,
        "already exists",
    );
    expect(
        code(admin.create_topic(create("bad name", 1, 1)).await),
        Code::InvalidArgument,
        "invalid topic name",
    );
    expect(
        code(admin.create_topic(create("__reserved", 1, 1)).await),
        Code::InvalidArgument,
        "reserved",
    );
    expect(
        code(admin.create_topic(create(&"x".repeat(201), 1, 1)).await),
        Code::InvalidArgument,
        "200",
    );
    expect(
        code(admin.create_topic(create("zero", 0, 1)).await),
        Code::InvalidArgument,
        "partition count",
    );
    expect(
        code(admin.create_topic(create("rf0", 1, 0)).await),
        Code::InvalidArgument,
        "replication factor",
    );
    let not_enough = admin.create_topic(create("rf3", 1, 3)).await;
    let retry_after = not_enough
        .as_ref()
        .err()
        .and_then(tonic_types::StatusExt::get_details_retry_info)
        .and_then(|info| info.retry_delay);
    assert_eq!(retry_after, Some(Duration::from_secs(2)), "a retry hint");
    expect(code(not_enough), Code::Unavailable, "not enough brokers");
    expect(
        code(
            admin
                .delete_topic(DeleteTopicRequest {
                    name: "nope".into(),
                })
                .await,
        ),
        Code::NotFound,
        "unknown topic",
    );
    expect(
        code(
            admin
                .reassign_partition(ReassignPartitionRequest {
                    topic: "events".into(),
                    partition: 0,
                    replicas: vec![9],
                })
                .await,
        ),
        Code::InvalidArgument,
        "unknown broker 9",
    );

    // Produce.
    expect(
        code(broker.produce(produce("nope", 0, vec![record("x")])).await),
        Code::NotFound,
        "unknown topic",
    );
    expect(
        code(
            broker
                .produce(produce("events", 7, vec![record("x")]))
                .await,
        ),
        Code::NotFound,
        "partition 7",
    );
    expect(
        code(broker.produce(produce("events", 0, vec![])).await),
        Code::InvalidArgument,
        "no records",
    );
    let huge = Record {
        value: Some(Bytes::from(vec![b'x'; 9 << 20])),
        ..record("")
    };
    expect(
        code(broker.produce(produce("events", 0, vec![huge])).await),
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
        code(broker.produce(bad_batch).await),
        Code::InvalidArgument,
        "CRC",
    );
    let mut control = produce("events", 0, vec![]);
    control.batch = encode_control_batch(1, b"sneaky");
    expect(
        code(broker.produce(control).await),
        Code::InvalidArgument,
        "must hold records",
    );
    let mut bad_acks = produce("events", 0, vec![record("x")]);
    bad_acks.acks = 42;
    expect(
        code(broker.produce(bad_acks).await),
        Code::InvalidArgument,
        "acks",
    );

    // Fetch and offsets.
    let fetch = |offset| FetchRequest {
        topic: "events".into(),
        partition: 0,
        offset,
        ..FetchRequest::default()
    };
    expect(
        code(broker.fetch(fetch(99)).await),
        Code::OutOfRange,
        "outside",
    );
    expect(
        code(
            broker
                .fetch(FetchRequest {
                    topic: "events".into(),
                    partition: 5,
                    ..FetchRequest::default()
                })
                .await,
        ),
        Code::NotFound,
        "partition 5",
    );
    expect(
        code(
            broker
                .list_offsets(ListOffsetsRequest {
                    topic: "nope".into(),
                    partition: 0,
                    timestamp_ms: None,
                })
                .await,
        ),
        Code::NotFound,
        "unknown topic",
    );

    // Nothing was lost or added by the bad requests.
    let fetched = broker.fetch(fetch(0)).await?.into_inner();
    let values: Vec<String> = fetched
        .records
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or(b"")).into_owned())
        .collect();
    assert_eq!(values, before);
    assert_eq!(fetched.high_watermark, 5);

    // gRPC health says SERVING (the node loaded its metadata), overall and per service; server
    // reflection lists the services, so grpcurl and generated stubs need no .proto files.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.local_addr()))?
        .connect()
        .await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "weir.v1.Broker", "weir.v1.Admin", "weir.v1.Groups"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "health of {service:?}"
        );
    }
    let unknown = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "no.Such".into(),
        })
        .await;
    assert_eq!(unknown.err().map(|s| s.code()), Some(Code::NotFound));
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

    // The metrics endpoint shows the partition and the requests, errors by code.
    let metrics = weir_tests::scrape_metrics(node.metrics_addr()).await?;
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
