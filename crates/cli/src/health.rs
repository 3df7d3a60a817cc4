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
}

pub(crate) async fn run(args: HealthArgs) -> anyhow::Result<()> {
    match weir_client::check_health(&args.addr, args.timeout).await? {
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
