//! `weir bench --replay-bytes N`: how fast one partition's backlog reads back from offset 0.
//!
//! 1. Writes exactly N value bytes into partition 0 of a fresh one-partition topic, as
//!    `--message-size` values (the last one shorter when N is not a multiple), with one
//!    producer at max rate. Every record must be acknowledged and the partition's high
//!    watermark must equal the record count, or the run fails: the read must have exactly N
//!    bytes to read.
//! 2. Waits `--settle` (replication to the last replica and syncs finish), connects the
//!    reader's client to the leader and caches the metadata — all before the clock starts.
//! 3. Times reading everything back: the clock starts right before the reader starts (the
//!    consumer's `assign`, which starts its fetcher; or the first `fetch`) and stops when the
//!    record at the last offset has been returned. Each record's offset and value size is
//!    checked (every offset once, in order), which touches no payload bytes.
//!
//! The data was just written, so the leader serves it from the page cache: this measures the
//! read path's CPU cost (broker fetch, gRPC, client decoding), not the disk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use weir_client::{Client, Consumer, ConsumerConfig, Producer, ProducerRecord, ResetPolicy, Start};

use super::payload::{Clock, Pool};
use super::progress::{Live, Progress};
use super::stats::{Errors, Replay, Report, Throughput, seconds};
use super::{ReaderArg, Settings};

/// How long the high watermark may take to show every acknowledged record.
const HIGH_WATERMARK_WAIT: Duration = Duration::from_secs(10);
/// Most records one `poll` returns while replaying.
const REPLAY_POLL_RECORDS: usize = 100_000;

pub(crate) async fn run(
    settings: &Settings,
    admin: &Arc<Client>,
    topic: &str,
    bytes: u64,
    progress: &Progress,
) -> anyhow::Result<Report> {
    let live = Arc::new(Live::default());
    let _watch = progress.watch(Arc::clone(&live));
    let size = settings.message_size as u64;
    let records = bytes.div_ceil(size);
    let last_size = bytes - (records - 1) * size;
    let mut errors = Errors::default();

    progress.phase(&format!(
        "replay: writing {bytes} bytes ({records} records) into {topic}/0"
    ));
    let (write, without_offset) = write(settings, topic, records, last_size, &live).await?;
    // Acknowledged with acks=all means committed, so the high watermark must get there; how
    // long it takes to show is reported (it should be no time at all).
    let acknowledged = Instant::now();
    let high_watermark = loop {
        let high_watermark = admin
            .list_offsets(topic, 0, None)
            .await
            .with_context(|| format!("reading the high watermark of {topic}/0"))?
            .high_watermark;
        if high_watermark >= records || acknowledged.elapsed() >= HIGH_WATERMARK_WAIT {
            break high_watermark;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let high_watermark_lag = acknowledged.elapsed();
    if high_watermark != records {
        bail!(
            "replay: {records} records were acknowledged ({without_offset} of them without an offset) but {topic}/0 has a high watermark of {high_watermark} after {HIGH_WATERMARK_WAIT:?}"
        );
    }
    if !settings.settle.is_zero() {
        progress.phase("replay: settling");
        tokio::time::sleep(settings.settle).await;
    }

    let client = settings.client()?;
    client
        .list_offsets(topic, 0, None)
        .await
        .with_context(|| format!("connecting to the leader of {topic}/0"))?;
    let mut check = Check::new(records, size, last_size);
    progress.phase(&format!(
        "replay: reading {topic}/0 back from offset 0 ({})",
        reader_name(settings.replay_reader)
    ));
    let read_seconds = match settings.replay_reader {
        ReaderArg::Consumer => read_consumer(settings, client, topic, &mut check, &live).await?,
        ReaderArg::Fetch => read_fetch(settings, &client, topic, &mut check, &live).await?,
    };
    let verified = check.complete();
    errors.absorb(check.errors);
    Ok(Report {
        config: super::config_json(settings, &[topic.to_string()]),
        setup: super::setup_line(settings),
        timed: None,
        totals: None,
        backlog: None,
        replay: Some(Replay {
            reader: reader_name(settings.replay_reader),
            write,
            read: Throughput {
                messages: check.records_read,
                bytes: check.bytes_read,
                seconds: read_seconds,
            },
            verified,
            high_watermark,
            high_watermark_lag: seconds(high_watermark_lag),
        }),
        errors,
    })
}

fn reader_name(reader: ReaderArg) -> &'static str {
    match reader {
        ReaderArg::Consumer => "consumer",
        ReaderArg::Fetch => "fetch",
    }
}

/// Writes `records` records into partition 0 (the last one `last_size` bytes); fails unless
/// every one is acknowledged. Also returns how many acknowledgements came without an offset
/// (with acks=all: a retry the leader answered as already written).
async fn write(
    settings: &Settings,
    topic: &str,
    records: u64,
    last_size: u64,
    live: &Live,
) -> anyhow::Result<(Throughput, u64)> {
    let producer = Producer::new(settings.client()?, settings.producer_config())
        .await
        .context("starting the producer")?;
    let pool = Pool::new(settings.message_size);
    let mut values = pool.values(settings.message_size);
    let clock = Clock::new();
    let start = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut written = Throughput::default();
    let mut first_failure = None;
    let mut failed = 0u64;
    let mut without_offset = 0u64;
    let mut tally = |outcome: Result<weir_client::RecordMetadata, weir_client::ClientError>,
                     len: u64| match outcome {
        Ok(metadata) => {
            without_offset += u64::from(metadata.offset.is_none());
            written.messages += 1;
            written.bytes += len;
            Live::add(&live.published, 1);
            Live::add(&live.published_bytes, len);
        }
        Err(err) => {
            failed += 1;
            Live::add(&live.errors, 1);
            first_failure.get_or_insert_with(|| err.to_string());
        }
    };
    for i in 0..records {
        let len = if i + 1 == records {
            last_size
        } else {
            settings.message_size as u64
        };
        let value = values.sized(
            clock.micros(Instant::now()),
            usize::try_from(len).unwrap_or(usize::MAX),
        );
        let delivery = producer
            .send(topic, ProducerRecord::new(value).partition(0))
            .await
            .with_context(|| format!("replay: sending record {i} to {topic}/0"))?;
        pending.push(async move { (delivery.await, len) });
        // Take what is done so far without waiting (keeps `pending` short).
        while let Some(Some((outcome, len))) = futures::FutureExt::now_or_never(pending.next()) {
            tally(outcome, len);
        }
        if i % 256 == 255 {
            tokio::task::yield_now().await;
        }
    }
    while let Some((outcome, len)) = pending.next().await {
        tally(outcome, len);
    }
    let elapsed = start.elapsed();
    producer
        .close()
        .await
        .context("replay: closing the producer")?;
    if failed > 0 {
        bail!(
            "replay: {failed} of {records} records were not acknowledged; the first failure: {}",
            first_failure.unwrap_or_default()
        );
    }
    written.seconds = seconds(elapsed);
    Ok((written, without_offset))
}

/// Checks that offsets 0.. come back once each, in order, with their sizes.
#[derive(Debug)]
struct Check {
    records: u64,
    size: u64,
    last_size: u64,
    /// The next offset expected.
    next: u64,
    records_read: u64,
    bytes_read: u64,
    errors: Errors,
}

impl Check {
    fn new(records: u64, size: u64, last_size: u64) -> Self {
        Self {
            records,
            size,
            last_size,
            next: 0,
            records_read: 0,
            bytes_read: 0,
            errors: Errors::default(),
        }
    }

    fn record(&mut self, offset: u64, len: u64) {
        self.records_read += 1;
        self.bytes_read += len;
        if offset != self.next {
            self.errors.consume_error(format!(
                "replay: offset {offset} came where {} was expected",
                self.next
            ));
        }
        let expected = if offset + 1 == self.records {
            self.last_size
        } else {
            self.size
        };
        if len != expected {
            self.errors.consume_error(format!(
                "replay: offset {offset} has a {len}-byte value, not {expected}"
            ));
        }
        self.next = self.next.max(offset + 1);
    }

    /// Checks a batch of records read, `(offset, value length)`, and counts them live.
    fn records(&mut self, live: &Live, records: impl Iterator<Item = (u64, u64)>) {
        let (mut count, mut bytes) = (0, 0);
        for (offset, len) in records {
            self.record(offset, len);
            count += 1;
            bytes += len;
        }
        Live::add(&live.consumed, count);
        Live::add(&live.consumed_bytes, bytes);
    }

    /// True, with the error recorded, once reading has gone past `deadline`.
    fn out_of_time(&mut self, deadline: Instant) -> bool {
        if Instant::now() < deadline {
            return false;
        }
        self.errors.consume_error(format!(
            "replay: reading stopped at offset {} of {} after --drain-timeout",
            self.next, self.records
        ));
        true
    }

    fn done(&self) -> bool {
        self.next >= self.records
    }

    fn complete(&self) -> bool {
        self.done() && self.records_read == self.records && self.errors.consume == 0
    }
}

/// Reads with a `Consumer`; the seconds from `assign` to the last record.
async fn read_consumer(
    settings: &Settings,
    client: Arc<Client>,
    topic: &str,
    check: &mut Check,
    live: &Live,
) -> anyhow::Result<f64> {
    let config = ConsumerConfig {
        auto_commit: false,
        reset: ResetPolicy::Fail,
        max_bytes: settings.fetch_max_bytes,
        max_poll_records: REPLAY_POLL_RECORDS,
        poll_timeout: Duration::from_secs(1),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client, config);
    let start = Instant::now();
    let deadline = start + settings.drain_timeout;
    consumer
        .assign(topic, &[0], Start::Offset(0))
        .await
        .with_context(|| format!("replay: assigning {topic}/0"))?;
    let mut end = start;
    while !check.done() && !check.out_of_time(deadline) {
        match consumer.poll_records(REPLAY_POLL_RECORDS).await {
            Ok(records) => {
                check.records(
                    live,
                    records
                        .iter()
                        .map(|r| (r.offset, r.value.as_ref().map_or(0, |v| v.len() as u64))),
                );
                end = Instant::now();
            }
            Err(err) => {
                Live::add(&live.errors, 1);
                check.errors.consume_error(format!("replay: poll: {err}"));
            }
        }
    }
    let _ = consumer.close().await;
    Ok(seconds(end - start))
}

/// Reads with `Client::fetch`, one request at a time; the seconds from the first request to
/// the answer holding the last record.
async fn read_fetch(
    settings: &Settings,
    client: &Client,
    topic: &str,
    check: &mut Check,
    live: &Live,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let deadline = start + settings.drain_timeout;
    let mut end = start;
    while !check.done() && !check.out_of_time(deadline) {
        match client
            .fetch(topic, 0, check.next, settings.fetch_max_bytes)
            .await
        {
            Ok(answer) => {
                check.records(
                    live,
                    answer
                        .records
                        .iter()
                        .map(|r| (r.offset, r.value.as_ref().map_or(0, |v| v.len() as u64))),
                );
                end = Instant::now();
                if answer.records.is_empty() {
                    check.next = check.next.max(answer.next_offset);
                }
            }
            Err(err) => {
                Live::add(&live.errors, 1);
                check.errors.consume_error(format!("replay: fetch: {err}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(seconds(end - start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_wants_every_offset_once_with_its_size() {
        let mut check = Check::new(3, 10, 4);
        check.record(0, 10);
        check.record(1, 10);
        assert!(!check.done());
        check.record(2, 4);
        assert!(check.done() && check.complete());

        let mut gap = Check::new(3, 10, 4);
        gap.record(0, 10);
        gap.record(2, 4);
        assert!(gap.done() && !gap.complete());

        let mut short = Check::new(2, 10, 10);
        short.record(0, 10);
        short.record(1, 9);
        assert!(!short.complete());
        assert_eq!(short.errors.consume, 1);
    }
}
