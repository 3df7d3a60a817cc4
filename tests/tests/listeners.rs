//! A node's two listeners, in process: the internal one (peers, and clients on the nodes'
//! network) and the external one (`external_addr`, for clients that reach the node through
//! another address). Metadata names brokers by the addresses that suit the listener asked; the
//! Rust client works through either; JoinCluster checks the addresses it is given.

use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use weir_broker::{Node, NodeConfig};
use weir_client::{Client, NodeHealth, Producer, ProducerConfig, ProducerRecord};
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::broker_client::BrokerClient;
use weir_proto::v1::{JoinClusterRequest, MetadataRequest};
use weir_tests::eventually;

/// How long the node may take to load its metadata.
const WAIT: Duration = Duration::from_secs(30);

/// The external address a client is told: one that does not route anywhere on this machine's
/// loopback listeners, so only the metadata can have produced it.
const ADVERTISED_EXTERNAL: &str = "127.0.0.1:1";

async fn start(dir: &std::path::Path, external_advertised: Option<&str>) -> anyhow::Result<Node> {
    let config = NodeConfig {
        addr: "127.0.0.1:0".into(),
        external_addr: Some("127.0.0.1:0".into()),
        external_advertised_addr: external_advertised.map(str::to_string),
        data_dir: dir.to_path_buf(),
        ..NodeConfig::default()
    };
    Ok(Node::start(config, None).await?)
}

async fn metadata_addresses(addr: &str) -> anyhow::Result<Vec<String>> {
    let broker = BrokerClient::connect(format!("http://{addr}")).await?;
    let what = format!("the metadata from {addr} lists the broker");
    eventually(WAIT, &what, || {
        let mut broker = broker.clone();
        async move {
            let brokers = broker
                .metadata(MetadataRequest { topics: vec![] })
                .await?
                .into_inner()
                .brokers;
            anyhow::ensure!(!brokers.is_empty(), "no brokers yet");
            Ok(brokers.into_iter().map(|b| b.address).collect())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_names_brokers_by_the_listener_asked() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start(dir.path(), Some(ADVERTISED_EXTERNAL)).await?;
    let internal = node.local_addr().to_string();
    let external = node.external_addr().expect("external listener").to_string();
    assert_ne!(internal, external);

    assert_eq!(metadata_addresses(&internal).await?, vec![internal.clone()]);
    assert_eq!(
        metadata_addresses(&external).await?,
        vec![ADVERTISED_EXTERNAL.to_string()]
    );
    // Health is served on both listeners (SERVING once the node has loaded the metadata, which
    // the health reporter notices within 100 ms).
    for addr in [&internal, &external] {
        eventually(WAIT, &format!("{addr} SERVING"), || async {
            let health = weir_client::check_health(addr, Duration::from_secs(5)).await?;
            anyhow::ensure!(health == NodeHealth::Serving, "health {health:?}");
            Ok(())
        })
        .await?;
    }
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_produces_and_consumes_through_the_external_listener() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    // Advertised as itself (the ephemeral port bound): the client must follow the metadata there.
    let node = start(dir.path(), None).await?;
    let external = node.external_addr().expect("external listener").to_string();
    assert_eq!(metadata_addresses(&external).await?, vec![external.clone()]);

    let client = Arc::new(Client::new(std::slice::from_ref(&external))?);
    client.create_topic("outside", 2, 1).await?;
    let producer = Producer::new(Arc::clone(&client), ProducerConfig::default()).await?;
    let mut delivered = Vec::new();
    for i in 0..100 {
        delivered.push(
            producer
                .send(
                    "outside",
                    ProducerRecord::new(format!("v{i}")).key(format!("k{i}")),
                )
                .await?,
        );
    }
    producer.close().await?;
    for delivery in delivered {
        delivery.await?;
    }
    let mut read = 0;
    for partition in 0..2 {
        let offsets = client.list_offsets("outside", partition, None).await?;
        let fetched = client.fetch("outside", partition, 0, 1 << 20).await?;
        assert_eq!(fetched.records.len() as u64, offsets.high_watermark);
        read += fetched.records.len();
    }
    assert_eq!(read, 100);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_cluster_refuses_malformed_addresses() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start(dir.path(), Some(ADVERTISED_EXTERNAL)).await?;
    let mut admin = AdminClient::connect(format!("http://{}", node.local_addr())).await?;
    for (address, external, mentions) in [
        ("nowhere", "", "address \"nowhere\""),
        ("127.0.0.1:9", "outside", "external_address \"outside\""),
        ("127.0.0.1:9", ":19092", "external_address \":19092\""),
    ] {
        let status = admin
            .join_cluster(JoinClusterRequest {
                id: 9,
                address: address.into(),
                rack: String::new(),
                external_address: external.into(),
            })
            .await
            .expect_err("malformed address accepted");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(mentions), "{status:?}");
    }
    // Nothing was admitted.
    assert_eq!(
        metadata_addresses(&node.local_addr().to_string())
            .await?
            .len(),
        1
    );
    node.shutdown().await;
    Ok(())
}
