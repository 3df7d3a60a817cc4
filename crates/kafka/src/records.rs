//! Kafka record batches (message format v2) to Weir batches and back.
//!
//! A Kafka producer sends, per partition, one or more record batches, each possibly compressed
//! (gzip, snappy, lz4 or zstd). [`from_kafka`] checks each batch whole — CRC-32C, header, a
//! record count that the payload can hold, a payload that decompresses to at most the limit
//! (read through the limit, never allocated from a declared size), every record parsed to its
//! end — and re-encodes its records (timestamp, key, value, headers in order, repeated header
//! keys kept) as one Weir batch with the producer's id, epoch and base sequence. Batches that
//! arrived compressed are stored lz4-compressed (Weir's codec); uncompressed ones uncompressed.
//!
//! [`to_kafka`] turns stored Weir batches into Kafka batches for a fetch answer: one
//! uncompressed Kafka batch per Weir batch, at the same offsets, records below the fetch offset
//! left out.
//!
//! Invariant: no allocation here is sized by a number read from the input before the bytes it
//! describes have been seen.

use std::io::Read;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use weir_format::batch::{BatchBuilder, BatchIter, Compression, ProducerInfo};

/// Kafka's record batch format version (magic) 2, the only one accepted.
const MAGIC_V2: i8 = 2;
/// Bytes of a v2 batch header, `base_offset` to `record_count`.
const BATCH_HEADER_LEN: usize = 61;
/// The smallest encoded record: length, attributes, timestamp delta, offset delta, key length,
/// value length, header count — one byte each.
const MIN_RECORD_LEN: usize = 7;
const ATTR_COMPRESSION: i16 = 0b111;
const ATTR_TRANSACTIONAL: i16 = 1 << 4;
const ATTR_CONTROL: i16 = 1 << 5;

/// Why a produced batch was refused. Nothing of the request is written.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RecordsError {
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    #[error("record batch format v{0} (before Kafka 0.11) is not supported: use message format v2")]
    OldFormat(i8),
    #[error("unknown compression codec {0}")]
    UnknownCompression(i16),
    #[error("the batch's records take more than {limit} bytes uncompressed")]
    TooLarge { limit: usize },
    #[error("transactional and control batches are not supported")]
    Transactional,
}

impl RecordsError {
    fn corrupt(what: impl Into<String>) -> Self {
        Self::Corrupt(what.into())
    }
}

/// One Kafka batch as a Weir batch, ready to produce.
#[derive(Debug, Clone)]
pub struct ProducedBatch {
    /// In Weir's batch format (offsets unstamped).
    pub batch: Bytes,
    pub records: u32,
    pub producer: ProducerInfo,
}

/// The batches of one partition of a Kafka produce request, checked and converted
/// (see the module docs). `max_uncompressed` bounds each batch's record bytes.
pub fn from_kafka(
    mut records: Bytes,
    max_uncompressed: usize,
    now_ms: i64,
) -> Result<Vec<ProducedBatch>, RecordsError> {
    let mut out = Vec::new();
    if records.is_empty() {
        return Err(RecordsError::corrupt("no record batch"));
    }
    while records.has_remaining() {
        out.push(one_batch(&mut records, max_uncompressed, now_ms)?);
    }
    Ok(out)
}

fn need(buf: &Bytes, n: usize, what: &str) -> Result<(), RecordsError> {
    if buf.remaining() < n {
        return Err(RecordsError::corrupt(format!(
            "{what}: need {n} bytes, have {}",
            buf.remaining()
        )));
    }
    Ok(())
}

fn one_batch(
    buf: &mut Bytes,
    max_uncompressed: usize,
    now_ms: i64,
) -> Result<ProducedBatch, RecordsError> {
    need(buf, 17, "batch header")?;
    let magic = buf[16] as i8;
    if magic != MAGIC_V2 {
        return Err(RecordsError::OldFormat(magic));
    }
    need(buf, BATCH_HEADER_LEN, "batch header")?;
    let _base_offset = buf.get_i64();
    let length = buf.get_i32();
    let length = usize::try_from(length)
        .ok()
        .filter(|l| *l >= BATCH_HEADER_LEN - 12)
        .ok_or_else(|| RecordsError::corrupt(format!("batch length {length}")))?;
    need(buf, length, "batch")?;
    let mut batch = buf.split_to(length);
    let _leader_epoch = batch.get_i32();
    let _magic = batch.get_i8();
    let crc = batch.get_u32();
    if crc32c::crc32c(&batch) != crc {
        return Err(RecordsError::corrupt("CRC-32C mismatch"));
    }
    let attributes = batch.get_i16();
    if attributes & (ATTR_TRANSACTIONAL | ATTR_CONTROL) != 0 {
        return Err(RecordsError::Transactional);
    }
    let codec = attributes & ATTR_COMPRESSION;
    let _last_offset_delta = batch.get_i32();
    let base_timestamp = batch.get_i64();
    let _max_timestamp = batch.get_i64();
    let producer_id = batch.get_i64();
    let producer_epoch = batch.get_i16();
    let base_sequence = batch.get_i32();
    let count = batch.get_i32();
    let count = usize::try_from(count)
        .ok()
        .filter(|c| *c > 0)
        .ok_or_else(|| RecordsError::corrupt(format!("record count {count}")))?;
    // A count the bytes cannot hold is refused before anything is sized by it.
    let room = if codec == 0 {
        batch.len()
    } else {
        max_uncompressed
    };
    if count > room / MIN_RECORD_LEN {
        return Err(RecordsError::corrupt(format!(
            "{count} records cannot fit in {room} bytes"
        )));
    }
    let mut payload = decompress(codec, batch, max_uncompressed)?;
    let compression = if codec == 0 {
        Compression::None
    } else {
        Compression::Lz4
    };
    let producer = if producer_id >= 0 {
        ProducerInfo {
            producer_id,
            producer_epoch,
            base_sequence,
        }
    } else {
        ProducerInfo::NONE
    };
    let mut builder = BatchBuilder::new(compression).producer(producer);
    for position in 0..count {
        let record = Record::decode(&mut payload, base_timestamp, now_ms)?;
        if usize::try_from(record.offset_delta).ok() != Some(position) {
            return Err(RecordsError::corrupt(format!(
                "record {position} has offset delta {}",
                record.offset_delta
            )));
        }
        let headers: Vec<(&str, Option<&[u8]>)> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        builder.push(
            record.timestamp,
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
        );
    }
    if payload.has_remaining() {
        return Err(RecordsError::corrupt(format!(
            "{} bytes after the last record",
            payload.remaining()
        )));
    }
    let records = builder.record_count();
    let batch = builder
        .build()
        .ok_or_else(|| RecordsError::corrupt("no record"))?;
    Ok(ProducedBatch {
        batch,
        records,
        producer,
    })
}

/// One record of a Kafka batch.
#[derive(Debug)]
struct Record {
    timestamp: i64,
    offset_delta: i32,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Vec<(String, Option<Bytes>)>,
}

impl Record {
    fn decode(buf: &mut Bytes, base_timestamp: i64, now_ms: i64) -> Result<Self, RecordsError> {
        let length = varint(buf, "record length")?;
        let length = usize::try_from(length)
            .map_err(|_| RecordsError::corrupt(format!("record length {length}")))?;
        need(buf, length, "record")?;
        let mut body = buf.split_to(length);
        need(&body, 1, "record attributes")?;
        let _attributes = body.get_i8();
        let delta = varlong(&mut body, "timestamp delta")?;
        let timestamp = if base_timestamp < 0 {
            // No timestamp from the producer: the time it arrives (as a broker's LogAppendTime).
            now_ms
        } else {
            base_timestamp.saturating_add(delta)
        };
        let offset_delta = varint(&mut body, "offset delta")?;
        let key = optional_bytes(&mut body, "key")?;
        let value = optional_bytes(&mut body, "value")?;
        let count = varint(&mut body, "header count")?;
        let count = usize::try_from(count)
            .ok()
            .filter(|c| *c <= body.remaining() / 2)
            .ok_or_else(|| RecordsError::corrupt(format!("header count {count}")))?;
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let key = optional_bytes(&mut body, "header key")?
                .ok_or_else(|| RecordsError::corrupt("a header without a key"))?;
            let key = String::from_utf8(key.to_vec())
                .map_err(|_| RecordsError::corrupt("a header key that is not UTF-8"))?;
            let value = optional_bytes(&mut body, "header value")?;
            headers.push((key, value));
        }
        if body.has_remaining() {
            return Err(RecordsError::corrupt("bytes after a record's headers"));
        }
        Ok(Self {
            timestamp,
            offset_delta,
            key,
            value,
            headers,
        })
    }
}

fn varlong(buf: &mut Bytes, what: &str) -> Result<i64, RecordsError> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        need(buf, 1, what)?;
        let byte = buf.get_u8();
        if shift == 63 && byte > 1 {
            break;
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            // zigzag
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err(RecordsError::corrupt(format!("{what}: varint too long")))
}

fn varint(buf: &mut Bytes, what: &str) -> Result<i32, RecordsError> {
    let value = varlong(buf, what)?;
    i32::try_from(value).map_err(|_| RecordsError::corrupt(format!("{what}: {value}")))
}

fn optional_bytes(buf: &mut Bytes, what: &str) -> Result<Option<Bytes>, RecordsError> {
    let length = varint(buf, what)?;
    if length == -1 {
        return Ok(None);
    }
    let length = usize::try_from(length)
        .map_err(|_| RecordsError::corrupt(format!("{what} length {length}")))?;
    need(buf, length, what)?;
    Ok(Some(buf.split_to(length)))
}

/// The payload of a batch with compression `codec`, at most `limit` bytes once decompressed.
fn decompress(codec: i16, payload: Bytes, limit: usize) -> Result<Bytes, RecordsError> {
    let read_bounded = |reader: &mut dyn Read, what: &str| -> Result<Bytes, RecordsError> {
        let mut out = Vec::new();
        let bound = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
        reader
            .take(bound)
            .read_to_end(&mut out)
            .map_err(|err| RecordsError::corrupt(format!("{what}: {err}")))?;
        if out.len() > limit {
            return Err(RecordsError::TooLarge { limit });
        }
        Ok(Bytes::from(out))
    };
    match codec {
        0 => {
            if payload.len() > limit {
                return Err(RecordsError::TooLarge { limit });
            }
            Ok(payload)
        }
        1 => read_bounded(&mut flate2::read::GzDecoder::new(payload.reader()), "gzip"),
        2 => snappy(payload, limit),
        3 => {
            let mut decoder = lz4::Decoder::new(payload.reader())
                .map_err(|err| RecordsError::corrupt(format!("lz4: {err}")))?;
            read_bounded(&mut decoder, "lz4")
        }
        4 => {
            let mut decoder = zstd::stream::read::Decoder::new(payload.reader())
                .map_err(|err| RecordsError::corrupt(format!("zstd: {err}")))?;
            read_bounded(&mut decoder, "zstd")
        }
        other => Err(RecordsError::UnknownCompression(other)),
    }
}

/// xerial's snappy framing (what the Java client and librdkafka send): a 16-byte magic header,
/// then blocks of `u32` length + raw snappy. Without the header: one raw snappy block.
fn snappy(mut payload: Bytes, limit: usize) -> Result<Bytes, RecordsError> {
    const XERIAL: &[u8] = b"\x82SNAPPY\x00";
    let block = |block: &[u8], out: &mut Vec<u8>| -> Result<(), RecordsError> {
        let len = snap::raw::decompress_len(block)
            .map_err(|err| RecordsError::corrupt(format!("snappy: {err}")))?;
        if out.len().saturating_add(len) > limit {
            return Err(RecordsError::TooLarge { limit });
        }
        let start = out.len();
        out.resize(start + len, 0);
        snap::raw::Decoder::new()
            .decompress(block, &mut out[start..])
            .map_err(|err| RecordsError::corrupt(format!("snappy: {err}")))?;
        Ok(())
    };
    let mut out = Vec::new();
    if payload.len() >= 16 && payload.starts_with(XERIAL) {
        payload.advance(16);
        while payload.has_remaining() {
            need(&payload, 4, "snappy block length")?;
            let len = payload.get_u32() as usize;
            need(&payload, len, "snappy block")?;
            let data = payload.split_to(len);
            block(&data, &mut out)?;
        }
    } else {
        block(&payload, &mut out)?;
    }
    Ok(Bytes::from(out))
}

/// Appends the records of `weir_batches` (stored Weir batches, back to back) at offsets from
/// `from` on to `out` as Kafka batches (see the module docs). Returns the offset after the last
/// record written (`from` when none was).
pub fn to_kafka(weir_batches: Bytes, from: u64, out: &mut BytesMut) -> Result<u64, RecordsError> {
    let mut next = from;
    for batch in BatchIter::new(weir_batches) {
        let batch = batch.map_err(|err| RecordsError::corrupt(err.to_string()))?;
        let header = *batch.header();
        if header.control {
            continue;
        }
        let records = batch
            .records_within(weir_format::batch::MAX_UNCOMPRESSED_LEN)
            .map_err(|err| RecordsError::corrupt(err.to_string()))?;
        let records: Vec<_> = records.into_iter().filter(|r| r.offset >= from).collect();
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            continue;
        };
        let base_offset = first.offset;
        let first_timestamp = records.iter().map(|r| r.timestamp).min().unwrap_or(0);
        let max_timestamp = records.iter().map(|r| r.timestamp).max().unwrap_or(0);
        let skipped = base_offset - header.base_offset;
        let base_sequence = if header.producer_id >= 0 && header.base_sequence >= 0 {
            header
                .base_sequence
                .wrapping_add(i32::try_from(skipped).unwrap_or(0))
        } else {
            -1
        };
        let mut body = BytesMut::new();
        for record in &records {
            let mut one = BytesMut::new();
            one.put_i8(0);
            put_varlong(&mut one, record.timestamp.wrapping_sub(first_timestamp));
            put_varlong(&mut one, (record.offset - base_offset) as i64);
            put_optional(&mut one, record.key.as_deref());
            put_optional(&mut one, record.value.as_deref());
            put_varlong(&mut one, record.headers.len() as i64);
            for h in &record.headers {
                put_optional(&mut one, Some(h.key.as_bytes()));
                put_optional(&mut one, h.value.as_deref());
            }
            put_varlong(&mut body, one.len() as i64);
            body.put_slice(&one);
        }
        out.put_i64(i64::try_from(base_offset).unwrap_or(i64::MAX));
        let length = BATCH_HEADER_LEN - 12 + body.len();
        out.put_i32(i32::try_from(length).unwrap_or(i32::MAX));
        out.put_i32(-1); // partition leader epoch: unknown to clients
        out.put_i8(MAGIC_V2);
        let crc_at = out.len();
        out.put_u32(0);
        let crc_from = out.len();
        out.put_i16(0); // attributes: uncompressed, create time
        out.put_i32((last.offset - base_offset) as i32);
        out.put_i64(first_timestamp);
        out.put_i64(max_timestamp);
        out.put_i64(header.producer_id);
        out.put_i16(header.producer_epoch);
        out.put_i32(base_sequence);
        out.put_i32(i32::try_from(records.len()).unwrap_or(i32::MAX));
        out.put_slice(&body);
        let crc = crc32c::crc32c(&out[crc_from..]);
        out[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
        next = last.offset + 1;
    }
    Ok(next)
}

fn put_varlong(out: &mut BytesMut, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn put_optional(out: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varlong(out, -1),
        Some(b) => {
            put_varlong(out, b.len() as i64);
            out.put_slice(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(batch: &Bytes, base_offset: u64) -> Bytes {
        let valid = weir_format::batch::ValidBatch::new(batch.clone()).expect("valid");
        valid.restamped(weir_format::batch::Stamp {
            base_offset,
            term: 1,
            index: 1,
        })
    }

    type Rec = (
        i64,
        Option<&'static [u8]>,
        Option<&'static [u8]>,
        Vec<(&'static str, Option<&'static [u8]>)>,
    );

    /// A Weir batch of `records` at `base`, turned into Kafka batches from `from`.
    fn kafka_of(records: &[Rec], base: u64, from: u64) -> (Bytes, u64) {
        let mut builder = BatchBuilder::new(Compression::None);
        for (ts, k, v, h) in records {
            builder.push(*ts, *k, *v, h);
        }
        let weir = stamped(&builder.build().expect("records"), base);
        let mut out = BytesMut::new();
        let next = to_kafka(weir, from, &mut out).expect("encodes");
        (out.freeze(), next)
    }

    #[test]
    fn records_round_trip_through_kafka_batches_with_repeated_header_keys() {
        let records: Vec<Rec> = vec![
            (
                1000,
                Some(b"k1"),
                Some(b"v1"),
                vec![("a", Some(b"1")), ("a", Some(b"2"))],
            ),
            (999, None, Some(b""), vec![("n", None)]),
            (2000, Some(b""), None, vec![]),
        ];
        let (kafka, next) = kafka_of(&records, 40, 0);
        assert_eq!(next, 43);
        let back = from_kafka(kafka, 1 << 20, 5).expect("valid");
        assert_eq!(back.len(), 1);
        let weir = stamped(&back[0].batch, 40);
        let decoded = weir_format::batch::ValidBatch::new(weir)
            .expect("valid")
            .records()
            .expect("records");
        assert_eq!(decoded.len(), 3);
        for (got, want) in decoded.iter().zip(&records) {
            assert_eq!(got.timestamp, want.0);
            assert_eq!(got.key.as_deref(), want.1);
            assert_eq!(got.value.as_deref(), want.2);
            let headers: Vec<_> = got
                .headers
                .iter()
                .map(|h| (h.key.as_str(), h.value.as_deref()))
                .collect();
            assert_eq!(headers, want.3);
        }
    }

    #[test]
    fn a_fetch_from_the_middle_of_a_batch_starts_at_the_offset_asked() {
        let records: Vec<Rec> = (0..5).map(|i| (i, None, Some(&b"x"[..]), vec![])).collect();
        let (kafka, next) = kafka_of(&records, 10, 12);
        assert_eq!(next, 15);
        // Base offset 12, three records.
        assert_eq!(i64::from_be_bytes(kafka[0..8].try_into().expect("8")), 12);
        assert_eq!(i32::from_be_bytes(kafka[57..61].try_into().expect("4")), 3);
        assert_eq!(from_kafka(kafka, 1 << 20, 0).expect("valid")[0].records, 3);
    }

    fn header_with(count: i32, codec: i16, payload: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        out.put_i64(0);
        out.put_i32((BATCH_HEADER_LEN - 12 + payload.len()) as i32);
        out.put_i32(-1);
        out.put_i8(2);
        out.put_u32(0);
        out.put_i16(codec);
        out.put_i32(count - 1);
        out.put_i64(0);
        out.put_i64(0);
        out.put_i64(-1);
        out.put_i16(-1);
        out.put_i32(-1);
        out.put_i32(count);
        out.put_slice(payload);
        let crc = crc32c::crc32c(&out[21..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        out.freeze()
    }

    #[test]
    fn hostile_batches_are_refused_before_anything_is_sized_by_them() {
        // Two billion records declared over a few bytes.
        let err = from_kafka(header_with(i32::MAX, 0, &[0; 8]), 1 << 20, 0).unwrap_err();
        assert!(matches!(err, RecordsError::Corrupt(_)), "{err}");
        // A gzip payload that decompresses to more than the limit.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &vec![0u8; 2 << 20]).expect("gzip");
        let big = gz.finish().expect("gzip");
        let err = from_kafka(header_with(3, 1, &big), 1 << 20, 0).unwrap_err();
        assert_eq!(err, RecordsError::TooLarge { limit: 1 << 20 });
        // A flipped bit.
        let (good, _) = kafka_of(&[(1, None, Some(b"v"), vec![])], 0, 0);
        let mut bad = good.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(from_kafka(Bytes::from(bad), 1 << 20, 0).is_err());
        // Old message formats, unknown codecs, transactions, nothing at all.
        let mut old = good.to_vec();
        old[16] = 1;
        assert_eq!(
            from_kafka(Bytes::from(old), 1 << 20, 0).unwrap_err(),
            RecordsError::OldFormat(1)
        );
        assert_eq!(
            from_kafka(header_with(1, 6, &[0; 8]), 1 << 20, 0).unwrap_err(),
            RecordsError::UnknownCompression(6)
        );
        assert_eq!(
            from_kafka(header_with(1, 1 << 4, &[0; 8]), 1 << 20, 0).unwrap_err(),
            RecordsError::Transactional
        );
        assert!(from_kafka(Bytes::new(), 1 << 20, 0).is_err());
    }

    #[test]
    fn every_kafka_codec_is_read() {
        let (plain, _) = kafka_of(
            &[(7, Some(b"k"), Some(b"value"), vec![("h", Some(b"x"))])],
            0,
            0,
        );
        let payload = plain.slice(BATCH_HEADER_LEN..);
        let gzip = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &payload).expect("gzip");
            e.finish().expect("gzip")
        };
        let snappy_raw = snap::raw::Encoder::new()
            .compress_vec(&payload)
            .expect("snappy");
        let mut xerial = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
        xerial.extend_from_slice(&(snappy_raw.len() as u32).to_be_bytes());
        xerial.extend_from_slice(&snappy_raw);
        let lz4 = {
            let mut e = lz4::EncoderBuilder::new().build(Vec::new()).expect("lz4");
            std::io::Write::write_all(&mut e, &payload).expect("lz4");
            let (out, result) = e.finish();
            result.expect("lz4");
            out
        };
        let zstd = zstd::encode_all(&payload[..], 1).expect("zstd");
        for (codec, bytes) in [(1, gzip), (2, snappy_raw), (2, xerial), (3, lz4), (4, zstd)] {
            let mut batch = header_with(1, codec, &bytes).to_vec();
            // The record's timestamp delta is 0 from the batch's base timestamp, 7.
            batch[27..35].copy_from_slice(&7i64.to_be_bytes());
            let crc = crc32c::crc32c(&batch[21..]);
            batch[17..21].copy_from_slice(&crc.to_be_bytes());
            let out = from_kafka(Bytes::from(batch), 1 << 20, 0).expect("codec");
            let weir = stamped(&out[0].batch, 0);
            let records = weir_format::batch::ValidBatch::new(weir)
                .expect("valid")
                .records()
                .expect("records");
            assert_eq!(
                records[0].value.as_deref(),
                Some(&b"value"[..]),
                "codec {codec}"
            );
            assert_eq!(records[0].timestamp, 7);
        }
    }
}
