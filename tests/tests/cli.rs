//! The `weir` command as a user runs it. `weir local` starts a 3-node cluster: topics are
//! created, lines produced, consumed and replayed, listings and health shown, mistakes named, and
//! the cluster stops on SIGTERM and restarts on its data with nothing lost. Against three `weir
//! server` processes: topic settings, keys, headers and JSON output, consumer groups (resuming,
//! lag, reset, --follow), errors, and cluster status with a node down. Bad server settings fail
//! with a message naming the setting. Each test starts its own cluster and checks one behaviour.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use weir_client::partition_for_key;
use weir_tests::cli::{CliCluster, LocalCluster, json_lines, weir, weir_with_env};
use weir_tests::process_cluster::weir_binary;
use weir_tests::{eventually_blocking, wait_for_exit};

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

/// Environment variables, name and value.
type Vars<'a> = Vec<(&'a str, &'a str)>;

/// The layers: file < WEIR_* environment < flags; a bad value's message names the setting and
/// the file, variable or flag it came from.
#[test]
fn server_settings_layer_file_env_and_flags_and_name_the_source() -> anyhow::Result<()> {
    let binary = weir_binary()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let data = data.to_str().context("path")?;
    let layered = dir.path().join("layered.toml");
    std::fs::write(
        &layered,
        format!("addr = \"filebad\"\ndata_dir = {data:?}\n"),
    )?;
    let layered = layered.to_str().context("path")?;
    let cases: Vec<(Vec<&str>, Vars<'_>, Vec<&str>)> = vec![
        (
            vec!["server", "--config", layered],
            vec![],
            vec!["invalid setting addr (config file", "\"filebad\""],
        ),
        (
            vec!["server", "--config", layered],
            vec![("WEIR_ADDR", "envbad")],
            vec![
                "invalid setting addr (environment variable WEIR_ADDR)",
                "\"envbad\"",
            ],
        ),
        (
            vec!["server", "--config", layered, "--addr", "flagbad"],
            vec![("WEIR_ADDR", "envbad")],
            vec!["invalid setting addr (flag --addr)", "\"flagbad\""],
        ),
        (
            vec!["server", "--data-dir", data],
            vec![("WEIR_RAFT__ELECTION_MIN_MS", "soon")],
            vec![
                "invalid setting raft.election_min_ms (environment variable WEIR_RAFT__ELECTION_MIN_MS)",
                "\"soon\"",
            ],
        ),
        (
            vec![
                "server",
                "--data-dir",
                data,
                "--raft-election-max-ms",
                "700",
            ],
            vec![],
            vec!["invalid setting raft.election_max_ms (flag --raft-election-max-ms)"],
        ),
        (
            vec!["server", "--data-dir", data],
            vec![("WEIR_RAFT__HEARTBEAT", "100")],
            vec!["WEIR_RAFT__HEARTBEAT", "WEIR_RAFT__HEARTBEAT_MS"],
        ),
        (
            vec!["server", "--data-dir", data],
            vec![("WEIR_DURABILITY", "interval:soon")],
            vec!["environment variable WEIR_DURABILITY", "interval:MS"],
        ),
        (
            vec!["server", "--data-dir", data, "--id-from-hostname"],
            vec![("WEIR_ID", "2")],
            vec![
                "flag --id-from-hostname",
                "cannot be used with id",
                "WEIR_ID",
            ],
        ),
    ];
    for (args, env, mentions) in cases {
        let run = weir_with_env(&binary, &args, &env, None)?;
        ensure!(run.code == Some(1), "{args:?} {env:?}: exit {:?}", run.code);
        for mention in mentions {
            ensure!(
                run.stderr.contains(mention),
                "{args:?} {env:?}: stderr {:?} should mention {mention:?}",
                run.stderr
            );
        }
    }
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

/// `line 1` .. `line 300`.
fn three_hundred_lines() -> Vec<String> {
    (1..=300).map(|i| format!("line {i}")).collect()
}

/// Creates topic `demo` (3 partitions, replication factor 3) on a `weir local` cluster and
/// produces [`three_hundred_lines`] to its partition 1.
fn demo_with_300_lines(local: &LocalCluster) -> anyhow::Result<Vec<String>> {
    let create = local.run(
        &[
            "topic",
            "create",
            "demo",
            "--partitions",
            "3",
            "--replication-factor",
            "3",
        ],
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
    let lines = three_hundred_lines();
    let produce = local.run(
        &["produce", "demo", "--partition", "1"],
        Some(&(lines.join("\n") + "\n")),
    )?;
    ensure!(produce.code == Some(0), "produce: {}", produce.stderr);
    ensure!(
        produce.stderr.contains("300 records acknowledged"),
        "{}",
        produce.stderr
    );
    Ok(lines)
}

/// Produces `late 1` .. `late 5` to `demo`/1 after a cut in time; returns the cut and the lines.
fn late_lines(local: &LocalCluster) -> anyhow::Result<(std::time::SystemTime, Vec<String>)> {
    // Timestamps are milliseconds: the pauses put the cut strictly between the records before
    // it and those after.
    std::thread::sleep(Duration::from_millis(20));
    let cut = std::time::SystemTime::now();
    std::thread::sleep(Duration::from_millis(20));
    let late: Vec<String> = (1..=5).map(|i| format!("late {i}")).collect();
    let produce_late = local.run(
        &["produce", "demo", "--partition", "1"],
        Some(&(late.join("\n") + "\n")),
    )?;
    ensure!(
        produce_late.code == Some(0),
        "produce: {}",
        produce_late.stderr
    );
    Ok((cut, late))
}

#[test]
fn local_cluster_produces_consumes_and_replays_by_offset_and_time() -> anyhow::Result<()> {
    let mut local = LocalCluster::start()?;
    let lines = demo_with_300_lines(&local)?;
    let consume = local.run(
        &[
            "consume",
            "demo",
            "--partition",
            "1",
            "--from",
            "earliest",
            "--count",
            "300",
        ],
        None,
    )?;
    ensure!(consume.code == Some(0), "consume: {}", consume.stderr);
    ensure!(
        consume.stdout.lines().collect::<Vec<_>>() == lines,
        "consumed lines differ"
    );
    let from_offset = local.run(
        &["consume", "demo", "--partition", "1", "--from", "295"],
        None,
    )?;
    ensure!(
        from_offset.stdout.lines().collect::<Vec<_>>() == lines[295..],
        "replay from offset 295: {}",
        from_offset.stdout
    );

    // Replay from a time: only what was produced after it.
    let (cut, late) = late_lines(&local)?;
    let at = format!("@{}", humantime::format_rfc3339_millis(cut));
    let from_time = local.run(
        &["consume", "demo", "--partition", "1", "--from", at.as_str()],
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
    local.stop()?;
    Ok(())
}

/// Mistakes a user makes get a message and a non-zero exit; listings and descriptions show the
/// topic, as tables and as JSON; cluster status shows every node alive; every node reports
/// SERVING to `weir health` (the containers' health check).
#[test]
fn local_cluster_lists_describes_reports_health_and_names_mistakes() -> anyhow::Result<()> {
    let mut local = LocalCluster::start()?;
    demo_with_300_lines(&local)?;
    late_lines(&local)?;

    let unknown = local.run(&["produce", "nope"], Some("x\n"))?;
    ensure!(
        unknown.code == Some(1) && unknown.stderr.contains("unknown topic"),
        "{}",
        unknown.stderr
    );
    let bad_from = local.run(&["consume", "demo", "--from", "yesterday"], None)?;
    ensure!(
        bad_from.code == Some(1) && bad_from.stderr.contains("--from"),
        "{}",
        bad_from.stderr
    );
    let bad_partition = local.run(&["produce", "demo", "--partition", "9"], Some("x\n"))?;
    ensure!(
        bad_partition.code == Some(1) && bad_partition.stderr.contains("--partition 9"),
        "{}",
        bad_partition.stderr
    );
    // One row per partition: TOPIC PARTITION LEADER REPLICAS MOVING, and nothing else (the
    // settings are in `topic describe`).
    let listing = local.run(&["topic", "list"], None)?;
    let mut listed = listing.stdout.lines();
    ensure!(
        listed
            .next()
            .map(|h| h.split_whitespace().collect::<Vec<_>>())
            == Some(vec!["TOPIC", "PARTITION", "LEADER", "REPLICAS", "MOVING"]),
        "{}",
        listing.stdout
    );
    let rows: Vec<Vec<&str>> = listed.map(|l| l.split_whitespace().collect()).collect();
    ensure!(
        rows.len() == 3
            && rows.iter().enumerate().all(|(i, row)| {
                row.len() == 5
                    && row[0] == "demo"
                    && row[1] == i.to_string()
                    && row[3].split(',').count() == 3
                    && (row[2] == "-" || row[3].split(',').any(|id| id == row[2]))
            }),
        "{}",
        listing.stdout
    );

    // Listings as JSON, for scripts.
    let topics = local.json(&["topic", "list"])?;
    ensure!(topics["topics"][0]["name"] == "demo", "{topics}");
    ensure!(
        topics["topics"][0]["partitions"].as_array().map(Vec::len) == Some(3),
        "{topics}"
    );
    let described = local.json(&["topic", "describe", "demo"])?;
    ensure!(
        described["partitions"][1]["high_watermark"] == 305,
        "{described}"
    );
    ensure!(
        described["partitions"][1]["log_start_offset"] == 0,
        "{described}"
    );
    ensure!(described["replication_factor"] == 3, "{described}");
    let status = local.json(&["cluster", "status"])?;
    let brokers = status["brokers"].as_array().cloned().unwrap_or_default();
    ensure!(
        brokers.len() == 3 && brokers.iter().all(|b| b["alive"] == true),
        "{status}"
    );
    let table = local.run(&["topic", "describe", "demo"], None)?;
    ensure!(
        table.stdout.contains("HIGH WATERMARK") && table.stdout.contains("305"),
        "{}",
        table.stdout
    );
    ensure!(
        table
            .stdout
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["CONFIG", "VALUE"])
            && table
                .stdout
                .lines()
                .any(|l| l.starts_with("segment.bytes ")),
        "{}",
        table.stdout
    );
    let missing = local.run(&["topic", "describe", "nope"], None)?;
    ensure!(
        missing.code == Some(1) && missing.stderr.contains("unknown topic"),
        "{}",
        missing.stderr
    );

    // Every node reports SERVING to `weir health` once it has loaded the metadata.
    for i in 0..3 {
        let addr = local.addr(i);
        eventually_blocking(
            Duration::from_secs(30),
            &format!("weir health {addr} SERVING"),
            || {
                let health = weir(&local.binary, &["health", "--addr", &addr], None)?;
                ensure!(
                    health.code == Some(0) && health.stdout.contains("SERVING"),
                    "{:?} {} {}",
                    health.code,
                    health.stdout,
                    health.stderr
                );
                Ok(())
            },
        )?;
    }
    local.stop()?;
    Ok(())
}

/// SIGTERM stops the cluster cleanly (a stopped node then fails `weir health`, named); started
/// again on the same data, it serves the same records.
/// The committed offset of the demo's consumer group on partition 0 of `weir-demo`, once it is
/// `offset` (the demo ran to its end).
fn wait_for_demo_commit(local: &LocalCluster, offset: u64) -> anyhow::Result<()> {
    eventually_blocking(
        Duration::from_secs(120),
        &format!("the demo's group committing offset {offset}"),
        || {
            let described = local.json(&["group", "describe", "weir-demo-group"])?;
            let committed = described["partitions"][0]["committed"].as_u64();
            ensure!(committed == Some(offset), "{described}");
            Ok(())
        },
    )
}

/// `weir local --demo`, the README's main command, run a second time on its data: it reuses the
/// topic and its consumer group resumes where the first run committed.
#[test]
fn the_demo_runs_again_and_its_group_resumes_where_it_stopped() -> anyhow::Result<()> {
    let mut local = LocalCluster::start_with(&["--demo"])?;
    wait_for_demo_commit(&local, 10)?;
    let first = local.stop()?;
    ensure!(
        first.contains("demo: created topic weir-demo")
            && first.contains("demo: consumer group weir-demo-group is new")
            && first.contains("read 10 records and committed offset 10"),
        "{first}"
    );
    local.start_again_with(&["--demo"])?;
    wait_for_demo_commit(&local, 20)?;
    let second = local.stop()?;
    ensure!(!second.contains("demo failed"), "{second}");
    ensure!(
        second.contains("topic weir-demo exists from an earlier run")
            && second.contains("produced 10 records at offsets 10..19")
            && second.contains("resumes at offset 10, where the last run committed")
            && second.contains("read 10 records and committed offset 20"),
        "{second}"
    );
    Ok(())
}

#[test]
fn local_cluster_stops_on_sigterm_and_restarts_on_its_data() -> anyhow::Result<()> {
    let mut local = LocalCluster::start()?;
    let lines = demo_with_300_lines(&local)?;
    let (_, late) = late_lines(&local)?;

    let stopped = local.stop()?;
    ensure!(stopped.contains("stopped"), "{stopped}");
    // A stopped node fails the check, and the message names it.
    let addr = local.addr(0);
    let health = weir(
        &local.binary,
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
    local.start_again()?;
    let again = local.run(
        &["consume", "demo", "--partition", "1", "--count", "305"],
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
    local.stop()?;
    Ok(())
}

/// Creates topic `kv`: 3 partitions, replication factor 3, an hour's retention.
fn create_kv(cli: &CliCluster) -> anyhow::Result<()> {
    let create = cli.run(
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
    Ok(())
}

/// What [`produce_keys_and_headers`] ran.
struct Produced {
    /// alice:1, bob:2, carol:3, alice:4 with --separator : and two headers.
    keyed: weir_tests::cli::Run,
    /// x and y with --key fixed.
    fixed: weir_tests::cli::Run,
    /// dave:5, then a line without the separator.
    bad_line: weir_tests::cli::Run,
}

/// Topic `kv` and seven records in it: keys from a separator with headers on every record, one
/// key for all records, and a line without the separator (the one before it is sent).
fn produce_keys_and_headers(cli: &CliCluster) -> anyhow::Result<Produced> {
    create_kv(cli)?;
    let keyed = cli.run(
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
    let fixed = cli.run(&["produce", "kv", "--key", "fixed"], Some("x\ny\n"))?;
    let bad_line = cli.run(
        &["produce", "kv", "--separator", ":"],
        Some("dave:5\nno separator here\n"),
    )?;
    Ok(Produced {
        keyed,
        fixed,
        bad_line,
    })
}

/// Group `g1` reads the seven records of [`produce_keys_and_headers`]: four, then, resuming,
/// the other three. Returns (first values, second values).
fn group_reads_all(cli: &CliCluster) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let first = cli.run(
        &[
            "consume", "kv", "--group", "g1", "--from", "earliest", "--count", "4",
        ],
        None,
    )?;
    ensure!(first.code == Some(0), "consume --group: {}", first.stderr);
    let second = cli.run(
        &["consume", "kv", "--group", "g1", "--from", "earliest"],
        None,
    )?;
    ensure!(
        second.code == Some(0),
        "consume --group again: {}",
        second.stderr
    );
    Ok((
        first.stdout.lines().map(str::to_string).collect(),
        second.stdout.lines().map(str::to_string).collect(),
    ))
}

/// A topic with a setting, shown by describe; a bad setting is named.
#[test]
fn topic_create_takes_settings_and_describe_shows_them() -> anyhow::Result<()> {
    let mut cli = CliCluster::start()?;
    create_kv(&cli)?;
    let described = cli.json(&["topic", "describe", "kv"])?;
    ensure!(
        described["configs"]["retention.ms"] == "3600000",
        "{described}"
    );
    let table = cli.run(&["topic", "describe", "kv"], None)?;
    ensure!(
        table
            .stdout
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["retention.ms", "3600000"]),
        "{}",
        table.stdout
    );
    let bad_config = cli.run(
        &["topic", "create", "bad", "--config", "retention.ms=soon"],
        None,
    )?;
    ensure!(
        bad_config.code == Some(1) && bad_config.stderr.contains("retention.ms"),
        "{}",
        bad_config.stderr
    );
    cli.cluster.stop_all()?;
    Ok(())
}

/// Keys from a separator or one for all, headers on every record; consume prints them as JSON
/// lines, each on its key's partition; a line without the separator and an offset outside the
/// log are named.
#[test]
fn produce_takes_keys_and_headers_and_consume_prints_them_as_json() -> anyhow::Result<()> {
    let mut cli = CliCluster::start()?;
    let Produced {
        keyed,
        fixed,
        bad_line,
    } = produce_keys_and_headers(&cli)?;
    ensure!(keyed.code == Some(0), "produce: {}", keyed.stderr);
    ensure!(
        keyed.stderr.contains("4 records acknowledged"),
        "{}",
        keyed.stderr
    );
    ensure!(fixed.code == Some(0), "produce --key: {}", fixed.stderr);
    // A line without the separator is named, and the command fails.
    ensure!(
        bad_line.code == Some(1) && bad_line.stderr.contains("line 2"),
        "{}",
        bad_line.stderr
    );

    // An exact offset outside the log fails with the range named, instead of waiting.
    let past_end = cli.run(
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

    let consume = cli.run(&["consume", "kv", "--output", "json"], None)?;
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
    cli.cluster.stop_all()?;
    Ok(())
}

/// A group reads part, then resumes where it stopped; new records show up as lag; a reset to
/// the start makes everything lag again, and the group reads it all.
#[test]
fn a_consumer_group_resumes_shows_lag_and_resets() -> anyhow::Result<()> {
    let mut cli = CliCluster::start()?;
    produce_keys_and_headers(&cli)?;
    let (first_values, second_values) = group_reads_all(&cli)?;
    ensure!(
        first_values.len() == 4 && second_values.len() == 3,
        "first {first_values:?}, second {second_values:?}"
    );
    let mut all: Vec<&str> = first_values
        .iter()
        .chain(&second_values)
        .map(String::as_str)
        .collect();
    all.sort_unstable();
    ensure!(all == ["1", "2", "3", "4", "5", "x", "y"], "{all:?}");
    ensure!(cli.group_lag("g1")? == 0);

    // New records show up as lag.
    cli.ok(&["produce", "kv"], Some("m1\nm2\nm3\n"))?;
    ensure!(cli.group_lag("g1")? == 3);
    let table = cli.run(&["group", "describe", "g1"], None)?;
    ensure!(
        table.code == Some(0) && table.stdout.contains("LAG") && table.stdout.contains("COMMITTED"),
        "{}",
        table.stdout
    );
    let groups = cli.json(&["group", "list"])?;
    ensure!(
        groups["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g["group"] == "g1" && g["members"] == 0)),
        "{groups}"
    );

    // Reset to the start: everything is lag again, and the group reads it all.
    let reset = cli.json(&["group", "reset", "g1", "--topic", "kv", "--to", "earliest"])?;
    ensure!(
        reset["offsets"].as_array().is_some_and(|o| o.len() == 3),
        "{reset}"
    );
    ensure!(cli.group_lag("g1")? == 10);
    let again = cli.run(&["consume", "kv", "--group", "g1"], None)?;
    ensure!(again.code == Some(0), "{}", again.stderr);
    ensure!(again.stdout.lines().count() == 10, "{}", again.stdout);
    ensure!(cli.group_lag("g1")? == 0);
    cli.cluster.stop_all()?;
    Ok(())
}

/// --follow waits for new records; Ctrl-C commits and leaves.
#[test]
fn consume_follow_prints_new_records_and_commits_on_ctrl_c() -> anyhow::Result<()> {
    let mut cli = CliCluster::start()?;
    produce_keys_and_headers(&cli)?;
    group_reads_all(&cli)?;
    ensure!(cli.group_lag("g1")? == 0, "g1 read everything before");
    let mut follow = Command::new(&cli.binary)
        .args([
            "consume",
            "kv",
            "--group",
            "g1",
            "--follow",
            "--brokers",
            &cli.brokers,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let followed = (|| -> anyhow::Result<()> {
        let stdout = follow.stdout.take().context("stdout")?;
        let (line_tx, line_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        eventually_blocking(Duration::from_secs(30), "the follower joined", || {
            let described = cli.json(&["group", "describe", "g1"])?;
            ensure!(
                described["members"]
                    .as_array()
                    .is_some_and(|m| m.len() == 1)
                    && described["state"] == "stable",
                "group g1: {described}"
            );
            Ok(())
        })?;
        cli.ok(&["produce", "kv", "--key", "late"], Some("late-1\n"))?;
        let line = line_rx
            .recv_timeout(Duration::from_secs(30))
            .context("--follow printed nothing")??;
        ensure!(line == "late-1", "{line}");
        Ok(())
    })();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(follow.id())?),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let status = wait_for_exit(
        &mut follow,
        Duration::from_secs(30),
        "weir consume --follow to stop on SIGINT",
    )?;
    followed?;
    ensure!(status.success(), "consume --follow exited with {status}");
    ensure!(cli.group_lag("g1")? == 0);
    let described = cli.json(&["group", "describe", "g1"])?;
    ensure!(
        described["members"].as_array().is_some_and(Vec::is_empty),
        "{described}"
    );
    cli.cluster.stop_all()?;
    Ok(())
}

/// Errors name the problem.
#[test]
fn cli_errors_name_the_problem() -> anyhow::Result<()> {
    let mut cli = CliCluster::start()?;
    create_kv(&cli)?;
    let unknown = cli.run(&["consume", "nope"], None)?;
    ensure!(
        unknown.code == Some(1) && unknown.stderr.contains("unknown topic"),
        "{}",
        unknown.stderr
    );
    let no_group = cli.run(&["group", "describe", "nosuch"], None)?;
    ensure!(
        no_group.code == Some(1) && no_group.stderr.contains("unknown group"),
        "{}",
        no_group.stderr
    );
    let bad_to = cli.run(
        &["group", "reset", "g1", "--topic", "kv", "--to", "soon"],
        None,
    )?;
    ensure!(
        bad_to.code == Some(1) && bad_to.stderr.contains("--to"),
        "{}",
        bad_to.stderr
    );
    // `topic alter` and `group delete`: each mistake named, nothing changed.
    for (args, named) in [
        (&["topic", "alter", "kv"][..], "nothing to change"),
        (
            &["topic", "alter", "kv", "-c", "segment.bytes=10"][..],
            "segment.bytes",
        ),
        (
            &["topic", "alter", "kv", "-c", "nope=1"][..],
            "unknown topic setting \"nope\"",
        ),
        (
            &["topic", "alter", "kv", "--reset", "nope"][..],
            "unknown topic setting \"nope\"",
        ),
        (
            &["topic", "alter", "kv", "-p", "1"][..],
            "new count must be larger",
        ),
        (
            &["topic", "alter", "nosuch", "-c", "retention.ms=1000"][..],
            "unknown topic",
        ),
        (&["group", "delete", "nosuch"][..], "does not exist"),
    ] {
        let out = cli.run(args, None)?;
        ensure!(
            out.code == Some(1) && out.stderr.contains(named),
            "{args:?}: {:?} {}",
            out.code,
            out.stderr
        );
    }
    let not_pair = cli.run(&["topic", "alter", "kv", "-c", "bad"], None)?;
    ensure!(
        not_pair.code == Some(2) && not_pair.stderr.contains("KEY=VALUE"),
        "{}",
        not_pair.stderr
    );
    let kv = cli.run(&["topic", "describe", "kv", "--output", "json"], None)?;
    let kv: serde_json::Value = serde_json::from_str(&kv.stdout)?;
    ensure!(
        kv["configs"]["segment.bytes"] == "1073741824"
            && kv["configs"]["retention.ms"] == "3600000"
            && kv["partitions"].as_array().map(Vec::len) == Some(3),
        "{kv}"
    );
    cli.cluster.stop_all()?;
    Ok(())
}

/// Cluster status: every node, the controller leader, leaders per node; with a node down, its
/// partitions are under-replicated.
#[test]
fn cluster_status_shows_leaders_and_a_down_nodes_partitions_under_replicated() -> anyhow::Result<()>
{
    let mut cli = CliCluster::start()?;
    create_kv(&cli)?;
    // The new topic's partitions elect their leaders first.
    let status = eventually_blocking(
        Duration::from_secs(30),
        "every partition of kv led, none under-replicated",
        || {
            let status = cli.json(&["cluster", "status"])?;
            let leaders: u64 = status["brokers"]
                .as_array()
                .map(|b| b.iter().filter_map(|b| b["leaders"].as_u64()).sum())
                .unwrap_or(0);
            let under = status["under_replicated"]
                .as_array()
                .is_some_and(Vec::is_empty);
            ensure!(leaders >= 3 && under, "{status}");
            Ok(status)
        },
    )?;
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
    cli.cluster.kill(3)?;
    let two = [cli.cluster.addr(1), cli.cluster.addr(2)].join(",");
    eventually_blocking(Duration::from_secs(60), "node 3 reported down", || {
        let status = weir_tests::cli::weir_json(&cli.binary, &["cluster", "status"], &two)?;
        let down = status["brokers"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["id"] == 3 && b["alive"] == false));
        let under = status["under_replicated"]
            .as_array()
            .is_some_and(|u| u.iter().any(|u| u["topic"] == "kv"));
        ensure!(down && under, "cluster status: {status}");
        Ok(())
    })?;
    let table = weir(&cli.binary, &["cluster", "status", "--brokers", &two], None)?;
    ensure!(
        table.stdout.contains("under-replicated: kv/"),
        "{}",
        table.stdout
    );
    cli.cluster.stop_all()?;
    Ok(())
}
