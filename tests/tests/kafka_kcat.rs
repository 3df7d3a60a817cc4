//! kcat (librdkafka inside) against the Kafka listeners of a 3-node process cluster: metadata,
//! producing from a file with keys and repeated headers, consuming from the beginning, from an
//! offset and from a time — and what kcat reads is what `weir consume` prints, record for
//! record (partition, offset, timestamp, key, value, headers in order), and the other way round.
//!
//! kcat comes from Debian (`.ci/run` installs it); without it these tests fail, naming it.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::Value;
use weir_tests::cli::weir;
use weir_tests::eventually_blocking;
use weir_tests::process_cluster::ProcessCluster;

const WAIT: Duration = Duration::from_secs(60);

/// Runs kcat with `args` (and `stdin`); its stdout, or an error with its stderr.
fn kcat(args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut child = Command::new("kcat")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kcat (Debian package kcat; .ci/run installs it)")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        std::io::Write::write_all(&mut pipe, text.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "kcat {args:?} exited with {}: {}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        stdout
    );
    Ok(stdout)
}

/// One record as both tools print it: (partition, offset, timestamp, key, value, headers).
type Seen = (
    u64,
    u64,
    i64,
    Option<String>,
    Option<String>,
    Vec<(String, Option<String>)>,
);

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// `kcat -J` lines: {"partition","offset","ts","key","payload","headers":[k,v,k,v...]}.
fn from_kcat(out: &str) -> anyhow::Result<Vec<Seen>> {
    let mut seen = Vec::new();
    for line in out.lines().filter(|l| l.starts_with('{')) {
        let v: Value = serde_json::from_str(line).with_context(|| format!("kcat line {line}"))?;
        let headers = v["headers"]
            .as_array()
            .map(|h| {
                h.chunks(2)
                    .map(|kv| {
                        (
                            kv[0].as_str().unwrap_or("").to_string(),
                            kv.get(1).and_then(text),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        seen.push((
            v["partition"].as_u64().context("partition")?,
            v["offset"].as_u64().context("offset")?,
            v["ts"].as_i64().context("ts")?,
            text(&v["key"]),
            text(&v["payload"]),
            headers,
        ));
    }
    seen.sort();
    Ok(seen)
}

/// `weir consume --output json` lines.
fn from_weir(out: &str) -> anyhow::Result<Vec<Seen>> {
    let mut seen = Vec::new();
    for line in out.lines().filter(|l| l.starts_with('{')) {
        let v: Value = serde_json::from_str(line).with_context(|| format!("weir line {line}"))?;
        let headers = v["headers"]
            .as_array()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h["key"].as_str().unwrap_or("").to_string(),
                            text(&h["value"]),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        seen.push((
            v["partition"].as_u64().context("partition")?,
            v["offset"].as_u64().context("offset")?,
            v["timestamp"].as_i64().context("timestamp")?,
            text(&v["key"]),
            text(&v["value"]),
            headers,
        ));
    }
    seen.sort();
    Ok(seen)
}

/// A cluster with Kafka listeners, once every node's listener is in the Kafka metadata.
fn cluster() -> anyhow::Result<(ProcessCluster, String)> {
    let cluster = ProcessCluster::start_kafka(3)?;
    let bootstrap = cluster.kafka_bootstrap()?;
    eventually_blocking(WAIT, "kcat -L to list 3 brokers", || {
        let out = kcat(&["-b", &bootstrap, "-L", "-m", "5"], None)?;
        ensure!(out.contains(" 3 brokers:"), "{out}");
        Ok(())
    })?;
    Ok((cluster, bootstrap))
}

fn weir_ok(cluster: &ProcessCluster, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let brokers = cluster.brokers().join(",");
    let run = weir(
        cluster.binary(),
        &[args, &["--brokers", &brokers]].concat(),
        stdin,
    )?;
    ensure!(run.code == Some(0), "weir {args:?}: {}", run.stderr);
    Ok(run.stdout)
}

#[test]
fn kcat_sees_the_cluster_and_what_it_writes_reads_back_identically_through_weir()
-> anyhow::Result<()> {
    let (cluster, bootstrap) = cluster()?;
    weir_ok(
        &cluster,
        &["topic", "create", "events", "-p", "3", "-r", "3"],
        None,
    )?;
    let listing = eventually_blocking(WAIT, "kcat -L to show the topic", || {
        let out = kcat(&["-b", &bootstrap, "-L", "-t", "events"], None)?;
        ensure!(out.contains("topic \"events\" with 3 partitions"), "{out}");
        Ok(out)
    })?;
    for id in 1..=3 {
        let addr = cluster.kafka_addr(id)?;
        ensure!(
            listing.contains(&format!("broker {id} at {addr}")),
            "broker {id} at {addr} missing: {listing}"
        );
    }

    // A file of key:value lines, every record with the same two headers (one key twice).
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("in.txt");
    let lines: Vec<String> = (0..30)
        .map(|i| format!("key-{}:value {i}", i % 7))
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n")?;
    let file = file.display().to_string();
    kcat(
        &[
            "-b", &bootstrap, "-P", "-t", "events", "-K:", "-l", "-H", "h=1", "-H", "h=2", &file,
        ],
        None,
    )?;
    // One more without a key, to partition 1, and one with an empty value.
    kcat(
        &["-b", &bootstrap, "-P", "-t", "events", "-p", "1"],
        Some("no key"),
    )?;

    let by_kcat = from_kcat(&kcat(
        &[
            "-b",
            &bootstrap,
            "-C",
            "-t",
            "events",
            "-o",
            "beginning",
            "-e",
            "-J",
        ],
        None,
    )?)?;
    let by_weir = from_weir(&weir_ok(
        &cluster,
        &[
            "consume", "events", "--from", "earliest", "--count", "31", "--output", "json",
        ],
        None,
    )?)?;
    ensure!(
        by_kcat.len() == 31,
        "kcat read {} records: {by_kcat:?}",
        by_kcat.len()
    );
    ensure!(
        by_kcat == by_weir,
        "kcat read {by_kcat:?}\nweir read {by_weir:?}"
    );
    for i in 0..30 {
        let key = format!("key-{}", i % 7);
        let value = format!("value {i}");
        ensure!(
            by_kcat.iter().any(|r| r.3.as_deref() == Some(key.as_str())
                && r.4.as_deref() == Some(value.as_str())
                && r.5
                    == [
                        ("h".to_string(), Some("1".to_string())),
                        ("h".to_string(), Some("2".to_string()))
                    ]),
            "{key}:{value} with both headers missing from {by_kcat:?}"
        );
    }
    // Each key's records sit in one partition, in the order written.
    for k in 0..7 {
        let key = format!("key-{k}");
        let of_key: Vec<&Seen> = by_kcat
            .iter()
            .filter(|r| r.3.as_deref() == Some(&key))
            .collect();
        ensure!(
            of_key.windows(2).all(|w| w[0].0 == w[1].0),
            "{key} spread: {of_key:?}"
        );
        let values: Vec<u32> = of_key
            .iter()
            .filter_map(|r| r.4.as_deref()?.strip_prefix("value ")?.parse().ok())
            .collect();
        ensure!(
            values.windows(2).all(|w| w[0] < w[1]),
            "{key} out of order: {values:?}"
        );
    }

    // Records written through weir read back identically through kcat, at the same offsets.
    weir_ok(
        &cluster,
        &[
            "produce",
            "events",
            "--partition",
            "2",
            "--separator",
            ":",
            "--header",
            "src=cli",
        ],
        Some("k:from weir\n"),
    )?;
    let all_kcat = from_kcat(&kcat(
        &[
            "-b",
            &bootstrap,
            "-C",
            "-t",
            "events",
            "-o",
            "beginning",
            "-e",
            "-J",
        ],
        None,
    )?)?;
    let all_weir = from_weir(&weir_ok(
        &cluster,
        &[
            "consume", "events", "--from", "earliest", "--count", "32", "--output", "json",
        ],
        None,
    )?)?;
    ensure!(all_kcat == all_weir, "kcat {all_kcat:?}\nweir {all_weir:?}");
    ensure!(
        all_kcat.iter().any(|r| r.3.as_deref() == Some("k")
            && r.4.as_deref() == Some("from weir")
            && r.5 == [("src".to_string(), Some("cli".to_string()))]),
        "{all_kcat:?}"
    );
    Ok(())
}

#[test]
fn kcat_consumes_from_an_offset_and_from_a_time() -> anyhow::Result<()> {
    let (cluster, bootstrap) = cluster()?;
    weir_ok(
        &cluster,
        &["topic", "create", "replay", "-p", "1", "-r", "3"],
        None,
    )?;
    let old: String = (0..5).map(|i| format!("old {i}\n")).collect();
    kcat(
        &[
            "-b",
            &bootstrap,
            "-P",
            "-t",
            "replay",
            "-p",
            "0",
            "-l",
            "/dev/stdin",
        ],
        Some(&old),
    )?;
    // Everything after this instant is new (the clock moves on before the next write).
    std::thread::sleep(Duration::from_millis(20));
    let cut = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    std::thread::sleep(Duration::from_millis(20));
    let new: String = (0..3).map(|i| format!("new {i}\n")).collect();
    kcat(
        &[
            "-b",
            &bootstrap,
            "-P",
            "-t",
            "replay",
            "-p",
            "0",
            "-l",
            "/dev/stdin",
        ],
        Some(&new),
    )?;

    let from_offset = kcat(
        &[
            "-b", &bootstrap, "-C", "-t", "replay", "-p", "0", "-o", "3", "-e", "-f", "%o %s\n",
        ],
        None,
    )?;
    ensure!(
        from_offset.lines().collect::<Vec<_>>()
            == ["3 old 3", "4 old 4", "5 new 0", "6 new 1", "7 new 2"],
        "{from_offset}"
    );
    let from_time = kcat(
        &[
            "-b",
            &bootstrap,
            "-C",
            "-t",
            "replay",
            "-p",
            "0",
            "-o",
            &format!("s@{cut}"),
            "-e",
            "-f",
            "%o %s\n",
        ],
        None,
    )?;
    ensure!(
        from_time.lines().collect::<Vec<_>>() == ["5 new 0", "6 new 1", "7 new 2"],
        "{from_time}"
    );
    // The same replay through weir (milliseconds since the epoch).
    let weir_time = weir_ok(
        &cluster,
        &[
            "consume",
            "replay",
            "--from",
            &format!("@{cut}"),
            "--count",
            "3",
        ],
        None,
    )?;
    ensure!(
        weir_time.lines().collect::<Vec<_>>() == ["new 0", "new 1", "new 2"],
        "{weir_time}"
    );
    // The last offset (-o -2: two before the end).
    let tail = kcat(
        &[
            "-b", &bootstrap, "-C", "-t", "replay", "-p", "0", "-o", "-2", "-e", "-f", "%o\n",
        ],
        None,
    )?;
    ensure!(tail.lines().collect::<Vec<_>>() == ["6", "7"], "{tail}");
    Ok(())
}
