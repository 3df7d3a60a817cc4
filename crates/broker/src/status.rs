//! Errors → gRPC statuses, in one place. The codes are part of the public contract documented in
//! `proto/weir/v1/weir.proto`.

use tonic::{Code, Status};
use weir_controller::{ControllerError, MetadataError};
use weir_raft::GroupError;
use weir_storage::StorageError;

/// How long UNAVAILABLE answers ask clients to wait before they retry (`google.rpc.RetryInfo` in
/// the status details, readable by any gRPC client).
pub(crate) const RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(200);
/// The wait asked for when there are not enough brokers (they take longer to come back).
const NOT_ENOUGH_BROKERS_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(2);

/// UNAVAILABLE with a retry hint: `message` plus `RetryInfo { retry_delay }`.
pub(crate) fn unavailable_after(message: impl Into<String>, delay: std::time::Duration) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    Status::with_error_details(
        Code::Unavailable,
        message,
        ErrorDetails::with_retry_info(Some(delay)),
    )
}

/// UNAVAILABLE (leadership changing, a node starting, replication timed out) with the standard
/// retry hint of [`RETRY_DELAY`].
pub(crate) fn unavailable(message: impl Into<String>) -> Status {
    unavailable_after(message, RETRY_DELAY)
}

use weir_format::wire::LEADER_TRAILER;

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
            None => unavailable("the partition has no leader right now; retry shortly"),
        },
        GroupError::Storage(err) => from_storage(err),
        GroupError::Sequence(message) => Status::aborted(message),
        err @ GroupError::Duplicate { .. } => Status::already_exists(err.to_string()),
        GroupError::Raft(message) => unavailable(format!(
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
    if code == Code::Unavailable {
        return unavailable(err.to_string());
    }
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
        MetadataError::NotEnoughBrokers { .. } => {
            return unavailable_after(err.to_string(), NOT_ENOUGH_BROKERS_RETRY_DELAY);
        }
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
