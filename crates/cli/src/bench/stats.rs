//! What `weir bench` measures and how it reports it: latency histograms (HdrHistogram, in
//! microseconds, 3 significant digits, up to one hour), the measurement window, message and
//! byte counts, and the report as a table or as one JSON object whose field names are stable
//! (documented in `benches/README.md`). MB means 10^6 bytes everywhere.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::table::Table;

/// Bytes in a megabyte, as reported.
const MB: f64 = 1e6;
/// Highest latency a histogram holds (larger ones are recorded as this): one hour.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A latency distribution in microseconds.
#[derive(Debug, Clone)]
pub(crate) struct Latency(Histogram<u64>);

impl Latency {
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Self(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?))
    }

    pub(crate) fn record(&mut self, micros: u64) {
        self.0.saturating_record(micros);
    }

    pub(crate) fn merge(&mut self, other: &Latency) -> anyhow::Result<()> {
        self.0.add(&other.0)?;
        Ok(())
    }

    pub(crate) fn summary(&self) -> LatencySummary {
        let ms = |us: u64| us as f64 / 1000.0;
        if self.0.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.0.len(),
            percentiles: Some(Percentiles {
                p50: ms(self.0.value_at_quantile(0.50)),
                p90: ms(self.0.value_at_quantile(0.90)),
                p99: ms(self.0.value_at_quantile(0.99)),
                p99_9: ms(self.0.value_at_quantile(0.999)),
                max: ms(self.0.max()),
                mean: self.0.mean() / 1000.0,
            }),
        }
    }
}

/// Percentiles of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Percentiles {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p99_9: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
}

/// How many latencies were recorded, and their percentiles when there were any.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct LatencySummary {
    pub(crate) count: u64,
    pub(crate) percentiles: Option<Percentiles>,
}

impl LatencySummary {
    fn json(&self) -> Value {
        let p = self.percentiles;
        let field = |f: fn(&Percentiles) -> f64| p.as_ref().map(|p| round(f(p), 3));
        json!({
            "count": self.count,
            "p50": field(|p| p.p50),
            "p90": field(|p| p.p90),
            "p99": field(|p| p.p99),
            "p99_9": field(|p| p.p99_9),
            "max": field(|p| p.max),
            "mean": field(|p| p.mean),
        })
    }

    /// A row of the latency table: the percentiles in ms, or `-` without samples.
    fn cells(&self, name: &str) -> Vec<String> {
        let mut cells = vec![name.to_string()];
        match self.percentiles {
            Some(p) => cells
                .extend([p.p50, p.p90, p.p99, p.p99_9, p.max, p.mean].map(|ms| format!("{ms:.3}"))),
            None => cells.extend(std::iter::repeat_n("-".to_string(), 6)),
        }
        cells.push(thousands(self.count));
        cells
    }
}

/// The measurement window: events at `from` or later and before `until` count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub(crate) from: Instant,
    pub(crate) until: Instant,
}

impl Window {
    pub(crate) fn contains(&self, at: Instant) -> bool {
        at >= self.from && at < self.until
    }

    /// A window nothing falls into (for phases that are not measured this way).
    pub(crate) fn never() -> Self {
        let now = Instant::now();
        Self {
            from: now,
            until: now,
        }
    }
}

/// Messages and value bytes over a time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Throughput {
    pub(crate) messages: u64,
    pub(crate) bytes: u64,
    pub(crate) seconds: f64,
}

impl Throughput {
    pub(crate) fn msgs_per_s(&self) -> f64 {
        per_second(self.messages as f64, self.seconds)
    }

    pub(crate) fn mb_per_s(&self) -> f64 {
        per_second(self.bytes as f64 / MB, self.seconds)
    }

    fn json(&self) -> Value {
        json!({
            "messages": self.messages,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 6),
            "msgs_per_s": round(self.msgs_per_s(), 1),
            "mb_per_s": round(self.mb_per_s(), 2),
        })
    }

    /// A row of the throughput table.
    fn cells(&self, name: &str, errors: u64) -> Vec<String> {
        vec![
            name.to_string(),
            thousands(self.msgs_per_s().round() as u64),
            format!("{:.1}", self.mb_per_s()),
            thousands(self.messages),
            thousands(self.bytes),
            thousands(errors),
        ]
    }
}

fn per_second(amount: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { amount / seconds } else { 0.0 }
}

fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// `1234567` as `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Errors over the whole run (warm-up and drains included).
#[derive(Debug, Clone, Default)]
pub(crate) struct Errors {
    /// Sends refused and records whose delivery failed.
    pub(crate) publish: u64,
    /// Failed polls or fetches, and records read back wrong (a missing or misplaced offset, a
    /// value of the wrong size).
    pub(crate) consume: u64,
    /// The first error seen, as text.
    pub(crate) first: Option<String>,
}

impl Errors {
    pub(crate) fn total(&self) -> u64 {
        self.publish + self.consume
    }

    pub(crate) fn absorb(&mut self, other: Errors) {
        self.publish += other.publish;
        self.consume += other.consume;
        if self.first.is_none() {
            self.first = other.first;
        }
    }

    pub(crate) fn publish_error(&mut self, error: impl ToString) {
        self.publish += 1;
        self.first.get_or_insert_with(|| error.to_string());
    }

    pub(crate) fn consume_error(&mut self, error: impl ToString) {
        self.consume += 1;
        self.first.get_or_insert_with(|| error.to_string());
    }
}

/// The timed run's figures.
#[derive(Debug, Clone)]
pub(crate) struct Timed {
    /// Acknowledged inside the window.
    pub(crate) publish: Throughput,
    pub(crate) publish_latency: LatencySummary,
    /// Received inside the window (`None` without consumers).
    pub(crate) consume: Option<Throughput>,
    pub(crate) e2e_latency: LatencySummary,
}

/// Counts over the whole timed run, warm-up and drain included.
#[derive(Debug, Clone, Default)]
pub(crate) struct Totals {
    /// Records handed to `Producer::send`.
    pub(crate) sent: u64,
    /// Records acknowledged.
    pub(crate) published: u64,
    /// Records whose send or delivery failed.
    pub(crate) publish_failed: u64,
    /// Records the consumers received (`None` without consumers).
    pub(crate) consumed: Option<u64>,
    /// Whether the consumers read up to every partition's high watermark after the producers
    /// stopped, before `--drain-timeout`.
    pub(crate) drained: Option<bool>,
    /// How long that took.
    pub(crate) drain_seconds: Option<f64>,
}

/// `--backlog`: writing it with the consumers stopped, then the consumers draining it.
#[derive(Debug, Clone)]
pub(crate) struct Backlog {
    /// Acknowledged backlog messages and bytes, over the time writing them took.
    pub(crate) write: Throughput,
    /// What the consumers read of it, over the time from their start to the last record.
    pub(crate) drain: Throughput,
    /// Whether they read all of it before `--drain-timeout`.
    pub(crate) drained: bool,
}

/// `--replay-bytes`.
#[derive(Debug, Clone)]
pub(crate) struct Replay {
    pub(crate) reader: &'static str,
    /// Value bytes and records written, and how long writing took.
    pub(crate) write: Throughput,
    /// Value bytes and records read back, and how long reading took.
    pub(crate) read: Throughput,
    /// Whether every offset from 0 to the end came back once, in order, with its size.
    pub(crate) verified: bool,
    /// The partition's high watermark after writing.
    pub(crate) high_watermark: u64,
    /// Seconds from the last acknowledgement until ListOffsets showed every record (one call,
    /// a few milliseconds, when it shows them at once).
    pub(crate) high_watermark_lag: f64,
}

/// Everything `weir bench` prints.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    /// The resolved options, as JSON (the `config` object).
    pub(crate) config: Value,
    /// One line describing the setup, above the table.
    pub(crate) setup: String,
    pub(crate) timed: Option<Timed>,
    pub(crate) totals: Option<Totals>,
    pub(crate) backlog: Option<Backlog>,
    pub(crate) replay: Option<Replay>,
    pub(crate) errors: Errors,
}

impl Report {
    /// The JSON report (see `benches/README.md`).
    pub(crate) fn json(&self) -> Value {
        let mode = if self.replay.is_some() {
            "replay"
        } else {
            "workload"
        };
        let publish = self.timed.as_ref().map(|t| {
            let mut v = t.publish.json();
            v["latency_ms"] = t.publish_latency.json();
            v
        });
        let consume = self.timed.as_ref().and_then(|t| {
            t.consume.map(|c| {
                let mut v = c.json();
                v["e2e_latency_ms"] = t.e2e_latency.json();
                v
            })
        });
        let totals = self.totals.as_ref().map(|t| {
            json!({
                "sent": t.sent,
                "published": t.published,
                "publish_failed": t.publish_failed,
                "consumed": t.consumed,
                "drained": t.drained,
                "drain_seconds": t.drain_seconds.map(|s| round(s, 6)),
            })
        });
        let backlog = self.backlog.as_ref().map(|b| {
            json!({
                "write": b.write.json(),
                "drain": b.drain.json(),
                "drained": b.drained,
            })
        });
        let replay = self.replay.as_ref().map(|r| {
            json!({
                "reader": r.reader,
                "write": r.write.json(),
                "read": r.read.json(),
                "verified": r.verified,
                "high_watermark": r.high_watermark,
                "high_watermark_lag_seconds": round(r.high_watermark_lag, 6),
            })
        });
        json!({
            "mode": mode,
            "config": self.config,
            "publish": publish,
            "consume": consume,
            "totals": totals,
            "backlog": backlog,
            "replay": replay,
            "errors": {
                "publish": self.errors.publish,
                "consume": self.errors.consume,
                "total": self.errors.total(),
                "first": self.errors.first,
            },
        })
    }

    /// The report for people.
    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.setup);
        if let Some(timed) = &self.timed {
            let mut throughput = Table::new(&[
                "THROUGHPUT",
                "MSGS/S",
                "MB/S",
                "MESSAGES",
                "BYTES",
                "ERRORS",
            ]);
            throughput.row(timed.publish.cells("publish", self.errors.publish));
            if let Some(consume) = &timed.consume {
                throughput.row(consume.cells("consume", self.errors.consume));
            }
            let _ = writeln!(out, "\n{}", throughput.render());
            let mut latency = Table::new(&[
                "LATENCY MS",
                "P50",
                "P90",
                "P99",
                "P99.9",
                "MAX",
                "MEAN",
                "SAMPLES",
            ]);
            latency.row(timed.publish_latency.cells("publish"));
            if timed.consume.is_some() {
                latency.row(timed.e2e_latency.cells("end-to-end"));
            }
            let _ = writeln!(out, "\n{}", latency.render());
        }
        if let Some(t) = &self.totals {
            let consumed = match (t.consumed, t.drained, t.drain_seconds) {
                (Some(c), Some(true), Some(s)) => {
                    format!(", {} consumed (drained in {s:.2} s)", thousands(c))
                }
                (Some(c), _, _) => format!(
                    ", {} consumed (NOT drained within --drain-timeout)",
                    thousands(c)
                ),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "\ntotals: {} sent, {} acknowledged, {} failed{consumed}",
                thousands(t.sent),
                thousands(t.published),
                thousands(t.publish_failed),
            );
        }
        if let Some(b) = &self.backlog {
            let _ = writeln!(
                out,
                "\nbacklog: wrote {} messages ({:.1} MB) at {:.1} MB/s; consumers drained {} messages in {:.2} s: {:.1} MB/s, {} msgs/s{}",
                thousands(b.write.messages),
                b.write.bytes as f64 / MB,
                b.write.mb_per_s(),
                thousands(b.drain.messages),
                b.drain.seconds,
                b.drain.mb_per_s(),
                thousands(b.drain.msgs_per_s().round() as u64),
                if b.drained {
                    ""
                } else {
                    " (NOT all of it within --drain-timeout)"
                }
            );
        }
        if let Some(r) = &self.replay {
            let _ = writeln!(
                out,
                "\nreplay write: {} bytes in {} records, {:.2} s, {:.1} MB/s",
                thousands(r.write.bytes),
                thousands(r.write.messages),
                r.write.seconds,
                r.write.mb_per_s()
            );
            let _ = writeln!(
                out,
                "replay read ({}): {} bytes in {} records, {:.3} s, {:.1} MB/s, {} msgs/s{}",
                r.reader,
                thousands(r.read.bytes),
                thousands(r.read.messages),
                r.read.seconds,
                r.read.mb_per_s(),
                thousands(r.read.msgs_per_s().round() as u64),
                if r.verified {
                    ", every offset verified"
                } else {
                    ", NOT VERIFIED (see errors)"
                }
            );
        }
        let _ = writeln!(
            out,
            "\nerrors: {} publish, {} consume{}",
            self.errors.publish,
            self.errors.consume,
            self.errors
                .first
                .as_ref()
                .map(|e| format!("; first: {e}"))
                .unwrap_or_default()
        );
        out
    }
}

/// Seconds in `d`, as a float.
pub(crate) fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_in_milliseconds_and_ordered() -> anyhow::Result<()> {
        let mut latency = Latency::new()?;
        assert_eq!(latency.summary(), LatencySummary::default());
        for us in 1..=10_000u64 {
            latency.record(us);
        }
        let mut other = Latency::new()?;
        other.record(50_000);
        latency.merge(&other)?;
        let summary = latency.summary();
        assert_eq!(summary.count, 10_001);
        let p = summary.percentiles.ok_or_else(|| anyhow::anyhow!("none"))?;
        assert!((p.p50 - 5.0).abs() < 0.01, "{p:?}");
        assert!(p.p50 <= p.p90 && p.p90 <= p.p99 && p.p99 <= p.p99_9 && p.p99_9 <= p.max);
        assert!((p.max - 50.0).abs() < 0.05, "{p:?}");
        Ok(())
    }

    #[test]
    fn rates_and_numbers_print() {
        let t = Throughput {
            messages: 1000,
            bytes: 2_000_000,
            seconds: 2.0,
        };
        assert_eq!(t.msgs_per_s(), 500.0);
        assert_eq!(t.mb_per_s(), 1.0);
        assert_eq!(Throughput::default().mb_per_s(), 0.0);
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        let w = Window::never();
        assert!(!w.contains(Instant::now()));
    }
}
