//! `weir server`: one node. Its settings are layered by `weir_broker::NodeConfig::load`:
//! defaults, then `--config FILE`, then `WEIR_*` environment variables, then flags (each
//! overrides the one before). The flags are made from `weir_broker::SETTINGS`, so every setting
//! has one: `--` and the file key with `-` for `_` and `.`. SIGTERM or Ctrl-C stops it cleanly.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Arg, ArgAction, ArgMatches, Command};
use weir_broker::{Layers, Node, NodeConfig, SETTINGS, SettingKind};

const CONFIG: &str = "config";
const READY_FILE: &str = "ready-file";

/// Shown after the flags in `weir server --help`.
const LAYERS_HELP: &str = "\
Every setting is a key of the TOML file (--config), a WEIR_* environment variable and a flag, \
each overriding the one before: file key `advertised_addr`, variable WEIR_ADVERTISED_ADDR, flag \
--advertised-addr; in the [raft] table, `heartbeat_ms` is WEIR_RAFT__HEARTBEAT_MS and \
--raft-heartbeat-ms. Lists are comma-separated in variables and flags (WEIR_PEERS=1@a:9092,2@b:9092), \
switches are true or false in variables (WEIR_ID_FROM_HOSTNAME=true). Other WEIR_* variables \
(WEIR_BROKERS, ...) are ignored; an empty variable counts as unset.";

/// The flags of `weir server`: the config file and the settings given on the command line.
#[derive(Debug)]
pub(crate) struct ServerArgs {
    config: Option<PathBuf>,
    /// Where to write the bound addresses once the node listens (`--ready-file`).
    ready_file: Option<PathBuf>,
    /// (setting key, raw value) of each flag given.
    flags: Vec<(String, String)>,
}

impl clap::FromArgMatches for ServerArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Vec::new();
        for setting in SETTINGS {
            match setting.kind {
                SettingKind::Switch => {
                    if matches.get_flag(setting.key) {
                        flags.push((setting.key.to_string(), "true".to_string()));
                    }
                }
                _ => {
                    if let Some(value) = matches.get_one::<String>(setting.key) {
                        flags.push((setting.key.to_string(), value.clone()));
                    }
                }
            }
        }
        Ok(Self {
            config: matches.get_one::<PathBuf>(CONFIG).cloned(),
            ready_file: matches.get_one::<PathBuf>(READY_FILE).cloned(),
            flags,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for ServerArgs {
    fn augment_args(command: Command) -> Command {
        let command = command.after_help(LAYERS_HELP).arg(
            Arg::new(CONFIG)
                .long(CONFIG)
                .env("WEIR_CONFIG")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("TOML file of settings (keys as in docs/design.md; unknown keys are errors)"),
        ).arg(
            Arg::new(READY_FILE)
                .long(READY_FILE)
                .env("WEIR_READY_FILE")
                .value_name("PATH")
                .value_parser(clap::value_parser!(PathBuf))
                .help(
                    "Once the node listens, write the addresses it bound to this file (replacing \
                     it in one step): `addr=IP:PORT`, plus `external_addr=` and `metrics_addr=` \
                     lines for those listeners. With port 0 in --addr, this is how a script \
                     learns the port. Not a node setting: not read from the config file.",
                ),
        );
        SETTINGS.iter().fold(command, |command, setting| {
            let default = setting
                .default_text()
                .map(|text| format!(" [default: {text}]"))
                .unwrap_or_default();
            let help = format!(
                "{}{default} [file: {}] [env: {}]",
                setting.help, setting.key, setting.env
            );
            let arg = Arg::new(setting.key).long(setting.flag).help(help);
            let arg = match setting.kind {
                SettingKind::Switch => arg.action(ArgAction::SetTrue),
                _ => arg.action(ArgAction::Set).value_name(setting.value_name),
            };
            let arg = if setting.key == "id" {
                arg.conflicts_with("id_from_hostname")
            } else {
                arg
            };
            command.arg(arg)
        })
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}

/// Waits for SIGTERM or Ctrl-C.
pub(crate) async fn stop_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

/// Fails unless `path` can be created: its directory exists (checked before the node starts).
fn check_ready_file(path: &Path) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if path.file_name().is_none() || !dir.is_dir() {
        bail!(
            "--ready-file {}: not a file in an existing directory",
            path.display()
        );
    }
    Ok(())
}

/// Writes the node's bound addresses to `path` (see `--ready-file`): to a temporary file next to
/// it, renamed over it, so a reader never sees half of it.
fn write_ready_file(path: &Path, node: &Node) -> anyhow::Result<()> {
    let mut text = format!("addr={}\n", node.local_addr());
    if let Some(external) = node.external_addr() {
        text.push_str(&format!("external_addr={external}\n"));
    }
    if let Some(kafka) = node.kafka_addr() {
        text.push_str(&format!("kafka_addr={kafka}\n"));
    }
    if let Some(metrics) = node.metrics_addr() {
        text.push_str(&format!("metrics_addr={metrics}\n"));
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .with_context(|| format!("--ready-file {}: writing it", path.display()))
}

pub(crate) async fn run(args: ServerArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.ready_file {
        check_ready_file(path)?;
    }
    let config = NodeConfig::load(Layers {
        file: args.config.as_deref(),
        env: NodeConfig::environment(),
        flags: args.flags,
    })?;
    let node = Node::start(config, None).await?;
    if let Some(path) = &args.ready_file
        && let Err(err) = write_ready_file(path, &node)
    {
        node.shutdown().await;
        return Err(err);
    }
    tracing::info!(addr = %node.local_addr(), "weir node ready");
    stop_signal().await?;
    node.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    fn parse(args: &[&str]) -> Result<ServerArgs, clap::Error> {
        let command = ServerArgs::augment_args(Command::new("server"));
        let matches = command.try_get_matches_from(args)?;
        ServerArgs::from_arg_matches(&matches)
    }

    #[test]
    fn every_setting_has_its_flag() -> Result<(), clap::Error> {
        let command = ServerArgs::augment_args(Command::new("server"));
        for setting in SETTINGS {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == setting.key)
                .map(|a| a.get_long());
            assert_eq!(arg, Some(Some(setting.flag)), "{}", setting.key);
        }
        let args = parse(&[
            "server",
            "--config",
            "node.toml",
            "--raft-heartbeat-ms",
            "100",
            "--peers",
            "1@a:1,2@b:2,3@c:3",
            "--id-from-hostname",
        ])?;
        assert_eq!(args.config, Some(PathBuf::from("node.toml")));
        let flags: Vec<(&str, &str)> = args
            .flags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            flags,
            [
                ("id_from_hostname", "true"),
                ("peers", "1@a:1,2@b:2,3@c:3"),
                ("raft.heartbeat_ms", "100"),
            ]
        );
        assert!(parse(&["server", "--id", "2", "--id-from-hostname"]).is_err());
        assert!(parse(&["server", "--no-such-setting", "1"]).is_err());
        Ok(())
    }
}
