//! `weir consume TOPIC`: committed records, one value per line on standard output, from every
//! partition (or `--partition`). Stops after `--count` records, or — without `--count` — once it
//! has read up to the high watermark of every partition it reads.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::Brokers;

#[derive(Debug, clap::Args)]
pub(crate) struct ConsumeArgs {
    topic: String,
    /// Where to start: earliest, latest, an offset, or @TIME — the first record at or after TIME
    /// (RFC 3339, for example @2026-11-23T10:00:00Z, or milliseconds since the Unix epoch).
    #[arg(long, default_value = "earliest")]
    from: String,
    /// Only this partition.
    #[arg(long)]
    partition: Option<u32>,
    /// Stop after this many records (waits for them to arrive).
    #[arg(long)]
    count: Option<u64>,
    #[command(flatten)]
    brokers: Brokers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    Earliest,
    Latest,
    Offset(u64),
    /// Milliseconds since the Unix epoch.
    Time(i64),
}

fn parse_start(text: &str) -> anyhow::Result<Start> {
    let usage = || format!("--from {text:?}: use earliest, latest, an offset or @TIME");
    match text {
        "earliest" => Ok(Start::Earliest),
        "latest" => Ok(Start::Latest),
        other => match other.strip_prefix('@') {
            Some(time) => {
                if let Ok(ms) = time.parse::<i64>() {
                    return Ok(Start::Time(ms));
                }
                let at = humantime::parse_rfc3339_weak(time)
                    .with_context(|| format!("{}: {time:?} is not an RFC 3339 time", usage()))?;
                let ms = at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                    .with_context(usage)?;
                Ok(Start::Time(ms))
            }
            None => other.parse().map(Start::Offset).with_context(usage),
        },
    }
}

pub(crate) async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let start = parse_start(&args.from)?;
    let client = args.brokers.client()?;
    let metadata = client.metadata(std::slice::from_ref(&args.topic)).await?;
    let count = metadata
        .topics
        .first()
        .map(|t| t.partitions.len() as u32)
        .context("topic not in metadata")?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) if p >= count => {
            bail!(
                "topic {} has {count} partitions; --partition {p} does not exist",
                args.topic
            )
        }
        Some(p) => vec![p],
        None => (0..count).collect(),
    };
    // Position and end (high watermark at start) per partition.
    let mut positions = Vec::new();
    for &p in &partitions {
        let at = match start {
            Start::Time(ms) => Some(ms),
            _ => None,
        };
        let offsets = client.list_offsets(&args.topic, p, at).await?;
        let position = match start {
            Start::Earliest => offsets.log_start_offset,
            Start::Latest => offsets.high_watermark,
            Start::Offset(o) => o,
            Start::Time(_) => offsets
                .offset_for_timestamp
                .unwrap_or(offsets.high_watermark),
        };
        positions.push((p, position, offsets.high_watermark));
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed: u64 = 0;
    loop {
        let mut progressed = false;
        let mut all_caught_up = true;
        for (p, position, end) in positions.iter_mut() {
            if args.count.is_some_and(|c| printed >= c) {
                break;
            }
            let fetched = client.fetch(&args.topic, *p, *position, 1 << 20).await?;
            for record in &fetched.records {
                if args.count.is_some_and(|c| printed >= c) {
                    break;
                }
                let value = record.value.as_deref().unwrap_or(b"");
                if let Err(err) = out.write_all(value).and_then(|()| out.write_all(b"\n")) {
                    if err.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(());
                    }
                    return Err(err.into());
                }
                printed += 1;
                *position = record.offset + 1;
                progressed = true;
            }
            *position = (*position).max(fetched.next_offset);
            if *position < *end {
                all_caught_up = false;
            }
        }
        match args.count {
            Some(c) if printed >= c => break,
            None if all_caught_up => break,
            _ => {}
        }
        if !progressed {
            out.flush()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions_parse() {
        assert_eq!(parse_start("earliest").ok(), Some(Start::Earliest));
        assert_eq!(parse_start("latest").ok(), Some(Start::Latest));
        assert_eq!(parse_start("42").ok(), Some(Start::Offset(42)));
        assert_eq!(
            parse_start("@1700000000000").ok(),
            Some(Start::Time(1_700_000_000_000))
        );
        assert_eq!(
            parse_start("@2023-11-14T22:13:20Z").ok(),
            Some(Start::Time(1_700_000_000_000))
        );
        for bad in ["yesterday", "@yesterday", "-1", "@"] {
            let err = parse_start(bad)
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default();
            assert!(err.contains("--from"), "{bad}: {err}");
        }
    }
}
