//! The produce path fuzzed end to end, bytes in and stored or refused: proptest sends an
//! in-process node arbitrary bytes as `ProduceRequest.batch`, valid batches (plain and lz4) and
//! mutations of them (bit flips with and without a repaired CRC, truncation, trailing bytes, a
//! wrong record count, a wrong declared uncompressed size, other attributes), and arbitrary
//! `records`. Every answer must be OK or INVALID_ARGUMENT, within a few seconds (never INTERNAL,
//! DATA_LOSS or a hang); each OK takes the next offsets; afterwards the partition reads back from
//! offset 0 with dense offsets, every stored batch decodes, and the records stored are exactly
//! those of the OK answers.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tonic::Code;
use weir_format::batch::{BatchBuilder, BatchIter, Compression, HEADER_LEN};
use weir_proto::v1::{FetchRequest, Header, ProduceRequest, Record};
use weir_tests::api::ApiNode;
use weir_tests::hostile::{DECLARED_AT, RECORD_COUNT_AT, recrc};

/// Cases per run: enough to reach every mutation many times, few enough to take seconds.
const CASES: u32 = 400;
/// Longest one answer may take: a hang is a failure.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
const TOPIC: &str = "fuzz";

#[derive(Debug, Clone)]
struct RecordSpec {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    /// 0: the node's clock.
    timestamp: i64,
}

#[derive(Debug, Clone)]
enum Mutation {
    None,
    /// A bit flipped anywhere, the CRC left as it was.
    Flip(Index, u8),
    /// A bit flipped in a field the CRC covers (not the producer's identity, whose checks answer
    /// with other codes by design), the CRC made right again.
    FlipRecrc(Index, u8),
    Truncate(Index),
    Extend(Vec<u8>),
    Count(u32),
    Declared(u32),
    Attributes(u16),
}

#[derive(Debug, Clone)]
enum Input {
    Bytes(Vec<u8>),
    Batch {
        lz4: bool,
        records: Vec<RecordSpec>,
        mutation: Mutation,
    },
    Records(Vec<RecordSpec>),
    /// Records and a batch together: refused.
    Both(Vec<RecordSpec>),
}

fn record_spec() -> impl Strategy<Value = RecordSpec> {
    let bytes = || proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64));
    (
        bytes(),
        bytes(),
        proptest::collection::vec((".{0,8}", bytes()), 0..3),
        prop_oneof![
            Just(0i64),
            any::<i64>(),
            1_600_000_000_000i64..1_800_000_000_000
        ],
    )
        .prop_map(|(key, value, headers, timestamp)| RecordSpec {
            key,
            value,
            headers,
            timestamp,
        })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => Just(Mutation::None),
        2 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        4 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipRecrc(at, bit)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => proptest::collection::vec(any::<u8>(), 1..32).prop_map(Mutation::Extend),
        2 => prop_oneof![Just(0u32), Just(2), Just(i32::MAX as u32), Just(u32::MAX), any::<u32>()]
            .prop_map(Mutation::Count),
        2 => prop_oneof![Just(0u32), Just(256 << 20), Just(u32::MAX), 0u32..4096]
            .prop_map(Mutation::Declared),
        1 => any::<u16>().prop_map(Mutation::Attributes),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    let records = |n| proptest::collection::vec(record_spec(), n);
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..512).prop_map(Input::Bytes),
        5 => (any::<bool>(), records(1..6), mutation())
            .prop_map(|(lz4, records, mutation)| Input::Batch { lz4, records, mutation }),
        2 => records(0..6).prop_map(Input::Records),
        1 => records(1..3).prop_map(Input::Both),
    ]
}

fn build(lz4: bool, records: &[RecordSpec]) -> Bytes {
    let mut builder = BatchBuilder::new(if lz4 {
        Compression::Lz4
    } else {
        Compression::None
    });
    for r in records {
        let headers: Vec<(&str, Option<&[u8]>)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        builder.push(r.timestamp, r.key.as_deref(), r.value.as_deref(), &headers);
    }
    builder.build().unwrap_or_default()
}

fn mutate(batch: Bytes, mutation: &Mutation) -> Bytes {
    let len = batch.len();
    match mutation {
        Mutation::None => batch,
        Mutation::Flip(at, bit) => {
            let mut bytes = batch.to_vec();
            bytes[at.index(len)] ^= 1 << bit;
            bytes.into()
        }
        Mutation::FlipRecrc(at, bit) => {
            // Bytes 9..55 (stamps, attributes, count, timestamps) and the payload.
            let covered: Vec<usize> = (9..55).chain(HEADER_LEN..len).collect();
            let at = covered[at.index(covered.len())];
            recrc(&batch, |b| b[at] ^= 1 << bit)
        }
        Mutation::Truncate(at) => batch.slice(..at.index(len)),
        Mutation::Extend(extra) => {
            let mut bytes = batch.to_vec();
            bytes.extend_from_slice(extra);
            bytes.into()
        }
        Mutation::Count(count) => recrc(&batch, |b| {
            b[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&count.to_le_bytes());
        }),
        Mutation::Declared(size) => recrc(&batch, |b| {
            if b.len() >= DECLARED_AT + 4 {
                b[DECLARED_AT..DECLARED_AT + 4].copy_from_slice(&size.to_le_bytes());
            }
        }),
        Mutation::Attributes(attributes) => recrc(&batch, |b| {
            b[33..35].copy_from_slice(&attributes.to_le_bytes());
        }),
    }
}

fn records(specs: &[RecordSpec]) -> Vec<Record> {
    specs
        .iter()
        .map(|r| Record {
            key: r.key.clone().map(Bytes::from),
            value: r.value.clone().map(Bytes::from),
            headers: r
                .headers
                .iter()
                .map(|(key, value)| Header {
                    key: key.clone(),
                    value: value.clone().map(Bytes::from),
                })
                .collect(),
            timestamp_ms: r.timestamp,
        })
        .collect()
}

/// The request of `input`, and whether it must be accepted (a valid batch or records).
fn request(input: &Input) -> (ProduceRequest, bool) {
    let mut request = weir_tests::api::produce(TOPIC, Some(0), Vec::new());
    let must_accept = match input {
        Input::Bytes(bytes) => {
            request.batch = Bytes::from(bytes.clone());
            false
        }
        Input::Batch {
            lz4,
            records,
            mutation,
        } => {
            request.batch = mutate(build(*lz4, records), mutation);
            matches!(mutation, Mutation::None)
        }
        Input::Records(specs) => {
            request.records = records(specs);
            !specs.is_empty()
        }
        Input::Both(specs) => {
            request.records = records(specs);
            request.batch = build(true, specs);
            false
        }
    };
    (request, must_accept)
}

/// What the answers so far add up to.
#[derive(Debug, Default)]
struct Tally {
    /// The offset the next accepted record must take: the records of every OK answer.
    next_offset: u64,
    accepted: u64,
    refused: u64,
}

#[test]
fn every_produce_is_stored_whole_or_refused_and_the_partition_stays_readable() -> anyhow::Result<()>
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let node = runtime.block_on(async {
        let node = ApiNode::start_with(|config| {
            // No retention pass may remove records with old timestamps during the run.
            config.retention_check_ms = 3_600_000;
        })
        .await?;
        node.api.create_topic(TOPIC, 1, &[]).await?;
        node.api.wait_for_leaders(TOPIC).await?;
        anyhow::Ok(node)
    })?;
    let tally = Mutex::new(Tally::default());
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&input(), |input| {
        let (request, must_accept) = request(&input);
        let mut broker = node.api.broker.clone();
        let answer = runtime
            .block_on(async { tokio::time::timeout(ANSWER_WITHIN, broker.produce(request)).await })
            .map_err(|_| TestCaseError::fail(format!("no answer within {ANSWER_WITHIN:?}")))?;
        let mut tally = tally
            .lock()
            .map_err(|_| TestCaseError::fail("tally poisoned"))?;
        match answer {
            Ok(response) => {
                let response = response.into_inner();
                prop_assert_eq!(
                    response.base_offset,
                    Some(tally.next_offset),
                    "offsets must stay dense"
                );
                prop_assert!(response.record_count > 0);
                tally.next_offset += u64::from(response.record_count);
                tally.accepted += 1;
            }
            Err(status) => {
                prop_assert_eq!(
                    status.code(),
                    Code::InvalidArgument,
                    "only INVALID_ARGUMENT may refuse: {}",
                    status.message()
                );
                prop_assert!(
                    !must_accept,
                    "a valid request was refused: {}",
                    status.message()
                );
                tally.refused += 1;
            }
        }
        Ok(())
    });
    if let Err(failure) = result {
        anyhow::bail!("{failure}");
    }
    let tally = tally
        .into_inner()
        .map_err(|_| anyhow::anyhow!("tally poisoned"))?;
    eprintln!("{tally:?}");
    assert!(
        tally.accepted > 0 && tally.refused > 0,
        "the inputs reach both outcomes: {tally:?}"
    );
    runtime.block_on(check_readable(&node, tally.next_offset))?;
    runtime.block_on(node.shutdown());
    Ok(())
}

/// Reads the partition from offset 0, as records and as stored batches: dense offsets, every
/// stored batch decodes, `stored` records in all.
async fn check_readable(node: &ApiNode, stored: u64) -> anyhow::Result<()> {
    let mut broker = node.api.broker.clone();
    let mut offset = 0u64;
    loop {
        let fetched = broker
            .fetch(FetchRequest {
                topic: TOPIC.into(),
                partition: 0,
                offset,
                ..FetchRequest::default()
            })
            .await?
            .into_inner();
        anyhow::ensure!(fetched.high_watermark == stored, "{fetched:?}");
        for record in &fetched.records {
            anyhow::ensure!(
                record.offset == offset,
                "offset {} after {offset}",
                record.offset
            );
            offset += 1;
        }
        if offset == stored {
            break;
        }
        anyhow::ensure!(
            !fetched.records.is_empty(),
            "no progress at offset {offset}"
        );
    }
    let mut offset = 0u64;
    while offset < stored {
        let raw = broker
            .fetch(FetchRequest {
                topic: TOPIC.into(),
                partition: 0,
                offset,
                raw_batches: true,
                ..FetchRequest::default()
            })
            .await?
            .into_inner();
        anyhow::ensure!(!raw.batches.is_empty(), "no batches at offset {offset}");
        for batch in BatchIter::new(raw.batches) {
            let batch = batch?;
            let header = *batch.header();
            if header.control {
                continue;
            }
            anyhow::ensure!(header.base_offset == offset, "{header:?} after {offset}");
            let decoded = batch.records()?;
            anyhow::ensure!(decoded.len() == header.record_count as usize, "{header:?}");
            offset = header.next_offset();
        }
    }
    anyhow::ensure!(offset == stored);
    Ok(())
}
