//! The peer transport: how a node's Raft groups talk to the same groups on other nodes.
//!
//! [`PeerTransport`] keeps one gRPC channel per peer address, shared by every group (HTTP/2
//! multiplexes their RPCs on one connection). [`GroupNetwork`] is openraft's view of one
//! (group, target) pair. Record batches travel as stored `Bytes`; openraft's own small
//! messages are postcard-encoded.
//!
//! [`LinkFaults`] lets tests drop, delay or cut chosen links (deterministically, from a seed); in
//! production no fault plan is installed.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use openraft::Snapshot;
use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use crate::tls::NodeTls;
use weir_proto::peer::peer_client::PeerClient;
use weir_proto::peer::{AppendEntriesRequest as WireAppend, RaftReply, RaftRequest};

use crate::entry::wire_bytes;
use crate::types::{LogId, NodeId, PeerNode, SnapshotMeta, TypeConfig, Vote};

/// Largest gRPC message between peers: the one limit of the wire contract.
use weir_format::wire::MAX_MESSAGE_BYTES as MAX_PEER_MESSAGE_BYTES;

/// What to do with one message on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkAction {
    Deliver,
    Drop,
    Delay(Duration),
}

/// A fault plan consulted before every message a node sends to a peer (tests only).
pub trait LinkFaults: Send + Sync + Debug + 'static {
    fn on_send(&self, from: NodeId, to: NodeId) -> LinkAction;
}

/// A simple, shared fault plan: cut links (both ways or one way), a fixed delay, and a drop rate
/// drawn from a seeded generator so a failing run can be replayed.
#[derive(Debug, Default)]
pub struct FaultPlan {
    inner: Mutex<FaultState>,
}

#[derive(Debug, Default)]
struct FaultState {
    cut: BTreeSet<(NodeId, NodeId)>,
    delay: Option<Duration>,
    /// Drop one message in `drop_one_in` (0: never).
    drop_one_in: u64,
    rng: u64,
}

impl FaultPlan {
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(FaultState {
                rng: seed | 1,
                ..FaultState::default()
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Cuts `node` off from every node in `others`, both ways.
    pub fn isolate(&self, node: NodeId, others: impl IntoIterator<Item = NodeId>) {
        let mut state = self.state();
        for other in others {
            state.cut.insert((node, other));
            state.cut.insert((other, node));
        }
    }

    /// Cuts the link from `from` to `to` only.
    pub fn cut_one_way(&self, from: NodeId, to: NodeId) {
        self.state().cut.insert((from, to));
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.state().cut.clear();
    }

    pub fn set_delay(&self, delay: Option<Duration>) {
        self.state().delay = delay;
    }

    /// Drops one message in `n` at random (0 turns dropping off).
    pub fn set_drop_one_in(&self, n: u64) {
        self.state().drop_one_in = n;
    }
}

impl LinkFaults for FaultPlan {
    fn on_send(&self, from: NodeId, to: NodeId) -> LinkAction {
        let mut state = self.state();
        if state.cut.contains(&(from, to)) {
            return LinkAction::Drop;
        }
        if state.drop_one_in > 0 {
            // xorshift64: deterministic for a seed.
            let mut x = state.rng;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            state.rng = x;
            if x.is_multiple_of(state.drop_one_in) {
                return LinkAction::Drop;
            }
        }
        match state.delay {
            Some(delay) => LinkAction::Delay(delay),
            None => LinkAction::Deliver,
        }
    }
}

/// Why a message to a peer did not get through.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer address {addr:?} is invalid: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error("link to node {to} is cut (fault injection)")]
    Dropped { to: NodeId },
    #[error("rpc to {addr}: {status}")]
    Rpc { addr: String, status: tonic::Status },
    #[error("message does not encode or decode: {0}")]
    Codec(String),
}

/// One node's connections to its peers, shared by all of its groups.
#[derive(Debug)]
pub struct PeerTransport {
    node_id: NodeId,
    channels: Mutex<HashMap<String, Channel>>,
    /// When each peer last answered an RPC: the node's view of which peers are alive.
    last_reply: Mutex<HashMap<NodeId, std::time::Instant>>,
    faults: Option<Arc<dyn LinkFaults>>,
    /// Mutual TLS to peers (this node's certificate, the cluster CA); plaintext when `None`.
    tls: Option<Arc<NodeTls>>,
}

impl PeerTransport {
    /// A plaintext transport.
    pub fn new(node_id: NodeId, faults: Option<Arc<dyn LinkFaults>>) -> Arc<Self> {
        Self::with_tls(node_id, faults, None)
    }

    /// A transport that connects to peers over mutual TLS when `tls` is given.
    pub fn with_tls(
        node_id: NodeId,
        faults: Option<Arc<dyn LinkFaults>>,
        tls: Option<Arc<NodeTls>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            channels: Mutex::new(HashMap::new()),
            last_reply: Mutex::new(HashMap::new()),
            faults,
            tls,
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// How long ago `node` last answered one of this node's RPCs (`None`: never).
    pub fn last_heard(&self, node: NodeId) -> Option<Duration> {
        self.last_reply
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&node)
            .map(std::time::Instant::elapsed)
    }

    /// The shared channel to `addr` (connects lazily; reconnects on its own).
    pub fn channel(&self, addr: &str) -> Result<Channel, PeerError> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|err| PeerError::BadAddress {
                addr: addr.to_string(),
                reason: err.to_string(),
            })?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channel = match &self.tls {
            None => endpoint.connect_lazy(),
            Some(tls) => {
                // Each connection takes the material current at the time (reloads apply to new
                // connections).
                let tls = Arc::clone(tls);
                let addr = addr.to_string();
                endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                    let config = tls.peer_client_config();
                    let addr = addr.clone();
                    async move {
                        let stream = tokio::time::timeout(
                            Duration::from_secs(2),
                            crate::tls::connect(&addr, config),
                        )
                        .await
                        .map_err(|_| {
                            std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                format!("TLS connection to {addr} took over 2 s"),
                            )
                        })??;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                }))
            }
        };
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    fn client(&self, addr: &str) -> Result<PeerClient<Channel>, PeerError> {
        Ok(PeerClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES))
    }

    async fn apply_faults(&self, to: NodeId) -> Result<(), PeerError> {
        let Some(faults) = &self.faults else {
            return Ok(());
        };
        match faults.on_send(self.node_id, to) {
            LinkAction::Deliver => Ok(()),
            LinkAction::Drop => Err(PeerError::Dropped { to }),
            LinkAction::Delay(delay) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
        }
    }

    async fn call<F, Fut>(
        &self,
        to: NodeId,
        addr: &str,
        timeout: Duration,
        rpc: F,
    ) -> Result<Bytes, PeerError>
    where
        F: FnOnce(PeerClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftReply>, tonic::Status>>,
    {
        let client = self.client(addr)?;
        self.exchange(to, addr, timeout, rpc(client))
            .await
            .map(|reply| reply.into_inner().body)
    }

    /// Checks that `to` (at `addr`) answers outside Raft traffic: runs `probe` on the channel to
    /// it (through the same link faults as Raft messages) and, when it succeeds within
    /// `timeout`, notes that `to` answered (see [`PeerTransport::last_heard`]). A node that
    /// leads no group `to` is in hears from it only this way.
    pub async fn probe<F, Fut>(
        &self,
        to: NodeId,
        addr: &str,
        timeout: Duration,
        probe: F,
    ) -> Result<(), PeerError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<(), tonic::Status>>,
    {
        let channel = self.channel(addr)?;
        self.exchange(to, addr, timeout, probe(channel)).await
    }

    /// One request to `to` and its answer (`send`, a future not yet polled), both through the
    /// link faults, within `timeout`; an answer notes that `to` was heard from.
    async fn exchange<T>(
        &self,
        to: NodeId,
        addr: &str,
        timeout: Duration,
        send: impl Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T, PeerError> {
        self.apply_faults(to).await?;
        let answer = tokio::time::timeout(timeout, send)
            .await
            .map_err(|_| PeerError::Rpc {
                addr: addr.to_string(),
                status: tonic::Status::deadline_exceeded(format!("no answer in {timeout:?}")),
            })?
            .map_err(|status| PeerError::Rpc {
                addr: addr.to_string(),
                status,
            })?;
        // A reply on a link cut meanwhile is lost too.
        self.apply_faults(to).await?;
        self.heard_from(to);
        Ok(answer)
    }

    fn heard_from(&self, node: NodeId) {
        self.last_reply
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(node, std::time::Instant::now());
    }
}

impl PeerTransport {
    /// Sends a write for `group` to the node at `addr` (which should lead it).
    pub(crate) async fn forward_write(
        &self,
        group: &str,
        to: NodeId,
        addr: &str,
        batch: Bytes,
        timeout: Duration,
    ) -> Result<Result<crate::types::Applied, crate::error::Failure>, PeerError> {
        let request = RaftRequest {
            group: group.to_string(),
            body: batch,
        };
        let bytes = self
            .call(
                to,
                addr,
                timeout,
                |mut c| async move { c.write(request).await },
            )
            .await?;
        decode(&bytes)
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Bytes, PeerError> {
    postcard::to_stdvec(value)
        .map(Bytes::from)
        .map_err(|e| PeerError::Codec(e.to_string()))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PeerError> {
    postcard::from_bytes(bytes).map_err(|e| PeerError::Codec(e.to_string()))
}

/// The header of an AppendEntries request: everything but the entries.
pub(crate) type AppendHeader = (Vote, Option<LogId>, Option<LogId>);
/// The body of an InstallSnapshot request.
pub(crate) type SnapshotRequest = (Vote, SnapshotMeta, Bytes);

/// openraft's network factory for one group.
#[derive(Debug, Clone)]
pub(crate) struct GroupNetworkFactory {
    group: String,
    transport: Arc<PeerTransport>,
}

impl GroupNetworkFactory {
    pub(crate) fn new(group: impl Into<String>, transport: Arc<PeerTransport>) -> Self {
        Self {
            group: group.into(),
            transport,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> GroupNetwork {
        GroupNetwork {
            group: self.group.clone(),
            target,
            addr: node.addr.clone(),
            transport: Arc::clone(&self.transport),
        }
    }
}

/// openraft's link from one group to the same group on `target`.
#[derive(Debug)]
pub(crate) struct GroupNetwork {
    group: String,
    target: NodeId,
    addr: String,
    transport: Arc<PeerTransport>,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, PeerNode, RaftError<NodeId, E>>>;

impl GroupNetwork {
    fn rpc_error<E: std::error::Error>(&self, err: PeerError) -> RPCError<NodeId, PeerNode, E> {
        match err {
            PeerError::Codec(_) | PeerError::BadAddress { .. } => {
                RPCError::Network(NetworkError::new(&err))
            }
            _ => RPCError::Unreachable(Unreachable::new(&err)),
        }
    }

    fn remote<T, E>(&self, reply: Result<Bytes, PeerError>) -> RpcResult<T, E>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let bytes = reply.map_err(|e| self.rpc_error(e))?;
        let result: Result<T, RaftError<NodeId, E>> =
            decode(&bytes).map_err(|e| self.rpc_error(e))?;
        result.map_err(|err| RPCError::RemoteError(RemoteError::new(self.target, err)))
    }
}

impl RaftNetwork<TypeConfig> for GroupNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let header: AppendHeader = (rpc.vote, rpc.prev_log_id, rpc.leader_commit);
        let header = encode(&header).map_err(|e| self.rpc_error(e))?;
        let entries = rpc
            .entries
            .iter()
            .map(wire_bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.rpc_error(PeerError::Codec(e.to_string())))?;
        let request = WireAppend {
            group: self.group.clone(),
            header,
            entries,
        };
        let reply = self
            .transport
            .call(
                self.target,
                &self.addr,
                option.hard_ttl(),
                |mut c| async move { c.append_entries(request).await },
            )
            .await;
        self.remote(reply)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let body = encode(&rpc).map_err(|e| self.rpc_error(e))?;
        let request = RaftRequest {
            group: self.group.clone(),
            body,
        };
        let reply = self
            .transport
            .call(
                self.target,
                &self.addr,
                option.hard_ttl(),
                |mut c| async move { c.vote(request).await },
            )
            .await;
        self.remote(reply)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let streaming = |err: PeerError| match err {
            PeerError::Codec(_) | PeerError::BadAddress { .. } => {
                StreamingError::Network(NetworkError::new(&err))
            }
            _ => StreamingError::Unreachable(Unreachable::new(&err)),
        };
        let body: SnapshotRequest = (vote, snapshot.meta.clone(), snapshot.snapshot.0.clone());
        let body = encode(&body).map_err(streaming)?;
        let request = RaftRequest {
            group: self.group.clone(),
            body,
        };
        let send = self.transport.call(
            self.target,
            &self.addr,
            option.hard_ttl(),
            |mut c| async move { c.install_snapshot(request).await },
        );
        let reply = tokio::select! {
            reply = send => reply,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let bytes = reply.map_err(streaming)?;
        let result: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> =
            decode(&bytes).map_err(streaming)?;
        result.map_err(|fatal| StreamingError::RemoteError(RemoteError::new(self.target, fatal)))
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
