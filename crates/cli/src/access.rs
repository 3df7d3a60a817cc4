//! `weir user|token|acl|tenant|quota|whoami`: the cluster's users, bearer tokens, certificate
//! mappings, ACLs, tenants and quotas (the Security service; docs/security.md). Every listing
//! also prints as `--output json`. Passwords come from `--password-stdin` or the
//! `WEIR_USER_PASSWORD` variable, never from a flag; a new token is printed once.

use std::collections::HashMap;
use std::io::Read;

use anyhow::{Context, bail};
use weir_client::access::{
    Acl, AclFilter, AddAclRequest, CreateTokenRequest, DeleteTenantRequest, DeleteUserRequest,
    ListAclsRequest, ListCertificateMappingsRequest, ListQuotasRequest, ListTenantsRequest,
    ListTokensRequest, ListUsersRequest, MapCertificateRequest, RemoveAclsRequest,
    RemoveQuotaRequest, RevokeTokenRequest, SetQuotaRequest, Tenant, UnmapCertificateRequest,
    UpsertTenantRequest, UpsertUserRequest, WhoAmIRequest,
};

use crate::table::{Table, or_dash};
use crate::{Brokers, OutputArg, key_value, print_json};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum UserCommand {
    /// Create a user, or set its password (salted SCRAM-SHA-256 and -512 credentials).
    Create {
        name: String,
        /// Read the password from standard input (else from WEIR_USER_PASSWORD).
        #[arg(long)]
        password_stdin: bool,
        /// SCRAM-SHA-256 and/or SCRAM-SHA-512 (repeatable) [default: both].
        #[arg(long = "mechanism")]
        mechanisms: Vec<String>,
    },
    /// Delete a user, its tokens and its certificate mappings (its ACLs stay).
    Delete { name: String },
    /// List users and their SCRAM mechanisms.
    List,
    /// Map client certificates to a user: MATCHER is subject:<DN>, san:<name> or cn:<name>.
    MapCert { matcher: String, user: String },
    /// Remove a certificate mapping.
    UnmapCert { matcher: String },
    /// List certificate mappings (without one, a certificate's common name is its user).
    Mappings,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenCommand {
    /// Make a bearer token (printed once; the cluster keeps only its hash).
    Create {
        /// The user [default: yourself].
        #[arg(long)]
        user: Option<String>,
        /// Expire after this long (like 30d, 12h) [default: never].
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Revoke a token by its id (the part after `weir_`).
    Revoke { id: String },
    /// List tokens (ids, users, expiry; never the tokens themselves).
    List {
        #[arg(long)]
        user: Option<String>,
    },
}

/// The parts of an ACL, as flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AclArgs {
    /// User:NAME, or * for everyone.
    #[arg(long)]
    principal: Option<String>,
    /// topic, group or cluster.
    #[arg(long)]
    resource: Option<String>,
    /// The resource name (* for all; the cluster is kafka-cluster).
    #[arg(long)]
    name: Option<String>,
    /// literal or prefixed.
    #[arg(long)]
    pattern: Option<String>,
    /// all, read, write, create, delete, alter, describe or cluster-action.
    #[arg(long)]
    operation: Option<String>,
    /// allow or deny (deny wins).
    #[arg(long)]
    permission: Option<String>,
}

impl AclArgs {
    fn filter(&self) -> AclFilter {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        AclFilter {
            principal: text(&self.principal),
            resource: text(&self.resource),
            pattern: text(&self.pattern),
            name: text(&self.name),
            operation: text(&self.operation),
            permission: text(&self.permission),
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AclCommand {
    /// Add an ACL (--principal, --resource, --operation required; --name defaults to kafka-cluster
    /// for the cluster).
    Add(AclArgs),
    /// Remove every ACL matching the flags given (at least one).
    Remove(AclArgs),
    /// List ACLs matching the flags given (all without flags).
    List(AclArgs),
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum TenantCommand {
    /// Create or change a tenant: its topic and group name prefix and its principals.
    Set {
        name: String,
        #[arg(long)]
        prefix: String,
        /// User:NAME (repeatable).
        #[arg(long = "principal")]
        principals: Vec<String>,
    },
    /// Delete a tenant (and its quota).
    Delete {
        name: String,
    },
    List,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum QuotaCommand {
    /// Set limits of user:NAME or tenant:NAME: produce.bytes.per.sec, fetch.bytes.per.sec,
    /// requests.per.sec (throttled, enforced by each node on the calls sent to it), partitions,
    /// retained.bytes (refused past them with RESOURCE_EXHAUSTED). See docs/api.md, "Quotas".
    Set {
        entity: String,
        #[arg(long = "limit", short = 'l', value_parser = key_value, required = true)]
        limits: Vec<(String, String)>,
    },
    /// Remove an entity's quota.
    Remove {
        entity: String,
    },
    List,
}

fn password(from_stdin: bool) -> anyhow::Result<String> {
    let password = if from_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the password from standard input")?;
        text.trim_end_matches(['\r', '\n']).to_string()
    } else {
        std::env::var("WEIR_USER_PASSWORD").map_err(|_| {
            anyhow::anyhow!(
                "give the password on standard input (--password-stdin) or in WEIR_USER_PASSWORD"
            )
        })?
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(password)
}

fn time(ms: u64) -> String {
    if ms == 0 {
        return "never".into();
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

pub(crate) async fn user(
    command: UserCommand,
    brokers: Brokers,
    output: OutputArg,
) -> anyhow::Result<()> {
    let client = brokers.client()?;
    match command {
        UserCommand::Create {
            name,
            password_stdin,
            mechanisms,
        } => {
            let password = password(password_stdin)?;
            let answer = client
                .upsert_user(UpsertUserRequest {
                    name: name.clone(),
                    password,
                    mechanisms,
                })
                .await?;
            let verb = if answer.created { "created" } else { "updated" };
            println!("user {name} {verb}");
        }
        UserCommand::Delete { name } => {
            client
                .delete_user(DeleteUserRequest { name: name.clone() })
                .await?;
            println!("user {name} deleted");
        }
        UserCommand::List => {
            let users = client.list_users(ListUsersRequest {}).await?.users;
            if output.json() {
                return print_json(&serde_json::json!(
                    users
                        .iter()
                        .map(|u| serde_json::json!({"name": u.name, "mechanisms": u.mechanisms}))
                        .collect::<Vec<_>>()
                ));
            }
            let mut table = Table::new(&["USER", "MECHANISMS"]);
            for u in &users {
                table.row([u.name.clone(), u.mechanisms.join(",")]);
            }
            table.print();
        }
        UserCommand::MapCert { matcher, user } => {
            client
                .map_certificate(MapCertificateRequest {
                    matcher: matcher.clone(),
                    user: user.clone(),
                })
                .await?;
            println!("certificates matching {matcher} are user {user}");
        }
        UserCommand::UnmapCert { matcher } => {
            client
                .unmap_certificate(UnmapCertificateRequest {
                    matcher: matcher.clone(),
                })
                .await?;
            println!("mapping {matcher} removed");
        }
        UserCommand::Mappings => {
            let mappings = client
                .list_certificate_mappings(ListCertificateMappingsRequest {})
                .await?
                .mappings;
            if output.json() {
                return print_json(&serde_json::json!(
                    mappings
                        .iter()
                        .map(|m| serde_json::json!({"matcher": m.matcher, "user": m.user}))
                        .collect::<Vec<_>>()
                ));
            }
            let mut table = Table::new(&["MATCHER", "USER"]);
            for m in &mappings {
                table.row([m.matcher.clone(), m.user.clone()]);
            }
            table.print();
        }
    }
    Ok(())
}

pub(crate) async fn token(
    command: TokenCommand,
    brokers: Brokers,
    output: OutputArg,
) -> anyhow::Result<()> {
    let client = brokers.client()?;
    match command {
        TokenCommand::Create {
            user,
            ttl,
            description,
        } => {
            let answer = client
                .create_token(CreateTokenRequest {
                    user: user.unwrap_or_default(),
                    ttl_ms: ttl.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    description,
                })
                .await?;
            if output.json() {
                let info = answer.info.unwrap_or_default();
                return print_json(&serde_json::json!({
                    "token": answer.token,
                    "id": info.id,
                    "user": info.user,
                    "expires_ms": (info.expires_ms > 0).then_some(info.expires_ms),
                }));
            }
            // Only the token on stdout, for `export WEIR_TOKEN=$(weir token create)`.
            println!("{}", answer.token);
        }
        TokenCommand::Revoke { id } => {
            let id = id
                .strip_prefix("weir_")
                .and_then(|rest| rest.split('_').next())
                .unwrap_or(&id)
                .to_string();
            client
                .revoke_token(RevokeTokenRequest { id: id.clone() })
                .await?;
            println!("token {id} revoked");
        }
        TokenCommand::List { user } => {
            let tokens = client
                .list_tokens(ListTokensRequest {
                    user: user.unwrap_or_default(),
                })
                .await?
                .tokens;
            if output.json() {
                return print_json(&serde_json::json!(
                    tokens
                        .iter()
                        .map(|t| serde_json::json!({
                            "id": t.id, "user": t.user, "created_ms": t.created_ms,
                            "expires_ms": (t.expires_ms > 0).then_some(t.expires_ms),
                            "description": t.description,
                        }))
                        .collect::<Vec<_>>()
                ));
            }
            let mut table = Table::new(&["ID", "USER", "CREATED", "EXPIRES", "DESCRIPTION"]);
            for t in &tokens {
                table.row([
                    t.id.clone(),
                    t.user.clone(),
                    time(t.created_ms),
                    time(t.expires_ms),
                    or_dash(&t.description).to_string(),
                ]);
            }
            table.print();
        }
    }
    Ok(())
}

fn acl_json(acl: &Acl) -> serde_json::Value {
    serde_json::json!({
        "principal": acl.principal, "resource": acl.resource, "pattern": acl.pattern,
        "name": acl.name, "operation": acl.operation, "permission": acl.permission,
    })
}

pub(crate) async fn acl(
    command: AclCommand,
    brokers: Brokers,
    output: OutputArg,
) -> anyhow::Result<()> {
    let client = brokers.client()?;
    match command {
        AclCommand::Add(args) => {
            let required = |v: &Option<String>, flag: &str| {
                v.clone().with_context(|| format!("acl add needs --{flag}"))
            };
            let resource = required(&args.resource, "resource")?;
            let name = match (&args.name, resource.as_str()) {
                (Some(name), _) => name.clone(),
                (None, "cluster") => "kafka-cluster".into(),
                (None, _) => bail!("acl add needs --name for a {resource}"),
            };
            let acl = Acl {
                principal: required(&args.principal, "principal")?,
                resource,
                pattern: args.pattern.clone().unwrap_or_else(|| "literal".into()),
                name,
                operation: required(&args.operation, "operation")?,
                permission: args.permission.clone().unwrap_or_else(|| "allow".into()),
            };
            let answer = client
                .add_acl(AddAclRequest {
                    acl: Some(acl.clone()),
                })
                .await?;
            let what = if answer.added {
                "added"
            } else {
                "exists already"
            };
            println!(
                "{} {} {} on {} {} {:?}: {what}",
                acl.permission, acl.principal, acl.operation, acl.resource, acl.pattern, acl.name
            );
        }
        AclCommand::Remove(args) => {
            let filter = args.filter();
            if filter == AclFilter::default() {
                bail!(
                    "acl remove needs at least one of --principal, --resource, --name, --pattern, --operation, --permission (it removes every ACL that matches)"
                );
            }
            let removed = client
                .remove_acls(RemoveAclsRequest {
                    filter: Some(filter),
                })
                .await?
                .removed;
            println!("{removed} ACL(s) removed");
        }
        AclCommand::List(args) => {
            let acls = client
                .list_acls(ListAclsRequest {
                    filter: Some(args.filter()),
                })
                .await?
                .acls;
            if output.json() {
                return print_json(&serde_json::json!(
                    acls.iter().map(acl_json).collect::<Vec<_>>()
                ));
            }
            let mut table = Table::new(&[
                "PRINCIPAL",
                "PERMISSION",
                "OPERATION",
                "RESOURCE",
                "PATTERN",
                "NAME",
            ]);
            for a in &acls {
                table.row([
                    a.principal.clone(),
                    a.permission.clone(),
                    a.operation.clone(),
                    a.resource.clone(),
                    a.pattern.clone(),
                    a.name.clone(),
                ]);
            }
            table.print();
        }
    }
    Ok(())
}

pub(crate) async fn tenant(
    command: TenantCommand,
    brokers: Brokers,
    output: OutputArg,
) -> anyhow::Result<()> {
    let client = brokers.client()?;
    match command {
        TenantCommand::Set {
            name,
            prefix,
            principals,
        } => {
            let answer = client
                .upsert_tenant(UpsertTenantRequest {
                    tenant: Some(Tenant {
                        name: name.clone(),
                        prefix,
                        principals,
                    }),
                })
                .await?;
            let verb = if answer.created { "created" } else { "updated" };
            println!("tenant {name} {verb}");
        }
        TenantCommand::Delete { name } => {
            client
                .delete_tenant(DeleteTenantRequest { name: name.clone() })
                .await?;
            println!("tenant {name} deleted");
        }
        TenantCommand::List => {
            let tenants = client.list_tenants(ListTenantsRequest {}).await?.tenants;
            if output.json() {
                return print_json(&serde_json::json!(
                    tenants
                        .iter()
                        .map(|t| serde_json::json!({"name": t.name, "prefix": t.prefix, "principals": t.principals}))
                        .collect::<Vec<_>>()
                ));
            }
            let mut table = Table::new(&["TENANT", "PREFIX", "PRINCIPALS"]);
            for t in &tenants {
                table.row([t.name.clone(), t.prefix.clone(), t.principals.join(",")]);
            }
            table.print();
        }
    }
    Ok(())
}

pub(crate) async fn quota(
    command: QuotaCommand,
    brokers: Brokers,
    output: OutputArg,
) -> anyhow::Result<()> {
    let client = brokers.client()?;
    match command {
        QuotaCommand::Set { entity, limits } => {
            client
                .set_quota(SetQuotaRequest {
                    entity: entity.clone(),
                    limits: limits.into_iter().collect::<HashMap<_, _>>(),
                })
                .await?;
            println!("quota of {entity} set");
        }
        QuotaCommand::Remove { entity } => {
            client
                .remove_quota(RemoveQuotaRequest {
                    entity: entity.clone(),
                })
                .await?;
            println!("quota of {entity} removed");
        }
        QuotaCommand::List => {
            let quotas = client.list_quotas(ListQuotasRequest {}).await?.quotas;
            if output.json() {
                return print_json(&serde_json::json!(
                    quotas
                        .iter()
                        .map(|q| serde_json::json!({"entity": q.entity, "limits": q.limits}))
                        .collect::<Vec<_>>()
                ));
            }
            let mut table = Table::new(&["ENTITY", "LIMITS"]);
            for q in &quotas {
                let mut limits: Vec<String> =
                    q.limits.iter().map(|(k, v)| format!("{k}={v}")).collect();
                limits.sort();
                table.row([q.entity.clone(), limits.join(" ")]);
            }
            table.print();
        }
    }
    Ok(())
}

pub(crate) async fn whoami(brokers: Brokers, output: OutputArg) -> anyhow::Result<()> {
    let me = brokers.client()?.who_am_i(WhoAmIRequest {}).await?;
    if output.json() {
        return print_json(&serde_json::json!({
            "principal": me.principal,
            "tenant": (!me.tenant.is_empty()).then_some(&me.tenant),
            "super_user": me.super_user,
        }));
    }
    println!("{}", me.principal);
    if !me.tenant.is_empty() {
        println!("tenant: {}", me.tenant);
    }
    if me.super_user {
        println!("super user");
    }
    Ok(())
}
