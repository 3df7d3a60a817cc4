//! `weir consume TOPIC`: committed records on standard output — one value per line, or with
//! `--output json` one JSON object per line (`topic`, `partition`, `offset`, `timestamp` in ms
//! since the Unix epoch, `key`, `value`, `headers` as a list of `{"key", "value"}`; keys, values
//! and header values are decoded as UTF-8, invalid bytes replaced by U+FFFD, absent ones null).
//!
//! Without `--group` it reads every partition (or those given with `--partition`) from `--from`.
//! With `--group` it joins the group and reads the partitions the group gives it, from the
//! group's committed offsets (`--from earliest|latest` only applies to partitions the group has
//! none for); on exit it commits what it printed and leaves the group.
//!
//! It stops after `--count` records (waiting for them), or — without `--count` and without
//! `--follow` — once it has printed everything below the high watermark each partition had when
//! last read. `--follow` keeps waiting for new records until Ctrl-C.

use std::io::Write;
use std::sync::Arc;

use anyhow::bail;
use weir_client::{ConsumedRecord, Consumer, ConsumerConfig, ResetPolicy, Start};

use crate::{Brokers, parse_position};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RecordOutput {
    /// The value of each record, one per line.
    Value,
    /// One JSON object per record and line.
    Json,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ConsumeArgs {
    /// The topic to read.
    topic: String,
    /// Where to start: earliest, latest, an offset, or @TIME — the first record at or after TIME
    /// (RFC 3339, for example @2026-11-23T10:00:00Z, or milliseconds since the Unix epoch).
    /// With --group: where partitions without a committed offset start (earliest or latest).
    #[arg(long, default_value = "earliest")]
    from: String,
    /// Only these partitions (repeatable; not with --group).
    #[arg(long, conflicts_with = "group")]
    partition: Vec<u32>,
    /// Read as a member of this consumer group, from its committed offsets.
    #[arg(long)]
    group: Option<String>,
    /// Stop after this many records (waits for them to arrive).
    #[arg(long)]
    count: Option<u64>,
    /// Keep waiting for new records (until Ctrl-C) instead of stopping at the end.
    #[arg(long)]
    follow: bool,
    /// value: one value per line; json: one object per line with topic, partition, offset,
    /// timestamp (ms), key, value and headers ([{"key", "value"}]) — bytes decoded as UTF-8,
    /// invalid sequences replaced by U+FFFD, absent ones null.
    #[arg(long, value_enum, default_value = "value")]
    output: RecordOutput,
    #[command(flatten)]
    brokers: Brokers,
}

/// The JSON line of a record (see the module docs).
fn record_json(record: &ConsumedRecord) -> serde_json::Value {
    let text =
        |b: &Option<bytes::Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    serde_json::json!({
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp_ms,
        "key": text(&record.key),
        "value": text(&record.value),
        "headers": record
            .headers
            .iter()
            .map(|(k, v)| serde_json::json!({ "key": k, "value": text(v) }))
            .collect::<Vec<_>>(),
    })
}

/// Writes one record; `false` when standard output is closed (a pipe reader went away).
fn write_record(
    out: &mut impl Write,
    record: &ConsumedRecord,
    format: RecordOutput,
) -> anyhow::Result<bool> {
    let written = match format {
        RecordOutput::Value => out
            .write_all(record.value.as_deref().unwrap_or(b""))
            .and_then(|()| out.write_all(b"\n")),
        RecordOutput::Json => writeln!(out, "{}", record_json(record)),
    };
    match written {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(err) => Err(err.into()),
    }
}

pub(crate) async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let start = parse_position("--from", &args.from)?;
    let client = args.brokers.shared_client()?;
    let mut config = ConsumerConfig::default();
    let mut consumer = match &args.group {
        Some(group) => {
            config.reset = match start {
                Start::Earliest => ResetPolicy::Earliest,
                Start::Latest => ResetPolicy::Latest,
                _ => bail!(
                    "--from {:?}: with --group use earliest or latest (where partitions without a committed offset start); move a group with `weir group reset`",
                    args.from
                ),
            };
            Consumer::join(
                Arc::clone(&client),
                group,
                std::slice::from_ref(&args.topic),
                config,
            )
            .await?
        }
        None => {
            let count = client.partition_count(&args.topic).await?;
            if let Some(p) = args.partition.iter().find(|&&p| p >= count) {
                bail!(
                    "topic {} has {count} partitions; --partition {p} does not exist",
                    args.topic
                );
            }
            // An exact offset outside the log is an error, not a silent jump elsewhere; reads
            // from a named place (earliest, latest, a time) that retention overtakes go on
            // from the oldest record.
            config.reset = match start {
                Start::Offset(_) => ResetPolicy::Fail,
                _ => ResetPolicy::Earliest,
            };
            let mut consumer = Consumer::new(Arc::clone(&client), config);
            consumer.assign(&args.topic, &args.partition, start).await?;
            consumer
        }
    };
    let result = read(&args, &mut consumer).await;
    // Commits what was printed (group, auto-commit) and leaves the group.
    let closed = consumer.close().await;
    result?;
    closed?;
    Ok(())
}

/// Prints records until the stop condition (see the module docs).
async fn read(args: &ConsumeArgs, consumer: &mut Consumer) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed: u64 = 0;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        if args.count.is_some_and(|c| printed >= c) {
            break;
        }
        if args.count.is_none() && !args.follow && consumer.caught_up() {
            break;
        }
        let max = args.count.map_or(usize::MAX, |c| {
            usize::try_from(c - printed).unwrap_or(usize::MAX)
        });
        let records = tokio::select! {
            records = consumer.poll_records(max.min(500)) => records?,
            _ = &mut interrupted => break,
        };
        for record in &records {
            if !write_record(&mut out, record, args.output)? {
                return Ok(());
            }
            printed += 1;
        }
        if records.is_empty() || args.follow {
            match out.flush() {
                Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                other => other?,
            }
        }
    }
    match out.flush() {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_print_as_json_lines() {
        let record = ConsumedRecord {
            topic: "t".into(),
            partition: 2,
            offset: 7,
            timestamp_ms: 1_700_000_000_000,
            key: Some(bytes::Bytes::from_static(b"k")),
            value: Some(bytes::Bytes::from_static(b"v\xff")),
            headers: vec![
                ("h".into(), Some(bytes::Bytes::from_static(b"1"))),
                ("n".into(), None),
            ],
        };
        let mut out = Vec::new();
        assert!(write_record(&mut out, &record, RecordOutput::Json).unwrap());
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with('\n') && line.lines().count() == 1);
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["partition"], 2);
        assert_eq!(value["offset"], 7);
        assert_eq!(value["timestamp"], 1_700_000_000_000_i64);
        assert_eq!(value["key"], "k");
        assert_eq!(value["value"], "v\u{fffd}");
        assert_eq!(value["headers"][0]["key"], "h");
        assert_eq!(value["headers"][0]["value"], "1");
        assert!(value["headers"][1]["value"].is_null());
    }
}
