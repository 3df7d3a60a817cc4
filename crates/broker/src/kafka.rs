//! The Kafka listener of a node: accepts connections (plaintext or TLS, as the node's other
//! listeners, with the same idle and handshake bounds) and serves each with `weir_kafka`, whose
//! [`Backend`] this module implements with the node's own services.
//!
//! Invariants: a Kafka request reaches partitions only as the `weir.v1` request it becomes,
//! through the same services (so the same router, forwarding, validation and authorization);
//! the principal of a Kafka connection is its SASL user or mapped client certificate (with
//! security on, `weir_kafka` answers nothing else before one); with security off every call is
//! allowed, as on the gRPC listeners. A session without a principal while security is on would
//! act as `User:ANONYMOUS` (Kafka's name for it), which no ACL names unless an operator adds one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::transport::server::Connected;
use tonic::{Request, Status};
use weir_controller::Controller;
use weir_kafka::backend::QuotaKind;
use weir_kafka::{Backend, KafkaBroker, Session};
use weir_proto::v1;
use weir_proto::v1::admin_server::Admin;
use weir_proto::v1::broker_server::Broker;
use weir_proto::v1::groups_server::Groups;
use weir_raft::tls::NodeTls;

use crate::admin::AdminService;
use crate::audit::{Audit, AuditEvent};
use crate::auth::Resource;
use crate::auth::{Caller, Principal};
use crate::broker::BrokerService;
use crate::groups::GroupService;
use crate::listener::Accept;
use crate::quota::{Kind, Throttle};

/// Kafka's principal for a client that did not authenticate.
pub(crate) const ANONYMOUS: &str = "User:ANONYMOUS";

/// The node, as the Kafka listener sees it.
#[derive(Debug, Clone)]
pub(crate) struct KafkaBackend {
    pub(crate) node_id: u64,
    pub(crate) security_enabled: bool,
    pub(crate) controller: Arc<Controller>,
    pub(crate) broker: BrokerService,
    pub(crate) admin: AdminService,
    pub(crate) groups: GroupService,
}

impl KafkaBackend {
    /// `message` as a request from the session's principal.
    fn caller(&self, session: &Session) -> Caller {
        let principal = if self.security_enabled {
            Principal::User(
                session
                    .principal
                    .clone()
                    .unwrap_or_else(|| ANONYMOUS.to_string()),
            )
        } else {
            Principal::Anonymous
        };
        Caller {
            principal,
            peer: Some(session.peer),
        }
    }

    fn request<T>(&self, session: &Session, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.extensions_mut().insert(self.caller(session));
        request
    }
}

/// Splits `host:port` (the port last, so a bracketed IPv6 host stays whole).
fn host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}

impl Backend for KafkaBackend {
    fn node_id(&self) -> u64 {
        self.node_id
    }

    fn security_enabled(&self) -> bool {
        self.security_enabled
    }

    fn scram_credential(
        &self,
        user: &str,
        mechanism: weir_controller::security::ScramMechanism,
    ) -> Option<weir_controller::security::ScramCredential> {
        self.controller
            .metadata()
            .security
            .scram_credential(user, mechanism)
            .cloned()
    }

    fn audit_refused(&self, session: &Session, mechanism: &str, reason: &str) {
        self.broker.router.access.audit.record(AuditEvent {
            principal: None,
            peer: Some(session.peer),
            operation: "authenticate",
            resource: None,
            result: "denied",
            detail: Some(format!("Kafka {mechanism}: {reason}")),
        });
    }

    fn cluster_id(&self) -> String {
        // Stable for the cluster's life: its controller group's first voters never change name.
        "weir".to_string()
    }

    fn kafka_brokers(&self) -> Vec<KafkaBroker> {
        let metadata = self.controller.metadata();
        metadata
            .kafka_listeners
            .iter()
            .filter_map(|(id, addr)| {
                let (host, port) = host_port(addr)?;
                Some(KafkaBroker {
                    id: *id,
                    host,
                    port,
                    rack: metadata.brokers.get(id).and_then(|b| b.rack.clone()),
                })
            })
            .collect()
    }

    fn charge_request(&self, session: &Session) -> u32 {
        let caller = self.caller(session);
        self.broker
            .router
            .quotas
            .charge_principal(&caller.principal, 0, Kind::Request, 1)
            .map_or(0, |throttle| throttle.millis())
    }

    async fn hold(&self, kind: QuotaKind, ms: u32) {
        let kind = match kind {
            QuotaKind::Request => Kind::Request,
            QuotaKind::Produce => Kind::Produce,
            QuotaKind::Fetch => Kind::Fetch,
        };
        let throttle = Throttle {
            delay: Duration::from_millis(u64::from(ms)),
            kind,
        };
        self.broker.router.quotas.hold(throttle).await;
    }

    async fn metadata(
        &self,
        session: &Session,
        request: v1::MetadataRequest,
    ) -> Result<v1::MetadataResponse, Status> {
        Broker::metadata(&self.broker, self.request(session, request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn produce(
        &self,
        session: &Session,
        request: v1::ProduceRequest,
    ) -> Result<v1::ProduceResponse, Status> {
        Broker::produce(&self.broker, self.request(session, request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn init_producer(&self, session: &Session) -> Result<v1::InitProducerResponse, Status> {
        Broker::init_producer(
            &self.broker,
            self.request(session, v1::InitProducerRequest {}),
        )
        .await
        .map(tonic::Response::into_inner)
    }

    async fn fetch(
        &self,
        session: &Session,
        request: v1::FetchRequest,
    ) -> Result<v1::FetchResponse, Status> {
        Broker::fetch(&self.broker, self.request(session, request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn list_offsets(
        &self,
        session: &Session,
        request: v1::ListOffsetsRequest,
    ) -> Result<v1::ListOffsetsResponse, Status> {
        Broker::list_offsets(&self.broker, self.request(session, request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn create_topic(
        &self,
        session: &Session,
        request: v1::CreateTopicRequest,
    ) -> Result<v1::CreateTopicResponse, Status> {
        Admin::create_topic(&self.admin, self.request(session, request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn describe_topic(
        &self,
        session: &Session,
        request: v1::DescribeTopicRequest,
    ) -> Result<v1::DescribeTopicResponse, Status> {
        Admin::describe_topic(&self.admin, self.request(session, request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn topic_configs(
        &self,
        session: &Session,
        topic: &str,
    ) -> Result<Vec<(String, String)>, Status> {
        let request = v1::DescribeTopicRequest {
            name: topic.to_string(),
        };
        self.admin
            .topic_configs(self.request(session, request))
            .await
    }

    async fn delete_topic(
        &self,
        session: &Session,
        request: v1::DeleteTopicRequest,
    ) -> Result<v1::DeleteTopicResponse, Status> {
        Admin::delete_topic(&self.admin, self.request(session, request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn create_partitions(
        &self,
        session: &Session,
        request: v1::CreatePartitionsRequest,
    ) -> Result<v1::CreatePartitionsResponse, Status> {
        Admin::create_partitions(&self.admin, self.request(session, request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn alter_topic_config(
        &self,
        session: &Session,
        request: v1::AlterTopicConfigRequest,
    ) -> Result<v1::AlterTopicConfigResponse, Status> {
        Admin::alter_topic_config(&self.admin, self.request(session, request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn group_coordinator(&self, _session: &Session, group: &str) -> Result<u64, Status> {
        let partition = self.groups.coordinator_partition(group).await?;
        self.offsets_leader(partition).await
    }

    fn may_describe_topic(&self, session: &Session, topic: &str) -> bool {
        self.broker.router.access.allows(
            &self.caller(session),
            weir_controller::security::Operation::Describe,
            Resource::Topic(topic),
        )
    }

    fn authorize_group(&self, session: &Session, group: &str) -> Result<(), Status> {
        self.broker.router.access.authorize(
            &self.caller(session),
            weir_controller::security::Operation::Read,
            Resource::Group(group),
        )
    }

    async fn commit_offsets(
        &self,
        session: &Session,
        request: v1::CommitOffsetsRequest,
    ) -> Result<v1::CommitOffsetsResponse, Status> {
        Groups::commit_offsets(&self.groups, self.request(session, request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn fetch_offsets(
        &self,
        session: &Session,
        request: v1::FetchOffsetsRequest,
    ) -> Result<v1::FetchOffsetsResponse, Status> {
        Groups::fetch_offsets(&self.groups, self.request(session, request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn list_groups(&self, session: &Session) -> Result<v1::ListGroupsResponse, Status> {
        Groups::list_groups(
            &self.groups,
            self.request(
                session,
                v1::ListGroupsRequest {
                    coordinator_partition: None,
                },
            ),
        )
        .await
        .map(tonic::Response::into_inner)
    }

    async fn delete_group(
        &self,
        session: &Session,
        request: v1::DeleteGroupRequest,
    ) -> Result<v1::DeleteGroupResponse, Status> {
        Groups::delete_group(&self.groups, self.request(session, request))
            .await
            .map(tonic::Response::into_inner)
    }
}

impl KafkaBackend {
    /// The leader of `__consumer_offsets` partition `partition` (asked as the node itself: this
    /// is the node's own routing, not the caller's request).
    async fn offsets_leader(&self, partition: u32) -> Result<u64, Status> {
        let answer = Broker::metadata(
            &self.broker,
            Request::new(v1::MetadataRequest {
                topics: vec![weir_controller::OFFSETS_TOPIC.to_string()],
            }),
        )
        .await?
        .into_inner();
        answer
            .topics
            .first()
            .and_then(|t| t.partitions.iter().find(|p| p.partition == partition))
            .map(|p| p.leader)
            .filter(|leader| *leader != 0)
            .ok_or_else(|| Status::unavailable("the group coordinator is being elected"))
    }
}

/// Serves the Kafka listener until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    backend: KafkaBackend,
    tls: Option<Arc<NodeTls>>,
    audit: Audit,
    mut stop: tokio::sync::watch::Receiver<bool>,
    accept: Accept,
) {
    let backend = Arc::new(weir_kafka::Listener::new(backend));
    let expiry = tokio::spawn(Arc::clone(&backend).run_expiry());
    let _expiry = AbortOnDrop(expiry);
    let stopped = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    tokio::pin!(stopped);
    let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
    match tls {
        None => {
            let mut incoming = crate::listener::plaintext(listener, accept);
            loop {
                let stream = tokio::select! {
                    () = &mut stopped => return,
                    next = incoming.next() => match next {
                        Some(Ok(stream)) => stream,
                        Some(Err(err)) => {
                            tracing::debug!(%err, "kafka accept failed");
                            continue;
                        }
                        None => return,
                    },
                };
                let peer = stream.connect_info().remote_addr().unwrap_or(unknown);
                spawn(stream, peer, None, false, Arc::clone(&backend));
            }
        }
        Some(tls) => {
            let on_failure: crate::listener::OnFailure = Arc::new(move |peer, reason| {
                audit.record(AuditEvent {
                    principal: None,
                    peer: Some(peer),
                    operation: "authenticate",
                    resource: None,
                    result: "denied",
                    detail: Some(format!(
                        "TLS handshake failed on the Kafka listener: {reason}"
                    )),
                });
            });
            let mut incoming = crate::listener::tls(listener, tls, accept, on_failure);
            loop {
                let stream = tokio::select! {
                    () = &mut stopped => return,
                    next = incoming.next() => match next {
                        Some(Ok(stream)) => stream,
                        Some(Err(err)) => {
                            tracing::debug!(%err, "kafka accept failed");
                            continue;
                        }
                        None => return,
                    },
                };
                let info = stream.connect_info();
                let peer = info.get_ref().remote_addr().unwrap_or(unknown);
                // A client certificate mapped to a user authenticates the connection.
                let principal = info.peer_certs().and_then(|certs| {
                    certs
                        .first()
                        .and_then(|c| backend.backend.broker.router.access.cert_principal(c))
                });
                spawn(stream, peer, principal, true, Arc::clone(&backend));
            }
        }
    }
}

/// Serves one connection in a task of its own.
fn spawn<S>(
    stream: S,
    peer: SocketAddr,
    principal: Option<String>,
    tls: bool,
    backend: Arc<weir_kafka::Listener<KafkaBackend>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let session = Session {
            principal,
            peer,
            client_id: None,
            tls,
        };
        if let Err(err) = weir_kafka::serve(stream, backend, session).await {
            tracing::debug!(%peer, %err, "kafka connection closed");
        }
    });
}

/// Aborts a task when dropped (the expiry loop ends with the listener).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
