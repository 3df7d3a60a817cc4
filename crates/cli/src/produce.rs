//! `weir produce TOPIC`: one record per line of standard input (or `--file`), through the
//! batching, idempotent [`weir_client::Producer`]. Keys come from `--key` (every record) or
//! `--separator` (each line split at its first separator into key and value; a line without it
//! is an error naming the line); `--header k=v` adds headers to every record. Records go to
//! `--partition`, else to their key's partition, else the producer spreads them. A summary goes
//! to standard error; exit 0 only if every record was acknowledged.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use weir_client::{Acks, DeliveryFuture, Producer, ProducerConfig, ProducerRecord};

use crate::{Brokers, key_value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AcksArg {
    /// A majority of replicas have the records on disk (offsets known).
    All,
    /// The partition leader checked and queued them.
    Leader,
    /// The receiving node checked the request.
    None,
}

impl From<AcksArg> for Acks {
    fn from(acks: AcksArg) -> Self {
        match acks {
            AcksArg::All => Acks::All,
            AcksArg::Leader => Acks::Leader,
            AcksArg::None => Acks::None,
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct ProduceArgs {
    /// The topic to write to.
    topic: String,
    /// Read lines from this file instead of standard input.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Key of every record.
    #[arg(long, conflicts_with = "separator")]
    key: Option<String>,
    /// Split each line at the first SEPARATOR into key and value.
    #[arg(long)]
    separator: Option<String>,
    /// A header KEY=VALUE on every record (repeatable).
    #[arg(long = "header", value_parser = key_value)]
    headers: Vec<(String, String)>,
    /// Partition to write to (default: by key; records without a key are spread).
    #[arg(long)]
    partition: Option<u32>,
    /// What an acknowledgement means.
    #[arg(long, value_enum, default_value = "all")]
    acks: AcksArg,
    /// A batch closes at this many bytes (it leaves earlier when its linger ends).
    #[arg(long, default_value_t = 1 << 20)]
    batch_size: usize,
    /// How long a batch waits for more records, in milliseconds.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Give up on a record after this many seconds (retries included).
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    #[command(flatten)]
    brokers: Brokers,
}

/// What the acknowledgements came to.
#[derive(Debug, Default)]
struct Tally {
    acknowledged: u64,
    failed: u64,
    partitions: BTreeSet<u32>,
    first_error: Option<String>,
}

/// Splits a line into (key, value) per the arguments; `line_number` counts from 1.
fn split_line(
    line: &str,
    line_number: u64,
    key: Option<&str>,
    separator: Option<&str>,
) -> anyhow::Result<(Option<String>, String)> {
    match separator {
        Some(separator) => match line.split_once(separator) {
            Some((k, v)) => Ok((Some(k.to_string()), v.to_string())),
            None => bail!("line {line_number} has no separator {separator:?}: {line:?}"),
        },
        None => Ok((key.map(str::to_string), line.to_string())),
    }
}

pub(crate) async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if args.separator.as_deref() == Some("") {
        bail!("--separator cannot be empty");
    }
    let mut client = args.brokers.client()?;
    client.retry_for = Duration::from_secs(args.timeout_secs);
    let client = Arc::new(client);
    let partitions = client.partition_count(&args.topic).await?;
    if let Some(p) = args.partition
        && p >= partitions
    {
        bail!(
            "topic {} has {partitions} partitions; --partition {p} does not exist",
            args.topic
        );
    }
    let config = ProducerConfig {
        acks: args.acks.into(),
        batch_size: args.batch_size,
        linger: Duration::from_millis(args.linger_ms),
        delivery_timeout: Duration::from_secs(args.timeout_secs),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(Arc::clone(&client), config).await?;

    // Acknowledgements are counted as they come, by a task of their own.
    let (acks_tx, mut acks_rx) = tokio::sync::mpsc::channel::<DeliveryFuture>(4096);
    let tally = tokio::spawn(async move {
        let mut tally = Tally::default();
        while let Some(delivery) = acks_rx.recv().await {
            match delivery.await {
                Ok(metadata) => {
                    tally.acknowledged += 1;
                    tally.partitions.insert(metadata.partition);
                }
                Err(err) => {
                    tally.failed += 1;
                    tally.first_error.get_or_insert_with(|| err.to_string());
                }
            }
        }
        tally
    });

    let input: Box<dyn AsyncBufRead + Unpin + Send> = match &args.file {
        Some(path) => Box::new(tokio::io::BufReader::new(
            tokio::fs::File::open(path)
                .await
                .with_context(|| format!("opening {}", path.display()))?,
        )),
        None => Box::new(tokio::io::BufReader::new(tokio::io::stdin())),
    };
    let headers: Vec<(String, Option<Bytes>)> = args
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Some(Bytes::from(v.clone()))))
        .collect();
    let read = send_lines(&args, input, &producer, &headers, &acks_tx).await;
    drop(acks_tx);
    let flushed = producer.close().await;
    let tally = tally.await.context("counting acknowledgements")?;
    let partitions: Vec<String> = tally.partitions.iter().map(u32::to_string).collect();
    eprintln!(
        "{} records acknowledged{}",
        tally.acknowledged,
        if partitions.is_empty() {
            String::new()
        } else {
            format!(
                " in partition{} {}",
                if partitions.len() == 1 { "" } else { "s" },
                partitions.join(", ")
            )
        }
    );
    read?;
    flushed?;
    if tally.failed > 0 {
        bail!(
            "{} records were not acknowledged; the first failure: {}",
            tally.failed,
            tally.first_error.unwrap_or_default()
        );
    }
    Ok(())
}

/// Reads lines and sends them; stops at the first bad line or failed send.
async fn send_lines(
    args: &ProduceArgs,
    input: Box<dyn AsyncBufRead + Unpin + Send>,
    producer: &Producer,
    headers: &[(String, Option<Bytes>)],
    acks: &tokio::sync::mpsc::Sender<DeliveryFuture>,
) -> anyhow::Result<()> {
    let mut lines = input.lines();
    let mut line_number = 0u64;
    while let Some(line) = lines.next_line().await.context("reading the input")? {
        line_number += 1;
        let (key, value) = split_line(
            &line,
            line_number,
            args.key.as_deref(),
            args.separator.as_deref(),
        )?;
        let record = ProducerRecord {
            partition: args.partition,
            key: key.map(Bytes::from),
            value: Some(Bytes::from(value)),
            headers: headers.to_vec(),
            timestamp_ms: None,
        };
        let delivery = producer.send(&args.topic, record).await?;
        acks.send(delivery)
            .await
            .context("the acknowledgement counter stopped")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_into_keys_and_values() {
        assert_eq!(
            split_line("k1:v:1", 1, None, Some(":")).ok(),
            Some((Some("k1".to_string()), "v:1".to_string()))
        );
        assert_eq!(
            split_line("value", 1, Some("k"), None).ok(),
            Some((Some("k".to_string()), "value".to_string()))
        );
        assert_eq!(
            split_line("value", 1, None, None).ok(),
            Some((None, "value".to_string()))
        );
        let err = split_line("no separator", 7, None, Some("::"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("line 7"), "{err}");
    }
}
