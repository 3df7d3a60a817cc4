//! TLS between clients and nodes and mutual TLS between nodes, on a cluster of `weir server`
//! processes: records go through a replicated topic over TLS; plaintext, a node certificate
//! from another CA and a client certificate from another CA are refused; certificates are
//! reloaded without a restart when their files change.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use weir_broker::pki;
use weir_client::{
    Client, ClientError, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
    Security, Start, TlsOptions,
};
use weir_tests::eventually;
use weir_tests::process_cluster::ProcessCluster;

const WAIT: Duration = Duration::from_secs(60);

/// A client that gives up quickly (refusals are what these tests expect).
fn impatient(brokers: &[String], security: Security) -> anyhow::Result<Client> {
    let mut client = Client::with_security(brokers, security)?;
    client.retry_for = Duration::from_secs(3);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_replicates_and_refuses_plaintext_and_strangers() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start_tls(3, &[])?;
    for id in cluster.node_ids() {
        cluster.wait_serving(id, WAIT).await?;
    }
    let client = Arc::new(cluster.client(None, None)?);
    // RF 3: every append crosses the nodes' mutual-TLS links before it is acknowledged.
    client.create_topic("secret", 2, 3).await?;
    let producer = Producer::new(Arc::clone(&client), ProducerConfig::default()).await?;
    let mut deliveries = Vec::new();
    for i in 0..20 {
        deliveries.push(
            producer
                .send(
                    "secret",
                    ProducerRecord::new(format!("v{i}")).key(format!("k{i}")),
                )
                .await?,
        );
    }
    producer.flush().await?;
    for delivery in deliveries {
        delivery.await?;
    }
    let mut consumer = Consumer::new(Arc::clone(&client), ConsumerConfig::default());
    consumer.assign("secret", &[], Start::Earliest).await?;
    let mut values = Vec::new();
    tokio::time::timeout(WAIT, async {
        while values.len() < 20 {
            for record in consumer.poll_records(20).await? {
                values.push(
                    String::from_utf8_lossy(record.value.as_deref().unwrap_or_default())
                        .to_string(),
                );
            }
        }
        anyhow::Ok(())
    })
    .await
    .context("reading the 20 records back over TLS")??;
    values.sort();
    let mut expected: Vec<String> = (0..20).map(|i| format!("v{i}")).collect();
    expected.sort();
    assert_eq!(values, expected);

    // Plaintext to a TLS listener gets no answer.
    let plain = impatient(&cluster.brokers(), Security::default())?;
    let refused = plain.metadata(&[]).await;
    assert!(refused.is_err(), "plaintext was answered: {refused:?}");

    // A client that trusts another CA refuses the nodes (final, not retried for long).
    let other = tempfile::tempdir()?;
    let stranger = pki::write_cluster(other.path(), &[], &["alice".into()])?;
    let other_ca = TlsOptions {
        ca_pem: stranger.pem().cert_pem.clone().into_bytes(),
        identity: None,
        server_name: None,
    };
    let started = std::time::Instant::now();
    let wrong_ca = impatient(
        &cluster.brokers(),
        Security {
            tls: Some(other_ca),
            token: None,
        },
    )?
    .metadata(&[])
    .await;
    assert!(
        matches!(wrong_ca, Err(ClientError::Tls(ref m)) if m.contains("certificate")),
        "{wrong_ca:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a TLS refusal was retried"
    );

    // A client certificate from another CA is refused by the node.
    let tls_dir = cluster.tls_dir().context("TLS cluster")?;
    let foreign_cert = TlsOptions::from_files(
        &tls_dir.join("ca.pem"),
        Some(&other.path().join("client-alice.pem")),
        Some(&other.path().join("client-alice.key")),
    )?;
    let refused = impatient(
        &cluster.brokers(),
        Security {
            tls: Some(foreign_cert),
            token: None,
        },
    )?
    .metadata(&[])
    .await;
    assert!(
        refused.is_err(),
        "a foreign client certificate was accepted: {refused:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_without_a_restart() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start_tls(1, &["--tls-reload-ms", "200"])?;
    cluster.wait_serving(1, WAIT).await?;
    let dir = cluster.tls_dir().context("TLS cluster")?.to_path_buf();

    // A new CA: a client that trusts only it cannot talk to the node yet.
    let next = tempfile::tempdir()?;
    let new_ca = pki::write_cluster(
        next.path(),
        &[(1, vec!["127.0.0.1".into(), "localhost".into()])],
        &[],
    )?;
    let trusts_new = || -> anyhow::Result<Client> {
        impatient(
            &cluster.brokers(),
            Security {
                tls: Some(TlsOptions {
                    ca_pem: new_ca.pem().cert_pem.clone().into_bytes(),
                    identity: None,
                    server_name: None,
                }),
                token: None,
            },
        )
    };
    let before = trusts_new()?.metadata(&[]).await;
    ensure!(
        before.is_err(),
        "the new CA was trusted before the rotation"
    );

    // Rotate: the node's certificate and key from the new CA; its ca.pem trusts both CAs, so
    // clients with certificates of the old CA keep working through the rotation.
    let old_ca = std::fs::read_to_string(dir.join("ca.pem"))?;
    std::fs::write(
        dir.join("ca.pem"),
        format!("{old_ca}{}", new_ca.pem().cert_pem),
    )?;
    std::fs::copy(next.path().join("node-1.key"), dir.join("node-1.key"))?;
    std::fs::copy(next.path().join("node-1.pem"), dir.join("node-1.pem"))?;

    eventually(WAIT, "the node to present its new certificate", || async {
        trusts_new()?.metadata(&[]).await?;
        Ok(())
    })
    .await?;
    // The node's server certificate is now the new CA's: a client trusting only the old CA
    // refuses it.
    let old_only = impatient(
        &cluster.brokers(),
        Security {
            tls: Some(TlsOptions {
                ca_pem: old_ca.into_bytes(),
                identity: None,
                server_name: None,
            }),
            token: None,
        },
    )?;
    let refused = old_only.metadata(&[]).await;
    assert!(
        matches!(refused, Err(ClientError::Tls(_))),
        "a client of the old CA accepted the rotated node: {refused:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_refuse_clients_without_one() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start_tls(1, &["--tls-client-auth", "required"])?;
    cluster.wait_serving(1, WAIT).await?;
    // With a certificate of the cluster CA: served.
    cluster.client(Some("alice"), None)?.metadata(&[]).await?;
    // Trusting the CA but without a certificate: refused, saying why.
    let refused = impatient(&cluster.brokers(), cluster.security(None, None)?)?
        .metadata(&[])
        .await;
    assert!(
        matches!(&refused, Err(e) if e.code() == Some(tonic::Code::Unauthenticated)
            && e.to_string().contains("requires a client certificate")),
        "{refused:?}"
    );
    Ok(())
}
