//! The `weir` command as a user runs it, and the clusters the CLI tests run it against: a
//! [`CliCluster`] (three `weir server` processes) or a [`LocalCluster`] (`weir local --nodes 3`
//! on reserved ports).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};

use crate::ports::PortReservation;
use crate::process_cluster::{ProcessCluster, weir_binary};

/// How a `weir` command ended.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `weir ARGS` with `stdin` as its input (none: empty) and waits for it.
pub fn weir(binary: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Run> {
    weir_with_env(binary, args, &[], stdin)
}

/// [`weir`] with these environment variables (name, value) set.
pub fn weir_with_env(
    binary: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> anyhow::Result<Run> {
    let mut child = Command::new(binary)
        .args(args)
        .envs(env.iter().copied())
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

/// Runs `weir ARGS --output json --brokers B` and parses its stdout as one JSON document.
pub fn weir_json(binary: &Path, args: &[&str], brokers: &str) -> anyhow::Result<serde_json::Value> {
    let run = weir(
        binary,
        &[args, &["--output", "json", "--brokers", brokers]].concat(),
        None,
    )?;
    ensure!(run.code == Some(0), "{args:?}: {}", run.stderr);
    serde_json::from_str(&run.stdout).with_context(|| format!("{args:?}: {}", run.stdout))
}

/// `weir consume --output json` lines, parsed.
pub fn json_lines(stdout: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l:?}")))
        .collect()
}

/// Three `weir server` processes and the `weir` command pointed at them.
#[derive(Debug)]
pub struct CliCluster {
    pub cluster: ProcessCluster,
    pub binary: PathBuf,
    /// Every node's address, comma-separated (for `--brokers`).
    pub brokers: String,
}

impl CliCluster {
    pub fn start() -> anyhow::Result<Self> {
        let cluster = ProcessCluster::start(3)?;
        let binary = cluster.binary().to_path_buf();
        let brokers = cluster.brokers().join(",");
        Ok(Self {
            cluster,
            binary,
            brokers,
        })
    }

    /// `weir ARGS --brokers B`.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Run> {
        weir(
            &self.binary,
            &[args, &["--brokers", self.brokers.as_str()]].concat(),
            stdin,
        )
    }

    /// `weir ARGS --output json --brokers B`, parsed.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        weir_json(&self.binary, args, &self.brokers)
    }

    /// `weir ARGS` that must succeed; returns its standard output.
    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let run = self.run(args, stdin)?;
        ensure!(run.code == Some(0), "weir {args:?}: {}", run.stderr);
        Ok(run.stdout)
    }

    /// The total lag of consumer group `group` (`weir group describe --output json`).
    pub fn group_lag(&self, group: &str) -> anyhow::Result<u64> {
        let described = self.json(&["group", "describe", group])?;
        let partitions = described["partitions"]
            .as_array()
            .context("partitions")?
            .clone();
        Ok(partitions.iter().filter_map(|p| p["lag"].as_u64()).sum())
    }
}

/// `weir local --nodes 3` on three consecutive reserved ports (held for the life of this value,
/// across restarts), with its data in a directory of its own. Stopped with SIGTERM (or killed
/// when dropped while running).
#[derive(Debug)]
pub struct LocalCluster {
    pub binary: PathBuf,
    /// Node 1's port; node I listens on BASE+I-1.
    pub base: u16,
    _ports: Vec<PortReservation>,
    _dir: tempfile::TempDir,
    data: PathBuf,
    child: Option<Child>,
    /// What the running `weir local` printed so far: stdout (drained by a thread, so a full pipe
    /// never blocks it, and readable while it runs) and stderr.
    output: Option<Output>,
}

/// A child's stdout and stderr, each drained into a buffer by a thread of its own.
#[derive(Debug)]
struct Output {
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Output {
    fn drain(child: &mut Child) -> Self {
        let stdout = std::sync::Arc::default();
        let stderr = std::sync::Arc::default();
        let mut readers = Vec::new();
        if let Some(pipe) = child.stdout.take() {
            readers.push(Self::reader(pipe, std::sync::Arc::clone(&stdout)));
        }
        if let Some(pipe) = child.stderr.take() {
            readers.push(Self::reader(pipe, std::sync::Arc::clone(&stderr)));
        }
        Self {
            stdout,
            stderr,
            readers,
        }
    }

    fn reader(
        pipe: impl std::io::Read + Send + 'static,
        into: std::sync::Arc<std::sync::Mutex<String>>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut text) = into.lock() {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
        })
    }

    fn stdout(&self) -> String {
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stdout and stderr, once the child has exited (its pipes closed).
    fn finish(mut self) -> (String, String) {
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.join();
        }
        (self.stdout(), self.stderr())
    }
}

impl LocalCluster {
    /// Starts `weir local` (it does not wait for the nodes: clients retry until they answer).
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// [`LocalCluster::start`] with more arguments to `weir local` (`--demo`).
    pub fn start_with(extra: &[&str]) -> anyhow::Result<Self> {
        let ports = crate::ports::consecutive(3)?;
        let dir = tempfile::tempdir()?;
        let mut local = Self {
            binary: weir_binary()?,
            base: ports[0].port(),
            _ports: ports,
            data: dir.path().join("cluster"),
            _dir: dir,
            child: None,
            output: None,
        };
        local.start_again_with(extra)?;
        Ok(local)
    }

    /// Starts `weir local` again on the same data and ports (after [`LocalCluster::stop`]).
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.start_again_with(&[])
    }

    /// [`LocalCluster::start_again`] with more arguments to `weir local` (`--demo`).
    pub fn start_again_with(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        ensure!(self.child.is_none(), "weir local is running");
        // WEIR_* variables of client commands and tests reach the nodes (children of `weir
        // local`): they are not server settings, and the servers ignore them.
        let brokers = self.brokers();
        let mut child = Command::new(&self.binary)
            .env("WEIR_BROKERS", &brokers)
            .env("WEIR_DOCKER_TESTS", "1")
            .env("WEIR_FUZZ_SECONDS", "5")
            .args([
                "local",
                "--nodes",
                "3",
                "--base-port",
                &self.base.to_string(),
                "--data-dir",
            ])
            .arg(&self.data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        self.output = Some(Output::drain(&mut child));
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the running `weir local` has printed `text` on stdout (the demo's closing
    /// lines come seconds after the nodes answer); returns what it printed so far.
    pub fn wait_for_output(&self, text: &str, within: Duration) -> anyhow::Result<String> {
        let output = self.output.as_ref().context("weir local is not running")?;
        crate::eventually_blocking(within, &format!("weir local to print {text:?}"), || {
            let printed = output.stdout();
            ensure!(
                printed.contains(text),
                "printed so far:\n{printed}\nstderr:\n{}",
                output.stderr()
            );
            Ok(printed)
        })
    }

    /// Where `weir local` keeps its data (and, with `--secure`, `certs/`).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Node `i`'s address (i = 0, 1, 2).
    pub fn addr(&self, i: u16) -> String {
        format!("127.0.0.1:{}", self.base + i)
    }

    /// Every node's address, comma-separated (for `--brokers`).
    pub fn brokers(&self) -> String {
        (0..3).map(|i| self.addr(i)).collect::<Vec<_>>().join(",")
    }

    /// `weir ARGS --brokers B`.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Run> {
        let brokers = self.brokers();
        weir(
            &self.binary,
            &[args, &["--brokers", brokers.as_str()]].concat(),
            stdin,
        )
    }

    /// `weir ARGS --output json --brokers B`, parsed.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        weir_json(&self.binary, args, &self.brokers())
    }

    /// Stops `weir local` with SIGTERM; it must exit 0. Returns what it printed: stdout, then
    /// stderr (where it reports a failed demo or set-up).
    pub fn stop(&mut self) -> anyhow::Result<String> {
        let mut child = self.child.take().context("weir local is not running")?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        crate::wait_for_exit(
            &mut child,
            Duration::from_secs(30),
            "weir local to stop on SIGTERM",
        )?;
        let status = child.wait()?;
        let (printed, stderr) = self.output.take().map(Output::finish).unwrap_or_default();
        ensure!(
            status.success(),
            "weir local exited with {status}; it printed:\n{printed}\nstderr:\n{stderr}"
        );
        Ok(format!("{printed}{stderr}"))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM lets weir local stop its nodes; a hung one is killed with them.
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let _ = crate::wait_for_exit(&mut child, Duration::from_secs(30), "weir local");
        }
    }
}
