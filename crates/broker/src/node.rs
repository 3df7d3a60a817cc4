//! [`Node`]: one running Weir node — the peer transport, the controller replica, the partition
//! reconciler and the gRPC server (client API and peer traffic on one address, plus an optional
//! external listener serving the client API to clients outside the nodes' network) — and its
//! orderly shutdown.
//!
//! Start-up: bind the addresses, start serving (peers can reach the controller group at once),
//! open the controller group (forming it on first start of an initial voter), then register this
//! node as a broker — through any controller voter, or by joining a running cluster through
//! `join` or, for a node that is not one of the initial voters in `peers`, through those voters —
//! retrying until the controller accepts it.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tracing::Instrument;
use weir_controller::{
    Controller, ControllerConfig, MetadataCommand, PartitionSettings, Partitions,
};
use weir_format::wire::MAX_MESSAGE_BYTES;
use weir_proto::peer::peer_server::PeerServer;
use weir_proto::peer::usage_server::UsageServer;
use weir_proto::v1::admin_server::AdminServer;
use weir_proto::v1::broker_server::BrokerServer;
use weir_proto::v1::groups_server::GroupsServer;
use weir_raft::tls::NodeTls;
use weir_raft::{GroupRegistry, LinkFaults, PeerNode, PeerService, PeerTransport};

use tonic::service::interceptor::InterceptedService;

use weir_proto::v1::security_server::SecurityServer;

use crate::admin::AdminService;
use crate::audit::{Audit, AuditEvent, AuditFile};
use crate::auth::Access;
use crate::broker::BrokerService;
use crate::config::{ConfigError, NodeConfig};
use crate::groups::{Coordinator, GroupService};
use crate::limits::{CLIENT_MAX_REQUEST_BYTES, NodeLimits};
use crate::listener::Accept;
use crate::metrics::BrokerMetrics;
use crate::quota::{Quotas, Throttled, UsageService};
use crate::router::{Listener, Router};
use crate::security::SecurityService;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create data directory {}: {source}", path.display())]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Controller(#[from] weir_controller::ControllerError),
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    #[error("TLS: {0}")]
    Tls(#[from] weir_raft::tls::TlsError),
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    controller: Arc<Controller>,
    partitions: Arc<Partitions>,
    /// Stops the gRPC servers (internal and external listener).
    stop_server: Option<tokio::sync::watch::Sender<bool>>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    local_addr: std::net::SocketAddr,
    external_addr: Option<std::net::SocketAddr>,
    kafka_addr: Option<std::net::SocketAddr>,
    metrics_addr: Option<std::net::SocketAddr>,
    stop_metrics: Option<oneshot::Sender<()>>,
    health: tonic_health::server::HealthReporter,
}

impl Node {
    /// Starts a node. `faults` injects link faults into peer traffic (tests only).
    pub async fn start(
        config: NodeConfig,
        faults: Option<Arc<dyn LinkFaults>>,
    ) -> Result<Self, NodeError> {
        let span = tracing::info_span!("node", id = config.id);
        Self::start_in_span(config, faults).instrument(span).await
    }

    async fn start_in_span(
        mut config: NodeConfig,
        faults: Option<Arc<dyn LinkFaults>>,
    ) -> Result<Self, NodeError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let listener = bind(&config.addr).await?;
        let local_addr = listener.local_addr().map_err(|source| NodeError::Bind {
            addr: config.addr.clone(),
            source,
        })?;
        if config.advertised_addr.is_none() && config.addr.ends_with(":0") {
            // An ephemeral port (tests): tell others the port actually bound.
            config.advertised_addr = Some(local_addr.to_string());
        }
        let external_listener = match &config.external_addr {
            Some(addr) => {
                let listener = bind(addr).await?;
                if config.external_advertised_addr.is_none()
                    && addr.ends_with(":0")
                    && let Ok(bound) = listener.local_addr()
                {
                    // An ephemeral port (tests), as for `addr`.
                    config.external_advertised_addr = Some(bound.to_string());
                }
                Some(listener)
            }
            None => None,
        };
        let external_addr = external_listener.as_ref().and_then(|l| l.local_addr().ok());
        let kafka_listener = match &config.kafka_addr {
            Some(addr) => {
                let listener = bind(addr).await?;
                if config.kafka_advertised_addr.is_none()
                    && addr.ends_with(":0")
                    && let Ok(bound) = listener.local_addr()
                {
                    // An ephemeral port (tests), as for `addr`.
                    config.kafka_advertised_addr = Some(bound.to_string());
                }
                Some(listener)
            }
            None => None,
        };
        let kafka_addr = kafka_listener.as_ref().and_then(|l| l.local_addr().ok());
        let tls = match config.tls.files() {
            Some(files) => Some(NodeTls::load(files, config.id)?),
            None => None,
        };
        let transport = PeerTransport::with_tls(config.id, faults, tls.clone());
        let registry = GroupRegistry::new();

        // Serve first: peers reach the controller group as soon as it opens.
        let mut voters = config.voters()?;
        if voters.is_empty() && config.join.is_none() {
            voters.insert(config.id, PeerNode::new(config.advertised()));
        }
        let controller_config = ControllerConfig {
            node_id: config.id,
            addr: config.advertised().to_string(),
            rack: config.rack.clone(),
            data_dir: config.data_dir.clone(),
            voters,
            timing: config.timing(),
        };
        let tls_on = tls.is_some();
        let peer_service = InterceptedService::new(
            PeerServer::new(PeerService::new(Arc::clone(&registry)))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            move |request: tonic::Request<()>| nodes_only(tls_on, request),
        );
        let controller =
            Controller::start(&controller_config, Arc::clone(&transport), &registry).await?;
        let partitions = Partitions::new(
            PartitionSettings {
                node_id: config.id,
                data_dir: config.data_dir.clone(),
                timing: config.timing(),
                durability: config.durability,
                retention_check: config.retention_check(),
            },
            Arc::clone(&transport),
            Arc::clone(&registry),
        );
        let metrics = Arc::new(BrokerMetrics::default());
        let limits = NodeLimits::new(
            usize::try_from(config.limits.subscribe_streams).unwrap_or(usize::MAX),
            &metrics,
        );
        let coordinator = Arc::new(Coordinator::default());
        let audit = if config.security.enabled || config.security.audit_log.is_some() {
            Audit::start(AuditFile {
                path: config
                    .security
                    .audit_log
                    .clone()
                    .unwrap_or_else(|| config.data_dir.join("audit.log")),
                max_bytes: config.security.audit_max_bytes,
                keep: config.security.audit_files,
            })
        } else {
            Audit::default()
        };
        let access = Access {
            client_cert_required: config.tls.client_cert_required(),
            enabled: config.security.enabled,
            super_users: Arc::new(config.security.super_users.clone()),
            controller: Arc::clone(&controller),
            audit: audit.clone(),
        };
        let quotas = Quotas::new(Arc::clone(&controller), Arc::clone(&metrics));
        let router = Router {
            controller: Arc::clone(&controller),
            partitions: Arc::clone(&partitions),
            transport: Arc::clone(&transport),
            access,
            quotas: quotas.clone(),
        };
        let services = Services::new(
            &router,
            &metrics,
            Arc::clone(&coordinator),
            Listener::Internal,
            &limits,
        );
        let (stop_metrics, metrics_stopped) = oneshot::channel::<()>();
        let metrics_addr = match &config.metrics_addr {
            Some(addr) => {
                let listener = bind(addr).await?;
                let bound = listener.local_addr().ok();
                tokio::spawn(crate::metrics::serve(
                    listener,
                    Arc::clone(&metrics),
                    Arc::clone(&controller),
                    Arc::clone(&partitions),
                    Arc::clone(&coordinator) as Arc<dyn crate::metrics::GroupSummaries>,
                    metrics_stopped,
                ));
                bound
            }
            None => None,
        };
        // gRPC health: NOT_SERVING until this node has loaded the cluster metadata (then it can
        // answer every request), and again while it shuts down.
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let (stop_server, stopped) = tokio::sync::watch::channel(false);
        let mut servers = Vec::new();
        let idle_timeout = config.limits.idle_timeout();
        if let Some(listener) = external_listener {
            let external =
                Services::new(&router, &metrics, coordinator, Listener::External, &limits);
            let routes = client_api_routes(external, health_service.clone())?;
            let router = crate::limits::server(Listener::External, idle_timeout).add_routes(routes);
            servers.push(tokio::spawn(serve(
                router,
                listener,
                tls.clone(),
                audit.clone(),
                stopped.clone(),
                Accept {
                    which: Listener::External,
                    idle_timeout,
                },
            )));
        }
        if let Some(listener) = kafka_listener {
            let backend = crate::kafka::KafkaBackend {
                node_id: config.id,
                security_enabled: config.security.enabled,
                controller: Arc::clone(&controller),
                broker: services.broker.clone(),
                admin: services.admin.clone(),
                groups: services.groups.clone(),
            };
            servers.push(tokio::spawn(crate::kafka::serve(
                listener,
                backend,
                tls.clone(),
                audit.clone(),
                stopped.clone(),
                Accept {
                    which: Listener::Kafka,
                    idle_timeout,
                },
            )));
        }
        let routes = client_api_routes(services, health_service)?;
        let usage_service = InterceptedService::new(
            UsageServer::new(UsageService {
                partitions: Arc::clone(&partitions),
            }),
            move |request: tonic::Request<()>| nodes_only(tls_on, request),
        );
        let router = crate::limits::server(Listener::Internal, idle_timeout)
            .add_routes(routes)
            .add_service(peer_service)
            .add_service(usage_service);
        servers.push(tokio::spawn(serve(
            router,
            listener,
            tls.clone(),
            audit,
            stopped,
            Accept {
                which: Listener::Internal,
                idle_timeout,
            },
        )));
        let mut tasks = vec![
            tokio::spawn(report_health(health.clone(), Arc::clone(&controller))),
            tokio::spawn(Arc::clone(&partitions).run(Arc::clone(&controller))),
            tokio::spawn(Arc::clone(&controller).run_leader_duties(Duration::from_secs(2))),
            tokio::spawn(register(
                config.clone(),
                Arc::clone(&controller),
                Arc::clone(&transport),
            )),
            tokio::spawn(probe_brokers(
                Arc::clone(&controller),
                Arc::clone(&transport),
            )),
            tokio::spawn(crate::quota::track_usage(
                quotas,
                Arc::clone(&partitions),
                Arc::clone(&transport),
            )),
        ];
        if let Some(tls) = tls {
            tasks.push(tokio::spawn(
                tls.watch(Duration::from_millis(config.tls.reload_ms)),
            ));
        }
        tracing::info!(addr = %local_addr, data_dir = %config.data_dir.display(), tls = tls_on, "node started");
        Ok(Self {
            config,
            controller,
            partitions,
            stop_server: Some(stop_server),
            servers,
            tasks,
            local_addr,
            external_addr,
            kafka_addr,
            metrics_addr,
            stop_metrics: Some(stop_metrics),
            health,
        })
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    /// The address the external listener listens on, if there is one.
    pub fn external_addr(&self) -> Option<std::net::SocketAddr> {
        self.external_addr
    }

    /// The address the Kafka listener listens on, if there is one.
    pub fn kafka_addr(&self) -> Option<std::net::SocketAddr> {
        self.kafka_addr
    }

    /// The address the metrics endpoint listens on, if enabled.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    pub fn partitions(&self) -> &Arc<Partitions> {
        &self.partitions
    }

    /// Stops serving, stops every group (files stay; everything acknowledged is on disk).
    pub async fn shutdown(mut self) {
        tracing::info!(node = self.config.id, "node shutting down");
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(true);
        }
        if let Some(stop) = self.stop_metrics.take() {
            let _ = stop.send(());
        }
        // In-flight requests get a moment; streams that never end do not hold us up.
        let servers = futures::future::join_all(self.servers.drain(..));
        if tokio::time::timeout(Duration::from_secs(3), servers)
            .await
            .is_err()
        {
            tracing::warn!("gRPC server did not stop within 3 s");
        }
        self.partitions.shutdown().await;
        self.controller.shutdown().await;
        tracing::info!(node = self.config.id, "node stopped");
    }
}

/// Listens on `addr` (`IP:PORT`, or a host name resolved here).
async fn bind(addr: &str) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// The three public services of one listener, over one router.
#[derive(Debug, Clone)]
struct Services {
    broker: BrokerService,
    admin: AdminService,
    groups: GroupService,
    security: SecurityService,
}

impl Services {
    fn new(
        router: &Router,
        metrics: &Arc<BrokerMetrics>,
        coordinator: Arc<Coordinator>,
        listener: Listener,
        limits: &NodeLimits,
    ) -> Self {
        let broker = BrokerService::new(
            router.clone(),
            Arc::clone(metrics),
            listener,
            limits.clone(),
        );
        Self {
            admin: AdminService {
                router: router.clone(),
                reads: broker.reads.clone(),
            },
            groups: GroupService {
                router: router.clone(),
                coordinator,
                metrics: Arc::clone(metrics),
                reads: broker.reads.clone(),
            },
            security: SecurityService {
                router: router.clone(),
            },
            broker,
        }
    }
}

/// The client API (broker, admin, groups), gRPC health and reflection, as served on every
/// listener.
fn client_api_routes<H>(
    services: Services,
    health: tonic_health::pb::health_server::HealthServer<H>,
) -> Result<tonic::service::Routes, NodeError>
where
    H: tonic_health::pb::health_server::Health,
{
    // Reflection in both versions: v1, and v1alpha for the tools that speak only that (Python's
    // grpcio-reflection, older grpcurl builds).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(weir_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| NodeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| NodeError::Reflection(e.to_string()))?;
    // Every call of the client services is authenticated first (auth.rs); health and
    // reflection need no credentials.
    // Broker, Admin and Groups are charged and throttled by the rate quotas inside
    // authentication (quota.rs), so the caller is known.
    // reflection need no credentials. Requests are bounded by CLIENT_MAX_REQUEST_BYTES (the
    // Security service's and health's by tonic's default of 4 MiB); answers by
    // MAX_MESSAGE_BYTES (a fetch of raw batches).
    let access = services.broker.router.access.clone();
    let quotas = services.broker.router.quotas.clone();
    let authenticate = move |request: tonic::Request<()>| access.authenticate(request);
    let mut routes = tonic::service::Routes::builder();
    routes
        .add_service(InterceptedService::new(
            Throttled::new(
                BrokerServer::new(services.broker)
                    .max_decoding_message_size(CLIENT_MAX_REQUEST_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
                quotas.clone(),
            ),
            authenticate.clone(),
        ))
        .add_service(InterceptedService::new(
            Throttled::new(
                AdminServer::new(services.admin)
                    .max_decoding_message_size(CLIENT_MAX_REQUEST_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
                quotas.clone(),
            ),
            authenticate.clone(),
        ))
        .add_service(InterceptedService::new(
            Throttled::new(
                GroupsServer::new(services.groups)
                    .max_decoding_message_size(CLIENT_MAX_REQUEST_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
                quotas,
            ),
            authenticate.clone(),
        ))
        .add_service(InterceptedService::new(
            SecurityServer::new(services.security),
            authenticate.clone(),
        ))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok(routes.routes())
}

/// Peer RPCs (Raft traffic) with TLS on: only from a caller that proved a node certificate.
fn nodes_only(
    tls_on: bool,
    mut request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    if !tls_on {
        return Ok(request);
    }
    let node = request
        .peer_certs()
        .and_then(|certs| certs.first().and_then(weir_raft::tls::node_id_of));
    match node {
        Some(node) => {
            // The peer service checks that Raft messages claim only this node.
            request
                .extensions_mut()
                .insert(weir_raft::tls::PeerIdentity(node));
            Ok(request)
        }
        None => Err(tonic::Status::permission_denied(
            "peer RPCs are for nodes: the caller presented no node certificate",
        )),
    }
}

/// Serves `router` on `listener` until `stop` turns true; over TLS when `tls` is given. The
/// accept loop (listener.rs) closes idle and slow connections.
async fn serve(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    tls: Option<Arc<NodeTls>>,
    audit: Audit,
    mut stop: tokio::sync::watch::Receiver<bool>,
    accept: Accept,
) {
    let stopped = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    let result = match tls {
        None => {
            let incoming = crate::listener::plaintext(listener, accept);
            router.serve_with_incoming_shutdown(incoming, stopped).await
        }
        Some(tls) => {
            let on_failure: crate::listener::OnFailure = Arc::new(move |peer, reason| {
                audit.record(AuditEvent {
                    principal: None,
                    peer: Some(peer),
                    operation: "authenticate",
                    resource: None,
                    result: "denied",
                    detail: Some(format!("TLS handshake failed: {reason}")),
                });
            });
            let incoming = crate::listener::tls(listener, tls, accept, on_failure);
            router.serve_with_incoming_shutdown(incoming, stopped).await
        }
    };
    if let Err(err) = result {
        tracing::error!(error = %err, listener = ?accept.which, "gRPC server failed");
    }
}

/// Reports SERVING (overall and for the client services) once the node has loaded the cluster
/// metadata.
async fn report_health(health: tonic_health::server::HealthReporter, controller: Arc<Controller>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !controller.ready() {
        tick.tick().await;
    }
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    health.set_serving::<BrokerServer<BrokerService>>().await;
    health.set_serving::<AdminServer<AdminService>>().await;
    health.set_serving::<GroupsServer<GroupService>>().await;
    health
        .set_serving::<SecurityServer<SecurityService>>()
        .await;
    tracing::info!("serving: cluster metadata loaded");
}

/// How often a node makes sure it heard from every broker lately.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Keeps this node's view of which brokers are alive ([`Controller::is_alive`]: the `alive` flag
/// of its Metadata answers, `weir cluster status`, `weir_brokers_alive`) current on every node,
/// not only on the controller leader: Raft traffic reaches only the nodes this one leads a group
/// for, so each broker not heard from within the last [`PROBE_EVERY`] gets a gRPC health check
/// on its peer address; any answer counts.
async fn probe_brokers(controller: Arc<Controller>, transport: Arc<PeerTransport>) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let metadata = controller.metadata();
        let probes = metadata
            .brokers
            .values()
            .filter(|broker| broker.id != controller.node_id())
            .filter(|broker| {
                transport
                    .last_heard(broker.id)
                    .is_none_or(|ago| ago >= PROBE_EVERY)
            })
            .map(|broker| {
                let transport = &transport;
                async move {
                    let checked = transport
                        .probe(broker.id, &broker.addr, PROBE_EVERY, |channel| async move {
                            HealthClient::new(channel)
                                .check(HealthCheckRequest::default())
                                .await
                                .map(drop)
                        })
                        .await;
                    if let Err(err) = checked {
                        tracing::debug!(broker = broker.id, error = %err, "broker does not answer");
                    }
                }
            });
        futures::future::join_all(probes).await;
    }
}

/// Registers this node as a broker (or joins the cluster), retrying until it is in the metadata
/// with its current addresses.
async fn register(config: NodeConfig, controller: Arc<Controller>, transport: Arc<PeerTransport>) {
    let addr = config.advertised().to_string();
    let external = config.external_advertised().map(str::to_string);
    // A node that is not one of the initial voters joins a running cluster: through `join`, or
    // else through the voters in `peers` (so one peer list serves every node of, say, a
    // StatefulSet that grows).
    let join_targets: Vec<String> = match &config.join {
        Some(join) => vec![join.clone()],
        None => match config.voters() {
            Ok(voters) if !voters.is_empty() && !voters.contains_key(&config.id) => {
                voters.values().map(|peer| peer.addr.clone()).collect()
            }
            _ => Vec::new(),
        },
    };
    let mut backoff = weir_format::retry::RetryPolicy::BACKGROUND.backoff();
    let mut metadata = controller.watch();
    let mut attempt = 0usize;
    loop {
        let registered = controller
            .metadata()
            .brokers
            .get(&config.id)
            .is_some_and(|b| {
                b.addr == addr && b.external_addr == external && b.rack == config.rack
            });
        if registered {
            tracing::info!(node = config.id, "registered as a broker");
            register_kafka(&config, &controller).await;
            return;
        }
        let result = if join_targets.is_empty() {
            controller
                .propose(MetadataCommand::RegisterBroker {
                    id: config.id,
                    addr: addr.clone(),
                    external_addr: external.clone(),
                    rack: config.rack.clone(),
                })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            let target = &join_targets[attempt % join_targets.len()];
            join_through(target, &config, &transport)
                .await
                .map_err(|err| format!("joining through {target}: {err}"))
        };
        attempt += 1;
        if let Err(err) = result {
            tracing::info!(node = config.id, error = %err, "registration not done yet; retrying");
            tokio::time::sleep(backoff.next_delay(None)).await;
        } else {
            // Wait for this node's metadata to show it (the loop checks), or try again when it
            // does not come in time.
            metadata.mark_unchanged();
            let _ = tokio::time::timeout(backoff.next_delay(None), metadata.changed()).await;
        }
    }
}

/// Records this node's Kafka listener (or its absence) in the metadata, retrying until it is.
async fn register_kafka(config: &NodeConfig, controller: &Controller) {
    let kafka = config.kafka_advertised().map(str::to_string);
    let mut backoff = weir_format::retry::RetryPolicy::BACKGROUND.backoff();
    while controller.metadata().kafka_listeners.get(&config.id) != kafka.as_ref() {
        let command = MetadataCommand::SetKafkaListener {
            id: config.id,
            addr: kafka.clone(),
        };
        match controller.propose(command).await {
            Ok(_) => tracing::info!(node = config.id, kafka = ?kafka, "Kafka listener registered"),
            Err(err) => {
                tracing::info!(node = config.id, error = %err, "Kafka listener not registered yet; retrying");
                tokio::time::sleep(backoff.next_delay(None)).await;
            }
        }
    }
}

async fn join_through(
    join: &str,
    config: &NodeConfig,
    transport: &PeerTransport,
) -> Result<(), String> {
    let mut client: weir_proto::v1::admin_client::AdminClient<tonic::transport::Channel> =
        crate::router::node_client(transport, join).map_err(|e| e.to_string())?;
    client
        .join_cluster(weir_proto::v1::JoinClusterRequest {
            id: config.id,
            address: config.advertised().to_string(),
            rack: config.rack.clone().unwrap_or_default(),
            external_address: config.external_advertised().unwrap_or_default().to_string(),
        })
        .await
        .map(|_| ())
        .map_err(|status| status.message().to_string())
}
