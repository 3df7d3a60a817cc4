//! The Python example (`examples/python/`) works against a real cluster, run the way its README
//! tells a user: `run.sh setup` (a venv with the pinned grpcio packages, stubs generated from
//! `proto/` by `grpc_tools.protoc`), then `run.sh example --broker HOST:PORT` against three
//! `weir server` processes — once through the controller leader and once through another node,
//! since any node must serve any request.
//!
//! The venv is kept in `target/python-example/venv` and rebuilt only when `requirements.txt`
//! changes (run.sh keeps a copy in the venv as the marker), so re-runs skip the install. The
//! stubs go to a temporary directory removed at the end. Without `python3` the test fails and
//! says what to install; it never skips.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use weir_proto::v1::MetadataRequest;
use weir_proto::v1::broker_client::BrokerClient;
use weir_tests::process_cluster::ProcessCluster;
use weir_tests::python::{require_python, run, target_dir};

/// Creating the venv downloads the grpcio wheels on a fresh machine.
const SETUP_TIMEOUT: Duration = Duration::from_secs(600);
/// One run of the example (it waits up to its own `--timeout` for the node and leaders).
const EXAMPLE_TIMEOUT: Duration = Duration::from_secs(180);

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples")
        .join("python")
}

/// The node leading the controller group, as `addr` reports it once it knows one.
fn controller(addr: &str, within: Duration) -> anyhow::Result<u64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let what = format!("{addr} to name the controller leader");
    runtime.block_on(weir_tests::eventually(within, &what, || async {
        let mut client = BrokerClient::connect(format!("http://{addr}")).await?;
        let metadata = client.metadata(MetadataRequest::default()).await?;
        match metadata.into_inner().controller {
            0 => bail!("no controller leader known yet"),
            id => Ok(id),
        }
    }))
}

/// The last lines of every node's log, for failure messages.
fn node_logs(cluster: &ProcessCluster) -> String {
    let mut out = String::new();
    for id in cluster.node_ids() {
        let log = std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        out.push_str(&format!("--- node {id} log (last 30 lines) ---\n"));
        for line in &lines[lines.len().saturating_sub(30)..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn python_example_runs_against_any_node() -> anyhow::Result<()> {
    require_python()?;
    let run_sh = example_dir().join("run.sh");
    let venv = target_dir()?.join("python-example").join("venv");
    let stubs = tempfile::tempdir()?;
    let with_env = |command: &mut Command| {
        command
            .env("WEIR_PY_VENV", &venv)
            .env("WEIR_PY_STUBS", stubs.path());
    };

    // 1. The README's first command: venv (reused when unchanged) and stubs.
    let started = Instant::now();
    let mut setup = Command::new("bash");
    setup.arg(&run_sh).arg("setup");
    with_env(&mut setup);
    let setup = run(&mut setup, SETUP_TIMEOUT)?;
    ensure!(
        setup.status.success(),
        "run.sh setup failed: {}",
        setup.describe()
    );
    ensure!(
        stubs.path().join("weir/v1/weir_pb2_grpc.py").is_file(),
        "run.sh setup generated no stubs in {}: {}",
        stubs.path().display(),
        setup.describe()
    );
    eprintln!("run.sh setup: {:?}\n{}", started.elapsed(), setup.stdout);

    // 2. The README's second command, against the controller and against another node.
    let mut cluster = ProcessCluster::start(3)?;
    let controller = controller(&cluster.addr(1), Duration::from_secs(60))?;
    let other = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != controller)
        .context("a node other than the controller")?;
    for (role, node) in [
        ("the controller", controller),
        ("a node that is not the controller", other),
    ] {
        let topic = format!("python-example-{node}");
        let mut example = Command::new("bash");
        example
            .arg(&run_sh)
            .arg("example")
            .args(["--broker", &cluster.addr(node)])
            .args(["--topic", &topic])
            .args(["--timeout", "90"]);
        with_env(&mut example);
        let started = Instant::now();
        let result = run(&mut example, EXAMPLE_TIMEOUT)?;
        println!(
            "example against node {node} ({role}), {:?}:\n{}",
            started.elapsed(),
            result.stdout
        );
        ensure!(
            result.status.success(),
            "the example failed against node {node} ({role}): {}\n{}",
            result.describe(),
            node_logs(&cluster)
        );
        for expected in [
            format!("{} is SERVING", cluster.addr(node)),
            format!(
                "created topic {topic}: 3 partitions, replication factor 3, retention.ms=86400000"
            ),
            "produced 5 records to partition 0 at offsets 0..4 (acks=ALL)".to_string(),
            "produced 3 records to partition 0 at offsets 5..7".to_string(),
            "produced 9 keyed records without a partition".to_string(),
            "fetched partition 0 from the earliest offset".to_string(),
            "replayed partition 0 from offset 2".to_string(),
            "ListOffsets says offset 5, Fetch returned".to_string(),
            "subscribed to partition 0 from offset 6".to_string(),
            format!("described {topic}"),
            "all checks passed".to_string(),
        ] {
            ensure!(
                result.stdout.contains(&expected),
                "the example's output against node {node} lacks {expected:?}: {}",
                result.describe()
            );
        }
    }
    cluster.stop_all()?;

    // 3. Over TLS with a bearer token (the cluster's CA and `weir token create`'s token), against
    //    a secure cluster; without the token the same run is refused as UNAUTHENTICATED.
    let mut secure = ProcessCluster::start_tls(
        3,
        &["--security-enabled", "--security-super-users", "User:admin"],
    )?;
    let ca = secure
        .tls_dir()
        .context("a TLS cluster")?
        .join("ca.pem")
        .display()
        .to_string();
    let token = tokio::runtime::Runtime::new()?.block_on(async {
        use weir_client::access::{Acl, AddAclRequest, CreateTokenRequest, UpsertUserRequest};
        let admin = secure.client(Some("admin"), None)?;
        admin
            .upsert_user(UpsertUserRequest {
                name: "py".into(),
                password: "py-secret".into(),
                mechanisms: vec![],
            })
            .await?;
        admin
            .add_acl(AddAclRequest {
                acl: Some(Acl {
                    principal: "User:py".into(),
                    resource: "topic".into(),
                    pattern: "prefixed".into(),
                    name: "python-example".into(),
                    operation: "all".into(),
                    permission: "allow".into(),
                }),
            })
            .await?;
        let token = admin
            .create_token(CreateTokenRequest {
                user: "py".into(),
                ttl_ms: 0,
                description: "python example".into(),
            })
            .await?
            .token;
        anyhow::Ok(token)
    })?;
    let addr = secure.addr(2);
    let mut example = Command::new("bash");
    example
        .arg(&run_sh)
        .arg("example")
        .args(["--broker", &addr])
        .args(["--topic", "python-example-secure"])
        .args(["--timeout", "90"])
        .args(["--ca", &ca])
        .env("WEIR_TOKEN", &token);
    with_env(&mut example);
    let result = run(&mut example, EXAMPLE_TIMEOUT)?;
    ensure!(
        result.status.success() && result.stdout.contains("all checks passed"),
        "the example over TLS with a token failed: {}\n{}",
        result.describe(),
        node_logs(&secure)
    );
    let mut anonymous = Command::new("bash");
    anonymous
        .arg(&run_sh)
        .arg("example")
        .args(["--broker", &addr])
        .args(["--topic", "python-example-anonymous"])
        .args(["--timeout", "30"])
        .args(["--ca", &ca])
        .env_remove("WEIR_TOKEN");
    with_env(&mut anonymous);
    let refused = run(&mut anonymous, EXAMPLE_TIMEOUT)?;
    ensure!(
        !refused.status.success() && refused.stderr.contains("UNAUTHENTICATED"),
        "the example without a token was not refused as UNAUTHENTICATED: {}",
        refused.describe()
    );
    secure.stop_all()?;
    Ok(())
}
