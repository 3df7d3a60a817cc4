//! The bench's message values and its clock.
//!
//! A value is `--message-size` bytes: the first [`TIMESTAMP_BYTES`] are the send time, as
//! microseconds since the Unix epoch (u64, little-endian) — the *intended* send time on a
//! fixed-rate schedule, the actual one at max rate — and the rest is filler cut from a pool of
//! random bytes. Random filler cannot be compressed, so `--compression lz4` shows its cost and
//! never a gain the real payload may not have. Consecutive values of one producer take
//! consecutive slices of the pool, which repeats only every [`POOL_BYTES`] bytes — far beyond
//! lz4's 64 KiB match window — so no batch holds two copies of the same bytes.
//!
//! Both ends of a latency read one [`Clock`]: a monotonic `Instant` paired once with the wall
//! clock, so producer and consumer (tasks of this one process) agree to the microsecond and a
//! wall-clock step during the run changes nothing.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use rand::RngCore;

/// Bytes of the send timestamp at the start of every value.
pub(crate) const TIMESTAMP_BYTES: usize = 8;
/// Distinct filler bytes; a producer's filler repeats only after this many.
const POOL_BYTES: usize = 4 << 20;

/// Monotonic time as microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    base: Instant,
    base_us: u64,
}

impl Clock {
    pub(crate) fn new() -> Self {
        let base = Instant::now();
        let base_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        Self { base, base_us }
    }

    /// `at` as microseconds since the Unix epoch.
    pub(crate) fn micros(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.base);
        self.base_us
            .saturating_add(u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
    }
}

/// The filler pool, shared by every producer of a run.
#[derive(Debug, Clone)]
pub(crate) struct Pool {
    /// `POOL_BYTES` random bytes plus room for one whole filler past the last start.
    bytes: Bytes,
}

impl Pool {
    /// Random bytes for fillers of up to `message_size - TIMESTAMP_BYTES` bytes.
    pub(crate) fn new(message_size: usize) -> Self {
        let mut bytes = vec![0u8; POOL_BYTES + message_size];
        rand::rng().fill_bytes(&mut bytes);
        Self {
            bytes: Bytes::from(bytes),
        }
    }

    /// A writer of values of `size` bytes starting at a random place of the pool.
    pub(crate) fn values(&self, size: usize) -> Values {
        Values {
            pool: self.bytes.clone(),
            size,
            cursor: rand::random::<u32>() as usize % POOL_BYTES,
        }
    }
}

/// Builds one producer's values (see the module docs).
#[derive(Debug)]
pub(crate) struct Values {
    pool: Bytes,
    size: usize,
    cursor: usize,
}

impl Values {
    /// A value of the configured size stamped `sent_us`.
    pub(crate) fn next(&mut self, sent_us: u64) -> Bytes {
        self.sized(sent_us, self.size)
    }

    /// A value of `size` bytes (at most the configured size) stamped `sent_us`; fewer than
    /// [`TIMESTAMP_BYTES`] bytes hold only the start of the stamp.
    pub(crate) fn sized(&mut self, sent_us: u64, size: usize) -> Bytes {
        let size = size.min(self.size);
        let mut value = BytesMut::with_capacity(size);
        let stamp = sent_us.to_le_bytes();
        let stamp_len = size.min(TIMESTAMP_BYTES);
        value.put_slice(&stamp[..stamp_len]);
        let filler = size - stamp_len;
        let end = (self.cursor + filler).min(self.pool.len());
        value.put_slice(&self.pool[self.cursor..end]);
        self.cursor = (self.cursor + filler) % POOL_BYTES;
        value.freeze()
    }
}

/// The send time stamped in `value`, if it has one.
pub(crate) fn sent_micros(value: &[u8]) -> Option<u64> {
    let stamp: [u8; TIMESTAMP_BYTES] = value.get(..TIMESTAMP_BYTES)?.try_into().ok()?;
    Some(u64::from_le_bytes(stamp))
}

/// Microseconds between the stamp and `now_us` (0 if the stamp is in the future).
pub(crate) fn latency_micros(sent_us: u64, now_us: u64) -> u64 {
    now_us.saturating_sub(sent_us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn values_carry_their_stamp_and_size() {
        let pool = Pool::new(1024);
        let mut values = pool.values(1024);
        let a = values.next(1_700_000_000_123_456);
        let b = values.next(1_700_000_000_123_457);
        assert_eq!(a.len(), 1024);
        assert_eq!(sent_micros(&a), Some(1_700_000_000_123_456));
        assert_eq!(sent_micros(&b), Some(1_700_000_000_123_457));
        // Consecutive fillers are different bytes of the pool.
        assert_ne!(a[8..], b[8..]);
        assert_eq!(values.sized(5, 100).len(), 100);
        assert_eq!(values.sized(5, 3).len(), 3);
        assert_eq!(sent_micros(&values.sized(5, 3)), None);
    }

    #[test]
    fn the_filler_wraps_around_the_pool() {
        let pool = Pool::new(1000);
        let mut values = pool.values(1000);
        for i in 0..(POOL_BYTES / 992 + 10) {
            assert_eq!(values.next(i as u64).len(), 1000);
        }
    }

    #[test]
    fn the_clock_counts_microseconds_from_the_epoch() {
        let clock = Clock::new();
        let now = Instant::now();
        let later = now + Duration::from_millis(3);
        assert_eq!(clock.micros(later) - clock.micros(now), 3000);
        assert!(clock.micros(now) > 1_600_000_000_000_000);
        assert_eq!(latency_micros(10, 5), 0);
    }
}
