//! Authentication, authorization, tenants and audit on a secure cluster of `weir server`
//! processes (TLS, `--security-enabled`, super user `User:admin` by client certificate):
//! - every RPC: no credentials → UNAUTHENTICATED; a user without an ACL → PERMISSION_DENIED
//!   (listings are filtered instead); with the ACL → success;
//! - revoked, expired and made-up tokens are refused; a client that sends the forwarding
//!   principal header itself gains nothing, while a call forwarded between nodes keeps its
//!   caller's rights;
//! - tenants confine their principals to their prefix and their partitions quota;
//! - the audit log records failed authentications, denials and changes.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tonic::Code;
use weir_client::access::{
    Acl, AddAclRequest, CreateTokenRequest, DeleteUserRequest, ListAclsRequest, ListTokensRequest,
    ListUsersRequest, RevokeTokenRequest, SetQuotaRequest, Tenant, UpsertTenantRequest,
    UpsertUserRequest, WhoAmIRequest,
};
use weir_client::{Client, ClientError, HeartbeatRequest, PartitionOffset, Start};
use weir_format::batch::{BatchBuilder, Compression};
use weir_tests::eventually;
use weir_tests::process_cluster::ProcessCluster;

const WAIT: Duration = Duration::from_secs(60);

const SECURE: &[&str] = &["--security-enabled", "--security-super-users", "User:admin"];

fn code<T: std::fmt::Debug>(result: &Result<T, ClientError>) -> Option<Code> {
    match result {
        Err(err) => err.code(),
        Ok(_) => Some(Code::Ok),
    }
}

fn batch(value: &str) -> anyhow::Result<Bytes> {
    let mut builder = BatchBuilder::new(Compression::None);
    builder.push(0, None, Some(value.as_bytes()), &[]);
    builder.build().context("an empty batch")
}

async fn secure_cluster() -> anyhow::Result<(ProcessCluster, Client)> {
    let cluster = ProcessCluster::start_tls(3, SECURE)?;
    for id in cluster.node_ids() {
        cluster.wait_serving(id, WAIT).await?;
    }
    let admin = cluster.client(Some("admin"), None)?;
    Ok((cluster, admin))
}

async fn user_token(admin: &Client, name: &str) -> anyhow::Result<String> {
    admin
        .upsert_user(UpsertUserRequest {
            name: name.into(),
            password: format!("{name}-secret"),
            mechanisms: vec![],
        })
        .await?;
    Ok(admin
        .create_token(CreateTokenRequest {
            user: name.into(),
            ttl_ms: 0,
            description: "test".into(),
        })
        .await?
        .token)
}

async fn allow(
    admin: &Client,
    principal: &str,
    resource: &str,
    name: &str,
    op: &str,
) -> anyhow::Result<()> {
    admin
        .add_acl(AddAclRequest {
            acl: Some(Acl {
                principal: principal.into(),
                resource: resource.into(),
                pattern: "literal".into(),
                name: name.into(),
                operation: op.into(),
                permission: "allow".into(),
            }),
        })
        .await?;
    Ok(())
}

/// One call of every RPC, as `client`; the code each answered with (by name).
async fn every_rpc(client: &Client) -> Vec<(&'static str, Option<Code>)> {
    let t = "orders";
    let g = "billing";
    let mut out = Vec::new();
    out.push((
        "Metadata(topic)",
        code(&client.metadata(&[t.to_string()]).await),
    ));
    out.push((
        "CreateTopic",
        code(&client.create_topic("new-topic", 1, 1).await),
    ));
    out.push(("DescribeTopic", code(&client.describe_topic(t).await)));
    out.push(("DeleteTopic", code(&client.delete_topic("doomed").await)));
    let produced = match batch("x") {
        Ok(b) => code(&client.produce_batch(t, 0, b).await),
        Err(_) => None,
    };
    out.push(("Produce", produced));
    out.push(("Fetch", code(&client.fetch(t, 0, 0, 1 << 20).await)));
    out.push(("ListOffsets", code(&client.list_offsets(t, 0, None).await)));
    out.push(("InitProducer", code(&client.init_producer().await)));
    let heartbeat = HeartbeatRequest {
        group: g.into(),
        member_id: String::new(),
        topics: vec![t.into()],
        owned: vec![],
        session_timeout_ms: 10_000,
        client_id: "security-test".into(),
    };
    out.push((
        "Heartbeat",
        code(
            &client
                .heartbeat(
                    heartbeat,
                    tokio::time::Instant::now() + Duration::from_secs(10),
                )
                .await,
        ),
    ));
    out.push(("LeaveGroup", code(&client.leave_group(g, "nobody").await)));
    let offsets = [PartitionOffset {
        topic: t.into(),
        partition: 0,
        offset: 0,
    }];
    out.push((
        "CommitOffsets",
        code(&client.commit_offsets(g, "", &offsets).await),
    ));
    out.push((
        "FetchOffsets",
        code(&client.fetch_offsets(g, &[t.to_string()]).await),
    ));
    out.push(("DescribeGroup", code(&client.describe_group(g).await)));
    out.push((
        "ResetOffsets",
        code(&client.reset_offsets(g, t, &[], Start::Earliest).await),
    ));
    out.push((
        "ReassignPartition",
        code(&client.reassign_partition(t, 0, &[1]).await),
    ));
    out.push(("Rebalance", code(&client.rebalance(1).await)));
    out.push((
        "DecommissionBroker",
        code(&client.decommission_broker(9).await),
    ));
    out.push((
        "ListUsers",
        code(&client.list_users(ListUsersRequest {}).await),
    ));
    out.push((
        "UpsertUser",
        code(
            &client
                .upsert_user(UpsertUserRequest {
                    name: "mallory".into(),
                    password: "pw".into(),
                    mechanisms: vec![],
                })
                .await,
        ),
    ));
    out.push((
        "DeleteUser",
        code(
            &client
                .delete_user(DeleteUserRequest { name: "bob".into() })
                .await,
        ),
    ));
    out.push((
        "CreateToken(other user)",
        code(
            &client
                .create_token(CreateTokenRequest {
                    user: "bob".into(),
                    ttl_ms: 0,
                    description: String::new(),
                })
                .await,
        ),
    ));
    out.push((
        "ListAcls",
        code(&client.list_acls(ListAclsRequest { filter: None }).await),
    ));
    out.push((
        "AddAcl",
        code(
            &client
                .add_acl(AddAclRequest {
                    acl: Some(Acl {
                        principal: "User:mallory".into(),
                        resource: "cluster".into(),
                        pattern: "literal".into(),
                        name: "kafka-cluster".into(),
                        operation: "all".into(),
                        permission: "allow".into(),
                    }),
                })
                .await,
        ),
    ));
    out.push((
        "SetQuota",
        code(
            &client
                .set_quota(SetQuotaRequest {
                    entity: "user:alice".into(),
                    limits: [("partitions".to_string(), "1000".to_string())].into(),
                })
                .await,
        ),
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_needs_an_identity_and_an_acl() -> anyhow::Result<()> {
    let (cluster, admin) = secure_cluster().await?;
    admin.create_topic("orders", 1, 3).await?;
    admin.create_topic("doomed", 1, 1).await?;
    admin.create_topic("secret-plans", 1, 1).await?;
    let alice = user_token(&admin, "alice").await?;
    user_token(&admin, "bob").await?;

    // No credentials at all: every call is UNAUTHENTICATED.
    let anonymous = cluster.client(None, None)?;
    for (rpc, code) in every_rpc(&anonymous).await {
        assert_eq!(
            code,
            Some(Code::Unauthenticated),
            "{rpc} without credentials"
        );
    }
    let who = anonymous.who_am_i(WhoAmIRequest {}).await;
    assert_eq!(
        who.err().and_then(|e| e.code()),
        Some(Code::Unauthenticated)
    );

    // A valid identity without ACLs: every call is PERMISSION_DENIED; listings are empty.
    let as_alice = cluster.client(None, Some(&alice))?;
    assert_eq!(
        as_alice.who_am_i(WhoAmIRequest {}).await?.principal,
        "User:alice"
    );
    for (rpc, code) in every_rpc(&as_alice).await {
        assert_eq!(
            code,
            Some(Code::PermissionDenied),
            "{rpc} as alice without ACLs"
        );
    }
    assert!(
        as_alice.list_topics().await?.is_empty(),
        "alice sees topics she may not describe"
    );
    assert!(as_alice.metadata(&[]).await?.topics.is_empty());
    assert!(as_alice.list_groups().await?.is_empty());
    // Her own tokens she may list.
    let own = as_alice
        .list_tokens(ListTokensRequest {
            user: String::new(),
        })
        .await?;
    assert!(own.tokens.iter().all(|t| t.user == "alice") && own.tokens.len() == 1);

    // Her certificate (common name alice) is the same principal.
    let by_cert = cluster.client(Some("alice"), None)?;
    assert_eq!(
        by_cert.who_am_i(WhoAmIRequest {}).await?.principal,
        "User:alice"
    );

    // With ACLs: the calls on what they name succeed.
    allow(&admin, "User:alice", "topic", "orders", "all").await?;
    allow(&admin, "User:alice", "group", "billing", "all").await?;
    let listed: Vec<String> = as_alice
        .list_topics()
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(
        listed,
        vec!["orders".to_string()],
        "alice sees only her topic"
    );
    as_alice.describe_topic("orders").await?;
    as_alice.produce_batch("orders", 0, batch("hello")?).await?;
    let fetched = as_alice.fetch("orders", 0, 0, 1 << 20).await?;
    assert_eq!(fetched.records.len(), 1);
    as_alice.list_offsets("orders", 0, None).await?;
    as_alice.init_producer().await?;
    as_alice
        .commit_offsets(
            "billing",
            "",
            &[PartitionOffset {
                topic: "orders".into(),
                partition: 0,
                offset: 1,
            }],
        )
        .await?;
    let committed = as_alice
        .fetch_offsets("billing", &["orders".to_string()])
        .await?;
    assert_eq!(committed.first().map(|o| o.offset), Some(1));
    as_alice.describe_group("billing").await?;
    // Still nothing else: another topic, the cluster, other users.
    assert_eq!(
        code(&as_alice.describe_topic("secret-plans").await),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        code(&as_alice.rebalance(1).await),
        Some(Code::PermissionDenied)
    );
    // Internal topics are written only by the cluster, whatever the ACLs say.
    allow(&admin, "User:alice", "topic", "*", "write").await?;
    let internal = as_alice
        .produce_batch("__consumer_offsets", 0, batch("forged")?)
        .await;
    assert_eq!(
        code(&internal),
        Some(Code::PermissionDenied),
        "{internal:?}"
    );

    // A deny wins over the allows.
    admin
        .add_acl(AddAclRequest {
            acl: Some(Acl {
                principal: "User:alice".into(),
                resource: "topic".into(),
                pattern: "prefixed".into(),
                name: "ord".into(),
                operation: "read".into(),
                permission: "deny".into(),
            }),
        })
        .await?;
    assert_eq!(
        code(&as_alice.fetch("orders", 0, 0, 1 << 20).await),
        Some(Code::PermissionDenied)
    );

    // The super user could do all of it (spot checks of the cluster-wide ones).
    admin.rebalance(1).await?;
    admin.list_users(ListUsersRequest {}).await?;
    drop(cluster);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_revoked_expired_or_forged_are_refused_and_audited() -> anyhow::Result<()> {
    let (cluster, admin) = secure_cluster().await?;
    let token = user_token(&admin, "alice").await?;
    let alice = cluster.client(None, Some(&token))?;
    assert_eq!(
        alice.who_am_i(WhoAmIRequest {}).await?.principal,
        "User:alice"
    );

    // Revoked.
    let id = token
        .strip_prefix("weir_")
        .and_then(|rest| rest.split('_').next())
        .context("token id")?
        .to_string();
    admin.revoke_token(RevokeTokenRequest { id }).await?;
    let revoked = alice.who_am_i(WhoAmIRequest {}).await;
    let message = revoked
        .as_ref()
        .err()
        .map(ToString::to_string)
        .unwrap_or_default();
    assert_eq!(code(&revoked), Some(Code::Unauthenticated));
    assert!(message.contains("unknown or revoked"), "{message}");

    // Expired (a 1 ms lifetime).
    let short = admin
        .create_token(CreateTokenRequest {
            user: "alice".into(),
            ttl_ms: 1,
            description: String::new(),
        })
        .await?
        .token;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let expired = cluster
        .client(None, Some(&short))?
        .who_am_i(WhoAmIRequest {})
        .await;
    assert_eq!(code(&expired), Some(Code::Unauthenticated));
    assert!(format!("{expired:?}").contains("expired"), "{expired:?}");

    // Made up: right shape, wrong secret; and the wrong shape.
    let forged = format!("{}AAAA", &short[..short.len() - 4]);
    for bad in [forged.as_str(), "weir_nonsense"] {
        let refused = cluster
            .client(None, Some(bad))?
            .who_am_i(WhoAmIRequest {})
            .await;
        assert_eq!(code(&refused), Some(Code::Unauthenticated), "{bad}");
    }
    // A deleted user's tokens die with it.
    let bobs = user_token(&admin, "bob").await?;
    admin
        .delete_user(DeleteUserRequest { name: "bob".into() })
        .await?;
    let gone = cluster
        .client(None, Some(&bobs))?
        .who_am_i(WhoAmIRequest {})
        .await;
    assert_eq!(code(&gone), Some(Code::Unauthenticated));

    // The audit log of a node has the refusals and the changes, as JSON lines, and no token.
    let log_path = cluster.data_dir(1).join("audit.log");
    let lines = eventually(WAIT, "the audit log to hold the refusals", || async {
        let text = std::fs::read_to_string(&log_path)?;
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        anyhow::ensure!(
            events
                .iter()
                .any(|e| e["operation"] == "authenticate" && e["result"] == "denied"),
            "no failed authentication yet"
        );
        Ok(text)
    })
    .await;
    // Refusals go to the node that was asked; changes to the node that made them. Check the
    // union over the nodes.
    let mut all = lines.unwrap_or_default();
    for id in [2, 3] {
        all.push_str(
            &std::fs::read_to_string(cluster.data_dir(id).join("audit.log")).unwrap_or_default(),
        );
    }
    assert!(all.contains("\"operation\":\"revoke-token\""), "{all}");
    assert!(all.contains("\"operation\":\"upsert-user\""), "{all}");
    assert!(all.contains("\"operation\":\"delete-user\""), "{all}");
    assert!(
        !all.contains(&token) && !all.contains(&short) && !all.contains("alice-secret"),
        "a secret reached the audit log"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_calls_keep_their_caller_and_clients_cannot_claim_one() -> anyhow::Result<()> {
    let (cluster, admin) = secure_cluster().await?;
    admin.create_topic("events", 1, 1).await?;
    let token = user_token(&admin, "alice").await?;
    allow(&admin, "User:alice", "topic", "events", "write").await?;

    // Send straight to each node with a raw client: two of them do not host the partition and
    // forward the call to the one that does, naming alice; each write is allowed.
    let tls_dir = cluster.tls_dir().context("TLS")?;
    let ca = std::fs::read(tls_dir.join("ca.pem"))?;
    for addr in cluster.brokers() {
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
                    .domain_name("127.0.0.1"),
            )?
            .connect()
            .await?;
        let mut broker = weir_proto::v1::broker_client::BrokerClient::new(channel.clone());
        let produce = |principal: Option<&str>| -> anyhow::Result<tonic::Request<weir_proto::v1::ProduceRequest>> {
            let mut request = tonic::Request::new(weir_proto::v1::ProduceRequest {
                topic: "events".into(),
                partition: Some(0),
                records: vec![weir_proto::v1::Record {
                    value: Some(Bytes::from_static(b"v")),
                    ..Default::default()
                }],
                acks: weir_proto::v1::Acks::All as i32,
                ..Default::default()
            });
            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
            if let Some(principal) = principal {
                request.metadata_mut().insert("weir-principal", principal.parse()?);
            }
            Ok(request)
        };
        broker
            .produce(produce(None)?)
            .await
            .with_context(|| format!("alice via {addr}"))?;

        // Claiming to be the super user (as forwarded calls do) changes nothing: alice may not
        // create topics.
        let mut admin_api = weir_proto::v1::admin_client::AdminClient::new(channel);
        let mut create = tonic::Request::new(weir_proto::v1::CreateTopicRequest {
            name: format!("claimed-{}", addr.replace([':', '.'], "-")),
            partitions: 1,
            replication_factor: 1,
            ..Default::default()
        });
        create
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        create
            .metadata_mut()
            .insert("weir-principal", "User:admin".parse()?);
        let refused = admin_api.create_topic(create).await;
        assert_eq!(
            refused.as_ref().err().map(tonic::Status::code),
            Some(Code::PermissionDenied),
            "{refused:?}"
        );
        // Without a token, the header alone is no identity at all.
        let mut bare = tonic::Request::new(weir_proto::v1::MetadataRequest { topics: vec![] });
        bare.metadata_mut()
            .insert("weir-principal", "User:admin".parse()?);
        let refused = weir_proto::v1::broker_client::BrokerClient::new(
            tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
                        .domain_name("127.0.0.1"),
                )?
                .connect()
                .await?,
        )
        .metadata(bare)
        .await;
        assert_eq!(refused.err().map(|s| s.code()), Some(Code::Unauthenticated));
    }
    let end = admin.list_offsets("events", 0, None).await?.high_watermark;
    assert_eq!(end, 3, "one record through each node");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_confine_their_principals_and_cap_their_partitions() -> anyhow::Result<()> {
    let (cluster, admin) = secure_cluster().await?;
    let token = user_token(&admin, "alice").await?;
    admin
        .upsert_tenant(UpsertTenantRequest {
            tenant: Some(Tenant {
                name: "team-a".into(),
                prefix: "team-a.".into(),
                principals: vec!["User:alice".into()],
            }),
        })
        .await?;
    admin
        .set_quota(SetQuotaRequest {
            entity: "tenant:team-a".into(),
            limits: [("partitions".to_string(), "4".to_string())].into(),
        })
        .await?;
    // ACLs allow alice everything on every topic; the tenant still confines her.
    allow(&admin, "User:alice", "topic", "*", "all").await?;
    let alice = cluster.client(None, Some(&token))?;
    let who = alice.who_am_i(WhoAmIRequest {}).await?;
    assert_eq!(who.tenant, "team-a");
    alice.create_topic("team-a.orders", 3, 1).await?;
    let outside = alice.create_topic("team-b.orders", 1, 1).await;
    assert_eq!(code(&outside), Some(Code::PermissionDenied), "{outside:?}");
    assert!(
        format!("{outside:?}").contains("outside tenant team-a"),
        "{outside:?}"
    );
    let over = alice.create_topic("team-a.more", 2, 1).await;
    assert_eq!(code(&over), Some(Code::ResourceExhausted), "{over:?}");
    assert!(
        format!("{over:?}").contains("at most 4 partitions"),
        "{over:?}"
    );
    alice.create_topic("team-a.one-more", 1, 1).await?;
    Ok(())
}
