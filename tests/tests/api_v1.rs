//! The v1 API beyond plain produce and fetch, over raw generated gRPC stubs (as a client in any
//! language would use it) against one in-process node: topic settings, produce by key, acks
//! leader and none, producer ids, the produce stream, long-poll fetch, start positions,
//! Subscribe, and every consumer-group call with its documented error statuses. Each test starts
//! its own node (a fraction of a second) and checks one behaviour.

use std::collections::BTreeSet;

use bytes::Bytes;
use tonic::Code;
use weir_format::partitioner::partition_for_key;
use weir_proto::v1::{
    Acks, CommitOffsetsRequest, DescribeGroupRequest, DescribeTopicRequest, FetchOffsetsRequest,
    FetchRequest, HeartbeatRequest, HeartbeatResponse, InitProducerRequest, LeaveGroupRequest,
    ListGroupsRequest, ListOffsetsRequest, ListTopicsRequest, PartitionOffset, ProduceRequest,
    ResetOffsetsRequest, StartFrom, SubscribeRequest, TopicPartitions,
};
use weir_tests::api::{
    Api, ApiNode, WAIT, create, expect_status as expect, produce, record, values,
};
use weir_tests::eventually;

/// A node with topic `keyed`: 4 partitions, no settings.
async fn keyed() -> anyhow::Result<ApiNode> {
    let node = ApiNode::start().await?;
    node.api.create_topic("keyed", 4, &[]).await?;
    Ok(node)
}

/// The log start and high watermark of `partition` of `keyed`.
async fn keyed_offsets(
    api: &Api,
    partition: u32,
) -> anyhow::Result<weir_proto::v1::ListOffsetsResponse> {
    Ok(api
        .broker
        .clone()
        .list_offsets(ListOffsetsRequest {
            topic: "keyed".into(),
            partition,
            timestamp_ms: None,
        })
        .await?
        .into_inner())
}

/// `n` values `{prefix}{i}` produced to `partition` of `keyed`, one record each.
async fn fill(api: &Api, partition: u32, prefix: &str, n: u32) -> anyhow::Result<Vec<String>> {
    let written: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    api.produce_values("keyed", partition, &written).await?;
    Ok(written)
}

/// 2000 characters lz4 cannot shrink.
fn incompressible() -> String {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    (0..2000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            char::from(b'!' + (seed % 90) as u8)
        })
        .collect()
}

/// Topic `small`: max.message.bytes 1000, an hour's retention, lz4.
async fn create_small(api: &Api) -> anyhow::Result<()> {
    api.create_topic(
        "small",
        1,
        &[
            ("max.message.bytes", "1000"),
            ("retention.ms", "3600000"),
            ("compression", "lz4"),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_topic_settings_are_invalid_argument_naming_the_limit() -> anyhow::Result<()> {
    let ApiNode { node, mut api, .. } = keyed().await?;
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
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_settings_apply_and_list_topics_shows_them() -> anyhow::Result<()> {
    let ApiNode { node, mut api, .. } = keyed().await?;
    create_small(&api).await?;
    // A small max.message.bytes limits batches (the stored, lz4-compressed batch: incompressible
    // values make it as big as the records).
    expect(
        api.broker
            .produce(produce(
                "small",
                Some(0),
                vec![record(None, &incompressible())],
            ))
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
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lz4_storage_is_transparent_to_readers_and_describe_shows_the_offsets() -> anyhow::Result<()>
{
    let ApiNode { node, mut api, .. } = keyed().await?;
    create_small(&api).await?;
    let written: Vec<String> = (0..20).map(|i| format!("compressible-{i}")).collect();
    api.produce_values("small", 0, &written).await?;
    assert_eq!(api.fetch_all("small", 0).await?, written);
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
    node.shutdown().await;
    Ok(())
}

/// Produce by key: each record lands on partition_for_key of its key; a request without a
/// partition may span partitions and says where each part went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_produced_by_key_land_on_their_keys_partitions() -> anyhow::Result<()> {
    let ApiNode { node, mut api, .. } = keyed().await?;
    api.wait_for_leaders("keyed").await?;
    let keys = ["alice", "bob", "carol", "dave", "erin", "frank"];
    let answer = api
        .broker
        .produce(produce(
            "keyed",
            None,
            keys.iter().map(|k| record(Some(k), k)).collect(),
        ))
        .await?
        .into_inner();
    let total: u32 = answer.partitions.iter().map(|p| p.record_count).sum();
    assert_eq!(total, keys.len() as u32);
    for p in 0..4 {
        let expected: Vec<String> = keys
            .iter()
            .filter(|k| partition_for_key(k.as_bytes(), 4) == p)
            .map(|k| k.to_string())
            .collect();
        assert_eq!(api.fetch_all("keyed", p).await?, expected, "partition {p}");
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
    node.shutdown().await;
    Ok(())
}

/// acks = leader and none answer without offsets; the records are then readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_leader_and_none_answer_without_offsets() -> anyhow::Result<()> {
    let ApiNode { node, mut api, .. } = keyed().await?;
    let before = fill(&api, 1, "acked-", 3).await?.len();
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
    let got = eventually(WAIT, "the acks=leader/none records readable", || async {
        let got = api.fetch_all("keyed", 1).await?;
        anyhow::ensure!(got.len() == before + 2, "partition 1 holds {got:?}");
        Ok(got)
    })
    .await?;
    let tail: BTreeSet<&str> = got[before..].iter().map(String::as_str).collect();
    assert_eq!(tail, BTreeSet::from(["Leader", "None"]));
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_ids_are_unique() -> anyhow::Result<()> {
    let ApiNode { node, mut api, .. } = keyed().await?;
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
    node.shutdown().await;
    Ok(())
}

/// ProduceStream: answers carry request ids; one partition keeps stream order; a bad request
/// fails alone and the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_produce_stream_answers_each_request_and_keeps_partition_order() -> anyhow::Result<()> {
    let ApiNode { node, mut api, .. } = keyed().await?;
    let before = fill(&api, 2, "before-", 3).await?;
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
    let after = api.fetch_all("keyed", 2).await?;
    let expected: Vec<String> = before
        .into_iter()
        .chain((0..30).map(|i| format!("s{i}")))
        .collect();
    assert_eq!(after, expected);
    node.shutdown().await;
    Ok(())
}

/// Fetch start positions: latest (nothing, at the high watermark), a time in the future (the
/// high watermark), a time long past (the first record); a long-poll wait over 30 s is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_starts_at_latest_or_at_a_time() -> anyhow::Result<()> {
    let ApiNode { node, mut api, .. } = keyed().await?;
    fill(&api, 2, "s", 30).await?;
    let offsets = keyed_offsets(&api, 2).await?;
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
    node.shutdown().await;
    Ok(())
}

/// A long poll at the high watermark answers with the record produced while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_with_the_record_produced_while_it_waits() -> anyhow::Result<()> {
    let ApiNode { node, mut api, .. } = keyed().await?;
    fill(&api, 2, "s", 30).await?;
    let hw = keyed_offsets(&api, 2).await?.high_watermark;
    let mut poller = api.broker.clone();
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
    node.shutdown().await;
    Ok(())
}

/// Raw batches: the same records, as stored, for the client to decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_batches_hold_the_records_a_decoded_fetch_returns() -> anyhow::Result<()> {
    let ApiNode { node, mut api, .. } = keyed().await?;
    // Batches of two records: offset 3 is the second record of one.
    for batch in 0..4 {
        fill(&api, 2, &format!("b{batch}-"), 2).await?;
    }
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
    for batch in weir_format::batch::BatchIter::new(raw.batches.clone()) {
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
    node.shutdown().await;
    Ok(())
}

/// Subscribe streams what is committed from its start, then what arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_streams_the_committed_records_then_new_ones() -> anyhow::Result<()> {
    let ApiNode { node, mut api, .. } = keyed().await?;
    fill(&api, 3, "old", 4).await?;
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
    let existing = api.fetch_all("keyed", 3).await?;
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

// ---------------------------------------------------------------------------------------------
// Consumer groups: group `g` on topic `orders` (4 partitions of 10 records each).
// ---------------------------------------------------------------------------------------------

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

/// Group `g` after its first member `a` joined and took every partition.
struct OneMember {
    node: ApiNode,
    /// The answer to the first heartbeat.
    first: HeartbeatResponse,
    a: String,
    /// The answer to a's heartbeat reporting every partition owned.
    taken: HeartbeatResponse,
}

async fn one_member() -> anyhow::Result<OneMember> {
    let node = ApiNode::start().await?;
    node.api.create_topic("orders", 4, &[]).await?;
    for p in 0..4 {
        let records: Vec<String> = (0..10).map(|i| format!("{p}-{i}")).collect();
        node.api.produce_values("orders", p, &records).await?;
    }
    // The first heartbeat creates the offsets topic and its coordinator; retry while it forms.
    let groups = node.api.groups.clone();
    let first = weir_tests::retry_unavailable(
        WAIT,
        "the first heartbeat (the offsets topic forms)",
        || {
            let mut groups = groups.clone();
            async move { groups.heartbeat(heartbeat("g", "", &[])).await }
        },
    )
    .await?;
    let a = first.member_id.clone();
    let taken = node
        .api
        .groups
        .clone()
        .heartbeat(heartbeat("g", &a, &[0, 1, 2, 3]))
        .await?
        .into_inner();
    Ok(OneMember {
        node,
        first,
        a,
        taken,
    })
}

/// Group `g` once a second member `b` joined and each member took its share: two partitions.
struct TwoMembers {
    node: ApiNode,
    first: HeartbeatResponse,
    a: String,
    /// The answer to b's first heartbeat.
    joined: HeartbeatResponse,
    b: String,
    a_share: Vec<u32>,
    /// The answer to a's heartbeat reporting its share owned.
    a_now: HeartbeatResponse,
    b_share: Vec<u32>,
}

async fn two_members() -> anyhow::Result<TwoMembers> {
    let OneMember { node, first, a, .. } = one_member().await?;
    let mut groups = node.api.groups.clone();
    let joined = groups
        .heartbeat(heartbeat("g", "", &[]))
        .await?
        .into_inner();
    let b = joined.member_id.clone();
    let a_share = assigned(
        &groups
            .heartbeat(heartbeat("g", &a, &[0, 1, 2, 3]))
            .await?
            .into_inner(),
    );
    let a_now = groups
        .heartbeat(heartbeat("g", &a, &a_share))
        .await?
        .into_inner();
    let b_share = assigned(
        &groups
            .heartbeat(heartbeat("g", &b, &[]))
            .await?
            .into_inner(),
    );
    groups.heartbeat(heartbeat("g", &b, &b_share)).await?;
    anyhow::ensure!(
        a_share.len() == 2 && b_share.len() == 2,
        "fixture: shares {a_share:?} and {b_share:?} (a_joining_member_gets_its_share_... checks)"
    );
    Ok(TwoMembers {
        node,
        first,
        a,
        joined,
        b,
        a_share,
        a_now,
        b_share,
    })
}

fn commit(member: &str, partition: u32, offset: u64) -> CommitOffsetsRequest {
    CommitOffsetsRequest {
        group: "g".into(),
        member_id: member.into(),
        offsets: vec![PartitionOffset {
            topic: "orders".into(),
            partition,
            offset,
        }],
    }
}

/// Commits: a member commits what it holds (a: offset 7 of its first partition); not what it
/// does not; nobody else while the group is live.
async fn check_commits(group: &mut TwoMembers) -> anyhow::Result<()> {
    let TwoMembers {
        node,
        a,
        a_share,
        b_share,
        ..
    } = group;
    let groups = &mut node.api.groups;
    groups.commit_offsets(commit(a, a_share[0], 7)).await?;
    expect(
        groups.commit_offsets(commit(a, b_share[0], 7)).await,
        Code::FailedPrecondition,
        "not held",
    );
    expect(
        groups.commit_offsets(commit("", a_share[0], 1)).await,
        Code::FailedPrecondition,
        "live members",
    );
    expect(
        groups.commit_offsets(commit("ghost", a_share[0], 1)).await,
        Code::NotFound,
        "unknown member",
    );
    expect(
        groups.commit_offsets(commit(a, 9, 1)).await,
        Code::NotFound,
        "partition 9",
    );
    expect(
        groups
            .commit_offsets(CommitOffsetsRequest {
                offsets: vec![],
                ..commit(a, 0, 0)
            })
            .await,
        Code::InvalidArgument,
        "no offsets",
    );
    Ok(())
}

async fn leave(api: &mut Api, member: &str) -> Result<tonic::Response<()>, tonic::Status> {
    api.groups
        .leave_group(LeaveGroupRequest {
            group: "g".into(),
            member_id: member.into(),
        })
        .await
        .map(|answer| answer.map(drop))
}

fn reset(to: StartFrom, offset: u64) -> ResetOffsetsRequest {
    ResetOffsetsRequest {
        group: "g".into(),
        topic: "orders".into(),
        partitions: vec![],
        to: to as i32,
        offset,
        timestamp_ms: 0,
    }
}

/// (partition, committed offset) of group `g`.
async fn committed(api: &mut Api) -> anyhow::Result<Vec<(u32, u64)>> {
    let fetched = api
        .groups
        .fetch_offsets(FetchOffsetsRequest {
            group: "g".into(),
            topics: vec![],
        })
        .await?
        .into_inner();
    Ok(fetched
        .offsets
        .iter()
        .map(|o| (o.partition, o.offset))
        .collect())
}

/// Both members leave; every offset is reset to 99 (clamped to the high watermark, 10), then
/// partition 1 to the earliest. Returns the committed offsets.
async fn leave_and_reset(group: &mut TwoMembers) -> anyhow::Result<Vec<(u32, u64)>> {
    let api = &mut group.node.api;
    leave(api, &group.a).await?;
    leave(api, &group.b).await?;
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
    committed(api).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_heartbeat_creates_the_offsets_topic_and_assigns_every_partition()
-> anyhow::Result<()> {
    let OneMember {
        mut node,
        first,
        taken,
        ..
    } = one_member().await?;
    assert_eq!(assigned(&first), vec![0, 1, 2, 3]);
    assert!(first.heartbeat_interval_ms > 0);
    let topics = node
        .api
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
    assert_eq!(assigned(&taken), vec![0, 1, 2, 3]);
    node.shutdown().await;
    Ok(())
}

/// A second member joins: it gets its share only once the first releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_member_gets_its_share_once_the_first_releases_it() -> anyhow::Result<()> {
    let TwoMembers {
        node,
        first,
        a,
        joined,
        b,
        a_share,
        a_now,
        b_share,
    } = two_members().await?;
    assert_ne!(a, b);
    assert!(joined.generation > first.generation);
    assert!(assigned(&joined).is_empty(), "a still owns everything");
    assert_eq!(a_share.len(), 2);
    assert_eq!(assigned(&a_now), a_share);
    assert_eq!(b_share.len(), 2);
    let all: BTreeSet<u32> = a_share.iter().chain(&b_share).copied().collect();
    assert_eq!(all, BTreeSet::from([0, 1, 2, 3]));
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_are_taken_only_from_the_member_holding_the_partition() -> anyhow::Result<()> {
    let mut group = two_members().await?;
    check_commits(&mut group).await?;
    group.node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_heartbeats_get_their_documented_statuses() -> anyhow::Result<()> {
    let TwoMembers {
        mut node,
        a,
        a_share,
        ..
    } = two_members().await?;
    let groups = &mut node.api.groups;
    expect(
        groups.heartbeat(heartbeat("g", "ghost", &[])).await,
        Code::NotFound,
        "rejoin",
    );
    expect(
        groups
            .heartbeat(HeartbeatRequest {
                session_timeout_ms: 10,
                ..heartbeat("g", &a, &a_share)
            })
            .await,
        Code::InvalidArgument,
        "session_timeout_ms",
    );
    expect(
        groups
            .heartbeat(HeartbeatRequest {
                topics: vec!["nope".into()],
                ..heartbeat("g", &a, &a_share)
            })
            .await,
        Code::NotFound,
        "unknown topic",
    );
    expect(
        groups.heartbeat(heartbeat("", "", &[])).await,
        Code::InvalidArgument,
        "group name",
    );
    node.shutdown().await;
    Ok(())
}

/// Metrics show the coordinated group: members, committed offsets, requests by result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_groups_members_offsets_and_request_results() -> anyhow::Result<()> {
    let mut group = two_members().await?;
    check_commits(&mut group).await?;
    let metrics = weir_tests::scrape_metrics(group.node.node.metrics_addr()).await?;
    for line in [
        "weir_group_members{group=\"g\"} 2".to_string(),
        format!(
            "weir_group_committed_offset{{group=\"g\",topic=\"orders\",partition=\"{}\"}} 7",
            group.a_share[0]
        ),
        "weir_group_requests_total{rpc=\"commit_offsets\",result=\"FailedPrecondition\"} 2"
            .to_string(),
    ] {
        assert!(metrics.contains(&line), "metrics lack {line:?}:\n{metrics}");
    }
    group.node.shutdown().await;
    Ok(())
}

/// Describe: members, and per partition committed offset, high watermark and lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_shows_members_committed_offsets_and_lag() -> anyhow::Result<()> {
    let mut group = two_members().await?;
    check_commits(&mut group).await?;
    let TwoMembers {
        mut node,
        a,
        a_share,
        b_share,
        ..
    } = group;
    let described = node
        .api
        .groups
        .describe_group(DescribeGroupRequest { group: "g".into() })
        .await?
        .into_inner();
    assert_eq!(described.members.len(), 2);
    assert_eq!(described.state, "stable");
    assert_eq!(described.coordinator, node.node.config().id);
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
        node.api
            .groups
            .describe_group(DescribeGroupRequest {
                group: "nobody".into(),
            })
            .await,
        Code::NotFound,
        "unknown group",
    );
    node.shutdown().await;
    Ok(())
}

/// A member that leaves releases its partitions at once: the other gets them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_leaves_hands_its_partitions_over_at_once() -> anyhow::Result<()> {
    let TwoMembers {
        mut node,
        a,
        b,
        b_share,
        ..
    } = two_members().await?;
    leave(&mut node.api, &a).await?;
    expect(
        leave(&mut node.api, &a).await,
        Code::NotFound,
        "unknown member",
    );
    let b_all = assigned(
        &node
            .api
            .groups
            .heartbeat(heartbeat("g", &b, &b_share))
            .await?
            .into_inner(),
    );
    assert_eq!(b_all, vec![0, 1, 2, 3]);
    node.shutdown().await;
    Ok(())
}

/// Reset needs an empty group; offsets past the high watermark are clamped to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_reset_only_in_an_empty_group() -> anyhow::Result<()> {
    let mut group = two_members().await?;
    check_commits(&mut group).await?;
    expect(
        group
            .node
            .api
            .groups
            .reset_offsets(reset(StartFrom::Earliest, 0))
            .await,
        Code::FailedPrecondition,
        "live members",
    );
    let committed = leave_and_reset(&mut group).await?;
    assert_eq!(committed, vec![(0, 10), (1, 0), (2, 10), (3, 10)]);
    expect(
        group
            .node
            .api
            .groups
            .reset_offsets(ResetOffsetsRequest {
                partitions: vec![8],
                ..reset(StartFrom::Earliest, 0)
            })
            .await,
        Code::NotFound,
        "partition 8",
    );
    group.node.shutdown().await;
    Ok(())
}

/// Listing shows the group, empty once its members left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_groups_shows_a_group_empty_once_its_members_left() -> anyhow::Result<()> {
    let mut group = two_members().await?;
    leave_and_reset(&mut group).await?;
    let listed = group
        .node
        .api
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
    group.node.shutdown().await;
    Ok(())
}

/// Committed offsets survive a restart of the (only) node: they are records of the replicated
/// offsets topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_a_restart_of_the_node() -> anyhow::Result<()> {
    let mut group = two_members().await?;
    check_commits(&mut group).await?;
    let committed = leave_and_reset(&mut group).await?;
    let node = group.node.restart().await?;
    let groups = node.api.groups.clone();
    let request = FetchOffsetsRequest {
        group: "g".into(),
        topics: vec!["orders".into()],
    };
    let again = weir_tests::retry_unavailable(
        WAIT,
        "the committed offsets fetched after the restart",
        || {
            let mut groups = groups.clone();
            let request = request.clone();
            async move { groups.fetch_offsets(request).await }
        },
    )
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
        let node = weir_broker::Node::start(config, None).await?;
        let api = Api::connect(node.local_addr()).await?;
        api.create_topic("relaxed", 1, &[]).await?;
        let answer = api
            .produce_values("relaxed", 0, &["kept".to_string()])
            .await?;
        assert_eq!(answer.base_offset, Some(0), "{durability:?}");
        assert_eq!(api.fetch_all("relaxed", 0).await?, vec!["kept".to_string()]);
        node.shutdown().await;
    }
    Ok(())
}

/// An idempotent produce from structured records (no hand-built batch): the producer id, epoch
/// and first sequence travel as fields; a retry is written once; sequences count records; gaps,
/// fenced epochs and malformed fields get the documented codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_records_carry_producer_fields() -> anyhow::Result<()> {
    let ApiNode { node, mut api, .. } = ApiNode::start().await?;
    api.create_topic("idem", 1, &[]).await?;
    let producer = api
        .broker
        .init_producer(InitProducerRequest {})
        .await?
        .into_inner();
    let request = |epoch: i32, sequence: i32, values: &[&str]| ProduceRequest {
        producer_id: Some(producer.producer_id),
        producer_epoch: epoch,
        base_sequence: sequence,
        ..produce(
            "idem",
            Some(0),
            values.iter().map(|v| record(None, v)).collect(),
        )
    };
    let first = api.produce(request(0, 0, &["a", "b"])).await?;
    assert_eq!(first.base_offset, Some(0));
    // The same request again (a retry after a lost answer): the first write's offsets, no copy.
    let again = api.produce(request(0, 0, &["a", "b"])).await?;
    assert_eq!(again.base_offset, Some(0));
    // Sequences count records: the next request starts at 2.
    let next = api.produce(request(0, 2, &["c"])).await?;
    assert_eq!(next.base_offset, Some(2));
    assert_eq!(api.fetch_all("idem", 0).await?, ["a", "b", "c"]);

    // Ahead of the next expected sequence (3): ABORTED, nothing written.
    expect(
        api.broker.produce(request(0, 9, &["gap"])).await,
        Code::Aborted,
        "3 was expected",
    );
    // A new epoch starts at 0 and fences the old one: FAILED_PRECONDITION, final.
    api.produce(request(1, 0, &["d"])).await?;
    expect(
        api.broker.produce(request(0, 3, &["old"])).await,
        Code::FailedPrecondition,
        "fenced by epoch 1",
    );
    assert_eq!(api.fetch_all("idem", 0).await?, ["a", "b", "c", "d"]);

    // Malformed producer fields.
    let no_partition = ProduceRequest {
        partition: None,
        ..request(1, 1, &["x"])
    };
    expect(
        api.broker.produce(no_partition).await,
        Code::InvalidArgument,
        "needs a partition",
    );
    expect(
        api.broker.produce(request(1, -1, &["x"])).await,
        Code::InvalidArgument,
        "base_sequence -1",
    );
    expect(
        api.broker.produce(request(40_000, 0, &["x"])).await,
        Code::InvalidArgument,
        "producer_epoch 40000",
    );
    let with_batch = ProduceRequest {
        records: Vec::new(),
        batch: Bytes::from_static(b"not a batch"),
        ..request(1, 1, &[])
    };
    expect(
        api.broker.produce(with_batch).await,
        Code::InvalidArgument,
        "producer_id goes with records",
    );
    node.shutdown().await;
    Ok(())
}
