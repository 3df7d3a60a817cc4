//! One node's gRPC health (the standard `grpc.health.v1.Health/Check`), for container health
//! checks and scripts: `weir health` asks this. A node reports SERVING once it has loaded the
//! cluster metadata and can answer every request, and NOT_SERVING while it starts or stops.

use std::time::Duration;

use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::ClientError;

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
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| ClientError::BadAddress {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?
        .connect_timeout(timeout)
        .timeout(timeout);
    let ask = async {
        let channel = endpoint.connect().await.map_err(|e| ClientError::Timeout {
            waited: timeout,
            last: format!("{addr}: cannot connect: {e}"),
        })?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(ClientError::status)
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
