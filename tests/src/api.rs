//! The fixture of the API tests (`api_v1`, `api_errors`): one in-process node on ephemeral
//! loopback ports (metrics included) and the raw generated gRPC stubs to it, as a client in any
//! language would use them, with small builders for requests and checks of answers.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tonic::Code;
use tonic::transport::Channel;
use weir_broker::Node;
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::broker_client::BrokerClient;
use weir_proto::v1::groups_client::GroupsClient;
use weir_proto::v1::{
    CreateTopicRequest, DescribeTopicRequest, FetchRequest, FetchedRecord, ProduceRequest,
    ProduceResponse, Record, StartFrom,
};

/// How long a node may take to form its groups (and any other wait of the API tests).
pub const WAIT: Duration = Duration::from_secs(20);

/// The stubs of the node's three client services.
#[derive(Debug, Clone)]
pub struct Api {
    pub admin: AdminClient<Channel>,
    pub broker: BrokerClient<Channel>,
    pub groups: GroupsClient<Channel>,
}

impl Api {
    /// Stubs on a channel to `addr`.
    pub async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<Self> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        Ok(Self {
            admin: AdminClient::new(channel.clone()),
            broker: BrokerClient::new(channel.clone()),
            groups: GroupsClient::new(channel),
        })
    }

    /// Creates a topic (replication factor 1), retrying while the node forms its groups.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let request = create(name, partitions, configs);
        crate::retry_unavailable(WAIT, &format!("topic {name} created"), || {
            let mut admin = self.admin.clone();
            let request = request.clone();
            async move { admin.create_topic(request).await }
        })
        .await?;
        Ok(())
    }

    /// Waits until every partition of `topic` has a leader: a request spanning partitions
    /// (records routed by key) is not atomic, so it must not meet one still forming (the
    /// UNAVAILABLE part would fail the request after other parts were written).
    pub async fn wait_for_leaders(&self, topic: &str) -> anyhow::Result<()> {
        let what = format!("a leader for every partition of {topic}");
        crate::eventually(WAIT, &what, || async {
            let described = self
                .admin
                .clone()
                .describe_topic(DescribeTopicRequest { name: topic.into() })
                .await?
                .into_inner()
                .topic
                .context("no topic in the answer")?;
            let leaderless: Vec<u32> = described
                .partitions
                .iter()
                .filter(|p| p.leader == 0)
                .map(|p| p.partition)
                .collect();
            anyhow::ensure!(leaderless.is_empty(), "no leader for {leaderless:?}");
            Ok(())
        })
        .await
    }

    /// Produces `request`, retrying while the partition forms (UNAVAILABLE). Only for requests
    /// to one partition: see [`Api::wait_for_leaders`].
    pub async fn produce(&self, request: ProduceRequest) -> anyhow::Result<ProduceResponse> {
        let what = format!("records produced to {}", request.topic);
        crate::retry_unavailable(WAIT, &what, || {
            let mut broker = self.broker.clone();
            let request = request.clone();
            async move { broker.produce(request).await }
        })
        .await
    }

    /// Produces one record per value to `partition`, retrying while it forms.
    pub async fn produce_values(
        &self,
        topic: &str,
        partition: u32,
        values: &[String],
    ) -> anyhow::Result<ProduceResponse> {
        let records = values.iter().map(|v| record(None, v)).collect();
        self.produce(produce(topic, Some(partition), records)).await
    }

    /// The values of a partition, from its start.
    pub async fn fetch_all(&self, topic: &str, partition: u32) -> anyhow::Result<Vec<String>> {
        let fetched = self
            .broker
            .clone()
            .fetch(FetchRequest {
                topic: topic.into(),
                partition,
                from: StartFrom::Earliest as i32,
                ..FetchRequest::default()
            })
            .await?
            .into_inner();
        Ok(values(&fetched.records))
    }
}

/// A node and the stubs to it; its data lives in a directory of its own.
#[derive(Debug)]
pub struct ApiNode {
    pub node: Node,
    pub api: Api,
    pub dir: tempfile::TempDir,
}

impl ApiNode {
    /// A single-node cluster (see [`crate::start_single_node`]).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// A single-node cluster whose configuration `adjust` changes first.
    pub async fn start_with(
        adjust: impl FnOnce(&mut weir_broker::NodeConfig),
    ) -> anyhow::Result<Self> {
        crate::init_tracing();
        let dir = tempfile::tempdir()?;
        let node = crate::start_single_node_with(dir.path(), adjust).await?;
        let api = Api::connect(node.local_addr()).await?;
        Ok(Self { node, api, dir })
    }

    /// Stops the node and starts it again on its data.
    pub async fn restart(self) -> anyhow::Result<Self> {
        let Self { node, dir, .. } = self;
        node.shutdown().await;
        let node = crate::start_single_node(dir.path()).await?;
        let api = Api::connect(node.local_addr()).await?;
        Ok(Self { node, api, dir })
    }

    pub async fn shutdown(self) {
        self.node.shutdown().await;
    }
}

pub fn record(key: Option<&str>, value: &str) -> Record {
    Record {
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: Vec::new(),
        timestamp_ms: 0,
    }
}

/// A produce request with acks = all (the default).
pub fn produce(topic: &str, partition: Option<u32>, records: Vec<Record>) -> ProduceRequest {
    ProduceRequest {
        topic: topic.into(),
        partition,
        records,
        ..ProduceRequest::default()
    }
}

/// A create-topic request with replication factor 1.
pub fn create(name: &str, partitions: u32, configs: &[(&str, &str)]) -> CreateTopicRequest {
    CreateTopicRequest {
        name: name.into(),
        partitions,
        replication_factor: 1,
        configs: configs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// The values of fetched records, as text.
pub fn values(records: &[FetchedRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or(b"")).into_owned())
        .collect()
}

/// The status code and message of an answer (OK and "" for a success).
pub fn status_of<T>(result: &Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    match result {
        Ok(_) => (Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().to_string()),
    }
}

/// Asserts that an answer failed with `code` and a message mentioning `mentions`.
#[track_caller]
pub fn expect_status<T>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    mentions: &str,
) {
    let (got, message) = status_of(&result);
    assert_eq!(got, code, "message: {message}");
    assert!(
        message.contains(mentions),
        "{message:?} should mention {mentions:?}"
    );
}
