//! What the listener needs of the node it runs in: Weir's own partition and admin API (the
//! messages of `weir.v1`, answered by the same services as gRPC, with the same routing,
//! authorization and quotas) and the cluster facts only Kafka asks for.
//!
//! The node implements [`Backend`]; this crate never sees its internals. Every call names the
//! [`Session`] it is made for, whose principal the node authorizes as it would a gRPC caller's.

use std::future::Future;
use std::net::SocketAddr;

use tonic::Status;
use weir_proto::v1;

/// Who is on the other end of one Kafka connection.
#[derive(Debug, Clone)]
pub struct Session {
    /// `User:NAME` once authenticated (SASL or a mapped client certificate); `None` while
    /// security is off (every call allowed, as on a gRPC listener without security).
    pub principal: Option<String>,
    pub peer: SocketAddr,
    /// The client id of the connection's last request (for logs).
    pub client_id: Option<String>,
    /// The connection is encrypted (SASL PLAIN is offered only then).
    pub tls: bool,
}

/// A broker as Kafka clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaBroker {
    pub id: u64,
    /// The host and port of its Kafka listener (the advertised one).
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

/// The rate quota that held a Kafka answer back (for the node's throttle metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// `requests.per.sec`: every request after authentication counts one.
    Request,
    /// `produce.bytes.per.sec`: charged by the node's write path.
    Produce,
    /// `fetch.bytes.per.sec`: charged by the node's read path.
    Fetch,
}

/// The node behind the listener. Each method answers as the gRPC method of the same name would
/// for the session's principal.
pub trait Backend: Send + Sync + 'static {
    /// This node's id.
    fn node_id(&self) -> u64;
    /// Security is on: a connection must authenticate (SASL, or a client certificate mapped to
    /// a user) before anything but ApiVersions and SASL, and every call is authorized.
    fn security_enabled(&self) -> bool;
    /// `user`'s stored SCRAM credential for `mechanism`.
    fn scram_credential(
        &self,
        user: &str,
        mechanism: weir_controller::security::ScramMechanism,
    ) -> Option<weir_controller::security::ScramCredential>;
    /// Records a refused authentication in the audit log.
    fn audit_refused(&self, session: &Session, mechanism: &str, reason: &str);
    /// The cluster's id (Kafka clients show it; stable for the cluster's life).
    fn cluster_id(&self) -> String;
    /// The brokers that have a Kafka listener, by their advertised Kafka address.
    fn kafka_brokers(&self) -> Vec<KafkaBroker>;
    /// Charges one request of the session's principal to its `requests.per.sec` quota (and its
    /// tenant's); how long its answer is to be held back, in milliseconds (0: not throttled).
    fn charge_request(&self, session: &Session) -> u32;
    /// Holds a throttled answer back `ms` milliseconds (at most the node's longest hold),
    /// counted in the node's throttle metrics under `kind`.
    fn hold(&self, kind: QuotaKind, ms: u32) -> impl Future<Output = ()> + Send;

    fn metadata(
        &self,
        session: &Session,
        request: v1::MetadataRequest,
    ) -> impl Future<Output = Result<v1::MetadataResponse, Status>> + Send;
    fn produce(
        &self,
        session: &Session,
        request: v1::ProduceRequest,
    ) -> impl Future<Output = Result<v1::ProduceResponse, Status>> + Send;
    fn init_producer(
        &self,
        session: &Session,
    ) -> impl Future<Output = Result<v1::InitProducerResponse, Status>> + Send;
    fn fetch(
        &self,
        session: &Session,
        request: v1::FetchRequest,
    ) -> impl Future<Output = Result<v1::FetchResponse, Status>> + Send;
    fn list_offsets(
        &self,
        session: &Session,
        request: v1::ListOffsetsRequest,
    ) -> impl Future<Output = Result<v1::ListOffsetsResponse, Status>> + Send;
    fn create_topic(
        &self,
        session: &Session,
        request: v1::CreateTopicRequest,
    ) -> impl Future<Output = Result<v1::CreateTopicResponse, Status>> + Send;
    fn describe_topic(
        &self,
        session: &Session,
        request: v1::DescribeTopicRequest,
    ) -> impl Future<Output = Result<v1::DescribeTopicResponse, Status>> + Send;
    /// A topic's settings by name (as `describe_topic` shows them), answered from the
    /// metadata alone: no partition needs a leader.
    fn topic_configs(
        &self,
        session: &Session,
        topic: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>, Status>> + Send;
    fn delete_topic(
        &self,
        session: &Session,
        request: v1::DeleteTopicRequest,
    ) -> impl Future<Output = Result<v1::DeleteTopicResponse, Status>> + Send;
    fn create_partitions(
        &self,
        session: &Session,
        request: v1::CreatePartitionsRequest,
    ) -> impl Future<Output = Result<v1::CreatePartitionsResponse, Status>> + Send;
    fn alter_topic_config(
        &self,
        session: &Session,
        request: v1::AlterTopicConfigRequest,
    ) -> impl Future<Output = Result<v1::AlterTopicConfigResponse, Status>> + Send;

    /// The node coordinating `group` (the leader of its `__consumer_offsets` partition),
    /// creating that topic on first use.
    fn group_coordinator(
        &self,
        session: &Session,
        group: &str,
    ) -> impl Future<Output = Result<u64, Status>> + Send;
    /// Whether the session may describe `topic` (a topic it may not describe is answered with
    /// TOPIC_AUTHORIZATION_FAILED whether or not it exists, as Kafka does).
    fn may_describe_topic(&self, session: &Session, topic: &str) -> bool;
    /// Whether the session may read (join, commit in) `group`: PERMISSION_DENIED otherwise.
    fn authorize_group(&self, session: &Session, group: &str) -> Result<(), Status>;
    fn commit_offsets(
        &self,
        session: &Session,
        request: v1::CommitOffsetsRequest,
    ) -> impl Future<Output = Result<v1::CommitOffsetsResponse, Status>> + Send;
    fn fetch_offsets(
        &self,
        session: &Session,
        request: v1::FetchOffsetsRequest,
    ) -> impl Future<Output = Result<v1::FetchOffsetsResponse, Status>> + Send;
    fn list_groups(
        &self,
        session: &Session,
    ) -> impl Future<Output = Result<v1::ListGroupsResponse, Status>> + Send;
    fn delete_group(
        &self,
        session: &Session,
        request: v1::DeleteGroupRequest,
    ) -> impl Future<Output = Result<v1::DeleteGroupResponse, Status>> + Send;
}
