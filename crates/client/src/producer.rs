//! [`Producer`]: batching, linger, compression, retries and idempotence on top of [`Client`].
//!
//! `send` puts a record into the [`Accumulator`] (waiting while the producer already buffers
//! `buffer_memory` bytes) and hands back a [`DeliveryFuture`]. One background task takes ready
//! batches, stamps each with the producer id, epoch and the partition's next sequence, and sends
//! it to the partition's leader — all partitions in parallel, one batch per partition at a time,
//! while the next batch of that partition keeps filling.
//!
//! Quotas: a produce answer that says the node throttled the producer (`throttle_time_ms`, a
//! produce-bytes or request rate quota) makes the next batch sent to that node wait that long
//! (in [`Client`]'s calls, per node: Kafka's KIP-219 behaviour), so the producer slows to its
//! quota instead of piling up held-back requests; nothing fails because of it.
//!
//! Invariants:
//! - A batch is built once; every retry sends the same bytes (same sequence), so the leader drops
//!   a batch it already wrote (ALREADY_EXISTS is success, without offsets).
//! - A batch that fails for good (its delivery timeout passed, or the server refused it) fails
//!   all its records, and its partition continues under a fresh producer id from InitProducer:
//!   whether the leader wrote the failed batch is unknown, and reusing its sequence could get a
//!   later batch dropped as a duplicate.
//! - A record's future resolves exactly once; dropping the `Producer` does not drop records
//!   already sent: the task delivers them and then ends.
//!
//! Not handled yet: transactions; splitting a batch the server refuses as too large
//! (`max.message.bytes`) — its records fail with the server's INVALID_ARGUMENT.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use weir_format::batch::{Compression, ProducerInfo};

use crate::accumulator::{Accumulator, ReadyBatch, Sequences, TopicPartition, record_size};
use crate::{Acks, Client, ClientError};

/// How a [`Producer`] batches and acknowledges.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// What an acknowledgement waits for (default all: a majority has the records on disk).
    pub acks: Acks,
    /// A batch closes at this many bytes of records (before compression). Default 1 MiB.
    ///
    /// A batch is sent when it is full or its linger ends, whichever comes first, so at moderate
    /// rates linger decides and batches stay small. Batches grow towards this size only while the
    /// partition's in-flight requests are all taken: then fewer, larger writes carry the load
    /// (each batch is one Raft entry, with a fixed cost per entry on the leader; with 1 KiB
    /// records, 64 KiB batches capped one partition at about a third of what 1 MiB batches
    /// reach — see benches/README.md).
    pub batch_size: usize,
    /// How long a batch waits for more records before it is sent. Default 5 ms.
    pub linger: Duration,
    /// Batch compression (default lz4).
    pub compression: Compression,
    /// How long a record may take from `send` to its acknowledgement, retries included, before
    /// it fails. Default 60 s.
    pub delivery_timeout: Duration,
    /// Most bytes of records buffered (waiting or in flight); `send` waits for room beyond it.
    /// Default 32 MiB.
    pub buffer_memory: usize,
    /// Most batches of one partition in flight at once (1 to 5; default 5). Batches are still
    /// written in order: the leader checks each producer's sequences.
    pub max_in_flight: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            acks: Acks::All,
            batch_size: 1 << 20,
            linger: Duration::from_millis(5),
            compression: Compression::Lz4,
            delivery_timeout: Duration::from_secs(60),
            buffer_memory: 32 << 20,
            max_in_flight: 5,
        }
    }
}

/// One record to produce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    /// The partition; `None`: by key, or (without a key) the producer's choice.
    pub partition: Option<u32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// Header keys and values, in order.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Ms since the Unix epoch; `None`: the time of `send`.
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    /// A record with this value.
    pub fn new(value: impl Into<Bytes>) -> Self {
        Self {
            value: Some(value.into()),
            ..Self::default()
        }
    }

    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((key.into(), Some(value.into())));
        self
    }

    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub fn timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }
}

/// Where an acknowledged record went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    pub topic: String,
    pub partition: u32,
    /// The record's offset; `None` unless acks = all (and for a retried batch the leader had
    /// already written, whose offsets the answer does not carry).
    pub offset: Option<u64>,
}

type Outcome = Result<RecordMetadata, ClientError>;

/// What the background task keeps per record.
#[derive(Debug)]
struct Reply {
    tx: oneshot::Sender<Outcome>,
    /// Buffer-memory permits to give back once the record is done.
    permits: u32,
}

/// Resolves when a record is acknowledged (or fails for good).
#[derive(Debug)]
pub struct DeliveryFuture {
    rx: oneshot::Receiver<Outcome>,
}

impl Future for DeliveryFuture {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed("producer"))))
    }
}

/// State shared by the producer handle and its task.
#[derive(Debug)]
struct Shared {
    accumulator: Mutex<Accumulator<Reply>>,
    /// Wakes the task: a record was added, a flush asked for, or the producer closed.
    wake: Notify,
    /// Buffer memory, one permit per byte (capped per record).
    memory: Semaphore,
    /// The lowest id of a batch not yet done (see `Accumulator::lowest_incomplete`).
    progress: watch::Sender<u64>,
    closing: AtomicBool,
}

impl Shared {
    fn accumulator(&self) -> std::sync::MutexGuard<'_, Accumulator<Reply>> {
        // Only the accumulator's own methods touch it under the lock, and they do not panic
        // half-way in a way that matters; use it even if another thread panicked.
        self.accumulator.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Produces records: batches them per partition, sends batches to partition leaders with
/// retries, idempotently. Cheap to share by reference between tasks (`send` takes `&self`).
#[derive(Debug)]
pub struct Producer {
    client: Arc<Client>,
    config: ProducerConfig,
    shared: Arc<Shared>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Producer {
    /// A producer with an id and epoch from the cluster (InitProducer); starts its background
    /// task on the current tokio runtime.
    pub async fn new(client: Arc<Client>, config: ProducerConfig) -> Result<Self, ClientError> {
        if config.batch_size == 0 {
            return Err(ClientError::Usage("batch_size must be at least 1".into()));
        }
        if !(1..=crate::accumulator::MAX_IN_FLIGHT).contains(&config.max_in_flight) {
            return Err(ClientError::Usage(format!(
                "max_in_flight must be 1 to {}",
                crate::accumulator::MAX_IN_FLIGHT
            )));
        }
        let identity = client.init_producer().await?;
        let shared = Arc::new(Shared {
            accumulator: Mutex::new(Accumulator::new(
                config.batch_size,
                config.max_in_flight,
                config.linger,
                config.compression,
            )),
            wake: Notify::new(),
            memory: Semaphore::new(config.buffer_memory.clamp(1, Semaphore::MAX_PERMITS)),
            progress: watch::Sender::new(0),
            closing: AtomicBool::new(false),
        });
        let task = tokio::spawn(
            Sender {
                client: Arc::clone(&client),
                config: config.clone(),
                shared: Arc::clone(&shared),
                identity,
                sequences: Sequences::default(),
                sending: HashMap::new(),
            }
            .run(),
        );
        Ok(Self {
            client,
            config,
            shared,
            task: tokio::sync::Mutex::new(Some(task)),
        })
    }

    /// Queues `record` for `topic`; waits only while the buffer is full. Fails at once for an
    /// unknown topic or partition; the returned future resolves when the record is acknowledged
    /// or has failed for good.
    pub async fn send(
        &self,
        topic: &str,
        record: ProducerRecord,
    ) -> Result<DeliveryFuture, ClientError> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(ClientError::Closed("producer"));
        }
        let count = self.client.partition_count(topic).await?;
        if let Some(partition) = record.partition
            && partition >= count
        {
            return Err(ClientError::UnknownPartition {
                topic: topic.to_string(),
                partition,
                partitions: count,
            });
        }
        let size = record_size(
            record.key.as_deref(),
            record.value.as_deref(),
            &record.headers,
        );
        let limit = self.config.buffer_memory.clamp(1, Semaphore::MAX_PERMITS);
        let permits = u32::try_from(size.min(limit)).unwrap_or(u32::MAX);
        self.shared
            .memory
            .acquire_many(permits)
            .await
            .map_err(|_| ClientError::Closed("producer"))?
            .forget();
        let (tx, rx) = oneshot::channel();
        let timestamp = record.timestamp_ms.unwrap_or_else(now_ms);
        {
            let mut accumulator = self.shared.accumulator();
            let partition = accumulator.partition_for(
                topic,
                count,
                record.partition,
                record.key.as_deref(),
                rand::random(),
            );
            accumulator.append(
                topic,
                partition,
                timestamp,
                record.key.as_deref(),
                record.value.as_deref(),
                &record.headers,
                Reply { tx, permits },
                Instant::now(),
            );
        }
        self.shared.wake.notify_one();
        Ok(DeliveryFuture { rx })
    }

    /// Sends every record queued so far at once (without waiting for linger) and waits until
    /// each is acknowledged or failed. Failures are reported by the records' futures.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let below = self.shared.accumulator().flush();
        self.shared.wake.notify_one();
        let mut progress = self.shared.progress.subscribe();
        progress
            .wait_for(|lowest| *lowest >= below)
            .await
            .map(|_| ())
            .map_err(|_| ClientError::Closed("producer"))
    }

    /// Flushes, then stops the background task. Records sent later fail with `Closed`.
    pub async fn close(self) -> Result<(), ClientError> {
        let flushed = self.flush().await;
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        if let Some(task) = self.task.lock().await.take() {
            task.await.map_err(|e| {
                ClientError::Usage(format!("the producer's background task failed: {e}"))
            })?;
        }
        flushed
    }

    /// The configuration the producer runs with.
    pub fn config(&self) -> &ProducerConfig {
        &self.config
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        // The task delivers what is queued, then ends.
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

/// What one send of a batch came to.
#[derive(Debug)]
struct Sent {
    batch: ReadyBatch<Reply>,
    info: ProducerInfo,
    count: u32,
    result: Result<Option<u64>, ClientError>,
}

/// The background task: takes ready batches, sends them, resolves the records' futures.
#[derive(Debug)]
struct Sender {
    client: Arc<Client>,
    config: ProducerConfig,
    shared: Arc<Shared>,
    /// The identity new partitions (and partitions after a failure) start under.
    identity: (i64, i16),
    sequences: Sequences,
    /// What each send task holds, to release should it panic.
    sending: HashMap<tokio::task::Id, Sending>,
}

/// A batch being sent, as far as the task must know without it.
#[derive(Debug)]
struct Sending {
    topic: String,
    partition: u32,
    batch_id: u64,
    info: ProducerInfo,
    permits: usize,
}

impl Sender {
    async fn run(mut self) {
        let mut in_flight: JoinSet<Sent> = JoinSet::new();
        loop {
            let now = Instant::now();
            let (ready, next_deadline) = {
                let mut accumulator = self.shared.accumulator();
                (accumulator.ready(now), accumulator.next_deadline())
            };
            for batch in ready {
                self.start(batch, &mut in_flight).await;
            }
            if self.shared.closing.load(Ordering::Acquire)
                && in_flight.is_empty()
                && self.shared.accumulator().is_empty()
            {
                return;
            }
            tokio::select! {
                () = self.shared.wake.notified() => {}
                Some(done) = in_flight.join_next_with_id(), if !in_flight.is_empty() => match done {
                    Ok((id, sent)) => {
                        self.sending.remove(&id);
                        self.finish(sent);
                    }
                    // A send task panicked: its records' senders went with it, so their
                    // futures resolve as failed. Release what it held.
                    Err(err) => {
                        tracing::error!(%err, "a produce task failed");
                        if let Some(lost) = self.sending.remove(&err.id()) {
                            self.lost(lost);
                        }
                    }
                },
                () = sleep_until(next_deadline) => {}
            }
        }
    }

    /// Stamps `batch` with its identity and sequence and starts sending it; a batch already past
    /// its delivery timeout fails without being sent.
    async fn start(&mut self, batch: ReadyBatch<Reply>, in_flight: &mut JoinSet<Sent>) {
        let deadline = batch.opened + self.config.delivery_timeout;
        let partition: TopicPartition = (batch.topic.clone(), batch.partition);
        if Instant::now() >= deadline {
            let count = batch.builder.record_count();
            let info = ProducerInfo::NONE;
            self.finish(Sent {
                batch,
                info,
                count,
                result: Err(ClientError::Timeout {
                    waited: self.config.delivery_timeout,
                    last: "the batch waited for its partition's earlier batches".into(),
                }),
            });
            return;
        }
        if !self.sequences.has(&partition)
            && self.identity.0 < 0
            && let Err(err) = self.renew_identity().await
        {
            let count = batch.builder.record_count();
            self.finish(Sent {
                batch,
                info: ProducerInfo::NONE,
                count,
                result: Err(err),
            });
            return;
        }
        let info = self
            .sequences
            .reserve(&partition, self.identity, batch.builder.record_count());
        let client = Arc::clone(&self.client);
        let acks = self.config.acks;
        let sending = Sending {
            topic: batch.topic.clone(),
            partition: batch.partition,
            batch_id: batch.id,
            info,
            permits: batch.replies.iter().map(|r| r.permits as usize).sum(),
        };
        let task = in_flight.spawn(async move {
            let mut batch = batch;
            let builder = std::mem::replace(
                &mut batch.builder,
                weir_format::batch::BatchBuilder::new(Compression::None),
            );
            let count = builder.record_count();
            let result = match builder.producer(info).build() {
                Some(bytes) => {
                    send_in_order(
                        &client,
                        &batch.topic,
                        batch.partition,
                        bytes,
                        acks,
                        deadline,
                    )
                    .await
                }
                None => Ok(None),
            };
            Sent {
                batch,
                info,
                count,
                result,
            }
        });
        self.sending.insert(task.id(), sending);
    }

    /// A send task died with its batch: the records' futures already failed (their senders
    /// were dropped); release the partition, its sequence (a fresh identity follows) and the
    /// buffer memory.
    fn lost(&mut self, lost: Sending) {
        self.sequences
            .failed(&(lost.topic.clone(), lost.partition), lost.info);
        self.identity.0 = -1;
        self.shared.memory.add_permits(lost.permits);
        let lowest = {
            let mut accumulator = self.shared.accumulator();
            accumulator.complete(&lost.topic, lost.partition, lost.batch_id);
            accumulator.lowest_incomplete()
        };
        self.shared.progress.send_replace(lowest);
    }

    /// A fresh identity for partitions that start over (after a failure). When none can be had
    /// the batch fails (a batch without an identity would not be idempotent); the next batch
    /// tries again.
    async fn renew_identity(&mut self) -> Result<(), ClientError> {
        self.identity = self.client.init_producer().await?;
        Ok(())
    }

    fn finish(&mut self, sent: Sent) {
        let Sent {
            batch,
            info,
            count,
            result,
        } = sent;
        let partition: TopicPartition = (batch.topic.clone(), batch.partition);
        let mut permits: usize = 0;
        match &result {
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(topic = %batch.topic, partition = batch.partition, %err, records = count, "batch failed");
                if info != ProducerInfo::NONE {
                    self.sequences.failed(&partition, info);
                    // The next batch of this partition starts over under a new identity.
                    self.identity.0 = -1;
                }
            }
        }
        for (i, reply) in batch.replies.into_iter().enumerate() {
            permits += reply.permits as usize;
            let outcome = match &result {
                Ok(base) => Ok(RecordMetadata {
                    topic: batch.topic.clone(),
                    partition: batch.partition,
                    offset: base.map(|b| b + i as u64),
                }),
                Err(err) => Err(err.clone()),
            };
            // The caller may have dropped the future: nothing to tell then.
            let _ = reply.tx.send(outcome);
        }
        self.shared.memory.add_permits(permits);
        let lowest = {
            let mut accumulator = self.shared.accumulator();
            accumulator.complete(&batch.topic, batch.partition, batch.id);
            accumulator.lowest_incomplete()
        };
        self.shared.progress.send_replace(lowest);
    }
}

/// Sends one idempotent batch, retrying until `deadline`. With several batches of a partition in
/// flight, a batch can reach the leader before its predecessor (a retry after a leader change,
/// or two requests racing on the server); the leader answers ABORTED (a sequence gap) and the
/// batch is sent again once the predecessor had time to land.
async fn send_in_order(
    client: &Client,
    topic: &str,
    partition: u32,
    bytes: Bytes,
    acks: Acks,
    deadline: Instant,
) -> Result<Option<u64>, ClientError> {
    let mut backoff = weir_format::retry::RetryPolicy::RESEND.backoff();
    loop {
        match client
            .produce_batch_with(topic, partition, bytes.clone(), acks, deadline)
            .await
        {
            Err(err) if err.code() == Some(tonic::Code::Aborted) && Instant::now() < deadline => {
                tracing::debug!(topic, partition, %err, "sequence gap: an earlier batch is still on its way");
                tokio::time::sleep(backoff.next_delay(None)).await;
            }
            other => return other.map(|answer| answer.base_offset),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
