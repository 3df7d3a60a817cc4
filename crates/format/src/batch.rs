//! The batch and record format, on the wire and on disk. Pure: bytes in, values or a precise
//! [`CodecError`] out — no files, no sockets, no clocks — so it is unit-tested, property-tested and
//! fuzzed in isolation, and the broker, the client and the tools share this one definition.
//!
//! # Batch layout (all integers little-endian)
//!
//! | at | size | field | notes |
//! |---:|---:|---|---|
//! | 0 | 4 | `length` | total bytes of the batch, this field included |
//! | 4 | 1 | `magic` | format version, [`MAGIC`] |
//! | 5 | 4 | `crc` | CRC-32 (IEEE, crc32fast) of bytes `[9, length)`: everything after this field |
//! | 9 | 8 | `base_offset` | offset of the first record; stamped by the log on append |
//! | 17 | 8 | `term` | Raft term of the entry; stamped on append |
//! | 25 | 8 | `index` | Raft log index of the entry; stamped by the log on append |
//! | 33 | 2 | `attributes` | bits 0–2 compression (0 none, 1 lz4); bit 3 control; the rest must be 0 |
//! | 35 | 4 | `record_count` | records in the batch; 0 exactly when the batch is a control batch |
//! | 39 | 8 | `first_timestamp` | ms since the Unix epoch of the first record |
//! | 47 | 8 | `max_timestamp` | largest record timestamp in the batch |
//! | 55 | 8 | `producer_id` | -1 when the producer is not idempotent |
//! | 63 | 2 | `producer_epoch` | -1 when not idempotent |
//! | 65 | 4 | `base_sequence` | sequence of the first record; -1 when not idempotent |
//! | 69 | … | payload | records (lz4: `u32` uncompressed length + one lz4 block), or control data |
//!
//! The fields the log stamps (`base_offset`, `term`, `index`) sit right after the CRC so that the
//! CRC of a re-stamped batch is computed without a second pass over the payload: CRC-32 is linear,
//! and [`crc32fast::Hasher::combine`] joins the CRC of the 24 stamped bytes with the CRC of the
//! rest, which was computed once while validating the batch ([`ValidBatch`]).
//!
//! A control batch carries no records and takes no offsets: its `base_offset` is the offset the
//! next record will take. Raft uses them for blank leader entries and membership changes; the
//! payload is opaque here.
//!
//! # Record layout (inside the payload, after decompression)
//!
//! `length` uvarint (bytes that follow) · `attributes` u8 (0) · `timestamp_delta` zigzag varint
//! (from `first_timestamp`) · `offset_delta` uvarint (must equal the record's position) · `key`
//! (zigzag varint length, -1 for none, bytes) · `value` (same) · `header_count` uvarint · each
//! header: key (uvarint length, UTF-8 bytes), value (zigzag varint length, -1 for none, bytes).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Format version written in every batch header.
pub const MAGIC: u8 = 1;
/// Size of the fixed batch header, in bytes.
pub const HEADER_LEN: usize = 69;
/// The largest batch the format allows (the log's configured limit is usually far lower).
pub const MAX_BATCH_LEN: usize = 128 * 1024 * 1024;
/// The largest decompressed payload a batch may declare; bounds memory when decoding.
pub const MAX_UNCOMPRESSED_LEN: usize = 256 * 1024 * 1024;

const MAGIC_AT: usize = 4;
const CRC_AT: usize = 5;
/// First byte covered by the CRC.
const CRC_FROM: usize = 9;
const BASE_OFFSET_AT: usize = 9;
const TERM_AT: usize = 17;
const INDEX_AT: usize = 25;
/// End of the fields stamped on append.
const STAMP_END: usize = 33;
const ATTRIBUTES_AT: usize = 33;
const RECORD_COUNT_AT: usize = 35;
const FIRST_TIMESTAMP_AT: usize = 39;
const MAX_TIMESTAMP_AT: usize = 47;
const PRODUCER_ID_AT: usize = 55;
const PRODUCER_EPOCH_AT: usize = 63;
const BASE_SEQUENCE_AT: usize = 65;

const COMPRESSION_MASK: u16 = 0b0111;
const CONTROL_BIT: u16 = 0b1000;
const KNOWN_ATTRIBUTES: u16 = COMPRESSION_MASK | CONTROL_BIT;

/// Why bytes are not a valid batch or record. Each variant names what was expected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    #[error("need {needed} bytes for {what}, have {available}")]
    Truncated {
        what: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("unknown batch format version {found} (this build reads version {MAGIC})")]
    BadMagic { found: u8 },
    #[error("batch length {length} is outside [{HEADER_LEN}, {MAX_BATCH_LEN}]")]
    BadLength { length: u64 },
    #[error("batch CRC mismatch: header says {stored:#010x}, content gives {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unsupported batch attributes {attributes:#06x}")]
    BadAttributes { attributes: u16 },
    #[error("a {kind} batch cannot have {count} records")]
    BadRecordCount { kind: &'static str, count: u32 },
    #[error("max timestamp {max} is before first timestamp {first}")]
    BadTimestamps { first: i64, max: i64 },
    #[error("base offset {base_offset} plus {count} records overflows")]
    OffsetOverflow { base_offset: u64, count: u32 },
    #[error("decompressed size {declared} exceeds the limit {MAX_UNCOMPRESSED_LEN}")]
    UncompressedTooLarge { declared: usize },
    #[error("the compressed records declare {declared} bytes, above the limit of {limit} bytes")]
    UncompressedOverLimit { declared: usize, limit: usize },
    #[error("lz4 payload does not decompress: {reason}")]
    Decompress { reason: String },
    #[error("record {position}: {problem}")]
    BadRecord { position: u32, problem: String },
    #[error("batch declares {declared} records but holds {found}")]
    RecordCountMismatch { declared: u32, found: u32 },
    #[error("{0} bytes follow the last record")]
    TrailingBytes(usize),
}

/// How a batch's payload is compressed. Stored in the attributes' low three bits.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Lz4,
}

impl Compression {
    fn from_bits(bits: u16) -> Option<Self> {
        match bits {
            0 => Some(Self::None),
            1 => Some(Self::Lz4),
            _ => None,
        }
    }

    fn bits(self) -> u16 {
        match self {
            Self::None => 0,
            Self::Lz4 => 1,
        }
    }
}

/// The decoded fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Total bytes of the batch, header included.
    pub length: u32,
    pub crc: u32,
    pub base_offset: u64,
    pub term: u64,
    pub index: u64,
    pub compression: Compression,
    /// A control batch has no records and takes no offsets.
    pub control: bool,
    pub record_count: u32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl BatchHeader {
    /// Reads and checks the fixed header at the start of `buf`. Checks the header's own fields
    /// (version, length bounds, attributes, count, timestamps); not the CRC, which needs the
    /// whole batch.
    pub fn parse(buf: &[u8]) -> Result<Self, CodecError> {
        if buf.len() < HEADER_LEN {
            return Err(CodecError::Truncated {
                what: "a batch header",
                needed: HEADER_LEN,
                available: buf.len(),
            });
        }
        let magic = buf[MAGIC_AT];
        if magic != MAGIC {
            return Err(CodecError::BadMagic { found: magic });
        }
        let length = read_u32(buf, 0);
        if (length as usize) < HEADER_LEN || length as usize > MAX_BATCH_LEN {
            return Err(CodecError::BadLength {
                length: u64::from(length),
            });
        }
        let attributes = read_u16(buf, ATTRIBUTES_AT);
        let compression = Compression::from_bits(attributes & COMPRESSION_MASK)
            .filter(|_| attributes & !KNOWN_ATTRIBUTES == 0)
            .ok_or(CodecError::BadAttributes { attributes })?;
        let control = attributes & CONTROL_BIT != 0;
        let record_count = read_u32(buf, RECORD_COUNT_AT);
        match (control, record_count) {
            (true, 0) => {}
            (false, n) if n > 0 => {}
            (true, n) => {
                return Err(CodecError::BadRecordCount {
                    kind: "control",
                    count: n,
                });
            }
            (false, n) => {
                return Err(CodecError::BadRecordCount {
                    kind: "record",
                    count: n,
                });
            }
        }
        if control && compression != Compression::None {
            return Err(CodecError::BadAttributes { attributes });
        }
        let first_timestamp = read_i64(buf, FIRST_TIMESTAMP_AT);
        let max_timestamp = read_i64(buf, MAX_TIMESTAMP_AT);
        if max_timestamp < first_timestamp {
            return Err(CodecError::BadTimestamps {
                first: first_timestamp,
                max: max_timestamp,
            });
        }
        let base_offset = read_u64(buf, BASE_OFFSET_AT);
        if base_offset.checked_add(u64::from(record_count)).is_none() {
            return Err(CodecError::OffsetOverflow {
                base_offset,
                count: record_count,
            });
        }
        Ok(Self {
            length,
            crc: read_u32(buf, CRC_AT),
            base_offset,
            term: read_u64(buf, TERM_AT),
            index: read_u64(buf, INDEX_AT),
            compression,
            control,
            record_count,
            first_timestamp,
            max_timestamp,
            producer_id: read_i64(buf, PRODUCER_ID_AT),
            producer_epoch: read_i16(buf, PRODUCER_EPOCH_AT),
            base_sequence: read_i32(buf, BASE_SEQUENCE_AT),
        })
    }

    /// The offset the next record after this batch takes.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    /// The last record's offset, or `None` for a control batch.
    pub fn last_offset(&self) -> Option<u64> {
        self.next_offset().checked_sub(1).filter(|_| !self.control)
    }

    pub fn len(&self) -> usize {
        self.length as usize
    }

    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }
}

/// The fields the log writes into a batch when it appends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub base_offset: u64,
    pub term: u64,
    pub index: u64,
}

impl Stamp {
    fn to_bytes(self) -> [u8; STAMP_END - CRC_FROM] {
        let mut out = [0u8; STAMP_END - CRC_FROM];
        out[0..8].copy_from_slice(&self.base_offset.to_le_bytes());
        out[8..16].copy_from_slice(&self.term.to_le_bytes());
        out[16..24].copy_from_slice(&self.index.to_le_bytes());
        out
    }
}

/// A batch whose header and CRC have been checked. Holds the payload zero-copy, and the CRC state
/// of everything after the stamped fields so that [`ValidBatch::restamped_header`] is O(header).
#[derive(Clone)]
pub struct ValidBatch {
    header: BatchHeader,
    bytes: Bytes,
    /// CRC state of the bytes after the stamped fields; computed on demand for batches checked
    /// with [`ValidBatch::new_stored`].
    crc_after_stamp: Option<crc32fast::Hasher>,
}

impl std::fmt::Debug for ValidBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidBatch")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl ValidBatch {
    /// Checks that `bytes` is exactly one whole batch with a correct CRC.
    pub fn new(bytes: Bytes) -> Result<Self, CodecError> {
        let header = header_of_exactly_one(&bytes)?;
        let mut crc_after_stamp = crc32fast::Hasher::new();
        crc_after_stamp.update(&bytes[STAMP_END..]);
        let computed = crc_with_stamp(&bytes[CRC_FROM..STAMP_END], &crc_after_stamp);
        if computed != header.crc {
            return Err(CodecError::CrcMismatch {
                stored: header.crc,
                computed,
            });
        }
        Ok(Self {
            header,
            bytes,
            crc_after_stamp: Some(crc_after_stamp),
        })
    }

    /// Checks a batch read back from storage: one plain CRC pass and no state kept for
    /// re-stamping (which then costs a pass of its own). Same checks as [`ValidBatch::new`].
    pub fn new_stored(bytes: Bytes) -> Result<Self, CodecError> {
        let header = header_of_exactly_one(&bytes)?;
        let computed = crc32fast::hash(&bytes[CRC_FROM..]);
        if computed != header.crc {
            return Err(CodecError::CrcMismatch {
                stored: header.crc,
                computed,
            });
        }
        Ok(Self {
            header,
            bytes,
            crc_after_stamp: None,
        })
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch exactly as received.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Everything after the fixed header (records or control data), as received.
    pub fn payload(&self) -> Bytes {
        self.bytes.slice(HEADER_LEN..)
    }

    /// The header as it must be written with `stamp` applied, CRC included, without touching the
    /// payload again.
    pub fn restamped_header(&self, stamp: Stamp) -> [u8; HEADER_LEN] {
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.bytes[..HEADER_LEN]);
        let stamp_bytes = stamp.to_bytes();
        header[CRC_FROM..STAMP_END].copy_from_slice(&stamp_bytes);
        let crc = match &self.crc_after_stamp {
            Some(after) => crc_with_stamp(&stamp_bytes, after),
            None => {
                let mut after = crc32fast::Hasher::new();
                after.update(&self.bytes[STAMP_END..]);
                crc_with_stamp(&stamp_bytes, &after)
            }
        };
        header[CRC_AT..CRC_FROM].copy_from_slice(&crc.to_le_bytes());
        header
    }

    /// The whole batch with `stamp` applied, as one buffer (copies the payload).
    pub fn restamped(&self, stamp: Stamp) -> Bytes {
        let mut out = BytesMut::with_capacity(self.bytes.len());
        out.extend_from_slice(&self.restamped_header(stamp));
        out.extend_from_slice(&self.bytes[HEADER_LEN..]);
        out.freeze()
    }

    /// Decodes the records (decompressing when needed). Control batches have none.
    pub fn records(&self) -> Result<Vec<Record>, CodecError> {
        decode_records(&self.header, self.payload())
    }

    /// Checks the whole batch as every reader will decode it — the check a broker makes before
    /// it stores a batch from a client, so that no client can store what readers cannot read:
    /// a compressed payload declares at most `max_uncompressed` bytes (checked before anything
    /// is allocated) and decompresses to exactly that size, every record parses, and the record
    /// count is the header's. Returns the number of records.
    pub fn check_records(&self, max_uncompressed: usize) -> Result<u32, CodecError> {
        self.records_within(max_uncompressed)
            .map(|records| u32::try_from(records.len()).unwrap_or(u32::MAX))
    }

    /// The records, decoded with the checks of [`ValidBatch::check_records`]: for a caller that
    /// checks a batch and then needs its records (one decode, not two).
    pub fn records_within(&self, max_uncompressed: usize) -> Result<Vec<Record>, CodecError> {
        if self.header.control {
            return Ok(Vec::new());
        }
        let payload = self.payload();
        if self.header.compression == Compression::Lz4 && payload.len() >= 4 {
            let declared = read_u32(&payload, 0) as usize;
            if declared > max_uncompressed {
                return Err(CodecError::UncompressedOverLimit {
                    declared,
                    limit: max_uncompressed,
                });
            }
        }
        decode_records(&self.header, payload)
    }
}

/// The header of `buf`, which must hold at least the whole batch the header describes.
fn header_of_first(buf: &[u8]) -> Result<BatchHeader, CodecError> {
    let header = BatchHeader::parse(buf)?;
    if buf.len() < header.len() {
        return Err(CodecError::Truncated {
            what: "the batch its header describes",
            needed: header.len(),
            available: buf.len(),
        });
    }
    Ok(header)
}

/// The header of `buf`, which must be exactly one whole batch.
fn header_of_exactly_one(buf: &[u8]) -> Result<BatchHeader, CodecError> {
    let header = header_of_first(buf)?;
    match buf.len() - header.len() {
        0 => Ok(header),
        extra => Err(CodecError::TrailingBytes(extra)),
    }
}

fn crc_with_stamp(stamp_bytes: &[u8], after_stamp: &crc32fast::Hasher) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(stamp_bytes);
    crc.combine(after_stamp);
    crc.finalize()
}

/// Reads the batch at the start of `buf` (which may hold more after it), checking header and CRC.
/// Returns the batch and the number of bytes it spans.
pub fn decode_batch(buf: &Bytes) -> Result<ValidBatch, CodecError> {
    let header = header_of_first(buf)?;
    ValidBatch::new(buf.slice(..header.len()))
}

/// Checks the batch at the start of `buf` (header and CRC) without taking ownership; `buf` may
/// hold more bytes after the batch. Used to scan files.
pub fn check_batch(buf: &[u8]) -> Result<BatchHeader, CodecError> {
    let header = header_of_first(buf)?;
    let computed = crc32fast::hash(&buf[CRC_FROM..header.len()]);
    if computed != header.crc {
        return Err(CodecError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// Iterates over the whole batches in a buffer of concatenated batches, checking each one's CRC.
/// Yields an error (and then stops) at the first invalid or incomplete batch.
#[derive(Debug, Clone)]
pub struct BatchIter {
    rest: Bytes,
    failed: bool,
}

impl BatchIter {
    pub fn new(buf: Bytes) -> Self {
        Self {
            rest: buf,
            failed: false,
        }
    }
}

impl Iterator for BatchIter {
    type Item = Result<ValidBatch, CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        match decode_batch(&self.rest) {
            Ok(batch) => {
                self.rest.advance(batch.header().len());
                Some(Ok(batch))
            }
            Err(err) => {
                self.failed = true;
                Some(Err(err))
            }
        }
    }
}

/// One record, decoded. `offset` is absolute (base offset + offset delta).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
}

/// A record header: a UTF-8 key and an optional value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub key: String,
    pub value: Option<Bytes>,
}

/// Idempotent-producer identity carried in a batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerInfo {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl ProducerInfo {
    /// The values of a batch from a producer that is not idempotent.
    pub const NONE: Self = Self {
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
    };
}

/// Builds a record batch. Offsets, term and index are left at zero: the log stamps them.
#[derive(Debug)]
pub struct BatchBuilder {
    compression: Compression,
    producer: ProducerInfo,
    records: BytesMut,
    count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
}

impl BatchBuilder {
    pub fn new(compression: Compression) -> Self {
        Self {
            compression,
            producer: ProducerInfo::NONE,
            records: BytesMut::new(),
            count: 0,
            first_timestamp: 0,
            max_timestamp: 0,
        }
    }

    pub fn producer(mut self, producer: ProducerInfo) -> Self {
        self.producer = producer;
        self
    }

    /// Appends one record. Its offset delta is its position in the batch.
    pub fn push(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> &mut Self {
        if self.count == 0 {
            self.first_timestamp = timestamp;
            self.max_timestamp = timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let mut body = BytesMut::new();
        body.put_u8(0);
        put_varint(&mut body, timestamp.wrapping_sub(self.first_timestamp));
        put_uvarint(&mut body, u64::from(self.count));
        put_optional_bytes(&mut body, key);
        put_optional_bytes(&mut body, value);
        put_uvarint(&mut body, headers.len() as u64);
        for (header_key, header_value) in headers {
            put_uvarint(&mut body, header_key.len() as u64);
            body.put_slice(header_key.as_bytes());
            put_optional_bytes(&mut body, *header_value);
        }
        put_uvarint(&mut self.records, body.len() as u64);
        self.records.put_slice(&body);
        self.count += 1;
        self
    }

    pub fn record_count(&self) -> u32 {
        self.count
    }

    /// Bytes of record data so far (before compression).
    pub fn uncompressed_len(&self) -> usize {
        self.records.len()
    }

    /// Encodes the batch. Returns `None` when no record was pushed: empty record batches do not
    /// exist in the format.
    pub fn build(self) -> Option<Bytes> {
        if self.count == 0 {
            return None;
        }
        let payload = match self.compression {
            Compression::None => self.records.freeze(),
            Compression::Lz4 => Bytes::from(lz4_flex::block::compress_prepend_size(&self.records)),
        };
        let header = HeaderFields {
            compression: self.compression,
            control: false,
            record_count: self.count,
            first_timestamp: self.first_timestamp,
            max_timestamp: self.max_timestamp,
            producer: self.producer,
        };
        Some(header.encode_with(&payload))
    }
}

/// Encodes a control batch: no records, an opaque payload, no offsets taken.
pub fn encode_control_batch(timestamp: i64, payload: &[u8]) -> Bytes {
    HeaderFields {
        compression: Compression::None,
        control: true,
        record_count: 0,
        first_timestamp: timestamp,
        max_timestamp: timestamp,
        producer: ProducerInfo::NONE,
    }
    .encode_with(payload)
}

struct HeaderFields {
    compression: Compression,
    control: bool,
    record_count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
    producer: ProducerInfo,
}

impl HeaderFields {
    fn encode_with(&self, payload: &[u8]) -> Bytes {
        let length = HEADER_LEN + payload.len();
        let mut out = BytesMut::with_capacity(length);
        out.put_u32_le(u32::try_from(length).unwrap_or(u32::MAX));
        out.put_u8(MAGIC);
        out.put_u32_le(0); // CRC, filled in below
        out.put_u64_le(0); // base offset
        out.put_u64_le(0); // term
        out.put_u64_le(0); // index
        let attributes = self.compression.bits() | if self.control { CONTROL_BIT } else { 0 };
        out.put_u16_le(attributes);
        out.put_u32_le(self.record_count);
        out.put_i64_le(self.first_timestamp);
        out.put_i64_le(self.max_timestamp);
        out.put_i64_le(self.producer.producer_id);
        out.put_i16_le(self.producer.producer_epoch);
        out.put_i32_le(self.producer.base_sequence);
        debug_assert_eq!(out.len(), HEADER_LEN);
        out.put_slice(payload);
        let crc = crc32fast::hash(&out[CRC_FROM..]);
        out[CRC_AT..CRC_FROM].copy_from_slice(&crc.to_le_bytes());
        out.freeze()
    }
}

/// The records of a batch's payload, decompressed. Control batches yield nothing.
pub fn decode_records(header: &BatchHeader, payload: Bytes) -> Result<Vec<Record>, CodecError> {
    if header.control {
        return Ok(Vec::new());
    }
    let mut raw = match header.compression {
        Compression::None => payload,
        Compression::Lz4 => decompress_lz4(&payload)?,
    };
    let mut records = Vec::with_capacity(header.record_count.min(1 << 16) as usize);
    let mut position = 0u32;
    while raw.has_remaining() {
        if position == header.record_count {
            return Err(CodecError::TrailingBytes(raw.remaining()));
        }
        let bad = |problem: &str| CodecError::BadRecord {
            position,
            problem: problem.to_owned(),
        };
        let length = get_uvarint(&mut raw).ok_or_else(|| bad("record length is not a varint"))?;
        let length = usize::try_from(length)
            .ok()
            .filter(|&n| n <= raw.remaining())
            .ok_or_else(|| bad("record length runs past the payload"))?;
        let mut body = raw.split_to(length);
        let record = decode_record_body(&mut body, header, position)
            .ok_or_else(|| bad("malformed record body"))??;
        if body.has_remaining() {
            return Err(bad("bytes left after the record's last header"));
        }
        records.push(record);
        position += 1;
    }
    if position != header.record_count {
        return Err(CodecError::RecordCountMismatch {
            declared: header.record_count,
            found: position,
        });
    }
    Ok(records)
}

/// `None` when a field is truncated or malformed; `Some(Err)` for a semantic problem.
fn decode_record_body(
    body: &mut Bytes,
    header: &BatchHeader,
    position: u32,
) -> Option<Result<Record, CodecError>> {
    let bad = |problem: String| Some(Err(CodecError::BadRecord { position, problem }));
    if !body.has_remaining() {
        return None;
    }
    let attributes = body.get_u8();
    if attributes != 0 {
        return bad(format!("unknown record attributes {attributes:#04x}"));
    }
    let timestamp_delta = get_varint(body)?;
    let offset_delta = get_uvarint(body)?;
    if offset_delta != u64::from(position) {
        return bad(format!("offset delta {offset_delta}, expected {position}"));
    }
    let timestamp = header.first_timestamp.wrapping_add(timestamp_delta);
    if timestamp > header.max_timestamp {
        return bad(format!(
            "timestamp {timestamp} is after the batch's max timestamp {}",
            header.max_timestamp
        ));
    }
    let key = get_optional_bytes(body)?;
    let value = get_optional_bytes(body)?;
    let header_count = get_uvarint(body)?;
    if header_count > body.remaining() as u64 {
        return None;
    }
    let mut headers = Vec::with_capacity(header_count as usize);
    for _ in 0..header_count {
        let key_len = usize::try_from(get_uvarint(body)?).ok()?;
        if key_len > body.remaining() {
            return None;
        }
        let key_bytes = body.split_to(key_len);
        let Ok(key) = std::str::from_utf8(&key_bytes) else {
            return bad("header key is not UTF-8".to_owned());
        };
        let value = get_optional_bytes(body)?;
        headers.push(RecordHeader {
            key: key.to_owned(),
            value,
        });
    }
    Some(Ok(Record {
        offset: header.base_offset + offset_delta,
        timestamp,
        key,
        value,
        headers,
    }))
}

fn decompress_lz4(payload: &[u8]) -> Result<Bytes, CodecError> {
    if payload.len() < 4 {
        return Err(CodecError::Truncated {
            what: "the lz4 size prefix",
            needed: 4,
            available: payload.len(),
        });
    }
    let declared = read_u32(payload, 0) as usize;
    if declared > MAX_UNCOMPRESSED_LEN {
        return Err(CodecError::UncompressedTooLarge { declared });
    }
    let mut out = vec![0u8; declared];
    let written = lz4_flex::block::decompress_into(&payload[4..], &mut out).map_err(|err| {
        CodecError::Decompress {
            reason: err.to_string(),
        }
    })?;
    if written != declared {
        return Err(CodecError::Decompress {
            reason: format!("declared {declared} bytes, produced {written}"),
        });
    }
    Ok(Bytes::from(out))
}

fn put_uvarint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

fn put_varint(buf: &mut BytesMut, value: i64) {
    put_uvarint(buf, ((value << 1) ^ (value >> 63)) as u64);
}

fn put_optional_bytes(buf: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(buf, -1),
        Some(bytes) => {
            put_varint(buf, bytes.len() as i64);
            buf.put_slice(bytes);
        }
    }
}

fn get_uvarint(buf: &mut Bytes) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return None;
        }
        let byte = buf.get_u8();
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return None;
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn get_varint(buf: &mut Bytes) -> Option<i64> {
    let raw = get_uvarint(buf)?;
    Some(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

fn get_optional_bytes(buf: &mut Bytes) -> Option<Option<Bytes>> {
    let len = get_varint(buf)?;
    if len == -1 {
        return Some(None);
    }
    let len = usize::try_from(len)
        .ok()
        .filter(|&n| n <= buf.remaining())?;
    Some(Some(buf.split_to(len)))
}

fn read_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(raw)
}

fn read_u64(buf: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(raw)
}

fn read_i16(buf: &[u8], at: usize) -> i16 {
    read_u16(buf, at) as i16
}

fn read_i32(buf: &[u8], at: usize) -> i32 {
    read_u32(buf, at) as i32
}

fn read_i64(buf: &[u8], at: usize) -> i64 {
    read_u64(buf, at) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `batch` with bytes changed by `damage` and its CRC made right again, as a hostile client
    /// would send it.
    fn damaged(batch: &Bytes, damage: impl FnOnce(&mut Vec<u8>)) -> ValidBatch {
        let mut bytes = batch.to_vec();
        damage(&mut bytes);
        let crc = crc32fast::hash(&bytes[CRC_FROM..]);
        bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        ValidBatch::new(Bytes::from(bytes)).expect("header and CRC are valid")
    }

    fn lz4_batch(value: &[u8]) -> Bytes {
        let mut builder = BatchBuilder::new(Compression::Lz4);
        builder.push(1_700_000_000_000, None, Some(value), &[]);
        builder.build().expect("one record")
    }

    #[test]
    fn check_records_accepts_what_the_builder_makes() {
        let batch = ValidBatch::new(lz4_batch(b"hello")).expect("valid");
        assert_eq!(batch.check_records(1 << 20), Ok(1));
    }

    #[test]
    fn check_records_refuses_a_record_count_the_payload_does_not_hold() {
        let batch = damaged(&lz4_batch(b"hello"), |b| {
            b[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&i32::MAX.to_le_bytes());
        });
        assert!(matches!(
            batch.check_records(1 << 20),
            Err(CodecError::RecordCountMismatch { .. })
        ));
    }

    #[test]
    fn check_records_refuses_a_declared_size_above_the_limit_before_allocating() {
        for declared in [256u32 << 20, u32::MAX] {
            let batch = damaged(&lz4_batch(b"hello"), |b| {
                b[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&declared.to_le_bytes());
            });
            assert_eq!(
                batch.check_records(1 << 20),
                Err(CodecError::UncompressedOverLimit {
                    declared: declared as usize,
                    limit: 1 << 20
                })
            );
        }
    }

    #[test]
    fn check_records_refuses_garbage_lz4_and_a_bomb() {
        let garbage = damaged(&lz4_batch(&[7u8; 100]), |b| {
            for byte in &mut b[HEADER_LEN + 4..] {
                *byte = 0xff;
            }
        });
        assert!(matches!(
            garbage.check_records(1 << 20),
            Err(CodecError::Decompress { .. })
        ));
        // 4 MiB of zeros compress to a few KiB: above a 1 MiB limit it is refused unread.
        let bomb = ValidBatch::new(lz4_batch(&vec![0u8; 4 << 20])).expect("valid");
        assert!(bomb.payload().len() < 64 << 10);
        assert!(matches!(
            bomb.check_records(1 << 20),
            Err(CodecError::UncompressedOverLimit { .. })
        ));
    }
    use proptest::prelude::*;

    fn sample(compression: Compression) -> Bytes {
        let mut builder = BatchBuilder::new(compression).producer(ProducerInfo {
            producer_id: 7,
            producer_epoch: 2,
            base_sequence: 40,
        });
        builder.push(1_000, Some(b"k1"), Some(b"hello"), &[("h", Some(b"v"))]);
        builder.push(990, None, Some(b""), &[]);
        builder.push(1_005, Some(b""), None, &[("a", None), ("b", Some(b"x"))]);
        builder.build().expect("three records")
    }

    #[test]
    fn round_trips_records_and_header() {
        for compression in [Compression::None, Compression::Lz4] {
            let batch = ValidBatch::new(sample(compression)).unwrap();
            let header = batch.header();
            assert_eq!(header.record_count, 3);
            assert_eq!(header.compression, compression);
            assert_eq!(header.first_timestamp, 1_000);
            assert_eq!(header.max_timestamp, 1_005);
            assert_eq!(header.producer_id, 7);
            assert_eq!(header.producer_epoch, 2);
            assert_eq!(header.base_sequence, 40);
            let records = batch.records().unwrap();
            assert_eq!(records.len(), 3);
            assert_eq!(records[0].key.as_deref(), Some(&b"k1"[..]));
            assert_eq!(records[0].value.as_deref(), Some(&b"hello"[..]));
            assert_eq!(records[0].headers[0].key, "h");
            assert_eq!(records[1].timestamp, 990);
            assert_eq!(records[1].key, None);
            assert_eq!(records[1].value.as_deref(), Some(&b""[..]));
            assert_eq!(records[2].value, None);
            assert_eq!(records[2].headers[0].value, None);
            assert_eq!(
                records.iter().map(|r| r.offset).collect::<Vec<_>>(),
                [0, 1, 2]
            );
        }
    }

    #[test]
    fn restamping_keeps_the_crc_valid() {
        let batch = ValidBatch::new(sample(Compression::Lz4)).unwrap();
        let stamp = Stamp {
            base_offset: 1 << 40,
            term: 9,
            index: 12345,
        };
        let restamped = ValidBatch::new(batch.restamped(stamp)).unwrap();
        assert_eq!(restamped.header().base_offset, 1 << 40);
        assert_eq!(restamped.header().term, 9);
        assert_eq!(restamped.header().index, 12345);
        let records = restamped.records().unwrap();
        assert_eq!(records[2].offset, (1 << 40) + 2);
    }

    #[test]
    fn stored_batches_check_and_restamp_like_received_ones() {
        let bytes = sample(Compression::None);
        let stored = ValidBatch::new_stored(bytes.clone()).unwrap();
        let stamp = Stamp {
            base_offset: 3,
            term: 4,
            index: 5,
        };
        let received = ValidBatch::new(bytes.clone()).unwrap();
        assert_eq!(stored.restamped(stamp), received.restamped(stamp));
        let mut corrupt = bytes.to_vec();
        corrupt[HEADER_LEN + 2] ^= 4;
        assert!(matches!(
            ValidBatch::new_stored(Bytes::from(corrupt)),
            Err(CodecError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = sample(Compression::None);
        for byte in 0..bytes.len() {
            for bit in 0..8 {
                let mut corrupt = bytes.to_vec();
                corrupt[byte] ^= 1 << bit;
                let corrupt = Bytes::from(corrupt);
                assert!(
                    ValidBatch::new(corrupt.clone()).is_err()
                        && ValidBatch::new_stored(corrupt).is_err(),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn control_batches_take_no_offsets() {
        let batch = ValidBatch::new(encode_control_batch(5, b"membership")).unwrap();
        assert!(batch.header().control);
        assert_eq!(batch.header().last_offset(), None);
        assert_eq!(batch.payload(), Bytes::from_static(b"membership"));
        assert!(batch.records().unwrap().is_empty());
    }

    #[test]
    fn empty_record_batches_do_not_exist() {
        assert!(BatchBuilder::new(Compression::None).build().is_none());
        let mut bytes = sample(Compression::None).to_vec();
        bytes[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            BatchHeader::parse(&bytes),
            Err(CodecError::BadRecordCount { .. })
        ));
    }

    #[test]
    fn iterates_concatenated_batches_and_stops_at_a_torn_one() {
        let one = sample(Compression::None);
        let two = sample(Compression::Lz4);
        let mut all = BytesMut::new();
        all.extend_from_slice(&one);
        all.extend_from_slice(&two);
        all.extend_from_slice(&one[..20]);
        let results: Vec<_> = BatchIter::new(all.freeze()).collect();
        assert_eq!(results.len(), 3);
        assert!(results[0].is_ok() && results[1].is_ok());
        assert!(matches!(results[2], Err(CodecError::Truncated { .. })));
    }

    #[test]
    fn oversized_decompression_claims_are_refused() {
        let mut builder = BatchBuilder::new(Compression::Lz4);
        builder.push(0, None, Some(b"x"), &[]);
        let bytes = builder.build().unwrap();
        let mut payload = bytes[HEADER_LEN..].to_vec();
        payload[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let header = BatchHeader::parse(&bytes).unwrap();
        assert!(matches!(
            decode_records(&header, Bytes::from(payload)),
            Err(CodecError::UncompressedTooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let bytes = Bytes::from(data);
            for batch in BatchIter::new(bytes.clone()).flatten() {
                let _ = batch.records();
            }
            if let Ok(header) = BatchHeader::parse(&bytes) {
                let _ = decode_records(&header, bytes.slice(HEADER_LEN.min(bytes.len())..));
            }
        }

        #[test]
        fn records_round_trip(
            records in proptest::collection::vec(
                (any::<i32>(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64))),
                1..20),
            lz4 in any::<bool>(),
        ) {
            let compression = if lz4 { Compression::Lz4 } else { Compression::None };
            let mut builder = BatchBuilder::new(compression);
            for (ts, key, value) in &records {
                builder.push(i64::from(*ts), key.as_deref(), value.as_deref(), &[]);
            }
            let batch = ValidBatch::new(builder.build().unwrap()).unwrap();
            let decoded = batch.records().unwrap();
            prop_assert_eq!(decoded.len(), records.len());
            for (i, (record, (ts, key, value))) in decoded.iter().zip(&records).enumerate() {
                prop_assert_eq!(record.offset, i as u64);
                prop_assert_eq!(record.timestamp, i64::from(*ts));
                prop_assert_eq!(record.key.as_deref(), key.as_deref());
                prop_assert_eq!(record.value.as_deref(), value.as_deref());
            }
        }
    }
}
