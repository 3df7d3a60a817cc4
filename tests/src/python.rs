//! Python for the tests that drive real clients (the Python example, Kafka clients): checking
//! that `python3` is there (failing, never skipping, when it is not), venvs kept in the target
//! directory and rebuilt only when their requirements change, and running a command with its
//! output captured and a time limit.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};

/// The cargo target directory this test was built into (`target/<profile>/deps/<test>`).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .context("test binary is not in target/<profile>/deps")
}

/// Fails (never skips) when `python3` cannot be run.
pub fn require_python() -> anyhow::Result<()> {
    match Command::new("python3").arg("--version").output() {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => bail!(
            "python3 --version failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(err) => bail!(
            "this test needs python3 with venv support, which is not installed ({err}); \
             on Debian: apt-get install python3 python3-venv python3-pip (.ci/run does this)"
        ),
    }
}

#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn describe(&self) -> String {
        format!(
            "exit status {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `command` to completion with its output captured; after `within` it is killed, with
/// every process it started (it runs in a process group of its own).
pub fn run(command: &mut Command, within: Duration) -> anyhow::Result<Run> {
    let what = format!("{command:?}");
    let mut child = command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    // Drain both pipes on their own threads so a chatty child never blocks on a full pipe.
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        let _ = done.send((child.wait(), text));
    });
    let (status, stdout) = match finished.recv_timeout(within) {
        Ok((status, stdout)) => (status?, stdout),
        Err(_) => {
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            let (_, stdout) = finished.recv()?;
            let stderr = err_reader.join().unwrap_or_default();
            bail!(
                "{what} did not finish within {within:?}; killed it\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}"
            );
        }
    };
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Run {
        status,
        stdout,
        stderr,
    })
}

/// A venv under `target/<name>/venv` with `requirements` installed (pip), rebuilt only when the
/// requirements changed (a copy kept in the venv is the marker); its `python`.
pub fn venv(name: &str, requirements: &Path) -> anyhow::Result<PathBuf> {
    require_python()?;
    let venv = target_dir()?.join(name).join("venv");
    let python = venv.join("bin").join("python");
    let marker = venv.join("weir-requirements.txt");
    let wanted = std::fs::read_to_string(requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    // One builder at a time (tests run in parallel processes); the others then find it built.
    std::fs::create_dir_all(target_dir()?.join(name))?;
    let lock = std::fs::File::create(target_dir()?.join(name).join("venv.lock"))?;
    lock.lock()?;
    if python.exists() && std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        return Ok(python);
    }
    let _ = std::fs::remove_dir_all(&venv);
    let created = run(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        Duration::from_secs(120),
    )?;
    ensure!(
        created.status.success(),
        "python3 -m venv: {}",
        created.describe()
    );
    let installed = run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(requirements),
        Duration::from_secs(600),
    )?;
    ensure!(
        installed.status.success(),
        "pip install -r {}: {}",
        requirements.display(),
        installed.describe()
    );
    std::fs::write(&marker, wanted)?;
    Ok(python)
}
