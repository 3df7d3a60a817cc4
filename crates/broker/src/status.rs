//! Errors → gRPC statuses, in one place. The codes are part of the public contract documented in
//! `proto/weir/v1/weir.proto`.

use tonic::{Code, Status};
use weir_controller::{ControllerError, MetadataError};
use weir_raft::GroupError;
use weir_storage::StorageError;

/// Trailer naming the partition leader on FAILED_PRECONDITION: `ID@HOST:PORT`.
pub const LEADER_TRAILER: &str = "weir-leader";

pub(crate) fn not_leader(leader: Option<u64>, addr: Option<&str>) -> Status {
    let mut status = Status::failed_precondition(match (leader, addr) {
        (Some(id), Some(addr)) => format!("not the leader; leader is node {id} at {addr}"),
        _ => "not the leader, and no leader is known yet; retry shortly".to_string(),
    });
    if let (Some(id), Some(addr)) = (leader, addr)
        && let Ok(value) = format!("{id}@{addr}").parse()
    {
        status.metadata_mut().insert(LEADER_TRAILER, value);
    }
    status
}

pub(crate) fn from_group(err: GroupError) -> Status {
    match err {
        GroupError::NotLeader {
            leader,
            leader_addr,
        } => match leader {
            Some(_) => not_leader(leader, leader_addr.as_deref()),
            None => Status::unavailable("the partition has no leader right now; retry shortly"),
        },
        GroupError::Storage(err) => from_storage(err),
        GroupError::Sequence(message) => Status::aborted(message),
        err @ GroupError::Duplicate { .. } => Status::already_exists(err.to_string()),
        GroupError::Raft(message) => Status::unavailable(format!(
            "replication did not complete: {message}; retry shortly"
        )),
        other => Status::internal(other.to_string()),
    }
}

pub(crate) fn from_storage(err: StorageError) -> Status {
    let code = match &err {
        StorageError::OffsetOutOfRange { .. } | StorageError::IndexOutOfRange { .. } => {
            Code::OutOfRange
        }
        StorageError::InvalidBatch(_) | StorageError::BatchTooLarge { .. } => Code::InvalidArgument,
        StorageError::Corrupt { .. } | StorageError::Stopped { .. } => Code::DataLoss,
        StorageError::Closed => Code::Unavailable,
        _ => Code::Internal,
    };
    Status::new(code, err.to_string())
}

pub(crate) fn from_metadata(err: MetadataError) -> Status {
    let code = match &err {
        MetadataError::TopicExists(_) => Code::AlreadyExists,
        MetadataError::UnknownTopic(_) => Code::NotFound,
        MetadataError::UnknownBroker(_)
        | MetadataError::InvalidTopicName { .. }
        | MetadataError::InvalidConfig { .. }
        | MetadataError::UnknownConfig(_)
        | MetadataError::Invalid(_) => Code::InvalidArgument,
        MetadataError::NotEnoughBrokers { .. } => Code::Unavailable,
    };
    Status::new(code, err.to_string())
}

pub(crate) fn from_controller(err: ControllerError) -> Status {
    match err {
        ControllerError::Rejected(err) => from_metadata(err),
        ControllerError::Group(err) => from_group(err),
        ControllerError::BadReply(message) => Status::internal(message),
    }
}
