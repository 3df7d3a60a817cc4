//! `weir health`: asks one node for its gRPC health and exits 0 only when it is SERVING. Made for
//! container health checks (the image has no shell and no other tools) and for scripts.

use std::time::Duration;

use anyhow::bail;
use weir_client::NodeHealth;

#[derive(Debug, clap::Args)]
pub(crate) struct HealthArgs {
    /// The node to ask, HOST:PORT.
    #[arg(long, env = "WEIR_HEALTH_ADDR", default_value = "127.0.0.1:9092")]
    addr: String,
    /// Give up after this long (seconds, or like `500ms`).
    #[arg(long, default_value = "2", value_parser = crate::bench::parse_duration)]
    timeout: Duration,
    /// The cluster's CA certificate (PEM), for a node that serves TLS.
    #[arg(long, env = "WEIR_TLS_CA", value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
}

pub(crate) async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let security = weir_client::Security {
        tls: match &args.tls_ca {
            Some(ca) => Some(weir_client::TlsOptions::from_files(ca, None, None)?),
            None => None,
        },
        token: None,
    };
    match weir_client::check_health_with(&args.addr, args.timeout, &security).await? {
        NodeHealth::Serving => {
            println!("{}: SERVING", args.addr);
            Ok(())
        }
        NodeHealth::NotServing => bail!(
            "{}: NOT_SERVING (starting, stopping, or without the cluster metadata yet)",
            args.addr
        ),
        NodeHealth::Other(code) => bail!("{}: health status {code}, not SERVING", args.addr),
    }
}
