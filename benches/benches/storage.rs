//! Storage benchmark: what the partition log costs compared with the file system underneath it.
//!
//! Run with `cargo bench -p weir-bench --bench storage` (add `-- --json` for one JSON object on
//! stdout, or `-- NAME...` to run only the cases whose id contains one of the names).
//!
//! Every case is measured next to a raw comparator doing the same I/O without Weir: same bytes,
//! same chunk size, same directory, same run. The figure that matters is the ratio
//! `weir MB/s / raw MB/s` (MB = 10^6 bytes).
//!
//! - **Append** (`append-*`): 1 KiB records (1024-byte value, no key, no headers, uncompressed) in
//!   batches of about 16 KiB and about 1 MiB (whole records, header included). The batches are
//!   encoded before the clock starts (that is the client's work; a pool of 64 MiB of distinct
//!   batches, `WEIR_BENCH_POOL_BYTES`, is cycled through: larger than the CPU's L2, so each
//!   batch is read from L3 or memory, where a broker that has just copied it off a socket would
//!   find it in cache; both sides read the same pool). Timed, per batch, is what the broker does when a batch
//!   arrives: `ValidBatch::new` (header and CRC check) then `PartitionLog::append` (durability
//!   `never`) or `PartitionLog::append_durable` (durability `always`: returns once the batch is
//!   fdatasync'd; concurrent writers share syncs). The raw comparator writes the same batch
//!   bytes, one `write_all` per batch, to a new file; for `always` it calls `sync_data` after
//!   every chunk, the physical limit of one synchronous writer. The `4w` cases run 4 writer
//!   threads on one log (group commit) and are compared with the same single raw writer.
//! - **Read** (`read-*`): a log written with `never` is read from offset 0 to the end with
//!   `PartitionLog::read(next, 1 MiB)` (every returned batch is CRC-checked inside `read`: that
//!   is the honest cost of serving it); the comparator `read`s the same segment files with a
//!   1 MiB buffer. `read-active-*` reads the log as written (everything in the active segment,
//!   served with `pread` copies); `read-sealed-*` reads it after a roll (the segment is sealed
//!   and served zero-copy from a map). A read repetition is 4 passes over the whole log per
//!   side, weir and raw interleaved; the log is reopened (untimed) before every pass, so each
//!   one pays for mapping and page faults. Both readers are served from the page cache.
//!
//! Each case runs one discarded warm-up repetition and then `WEIR_BENCH_REPS` repetitions
//! (default 5), alternating which of weir and raw goes first. The table shows the median MB/s
//! of each, and as the ratio the median of the per-repetition ratios (each weir run divided by
//! the raw run next to it in time, which cancels most of a shared machine's drifts). Before every
//! timed append run the previous files are deleted, `sync` is run (no write-back pending), and
//! a throwaway file a little larger than the run is written and deleted, so that both sides fill
//! page cache from memory the hypervisor currently backs (see [`warm_page_cache`]). The clock
//! covers the appends or reads only: opening and closing the log (whose final sync under `never`
//! is therefore not part of the figure) and creating the raw file are outside it.
//!
//! Environment: `WEIR_BENCH_BYTES` (bytes per `never` and read case, default 512M),
//! `WEIR_BENCH_SYNC_BYTES` (bytes per `always` case, default 128M or `WEIR_BENCH_BYTES` if
//! smaller), `WEIR_BENCH_POOL_BYTES` (distinct batch bytes, default 64M), `WEIR_BENCH_REPS`,
//! `WEIR_BENCH_DIR` (a directory on the disk to measure; default
//! the cargo target directory; a temporary directory is created inside it and removed at the
//! end), `WEIR_BENCH_JSON=1` (same as `--json`). Sizes take K, M, G suffixes (binary).
//!
//! The targets printed are informational (PASS/BELOW); nothing here asserts on timing.

use std::fmt::Write as _;
use std::fs::File;
use std::hint::black_box;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use weir_format::batch::{BatchBuilder, Compression, HEADER_LEN, ValidBatch};
use weir_storage::{Durability, LogConfig, PartitionLog};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
/// Record value size.
const VALUE_LEN: usize = KIB;
/// Default bytes of distinct pre-built batches; larger runs cycle through them.
const POOL_BYTES: u64 = 64 * MIB as u64;
/// `max_bytes` of each log read, and the raw reader's buffer.
const READ_CHUNK: usize = MIB;
/// Whole-log reads per side in one read repetition.
const READ_PASSES: usize = 4;
const TERM: u64 = 1;
const BASE_TIMESTAMP_MS: i64 = 1_795_000_000_000;

fn main() -> Result<()> {
    let settings = Settings::from_env()?;
    let scratch = tempfile::Builder::new()
        .prefix("weir-bench-storage-")
        .tempdir_in(&settings.root)
        .with_context(|| format!("create a directory in {}", settings.root.display()))?;
    let machine = Machine::probe(scratch.path());
    if machine.fs_type == "tmpfs" || machine.fs_type == "ramfs" {
        eprintln!(
            "warning: {} is on {}: this measures memory, not a disk; set WEIR_BENCH_DIR",
            scratch.path().display(),
            machine.fs_type
        );
    }
    let started = Instant::now();
    let mut results = Vec::new();
    for case in cases() {
        if !settings.selects(&case.id) {
            continue;
        }
        eprintln!("{}: {}", case.id, case.title);
        let result = run_case(&case, &settings, scratch.path())
            .with_context(|| format!("case {}", case.id))?;
        eprintln!(
            "{}: weir {:.0} MB/s, {} {:.0} MB/s, ratio {:.2}",
            case.id,
            result.weir_mbps(),
            case.raw_label(),
            result.raw_mbps(),
            result.ratio()
        );
        results.push(result);
    }
    let elapsed = started.elapsed();
    let report = Report {
        settings: &settings,
        machine: &machine,
        dir: scratch.path(),
        results: &results,
        elapsed,
    };
    if settings.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    scratch.close().context("remove the benchmark directory")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Settings and environment

#[derive(Debug)]
struct Settings {
    bytes: u64,
    sync_bytes: u64,
    pool_bytes: u64,
    reps: usize,
    json: bool,
    filters: Vec<String>,
    root: PathBuf,
    /// The command line as a user would type it.
    command: String,
}

impl Settings {
    fn from_env() -> Result<Self> {
        let bytes = env_size("WEIR_BENCH_BYTES")?.unwrap_or(512 * MIB as u64);
        let sync_bytes =
            env_size("WEIR_BENCH_SYNC_BYTES")?.unwrap_or((128 * MIB as u64).min(bytes));
        let pool_bytes = env_size("WEIR_BENCH_POOL_BYTES")?.unwrap_or(POOL_BYTES);
        let reps = match std::env::var("WEIR_BENCH_REPS") {
            Ok(text) => text
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .with_context(|| format!("WEIR_BENCH_REPS={text:?} is not a positive number"))?,
            Err(_) => 5,
        };
        let mut json =
            std::env::var("WEIR_BENCH_JSON").is_ok_and(|v| !matches!(v.as_str(), "" | "0"));
        let mut filters = Vec::new();
        let mut passed = Vec::new();
        // `cargo bench` passes `--bench` to harness-less benchmarks; other flags are ignored too.
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                "--json" => {
                    json = true;
                    passed.push(arg);
                }
                flag if flag.starts_with('-') => {}
                _ => {
                    filters.push(arg.clone());
                    passed.push(arg);
                }
            }
        }
        let root = match std::env::var_os("WEIR_BENCH_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => target_dir(),
        };
        std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
        let mut command = String::new();
        for var in [
            "WEIR_BENCH_BYTES",
            "WEIR_BENCH_SYNC_BYTES",
            "WEIR_BENCH_POOL_BYTES",
            "WEIR_BENCH_REPS",
            "WEIR_BENCH_DIR",
            "WEIR_BENCH_JSON",
        ] {
            if let Ok(value) = std::env::var(var) {
                let _ = write!(command, "{var}={value} ");
            }
        }
        command.push_str("cargo bench -p weir-bench --bench storage");
        if !passed.is_empty() {
            let _ = write!(command, " -- {}", passed.join(" "));
        }
        ensure!(
            bytes >= MIB as u64 && sync_bytes >= MIB as u64,
            "WEIR_BENCH_BYTES and WEIR_BENCH_SYNC_BYTES must be at least 1M"
        );
        Ok(Self {
            bytes,
            sync_bytes,
            pool_bytes,
            reps,
            json,
            filters,
            root,
            command,
        })
    }

    fn selects(&self, id: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| id.contains(f.as_str()))
    }
}

fn env_size(var: &str) -> Result<Option<u64>> {
    match std::env::var(var) {
        Ok(text) => parse_size(&text)
            .map(Some)
            .with_context(|| format!("{var}={text:?} is not a size like 512M")),
        Err(_) => Ok(None),
    }
}

/// `65536`, `64K`, `512M`, `1G` (also `512MiB`, `512MB`): binary multiples.
fn parse_size(text: &str) -> Result<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().context("no number")?;
    let unit = unit.trim().to_ascii_uppercase();
    let scale: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        other => bail!("unknown unit {other:?}"),
    };
    number.checked_mul(scale).context("too large")
}

/// The cargo target directory this binary was built in (the disk the workspace is on), or the
/// system temporary directory if it cannot be found.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|dir| dir.join("CACHEDIR.TAG").is_file())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(std::env::temp_dir)
}

#[derive(Debug)]
struct Machine {
    date: String,
    cpus: usize,
    cpu_model: String,
    memory: String,
    kernel: String,
    fs_type: String,
    fs_device: String,
    fs_mount: String,
    load: String,
}

impl Machine {
    fn probe(dir: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
            .map_or_else(
                || "unknown".to_string(),
                |(_, model)| model.trim().to_string(),
            );
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                let kib: u64 = text
                    .lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()?;
                Some(format!("{:.1} GiB RAM", kib as f64 / (1 << 20) as f64))
            })
            .unwrap_or_else(|| "unknown RAM".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| format!("Linux {}", s.trim()))
            .unwrap_or_else(|_| std::env::consts::OS.to_string());
        let (fs_device, fs_mount, fs_type) = mount_of(dir);
        let load = std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".into());
        Self {
            date: utc_now(),
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model,
            memory,
            kernel,
            fs_type,
            fs_device,
            fs_mount,
            load,
        }
    }
}

/// (device, mount point, file system type) of the mount holding `dir`, from `/proc/mounts`.
fn mount_of(dir: &Path) -> (String, String, String) {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let device = fields.next()?;
            let mount = fields.next()?.replace("\\040", " ");
            let fs = fields.next()?;
            dir.starts_with(&mount)
                .then(|| (device.to_string(), mount, fs.to_string()))
        })
        .max_by_key(|(_, mount, _)| mount.len())
        .unwrap_or_else(|| ("unknown".into(), "unknown".into(), "unknown".into()))
}

/// The current time as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days to civil date (Howard Hinnant's algorithm), valid for any date after 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

// ---------------------------------------------------------------------------------------------
// Cases

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Never,
    Always,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Append { mode: Mode, writers: usize },
    Read { sealed: bool },
}

#[derive(Debug)]
struct Case {
    id: String,
    title: String,
    kind: Kind,
    /// Batch size aimed at (the encoded batch is at most this).
    batch_target: usize,
    /// Informational target for the ratio.
    target: Option<f64>,
}

impl Case {
    fn raw_label(&self) -> &'static str {
        match self.kind {
            Kind::Append {
                mode: Mode::Never, ..
            } => "raw write",
            Kind::Append {
                mode: Mode::Always, ..
            } => "raw write+fdatasync",
            Kind::Read { .. } => "raw read",
        }
    }
}

fn size_label(bytes: usize) -> String {
    if bytes >= MIB {
        format!("{}m", bytes / MIB)
    } else {
        format!("{}k", bytes / KIB)
    }
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (mode, writers, target_at_1m) in [
        (Mode::Never, 1, Some(0.70)),
        (Mode::Always, 1, Some(0.50)),
        (Mode::Always, 4, None),
    ] {
        for batch in [16 * KIB, MIB] {
            let name = match mode {
                Mode::Never => "never",
                Mode::Always => "always",
            };
            cases.push(Case {
                id: format!("append-{name}-{}-{writers}w", size_label(batch)),
                title: format!(
                    "append, durability {name}, ~{} batches, {writers} writer{}",
                    size_label(batch),
                    if writers == 1 { "" } else { "s" }
                ),
                kind: Kind::Append { mode, writers },
                batch_target: batch,
                target: target_at_1m.filter(|_| batch == MIB),
            });
        }
    }
    for sealed in [false, true] {
        for batch in [16 * KIB, MIB] {
            let (name, how) = if sealed {
                ("sealed", "sealed segment, mmap")
            } else {
                ("active", "active segment, pread")
            };
            cases.push(Case {
                id: format!("read-{name}-{}", size_label(batch)),
                title: format!("sequential read, {how}, ~{} batches", size_label(batch)),
                kind: Kind::Read { sealed },
                batch_target: batch,
                target: Some(0.70),
            });
        }
    }
    cases
}

#[derive(Debug)]
struct CaseResult {
    id: String,
    title: String,
    raw_label: &'static str,
    durability: Option<&'static str>,
    writers: usize,
    batch_len: usize,
    records_per_batch: usize,
    total_bytes: u64,
    target: Option<f64>,
    /// MB/s of each repetition.
    weir: Vec<f64>,
    raw: Vec<f64>,
}

impl CaseResult {
    fn weir_mbps(&self) -> f64 {
        median(&self.weir)
    }

    fn raw_mbps(&self) -> f64 {
        median(&self.raw)
    }

    /// The median of the per-repetition ratios: each weir run is divided by the raw run next to
    /// it in time, which cancels most of the machine's slow drifts.
    fn ratio(&self) -> f64 {
        let ratios: Vec<f64> = self
            .weir
            .iter()
            .zip(&self.raw)
            .map(|(w, r)| w / r)
            .collect();
        median(&ratios)
    }

    fn verdict(&self) -> &'static str {
        match self.target {
            Some(target) if self.ratio() >= target => "PASS",
            Some(_) => "BELOW",
            None => "-",
        }
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn mbps(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}

fn run_case(case: &Case, settings: &Settings, dir: &Path) -> Result<CaseResult> {
    let total = match case.kind {
        Kind::Append {
            mode: Mode::Always, ..
        } => settings.sync_bytes,
        _ => settings.bytes,
    };
    let pool = Pool::build(case.batch_target, total.min(settings.pool_bytes))?;
    let count = (total / pool.batch_len as u64).max(1) as usize;
    let total_bytes = count as u64 * pool.batch_len as u64;
    let mut weir = Vec::new();
    let mut raw = Vec::new();
    match case.kind {
        Kind::Append { mode, writers } => {
            let log_dir = dir.join("log");
            let raw_file = dir.join("raw.dat");
            for rep in 0..=settings.reps {
                let mut pair = [0.0; 2];
                for weir_turn in turns(rep) {
                    clear(&[&log_dir, &raw_file])?;
                    settle();
                    warm_page_cache(dir, total_bytes)?;
                    pair[usize::from(weir_turn)] = if weir_turn {
                        mbps(
                            total_bytes,
                            weir_append(&log_dir, &pool, count, mode, writers)?,
                        )
                    } else {
                        let sync = mode == Mode::Always;
                        mbps(total_bytes, raw_write(&raw_file, &pool, count, sync)?)
                    };
                }
                record(rep, settings.reps, pair, &mut weir, &mut raw);
            }
            clear(&[&log_dir, &raw_file])?;
        }
        Kind::Read { sealed } => {
            let log_dir = dir.join(format!("read-{}", size_label(case.batch_target)));
            if !log_dir.exists() {
                // Written once per batch size, untimed; the `sealed` case reuses it after a roll.
                weir_append(&log_dir, &pool, count, Mode::Never, 1)?;
                settle();
            }
            if sealed {
                let log = open_log(&log_dir, Mode::Never)?;
                log.roll()?;
                log.close()?;
                settle();
            }
            // A read of the whole log takes well under a second, and memory bandwidth on a
            // shared host drifts at that scale: each repetition is several passes, weir and raw
            // interleaved, and its figure is the total bytes over the total time of each side.
            let bytes = total_bytes * READ_PASSES as u64;
            for rep in 0..=settings.reps {
                let mut times = [Duration::ZERO; 2];
                for pass in 0..READ_PASSES {
                    for weir_turn in turns(rep + pass) {
                        times[usize::from(weir_turn)] += if weir_turn {
                            let log = open_log(&log_dir, Mode::Never)?;
                            let elapsed = weir_read(&log, total_bytes)?;
                            log.close()?;
                            elapsed
                        } else {
                            raw_read(&log_dir, total_bytes)?
                        };
                    }
                }
                let pair = times.map(|elapsed| mbps(bytes, elapsed));
                record(rep, settings.reps, pair, &mut weir, &mut raw);
            }
            if sealed {
                clear(&[&log_dir])?;
            }
        }
    }
    Ok(CaseResult {
        id: case.id.clone(),
        title: case.title.clone(),
        raw_label: case.raw_label(),
        durability: match case.kind {
            Kind::Append {
                mode: Mode::Never, ..
            } => Some("never"),
            Kind::Append {
                mode: Mode::Always, ..
            } => Some("always"),
            Kind::Read { .. } => None,
        },
        writers: match case.kind {
            Kind::Append { writers, .. } => writers,
            Kind::Read { .. } => 1,
        },
        batch_len: pool.batch_len,
        records_per_batch: pool.records_per_batch,
        total_bytes,
        target: case.target,
        weir,
        raw,
    })
}

/// Keeps the (raw, weir) figures of repetition `rep`; repetition 0 is the warm-up, discarded.
fn record(
    rep: usize,
    reps: usize,
    [raw_mbps, weir_mbps]: [f64; 2],
    weir: &mut Vec<f64>,
    raw: &mut Vec<f64>,
) {
    if rep == 0 {
        eprintln!("  warm-up: weir {weir_mbps:.0} MB/s, raw {raw_mbps:.0} MB/s (discarded)");
    } else {
        eprintln!("  rep {rep}/{reps}: weir {weir_mbps:.0} MB/s, raw {raw_mbps:.0} MB/s");
        weir.push(weir_mbps);
        raw.push(raw_mbps);
    }
}

/// Which goes first in repetition `rep`: weir (`true`) or raw, alternating.
fn turns(rep: usize) -> [bool; 2] {
    if rep.is_multiple_of(2) {
        [false, true]
    } else {
        [true, false]
    }
}

fn clear(paths: &[&Path]) -> Result<()> {
    for path in paths {
        let result = if path.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        match result {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("remove {}", path.display())),
        }
    }
    Ok(())
}

/// Writes back every dirty page (`sync`), so that one run's write-back does not land in the next
/// one's measurement.
fn settle() {
    match std::process::Command::new("sync").status() {
        Ok(status) if status.success() => {}
        other => eprintln!("warning: `sync` failed ({other:?}); runs may overlap write-back"),
    }
}

/// Writes and deletes a file a little larger than the next run's data, right before the run,
/// so that the page cache the run fills is memory the hypervisor backs at that moment. On a VM
/// with free page reporting (a virtio balloon), memory that has been free for about two seconds
/// is handed back to the host, and the first touch of it afterwards costs a fault on the host:
/// writes into such memory measured 0.5-0.8 GB/s here against 3-4 GB/s into memory freed a moment
/// earlier, whichever program wrote. Without this, a run's figure depended on how long before it
/// the previous run's files were deleted. (Touching anonymous memory does not help: the page
/// cache is not served from the pages it frees.)
fn warm_page_cache(dir: &Path, bytes: u64) -> Result<()> {
    let path = dir.join("warm.tmp");
    let chunk = vec![0x5au8; MIB];
    let mut file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let mut written = 0u64;
    while written < bytes + bytes / 8 {
        file.write_all(&chunk)?;
        written += chunk.len() as u64;
    }
    drop(file);
    // Deleted before write-back: its pages go back to the free lists without any disk I/O.
    std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Batches

/// Pre-encoded batches, all the same length, cycled through by the writers.
#[derive(Debug)]
struct Pool {
    batches: Vec<Bytes>,
    batch_len: usize,
    records_per_batch: usize,
}

impl Pool {
    /// Distinct batches of at most `target` bytes each, about `pool_bytes` in all.
    fn build(target: usize, pool_bytes: u64) -> Result<Self> {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut value = vec![0u8; VALUE_LEN];
        // The longest a record can encode to (offset delta varints grow with the count).
        let record_max = {
            let mut one = BatchBuilder::new(Compression::None);
            one.push(0, None, Some(&value), &[]);
            one.uncompressed_len() + 2
        };
        let count = (pool_bytes / target as u64).max(1);
        let mut batches = Vec::with_capacity(count as usize);
        let mut records_per_batch = 0;
        for n in 0..count {
            let mut builder = BatchBuilder::new(Compression::None);
            let timestamp = BASE_TIMESTAMP_MS + n as i64;
            while builder.record_count() == 0
                || HEADER_LEN + builder.uncompressed_len() + record_max <= target
            {
                rng.fill(&mut value);
                builder.push(timestamp, None, Some(&value), &[]);
            }
            records_per_batch = builder.record_count() as usize;
            batches.push(builder.build().context("empty batch")?);
        }
        let batch_len = batches.first().map_or(0, Bytes::len);
        ensure!(
            batches.iter().all(|b| b.len() == batch_len),
            "batches differ in length"
        );
        Ok(Self {
            batches,
            batch_len,
            records_per_batch,
        })
    }

    fn get(&self, i: usize) -> &Bytes {
        &self.batches[i % self.batches.len()]
    }
}

#[derive(Debug)]
struct XorShift(u64);

impl XorShift {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The measured work

fn open_log(dir: &Path, mode: Mode) -> Result<PartitionLog> {
    let durability = match mode {
        Mode::Never => Durability::Never,
        Mode::Always => Durability::Always,
    };
    let config = LogConfig {
        durability,
        ..LogConfig::default()
    };
    PartitionLog::open(dir, config).with_context(|| format!("open log in {}", dir.display()))
}

/// What the broker does with `count` received batches: check, then append (and wait for the
/// sync under `always`). Returns the time the appends took.
fn weir_append(
    dir: &Path,
    pool: &Pool,
    count: usize,
    mode: Mode,
    writers: usize,
) -> Result<Duration> {
    let log = open_log(dir, mode)?;
    let write = |i: usize| -> Result<()> {
        let batch = ValidBatch::new(pool.get(i).clone())?;
        match mode {
            Mode::Never => log.append(&batch, TERM)?,
            Mode::Always => log.append_durable(&batch, TERM)?,
        };
        Ok(())
    };
    let elapsed = if writers <= 1 {
        let start = Instant::now();
        for i in 0..count {
            write(i)?;
        }
        start.elapsed()
    } else {
        let barrier = Barrier::new(writers + 1);
        std::thread::scope(|scope| -> Result<Duration> {
            let handles: Vec<_> = (0..writers)
                .map(|w| {
                    let (barrier, write) = (&barrier, &write);
                    scope.spawn(move || -> Result<()> {
                        barrier.wait();
                        (w..count).step_by(writers).try_for_each(write)
                    })
                })
                .collect();
            barrier.wait();
            let start = Instant::now();
            for handle in handles {
                match handle.join() {
                    Ok(result) => result?,
                    Err(_) => bail!("writer thread panicked"),
                }
            }
            Ok(start.elapsed())
        })?
    };
    let bounds = log.bounds()?;
    ensure!(
        bounds.size_bytes == (count * pool.batch_len) as u64,
        "log holds {} bytes, expected {}",
        bounds.size_bytes,
        count * pool.batch_len
    );
    log.close()?;
    Ok(elapsed)
}

/// The same bytes in the same chunks to a new file, synced after every chunk if `sync`.
fn raw_write(path: &Path, pool: &Pool, count: usize, sync: bool) -> Result<Duration> {
    let mut file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let start = Instant::now();
    for i in 0..count {
        file.write_all(pool.get(i))?;
        if sync {
            file.sync_data()?;
        }
    }
    let elapsed = start.elapsed();
    drop(file);
    Ok(elapsed)
}

/// Reads the whole log sequentially, as a consumer catching up does.
fn weir_read(log: &PartitionLog, expected: u64) -> Result<Duration> {
    let start = Instant::now();
    let mut next = 0;
    let mut bytes = 0u64;
    loop {
        let read = log.read(next, READ_CHUNK)?;
        let Some(after) = read.next_offset() else {
            break;
        };
        bytes += read.data.len() as u64;
        next = after;
        black_box(&read);
    }
    let elapsed = start.elapsed();
    ensure!(bytes == expected, "read {bytes} bytes, expected {expected}");
    Ok(elapsed)
}

/// Reads the log's segment files sequentially with a `READ_CHUNK` buffer.
fn raw_read(dir: &Path, expected: u64) -> Result<Duration> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|p| p.extension().is_some_and(|ext| ext == "log"));
    files.sort();
    let mut buf = vec![0u8; READ_CHUNK];
    let start = Instant::now();
    let mut bytes = 0u64;
    for path in &files {
        let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
            black_box(&buf[..n]);
        }
    }
    let elapsed = start.elapsed();
    ensure!(
        bytes == expected,
        "read {bytes} raw bytes, expected {expected}"
    );
    Ok(elapsed)
}

// ---------------------------------------------------------------------------------------------
// Output

#[derive(Debug)]
struct Report<'a> {
    settings: &'a Settings,
    machine: &'a Machine,
    dir: &'a Path,
    results: &'a [CaseResult],
    elapsed: Duration,
}

impl Report<'_> {
    fn table(&self) -> String {
        let m = self.machine;
        let s = self.settings;
        let mut out = String::new();
        let _ = writeln!(out, "weir storage benchmark, {}", m.date);
        let _ = writeln!(
            out,
            "machine: {} CPUs, {}, {}, {}, load average at start {}",
            m.cpus, m.cpu_model, m.memory, m.kernel, m.load
        );
        let _ = writeln!(
            out,
            "bench dir: {} on {} ({}, mounted at {})",
            self.dir.display(),
            m.fs_device,
            m.fs_type,
            m.fs_mount
        );
        let _ = writeln!(out, "command: {}", s.command);
        let _ = writeln!(
            out,
            "1 KiB records; {} per never/read case, {} per always case, from a pool of {} of batches; {} reps after a warm-up; MB/s: median; ratio: median of per-rep ratios; MB = 10^6 bytes; took {:.0} s",
            human_bytes(s.bytes),
            human_bytes(s.sync_bytes),
            human_bytes(s.pool_bytes),
            s.reps,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<22} {:>20} {:>9} {:>9} {:>21} {:>6} {:>7} {:>6}",
            "case", "batch", "total", "MB/s", "raw MB/s", "ratio", "target", "result"
        );
        for r in self.results {
            let target = r
                .target
                .map_or_else(|| "-".to_string(), |t| format!(">={t:.2}"));
            let batch = format!("{} B, {} rec", r.batch_len, r.records_per_batch);
            let raw = format!("{:.0} ({})", r.raw_mbps(), short_raw(r.raw_label));
            let _ = writeln!(
                out,
                "{:<22} {:>20} {:>9} {:>9.0} {:>21} {:>6.2} {:>7} {:>6}",
                r.id,
                batch,
                human_bytes(r.total_bytes),
                r.weir_mbps(),
                raw,
                r.ratio(),
                target,
                r.verdict()
            );
        }
        out
    }

    fn json(&self) -> String {
        let m = self.machine;
        let s = self.settings;
        let mut out = String::from("{");
        let _ = write!(
            out,
            "\"date\":{},\"command\":{},\"bytes\":{},\"sync_bytes\":{},\"pool_bytes\":{},\"reps\":{},\"statistic\":\"median MB/s; ratio = median of per-repetition ratios; one discarded warm-up\",\"elapsed_s\":{:.1},",
            json_str(&m.date),
            json_str(&s.command),
            s.bytes,
            s.sync_bytes,
            s.pool_bytes,
            s.reps,
            self.elapsed.as_secs_f64()
        );
        let _ = write!(
            out,
            "\"machine\":{{\"cpus\":{},\"cpu_model\":{},\"memory\":{},\"kernel\":{},\"load_at_start\":{},\"bench_dir\":{},\"fs_type\":{},\"fs_device\":{},\"fs_mount\":{}}},",
            m.cpus,
            json_str(&m.cpu_model),
            json_str(&m.memory),
            json_str(&m.kernel),
            json_str(&m.load),
            json_str(&self.dir.display().to_string()),
            json_str(&m.fs_type),
            json_str(&m.fs_device),
            json_str(&m.fs_mount)
        );
        out.push_str("\"cases\":[");
        for (i, r) in self.results.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"id\":{},\"title\":{},\"durability\":{},\"writers\":{},\"batch_bytes\":{},\"records_per_batch\":{},\"total_bytes\":{},\"mb_per_s\":{:.1},\"raw\":{},\"raw_mb_per_s\":{:.1},\"ratio\":{:.3},\"target\":{},\"result\":{},\"reps_mb_per_s\":{},\"raw_reps_mb_per_s\":{}}}",
                json_str(&r.id),
                json_str(&r.title),
                r.durability.map_or_else(|| "null".to_string(), json_str),
                r.writers,
                r.batch_len,
                r.records_per_batch,
                r.total_bytes,
                r.weir_mbps(),
                json_str(r.raw_label),
                r.raw_mbps(),
                r.ratio(),
                r.target
                    .map_or_else(|| "null".to_string(), |t| format!("{t:.2}")),
                json_str(r.verdict()),
                json_list(&r.weir),
                json_list(&r.raw)
            );
        }
        out.push_str("]}");
        out
    }
}

fn short_raw(label: &str) -> &str {
    match label {
        "raw write+fdatasync" => "write+sync",
        "raw write" => "write",
        "raw read" => "read",
        other => other,
    }
}

fn human_bytes(bytes: u64) -> String {
    let bytes_f = bytes as f64;
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes_f / (1u64 << 30) as f64)
    } else if bytes >= 1 << 20 {
        format!("{:.0} MiB", bytes_f / (1u64 << 20) as f64)
    } else {
        format!("{:.0} KiB", bytes_f / 1024.0)
    }
}

fn json_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_list(values: &[f64]) -> String {
    let items: Vec<String> = values.iter().map(|v| format!("{v:.1}")).collect();
    format!("[{}]", items.join(","))
}
