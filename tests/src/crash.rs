//! What the storage crash test and its child process share: the log configuration, the
//! deterministic, self-verifying batch contents, and the child's report lines.
//!
//! Every batch the child appends is a pure function of `(term, thread, seq)`: the child process
//! run (which appends with Raft term `term`), the appending thread, and that thread's sequence
//! number. Each record value starts with a readable tag naming all three (and the record's
//! position), so a verifier that finds a batch in the log can regenerate the batch that must
//! have been appended and compare it byte for byte with what it read: anything else — a torn
//! batch, bytes from another batch, zeros, stale data — is garbage.

use std::fmt;

use anyhow::{Context, bail, ensure};
use weir_format::batch::{
    BatchBuilder, Compression, ProducerInfo, ValidBatch, encode_control_batch,
};
use weir_storage::{Durability, LogConfig};

/// Threads in the child that append concurrently.
pub const CHILD_THREADS: u32 = 3;

/// Bytes `[LENGTH_MAGIC_END, STAMP_END)` of a batch header hold the CRC and the fields the log
/// stamps on append (base offset, term, entry index); everything else is the batch as its
/// producer built it (see the layout table in `weir_format::batch`).
const LENGTH_MAGIC_END: usize = 5;
const STAMP_END: usize = 33;

const RECORD_TAG: &str = "weir-crash";
const CONTROL_TAG: &str = "weir-crash-control";

/// The configuration the child and the verifier use: durable appends and small segments, so
/// that a run rolls segments often.
pub fn crash_log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        segment_ms: None,
        retention_bytes: None,
        retention_ms: None,
        index_interval_bytes: 4096,
        durability: Durability::Always,
        ..LogConfig::default()
    }
}

/// A small deterministic pseudo-random generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// Who appended a batch: the child run's term, the thread, and the thread's sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    pub term: u64,
    pub thread: u32,
    pub seq: u64,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "term {} thread {} seq {}",
            self.term, self.thread, self.seq
        )
    }
}

/// The batch that `origin` appends. Deterministic: the same origin always gives the same bytes.
/// About one batch in ten is a control batch (an entry index, no offsets); of the rest one in
/// forty is huge (over 64 KiB), one in eight has 20 to 60 records, and one in three of those
/// not huge is lz4-compressed.
pub fn make_batch(origin: Origin) -> anyhow::Result<ValidBatch> {
    let Origin { term, thread, seq } = origin;
    let mut rng = SplitMix64::new(
        term.wrapping_mul(0x1000_0000_01b3) ^ (u64::from(thread) << 48) ^ seq.rotate_left(17),
    );
    let timestamp = 1_700_000_000_000_i64
        .wrapping_add((term as i64).wrapping_mul(10_000_000))
        .wrapping_add((seq as i64).wrapping_mul(100));
    if rng.below(10) == 0 {
        let payload = format!("{CONTROL_TAG} {term} {thread} {seq}");
        return ValidBatch::new(encode_control_batch(timestamp, payload.as_bytes()))
            .context("control batch");
    }
    // One batch in 40 is larger than 64 KiB (the log writes such a batch with two writes, so a
    // kill can tear it) and larger than a whole segment of the crash configuration.
    let huge = rng.below(40) == 0;
    let count = if huge {
        4
    } else if rng.below(8) == 0 {
        20 + rng.below(41)
    } else {
        1 + rng.below(12)
    };
    let compression = if !huge && rng.below(3) == 0 {
        Compression::Lz4
    } else {
        Compression::None
    };
    let mut builder = BatchBuilder::new(compression);
    if rng.below(4) == 0 {
        builder = builder.producer(ProducerInfo {
            producer_id: i64::from(thread) + 1,
            producer_epoch: (term % 1000) as i16,
            base_sequence: (seq % (1 << 30)) as i32,
        });
    }
    for r in 0..count {
        let mut value = format!("{RECORD_TAG} {term} {thread} {seq} {r} {count}|").into_bytes();
        let filler = if huge {
            17_000 + rng.below(5_000) as usize
        } else {
            rng.below(400) as usize
        };
        let start = value.len();
        value.resize(start + filler, 0);
        if !huge && rng.below(2) == 0 {
            // Compressible: a repeating pattern.
            for (i, byte) in value[start..].iter_mut().enumerate() {
                *byte = b'a' + ((i as u64 + seq) % 7) as u8;
            }
        } else {
            rng.fill(&mut value[start..]);
        }
        let key = (r % 3 != 0).then(|| format!("k{thread}.{seq}.{r}"));
        let headers: &[(&str, Option<&[u8]>)] = if r % 4 == 1 {
            &[("crash", Some(b"yes")), ("none", None)]
        } else {
            &[]
        };
        let ts = timestamp.wrapping_add(rng.below(50) as i64);
        builder.push(ts, key.as_deref().map(str::as_bytes), Some(&value), headers);
    }
    let bytes = builder.build().context("a batch with records")?;
    ValidBatch::new(bytes).context("record batch")
}

/// A hash of everything in a batch except the CRC and the fields the log stamps (FNV-1a, 64
/// bits): equal for the batch as built and as stored.
pub fn content_hash(batch: &ValidBatch) -> u64 {
    let bytes = batch.bytes();
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for &byte in bytes[..LENGTH_MAGIC_END].iter().chain(&bytes[STAMP_END..]) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Checks that `batch` (read from the log) is exactly a batch that [`make_batch`] produces,
/// appended with the term it names, and says which one. An error describes why it is garbage.
pub fn identify(batch: &ValidBatch) -> anyhow::Result<Origin> {
    let header = batch.header();
    let tag = if header.control {
        String::from_utf8(batch.payload().to_vec()).context("control payload is not UTF-8")?
    } else {
        let records = batch.records().context("records do not decode")?;
        let first = records.first().context("a record batch without records")?;
        let value = first.value.as_ref().context("first record has no value")?;
        let end = value
            .iter()
            .position(|&b| b == b'|')
            .context("first record value has no tag")?;
        String::from_utf8(value[..end].to_vec()).context("record tag is not UTF-8")?
    };
    let mut words = tag.split(' ');
    let expected_tag = if header.control {
        CONTROL_TAG
    } else {
        RECORD_TAG
    };
    ensure!(words.next() == Some(expected_tag), "unknown tag {tag:?}");
    let mut number = || -> anyhow::Result<u64> {
        let word = words.next().context("tag too short")?;
        word.parse()
            .with_context(|| format!("{word:?} in tag {tag:?}"))
    };
    let origin = Origin {
        term: number()?,
        thread: u32::try_from(number()?)?,
        seq: number()?,
    };
    let expected = make_batch(origin)?;
    let (got, want) = (batch.bytes(), expected.bytes());
    if got.len() != want.len()
        || got[..LENGTH_MAGIC_END] != want[..LENGTH_MAGIC_END]
        || got[STAMP_END..] != want[STAMP_END..]
    {
        bail!(
            "content differs from the batch of {origin} ({} bytes stored, {} expected)",
            got.len(),
            want.len()
        );
    }
    ensure!(
        header.term == origin.term,
        "batch of {origin} was stamped with term {}",
        header.term
    );
    Ok(origin)
}

/// The child's first line: what it found when it opened (recovered) the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyLine {
    pub next_offset: u64,
    pub next_index: u64,
    pub segments: usize,
    /// Bytes the child's open cut as a torn tail (0: none).
    pub tail_dropped: u64,
}

impl ReadyLine {
    pub fn to_line(&self) -> String {
        format!(
            "ready {} {} {} {}",
            self.next_offset, self.next_index, self.segments, self.tail_dropped
        )
    }

    pub fn parse(line: &str) -> anyhow::Result<Self> {
        let fields = fields(line, "ready", 4)?;
        Ok(Self {
            next_offset: fields[0],
            next_index: fields[1],
            segments: usize::try_from(fields[2])?,
            tail_dropped: fields[3],
        })
    }
}

/// One line per durable append: `durable <index> <base_offset> <next_offset> <hash>` (the hash
/// in hex, see [`content_hash`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableLine {
    pub index: u64,
    pub base_offset: u64,
    pub next_offset: u64,
    pub hash: u64,
}

impl DurableLine {
    pub fn to_line(&self) -> String {
        format!(
            "durable {} {} {} {:016x}",
            self.index, self.base_offset, self.next_offset, self.hash
        )
    }

    pub fn parse(line: &str) -> anyhow::Result<Self> {
        let mut words = line.split(' ');
        ensure!(
            words.next() == Some("durable"),
            "not a durable line: {line:?}"
        );
        let mut next = || words.next().with_context(|| format!("short line {line:?}"));
        let index = next()?.parse()?;
        let base_offset = next()?.parse()?;
        let next_offset = next()?.parse()?;
        let hash = u64::from_str_radix(next()?, 16)?;
        ensure!(words.next().is_none(), "long line {line:?}");
        Ok(Self {
            index,
            base_offset,
            next_offset,
            hash,
        })
    }
}

fn fields(line: &str, tag: &str, count: usize) -> anyhow::Result<Vec<u64>> {
    let mut words = line.split(' ');
    ensure!(
        words.next() == Some(tag),
        "expected a {tag:?} line, got {line:?}"
    );
    let fields = words
        .map(|w| {
            w.parse::<u64>()
                .with_context(|| format!("{w:?} in {line:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    ensure!(fields.len() == count, "expected {count} fields in {line:?}");
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_format::batch::Stamp;

    #[test]
    fn batches_are_deterministic_and_identified_after_stamping() {
        let mut kinds = (0, 0, 0);
        for seq in 0..200 {
            let origin = Origin {
                term: 7,
                thread: (seq % 3) as u32,
                seq,
            };
            let batch = make_batch(origin).unwrap();
            assert_eq!(batch.bytes(), make_batch(origin).unwrap().bytes());
            let stamped = ValidBatch::new(batch.restamped(Stamp {
                base_offset: 1234,
                term: 7,
                index: 99,
            }))
            .unwrap();
            assert_eq!(identify(&stamped).unwrap(), origin);
            assert_eq!(content_hash(&stamped), content_hash(&batch));
            // The wrong term is caught.
            let wrong = ValidBatch::new(batch.restamped(Stamp {
                base_offset: 1234,
                term: 8,
                index: 99,
            }))
            .unwrap();
            assert!(identify(&wrong).is_err());
            let header = batch.header();
            if header.control {
                kinds.0 += 1;
            } else if header.compression == Compression::Lz4 {
                kinds.1 += 1;
            } else {
                kinds.2 += 1;
            }
        }
        assert!(kinds.0 > 0 && kinds.1 > 0 && kinds.2 > 0, "{kinds:?}");
    }

    #[test]
    fn a_well_formed_batch_with_other_content_is_garbage() {
        let origin = (0..)
            .map(|seq| Origin {
                term: 1,
                thread: 0,
                seq,
            })
            .find(|&origin| !make_batch(origin).unwrap().header().control)
            .unwrap();
        let real = make_batch(origin).unwrap();
        let records = real.records().unwrap();
        // Same tags, same count, but one value byte differs: CRC-valid, yet not what the origin
        // appends.
        let mut builder = BatchBuilder::new(real.header().compression);
        for (i, record) in records.iter().enumerate() {
            let mut value = record.value.as_ref().unwrap().to_vec();
            if i + 1 == records.len() {
                value.push(b'!');
            }
            builder.push(record.timestamp, record.key.as_deref(), Some(&value), &[]);
        }
        let forged = ValidBatch::new(builder.build().unwrap()).unwrap();
        assert!(identify(&forged).is_err());
        let mut other = BatchBuilder::new(Compression::None);
        other.push(0, None, Some(b"not a crash batch"), &[]);
        assert!(identify(&ValidBatch::new(other.build().unwrap()).unwrap()).is_err());
        let line = DurableLine {
            index: 3,
            base_offset: 10,
            next_offset: 12,
            hash: content_hash(&real),
        };
        assert_eq!(DurableLine::parse(&line.to_line()).unwrap(), line);
        let ready = ReadyLine {
            next_offset: 1,
            next_index: 2,
            segments: 3,
            tail_dropped: 0,
        };
        assert_eq!(ReadyLine::parse(&ready.to_line()).unwrap(), ready);
    }
}
