//! A small tool to look at a partition log by hand: fill one with records, then damage its files
//! and watch recovery.
//!
//! ```text
//! cargo run -p weir-storage --example logtool -- fill DIR [BATCHES] [RECORDS_PER_BATCH]
//! cargo run -p weir-storage --example logtool -- inspect DIR
//! ```
//!
//! `fill` appends batches of 100-byte records with durability `always`, using small segments
//! (64 KiB) so that a few hundred batches give several sealed segments. `inspect` opens the log
//! (running recovery), prints what recovery repaired, the log's bounds and segments, then reads
//! and CRC-checks every batch (`verify`). It exits non-zero, with the error, when the log cannot
//! be opened or verified.

use std::path::PathBuf;
use std::process::ExitCode;

use weir_format::batch::{BatchBuilder, Compression, ValidBatch};
use weir_storage::{LogConfig, PartitionLog, StorageError};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 4096,
        ..LogConfig::default()
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["fill", dir, rest @ ..] => fill(dir, rest),
        ["inspect", dir] => inspect(dir),
        _ => Err(Failure::Usage),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage) => {
            eprintln!(
                "usage: logtool fill DIR [BATCHES] [RECORDS_PER_BATCH]\n       logtool inspect DIR"
            );
            ExitCode::from(2)
        }
        Err(Failure::BadNumber(text)) => {
            eprintln!("logtool: {text:?} is not a positive whole number");
            ExitCode::from(2)
        }
        Err(Failure::Storage(err)) => {
            eprintln!("logtool: {err}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug)]
enum Failure {
    Usage,
    BadNumber(String),
    Storage(StorageError),
}

impl From<StorageError> for Failure {
    fn from(err: StorageError) -> Self {
        Failure::Storage(err)
    }
}

fn number(text: Option<&&str>, default: u64) -> Result<u64, Failure> {
    match text {
        None => Ok(default),
        Some(text) => text
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| Failure::BadNumber((*text).to_owned())),
    }
}

fn fill(dir: &str, rest: &[&str]) -> Result<(), Failure> {
    if rest.len() > 2 {
        return Err(Failure::Usage);
    }
    let batches = number(rest.first(), 300)?;
    let records = number(rest.get(1), 10)?;
    let log = PartitionLog::open(PathBuf::from(dir), config())?;
    let start = log.bounds()?.next_offset;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut last = None;
    for b in 0..batches {
        let mut builder = BatchBuilder::new(if b % 3 == 0 {
            Compression::Lz4
        } else {
            Compression::None
        });
        for r in 0..records {
            let value = format!(
                "record {:>8} of batch {b:>6} {}",
                start + b * records + r,
                "x".repeat(60)
            );
            builder.push(now, None, Some(value.as_bytes()), &[]);
        }
        let Some(bytes) = builder.build() else {
            return Err(Failure::Usage);
        };
        let batch = ValidBatch::new(bytes).map_err(StorageError::from)?;
        last = Some(log.append(&batch, 1)?);
    }
    if let Some(last) = last {
        log.wait_durable(last.index)?;
    }
    let bounds = log.bounds()?;
    println!(
        "appended {batches} batches of {records} records: offsets [{}, {}), {} segments, {} bytes",
        bounds.log_start_offset, bounds.next_offset, bounds.segments, bounds.size_bytes
    );
    log.close()?;
    Ok(())
}

fn inspect(dir: &str) -> Result<(), Failure> {
    let log = PartitionLog::open(PathBuf::from(dir), config())?;
    let recovery = log.recovery();
    match &recovery.tail_repair {
        Some(repair) => println!(
            "recovery: cut a torn or corrupt tail from {} at byte {} ({} bytes dropped): {}",
            repair.path.display(),
            repair.position,
            repair.dropped_bytes,
            repair.reason
        ),
        None => println!("recovery: the active segment's tail was intact"),
    }
    for rebuild in &recovery.index_rebuilds {
        println!(
            "recovery: rebuilt {} ({})",
            rebuild.path.display(),
            rebuild.problem
        );
    }
    if recovery.removed_below_start > 0 {
        println!(
            "recovery: removed {} segments below the log start",
            recovery.removed_below_start
        );
    }
    let bounds = log.bounds()?;
    println!(
        "log: offsets [{}, {}), entry indexes [{}, {}), {} segments, {} bytes",
        bounds.log_start_offset,
        bounds.next_offset,
        bounds.first_index.unwrap_or(bounds.next_index),
        bounds.next_index,
        bounds.segments,
        bounds.size_bytes
    );
    let report = log.verify()?;
    println!(
        "verify: {} batches in {} segments, {} bytes, every CRC and offset checked",
        report.batches, report.segments, report.bytes
    );
    log.close()?;
    Ok(())
}
