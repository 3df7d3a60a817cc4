//! Errors → gRPC statuses, in one place. The codes, and what each tells a client, are part of
//! the public contract documented at the top of `proto/weir/v1/weir.proto`;
//! [`weir_format::wire::ERROR_CONTRACT`] is the same table in code (the Rust client retries by
//! it), and the tests here hold the two together and check every error variant against it.
//!
//! Every error of the layers below (storage, replication, controller) is a typed variant until it
//! reaches the `from_*` functions here; nothing below knows about gRPC.

use std::time::Duration;

use tonic::{Code, Status};
use weir_controller::{ControllerError, MetadataError};
use weir_format::wire::LEADER_TRAILER;
#[cfg(test)]
use weir_format::wire::{ERROR_CONTRACT, Retry, Written};
use weir_raft::{GroupError, StorageFault};
use weir_storage::StorageError;

/// How long UNAVAILABLE answers ask clients to wait before they retry (`google.rpc.RetryInfo` in
/// the status details, readable by any gRPC client).
pub(crate) const RETRY_DELAY: Duration = Duration::from_millis(200);
/// The wait asked for when there are not enough brokers (they take longer to come back).
const NOT_ENOUGH_BROKERS_RETRY_DELAY: Duration = Duration::from_secs(2);

/// UNAVAILABLE with a retry hint: `message` plus `RetryInfo { retry_delay }`.
pub(crate) fn unavailable_after(message: impl Into<String>, delay: Duration) -> Status {
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

/// FAILED_PRECONDITION naming the leader in the `weir-leader` trailer. (Without a known leader
/// the answer is UNAVAILABLE: FAILED_PRECONDITION without the trailer is final.)
pub(crate) fn not_leader(leader: u64, addr: &str) -> Status {
    let mut status =
        Status::failed_precondition(format!("not the leader; leader is node {leader} at {addr}"));
    match format!("{leader}@{addr}").parse() {
        Ok(value) => {
            status.metadata_mut().insert(LEADER_TRAILER, value);
            status
        }
        Err(_) => unavailable(format!(
            "the leader's address {addr:?} is not a valid header value; retry shortly"
        )),
    }
}

pub(crate) fn from_group(err: GroupError) -> Status {
    let message = err.to_string();
    match err {
        GroupError::NotLeader {
            leader: Some(leader),
            leader_addr: Some(addr),
        } => not_leader(leader, &addr),
        GroupError::NotLeader { .. } => {
            unavailable("the partition has no leader right now; retry shortly")
        }
        GroupError::Storage(err) => from_storage(err),
        GroupError::Halted(fault) => from_fault(&fault, message),
        GroupError::InvalidBatch(_) => Status::invalid_argument(message),
        GroupError::Timeout { .. }
        | GroupError::ShuttingDown
        | GroupError::Forward { .. }
        | GroupError::Replication(_) => unavailable(format!(
            "replication did not complete: {message}; retry shortly"
        )),
        GroupError::OutOfOrderSequence { .. } => Status::aborted(message),
        GroupError::FencedEpoch { .. } => Status::failed_precondition(message),
        GroupError::Duplicate { .. } => Status::already_exists(message),
        GroupError::File(_) | GroupError::Io { .. } | GroupError::Config(_) => {
            Status::internal(message)
        }
    }
}

/// A partition stopped by a storage failure: final for the client, whatever the fault.
fn from_fault(fault: &StorageFault, message: String) -> Status {
    match fault {
        StorageFault::Corrupt(_) => Status::data_loss(message),
        StorageFault::DiskFull(_) => Status::resource_exhausted(message),
        StorageFault::Io(_) => Status::internal(message),
    }
}

pub(crate) fn from_storage(err: StorageError) -> Status {
    let message = err.to_string();
    match &err {
        StorageError::OffsetOutOfRange { .. } | StorageError::IndexOutOfRange { .. } => {
            Status::out_of_range(message)
        }
        StorageError::InvalidBatch(_) | StorageError::BatchTooLarge { .. } => {
            Status::invalid_argument(message)
        }
        // Closed: the replica is stopping; Truncated: a new leader replaced the entry before it
        // was durable. Both transient, the outcome of a write unknown.
        StorageError::Closed | StorageError::Truncated { .. } => unavailable(message),
        _ => from_fault(&StorageFault::of(&err), message),
    }
}

pub(crate) fn from_metadata(err: MetadataError) -> Status {
    let code = match &err {
        MetadataError::TopicExists(_)
        | MetadataError::TokenExists(_)
        | MetadataError::CertMappingExists { .. }
        | MetadataError::TenantPrefixOverlap { .. }
        | MetadataError::PrincipalInOtherTenant { .. } => Code::AlreadyExists,
        MetadataError::UnknownTopic(_)
        | MetadataError::UnknownUser(_)
        | MetadataError::UnknownToken(_)
        | MetadataError::UnknownCertMapping(_)
        | MetadataError::UnknownTenant(_)
        | MetadataError::UnknownQuota(_) => Code::NotFound,
        MetadataError::UnknownBroker(_)
        | MetadataError::InvalidTopicName { .. }
        | MetadataError::InvalidConfig { .. }
        | MetadataError::UnknownConfig(_)
        | MetadataError::ReplicationFactorTooLarge { .. }
        | MetadataError::Invalid(_)
        | MetadataError::InvalidUserName { .. }
        | MetadataError::InvalidQuota { .. }
        | MetadataError::UnknownQuotaSetting(_)
        | MetadataError::InvalidSecurity(_) => Code::InvalidArgument,
        MetadataError::QuotaExceeded { .. } => Code::ResourceExhausted,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    use super::*;

    /// The error table at the top of `weir.proto`: one `// - CODE [retry; written: w]: ...` line
    /// per code.
    fn documented() -> Vec<(i32, Retry, Written)> {
        let proto = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto/weir/v1/weir.proto"),
        )
        .expect("weir.proto is readable");
        let mut rows = Vec::new();
        for line in proto.lines() {
            let Some(rest) = line.strip_prefix("// - ") else {
                continue;
            };
            let Some((name, rest)) = rest.split_once(" [") else {
                continue;
            };
            let Some((tags, _)) = rest.split_once(']') else {
                continue;
            };
            let code = match name {
                "INVALID_ARGUMENT" => Code::InvalidArgument,
                "UNAUTHENTICATED" => Code::Unauthenticated,
                "PERMISSION_DENIED" => Code::PermissionDenied,
                "NOT_FOUND" => Code::NotFound,
                "ALREADY_EXISTS" => Code::AlreadyExists,
                "FAILED_PRECONDITION" => Code::FailedPrecondition,
                "UNAVAILABLE" => Code::Unavailable,
                "OUT_OF_RANGE" => Code::OutOfRange,
                "ABORTED" => Code::Aborted,
                "DATA_LOSS" => Code::DataLoss,
                "RESOURCE_EXHAUSTED" => Code::ResourceExhausted,
                "INTERNAL" => Code::Internal,
                other => panic!("weir.proto documents an unexpected code {other}"),
            };
            let (retry, written) = tags.split_once("; written: ").expect("`retry; written: w`");
            let retry = match retry {
                "retry" => Retry::Yes,
                "retry at the leader" => Retry::AtLeader,
                "final" => Retry::No,
                other => panic!("{name}: unknown retry tag {other:?}"),
            };
            let written = match written {
                "no" => Written::No,
                "unknown" => Written::Unknown,
                "before" => Written::Before,
                other => panic!("{name}: unknown written tag {other:?}"),
            };
            rows.push((code as i32, retry, written));
        }
        rows
    }

    fn contract(code: Code) -> (Retry, Written) {
        weir_format::wire::contract(code as i32)
            .unwrap_or_else(|| panic!("{code:?} is answered but not in the contract"))
    }

    #[test]
    fn the_table_is_what_weir_proto_documents() {
        let documented = documented();
        let codes: BTreeSet<i32> = documented.iter().map(|(c, _, _)| *c).collect();
        assert_eq!(codes.len(), documented.len(), "a code documented twice");
        assert_eq!(documented.len(), ERROR_CONTRACT.len());
        for row in ERROR_CONTRACT {
            assert!(documented.contains(row), "{row:?} differs from weir.proto");
        }
    }

    /// Checks one error's status against the table: its code, and that a retryable variant is
    /// documented as retryable and a final one as final.
    fn check(status: &Status, code: Code, retry: Retry) {
        assert_eq!(status.code(), code, "{status:?}");
        assert_eq!(contract(code).0, retry, "{code:?} in the contract");
    }

    fn fenced() -> GroupError {
        GroupError::FencedEpoch {
            producer_id: 7,
            epoch: 0,
            current: 1,
        }
    }

    #[test]
    fn not_leader_with_a_known_leader_names_it_in_the_trailer() {
        let status = from_group(GroupError::NotLeader {
            leader: Some(2),
            leader_addr: Some("127.0.0.1:9093".into()),
        });
        check(&status, Code::FailedPrecondition, Retry::AtLeader);
        assert_eq!(
            status
                .metadata()
                .get(LEADER_TRAILER)
                .and_then(|v| v.to_str().ok()),
            Some("2@127.0.0.1:9093")
        );
    }

    #[test]
    fn not_leader_without_a_leader_is_unavailable_with_a_retry_hint() {
        use tonic_types::StatusExt;
        let status = from_group(GroupError::NotLeader {
            leader: None,
            leader_addr: None,
        });
        check(&status, Code::Unavailable, Retry::Yes);
        assert!(status.get_details_retry_info().is_some());
    }

    #[test]
    fn a_fenced_epoch_is_final_failed_precondition_without_a_trailer() {
        let status = from_group(fenced());
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.metadata().get(LEADER_TRAILER).is_none());
        assert!(status.message().contains("fenced by epoch 1"), "{status:?}");
    }

    #[test]
    fn an_out_of_order_sequence_is_aborted() {
        let status = from_group(GroupError::OutOfOrderSequence {
            producer_id: 7,
            sequence: 9,
            expected: 5,
        });
        check(&status, Code::Aborted, Retry::Yes);
    }

    #[test]
    fn a_duplicate_is_already_exists_written_before() {
        let status = from_group(GroupError::Duplicate {
            producer_id: 7,
            sequence: 3,
        });
        check(&status, Code::AlreadyExists, Retry::No);
        assert_eq!(contract(Code::AlreadyExists).1, Written::Before);
    }

    #[test]
    fn corrupt_data_is_final_data_loss() {
        let status = from_group(GroupError::Halted(StorageFault::Corrupt("crc".into())));
        check(&status, Code::DataLoss, Retry::No);
        let stopped = from_storage(StorageError::Stopped {
            dir: "/d".into(),
            reason: "crc".into(),
        });
        check(&stopped, Code::DataLoss, Retry::No);
    }

    #[test]
    fn a_full_disk_is_final_resource_exhausted() {
        let status = from_group(GroupError::Halted(StorageFault::DiskFull("x".into())));
        check(&status, Code::ResourceExhausted, Retry::No);
        let io = from_storage(StorageError::Io {
            op: "append",
            path: "/d/0.log".into(),
            source: std::io::Error::from_raw_os_error(28),
        });
        check(&io, Code::ResourceExhausted, Retry::No);
    }

    #[test]
    fn an_io_error_is_final_internal() {
        let status = from_group(GroupError::Halted(StorageFault::Io("EIO".into())));
        check(&status, Code::Internal, Retry::No);
        let io = from_storage(StorageError::Io {
            op: "append",
            path: "/d/0.log".into(),
            source: std::io::Error::from_raw_os_error(5),
        });
        check(&io, Code::Internal, Retry::No);
    }

    #[test]
    fn transient_replication_failures_are_unavailable() {
        for err in [
            GroupError::Timeout {
                what: "replicating".into(),
                within: Duration::from_secs(10),
            },
            GroupError::ShuttingDown,
            GroupError::Forward {
                leader: 2,
                addr: "127.0.0.1:9093".into(),
                reason: "connection refused".into(),
            },
            GroupError::Replication("membership change in progress".into()),
        ] {
            check(&from_group(err), Code::Unavailable, Retry::Yes);
        }
    }

    #[test]
    fn invalid_batches_are_invalid_argument() {
        check(
            &from_group(GroupError::InvalidBatch("crc".into())),
            Code::InvalidArgument,
            Retry::No,
        );
        check(
            &from_storage(StorageError::BatchTooLarge { size: 10, limit: 5 }),
            Code::InvalidArgument,
            Retry::No,
        );
    }

    #[test]
    fn reads_outside_the_log_are_out_of_range() {
        let status = from_storage(StorageError::OffsetOutOfRange {
            requested: 9,
            log_start: 0,
            next_offset: 3,
        });
        check(&status, Code::OutOfRange, Retry::No);
    }

    #[test]
    fn local_setup_failures_are_internal() {
        for err in [
            GroupError::Config("bad".into()),
            GroupError::Io {
                path: "/d".into(),
                source: std::io::Error::from_raw_os_error(5),
            },
            GroupError::File(weir_raft::FileError::from(weir_storage::fs::FsError {
                op: "write",
                path: "/d/raft.meta".into(),
                source: std::io::Error::from_raw_os_error(5),
            })),
        ] {
            check(&from_group(err), Code::Internal, Retry::No);
        }
    }

    /// Every storage error variant, with the code it reaches a client as.
    #[test]
    fn every_storage_error_has_its_code() {
        let io = |errno| std::io::Error::from_raw_os_error(errno);
        let cases = [
            (
                StorageError::Io {
                    op: "append",
                    path: "/d".into(),
                    source: io(5),
                },
                Code::Internal,
            ),
            (
                StorageError::Locked {
                    dir: "/d".into(),
                    lock_file: "/d/lock".into(),
                },
                Code::Internal,
            ),
            (
                StorageError::InvalidBatch(weir_format::batch::CodecError::TrailingBytes(1)),
                Code::InvalidArgument,
            ),
            (
                StorageError::BatchTooLarge { size: 9, limit: 1 },
                Code::InvalidArgument,
            ),
            (
                StorageError::OffsetOutOfRange {
                    requested: 9,
                    log_start: 0,
                    next_offset: 1,
                },
                Code::OutOfRange,
            ),
            (
                StorageError::IndexOutOfRange {
                    requested: 9,
                    first: 0,
                    next: 1,
                },
                Code::OutOfRange,
            ),
            (StorageError::NotBatchBoundary { offset: 3 }, Code::Internal),
            (
                StorageError::TermRegression {
                    term: 1,
                    last_term: 2,
                },
                Code::Internal,
            ),
            (
                StorageError::Corrupt {
                    path: "/d/0.log".into(),
                    position: 0,
                    reason: "crc".into(),
                },
                Code::DataLoss,
            ),
            (
                StorageError::Stopped {
                    dir: "/d".into(),
                    reason: "crc".into(),
                },
                Code::DataLoss,
            ),
            (StorageError::InvalidConfig("x".into()), Code::Internal),
            (StorageError::Truncated { index: 4 }, Code::Unavailable),
            (StorageError::Closed, Code::Unavailable),
        ];
        for (err, code) in cases {
            let status = from_storage(err);
            assert_eq!(status.code(), code, "{status:?}");
            contract(code);
        }
    }

    #[test]
    fn metadata_errors_follow_the_table() {
        let cases = [
            (MetadataError::TopicExists("t".into()), Code::AlreadyExists),
            (MetadataError::UnknownTopic("t".into()), Code::NotFound),
            (MetadataError::Invalid("x".into()), Code::InvalidArgument),
            (MetadataError::UnknownBroker(9), Code::InvalidArgument),
            (
                MetadataError::InvalidTopicName {
                    name: "a b".into(),
                    reason: "space".into(),
                },
                Code::InvalidArgument,
            ),
            (
                MetadataError::InvalidConfig {
                    key: "retention.ms".into(),
                    value: "soon".into(),
                    expected: "ms".into(),
                },
                Code::InvalidArgument,
            ),
            (
                MetadataError::UnknownConfig("x".into()),
                Code::InvalidArgument,
            ),
            (
                MetadataError::ReplicationFactorTooLarge {
                    wanted: 5,
                    brokers: 3,
                },
                Code::InvalidArgument,
            ),
            (
                MetadataError::NotEnoughBrokers {
                    wanted: 3,
                    available: 2,
                },
                Code::Unavailable,
            ),
            (
                MetadataError::InvalidUserName {
                    name: "a b".into(),
                    reason: "space".into(),
                },
                Code::InvalidArgument,
            ),
            (MetadataError::UnknownUser("u".into()), Code::NotFound),
            (MetadataError::UnknownToken("0".into()), Code::NotFound),
            (MetadataError::TokenExists("0".into()), Code::AlreadyExists),
            (
                MetadataError::UnknownCertMapping("cn:x".into()),
                Code::NotFound,
            ),
            (
                MetadataError::CertMappingExists {
                    matcher: "cn:x".into(),
                    user: "u".into(),
                },
                Code::AlreadyExists,
            ),
            (MetadataError::UnknownTenant("t".into()), Code::NotFound),
            (
                MetadataError::TenantPrefixOverlap {
                    tenant: "a".into(),
                    prefix: "a".into(),
                    other: "b".into(),
                    other_prefix: "ab".into(),
                },
                Code::AlreadyExists,
            ),
            (
                MetadataError::PrincipalInOtherTenant {
                    principal: "User:u".into(),
                    tenant: "b".into(),
                },
                Code::AlreadyExists,
            ),
            (MetadataError::UnknownQuota("user:u".into()), Code::NotFound),
            (
                MetadataError::InvalidQuota {
                    key: "partitions".into(),
                    value: "0".into(),
                    expected: "> 0".into(),
                },
                Code::InvalidArgument,
            ),
            (
                MetadataError::UnknownQuotaSetting("x".into()),
                Code::InvalidArgument,
            ),
            (
                MetadataError::InvalidSecurity("x".into()),
                Code::InvalidArgument,
            ),
            (
                MetadataError::QuotaExceeded {
                    entity: "tenant t".into(),
                    limit: "partitions".into(),
                    max: 1,
                    current: 1,
                    adding: 1,
                },
                Code::ResourceExhausted,
            ),
        ];
        for (err, code) in cases {
            let status = from_metadata(err);
            assert_eq!(status.code(), code, "{status:?}");
            contract(code);
        }
        use tonic_types::StatusExt;
        let wait = from_metadata(MetadataError::NotEnoughBrokers {
            wanted: 3,
            available: 2,
        })
        .get_details_retry_info()
        .and_then(|info| info.retry_delay);
        assert_eq!(wait, Some(NOT_ENOUGH_BROKERS_RETRY_DELAY));
    }

    #[test]
    fn a_controller_reply_that_does_not_decode_is_internal() {
        let status = from_controller(ControllerError::BadReply("garbage".into()));
        check(&status, Code::Internal, Retry::No);
        let rejected = from_controller(ControllerError::Rejected(MetadataError::UnknownTopic(
            "t".into(),
        )));
        assert_eq!(rejected.code(), Code::NotFound);
        let group = from_controller(ControllerError::Group(GroupError::ShuttingDown));
        assert_eq!(group.code(), Code::Unavailable);
    }

    #[test]
    fn a_replication_factor_above_the_cluster_names_both_numbers() {
        let status = from_metadata(MetadataError::ReplicationFactorTooLarge {
            wanted: 5,
            brokers: 3,
        });
        assert!(
            status.message().contains("replication factor 5"),
            "{status:?}"
        );
        assert!(status.message().contains("3 broker"), "{status:?}");
        assert_eq!(
            fenced().to_string(),
            "producer 7 epoch 0 is fenced by epoch 1"
        );
    }
}
