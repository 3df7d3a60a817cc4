//! Integration and fault tests for Weir. The tests live in `tests/tests/`; helper programs they
//! drive (for example the storage crash child) live in `src/bin/`; code shared between the two
//! lives here.

pub mod crash;
pub mod docker;
pub mod process_cluster;
pub mod raft_cluster;
pub mod workload;

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
    let config = weir_broker::NodeConfig {
        addr: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        metrics_addr: Some("127.0.0.1:0".into()),
        ..weir_broker::NodeConfig::default()
    };
    Ok(weir_broker::Node::start(config, None).await?)
}
