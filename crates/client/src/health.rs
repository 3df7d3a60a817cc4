//! One node's gRPC health (the standard `grpc.health.v1.Health/Check`), for container health
//! checks and scripts: `weir health` asks this. A node reports SERVING once it has loaded the
//! cluster metadata and can answer every request, and NOT_SERVING while it starts or stops.

use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::ClientError;
use crate::security::Security;

/// What a node said about its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeHealth {
    Serving,
    NotServing,
    /// A status this client does not know (for example UNKNOWN or SERVICE_UNKNOWN).
    Other(i32),
}

/// Asks the node at `addr` (`HOST:PORT`) for its overall health, giving up after `timeout`.
pub async fn check_health(addr: &str, timeout: Duration) -> Result<NodeHealth, ClientError> {
    check_health_with(addr, timeout, &Security::default()).await
}

/// [`check_health`] over TLS when `security` has TLS options (health needs no credentials).
pub async fn check_health_with(
    addr: &str,
    timeout: Duration,
    security: &Security,
) -> Result<NodeHealth, ClientError> {
    security.validate()?;
    let channel = crate::client::connect(addr, security)?;
    let ask = async {
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|status| match crate::client::tls_failure(&status) {
                Some(reason) => ClientError::Tls(format!("connection to {addr} refused: {reason}")),
                None if std::error::Error::source(&status).is_some() => ClientError::Timeout {
                    waited: timeout,
                    last: format!("{addr}: cannot connect: {}", status.message()),
                },
                None => ClientError::status(status),
            })
    };
    let answer = tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| ClientError::Timeout {
            waited: timeout,
            last: format!("{addr}: no answer"),
        })??;
    Ok(match answer.into_inner().status {
        s if s == ServingStatus::Serving as i32 => NodeHealth::Serving,
        s if s == ServingStatus::NotServing as i32 => NodeHealth::NotServing,
        other => NodeHealth::Other(other),
    })
}
