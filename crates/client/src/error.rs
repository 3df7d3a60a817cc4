//! The one error type of the client. Server answers keep their gRPC status (the codes are the
//! contract documented in `proto/weir/v1/weir.proto`); everything the client decides on its own
//! (bad arguments, a closed producer, a deadline) has its own variant naming the problem.

use std::time::Duration;

use tonic::{Code, Status};

/// Why a call failed (after retries, where they apply).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("no broker address given")]
    NoBrokers,
    #[error("invalid broker address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },
    /// The server's answer; `status.code()` says which kind (see `proto/weir/v1/weir.proto`).
    #[error("{}: {}", status.code(), status.message())]
    Status { status: Status },
    /// Retries did not succeed before the deadline; `last` is the last failure seen.
    #[error("gave up after {waited:?}: {last}")]
    Timeout { waited: Duration, last: String },
    #[error("topic {topic} has {partitions} partitions; partition {partition} does not exist")]
    UnknownPartition {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    /// The producer or consumer was closed (or its background task ended) before the request
    /// was done.
    #[error("{0} is closed")]
    Closed(&'static str),
    /// A call that does not fit the object's state or configuration (for example `commit` on a
    /// consumer outside any group); the message says what.
    #[error("{0}")]
    Usage(String),
    /// Batches from the broker failed their check (CRC, format): data damaged on the way.
    #[error("a fetched batch is damaged: {0}")]
    Corrupt(String),
    /// TLS settings that cannot be used, or a TLS handshake that failed (a node certificate
    /// from another CA, a client certificate the node refused): retrying cannot help.
    #[error("TLS: {0}")]
    Tls(String),
}

impl ClientError {
    /// The gRPC code behind the error, if the server answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Status { status } => Some(status.code()),
            _ => None,
        }
    }

    pub(crate) fn status(status: Status) -> Self {
        Self::Status { status }
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        Self::Status { status }
    }
}
