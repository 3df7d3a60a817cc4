//! The `weir` command as a user runs it: `weir local` starts a 3-node cluster, topics are created,
//! lines produced and consumed, the cluster stops on SIGTERM and restarts on its data with nothing
//! lost; bad command lines and configurations fail with a message naming the problem.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use weir_tests::process_cluster::weir_binary;

/// Three consecutive free ports on 127.0.0.1.
fn free_base_port() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let base = 20_000 + (std::process::id() as u16 % 20_000) + rand_offset();
        let ok = (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if ok {
            return Ok(base);
        }
    }
    anyhow::bail!("no three consecutive free ports")
}

fn rand_offset() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos % 5_000) as u16
}

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

#[test]
fn local_cluster_produce_consume_stop_and_restart() -> anyhow::Result<()> {
    let binary = weir_binary()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("cluster");
    let base = free_base_port()?;
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
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while child.try_wait()?.is_none() {
            ensure!(
                std::time::Instant::now() < deadline,
                "weir local did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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

    // Replay from a time: only what was produced after it.
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

    let stopped = stop_local(local)?;
    ensure!(stopped.contains("stopped"), "{stopped}");

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
