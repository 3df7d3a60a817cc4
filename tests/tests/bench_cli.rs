//! `weir bench` against a 3-node process cluster: a short timed run, a backlog drain and a small
//! replay report real outcomes in their JSON (everything acknowledged was consumed, no errors,
//! ordered percentiles, exactly the bytes written read back) and leave no topic behind, and bad
//! options fail with the option named. Nothing here asserts on speed. Each test starts its own
//! cluster and checks one behaviour.

use std::path::Path;

use anyhow::{Context, ensure};
use serde_json::Value;
use weir_tests::cli::Run;
use weir_tests::process_cluster::{ProcessCluster, weir_binary};

fn weir(binary: &Path, args: &[&str]) -> anyhow::Result<Run> {
    weir_tests::cli::weir(binary, args, None)
}

/// Runs `weir bench ARGS --json` and parses its standard output (which must be one JSON object).
fn bench_json(binary: &Path, brokers: &str, args: &[&str]) -> anyhow::Result<Value> {
    let run = weir(
        binary,
        &[&["bench", "--brokers", brokers, "--json"], args].concat(),
    )?;
    ensure!(
        run.code == Some(0),
        "weir bench {args:?} exited with {:?}: {}",
        run.code,
        run.stderr
    );
    serde_json::from_str(&run.stdout)
        .with_context(|| format!("stdout is not one JSON object: {:?}", run.stdout))
}

fn u64_at(report: &Value, pointer: &str) -> anyhow::Result<u64> {
    report
        .pointer(pointer)
        .and_then(Value::as_u64)
        .with_context(|| format!("{pointer} missing or not a count in {report}"))
}

fn f64_at(report: &Value, pointer: &str) -> anyhow::Result<f64> {
    report
        .pointer(pointer)
        .and_then(Value::as_f64)
        .with_context(|| format!("{pointer} missing or not a number in {report}"))
}

/// p50 ≤ p90 ≤ p99 ≤ p99.9 ≤ max, all positive, over `count` > 0 samples.
fn check_latency(report: &Value, pointer: &str) -> anyhow::Result<()> {
    ensure!(
        u64_at(report, &format!("{pointer}/count"))? > 0,
        "{pointer}: no samples"
    );
    let values: Vec<f64> = ["p50", "p90", "p99", "p99_9", "max"]
        .iter()
        .map(|p| f64_at(report, &format!("{pointer}/{p}")))
        .collect::<anyhow::Result<_>>()?;
    ensure!(values[0] > 0.0, "{pointer}: p50 {} ms", values[0]);
    ensure!(
        values.windows(2).all(|w| w[0] <= w[1]),
        "{pointer}: percentiles not ordered: {values:?}"
    );
    Ok(())
}

/// Every bench topic was deleted at the end of the runs.
fn ensure_no_bench_topics(binary: &Path, brokers: &str) -> anyhow::Result<()> {
    let topics = weir(
        binary,
        &["topic", "list", "--brokers", brokers, "--output", "json"],
    )?;
    ensure!(topics.code == Some(0), "{}", topics.stderr);
    ensure!(
        !topics.stdout.contains("weir-bench"),
        "bench topics left behind: {}",
        topics.stdout
    );
    Ok(())
}

/// A 3-node cluster, the `weir` binary and the cluster's addresses (for `--brokers`).
fn cluster() -> anyhow::Result<(ProcessCluster, std::path::PathBuf, String)> {
    let cluster = ProcessCluster::start(3)?;
    let binary = cluster.binary().to_path_buf();
    let brokers = cluster.brokers().join(",");
    Ok((cluster, binary, brokers))
}

/// Bad options fail before touching any cluster, naming the option.
#[test]
fn bad_bench_options_fail_before_touching_a_cluster_naming_the_option() -> anyhow::Result<()> {
    let binary = weir_binary()?;
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["bench", "--message-size", "4"], "--message-size"),
        (vec!["bench", "--acks", "sometimes"], "--acks"),
        (vec!["bench", "--duration", "soon"], "--duration"),
        (vec!["bench", "--batch-size", "1T"], "--batch-size"),
        (
            vec!["bench", "--backlog", "1M", "--consumers", "0"],
            "--backlog",
        ),
        (
            vec!["bench", "--replay-bytes", "1M", "--rate", "10"],
            "--rate",
        ),
        (vec!["bench", "--duration", "0"], "--duration"),
    ];
    for (args, mentions) in cases {
        let run = weir(&binary, &args)?;
        ensure!(
            run.code.is_some_and(|c| c != 0),
            "{args:?} exited with {:?}",
            run.code
        );
        ensure!(
            run.stderr.contains(mentions),
            "{args:?}: stderr {:?} should name {mentions}",
            run.stderr
        );
        ensure!(run.stdout.is_empty(), "{args:?}: stdout {:?}", run.stdout);
    }
    Ok(())
}

/// More replicas than brokers: refused with the option named.
#[test]
fn bench_refuses_more_replicas_than_brokers() -> anyhow::Result<()> {
    let (_cluster, binary, brokers) = cluster()?;
    let run = weir(
        &binary,
        &["bench", "--brokers", &brokers, "--replication-factor", "5"],
    )?;
    ensure!(
        run.code == Some(1) && run.stderr.contains("--replication-factor"),
        "{:?}: {}",
        run.code,
        run.stderr
    );
    Ok(())
}

/// A short timed run with a backlog after it: no errors, everything acknowledged consumed,
/// ordered latencies, the backlog written and drained in full.
#[test]
fn a_timed_bench_with_a_backlog_reports_what_it_measured() -> anyhow::Result<()> {
    let (_cluster, binary, brokers) = cluster()?;
    let report = bench_json(
        &binary,
        &brokers,
        &[
            "--duration",
            "3",
            "--warmup",
            "1",
            "--partitions",
            "3",
            "--consumers",
            "2",
            "--backlog",
            "2M",
            "--settle",
            "0.2",
        ],
    )?;
    ensure!(report["mode"] == "workload", "{report}");
    ensure!(report["replay"].is_null(), "{report}");
    ensure!(
        u64_at(&report, "/config/replication_factor")? == 3
            && u64_at(&report, "/config/partitions")? == 3
            && u64_at(&report, "/config/message_size")? == 1024
            && report["config"]["acks"] == "all",
        "{report}"
    );
    ensure!(u64_at(&report, "/errors/total")? == 0, "{report}");
    let published = u64_at(&report, "/totals/published")?;
    ensure!(published > 0, "{report}");
    ensure!(
        u64_at(&report, "/totals/sent")? == published
            && u64_at(&report, "/totals/publish_failed")? == 0,
        "{report}"
    );
    ensure!(
        u64_at(&report, "/totals/consumed")? == published && report["totals"]["drained"] == true,
        "everything acknowledged is consumed: {report}"
    );
    let in_window = u64_at(&report, "/publish/messages")?;
    ensure!(in_window > 0 && in_window <= published, "{report}");
    ensure!(
        u64_at(&report, "/publish/bytes")? == in_window * 1024,
        "{report}"
    );
    ensure!(f64_at(&report, "/publish/msgs_per_s")? > 0.0, "{report}");
    ensure!(f64_at(&report, "/publish/mb_per_s")? > 0.0, "{report}");
    ensure!(u64_at(&report, "/consume/messages")? > 0, "{report}");
    ensure!(f64_at(&report, "/consume/mb_per_s")? > 0.0, "{report}");
    check_latency(&report, "/publish/latency_ms")?;
    check_latency(&report, "/consume/e2e_latency_ms")?;
    // The backlog: 2 MiB written, all of it drained.
    ensure!(report["backlog"]["drained"] == true, "{report}");
    ensure!(
        u64_at(&report, "/backlog/write/bytes")? == 2 << 20
            && u64_at(&report, "/backlog/drain/bytes")? == 2 << 20
            && u64_at(&report, "/backlog/drain/messages")? == 2048,
        "{report}"
    );
    ensure!(
        f64_at(&report, "/backlog/drain/mb_per_s")? > 0.0,
        "{report}"
    );
    ensure_no_bench_topics(&binary, &brokers)
}

/// A fixed rate, consumers in a group, lz4: everything published is consumed.
#[test]
fn a_fixed_rate_group_bench_with_lz4_consumes_everything_published() -> anyhow::Result<()> {
    let (_cluster, binary, brokers) = cluster()?;
    let report = bench_json(
        &binary,
        &brokers,
        &[
            "--duration",
            "2",
            "--warmup",
            "1",
            "--rate",
            "500",
            "--group",
            "--consumers",
            "2",
            "--compression",
            "lz4",
            "--message-size",
            "100",
        ],
    )?;
    ensure!(report["config"]["consumer_mode"] == "group", "{report}");
    ensure!(u64_at(&report, "/errors/total")? == 0, "{report}");
    let published = u64_at(&report, "/totals/published")?;
    ensure!(published > 0, "{report}");
    ensure!(
        u64_at(&report, "/totals/consumed")? == published,
        "{report}"
    );
    check_latency(&report, "/publish/latency_ms")?;
    ensure_no_bench_topics(&binary, &brokers)
}

/// Replay: exactly the bytes written come back, the last record shorter; the same with the
/// plain fetch loop as the reader.
#[test]
fn a_replay_bench_reads_back_exactly_the_bytes_written() -> anyhow::Result<()> {
    let (_cluster, binary, brokers) = cluster()?;
    let bytes: u64 = (8 << 20) + 100;
    let report = bench_json(
        &binary,
        &brokers,
        &["--replay-bytes", &bytes.to_string(), "--settle", "0.2"],
    )?;
    ensure!(report["mode"] == "replay", "{report}");
    ensure!(
        report["publish"].is_null() && report["totals"].is_null(),
        "{report}"
    );
    ensure!(u64_at(&report, "/errors/total")? == 0, "{report}");
    ensure!(report["replay"]["verified"] == true, "{report}");
    ensure!(
        u64_at(&report, "/replay/write/bytes")? == bytes
            && u64_at(&report, "/replay/read/bytes")? == bytes
            && u64_at(&report, "/replay/read/messages")? == 8193
            && u64_at(&report, "/replay/high_watermark")? == 8193,
        "{report}"
    );
    ensure!(f64_at(&report, "/replay/read/mb_per_s")? > 0.0, "{report}");

    let report = bench_json(
        &binary,
        &brokers,
        &[
            "--replay-bytes",
            "1M",
            "--replay-reader",
            "fetch",
            "--settle",
            "0",
        ],
    )?;
    ensure!(
        report["replay"]["verified"] == true && u64_at(&report, "/replay/read/bytes")? == 1 << 20,
        "{report}"
    );
    ensure_no_bench_topics(&binary, &brokers)
}
