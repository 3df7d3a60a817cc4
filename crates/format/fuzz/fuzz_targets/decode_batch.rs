//! Fuzzes the batch decoder: any bytes, read as concatenated batches, must give values or a
//! `CodecError` — never a panic, an overflow or an unbounded allocation. Batches that pass the
//! checks must decode their records, and re-stamping must keep them valid.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use weir_format::batch::{self as codec, BatchHeader, BatchIter, Stamp, ValidBatch};

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    let _ = codec::check_batch(data);
    for batch in BatchIter::new(bytes.clone()).flatten() {
        let records = batch.records();
        let restamped = batch.restamped(Stamp {
            base_offset: 1 << 33,
            term: 7,
            index: 99,
        });
        let again = ValidBatch::new(restamped).expect("a re-stamped valid batch stays valid");
        assert_eq!(again.records().is_ok(), records.is_ok());
    }
    // Records decoding on its own, with whatever header the bytes claim.
    if let Ok(header) = BatchHeader::parse(data) {
        let _ = codec::decode_records(&header, bytes.slice(codec::HEADER_LEN..));
    }
});
