//! The `weir` command as a user runs it: `weir local` starts a 3-node cluster, topics are created,
//! lines produced and consumed, the cluster stops on SIGTERM and restarts on its data with nothing
//! lost; bad command lines and configurations fail with a message naming the problem. Against a
//! process cluster: keys, headers and JSON output, topic settings, consumer groups (resuming,
//! lag, reset, --follow), and cluster status with a node down.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use weir_client::partition_for_key;
use weir_tests::process_cluster::{ProcessCluster, weir_binary};
use weir_tests::{eventually_blocking, wait_for_exit};

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn weir(binary: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Run> {
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
    }
    drop(child.stdin.take());
    let output = child.wait_with_output()?;
    Ok(Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

#[test]
fn bad_server_settings_fail_with_the_setting_named() -> anyhow::Result<()> {
    let binary = weir_binary()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let data = data.to_str().context("path")?;
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["server", "--id", "0", "--data-dir", data], "id"),
        (
            vec!["server", "--addr", "nowhere", "--data-dir", data],
            "addr",
        ),
        (
            vec![
                "server",
                "--peers",
                "1@127.0.0.1:9092,2@127.0.0.1:9093",
                "--data-dir",
                data,
            ],
            "use 1, 3 or 5",
        ),
        (
            vec!["server", "--durability", "sometimes", "--data-dir", data],
            "always, never or interval:MS",
        ),
        (
            vec!["server", "--config", "/nonexistent/weir.toml"],
            "/nonexistent/weir.toml",
        ),
        (
            vec![
                "server",
                "--external-advertised-addr",
                "127.0.0.1:19092",
                "--data-dir",
                data,
            ],
            "external_advertised_addr",
        ),
        (
            vec![
                "server",
                "--external-addr",
                "0.0.0.0:19092",
                "--data-dir",
                data,
            ],
            "external_advertised_addr",
        ),
        (
            vec![
                "server",
                "--id",
                "2",
                "--id-from-hostname",
                "--data-dir",
                data,
            ],
            "cannot be used with",
        ),
        (
            vec![
                "server",
                "--ready-file",
                "/nonexistent/weir.ready",
                "--data-dir",
                data,
            ],
            "--ready-file /nonexistent/weir.ready: not a file in an existing directory",
        ),
        (
            vec!["server", "--ready-file", "", "--data-dir", data],
            "--ready-file",
        ),
    ];
    for (args, mentions) in cases {
        let run = weir(&binary, &args, None)?;
        ensure!(run.code != Some(0), "{args:?} succeeded");
        ensure!(
            run.stderr.contains(mentions),
            "{args:?}: stderr {:?} should mention {mentions:?}",
            run.stderr
        );
    }
    // --id-from-hostname on a host name without an ordinal.
    let unnamed = Command::new(&binary)
        .args(["server", "--id-from-hostname", "--data-dir", data])
        .env("HOSTNAME", "broker")
        .output()?;
    let stderr = String::from_utf8_lossy(&unnamed.stderr);
    ensure!(
        unnamed.status.code() == Some(1) && stderr.contains("\"broker\" does not end in -ORDINAL"),
        "{stderr}"
    );
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "id = 1\nbogus_setting = true\n")?;
    let run = weir(
        &binary,
        &["server", "--config", config.to_str().context("path")?],
        None,
    )?;
    ensure!(
        run.code == Some(1) && run.stderr.contains("bogus_setting"),
        "{}",
        run.stderr
    );
    Ok(())
}

/// `weir server --addr 127.0.0.1:0 --ready-file F`: the node binds ephemeral ports and reports
/// them, once it listens, in F, which scripts (and the process cluster of the tests) read.
#[test]
fn a_server_on_port_0_reports_the_addresses_it_bound_in_its_ready_file() -> anyhow::Result<()> {
    let binary = weir_binary()?;
    let dir = tempfile::tempdir()?;
    let ready = dir.path().join("node.ready");
    let mut server = Command::new(&binary)
        .args([
            "server",
            "--addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--ready-file")
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let checked = (|| -> anyhow::Result<()> {
        let text = eventually_blocking(Duration::from_secs(30), "the ready file", || {
            Ok(std::fs::read_to_string(&ready)?)
        })?;
        let field = |key: &str| -> anyhow::Result<std::net::SocketAddr> {
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .with_context(|| format!("no {key}= in {text:?}"))?;
            Ok(value.parse()?)
        };
        let addr = field("addr")?;
        let metrics = field("metrics_addr")?;
        ensure!(
            addr.ip().is_loopback() && addr.port() != 0 && metrics.port() != 0,
            "{text}"
        );
        ensure!(addr != metrics, "{text}");
        ensure!(
            !text.contains("external_addr"),
            "no external listener: {text}"
        );
        // The node serves on the address it reported.
        eventually_blocking(Duration::from_secs(30), "the node SERVING", || {
            let health = weir(&binary, &["health", "--addr", &addr.to_string()], None)?;
            ensure!(
                health.code == Some(0),
                "{} {}",
                health.stdout,
                health.stderr
            );
            Ok(())
        })?;
        std::net::TcpStream::connect(metrics).context("the metrics listener")?;
        Ok(())
    })();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(server.id())?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = wait_for_exit(&mut server, Duration::from_secs(30), "weir server to stop")?;
    checked?;
    ensure!(status.success(), "weir server exited with {status}");
    Ok(())
}

#[test]
fn local_cluster_produce_consume_stop_and_restart() -> anyhow::Result<()> {
    let binary = weir_binary()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("cluster");
    // `weir local` puts node I on BASE+I-1, and is started twice on the same ports: they are
    // held for it (see PortReservation) for the whole test.
    let ports = weir_tests::ports::consecutive(3)?;
    let base = ports[0].port();
    let brokers = (0..3)
        .map(|i| format!("127.0.0.1:{}", base + i))
        .collect::<Vec<_>>()
        .join(",");
    let start_local = || -> anyhow::Result<std::process::Child> {
        Ok(Command::new(&binary)
            .args([
                "local",
                "--nodes",
                "3",
                "--base-port",
                &base.to_string(),
                "--data-dir",
            ])
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    };
    let stop_local = |mut child: std::process::Child| -> anyhow::Result<String> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        wait_for_exit(
            &mut child,
            Duration::from_secs(30),
            "weir local to stop on SIGTERM",
        )?;
        let output = child.wait_with_output()?;
        ensure!(
            output.status.success(),
            "weir local exited with {}",
            output.status
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };

    let local = start_local()?;
    let b = ["--brokers", brokers.as_str()];
    let create = weir(
        &binary,
        &[
            &[
                "topic",
                "create",
                "demo",
                "--partitions",
                "3",
                "--replication-factor",
                "3",
            ][..],
            &b,
        ]
        .concat(),
        None,
    )?;
    ensure!(create.code == Some(0), "topic create: {}", create.stderr);
    ensure!(
        create
            .stdout
            .contains("created topic demo with 3 partitions"),
        "{}",
        create.stdout
    );
    let lines: Vec<String> = (1..=300).map(|i| format!("line {i}")).collect();
    let produce = weir(
        &binary,
        &[&["produce", "demo", "--partition", "1"][..], &b].concat(),
        Some(&(lines.join("\n") + "\n")),
    )?;
    ensure!(produce.code == Some(0), "produce: {}", produce.stderr);
    ensure!(
        produce.stderr.contains("300 records acknowledged"),
        "{}",
        produce.stderr
    );
    let consume = weir(
        &binary,
        &[
            &[
                "consume",
                "demo",
                "--partition",
                "1",
                "--from",
                "earliest",
                "--count",
                "300",
            ][..],
            &b,
        ]
        .concat(),
        None,
    )?;
    ensure!(consume.code == Some(0), "consume: {}", consume.stderr);
    ensure!(
        consume.stdout.lines().collect::<Vec<_>>() == lines,
        "consumed lines differ"
    );
    let from_offset = weir(
        &binary,
        &[
            &["consume", "demo", "--partition", "1", "--from", "295"][..],
            &b,
        ]
        .concat(),
        None,
    )?;
    ensure!(
        from_offset.stdout.lines().collect::<Vec<_>>() == lines[295..],
        "replay from offset 295: {}",
        from_offset.stdout
    );

    // Replay from a time: only what was produced after it. Timestamps are milliseconds: the
    // pauses put the cut strictly between the records before it and those after.
    std::thread::sleep(Duration::from_millis(20));
    let cut = std::time::SystemTime::now();
    std::thread::sleep(Duration::from_millis(20));
    let late: Vec<String> = (1..=5).map(|i| format!("late {i}")).collect();
    let produce_late = weir(
        &binary,
        &[&["produce", "demo", "--partition", "1"][..], &b].concat(),
        Some(&(late.join("\n") + "\n")),
    )?;
    ensure!(
        produce_late.code == Some(0),
        "produce: {}",
        produce_late.stderr
    );
    let at = format!("@{}", humantime::format_rfc3339_millis(cut));
    let from_time = weir(
        &binary,
        &[
            &["consume", "demo", "--partition", "1", "--from", at.as_str()][..],
            &b,
        ]
        .concat(),
        None,
    )?;
    ensure!(
        from_time.code == Some(0),
        "consume --from {at}: {}",
        from_time.stderr
    );
    ensure!(
        from_time.stdout.lines().collect::<Vec<_>>() == late,
        "replay from {at}: {}",
        from_time.stdout
    );

    // Mistakes a user makes get a message and a non-zero exit.
    let unknown = weir(
        &binary,
        &[&["produce", "nope"][..], &b].concat(),
        Some("x\n"),
    )?;
    ensure!(
        unknown.code == Some(1) && unknown.stderr.contains("unknown topic"),
        "{}",
        unknown.stderr
    );
    let bad_from = weir(
        &binary,
        &[&["consume", "demo", "--from", "yesterday"][..], &b].concat(),
        None,
    )?;
    ensure!(
        bad_from.code == Some(1) && bad_from.stderr.contains("--from"),
        "{}",
        bad_from.stderr
    );
    let bad_partition = weir(
        &binary,
        &[&["produce", "demo", "--partition", "9"][..], &b].concat(),
        Some("x\n"),
    )?;
    ensure!(
        bad_partition.code == Some(1) && bad_partition.stderr.contains("--partition 9"),
        "{}",
        bad_partition.stderr
    );
    let listing = weir(&binary, &[&["topic", "list"][..], &b].concat(), None)?;
    ensure!(
        listing
            .stdout
            .lines()
            .filter(|l| l.starts_with("demo"))
            .count()
            == 3,
        "{}",
        listing.stdout
    );

    // Listings as JSON, for scripts.
    let json = |args: &[&str]| -> anyhow::Result<serde_json::Value> {
        let run = weir(&binary, &[args, &["--output", "json"], &b].concat(), None)?;
        ensure!(run.code == Some(0), "{args:?}: {}", run.stderr);
        Ok(serde_json::from_str(&run.stdout)?)
    };
    let topics = json(&["topic", "list"])?;
    ensure!(topics["topics"][0]["name"] == "demo", "{topics}");
    ensure!(
        topics["topics"][0]["partitions"].as_array().map(Vec::len) == Some(3),
        "{topics}"
    );
    let described = json(&["topic", "describe", "demo"])?;
    ensure!(
        described["partitions"][1]["high_watermark"] == 305,
        "{described}"
    );
    ensure!(
        described["partitions"][1]["log_start_offset"] == 0,
        "{described}"
    );
    ensure!(described["replication_factor"] == 3, "{described}");
    let status = json(&["cluster", "status"])?;
    let brokers = status["brokers"].as_array().cloned().unwrap_or_default();
    ensure!(
        brokers.len() == 3 && brokers.iter().all(|b| b["alive"] == true),
        "{status}"
    );
    let table = weir(
        &binary,
        &[&["topic", "describe", "demo"][..], &b].concat(),
        None,
    )?;
    ensure!(
        table.stdout.contains("HIGH WATERMARK") && table.stdout.contains("305"),
        "{}",
        table.stdout
    );
    let missing = weir(
        &binary,
        &[&["topic", "describe", "nope"][..], &b].concat(),
        None,
    )?;
    ensure!(
        missing.code == Some(1) && missing.stderr.contains("unknown topic"),
        "{}",
        missing.stderr
    );

    // Every node reports SERVING to `weir health` (the containers' health check).
    for i in 0..3 {
        let addr = format!("127.0.0.1:{}", base + i);
        let health = weir(&binary, &["health", "--addr", &addr], None)?;
        ensure!(
            health.code == Some(0) && health.stdout.contains("SERVING"),
            "weir health {addr}: {} {}",
            health.stdout,
            health.stderr
        );
    }

    let stopped = stop_local(local)?;
    ensure!(stopped.contains("stopped"), "{stopped}");
    // A stopped node fails the check, and the message names it.
    let addr = format!("127.0.0.1:{base}");
    let health = weir(
        &binary,
        &["health", "--addr", &addr, "--timeout", "1"],
        None,
    )?;
    ensure!(
        health.code == Some(1) && health.stderr.contains(&addr),
        "weir health of a stopped node: {:?} {}",
        health.code,
        health.stderr
    );

    // Restarted on the same data, the cluster serves the same records.
    let local = start_local()?;
    let again = weir(
        &binary,
        &[
            &["consume", "demo", "--partition", "1", "--count", "305"][..],
            &b,
        ]
        .concat(),
        None,
    )?;
    ensure!(
        again.code == Some(0),
        "consume after restart: {}",
        again.stderr
    );
    let all: Vec<String> = lines.iter().chain(&late).cloned().collect();
    ensure!(
        again.stdout.lines().collect::<Vec<_>>() == all,
        "records differ after restart"
    );
    stop_local(local)?;
    Ok(())
}

/// Runs `weir ARGS --brokers B` and parses its stdout as one JSON document.
fn weir_json(binary: &Path, args: &[&str], brokers: &str) -> anyhow::Result<serde_json::Value> {
    let run = weir(
        binary,
        &[args, &["--output", "json", "--brokers", brokers]].concat(),
        None,
    )?;
    ensure!(run.code == Some(0), "{args:?}: {}", run.stderr);
    serde_json::from_str(&run.stdout).with_context(|| format!("{args:?}: {}", run.stdout))
}

/// `weir consume --output json` lines, parsed.
fn json_lines(stdout: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l:?}")))
        .collect()
}

/// The (partition, lag) of every partition of a group, via `weir group describe --output json`.
fn group_lag(binary: &Path, group: &str, brokers: &str) -> anyhow::Result<u64> {
    let described = weir_json(binary, &["group", "describe", group], brokers)?;
    let partitions = described["partitions"]
        .as_array()
        .context("partitions")?
        .clone();
    Ok(partitions.iter().filter_map(|p| p["lag"].as_u64()).sum())
}

#[test]
fn keys_headers_json_groups_and_status() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3)?;
    let binary = cluster.binary().to_path_buf();
    let brokers = cluster.brokers().join(",");
    let b = ["--brokers", brokers.as_str()];
    let run = |args: &[&str], stdin: Option<&str>| weir(&binary, &[args, &b].concat(), stdin);

    // A topic with a setting, shown by describe.
    let create = run(
        &[
            "topic",
            "create",
            "kv",
            "--partitions",
            "3",
            "--replication-factor",
            "3",
            "--config",
            "retention.ms=3600000",
        ],
        None,
    )?;
    ensure!(create.code == Some(0), "topic create: {}", create.stderr);
    let described = weir_json(&binary, &["topic", "describe", "kv"], &brokers)?;
    ensure!(
        described["configs"]["retention.ms"] == "3600000",
        "{described}"
    );
    let bad_config = run(
        &["topic", "create", "bad", "--config", "retention.ms=soon"],
        None,
    )?;
    ensure!(
        bad_config.code == Some(1) && bad_config.stderr.contains("retention.ms"),
        "{}",
        bad_config.stderr
    );

    // Keys from a separator, headers on every record.
    let produce = run(
        &[
            "produce",
            "kv",
            "--separator",
            ":",
            "--header",
            "src=cli",
            "--header",
            "n=1",
        ],
        Some("alice:1\nbob:2\ncarol:3\nalice:4\n"),
    )?;
    ensure!(produce.code == Some(0), "produce: {}", produce.stderr);
    ensure!(
        produce.stderr.contains("4 records acknowledged"),
        "{}",
        produce.stderr
    );
    // One key for all records.
    let fixed = run(&["produce", "kv", "--key", "fixed"], Some("x\ny\n"))?;
    ensure!(fixed.code == Some(0), "produce --key: {}", fixed.stderr);
    // A line without the separator is named, and the command fails.
    let bad_line = run(
        &["produce", "kv", "--separator", ":"],
        Some("dave:5\nno separator here\n"),
    )?;
    ensure!(
        bad_line.code == Some(1) && bad_line.stderr.contains("line 2"),
        "{}",
        bad_line.stderr
    );

    // An exact offset outside the log fails with the range named, instead of waiting.
    let past_end = run(
        &[
            "consume",
            "kv",
            "--partition",
            "0",
            "--from",
            "999",
            "--count",
            "1",
        ],
        None,
    )?;
    ensure!(
        past_end.code == Some(1) && past_end.stderr.contains("outside"),
        "consume past the end: {:?} {}",
        past_end.code,
        past_end.stderr
    );

    let consume = run(&["consume", "kv", "--output", "json"], None)?;
    ensure!(consume.code == Some(0), "consume: {}", consume.stderr);
    let records = json_lines(&consume.stdout)?;
    let mut pairs: Vec<(String, String)> = Vec::new();
    for r in &records {
        let key = r["key"].as_str().context("key")?.to_string();
        let value = r["value"].as_str().context("value")?.to_string();
        ensure!(r["topic"] == "kv", "{r}");
        ensure!(
            r["partition"].as_u64() == Some(u64::from(partition_for_key(key.as_bytes(), 3))),
            "{key} is not on its key's partition: {r}"
        );
        ensure!(
            r["offset"].is_u64() && r["timestamp"].as_i64().is_some_and(|t| t > 0),
            "{r}"
        );
        let headers = r["headers"].as_array().context("headers")?;
        if ["alice", "bob", "carol"].contains(&key.as_str()) {
            ensure!(
                headers.len() == 2
                    && headers[0]["key"] == "src"
                    && headers[0]["value"] == "cli"
                    && headers[1]["key"] == "n"
                    && headers[1]["value"] == "1",
                "{r}"
            );
        }
        pairs.push((key, value));
    }
    pairs.sort();
    // "dave:5" was sent before the bad line stopped the command.
    let want: Vec<(String, String)> = [
        ("alice", "1"),
        ("alice", "4"),
        ("bob", "2"),
        ("carol", "3"),
        ("dave", "5"),
        ("fixed", "x"),
        ("fixed", "y"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    ensure!(pairs == want, "{pairs:?}");

    // A group reads part, then resumes where it stopped.
    let first = run(
        &[
            "consume", "kv", "--group", "g1", "--from", "earliest", "--count", "4",
        ],
        None,
    )?;
    ensure!(first.code == Some(0), "consume --group: {}", first.stderr);
    let second = run(
        &["consume", "kv", "--group", "g1", "--from", "earliest"],
        None,
    )?;
    ensure!(
        second.code == Some(0),
        "consume --group again: {}",
        second.stderr
    );
    let first_values: Vec<&str> = first.stdout.lines().collect();
    let second_values: Vec<&str> = second.stdout.lines().collect();
    ensure!(
        first_values.len() == 4 && second_values.len() == 3,
        "first {first_values:?}, second {second_values:?}"
    );
    let mut all: Vec<&str> = first_values.iter().chain(&second_values).copied().collect();
    all.sort_unstable();
    ensure!(all == ["1", "2", "3", "4", "5", "x", "y"], "{all:?}");
    ensure!(group_lag(&binary, "g1", &brokers)? == 0);

    // New records show up as lag.
    let more = run(&["produce", "kv"], Some("m1\nm2\nm3\n"))?;
    ensure!(more.code == Some(0), "produce: {}", more.stderr);
    ensure!(group_lag(&binary, "g1", &brokers)? == 3);
    let table = run(&["group", "describe", "g1"], None)?;
    ensure!(
        table.code == Some(0) && table.stdout.contains("LAG") && table.stdout.contains("COMMITTED"),
        "{}",
        table.stdout
    );
    let groups = weir_json(&binary, &["group", "list"], &brokers)?;
    ensure!(
        groups["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g["group"] == "g1" && g["members"] == 0)),
        "{groups}"
    );

    // Reset to the start: everything is lag again, and the group reads it all.
    let reset = weir_json(
        &binary,
        &["group", "reset", "g1", "--topic", "kv", "--to", "earliest"],
        &brokers,
    )?;
    ensure!(
        reset["offsets"].as_array().is_some_and(|o| o.len() == 3),
        "{reset}"
    );
    ensure!(group_lag(&binary, "g1", &brokers)? == 10);
    let again = run(&["consume", "kv", "--group", "g1"], None)?;
    ensure!(again.code == Some(0), "{}", again.stderr);
    ensure!(again.stdout.lines().count() == 10, "{}", again.stdout);
    ensure!(group_lag(&binary, "g1", &brokers)? == 0);

    // --follow waits for new records; Ctrl-C commits and leaves.
    let mut follow = Command::new(&binary)
        .args([
            "consume",
            "kv",
            "--group",
            "g1",
            "--follow",
            "--brokers",
            &brokers,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = follow.stdout.take().context("stdout")?;
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    eventually_blocking(Duration::from_secs(30), "the follower joined", || {
        let described = weir_json(&binary, &["group", "describe", "g1"], &brokers)?;
        ensure!(
            described["members"]
                .as_array()
                .is_some_and(|m| m.len() == 1)
                && described["state"] == "stable",
            "group g1: {described}"
        );
        Ok(())
    })?;
    let late = run(&["produce", "kv", "--key", "late"], Some("late-1\n"))?;
    ensure!(late.code == Some(0), "{}", late.stderr);
    let line = line_rx
        .recv_timeout(Duration::from_secs(30))
        .context("--follow printed nothing")??;
    ensure!(line == "late-1", "{line}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(follow.id())?),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let status = wait_for_exit(
        &mut follow,
        Duration::from_secs(30),
        "weir consume --follow to stop on SIGINT",
    )?;
    let _ = reader.join();
    ensure!(status.success(), "consume --follow exited with {status}");
    ensure!(group_lag(&binary, "g1", &brokers)? == 0);
    let described = weir_json(&binary, &["group", "describe", "g1"], &brokers)?;
    ensure!(
        described["members"].as_array().is_some_and(Vec::is_empty),
        "{described}"
    );

    // Errors name the problem.
    let unknown = run(&["consume", "nope"], None)?;
    ensure!(
        unknown.code == Some(1) && unknown.stderr.contains("unknown topic"),
        "{}",
        unknown.stderr
    );
    let no_group = run(&["group", "describe", "nosuch"], None)?;
    ensure!(
        no_group.code == Some(1) && no_group.stderr.contains("unknown group"),
        "{}",
        no_group.stderr
    );
    let bad_to = run(
        &["group", "reset", "g1", "--topic", "kv", "--to", "soon"],
        None,
    )?;
    ensure!(
        bad_to.code == Some(1) && bad_to.stderr.contains("--to"),
        "{}",
        bad_to.stderr
    );

    // Cluster status: every node, the controller leader, leaders per node; with a node down,
    // its partitions are under-replicated.
    let status = weir_json(&binary, &["cluster", "status"], &brokers)?;
    ensure!(status["controller_leader"].is_u64(), "{status}");
    ensure!(
        status["brokers"].as_array().is_some_and(|b| b.len() == 3),
        "{status}"
    );
    ensure!(
        status["under_replicated"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "{status}"
    );
    let leaders: u64 = status["brokers"]
        .as_array()
        .map(|b| b.iter().filter_map(|b| b["leaders"].as_u64()).sum())
        .unwrap_or(0);
    ensure!(leaders >= 3, "{status}");
    cluster.kill(3)?;
    let two = [cluster.addr(1), cluster.addr(2)].join(",");
    eventually_blocking(Duration::from_secs(60), "node 3 reported down", || {
        let status = weir_json(&binary, &["cluster", "status"], &two)?;
        let down = status["brokers"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["id"] == 3 && b["alive"] == false));
        let under = status["under_replicated"]
            .as_array()
            .is_some_and(|u| u.iter().any(|u| u["topic"] == "kv"));
        ensure!(down && under, "cluster status: {status}");
        Ok(())
    })?;
    let table = weir(&binary, &["cluster", "status", "--brokers", &two], None)?;
    ensure!(
        table.stdout.contains("under-replicated: kv/"),
        "{}",
        table.stdout
    );
    cluster.stop_all()?;
    Ok(())
}
