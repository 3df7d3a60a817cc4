//! `weir produce TOPIC`: one record per line of standard input. Lines are sent in batches (up to
//! `--batch-size` records, or whatever arrived within 10 ms), each retried across node failures
//! and leader changes until it is acknowledged; a retried batch is never written twice. Exits 0
//! only if every record was acknowledged.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::AsyncBufReadExt;
use weir_client::Producer;

use crate::Brokers;

#[derive(Debug, clap::Args)]
pub(crate) struct ProduceArgs {
    topic: String,
    /// Partition to write to (default: batches go round-robin over the partitions).
    #[arg(long)]
    partition: Option<u32>,
    /// Acknowledgement: all (a majority of replicas have the records on disk).
    #[arg(long, default_value = "all", value_parser = ["all"])]
    acks: String,
    /// Most records per batch.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Give up on a batch after this many seconds of retrying.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    #[command(flatten)]
    brokers: Brokers,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let mut client = args.brokers.client()?;
    client.retry_for = Duration::from_secs(args.timeout_secs);
    let metadata = client.metadata(std::slice::from_ref(&args.topic)).await?;
    let partitions = metadata
        .topics
        .first()
        .map(|t| t.partitions.len() as u32)
        .context("topic not in metadata")?;
    if let Some(p) = args.partition
        && p >= partitions
    {
        bail!(
            "topic {} has {partitions} partitions; --partition {p} does not exist",
            args.topic
        );
    }
    let mut producer = Producer::new();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut pending: Vec<String> = Vec::new();
    let mut acknowledged: u64 = 0;
    let mut next_partition = 0u32;
    let mut done = false;
    while !done {
        // Fill a batch: wait for the first line, then take what arrives within 10 ms.
        while pending.len() < args.batch_size {
            let line = if pending.is_empty() {
                lines.next_line().await
            } else {
                match tokio::time::timeout(Duration::from_millis(10), lines.next_line()).await {
                    Ok(line) => line,
                    Err(_) => break,
                }
            };
            match line.context("reading standard input")? {
                Some(line) => pending.push(line),
                None => {
                    done = true;
                    break;
                }
            }
        }
        if pending.is_empty() {
            break;
        }
        let partition = args.partition.unwrap_or_else(|| {
            let p = next_partition;
            next_partition = (next_partition + 1) % partitions;
            p
        });
        let now = now_ms();
        let batch = producer
            .batch(partition, pending.iter().map(|l| (now, None, l.as_bytes())))
            .context("empty batch")?;
        match client.produce_batch(&args.topic, partition, batch).await {
            Ok(_) => acknowledged += pending.len() as u64,
            Err(err) => {
                bail!(
                    "{acknowledged} records acknowledged; the batch after them ({} records) failed: {err}",
                    pending.len()
                );
            }
        }
        pending.clear();
    }
    eprintln!("{acknowledged} records acknowledged");
    Ok(())
}
