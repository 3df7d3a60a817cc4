//! `weir certs`: TLS material for a cluster, in one directory — `ca.pem`/`ca.key` (made, or
//! reused when present), `node-<id>.pem`/`.key` per node (naming `weir://node/<id>` and the
//! node's host names) and `client-<user>.pem`/`.key` per client user. Keys are written readable
//! by their owner only.

use std::path::PathBuf;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub(crate) struct CertsArgs {
    /// Where to write (and look for an existing CA).
    #[arg(long, default_value = "weir-certs")]
    dir: PathBuf,
    /// A node certificate: ID=HOST[,HOST...] (repeatable), e.g. 1=weir-1,localhost,127.0.0.1.
    #[arg(long = "node", value_parser = node)]
    nodes: Vec<(u64, Vec<String>)>,
    /// A client certificate for USER (its common name; repeatable).
    #[arg(long = "client")]
    clients: Vec<String>,
}

fn node(text: &str) -> Result<(u64, Vec<String>), String> {
    let (id, hosts) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not ID=HOST[,HOST...]"))?;
    let id: u64 = id
        .parse()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| format!("{id:?} is not a node id (1 or more)"))?;
    let hosts: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect();
    if hosts.is_empty() {
        return Err(format!("node {id} needs at least one host name"));
    }
    Ok((id, hosts))
}

pub(crate) fn run(args: CertsArgs) -> anyhow::Result<()> {
    if args.nodes.is_empty() && args.clients.is_empty() {
        anyhow::bail!("give at least one --node ID=HOSTS or --client USER");
    }
    for user in &args.clients {
        weir_controller_name_check(user)?;
    }
    weir_broker::pki::write_cluster(&args.dir, &args.nodes, &args.clients)
        .with_context(|| format!("writing certificates to {}", args.dir.display()))?;
    println!("CA: {}", args.dir.join("ca.pem").display());
    for (id, hosts) in &args.nodes {
        println!(
            "node {id} ({}): {}",
            hosts.join(", "),
            args.dir.join(format!("node-{id}.pem")).display()
        );
    }
    for user in &args.clients {
        println!(
            "client {user}: {}",
            args.dir.join(format!("client-{user}.pem")).display()
        );
    }
    Ok(())
}

/// A client certificate's file name and common name are the user name: the same rules.
fn weir_controller_name_check(user: &str) -> anyhow::Result<()> {
    if user.is_empty()
        || user.len() > 128
        || !user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
    {
        anyhow::bail!("--client {user:?}: a user name is 1 to 128 of [A-Za-z0-9._@-]");
    }
    Ok(())
}
