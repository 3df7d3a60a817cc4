//! The v1 API beyond plain produce and fetch, over raw generated gRPC stubs (as a client in any
//! language would use it) against one in-process node: topic settings, produce by key, acks
//! leader and none, producer ids, the produce stream, long-poll fetch, start positions,
//! Subscribe, and every consumer-group call with its documented error statuses.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use tonic::Code;
use tonic::transport::Channel;
use weir_broker::Node;
use weir_proto::partitioner::partition_for_key;
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::broker_client::BrokerClient;
use weir_proto::v1::groups_client::GroupsClient;
use weir_proto::v1::{
    Acks, CommitOffsetsRequest, CreateTopicRequest, DescribeGroupRequest, DescribeTopicRequest,
    FetchOffsetsRequest, FetchRequest, HeartbeatRequest, HeartbeatResponse, InitProducerRequest,
    LeaveGroupRequest, ListGroupsRequest, ListOffsetsRequest, ListTopicsRequest, PartitionOffset,
    ProduceRequest, Record, ResetOffsetsRequest, StartFrom, SubscribeRequest, TopicPartitions,
};
use weir_tests::eventually;

const WAIT: Duration = Duration::from_secs(20);

fn record(key: Option<&str>, value: &str) -> Record {
    Record {
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: Vec::new(),
        timestamp_ms: 0,
    }
}

fn produce(topic: &str, partition: Option<u32>, records: Vec<Record>) -> ProduceRequest {
    ProduceRequest {
        topic: topic.into(),
        partition,
        records,
        ..ProduceRequest::default()
    }
}

fn create(name: &str, partitions: u32, configs: &[(&str, &str)]) -> CreateTopicRequest {
    CreateTopicRequest {
        name: name.into(),
        partitions,
        replication_factor: 1,
        configs: configs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn status_of<T>(result: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    match result {
        Ok(_) => (Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().to_string()),
    }
}

fn expect<T>(result: Result<tonic::Response<T>, tonic::Status>, code: Code, mentions: &str) {
    let (got, message) = status_of(result);
    assert_eq!(got, code, "message: {message}");
    assert!(
        message.contains(mentions),
        "{message:?} should mention {mentions:?}"
    );
}

#[derive(Clone)]
struct Api {
    admin: AdminClient<Channel>,
    broker: BrokerClient<Channel>,
    groups: GroupsClient<Channel>,
}

async fn start() -> anyhow::Result<(Node, tempfile::TempDir, Api)> {
    let dir = tempfile::tempdir()?;
    let node = weir_tests::start_single_node(dir.path()).await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.local_addr()))?
        .connect()
        .await?;
    let api = Api {
        admin: AdminClient::new(channel.clone()),
        broker: BrokerClient::new(channel.clone()),
        groups: GroupsClient::new(channel),
    };
    Ok((node, dir, api))
}

/// Retries `call` while it answers UNAVAILABLE (a node starting, a group being formed).
async fn retry<T, F, Fut>(what: &str, call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    weir_tests::retry_unavailable(WAIT, what, call).await
}

fn values(records: &[weir_proto::v1::FetchedRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or(b"")).into_owned())
        .collect()
}

async fn fetch_all(api: &mut Api, topic: &str, partition: u32) -> anyhow::Result<Vec<String>> {
    let fetched = api
        .broker
        .fetch(FetchRequest {
            topic: topic.into(),
            partition,
            from: StartFrom::Earliest as i32,
            ..FetchRequest::default()
        })
        .await?
        .into_inner();
    Ok(values(&fetched.records))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_produce_and_fetch_paths() -> anyhow::Result<()> {
    weir_tests::init_tracing();
    let (node, _dir, mut api) = start().await?;
    let admin = api.admin.clone();
    retry("topic keyed created", || {
        let mut admin = admin.clone();
        async move { admin.create_topic(create("keyed", 4, &[])).await }
    })
    .await?;

    // Topic settings: bad names and values are INVALID_ARGUMENT naming the limit.
    expect(
        api.admin
            .create_topic(create("t1", 1, &[("segment.bytes", "10")]))
            .await,
        Code::InvalidArgument,
        "1048576",
    );
    expect(
        api.admin
            .create_topic(create("t1", 1, &[("max.message.bytes", "999999999")]))
            .await,
        Code::InvalidArgument,
        "67108864",
    );
    expect(
        api.admin
            .create_topic(create("t1", 1, &[("cleanup.policy", "compact")]))
            .await,
        Code::InvalidArgument,
        "unknown topic setting",
    );
    expect(
        api.admin
            .create_topic(create("t1", 1, &[("compression", "zstd")]))
            .await,
        Code::InvalidArgument,
        "producer, none, lz4",
    );
    // Settings apply: a small max.message.bytes limits batches, and describe shows them.
    api.admin
        .create_topic(create(
            "small",
            1,
            &[
                ("max.message.bytes", "1000"),
                ("retention.ms", "3600000"),
                ("compression", "lz4"),
            ],
        ))
        .await?;
    // Incompressible (the limit applies to the stored, lz4-compressed batch).
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let big: String = (0..2000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            char::from(b'!' + (seed % 90) as u8)
        })
        .collect();
    expect(
        api.broker
            .produce(produce("small", Some(0), vec![record(None, &big)]))
            .await,
        Code::InvalidArgument,
        "limit of 1000 bytes",
    );
    let listed = api
        .admin
        .list_topics(ListTopicsRequest {})
        .await?
        .into_inner();
    let small = listed
        .topics
        .iter()
        .find(|t| t.name == "small")
        .ok_or_else(|| anyhow::anyhow!("small not listed"))?;
    assert_eq!(small.configs["max.message.bytes"], "1000");
    assert_eq!(small.configs["retention.ms"], "3600000");
    assert_eq!(small.configs["compression"], "lz4");
    assert_eq!(small.configs["retention.bytes"], "-1");
    assert!(!small.internal);
    // lz4 storage is transparent to readers.
    let written: Vec<String> = (0..20).map(|i| format!("compressible-{i}")).collect();
    let broker = api.broker.clone();
    let request = produce(
        "small",
        Some(0),
        written.iter().map(|v| record(None, v)).collect(),
    );
    retry("the lz4 records produced", || {
        let mut broker = broker.clone();
        let request = request.clone();
        async move { broker.produce(request).await }
    })
    .await?;
    assert_eq!(fetch_all(&mut api, "small", 0).await?, written);
    let described = api
        .admin
        .describe_topic(DescribeTopicRequest {
            name: "small".into(),
        })
        .await?
        .into_inner()
        .topic
        .ok_or_else(|| anyhow::anyhow!("no topic in answer"))?;
    assert_eq!(described.partitions[0].high_watermark, 20);
    assert_eq!(described.partitions[0].log_start_offset, 0);
    expect(
        api.admin
            .describe_topic(DescribeTopicRequest {
                name: "nope".into(),
            })
            .await,
        Code::NotFound,
        "unknown topic",
    );

    // Produce by key: each record lands on partition_for_key of its key; a request without a
    // partition may span partitions and says where each part went.
    let keys = ["alice", "bob", "carol", "dave", "erin", "frank"];
    let request = produce(
        "keyed",
        None,
        keys.iter().map(|k| record(Some(k), k)).collect(),
    );
    let answer = retry("the keyed records produced", || {
        let mut broker = broker.clone();
        let request = request.clone();
        async move { broker.produce(request).await }
    })
    .await?;
    let total: u32 = answer.partitions.iter().map(|p| p.record_count).sum();
    assert_eq!(total, keys.len() as u32);
    for p in 0..4 {
        let expected: Vec<String> = keys
            .iter()
            .filter(|k| partition_for_key(k.as_bytes(), 4) == p)
            .map(|k| k.to_string())
            .collect();
        assert_eq!(
            fetch_all(&mut api, "keyed", p).await?,
            expected,
            "partition {p}"
        );
    }
    expect(
        api.broker
            .produce(ProduceRequest {
                batch: Bytes::from_static(b"x"),
                ..produce("keyed", None, vec![])
            })
            .await,
        Code::InvalidArgument,
        "needs a partition",
    );
    expect(
        api.broker.produce(produce("keyed", None, vec![])).await,
        Code::InvalidArgument,
        "no records",
    );

    // acks = leader and none answer without offsets; the records are then readable.
    let before = fetch_all(&mut api, "keyed", 1).await?.len();
    for acks in [Acks::Leader, Acks::None] {
        let answer = api
            .broker
            .produce(ProduceRequest {
                acks: acks as i32,
                ..produce("keyed", Some(1), vec![record(None, &format!("{acks:?}"))])
            })
            .await?
            .into_inner();
        assert_eq!(answer.base_offset, None, "{acks:?}");
        assert_eq!(answer.record_count, 1);
    }
    let got = eventually(WAIT, "the acks=leader/none records readable", || {
        let mut api = api.clone();
        async move {
            let got = fetch_all(&mut api, "keyed", 1).await?;
            anyhow::ensure!(got.len() == before + 2, "partition 1 holds {got:?}");
            Ok(got)
        }
    })
    .await?;
    let tail: BTreeSet<&str> = got[before..].iter().map(String::as_str).collect();
    assert_eq!(tail, BTreeSet::from(["Leader", "None"]));

    // Producer ids are unique.
    let a = api
        .broker
        .init_producer(InitProducerRequest {})
        .await?
        .into_inner();
    let b = api
        .broker
        .init_producer(InitProducerRequest {})
        .await?
        .into_inner();
    assert_ne!(a.producer_id, b.producer_id);
    assert!(a.producer_id > 0 && b.producer_id > 0);

    // ProduceStream: answers carry request ids; one partition keeps stream order; a bad
    // request fails alone and the stream goes on.
    let mut requests: Vec<ProduceRequest> = (0..30u64)
        .map(|i| ProduceRequest {
            request_id: i,
            ..produce("keyed", Some(2), vec![record(None, &format!("s{i}"))])
        })
        .collect();
    requests.insert(
        10,
        ProduceRequest {
            request_id: 1000,
            ..produce("nope", Some(0), vec![record(None, "lost")])
        },
    );
    let before = fetch_all(&mut api, "keyed", 2).await?;
    let mut answers = api
        .broker
        .produce_stream(tokio_stream::iter(requests))
        .await?
        .into_inner();
    let mut offsets = Vec::new();
    let mut failed = Vec::new();
    while let Some(answer) = answers.message().await? {
        if answer.error_code != 0 {
            failed.push((answer.request_id, answer.error_code, answer.error_message));
        } else {
            offsets.push((answer.request_id, answer.base_offset));
        }
    }
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, 1000);
    assert_eq!(failed[0].1, Code::NotFound as i32);
    assert_eq!(offsets.len(), 30);
    let mut ordered = offsets.clone();
    ordered.sort();
    for window in ordered.windows(2) {
        assert!(window[0].1 < window[1].1, "stream order kept: {ordered:?}");
    }
    let after = fetch_all(&mut api, "keyed", 2).await?;
    let expected: Vec<String> = before
        .into_iter()
        .chain((0..30).map(|i| format!("s{i}")))
        .collect();
    assert_eq!(after, expected);

    // Fetch start positions and long poll.
    let offsets = api
        .broker
        .list_offsets(ListOffsetsRequest {
            topic: "keyed".into(),
            partition: 2,
            timestamp_ms: None,
        })
        .await?
        .into_inner();
    let latest = api
        .broker
        .fetch(FetchRequest {
            topic: "keyed".into(),
            partition: 2,
            from: StartFrom::Latest as i32,
            ..FetchRequest::default()
        })
        .await?
        .into_inner();
    assert!(latest.records.is_empty());
    assert_eq!(latest.next_offset, offsets.high_watermark);
    let future = api
        .broker
        .fetch(FetchRequest {
            topic: "keyed".into(),
            partition: 2,
            from: StartFrom::Timestamp as i32,
            timestamp_ms: i64::MAX,
            ..FetchRequest::default()
        })
        .await?
        .into_inner();
    assert_eq!(future.next_offset, offsets.high_watermark);
    let past = api
        .broker
        .fetch(FetchRequest {
            topic: "keyed".into(),
            partition: 2,
            from: StartFrom::Timestamp as i32,
            timestamp_ms: 1,
            ..FetchRequest::default()
        })
        .await?
        .into_inner();
    assert_eq!(past.records.first().map(|r| r.offset), Some(0));
    expect(
        api.broker
            .fetch(FetchRequest {
                topic: "keyed".into(),
                partition: 2,
                max_wait_ms: 30_001,
                ..FetchRequest::default()
            })
            .await,
        Code::InvalidArgument,
        "30000",
    );
    // A long poll at the high watermark answers with the record produced while it waits.
    let mut poller = api.broker.clone();
    let hw = offsets.high_watermark;
    let waiting = tokio::spawn(async move {
        poller
            .fetch(FetchRequest {
                topic: "keyed".into(),
                partition: 2,
                offset: hw,
                max_wait_ms: 30_000,
                ..FetchRequest::default()
            })
            .await
    });
    api.broker
        .produce(produce("keyed", Some(2), vec![record(None, "awaited")]))
        .await?;
    let polled = waiting.await??.into_inner();
    assert_eq!(values(&polled.records), vec!["awaited".to_string()]);

    // Raw batches: the same records, as stored, for the client to decode.
    let decoded = api
        .broker
        .fetch(FetchRequest {
            topic: "keyed".into(),
            partition: 2,
            offset: 3,
            ..FetchRequest::default()
        })
        .await?
        .into_inner();
    let raw = api
        .broker
        .fetch(FetchRequest {
            topic: "keyed".into(),
            partition: 2,
            offset: 3,
            raw_batches: true,
            ..FetchRequest::default()
        })
        .await?
        .into_inner();
    assert!(raw.records.is_empty());
    assert_eq!(raw.next_offset, decoded.next_offset);
    let mut from_raw = Vec::new();
    for batch in weir_storage::codec::BatchIter::new(raw.batches.clone()) {
        let batch = batch?;
        if batch.header().control {
            continue;
        }
        for record in batch.records()? {
            if record.offset >= 3 {
                from_raw.push((
                    record.offset,
                    String::from_utf8_lossy(record.value.as_deref().unwrap_or(b"")).into_owned(),
                ));
            }
        }
    }
    let from_records: Vec<(u64, String)> = decoded
        .records
        .iter()
        .map(|r| {
            (
                r.offset,
                String::from_utf8_lossy(r.value.as_deref().unwrap_or(b"")).into_owned(),
            )
        })
        .collect();
    assert_eq!(from_raw, from_records);
    assert!(!from_records.is_empty());

    // Subscribe streams what is committed from its start, then what arrives.
    let mut stream = api
        .broker
        .subscribe(SubscribeRequest {
            topic: "keyed".into(),
            partition: 3,
            from: StartFrom::Earliest as i32,
            ..SubscribeRequest::default()
        })
        .await?
        .into_inner();
    let existing = fetch_all(&mut api, "keyed", 3).await?;
    for i in 0..3 {
        api.broker
            .produce(produce(
                "keyed",
                Some(3),
                vec![record(None, &format!("live{i}"))],
            ))
            .await?;
    }
    let expected: Vec<String> = existing
        .into_iter()
        .chain((0..3).map(|i| format!("live{i}")))
        .collect();
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        let message = tokio::time::timeout(WAIT, stream.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("subscribe stream ended"))?;
        seen.extend(values(&message.records));
    }
    assert_eq!(seen, expected);
    drop(stream);
    node.shutdown().await;
    Ok(())
}

fn heartbeat(group: &str, member: &str, owned: &[u32]) -> HeartbeatRequest {
    HeartbeatRequest {
        group: group.into(),
        member_id: member.into(),
        topics: vec!["orders".into()],
        owned: vec![TopicPartitions {
            topic: "orders".into(),
            partitions: owned.to_vec(),
        }],
        session_timeout_ms: 5_000,
        client_id: "test".into(),
    }
}

fn assigned(answer: &HeartbeatResponse) -> Vec<u32> {
    let mut partitions: Vec<u32> = answer
        .assigned
        .iter()
        .filter(|tp| tp.topic == "orders")
        .flat_map(|tp| tp.partitions.iter().copied())
        .collect();
    partitions.sort_unstable();
    partitions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_group_calls_and_their_errors() -> anyhow::Result<()> {
    weir_tests::init_tracing();
    let (node, dir, mut api) = start().await?;
    let admin = api.admin.clone();
    retry("topic orders created", || {
        let mut admin = admin.clone();
        async move { admin.create_topic(create("orders", 4, &[])).await }
    })
    .await?;
    for p in 0..4 {
        let records = (0..10).map(|i| record(None, &format!("{p}-{i}"))).collect();
        let request = produce("orders", Some(p), records);
        let broker = api.broker.clone();
        retry("records produced to orders", || {
            let mut broker = broker.clone();
            let request = request.clone();
            async move { broker.produce(request).await }
        })
        .await?;
    }

    // The first heartbeat creates the offsets topic and its coordinator; retry while it forms.
    let groups = api.groups.clone();
    let first = retry("the first heartbeat (the offsets topic forms)", || {
        let mut groups = groups.clone();
        async move { groups.heartbeat(heartbeat("g", "", &[])).await }
    })
    .await?;
    let a = first.member_id.clone();
    assert_eq!(assigned(&first), vec![0, 1, 2, 3]);
    assert!(first.heartbeat_interval_ms > 0);
    let topics = api
        .admin
        .list_topics(ListTopicsRequest {})
        .await?
        .into_inner();
    assert!(
        topics
            .topics
            .iter()
            .any(|t| t.name == "__consumer_offsets" && t.internal)
    );

    // a takes its partitions (reports them owned).
    let taken = api
        .groups
        .heartbeat(heartbeat("g", &a, &[0, 1, 2, 3]))
        .await?
        .into_inner();
    assert_eq!(assigned(&taken), vec![0, 1, 2, 3]);
    // A second member joins: it gets its share only once the first releases it.
    let joined = api
        .groups
        .heartbeat(heartbeat("g", "", &[]))
        .await?
        .into_inner();
    let b = joined.member_id.clone();
    assert_ne!(a, b);
    assert!(joined.generation > first.generation);
    assert!(assigned(&joined).is_empty(), "a still owns everything");
    let a_share = assigned(
        &api.groups
            .heartbeat(heartbeat("g", &a, &[0, 1, 2, 3]))
            .await?
            .into_inner(),
    );
    assert_eq!(a_share.len(), 2);
    let a_now = api
        .groups
        .heartbeat(heartbeat("g", &a, &a_share))
        .await?
        .into_inner();
    assert_eq!(assigned(&a_now), a_share);
    let b_share = assigned(
        &api.groups
            .heartbeat(heartbeat("g", &b, &[]))
            .await?
            .into_inner(),
    );
    assert_eq!(b_share.len(), 2);
    let all: BTreeSet<u32> = a_share.iter().chain(&b_share).copied().collect();
    assert_eq!(all, BTreeSet::from([0, 1, 2, 3]));
    api.groups.heartbeat(heartbeat("g", &b, &b_share)).await?;

    // Commits: a member commits what it holds; not what it does not; nobody else while the
    // group is live.
    let commit = |member: &str, partition: u32, offset: u64| CommitOffsetsRequest {
        group: "g".into(),
        member_id: member.into(),
        offsets: vec![PartitionOffset {
            topic: "orders".into(),
            partition,
            offset,
        }],
    };
    api.groups.commit_offsets(commit(&a, a_share[0], 7)).await?;
    expect(
        api.groups.commit_offsets(commit(&a, b_share[0], 7)).await,
        Code::FailedPrecondition,
        "not held",
    );
    expect(
        api.groups.commit_offsets(commit("", a_share[0], 1)).await,
        Code::FailedPrecondition,
        "live members",
    );
    expect(
        api.groups
            .commit_offsets(commit("ghost", a_share[0], 1))
            .await,
        Code::NotFound,
        "unknown member",
    );
    expect(
        api.groups.commit_offsets(commit(&a, 9, 1)).await,
        Code::NotFound,
        "partition 9",
    );
    expect(
        api.groups
            .commit_offsets(CommitOffsetsRequest {
                offsets: vec![],
                ..commit(&a, 0, 0)
            })
            .await,
        Code::InvalidArgument,
        "no offsets",
    );
    expect(
        api.groups.heartbeat(heartbeat("g", "ghost", &[])).await,
        Code::NotFound,
        "rejoin",
    );
    expect(
        api.groups
            .heartbeat(HeartbeatRequest {
                session_timeout_ms: 10,
                ..heartbeat("g", &a, &a_share)
            })
            .await,
        Code::InvalidArgument,
        "session_timeout_ms",
    );
    expect(
        api.groups
            .heartbeat(HeartbeatRequest {
                topics: vec!["nope".into()],
                ..heartbeat("g", &a, &a_share)
            })
            .await,
        Code::NotFound,
        "unknown topic",
    );
    expect(
        api.groups.heartbeat(heartbeat("", "", &[])).await,
        Code::InvalidArgument,
        "group name",
    );

    // Metrics show the coordinated group: members, committed offsets, requests by result.
    let metrics = weir_tests::scrape_metrics(node.metrics_addr()).await?;
    for line in [
        "weir_group_members{group=\"g\"} 2".to_string(),
        format!(
            "weir_group_committed_offset{{group=\"g\",topic=\"orders\",partition=\"{}\"}} 7",
            a_share[0]
        ),
        "weir_group_requests_total{rpc=\"commit_offsets\",result=\"FailedPrecondition\"} 2"
            .to_string(),
    ] {
        assert!(metrics.contains(&line), "metrics lack {line:?}:\n{metrics}");
    }

    // Describe: members, and per partition committed offset, high watermark and lag.
    let described = api
        .groups
        .describe_group(DescribeGroupRequest { group: "g".into() })
        .await?
        .into_inner();
    assert_eq!(described.members.len(), 2);
    assert_eq!(described.state, "stable");
    assert_eq!(described.coordinator, node.config().id);
    let lag = described
        .partitions
        .iter()
        .find(|p| p.partition == a_share[0])
        .ok_or_else(|| anyhow::anyhow!("partition missing"))?;
    assert_eq!(lag.committed, Some(7));
    assert_eq!(lag.high_watermark, 10);
    assert_eq!(lag.lag, 3);
    assert_eq!(lag.member_id, a);
    let uncommitted = described
        .partitions
        .iter()
        .find(|p| p.partition == b_share[0])
        .ok_or_else(|| anyhow::anyhow!("partition missing"))?;
    assert_eq!(uncommitted.committed, None);
    assert_eq!(uncommitted.lag, 10);
    expect(
        api.groups
            .describe_group(DescribeGroupRequest {
                group: "nobody".into(),
            })
            .await,
        Code::NotFound,
        "unknown group",
    );

    // Reset needs an empty group.
    let reset = |to: StartFrom, offset| ResetOffsetsRequest {
        group: "g".into(),
        topic: "orders".into(),
        partitions: vec![],
        to: to as i32,
        offset,
        timestamp_ms: 0,
    };
    expect(
        api.groups
            .reset_offsets(reset(StartFrom::Earliest, 0))
            .await,
        Code::FailedPrecondition,
        "live members",
    );
    api.groups
        .leave_group(LeaveGroupRequest {
            group: "g".into(),
            member_id: a.clone(),
        })
        .await?;
    expect(
        api.groups
            .leave_group(LeaveGroupRequest {
                group: "g".into(),
                member_id: a.clone(),
            })
            .await,
        Code::NotFound,
        "unknown member",
    );
    // b now gets a's partitions at once (a released them by leaving).
    let b_all = assigned(
        &api.groups
            .heartbeat(heartbeat("g", &b, &b_share))
            .await?
            .into_inner(),
    );
    assert_eq!(b_all, vec![0, 1, 2, 3]);
    api.groups
        .leave_group(LeaveGroupRequest {
            group: "g".into(),
            member_id: b.clone(),
        })
        .await?;
    let moved = api
        .groups
        .reset_offsets(reset(StartFrom::Offset, 99))
        .await?
        .into_inner();
    assert_eq!(moved.offsets.len(), 4);
    assert!(
        moved.offsets.iter().all(|o| o.offset == 10),
        "clamped to the high watermark"
    );
    api.groups
        .reset_offsets(ResetOffsetsRequest {
            partitions: vec![1],
            ..reset(StartFrom::Earliest, 0)
        })
        .await?;
    let fetched = api
        .groups
        .fetch_offsets(FetchOffsetsRequest {
            group: "g".into(),
            topics: vec![],
        })
        .await?
        .into_inner();
    let committed: Vec<(u32, u64)> = fetched
        .offsets
        .iter()
        .map(|o| (o.partition, o.offset))
        .collect();
    assert_eq!(committed, vec![(0, 10), (1, 0), (2, 10), (3, 10)]);
    expect(
        api.groups
            .reset_offsets(ResetOffsetsRequest {
                partitions: vec![8],
                ..reset(StartFrom::Earliest, 0)
            })
            .await,
        Code::NotFound,
        "partition 8",
    );

    // Listing shows the group, now empty.
    let listed = api
        .groups
        .list_groups(ListGroupsRequest::default())
        .await?
        .into_inner();
    let g = listed
        .groups
        .iter()
        .find(|g| g.group == "g")
        .ok_or_else(|| anyhow::anyhow!("group not listed: {listed:?}"))?;
    assert_eq!((g.members, g.state.as_str()), (0, "empty"));

    // Committed offsets survive a restart of the (only) node: they are records of the
    // replicated offsets topic.
    node.shutdown().await;
    let node = weir_tests::start_single_node(dir.path()).await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.local_addr()))?
        .connect()
        .await?;
    let groups = GroupsClient::new(channel);
    let request = FetchOffsetsRequest {
        group: "g".into(),
        topics: vec!["orders".into()],
    };
    let again = retry("the committed offsets fetched after the restart", || {
        let mut groups = groups.clone();
        let request = request.clone();
        async move { groups.fetch_offsets(request).await }
    })
    .await?;
    let again: Vec<(u32, u64)> = again
        .offsets
        .iter()
        .map(|o| (o.partition, o.offset))
        .collect();
    assert_eq!(again, committed);
    node.shutdown().await;
    Ok(())
}

/// The relaxed durability modes acknowledge without waiting for a sync — and still acknowledge:
/// a partition's Raft log counts an entry once it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaxed_durability_modes_commit_writes() -> anyhow::Result<()> {
    weir_tests::init_tracing();
    for durability in [
        weir_storage::Durability::Never,
        weir_storage::Durability::Interval { ms: 50 },
    ] {
        let dir = tempfile::tempdir()?;
        let config = weir_broker::NodeConfig {
            addr: "127.0.0.1:0".into(),
            data_dir: dir.path().to_path_buf(),
            durability,
            ..weir_broker::NodeConfig::default()
        };
        let node = Node::start(config, None).await?;
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", node.local_addr()))?
                .connect()
                .await?;
        let mut api = Api {
            admin: AdminClient::new(channel.clone()),
            broker: BrokerClient::new(channel.clone()),
            groups: GroupsClient::new(channel),
        };
        let admin = api.admin.clone();
        retry("topic relaxed created", || {
            let mut admin = admin.clone();
            async move { admin.create_topic(create("relaxed", 1, &[])).await }
        })
        .await?;
        let broker = api.broker.clone();
        let request = produce("relaxed", Some(0), vec![record(None, "kept")]);
        let answer = retry("a record produced to relaxed", || {
            let mut broker = broker.clone();
            let request = request.clone();
            async move { broker.produce(request).await }
        })
        .await?;
        assert_eq!(answer.base_offset, Some(0), "{durability:?}");
        assert_eq!(
            fetch_all(&mut api, "relaxed", 0).await?,
            vec!["kept".to_string()]
        );
        node.shutdown().await;
    }
    Ok(())
}
