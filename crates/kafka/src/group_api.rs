//! The consumer-group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups.
//!
//! Membership requests are answered only by the group's coordinator (the node leading the
//! group's `__consumer_offsets` partition, the same node that coordinates it for gRPC clients);
//! elsewhere they get NOT_COORDINATOR and the client asks FindCoordinator again. Offsets are
//! committed and fetched through Weir's own group API, so both protocols see the same offsets.

use std::collections::BTreeMap;

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use tonic::{Code, Status};
use weir_proto::v1;

use crate::api::{codes, error_code};
use crate::backend::{Backend, Session};
use crate::groups::{Coordinator, Join};

fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// The Kafka error code for a group-level Weir status.
fn group_error(status: &Status) -> i16 {
    match status.code() {
        Code::PermissionDenied => codes::GROUP_AUTHORIZATION_FAILED,
        Code::InvalidArgument => codes::INVALID_GROUP_ID,
        Code::Unavailable | Code::DeadlineExceeded => codes::COORDINATOR_NOT_AVAILABLE,
        _ => error_code(status),
    }
}

/// NONE when this node coordinates `group` for the session, else the error to answer.
async fn here<B: Backend>(backend: &B, session: &Session, group: &str) -> i16 {
    if let Err(status) = backend.authorize_group(session, group) {
        return group_error(&status);
    }
    match backend.group_coordinator(session, group).await {
        Ok(node) if node == backend.node_id() => codes::NONE,
        Ok(_) => codes::NOT_COORDINATOR,
        Err(status) => group_error(&status),
    }
}

pub async fn find_coordinator<B: Backend>(
    backend: &B,
    session: &Session,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let mut response = FindCoordinatorResponse::default();
    response.node_id = BrokerId(-1);
    if request.key_type != 0 {
        response.error_code = codes::COORDINATOR_NOT_AVAILABLE;
        response.error_message = Some(str_bytes("transactions are not supported"));
        return response;
    }
    let group = request.key.to_string();
    if let Err(status) = backend.authorize_group(session, &group) {
        response.error_code = group_error(&status);
        response.error_message = Some(str_bytes(status.message()));
        return response;
    }
    match backend.group_coordinator(session, &group).await {
        Ok(node) => match backend.kafka_brokers().into_iter().find(|b| b.id == node) {
            Some(broker) => {
                response.node_id = BrokerId(i32::try_from(broker.id).unwrap_or(-1));
                response.host = str_bytes(broker.host);
                response.port = i32::from(broker.port);
            }
            None => {
                response.error_code = codes::COORDINATOR_NOT_AVAILABLE;
                response.error_message = Some(str_bytes(format!(
                    "the coordinator, node {node}, has no Kafka listener"
                )));
            }
        },
        Err(status) => {
            response.error_code = group_error(&status);
            response.error_message = Some(str_bytes(status.message()));
        }
    }
    response
}

pub async fn join_group<B: Backend>(
    backend: &B,
    groups: &Coordinator,
    session: &Session,
    request: JoinGroupRequest,
    version: i16,
) -> JoinGroupResponse {
    let group = request.group_id.0.to_string();
    let code = here(backend, session, &group).await;
    if code != codes::NONE {
        let mut response = JoinGroupResponse::default();
        response.error_code = code;
        response.generation_id = -1;
        response.member_id = request.member_id;
        return response;
    }
    groups
        .join(Join {
            group,
            member_id: request.member_id.to_string(),
            client_id: session.client_id.clone().unwrap_or_default(),
            client_host: format!("/{}", session.peer.ip()),
            session_timeout_ms: request.session_timeout_ms,
            rebalance_timeout_ms: if version == 0 {
                request.session_timeout_ms
            } else {
                request.rebalance_timeout_ms
            },
            protocol_type: request.protocol_type.to_string(),
            protocols: request
                .protocols
                .into_iter()
                .map(|p| (p.name.to_string(), p.metadata))
                .collect(),
            require_known_id: version >= 4,
        })
        .await
}

pub async fn sync_group<B: Backend>(
    backend: &B,
    groups: &Coordinator,
    session: &Session,
    request: SyncGroupRequest,
) -> SyncGroupResponse {
    let group = request.group_id.0.to_string();
    let code = here(backend, session, &group).await;
    if code != codes::NONE {
        let mut response = SyncGroupResponse::default();
        response.error_code = code;
        return response;
    }
    let assignments = request
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    groups
        .sync(
            &group,
            &request.member_id,
            request.generation_id,
            assignments,
        )
        .await
}

pub async fn heartbeat<B: Backend>(
    backend: &B,
    groups: &Coordinator,
    session: &Session,
    request: HeartbeatRequest,
) -> HeartbeatResponse {
    let group = request.group_id.0.to_string();
    let mut response = HeartbeatResponse::default();
    response.error_code = match here(backend, session, &group).await {
        codes::NONE => groups.heartbeat(&group, &request.member_id, request.generation_id),
        code => code,
    };
    response
}

pub async fn leave_group<B: Backend>(
    backend: &B,
    groups: &Coordinator,
    session: &Session,
    request: LeaveGroupRequest,
) -> LeaveGroupResponse {
    let group = request.group_id.0.to_string();
    let mut response = LeaveGroupResponse::default();
    let code = here(backend, session, &group).await;
    if code != codes::NONE {
        response.error_code = code;
        return response;
    }
    if request.members.is_empty() {
        // v0-v2: one member.
        response.error_code = groups.leave(&group, &request.member_id);
    } else {
        for member in request.members {
            let mut answer = MemberResponse::default();
            answer.error_code = groups.leave(&group, &member.member_id);
            answer.member_id = member.member_id;
            answer.group_instance_id = member.group_instance_id;
            response.members.push(answer);
        }
    }
    response
}

pub async fn offset_commit<B: Backend>(
    backend: &B,
    groups: &Coordinator,
    session: &Session,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let group = request.group_id.0.to_string();
    let mut code = here(backend, session, &group).await;
    if code == codes::NONE {
        code = groups.check_commit(
            &group,
            &request.member_id,
            request.generation_id_or_member_epoch,
        );
    }
    let mut offsets = Vec::new();
    for topic in &request.topics {
        for p in &topic.partitions {
            if let (Ok(partition), Ok(offset)) = (
                u32::try_from(p.partition_index),
                u64::try_from(p.committed_offset),
            ) {
                offsets.push(v1::PartitionOffset {
                    topic: topic.name.0.to_string(),
                    partition,
                    offset,
                });
            }
        }
    }
    if code == codes::NONE && !offsets.is_empty() {
        let result = backend
            .commit_offsets(
                session,
                v1::CommitOffsetsRequest {
                    group: group.clone(),
                    member_id: String::new(),
                    offsets,
                },
            )
            .await;
        if let Err(status) = result {
            code = match status.code() {
                Code::PermissionDenied if status.message().contains("group") => {
                    codes::GROUP_AUTHORIZATION_FAILED
                }
                Code::Unavailable => codes::COORDINATOR_NOT_AVAILABLE,
                _ => error_code(&status),
            };
        }
    }
    let mut response = OffsetCommitResponse::default();
    for topic in request.topics {
        let mut answer = OffsetCommitResponseTopic::default();
        answer.name = topic.name;
        answer.partitions = topic
            .partitions
            .iter()
            .map(|p| {
                let mut partition = OffsetCommitResponsePartition::default();
                partition.partition_index = p.partition_index;
                partition.error_code = if p.committed_offset < 0 || p.partition_index < 0 {
                    codes::INVALID_REQUEST
                } else {
                    code
                };
                partition
            })
            .collect();
        response.topics.push(answer);
    }
    response
}

pub async fn offset_fetch<B: Backend>(
    backend: &B,
    session: &Session,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let group = request.group_id.0.to_string();
    let mut response = OffsetFetchResponse::default();
    let code = here(backend, session, &group).await;
    if code != codes::NONE {
        response.error_code = code;
        return response;
    }
    let asked: Option<Vec<(String, Vec<i32>)>> = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let result = backend
        .fetch_offsets(
            session,
            v1::FetchOffsetsRequest {
                group,
                topics: asked
                    .as_ref()
                    .map(|a| a.iter().map(|(t, _)| t.clone()).collect())
                    .unwrap_or_default(),
            },
        )
        .await;
    let committed: BTreeMap<(String, i32), i64> = match result {
        Ok(answer) => answer
            .offsets
            .into_iter()
            .map(|o| {
                (
                    (o.topic, i32::try_from(o.partition).unwrap_or(-1)),
                    i64::try_from(o.offset).unwrap_or(-1),
                )
            })
            .collect(),
        Err(status) => {
            response.error_code = group_error(&status);
            return response;
        }
    };
    let entry = |index: i32, offset: i64| {
        let mut p = OffsetFetchResponsePartition::default();
        p.partition_index = index;
        p.committed_offset = offset;
        p.committed_leader_epoch = -1;
        p.metadata = Some(StrBytes::default());
        p
    };
    match asked {
        Some(asked) => {
            for (topic, partitions) in asked {
                let mut answer = OffsetFetchResponseTopic::default();
                answer.partitions = partitions
                    .iter()
                    .map(|p| {
                        entry(
                            *p,
                            committed.get(&(topic.clone(), *p)).copied().unwrap_or(-1),
                        )
                    })
                    .collect();
                answer.name = TopicName(str_bytes(topic));
                response.topics.push(answer);
            }
        }
        None => {
            let mut by_topic: BTreeMap<String, Vec<OffsetFetchResponsePartition>> = BTreeMap::new();
            for ((topic, p), offset) in committed {
                by_topic.entry(topic).or_default().push(entry(p, offset));
            }
            for (topic, partitions) in by_topic {
                let mut answer = OffsetFetchResponseTopic::default();
                answer.name = TopicName(str_bytes(topic));
                answer.partitions = partitions;
                response.topics.push(answer);
            }
        }
    }
    response
}

pub async fn list_groups<B: Backend>(
    backend: &B,
    groups: &Coordinator,
    session: &Session,
) -> ListGroupsResponse {
    let mut response = ListGroupsResponse::default();
    // Kafka groups with members here, then Weir's groups this node coordinates.
    let mut listed: BTreeMap<String, (String, String)> = groups
        .list()
        .into_iter()
        .map(|(name, kind, state)| (name, (kind, state.as_str().to_string())))
        .collect();
    match backend.list_groups(session).await {
        Ok(answer) => {
            for g in answer.groups {
                if g.coordinator == backend.node_id() && !listed.contains_key(&g.group) {
                    let state = match g.state.as_str() {
                        "stable" => "Stable",
                        "rebalancing" => "PreparingRebalance",
                        _ => "Empty",
                    };
                    listed.insert(g.group, ("consumer".to_string(), state.to_string()));
                }
            }
        }
        Err(status) => response.error_code = group_error(&status),
    }
    for (name, (kind, state)) in listed {
        if backend.authorize_group(session, &name).is_err() {
            continue;
        }
        let mut group = ListedGroup::default();
        group.group_id = GroupId(str_bytes(name));
        group.protocol_type = str_bytes(kind);
        group.group_state = str_bytes(state);
        group.group_type = str_bytes("classic");
        response.groups.push(group);
    }
    response
}

pub async fn describe_groups<B: Backend>(
    backend: &B,
    groups: &Coordinator,
    session: &Session,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut response = DescribeGroupsResponse::default();
    for name in request.groups {
        let group = name.0.to_string();
        let mut described = DescribedGroup::default();
        described.group_id = name;
        described.error_code = here(backend, session, &group).await;
        if described.error_code == codes::NONE {
            match groups.describe(&group) {
                Some(found) => {
                    described.group_state = str_bytes(found.state.as_str());
                    described.protocol_type = str_bytes(found.protocol_type);
                    described.protocol_data = str_bytes(found.protocol);
                    described.members = found
                        .members
                        .into_iter()
                        .map(|(id, client, host, metadata, assignment)| {
                            let mut m = DescribedGroupMember::default();
                            m.member_id = str_bytes(id);
                            m.client_id = str_bytes(client);
                            m.client_host = str_bytes(host);
                            m.member_metadata = metadata;
                            m.member_assignment = assignment;
                            m
                        })
                        .collect();
                }
                None => {
                    // Known to Kafka only by its committed offsets (or not at all): Empty, as
                    // Kafka describes a group without members; Dead when nothing is known.
                    let known = backend
                        .fetch_offsets(
                            session,
                            v1::FetchOffsetsRequest {
                                group: group.clone(),
                                topics: Vec::new(),
                            },
                        )
                        .await
                        .is_ok_and(|o| !o.offsets.is_empty());
                    described.group_state = str_bytes(if known { "Empty" } else { "Dead" });
                    described.protocol_type = str_bytes(if known { "consumer" } else { "" });
                }
            }
        }
        response.groups.push(described);
    }
    response
}

pub async fn delete_groups<B: Backend>(
    backend: &B,
    groups: &Coordinator,
    session: &Session,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut response = DeleteGroupsResponse::default();
    for group_id in request.groups_names {
        let group = group_id.0.to_string();
        let mut result = delete_groups_response::DeletableGroupResult::default();
        result.group_id = group_id;
        result.error_code = match here(backend, session, &group).await {
            codes::NONE if groups.has_members(&group) => codes::NON_EMPTY_GROUP,
            codes::NONE => match backend
                .delete_group(session, v1::DeleteGroupRequest { group })
                .await
            {
                Ok(_) => codes::NONE,
                Err(status) => match status.code() {
                    Code::NotFound => codes::GROUP_ID_NOT_FOUND,
                    Code::FailedPrecondition => codes::NON_EMPTY_GROUP,
                    _ => group_error(&status),
                },
            },
            code => code,
        };
        response.results.push(result);
    }
    response
}
