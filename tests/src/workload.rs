//! A produce workload for cluster tests and its verification: one producer task per partition
//! writes batches of unique values with acks=all (retrying across failures; a retried batch is
//! never written twice) and records what was acknowledged; afterwards every partition is read
//! back from its log start and checked — each acknowledged value present exactly once, in
//! acknowledgement order, offsets dense, no value anywhere twice.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use tokio::sync::Mutex;
use weir_client::{Client, IdempotentBatcher};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

type Acked = Arc<Mutex<BTreeMap<u32, Vec<String>>>>;

/// Producers running against a topic.
#[derive(Debug)]
pub struct Workload {
    acked: Acked,
    stopping: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<u64>>>,
    /// Why producers stopped, for failure messages while the others still run.
    failures: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Workload {
    /// Starts one producer per partition, each writing batches of `batch_records` values.
    pub fn start(client: Arc<Client>, topic: &str, partitions: u32, batch_records: usize) -> Self {
        let acked: Acked = Arc::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let failures: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let tasks = (0..partitions)
            .map(|partition| {
                let client = Arc::clone(&client);
                let acked = Arc::clone(&acked);
                let stopping = Arc::clone(&stopping);
                let topic = topic.to_string();
                let failures = Arc::clone(&failures);
                tokio::spawn(async move {
                    let produced = async {
                        let (producer_id, epoch) = client.init_producer().await?;
                        let mut producer = IdempotentBatcher::new(producer_id, epoch);
                        let mut batches = 0u64;
                        while !stopping.load(Ordering::Relaxed) {
                            let values: Vec<String> = (0..batch_records)
                                .map(|i| format!("{topic}-p{partition}-b{batches}-r{i}"))
                                .collect();
                            let now = now_ms();
                            let batch = producer
                                .batch(partition, values.iter().map(|v| (now, None, v.as_bytes())))
                                .context("empty batch")?;
                            client.produce_batch(&topic, partition, batch).await?;
                            acked
                                .lock()
                                .await
                                .entry(partition)
                                .or_default()
                                .extend(values);
                            batches += 1;
                        }
                        anyhow::Ok(batches)
                    }
                    .await;
                    if let Err(err) = &produced {
                        failures
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(format!("partition {partition}: {err:#}"));
                    }
                    produced
                })
            })
            .collect();
        Self {
            acked,
            stopping,
            tasks,
            failures,
        }
    }

    /// Values acknowledged so far.
    pub async fn acknowledged(&self) -> usize {
        self.acked.lock().await.values().map(Vec::len).sum()
    }

    /// Waits until `more` values more than now are acknowledged: the cluster serves writes
    /// (`when`, such as "after the leader kill", names the moment in the failure message).
    pub async fn wait_progress(
        &self,
        more: usize,
        within: Duration,
        when: &str,
    ) -> anyhow::Result<()> {
        let target = self.acknowledged().await + more;
        let what = format!("{more} more values acknowledged {when}");
        crate::eventually(within, &what, || async {
            if self.tasks.iter().any(tokio::task::JoinHandle::is_finished) {
                let failures = self
                    .failures
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .join("; ");
                return Err(crate::abort(anyhow::anyhow!(
                    "a producer stopped: {failures}"
                )));
            }
            let acknowledged = self.acknowledged().await;
            ensure!(
                acknowledged >= target,
                "{acknowledged} acknowledged, waiting for {target}"
            );
            Ok(())
        })
        .await
    }

    /// Stops the producers; returns the batches acknowledged and the acknowledged values per
    /// partition, in acknowledgement order. Fails if any producer gave up.
    pub async fn stop(self) -> anyhow::Result<(u64, BTreeMap<u32, Vec<String>>)> {
        self.stopping.store(true, Ordering::Relaxed);
        let mut batches = 0;
        for task in self.tasks {
            batches += task.await??;
        }
        let acked = self.acked.lock().await.clone();
        Ok((batches, acked))
    }
}

/// What reading a topic back found, against what its producers had acknowledged.
#[derive(Debug, Clone, Default)]
pub struct ReadBack {
    /// Values acknowledged to the producers.
    pub acknowledged: usize,
    /// Records read (acknowledged or not: a batch whose answer was lost may be there too).
    pub read: usize,
    /// Acknowledged values not read back.
    pub lost: usize,
    /// Values read more than once (each extra copy counts).
    pub duplicated: usize,
    /// Partitions whose acknowledged values came back in another order than acknowledged.
    pub out_of_order: Vec<u32>,
    /// Each partition's high watermark at the read.
    pub high_watermarks: BTreeMap<u32, u64>,
}

impl ReadBack {
    /// Nothing lost, nothing twice, everything in order.
    pub fn exactly_once(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.out_of_order.is_empty()
    }
}

/// Reads every partition of `topic` from its log start to its high watermark and compares it
/// with the acknowledged values. Fails only when reading fails or offsets are not dense.
pub async fn read_back(
    client: &Client,
    topic: &str,
    acked: &BTreeMap<u32, Vec<String>>,
) -> anyhow::Result<ReadBack> {
    let partitions = client.metadata(&[topic.to_string()]).await?.topics[0]
        .partitions
        .len() as u32;
    let mut seen = HashSet::new();
    let mut report = ReadBack {
        acknowledged: acked.values().map(Vec::len).sum(),
        ..ReadBack::default()
    };
    for partition in 0..partitions {
        let offsets = client.list_offsets(topic, partition, None).await?;
        let mut values = Vec::new();
        let mut offset = offsets.log_start_offset;
        while offset < offsets.high_watermark {
            let fetched = client.fetch(topic, partition, offset, 1 << 20).await?;
            ensure!(
                !fetched.records.is_empty(),
                "partition {partition}: no progress at {offset}"
            );
            for record in fetched.records {
                ensure!(
                    record.offset == offset,
                    "partition {partition}: offset {} after {offset}",
                    record.offset
                );
                let value = String::from_utf8(record.value.unwrap_or_default().to_vec())?;
                if !seen.insert(value.clone()) {
                    report.duplicated += 1;
                }
                values.push(value);
                offset += 1;
            }
        }
        report.read += values.len();
        // Unacknowledged values (a batch whose answer was lost and that was then given up on)
        // may sit between the acknowledged ones.
        let wanted = acked.get(&partition).cloned().unwrap_or_default();
        let wanted_set: HashSet<&String> = wanted.iter().collect();
        let mut got: Vec<&String> = values.iter().filter(|v| wanted_set.contains(v)).collect();
        let mut once = HashSet::new();
        got.retain(|v| once.insert(*v));
        report.lost += wanted.len() - got.len();
        if got.len() == wanted.len() && !got.iter().zip(&wanted).all(|(a, b)| *a == b) {
            report.out_of_order.push(partition);
        }
        report
            .high_watermarks
            .insert(partition, offsets.high_watermark);
    }
    Ok(report)
}

/// [`read_back`], failing unless every acknowledged value is there exactly once and in order.
/// Returns each partition's high watermark.
pub async fn verify_exactly_once(
    client: &Client,
    topic: &str,
    acked: &BTreeMap<u32, Vec<String>>,
) -> anyhow::Result<BTreeMap<u32, u64>> {
    let report = read_back(client, topic, acked).await?;
    ensure!(
        report.exactly_once(),
        "read back {} records: {} of {} acknowledged lost, {} duplicated, out of order in partitions {:?}",
        report.read,
        report.lost,
        report.acknowledged,
        report.duplicated,
        report.out_of_order
    );
    Ok(report.high_watermarks)
}
