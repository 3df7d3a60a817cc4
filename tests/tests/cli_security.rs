//! The security commands as a user runs them: `weir local --secure` (the README's secure
//! cluster), then produce and consume with the credentials it prints; `weir user`, `weir token`,
//! `weir acl`, `weir tenant`, `weir quota`, `weir whoami` and `weir certs`, with right and wrong
//! input (a message naming the problem, a non-zero exit).

use std::time::Duration;

use anyhow::{Context, ensure};
use weir_tests::cli::{LocalCluster, Run, weir_with_env};

/// `weir ARGS --brokers B` with the given credentials in the environment.
fn as_user(
    local: &LocalCluster,
    env: &[(&str, &str)],
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<Run> {
    let brokers = local.brokers();
    weir_with_env(
        &local.binary,
        &[args, &["--brokers", brokers.as_str()]].concat(),
        env,
        stdin,
    )
}

fn ok(run: Run, what: &str) -> anyhow::Result<String> {
    ensure!(
        run.code == Some(0),
        "{what}: exit {:?}: {}",
        run.code,
        run.stderr
    );
    Ok(run.stdout)
}

fn fails(run: &Run, code: i32, message: &str) -> anyhow::Result<()> {
    ensure!(
        run.code == Some(code) && run.stderr.contains(message),
        "expected exit {code} naming {message:?}; got {:?}: {}",
        run.code,
        run.stderr
    );
    Ok(())
}

#[test]
fn a_secure_local_cluster_serves_its_printed_credentials_and_nothing_else() -> anyhow::Result<()> {
    let mut local = LocalCluster::start_with(&["--secure", "--demo"])?;
    let certs = local.data_dir().join("certs");
    let token = weir_tests::eventually_blocking(
        Duration::from_secs(90),
        "weir local --secure to make the demo token",
        || {
            let text = std::fs::read_to_string(certs.join("demo.token"))?;
            ensure!(text.starts_with("weir_"), "no token yet");
            Ok(text.trim().to_string())
        },
    )?;
    let ca = certs.join("ca.pem").display().to_string();
    let admin_cert = certs.join("client-admin.pem").display().to_string();
    let admin_key = certs.join("client-admin.key").display().to_string();
    let demo = [("WEIR_TLS_CA", ca.as_str()), ("WEIR_TOKEN", token.as_str())];

    // The printed credentials: the demo user may create, produce and consume.
    ok(
        as_user(
            &local,
            &demo,
            &["topic", "create", "secure", "-p", "1", "-r", "3"],
            None,
        )?,
        "create",
    )?;
    ok(
        as_user(
            &local,
            &demo,
            &["produce", "secure"],
            Some("one\ntwo\nthree\n"),
        )?,
        "produce",
    )?;
    let read = ok(
        as_user(
            &local,
            &demo,
            &["consume", "secure", "--from", "earliest", "--count", "3"],
            None,
        )?,
        "consume",
    )?;
    ensure!(
        read.lines().collect::<Vec<_>>() == ["one", "two", "three"],
        "{read}"
    );
    let me = ok(as_user(&local, &demo, &["whoami"], None)?, "whoami")?;
    ensure!(me.starts_with("User:demo"), "{me}");

    // Without the token: refused, named. Without TLS: the nodes do not answer plaintext. A token
    // without a CA is refused by the CLI before it leaves the machine.
    let anonymous = as_user(
        &local,
        &[("WEIR_TLS_CA", ca.as_str())],
        &["topic", "list"],
        None,
    )?;
    fails(&anonymous, 1, "no credentials")?;
    let no_ca = as_user(
        &local,
        &[("WEIR_TOKEN", token.as_str())],
        &["topic", "list"],
        None,
    )?;
    fails(&no_ca, 1, "a token is sent only over TLS")?;
    let bad_token = as_user(
        &local,
        &[
            ("WEIR_TLS_CA", ca.as_str()),
            ("WEIR_TOKEN", "weir_0123456789abcdef_nope"),
        ],
        &["topic", "list"],
        None,
    )?;
    fails(&bad_token, 1, "token refused")?;
    let missing_ca = as_user(
        &local,
        &[("WEIR_TLS_CA", "/nonexistent/ca.pem")],
        &["topic", "list"],
        None,
    )?;
    fails(&missing_ca, 1, "/nonexistent/ca.pem")?;

    // The demo user is no administrator.
    let denied = as_user(&local, &demo, &["user", "list"], None)?;
    fails(&denied, 1, "may not")?;

    // The super user (by certificate) manages users, tokens, ACLs, tenants and quotas.
    let admin = [
        ("WEIR_TLS_CA", ca.as_str()),
        ("WEIR_TLS_CERT", admin_cert.as_str()),
        ("WEIR_TLS_KEY", admin_key.as_str()),
    ];
    ok(
        as_user(
            &local,
            &admin,
            &["user", "create", "carol", "--password-stdin"],
            Some("s3cret\n"),
        )?,
        "user create",
    )?;
    let users = ok(
        as_user(&local, &admin, &["user", "list", "--output", "json"], None)?,
        "user list",
    )?;
    let users: serde_json::Value = serde_json::from_str(&users)?;
    ensure!(
        users
            .as_array()
            .is_some_and(|u| u.iter().any(|u| u["name"] == "carol"
                && u["mechanisms"].as_array().is_some_and(|m| m.len() == 2))),
        "{users}"
    );
    let carol = ok(
        as_user(
            &local,
            &admin,
            &["token", "create", "--user", "carol", "--ttl", "1h"],
            None,
        )?,
        "token create",
    )?;
    let carol = carol.trim().to_string();
    let carol_env = [("WEIR_TLS_CA", ca.as_str()), ("WEIR_TOKEN", carol.as_str())];
    fails(
        &as_user(
            &local,
            &carol_env,
            &["consume", "secure", "--from", "earliest", "--count", "1"],
            None,
        )?,
        1,
        "may not",
    )?;
    ok(
        as_user(
            &local,
            &admin,
            &[
                "acl",
                "add",
                "--principal",
                "User:carol",
                "--resource",
                "topic",
                "--name",
                "secure",
                "--operation",
                "read",
            ],
            None,
        )?,
        "acl add",
    )?;
    let acls = ok(
        as_user(
            &local,
            &admin,
            &[
                "acl",
                "list",
                "--principal",
                "User:carol",
                "--output",
                "json",
            ],
            None,
        )?,
        "acl list",
    )?;
    ensure!(acls.contains("\"operation\": \"read\""), "{acls}");
    let first = ok(
        as_user(
            &local,
            &carol_env,
            &["consume", "secure", "--from", "earliest", "--count", "1"],
            None,
        )?,
        "carol reads",
    )?;
    ensure!(first.trim() == "one", "{first}");
    ok(
        as_user(
            &local,
            &admin,
            &[
                "tenant",
                "set",
                "team-c",
                "--prefix",
                "team-c.",
                "--principal",
                "User:carol",
            ],
            None,
        )?,
        "tenant set",
    )?;
    ok(
        as_user(
            &local,
            &admin,
            &["quota", "set", "tenant:team-c", "-l", "partitions=2"],
            None,
        )?,
        "quota set",
    )?;
    let quotas = ok(
        as_user(&local, &admin, &["quota", "list"], None)?,
        "quota list",
    )?;
    ensure!(
        quotas.contains("tenant:team-c") && quotas.contains("partitions=2"),
        "{quotas}"
    );
    let tokens = ok(
        as_user(
            &local,
            &admin,
            &["token", "list", "--user", "carol", "--output", "json"],
            None,
        )?,
        "token list",
    )?;
    ensure!(
        !tokens.contains(&carol),
        "a token list shows a token: {tokens}"
    );
    let id = carol.split('_').nth(1).context("token id")?;
    ok(
        as_user(&local, &admin, &["token", "revoke", id], None)?,
        "token revoke",
    )?;
    fails(
        &as_user(&local, &carol_env, &["whoami"], None)?,
        1,
        "unknown or revoked",
    )?;

    // Wrong input: named, non-zero.
    fails(
        &as_user(
            &local,
            &admin,
            &[
                "acl",
                "add",
                "--principal",
                "User:carol",
                "--resource",
                "topics",
                "--name",
                "x",
                "--operation",
                "read",
            ],
            None,
        )?,
        1,
        "topics",
    )?;
    fails(
        &as_user(
            &local,
            &admin,
            &[
                "acl",
                "add",
                "--resource",
                "topic",
                "--name",
                "x",
                "--operation",
                "read",
            ],
            None,
        )?,
        1,
        "--principal",
    )?;
    fails(
        &as_user(&local, &admin, &["acl", "remove"], None)?,
        1,
        "at least one of",
    )?;
    fails(
        &as_user(
            &local,
            &admin,
            &["quota", "set", "tenant:team-c", "-l", "bogus=1"],
            None,
        )?,
        1,
        "bogus",
    )?;
    fails(
        &as_user(
            &local,
            &admin,
            &["quota", "set", "nobody", "-l", "partitions=1"],
            None,
        )?,
        1,
        "nobody",
    )?;
    fails(
        &as_user(
            &local,
            &admin,
            &["user", "create", "bad name", "--password-stdin"],
            Some("pw\n"),
        )?,
        1,
        "bad name",
    )?;
    fails(
        &as_user(&local, &admin, &["user", "create", "dave"], None)?,
        1,
        "WEIR_USER_PASSWORD",
    )?;
    fails(
        &as_user(
            &local,
            &admin,
            &["token", "create", "--user", "nobody"],
            None,
        )?,
        1,
        "nobody",
    )?;
    fails(
        &as_user(
            &local,
            &admin,
            &[
                "tenant",
                "set",
                "t2",
                "--prefix",
                "team-c.x",
                "--principal",
                "User:x",
            ],
            None,
        )?,
        1,
        "team-c",
    )?;

    // The demo runs beside all this (it may wait for the third node to register before its
    // topic can have three replicas); its closing lines name the credentials.
    local.wait_for_output("try, in another terminal", Duration::from_secs(120))?;
    let printed = local.stop()?;
    ensure!(!printed.contains("demo failed"), "{printed}");
    ensure!(
        printed.contains(&format!("export WEIR_TOKEN={token}")),
        "{printed}"
    );
    ensure!(printed.contains("export WEIR_TLS_CA="), "{printed}");
    ensure!(printed.contains("demo: produced 10 records"), "{printed}");
    Ok(())
}

#[test]
fn weir_certs_makes_a_cluster_pki_and_names_bad_input() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let binary = weir_tests::process_cluster::weir_binary()?;
    let out = dir.path().join("pki");
    let out_text = out.display().to_string();
    let run = weir_with_env(
        &binary,
        &[
            "certs",
            "--dir",
            &out_text,
            "--node",
            "1=weir-1,localhost,127.0.0.1",
            "--client",
            "admin",
        ],
        &[],
        None,
    )?;
    ensure!(run.code == Some(0), "{}", run.stderr);
    for file in [
        "ca.pem",
        "ca.key",
        "node-1.pem",
        "node-1.key",
        "client-admin.pem",
        "client-admin.key",
    ] {
        ensure!(out.join(file).exists(), "{file} missing");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("node-1.key"))?
        .permissions()
        .mode()
        & 0o777;
    ensure!(mode == 0o600, "a key is readable by others: {mode:o}");
    for (args, message) in [
        (vec!["certs", "--dir", out_text.as_str()], "--node"),
        (
            vec!["certs", "--dir", out_text.as_str(), "--node", "0=localhost"],
            "not a node id",
        ),
        (
            vec!["certs", "--dir", out_text.as_str(), "--node", "2"],
            "ID=HOST",
        ),
        (
            vec!["certs", "--dir", out_text.as_str(), "--client", "bad/name"],
            "bad/name",
        ),
    ] {
        let run = weir_with_env(&binary, &args, &[], None)?;
        ensure!(
            run.code != Some(0) && run.stderr.contains(message),
            "{args:?}: {:?} {}",
            run.code,
            run.stderr
        );
    }
    Ok(())
}

/// A Ctrl-C or SIGTERM while `weir local` is still setting up (certificates, the demo) stops its
/// nodes too: none is left running.
#[test]
fn stopping_weir_local_during_its_set_up_stops_its_nodes() -> anyhow::Result<()> {
    let mut local = LocalCluster::start_with(&["--secure", "--demo"])?;
    weir_tests::eventually_blocking(Duration::from_secs(60), "node 1 to listen", || {
        std::net::TcpStream::connect(local.addr(0))?;
        Ok(())
    })?;
    // The demo and the secure set-up take several seconds: this lands in the middle.
    local.stop()?;
    for i in 0..3 {
        let addr = local.addr(i);
        weir_tests::eventually_blocking(
            Duration::from_secs(30),
            &format!("node {} at {addr} to stop", i + 1),
            || {
                ensure!(
                    std::net::TcpStream::connect(&addr).is_err(),
                    "{addr} still accepts connections"
                );
                Ok(())
            },
        )?;
    }
    Ok(())
}
