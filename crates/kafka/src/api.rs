//! Each Kafka API served, translated to Weir's partition and admin API (the [`Backend`]).
//!
//! Errors: every `weir.v1` status becomes the Kafka error code a Kafka client acts on the same
//! way ([`error_code`]): retryable statuses map to retriable Kafka errors (NOT_LEADER_OR_FOLLOWER,
//! LEADER_NOT_AVAILABLE, REQUEST_TIMED_OUT), final ones to final errors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::future::join_all;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::fetch_request::FetchPartition;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use tonic::{Code, Status};
use weir_proto::v1;

use crate::backend::{Backend, Session};
use crate::records::{self, RecordsError};

/// Kafka error codes used here.
pub mod codes {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
    pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
    pub const ILLEGAL_SASL_STATE: i16 = 34;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_CONFIG: i16 = 40;
    pub const INVALID_REQUEST: i16 = 42;
    pub const POLICY_VIOLATION: i16 = 44;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const SASL_AUTHENTICATION_FAILED: i16 = 58;
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
}

/// The Kafka error code for a Weir status (see the module docs).
pub fn error_code(status: &Status) -> i16 {
    match status.code() {
        Code::Ok => codes::NONE,
        Code::NotFound => codes::UNKNOWN_TOPIC_OR_PARTITION,
        Code::AlreadyExists => codes::TOPIC_ALREADY_EXISTS,
        Code::InvalidArgument => codes::INVALID_REQUEST,
        Code::PermissionDenied => codes::TOPIC_AUTHORIZATION_FAILED,
        Code::Unauthenticated => codes::SASL_AUTHENTICATION_FAILED,
        Code::Unavailable => {
            if status
                .metadata()
                .get(weir_format::wire::LEADER_TRAILER)
                .is_some()
            {
                codes::NOT_LEADER_OR_FOLLOWER
            } else {
                codes::LEADER_NOT_AVAILABLE
            }
        }
        Code::DeadlineExceeded | Code::Cancelled => codes::REQUEST_TIMED_OUT,
        Code::ResourceExhausted => codes::POLICY_VIOLATION,
        Code::FailedPrecondition => codes::INVALID_PRODUCER_EPOCH,
        Code::Aborted => codes::OUT_OF_ORDER_SEQUENCE_NUMBER,
        Code::DataLoss => codes::KAFKA_STORAGE_ERROR,
        Code::OutOfRange => codes::OFFSET_OUT_OF_RANGE,
        _ => codes::UNKNOWN_SERVER_ERROR,
    }
}

fn records_error_code(err: &RecordsError) -> i16 {
    match err {
        RecordsError::Corrupt(_) | RecordsError::OldFormat(_) => codes::CORRUPT_MESSAGE,
        RecordsError::UnknownCompression(_) => codes::UNSUPPORTED_COMPRESSION_TYPE,
        RecordsError::TooLarge { .. } => codes::MESSAGE_TOO_LARGE,
        RecordsError::Transactional => codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn broker_id(id: u64) -> BrokerId {
    BrokerId(i32::try_from(id).unwrap_or(-1))
}

/// The largest uncompressed record bytes of one produced batch (Weir's largest topic limit;
/// the topic's own `max.message.bytes` is checked by the node on the converted batch).
pub const MAX_BATCH_BYTES: usize = weir_format::wire::MAX_MESSAGE_BYTES;

pub async fn metadata<B: Backend>(
    backend: &B,
    session: &Session,
    request: MetadataRequest,
) -> MetadataResponse {
    let topics: Vec<String> = request
        .topics
        .as_ref()
        .map(|t| {
            t.iter()
                .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let all = request.topics.is_none();
    let mut response = MetadataResponse::default();
    response.cluster_id = Some(str_bytes(backend.cluster_id()));
    response.brokers = backend
        .kafka_brokers()
        .into_iter()
        .map(|b| {
            let mut broker = MetadataResponseBroker::default();
            broker.node_id = broker_id(b.id);
            broker.host = str_bytes(b.host);
            broker.port = i32::from(b.port);
            broker.rack = b.rack.map(str_bytes);
            broker
        })
        .collect();
    // Every topic the session may describe (a named topic it may not see is unknown to it).
    let answer = backend
        .metadata(session, v1::MetadataRequest { topics: Vec::new() })
        .await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(status) => {
            // The whole request failed: every topic asked carries the error.
            response.controller_id = BrokerId(-1);
            response.topics = topics
                .into_iter()
                .map(|name| {
                    let mut topic = MetadataResponseTopic::default();
                    topic.name = Some(TopicName(str_bytes(name)));
                    topic.error_code = error_code(&status);
                    topic
                })
                .collect();
            return response;
        }
    };
    response.controller_id = if answer.controller == 0 {
        BrokerId(-1)
    } else {
        broker_id(answer.controller)
    };
    let mut found: HashMap<String, v1::TopicInfo> = answer
        .topics
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    let names: Vec<String> = if all {
        let mut names: Vec<String> = found.keys().cloned().collect();
        names.sort();
        names
    } else {
        topics
    };
    for name in names {
        let mut topic = MetadataResponseTopic::default();
        topic.name = Some(TopicName(str_bytes(name.clone())));
        match found.remove(&name) {
            None if !backend.may_describe_topic(session, &name) => {
                topic.error_code = codes::TOPIC_AUTHORIZATION_FAILED;
            }
            None => topic.error_code = codes::UNKNOWN_TOPIC_OR_PARTITION,
            Some(info) => {
                topic.is_internal = info.internal;
                topic.partitions = info
                    .partitions
                    .iter()
                    .map(|p| {
                        let mut partition = MetadataResponsePartition::default();
                        partition.partition_index = i32::try_from(p.partition).unwrap_or(-1);
                        partition.leader_id = if p.leader == 0 {
                            BrokerId(-1)
                        } else {
                            broker_id(p.leader)
                        };
                        partition.error_code = if p.leader == 0 {
                            codes::LEADER_NOT_AVAILABLE
                        } else {
                            codes::NONE
                        };
                        partition.leader_epoch = -1;
                        partition.replica_nodes =
                            p.replicas.iter().map(|r| broker_id(*r)).collect();
                        partition.isr_nodes = partition.replica_nodes.clone();
                        partition
                    })
                    .collect();
            }
        }
        response.topics.push(topic);
    }
    response
}

pub async fn produce<B: Backend>(
    backend: &B,
    session: &Session,
    request: ProduceRequest,
) -> Option<ProduceResponse> {
    let acks = match request.acks {
        -1 => v1::Acks::All,
        1 => v1::Acks::Leader,
        0 => v1::Acks::None,
        _ => v1::Acks::Unspecified,
    };
    let invalid_acks = acks == v1::Acks::Unspecified;
    let now = now_ms();
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_millis(
            u64::try_from(request.timeout_ms.max(1_000)).unwrap_or(30_000),
        );
    let mut response = ProduceResponse::default();
    // The longest throttle the write path reported for any of the request's batches.
    let throttle = &AtomicU32::new(0);
    for topic in request.topic_data {
        let name = topic.name.0.to_string();
        let partitions = topic.partition_data.into_iter().map(|data| {
            let name = name.clone();
            async move {
                let mut answer = PartitionProduceResponse::default();
                answer.index = data.index;
                answer.base_offset = -1;
                answer.log_append_time_ms = -1;
                answer.log_start_offset = -1;
                if invalid_acks {
                    answer.error_code = codes::INVALID_REQUIRED_ACKS;
                    return answer;
                }
                let Ok(partition) = u32::try_from(data.index) else {
                    answer.error_code = codes::UNKNOWN_TOPIC_OR_PARTITION;
                    return answer;
                };
                let batches = match records::from_kafka(
                    data.records.unwrap_or_default(),
                    MAX_BATCH_BYTES,
                    now,
                ) {
                    Ok(batches) => batches,
                    Err(err) => {
                        answer.error_code = records_error_code(&err);
                        answer.error_message = Some(str_bytes(err.to_string()));
                        return answer;
                    }
                };
                for batch in batches {
                    let request = v1::ProduceRequest {
                        topic: name.clone(),
                        partition: Some(partition),
                        acks: acks as i32,
                        batch: batch.batch,
                        ..Default::default()
                    };
                    let result = produce_in_order(
                        backend,
                        session,
                        request,
                        batch.producer.producer_id >= 0,
                        deadline,
                    )
                    .await;
                    match result {
                        Ok(written) => {
                            throttle.fetch_max(written.throttle_time_ms, Ordering::Relaxed);
                            if answer.base_offset < 0 {
                                answer.base_offset = written
                                    .base_offset
                                    .and_then(|o| i64::try_from(o).ok())
                                    .unwrap_or(-1);
                            }
                        }
                        Err(status) => {
                            answer.error_code = error_code(&status);
                            answer.error_message = Some(str_bytes(status.message()));
                            break;
                        }
                    }
                }
                answer
            }
        });
        let mut answer = TopicProduceResponse::default();
        answer.name = topic.name;
        answer.partition_responses = join_all(partitions).await;
        response.responses.push(answer);
    }
    response.throttle_time_ms = clamp_ms(throttle.load(Ordering::Relaxed));
    // acks=0: the client expects no answer at all.
    (request.acks != 0).then_some(response)
}

/// Writes one batch. An idempotent batch that overtook an earlier one of the same producer (a
/// pipelined request that reached the leader first) is refused with ABORTED and sent again once
/// the earlier one is in, until `deadline`; the leader's sequence check keeps the order.
async fn produce_in_order<B: Backend>(
    backend: &B,
    session: &Session,
    request: v1::ProduceRequest,
    idempotent: bool,
    deadline: tokio::time::Instant,
) -> Result<v1::ProduceResponse, Status> {
    let mut backoff = weir_format::retry::RetryPolicy::RESEND.backoff();
    loop {
        match backend.produce(session, request.clone()).await {
            Err(status)
                if idempotent
                    && status.code() == Code::Aborted
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(backoff.next_delay(None)).await;
            }
            result => return result,
        }
    }
}

pub async fn init_producer_id<B: Backend>(
    backend: &B,
    session: &Session,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut response = InitProducerIdResponse::default();
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    if request.transactional_id.is_some() {
        response.error_code = codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
        return response;
    }
    match backend.init_producer(session).await {
        Ok(answer) => {
            response.producer_id = ProducerId(answer.producer_id);
            response.producer_epoch = i16::try_from(answer.producer_epoch).unwrap_or(-1);
        }
        Err(status) => response.error_code = error_code(&status),
    }
    response
}

pub async fn fetch<B: Backend>(
    backend: &B,
    session: &Session,
    request: FetchRequest,
) -> FetchResponse {
    let max_wait = u32::try_from(request.max_wait_ms.clamp(0, 30_000)).unwrap_or(0);
    let mut total_budget = i64::from(request.max_bytes.max(1));
    let mut asked = Vec::new();
    for topic in &request.topics {
        for partition in &topic.partitions {
            asked.push((topic.topic.clone(), partition.clone()));
        }
    }
    // One read per partition, all at once; each waits at most `max_wait` for data. The answer
    // goes when every read has answered, or as soon as one has data (the others then answer
    // what they have at once).
    // The longest throttle the read path reported for any partition.
    let throttle = &AtomicU32::new(0);
    let read = |wait: u32, topic: TopicName, partition: FetchPartition| async move {
        let mut data = PartitionData::default();
        data.partition_index = partition.partition;
        data.high_watermark = -1;
        data.last_stable_offset = -1;
        data.log_start_offset = -1;
        data.preferred_read_replica = BrokerId(-1);
        let (Ok(index), Ok(offset)) = (
            u32::try_from(partition.partition),
            u64::try_from(partition.fetch_offset),
        ) else {
            data.error_code = codes::OFFSET_OUT_OF_RANGE;
            return data;
        };
        let max_bytes = u32::try_from(partition.partition_max_bytes.max(1)).unwrap_or(1 << 20);
        let answer = backend
            .fetch(
                session,
                v1::FetchRequest {
                    topic: topic.0.to_string(),
                    partition: index,
                    offset,
                    max_bytes,
                    max_wait_ms: wait,
                    from: v1::StartFrom::Offset as i32,
                    raw_batches: true,
                    ..Default::default()
                },
            )
            .await;
        match answer {
            Ok(answer) => {
                throttle.fetch_max(answer.throttle_time_ms, Ordering::Relaxed);
                data.high_watermark = i64::try_from(answer.high_watermark).unwrap_or(-1);
                data.last_stable_offset = data.high_watermark;
                data.log_start_offset = i64::try_from(answer.log_start_offset).unwrap_or(-1);
                let mut out = BytesMut::new();
                match records::to_kafka(answer.batches, offset, &mut out) {
                    Ok(_) => data.records = Some(out.freeze()),
                    Err(err) => {
                        tracing::warn!(%err, topic = %topic.0, partition = index, "stored batch not readable");
                        data.error_code = codes::KAFKA_STORAGE_ERROR;
                    }
                }
            }
            Err(status) => data.error_code = error_code(&status),
        }
        data
    };
    let first: Vec<PartitionData> =
        join_all(asked.iter().map(|(t, p)| read(0, t.clone(), p.clone()))).await;
    let has_data =
        |d: &PartitionData| d.records.as_ref().is_some_and(|r| !r.is_empty()) || d.error_code != 0;
    let mut results = first;
    if max_wait > 0 && !results.iter().any(has_data) && !asked.is_empty() {
        // Nothing yet: long-poll every partition; the first with data ends the wait.
        let waits = asked
            .iter()
            .map(|(t, p)| Box::pin(read(max_wait, t.clone(), p.clone())));
        let (data, index, _rest) = futures::future::select_all(waits).await;
        if let Some(slot) = results.get_mut(index) {
            *slot = data;
        }
    }
    let mut response = FetchResponse::default();
    let mut by_topic: Vec<FetchableTopicResponse> = Vec::new();
    for ((topic, _), mut data) in asked.into_iter().zip(results) {
        // The request's byte budget: partitions past it answer empty (their offsets unchanged).
        let size = data.records.as_ref().map_or(0, |r| r.len() as i64);
        if size > total_budget && total_budget < i64::from(request.max_bytes.max(1)) {
            data.records = Some(Bytes::new());
        } else {
            total_budget -= size;
        }
        match by_topic.last_mut() {
            Some(last) if last.topic == topic => last.partitions.push(data),
            _ => {
                let mut entry = FetchableTopicResponse::default();
                entry.topic = topic;
                entry.partitions.push(data);
                by_topic.push(entry);
            }
        }
    }
    response.responses = by_topic;
    response.throttle_time_ms = clamp_ms(throttle.load(Ordering::Relaxed));
    response
}

/// A throttle in milliseconds as Kafka's `throttle_time_ms` (an i32).
fn clamp_ms(ms: u32) -> i32 {
    i32::try_from(ms).unwrap_or(i32::MAX)
}

pub async fn list_offsets<B: Backend>(
    backend: &B,
    session: &Session,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let mut response = ListOffsetsResponse::default();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let answers = topic.partitions.into_iter().map(|p| {
            let name = name.clone();
            async move {
                let mut answer = ListOffsetsPartitionResponse::default();
                answer.partition_index = p.partition_index;
                answer.timestamp = -1;
                answer.offset = -1;
                answer.leader_epoch = -1;
                let Ok(partition) = u32::try_from(p.partition_index) else {
                    answer.error_code = codes::UNKNOWN_TOPIC_OR_PARTITION;
                    return answer;
                };
                // -1 latest, -2 earliest, -3 max timestamp (answered as latest), else a time.
                let by_time = (p.timestamp >= 0).then_some(p.timestamp);
                let result = backend
                    .list_offsets(
                        session,
                        v1::ListOffsetsRequest {
                            topic: name,
                            partition,
                            timestamp_ms: by_time,
                        },
                    )
                    .await;
                match result {
                    Ok(offsets) => {
                        let offset = match p.timestamp {
                            -2 => offsets.log_start_offset,
                            t if t >= 0 => offsets
                                .offset_for_timestamp
                                .unwrap_or(offsets.high_watermark),
                            _ => offsets.high_watermark,
                        };
                        answer.offset = i64::try_from(offset).unwrap_or(-1);
                        if p.timestamp >= 0 {
                            answer.timestamp = p.timestamp;
                        }
                    }
                    Err(status) => answer.error_code = error_code(&status),
                }
                answer
            }
        });
        let mut entry = ListOffsetsTopicResponse::default();
        entry.name = topic.name;
        entry.partitions = join_all(answers).await;
        response.topics.push(entry);
    }
    response
}

pub async fn create_topics<B: Backend>(
    backend: &B,
    session: &Session,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut response = CreateTopicsResponse::default();
    for topic in request.topics {
        let mut result = CreatableTopicResult::default();
        result.name = topic.name.clone();
        result.num_partitions = -1;
        result.replication_factor = -1;
        let partitions = if topic.num_partitions == -1 {
            1
        } else {
            topic.num_partitions
        };
        let replication = if topic.replication_factor == -1 {
            3.min(backend.kafka_brokers().len()).max(1) as i16
        } else {
            topic.replication_factor
        };
        if !topic.assignments.is_empty() {
            result.error_code = codes::INVALID_REQUEST;
            result.error_message = Some(str_bytes(
                "manual replica assignments are not supported: Weir places replicas",
            ));
            response.topics.push(result);
            continue;
        }
        let (Ok(partitions), Ok(replication)) =
            (u32::try_from(partitions), u32::try_from(replication))
        else {
            result.error_code = codes::INVALID_PARTITIONS;
            response.topics.push(result);
            continue;
        };
        if request.validate_only {
            result.num_partitions = i32::try_from(partitions).unwrap_or(-1);
            result.replication_factor = i16::try_from(replication).unwrap_or(-1);
            response.topics.push(result);
            continue;
        }
        let configs = topic
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.to_string(), v.to_string()))
            })
            .collect();
        match backend
            .create_topic(
                session,
                v1::CreateTopicRequest {
                    name: topic.name.0.to_string(),
                    partitions,
                    replication_factor: replication,
                    configs,
                },
            )
            .await
        {
            Ok(_) => {
                result.num_partitions = i32::try_from(partitions).unwrap_or(-1);
                result.replication_factor = i16::try_from(replication).unwrap_or(-1);
            }
            Err(status) => {
                let message = status.message().to_string();
                result.error_code = match status.code() {
                    Code::InvalidArgument if message.contains("replication factor") => {
                        codes::INVALID_REPLICATION_FACTOR
                    }
                    Code::InvalidArgument if message.contains("partitions") => {
                        codes::INVALID_PARTITIONS
                    }
                    Code::InvalidArgument if message.contains("name") => {
                        codes::INVALID_TOPIC_EXCEPTION
                    }
                    Code::InvalidArgument => codes::INVALID_CONFIG,
                    Code::PermissionDenied => codes::TOPIC_AUTHORIZATION_FAILED,
                    _ => error_code(&status),
                };
                result.error_message = Some(str_bytes(message));
            }
        }
        response.topics.push(result);
    }
    response
}

pub async fn delete_topics<B: Backend>(
    backend: &B,
    session: &Session,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let mut names: Vec<TopicName> = request.topic_names;
    names.extend(request.topics.into_iter().filter_map(|t| t.name));
    let mut response = DeleteTopicsResponse::default();
    for name in names {
        let mut result = DeletableTopicResult::default();
        result.name = Some(name.clone());
        if let Err(status) = backend
            .delete_topic(
                session,
                v1::DeleteTopicRequest {
                    name: name.0.to_string(),
                },
            )
            .await
        {
            result.error_code = error_code(&status);
            result.error_message = Some(str_bytes(status.message()));
        }
        response.responses.push(result);
    }
    response
}

pub async fn describe_cluster<B: Backend>(
    backend: &B,
    session: &Session,
) -> DescribeClusterResponse {
    let mut response = DescribeClusterResponse::default();
    response.cluster_id = str_bytes(backend.cluster_id());
    response.endpoint_type = 1;
    response.controller_id = BrokerId(-1);
    if let Ok(answer) = backend
        .metadata(session, v1::MetadataRequest { topics: Vec::new() })
        .await
        && answer.controller != 0
    {
        response.controller_id = broker_id(answer.controller);
    }
    response.brokers = backend
        .kafka_brokers()
        .into_iter()
        .map(|b| {
            let mut broker = DescribeClusterBroker::default();
            broker.broker_id = broker_id(b.id);
            broker.host = str_bytes(b.host);
            broker.port = i32::from(b.port);
            broker.rack = b.rack.map(str_bytes);
            broker
        })
        .collect();
    response
}

/// Kafka's resource type of a topic (DescribeConfigs, IncrementalAlterConfigs).
const TOPIC_RESOURCE: i8 = 2;
/// Kafka's config source of a topic's own setting.
const TOPIC_CONFIG_SOURCE: i8 = 1;
/// Kafka's config source of a setting left at its default.
const DEFAULT_CONFIG_SOURCE: i8 = 5;

pub async fn describe_configs<B: Backend>(
    backend: &B,
    session: &Session,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let mut response = DescribeConfigsResponse::default();
    for resource in request.resources {
        let mut result = DescribeConfigsResult::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        if resource.resource_type != TOPIC_RESOURCE {
            // Brokers have no settings to show over Kafka: Weir's node settings are its own.
            response.results.push(result);
            continue;
        }
        let wanted: Option<Vec<String>> = resource
            .configuration_keys
            .map(|keys| keys.iter().map(ToString::to_string).collect());
        match backend
            .topic_configs(session, resource.resource_name.as_str())
            .await
        {
            Ok(mut configs) => {
                configs.sort();
                // A value equal to the default is shown as the default (Kafka's clients list
                // only the others as the topic's own, and carry them over in AlterConfigs).
                let defaults = weir_controller::TopicConfig::default().to_pairs();
                result.configs = configs
                    .into_iter()
                    .filter(|(k, _)| wanted.as_ref().is_none_or(|w| w.contains(k)))
                    .map(|(name, value)| {
                        let mut entry = DescribeConfigsResourceResult::default();
                        let default = defaults.iter().any(|(k, v)| *k == name && *v == value);
                        entry.config_source = if default {
                            DEFAULT_CONFIG_SOURCE
                        } else {
                            TOPIC_CONFIG_SOURCE
                        };
                        entry.name = str_bytes(name);
                        entry.value = Some(str_bytes(value));
                        entry
                    })
                    .collect();
            }
            Err(status) => {
                result.error_code = error_code(&status);
                result.error_message = Some(str_bytes(status.message()));
            }
        }
        response.results.push(result);
    }
    response
}

/// The Kafka error code for a failed topic change (CreatePartitions, the AlterConfigs).
fn topic_change_error(status: &Status, invalid: i16) -> i16 {
    match status.code() {
        Code::InvalidArgument => invalid,
        Code::PermissionDenied => codes::TOPIC_AUTHORIZATION_FAILED,
        _ => error_code(status),
    }
}

pub async fn create_partitions<B: Backend>(
    backend: &B,
    session: &Session,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut response = CreatePartitionsResponse::default();
    for topic in request.topics {
        let mut result = create_partitions_response::CreatePartitionsTopicResult::default();
        result.name = topic.name.clone();
        let count = u32::try_from(topic.count);
        let outcome = match (&topic.assignments, count) {
            (Some(_), _) => Err((
                codes::INVALID_REQUEST,
                "manual replica assignments are not supported: Weir places replicas".to_string(),
            )),
            (None, Err(_)) => Err((
                codes::INVALID_PARTITIONS,
                format!("partition count {} must be positive", topic.count),
            )),
            (None, Ok(count)) => backend
                .create_partitions(
                    session,
                    v1::CreatePartitionsRequest {
                        topic: topic.name.0.to_string(),
                        partitions: count,
                        validate_only: request.validate_only,
                    },
                )
                .await
                .map(|_| ())
                .map_err(|status| {
                    (
                        topic_change_error(&status, codes::INVALID_PARTITIONS),
                        status.message().to_string(),
                    )
                }),
        };
        if let Err((code, message)) = outcome {
            result.error_code = code;
            result.error_message = Some(str_bytes(message));
        }
        response.results.push(result);
    }
    response
}

/// One topic's settings change for [`alter_topic`]: the settings to set and to reset.
struct TopicChange {
    set: HashMap<String, String>,
    reset: Vec<String>,
}

/// Applies a change to one resource of IncrementalAlterConfigs or AlterConfigs; Err: the Kafka
/// error code and message.
async fn alter_topic<B: Backend>(
    backend: &B,
    session: &Session,
    resource_type: i8,
    name: &str,
    change: Result<TopicChange, String>,
    validate_only: bool,
) -> Result<(), (i16, String)> {
    if resource_type != TOPIC_RESOURCE {
        return Err((
            codes::INVALID_REQUEST,
            "only topic settings can be changed over Kafka (a node's settings are its own)".into(),
        ));
    }
    let change = change.map_err(|message| (codes::INVALID_CONFIG, message))?;
    backend
        .alter_topic_config(
            session,
            v1::AlterTopicConfigRequest {
                topic: name.to_string(),
                set: change.set,
                reset: change.reset,
                validate_only,
            },
        )
        .await
        .map(|_| ())
        .map_err(|status| {
            (
                topic_change_error(&status, codes::INVALID_CONFIG),
                status.message().to_string(),
            )
        })
}

/// Kafka's IncrementalAlterConfigs operations.
const CONFIG_SET: i8 = 0;
const CONFIG_DELETE: i8 = 1;

pub async fn incremental_alter_configs<B: Backend>(
    backend: &B,
    session: &Session,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut response = IncrementalAlterConfigsResponse::default();
    for resource in request.resources {
        let mut change = TopicChange {
            set: HashMap::new(),
            reset: Vec::new(),
        };
        let mut problem = None;
        for config in &resource.configs {
            match (config.config_operation, &config.value) {
                (CONFIG_SET, Some(value)) => {
                    change
                        .set
                        .insert(config.name.to_string(), value.to_string());
                }
                (CONFIG_SET, None) => {
                    problem = Some(format!("SET of {} without a value", config.name));
                }
                (CONFIG_DELETE, _) => change.reset.push(config.name.to_string()),
                (op, _) => {
                    problem = Some(format!(
                        "operation {op} on {}: APPEND and SUBTRACT apply to list settings, and Weir's topic settings are single values",
                        config.name
                    ));
                }
            }
        }
        let change = match problem {
            Some(message) => Err(message),
            None => Ok(change),
        };
        let mut result =
            incremental_alter_configs_response::AlterConfigsResourceResponse::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        if let Err((code, message)) = alter_topic(
            backend,
            session,
            resource.resource_type,
            &resource.resource_name,
            change,
            request.validate_only,
        )
        .await
        {
            result.error_code = code;
            result.error_message = Some(str_bytes(message));
        }
        response.responses.push(result);
    }
    response
}

/// AlterConfigs (the older, whole-set form): the settings given are set, every other one goes
/// back to its default.
pub async fn alter_configs<B: Backend>(
    backend: &B,
    session: &Session,
    request: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let mut response = AlterConfigsResponse::default();
    for resource in request.resources {
        let mut set = HashMap::new();
        let mut problem = None;
        for config in &resource.configs {
            match &config.value {
                Some(value) => {
                    set.insert(config.name.to_string(), value.to_string());
                }
                None => problem = Some(format!("{} without a value", config.name)),
            }
        }
        let reset = weir_controller::TopicConfig::default()
            .to_pairs()
            .into_iter()
            .map(|(name, _)| name.to_string())
            .filter(|name| !set.contains_key(name))
            .collect();
        let change = match problem {
            Some(message) => Err(message),
            None => Ok(TopicChange { set, reset }),
        };
        let mut result = alter_configs_response::AlterConfigsResourceResponse::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        if let Err((code, message)) = alter_topic(
            backend,
            session,
            resource.resource_type,
            &resource.resource_name,
            change,
            request.validate_only,
        )
        .await
        {
            result.error_code = code;
            result.error_message = Some(str_bytes(message));
        }
        response.responses.push(result);
    }
    response
}
