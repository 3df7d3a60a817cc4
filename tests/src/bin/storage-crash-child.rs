//! The child process of the storage crash test (`tests/tests/storage_crash.rs`).
//!
//! `storage-crash-child DIR TERM` opens (and so recovers) the partition log in `DIR` with
//! durable appends and small segments, prints `ready <next_offset> <next_index> <segments>
//! <tail bytes dropped>`, then appends forever from [`CHILD_THREADS`] threads, with Raft term
//! `TERM`, the self-verifying batches of [`weir_tests::crash::make_batch`]. After each append is
//! durable it prints `durable <index> <base_offset> <next_offset> <content hash>` and flushes
//! stdout. It never exits on its own: the test kills it with SIGKILL. Any error is printed to
//! stderr and ends the process with status 2.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;

use anyhow::Context;
use weir_storage::PartitionLog;
use weir_tests::crash::{
    CHILD_THREADS, DurableLine, Origin, ReadyLine, content_hash, crash_log_config, make_batch,
};

fn main() {
    if let Err(err) = run() {
        eprintln!("storage-crash-child: {err:#}");
        std::process::exit(2);
    }
}

fn run() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let usage = "usage: storage-crash-child DIR TERM";
    let dir = PathBuf::from(args.next().context(usage)?);
    let term: u64 = args
        .next()
        .and_then(|t| t.into_string().ok())
        .context(usage)?
        .parse()
        .context("TERM must be a number")?;
    let log = Arc::new(
        PartitionLog::open(&dir, crash_log_config())
            .with_context(|| format!("open {}", dir.display()))?,
    );
    let bounds = log.bounds()?;
    let ready = ReadyLine {
        next_offset: bounds.next_offset,
        next_index: bounds.next_index,
        segments: bounds.segments,
        tail_dropped: log
            .recovery()
            .tail_repair
            .as_ref()
            .map_or(0, |repair| repair.dropped_bytes),
    };
    print_line(&ready.to_line())?;
    let (failed, failure) = mpsc::channel();
    for thread in 0..CHILD_THREADS {
        let log = Arc::clone(&log);
        let failed = failed.clone();
        std::thread::Builder::new()
            .name(format!("append-{thread}"))
            .spawn(move || {
                let Err(err) = append_forever(&log, term, thread);
                let _ = failed.send(err.context(format!("thread {thread}")));
            })
            .context("spawn an appender")?;
    }
    drop(failed);
    match failure.recv() {
        Ok(err) => Err(err),
        Err(mpsc::RecvError) => anyhow::bail!("every appender stopped without an error"),
    }
}

/// Appends this thread's batches, one durable append after the other, until something fails.
fn append_forever(
    log: &PartitionLog,
    term: u64,
    thread: u32,
) -> anyhow::Result<std::convert::Infallible> {
    for seq in 0.. {
        let batch = make_batch(Origin { term, thread, seq })?;
        let appended = log
            .append_durable(&batch, term)
            .with_context(|| format!("append seq {seq}"))?;
        let line = DurableLine {
            index: appended.index,
            base_offset: appended.base_offset,
            next_offset: appended.next_offset,
            hash: content_hash(&batch),
        };
        print_line(&line.to_line())?;
    }
    anyhow::bail!("sequence numbers ran out")
}

fn print_line(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("write to stdout")?;
    out.flush().context("flush stdout")
}
