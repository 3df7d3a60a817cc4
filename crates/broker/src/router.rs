//! [`Router`]: where a request is served — topic lookup (asking the controller leader for a topic
//! this node does not know), partition checks, the route to a local replica or to the node to
//! forward to, the partition leader, the controller leader — and the one factory for clients of
//! other nodes' public API ([`node_client`]), all with the one message-size limit of
//! [`weir_format::wire`].
//!
//! Invariants: a request is forwarded at most [`MAX_FORWARD_HOPS`] times (the hop count travels in
//! the [`FORWARDED`] request header); a node never forwards a request to itself; NOT_FOUND for a
//! topic is answered only after the controller leader confirmed it (never an artifact of a
//! lagging replica).
//!
//! The services (`broker`, `admin`, `groups`) are separate types over one `Router`; none of them
//! names another.

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Request, Status};
use weir_controller::{Controller, Metadata, Partitions, TopicRecord};
pub(crate) use weir_format::wire::{FORWARDED_HEADER as FORWARDED, MAX_FORWARD_HOPS};
use weir_format::wire::{MAX_MESSAGE_BYTES, PRINCIPAL_HEADER};
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::broker_client::BrokerClient;
use weir_proto::v1::groups_client::GroupsClient;
use weir_proto::v1::{PartitionInfo, TopicInfo};
use weir_raft::{PeerError, PeerTransport};

use weir_controller::security::Operation;

use crate::auth::{Access, Caller, Resource};
use crate::status::{from_controller, from_group};

/// How long a leader may take to confirm its leadership for a read.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);

/// Routes requests of every service of one node.
#[derive(Debug, Clone)]
pub(crate) struct Router {
    pub(crate) controller: Arc<Controller>,
    pub(crate) partitions: Arc<Partitions>,
    pub(crate) transport: Arc<PeerTransport>,
    /// Authentication and authorization.
    pub(crate) access: Access,
    /// Rate quotas and the retained-bytes limit.
    pub(crate) quotas: crate::quota::Quotas,
}

/// A client of another node's public API.
pub(crate) trait NodeClient: Sized {
    fn over(channel: Channel) -> Self;
}

macro_rules! node_clients {
    ($($client:ident),*) => {$(
        impl NodeClient for $client<Channel> {
            fn over(channel: Channel) -> Self {
                $client::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
            }
        }
    )*};
}
node_clients!(BrokerClient, AdminClient, GroupsClient);

/// A client of the node at `addr` over the transport's shared channel to it.
pub(crate) fn node_client<C: NodeClient>(
    transport: &PeerTransport,
    addr: &str,
) -> Result<C, PeerError> {
    Ok(C::over(transport.channel(addr)?))
}

/// The answer of a forwarded call, as this node passes it on: a status the other node sent stays
/// as it is; one this node's transport made up (the connection to the other node broke before
/// an answer came: UNKNOWN "transport error", INTERNAL or RESOURCE_EXHAUSTED "h2 protocol
/// error") becomes UNAVAILABLE — the client may retry, the outcome is unknown — instead of
/// reaching the client as a final answer of the server.
pub(crate) fn relayed(status: Status) -> Status {
    if std::error::Error::source(&status).is_some() {
        crate::status::unavailable(format!(
            "forwarding to another node failed: {}; retry shortly",
            status.message()
        ))
    } else {
        status
    }
}

/// `request` marked as forwarded once more than `hops` times, naming the caller's principal.
pub(crate) fn forwarded<T>(request: T, hops: &Hops) -> Request<T> {
    let mut request = Request::new(request);
    request.metadata_mut().insert(
        FORWARDED,
        tonic::metadata::MetadataValue::from(hops.count + 1),
    );
    if let Some(principal) = hops.caller.forwarded_principal()
        && let Ok(value) = principal.parse()
    {
        request.metadata_mut().insert(PRINCIPAL_HEADER, value);
    }
    request
}

/// Where a topic's record was found.
pub(crate) enum Found {
    Here(TopicRecord),
    /// Not known here: ask the controller leader at this address.
    AskController(String),
}

/// Where a partition request is served.
pub(crate) enum Route {
    Local(Arc<weir_controller::PartitionReplica>),
    Forward(BrokerClient<Channel>),
}

/// A node's listeners. The internal one serves peers and clients on the nodes' network; the
/// optional external one serves clients that reach the node through another address (a
/// container's published port, a load balancer), and its metadata answers name brokers by their
/// external addresses, as Kafka's advertised listeners do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    Internal,
    External,
    /// The Kafka listener (its metadata answers name Kafka addresses, made by `weir_kafka`).
    Kafka,
}

/// How often a request was forwarded so far, and whose it is (passed on when it is forwarded
/// again).
#[derive(Debug, Clone)]
pub(crate) struct Hops {
    pub(crate) count: u32,
    pub(crate) caller: Caller,
}

pub(crate) fn forward_hops<T>(request: &Request<T>) -> Hops {
    Hops {
        count: request
            .metadata()
            .get(FORWARDED)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        caller: Caller::of(request),
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) fn topic_info(
    metadata: &Metadata,
    topic: &TopicRecord,
    partitions: &Partitions,
) -> TopicInfo {
    let _ = metadata;
    TopicInfo {
        name: topic.name.clone(),
        replication_factor: topic.replication_factor,
        configs: topic
            .config
            .to_pairs()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        internal: topic.internal,
        partitions: topic
            .partitions
            .iter()
            .enumerate()
            .map(|(p, record)| {
                let p = p as u32;
                let leader = partitions
                    .get(&topic.name, p)
                    .filter(|r| r.topic_id == topic.id)
                    .and_then(|r| r.group.leader())
                    .unwrap_or(0);
                PartitionInfo {
                    partition: p,
                    replicas: record.replicas.clone(),
                    leader,
                    reassigning: record.settled_epoch < record.epoch,
                    log_start_offset: 0,
                    high_watermark: 0,
                }
            })
            .collect(),
    }
}

impl Router {
    /// Whether the caller of `request` may do `op` on `resource` (PERMISSION_DENIED naming all
    /// three otherwise; see auth.rs).
    pub(crate) fn authorize<T>(
        &self,
        request: &Request<T>,
        op: Operation,
        resource: Resource<'_>,
    ) -> Result<(), Status> {
        self.access.authorize(&Caller::of(request), op, resource)
    }

    /// Finds a topic. A node that has not loaded its metadata since it started answers
    /// UNAVAILABLE; a topic this node does not know is looked up on the controller leader (a
    /// linearizable read there, or the request is forwarded to it), so NOT_FOUND is never an
    /// artifact of a lagging replica.
    pub(crate) async fn topic(&self, name: &str, hops: &Hops) -> Result<Found, Status> {
        if !self.controller.ready() {
            return Err(crate::status::unavailable(
                "this node is still loading the cluster metadata; retry shortly",
            ));
        }
        if let Some(topic) = self.controller.metadata().topics.get(name) {
            return Ok(Found::Here(topic.clone()));
        }
        if self.controller.is_leader() {
            let latest = self
                .controller
                .latest_metadata()
                .await
                .map_err(from_controller)?;
            return match latest.topics.get(name) {
                Some(topic) => Ok(Found::Here(topic.clone())),
                None => Err(Status::not_found(format!("unknown topic {name:?}"))),
            };
        }
        match self.controller.leader_addr() {
            Some(addr) if hops.count < MAX_FORWARD_HOPS => Ok(Found::AskController(addr)),
            _ => Err(crate::status::unavailable(
                "topic not known here and no controller leader to ask; retry shortly",
            )),
        }
    }

    pub(crate) fn check_partition(topic: &TopicRecord, partition: u32) -> Result<(), Status> {
        if partition as usize >= topic.partitions.len() {
            return Err(Status::not_found(format!(
                "topic {:?} has {} partitions; partition {partition} does not exist",
                topic.name,
                topic.partitions.len()
            )));
        }
        Ok(())
    }

    /// Where a read of `topic`/`partition` is served: the replica on this node (any replica
    /// serves committed records), or another node — the controller leader when the topic is not
    /// known here, else a node hosting the partition — to forward the request to.
    pub(crate) async fn read_route(
        &self,
        topic: &str,
        partition: u32,
        hops: &Hops,
    ) -> Result<Route, Status> {
        let topic = match self.topic(topic, hops).await? {
            Found::Here(topic) => topic,
            Found::AskController(addr) => {
                return Ok(Route::Forward(self.broker_client(&addr, hops)?));
            }
        };
        Self::check_partition(&topic, partition)?;
        match self
            .partitions
            .get(&topic.name, partition)
            .filter(|r| r.topic_id == topic.id)
        {
            Some(replica) => Ok(Route::Local(replica)),
            None => {
                let addr = self.replica_addr(&topic, partition)?;
                Ok(Route::Forward(self.broker_client(&addr, hops)?))
            }
        }
    }

    /// The address of another node hosting `partition` of `topic`. When the only replica is on
    /// this node (its group is still starting), UNAVAILABLE: forwarding to itself would only
    /// come back here.
    pub(crate) fn replica_addr(
        &self,
        topic: &TopicRecord,
        partition: u32,
    ) -> Result<String, Status> {
        let metadata = self.controller.metadata();
        let own = self.controller.node_id();
        topic.partitions[partition as usize]
            .replicas
            .iter()
            .filter(|id| **id != own)
            .find_map(|id| metadata.brokers.get(id).map(|b| b.addr.clone()))
            .ok_or_else(|| {
                crate::status::unavailable("the partition is starting on this node; retry shortly")
            })
    }

    /// Where to send a produce this node cannot serve: the leader if a local replica knows it,
    /// else a node hosting the partition.
    pub(crate) fn produce_target(
        &self,
        topic: &TopicRecord,
        partition: u32,
        hops: &Hops,
    ) -> Result<BrokerClient<Channel>, Status> {
        let local = self
            .partitions
            .get(&topic.name, partition)
            .filter(|r| r.topic_id == topic.id);
        match local {
            Some(replica) => self.leader_client(&replica, hops),
            None => {
                let addr = self.replica_addr(topic, partition)?;
                self.broker_client(&addr, hops)
            }
        }
    }

    /// Whether this node leads the partition, confirmed with a quorum, with its whole log applied
    /// (so its high watermark covers every acknowledged record). `false` means another node
    /// leads (ask it).
    pub(crate) async fn confirmed_leader(
        &self,
        replica: &weir_controller::PartitionReplica,
    ) -> Result<bool, Status> {
        if !replica.group.is_leader() {
            return Ok(false);
        }
        match replica.group.confirm_leader(CONFIRM_TIMEOUT).await {
            Ok(()) => Ok(true),
            Err(weir_raft::GroupError::NotLeader { .. }) => Ok(false),
            Err(err) => Err(from_group(err)),
        }
    }

    /// A client for the leader of a partition this node hosts a replica of.
    pub(crate) fn leader_client(
        &self,
        replica: &weir_controller::PartitionReplica,
        hops: &Hops,
    ) -> Result<BrokerClient<Channel>, Status> {
        let leader = replica
            .group
            .leader()
            .filter(|leader| *leader != replica.group.node_id())
            .ok_or_else(|| {
                crate::status::unavailable("the partition's leadership is changing; retry shortly")
            })?;
        let addr = replica.group.node_addr(leader).ok_or_else(|| {
            crate::status::unavailable("the leader's address is not known yet; retry shortly")
        })?;
        self.broker_client(&addr, hops)
    }

    /// A client of the node at `addr` for a request forwarded there (`hops` forwards so far);
    /// refuses past [`MAX_FORWARD_HOPS`], so a stale route cannot bounce a request around.
    pub(crate) fn client<C: NodeClient>(&self, addr: &str, hops: &Hops) -> Result<C, Status> {
        if hops.count >= MAX_FORWARD_HOPS {
            return Err(crate::status::unavailable(
                "the partition's leader or the group's coordinator moved while the request was forwarded; retry",
            ));
        }
        node_client(&self.transport, addr).map_err(|e| Status::internal(e.to_string()))
    }

    /// [`Router::client`] for the Broker service.
    pub(crate) fn broker_client(
        &self,
        addr: &str,
        hops: &Hops,
    ) -> Result<BrokerClient<Channel>, Status> {
        self.client(addr, hops)
    }

    /// `None` when this node leads the controller; otherwise a client for the leader, to which
    /// admin requests that must run there are forwarded.
    pub(crate) fn controller_leader(
        &self,
        hops: &Hops,
    ) -> Result<Option<AdminClient<Channel>>, Status> {
        if self.controller.is_leader() {
            return Ok(None);
        }
        let addr = self
            .controller
            .leader_addr()
            .filter(|_| hops.count < MAX_FORWARD_HOPS)
            .ok_or_else(|| {
                crate::status::unavailable("no controller leader known; retry shortly")
            })?;
        self.client(&addr, hops).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_forward_is_unavailable_and_a_forwarded_answer_stays_as_sent() {
        let broken = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset",
        )));
        assert_eq!(broken.code(), tonic::Code::Unknown);
        let passed_on = relayed(broken);
        assert_eq!(passed_on.code(), tonic::Code::Unavailable);
        assert!(passed_on.message().contains("forwarding"), "{passed_on:?}");
        let answer = relayed(Status::invalid_argument("bad topic name"));
        assert_eq!(answer.code(), tonic::Code::InvalidArgument);
        assert_eq!(answer.message(), "bad topic name");
    }
}
