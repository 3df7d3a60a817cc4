//! Hostile produce batches: well-formed headers (correct CRC) over payloads that do not match
//! them, as issue 14 lists them — garbage lz4, a record count of 2^31-1, declared uncompressed
//! sizes of 256 MiB and 4 GiB, and a real lz4 bomb that expands past the topic's message limit.
//! Each is small on the wire; a broker must refuse each whole (INVALID_ARGUMENT) without
//! allocating what it declares.

use bytes::Bytes;
use weir_format::batch::{BatchBuilder, Compression};

/// Where an lz4 batch declares its records' uncompressed size: right after the 69-byte header.
pub const DECLARED_AT: usize = 69;
/// Where a batch header holds its record count.
pub const RECORD_COUNT_AT: usize = 35;
/// The default `max.message.bytes` of a topic.
pub const DEFAULT_TOPIC_LIMIT: usize = 8 << 20;

/// `batch` with `damage` done to it and its CRC made right again, so only the payload is wrong.
pub fn recrc(batch: &Bytes, damage: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut bytes = batch.to_vec();
    damage(&mut bytes);
    if bytes.len() >= 9 {
        let crc = crc32fast::hash(&bytes[9..]);
        bytes[5..9].copy_from_slice(&crc.to_le_bytes());
    }
    Bytes::from(bytes)
}

/// An lz4 batch of one record holding `value`.
pub fn lz4_batch(value: &[u8]) -> Bytes {
    let mut builder = BatchBuilder::new(Compression::Lz4);
    builder.push(1_700_000_000_000, None, Some(value), &[]);
    builder.build().unwrap_or_default()
}

/// One hostile batch: what it is, its bytes, and a phrase the refusal's message contains.
#[derive(Debug, Clone)]
pub struct Hostile {
    pub what: &'static str,
    pub batch: Bytes,
    pub mentions: String,
}

/// The hostile batches of the issue, for a topic whose `max.message.bytes` is `topic_limit`.
pub fn batches(topic_limit: usize) -> Vec<Hostile> {
    let hostile = |what, batch, mentions: &str| Hostile {
        what,
        batch,
        mentions: mentions.to_string(),
    };
    vec![
        hostile(
            "garbage lz4",
            recrc(&lz4_batch(&[7u8; 100]), |b| {
                for byte in &mut b[DECLARED_AT + 4..] {
                    *byte = 0xff;
                }
            }),
            "does not decompress",
        ),
        hostile(
            "2^31-1 records over one",
            recrc(&lz4_batch(b"one"), |b| {
                b[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&i32::MAX.to_le_bytes());
            }),
            "declares 2147483647 records",
        ),
        hostile(
            "a declared size of 256 MiB",
            recrc(&lz4_batch(b"x"), |b| {
                b[DECLARED_AT..DECLARED_AT + 4].copy_from_slice(&(256u32 << 20).to_le_bytes());
            }),
            "declare 268435456 bytes",
        ),
        hostile(
            "a declared size of 4 GiB",
            recrc(&lz4_batch(b"x"), |b| {
                b[DECLARED_AT..DECLARED_AT + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            }),
            "declare 4294967295 bytes",
        ),
        hostile(
            "an lz4 bomb past the message limit",
            lz4_batch(&vec![0u8; topic_limit + (1 << 20)]),
            &format!("above the limit of {topic_limit} bytes"),
        ),
    ]
}
