//! The Rust client against one in-process node: requests that cannot succeed fail with the
//! server's final status, without being retried until the client's deadline — a replication
//! factor above the number of brokers, a partition that does not exist, a fenced producer epoch.
//! (`ClientError::Timeout` would mean the client retried a final answer.)

use std::time::Duration;

use tonic::Code;
use weir_client::{Client, ClientError, IdempotentBatcher};

/// The client's error, which must be the server's own answer with `code`.
fn assert_final(result: Result<impl std::fmt::Debug, ClientError>, code: Code, mentions: &str) {
    match result {
        Err(ClientError::Status { status }) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(
                status.message().contains(mentions),
                "{:?} should mention {mentions:?}",
                status.message()
            );
        }
        other => panic!("expected the final status {code:?}, got {other:?}"),
    }
}

async fn start() -> anyhow::Result<(weir_broker::Node, tempfile::TempDir, Client)> {
    let dir = tempfile::tempdir()?;
    let node = weir_tests::start_single_node(dir.path()).await?;
    let mut client = Client::new(&[node.local_addr().to_string()])?;
    // Long enough that a retried final answer would show up as a timeout, not as a pass.
    client.retry_for = Duration::from_secs(60);
    Ok((node, dir, client))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_factor_above_the_broker_count_is_refused_at_once() -> anyhow::Result<()> {
    let (_node, _dir, client) = start().await?;
    let result = client.create_topic("y", 2, 5).await;
    assert_final(result, Code::InvalidArgument, "replication factor 5");
    let result = client.create_topic("y", 2, 5).await;
    assert_final(result, Code::InvalidArgument, "1 broker");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_out_of_range_is_refused_at_once() -> anyhow::Result<()> {
    let (_node, _dir, client) = start().await?;
    client.create_topic("two", 2, 1).await?;
    let mut batcher = IdempotentBatcher::new(-1, -1);
    let batch = batcher
        .batch(7, [(1_700_000_000_000, None, &b"x"[..])])
        .ok_or_else(|| anyhow::anyhow!("no batch"))?;
    match client.produce_batch("two", 7, batch).await {
        Err(ClientError::UnknownPartition {
            partition: 7,
            partitions: 2,
            ..
        }) => {}
        Err(ClientError::Status { status }) if status.code() == Code::NotFound => {
            assert!(status.message().contains("partition 7"), "{status:?}");
        }
        other => panic!("expected an unknown partition, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_producer_epoch_is_final() -> anyhow::Result<()> {
    let (_node, _dir, client) = start().await?;
    client.create_topic("fenced", 1, 1).await?;
    let (producer_id, _) = client.init_producer().await?;
    // A newer incarnation of the producer (epoch 1) writes first...
    let mut newer = IdempotentBatcher::new(producer_id, 1);
    let batch = newer
        .batch(0, [(1_700_000_000_000, None, &b"new"[..])])
        .ok_or_else(|| anyhow::anyhow!("no batch"))?;
    client.produce_batch("fenced", 0, batch).await?;
    // ...so the older one (epoch 0) is fenced: FAILED_PRECONDITION, never retried.
    let mut older = IdempotentBatcher::new(producer_id, 0);
    let batch = older
        .batch(0, [(1_700_000_000_000, None, &b"old"[..])])
        .ok_or_else(|| anyhow::anyhow!("no batch"))?;
    let result = client.produce_batch("fenced", 0, batch).await;
    assert_final(result, Code::FailedPrecondition, "fenced by epoch 1");
    let fetched = client.fetch("fenced", 0, 0, 1 << 20).await?;
    assert_eq!(fetched.records.len(), 1, "only the newer epoch's record");
    Ok(())
}

/// The first segment file of partition 0 of `topic` under the node's data directory.
fn first_segment(data_dir: &std::path::Path, topic: &str) -> anyhow::Result<std::path::PathBuf> {
    let partitions = data_dir.join("partitions");
    for entry in std::fs::read_dir(&partitions)? {
        let dir = entry?.path();
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with(&format!("{topic}-0-")) {
            return Ok(dir.join("log").join(format!("{:020}.log", 0)));
        }
    }
    anyhow::bail!("no directory of {topic}/0 in {}", partitions.display())
}

/// Corrupt data on disk reaches the client as DATA_LOSS, a final answer: reads and writes of the
/// partition stop instead of serving what no CRC vouches for, and nobody retries until a
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_data_on_disk_is_a_final_data_loss() -> anyhow::Result<()> {
    let (_node, dir, client) = start().await?;
    let configs =
        std::collections::HashMap::from([("segment.bytes".to_string(), "1048576".to_string())]);
    client
        .create_topic_with_configs("damaged", 1, 1, &configs)
        .await?;
    // 3 MiB in 64 KiB batches: the first segments are sealed.
    let mut batcher = IdempotentBatcher::new(-1, -1);
    for i in 0..48u8 {
        let value = vec![b'a' + i % 26; 64 << 10];
        let batch = batcher
            .batch(0, [(1_700_000_000_000, None, &value[..])])
            .ok_or_else(|| anyhow::anyhow!("no batch"))?;
        client.produce_batch("damaged", 0, batch).await?;
    }
    let segment = first_segment(dir.path(), "damaged")?;
    let mut bytes = std::fs::read(&segment)?;
    // A byte in the first batch's records (the header is 69 bytes).
    bytes[200] ^= 0xff;
    std::fs::write(&segment, &bytes)?;

    assert_final(
        client.fetch("damaged", 0, 0, 1 << 20).await,
        Code::DataLoss,
        "corrupt",
    );
    // The partition stopped: a write is refused for good too.
    let batch = batcher
        .batch(0, [(1_700_000_000_000, None, &b"after"[..])])
        .ok_or_else(|| anyhow::anyhow!("no batch"))?;
    match client.produce_batch("damaged", 0, batch).await {
        Err(ClientError::Status { status }) => {
            assert_eq!(status.code(), Code::DataLoss, "{status:?}");
        }
        other => panic!("expected DATA_LOSS for a write to a stopped partition, got {other:?}"),
    }
    Ok(())
}
