//! Integration and fault tests for Weir. The tests live in `tests/tests/`; helper programs they
//! drive (for example the storage crash child) live in `src/bin/`; code shared between the two
//! lives here.

pub mod api;
pub mod cli;
pub mod crash;
pub mod docker;
pub mod eventually;
pub mod hostile;
pub mod ports;
pub mod process_cluster;
pub mod python;
pub mod raft_cluster;
pub mod workload;

pub use eventually::{abort, eventually, eventually_blocking};

/// Runs a gRPC call until it answers anything but UNAVAILABLE (a node starting, a group being
/// formed), with [`eventually`]; another error ends the wait at once.
pub async fn retry_unavailable<T, F, Fut>(
    within: std::time::Duration,
    what: &str,
    mut call: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    eventually(within, what, || {
        let answer = call();
        async move {
            match answer.await {
                Ok(response) => Ok(response.into_inner()),
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    Err(anyhow::anyhow!("{status}"))
                }
                Err(status) => Err(abort(anyhow::anyhow!("{status}"))),
            }
        }
    })
    .await
}

/// Waits until the metadata names a leader of `topic`/`partition` other than node `not` (0: any
/// leader) and returns it: a partition's first election, or its failover after a fault.
pub async fn wait_for_leader(
    client: &weir_client::Client,
    topic: &str,
    partition: u32,
    not: u64,
    within: std::time::Duration,
) -> anyhow::Result<u64> {
    let what = match not {
        0 => format!("a leader of {topic}/{partition}"),
        old => format!("a leader of {topic}/{partition} other than node {old}"),
    };
    eventually(within, &what, || async {
        let metadata = client.metadata(&[topic.to_string()]).await?;
        let leader = metadata
            .topics
            .iter()
            .find(|t| t.name == topic)
            .and_then(|t| t.partitions.iter().find(|p| p.partition == partition))
            .map_or(0, |p| p.leader);
        anyhow::ensure!(
            leader != 0 && leader != not,
            "the metadata names leader {leader}"
        );
        Ok(leader)
    })
    .await
}

/// Waits up to `within` for `child` to exit (after a signal asked it to) and returns how it
/// exited; one that does not is killed and reaped, and the wait fails naming `what`.
pub fn wait_for_exit(
    child: &mut std::process::Child,
    within: std::time::Duration,
    what: &str,
) -> anyhow::Result<std::process::ExitStatus> {
    let exited = eventually_blocking(within, what, || {
        child
            .try_wait()?
            .ok_or_else(|| anyhow::anyhow!("still running"))
    });
    if exited.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    exited
}

/// Logs to the test's output when `RUST_LOG` is set (`RUST_LOG=info cargo test ...`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// (entry index, term, base offset, CRC) of every batch of `log` with an entry index in
/// `[from_index, until_index)`: what replicas compare to prove they hold the same log.
pub fn stored_entries(
    log: &weir_storage::PartitionLog,
    from_index: u64,
    until_index: u64,
) -> anyhow::Result<Vec<(u64, u64, u64, u32)>> {
    let mut out = Vec::new();
    let mut from = from_index;
    while from < until_index {
        let read = log.read_entries(from, until_index, 1 << 20)?;
        if read.batches.is_empty() {
            break;
        }
        for batch in &read.batches {
            let h = batch.header();
            out.push((h.index, h.term, h.base_offset, h.crc));
            from = h.index + 1;
        }
    }
    Ok(out)
}

/// `GET /metrics` from a node's metrics endpoint over a plain HTTP/1.1 connection.
pub async fn scrape_metrics(addr: Option<std::net::SocketAddr>) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = addr.ok_or_else(|| anyhow::anyhow!("metrics are not enabled"))?;
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    anyhow::ensure!(response.starts_with("HTTP/1.1 200"), "{response}");
    Ok(response)
}

/// One in-process node forming a single-node cluster, on an ephemeral loopback port, with its
/// data in `dir` (start it again on the same `dir` to restart it) and metrics on another port.
pub async fn start_single_node(dir: &std::path::Path) -> anyhow::Result<weir_broker::Node> {
    start_single_node_with(dir, |_| {}).await
}

/// [`start_single_node`] with `adjust` applied to its configuration first (limits, an external
/// listener, ...).
pub async fn start_single_node_with(
    dir: &std::path::Path,
    adjust: impl FnOnce(&mut weir_broker::NodeConfig),
) -> anyhow::Result<weir_broker::Node> {
    let mut config = weir_broker::NodeConfig {
        addr: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        metrics_addr: Some("127.0.0.1:0".into()),
        ..weir_broker::NodeConfig::default()
    };
    adjust(&mut config);
    Ok(weir_broker::Node::start(config, None).await?)
}
