//! Who is calling, and may they: authentication at the edge of every client listener and the
//! one authorization check every RPC makes.
//!
//! Authentication ([`Access::authenticate`], run by an interceptor before each call of the
//! Broker, Admin, Groups and Security services) turns a call into a [`Caller`]:
//! - security off: [`Principal::Anonymous`], allowed everything (behaviour as before security);
//! - a peer that proved a node certificate and names a principal in [`PRINCIPAL_HEADER`]: that
//!   principal (a call another node authenticated and forwarded); without the header: the node;
//! - `authorization: Bearer <token>`: the token's user (unknown, revoked, expired or a deleted
//!   user's tokens are refused with UNAUTHENTICATED, naming why);
//! - a client certificate: the user it maps to (`SecurityState::principal_for_cert`);
//! - nothing: UNAUTHENTICATED.
//!
//! Invariants: the principal header is believed only from a node (a client that sends it gains
//! nothing: its own credentials decide); authorization is decided by the replicated metadata and
//! the configured super users only (`SecurityState::authorize`: deny wins); every refusal is
//! written to the audit log.

use std::net::SocketAddr;
use std::sync::Arc;

use tonic::{Request, Status};
use weir_controller::Controller;
use weir_controller::security::{CLUSTER_RESOURCE_NAME, Decision, Operation, ResourceType};
use weir_format::wire::PRINCIPAL_HEADER;
use weir_raft::NodeId;

use crate::audit::{Audit, AuditEvent};

/// Who a call is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Principal {
    /// Security is off: every call is allowed.
    Anonymous,
    /// `User:NAME`.
    User(String),
    /// A node of the cluster (proved by its certificate).
    Node(NodeId),
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::User(principal) => f.write_str(principal),
            Self::Node(id) => write!(f, "Node:{id}"),
        }
    }
}

/// The authenticated caller of one call (a request extension).
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) principal: Principal,
    pub(crate) peer: Option<SocketAddr>,
}

impl Caller {
    /// The caller of `request`, as the interceptor found it (anonymous when there is none:
    /// requests made inside the node).
    pub(crate) fn of<T>(request: &Request<T>) -> Self {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller {
                principal: Principal::Anonymous,
                peer: request.remote_addr(),
            })
    }

    /// The principal to send along when this call is forwarded to another node: a user's.
    pub(crate) fn forwarded_principal(&self) -> Option<&str> {
        match &self.principal {
            Principal::User(user) => Some(user),
            Principal::Anonymous | Principal::Node(_) => None,
        }
    }
}

/// Authentication and authorization of one node.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    /// `tls.client_auth = "required"`: a call without a client certificate is refused.
    pub(crate) client_cert_required: bool,
    pub(crate) enabled: bool,
    pub(crate) super_users: Arc<Vec<String>>,
    pub(crate) controller: Arc<Controller>,
    pub(crate) audit: Audit,
}

/// A resource an operation is on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Resource<'a> {
    Topic(&'a str),
    Group(&'a str),
    Cluster,
}

impl Resource<'_> {
    fn parts(&self) -> (ResourceType, &str) {
        match self {
            Self::Topic(name) => (ResourceType::Topic, name),
            Self::Group(name) => (ResourceType::Group, name),
            Self::Cluster => (ResourceType::Cluster, CLUSTER_RESOURCE_NAME),
        }
    }
}

impl std::fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, name) = self.parts();
        write!(f, "{kind} {name:?}")
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Access {
    /// Finds the caller of `request` (see the module docs) and records it in the request's
    /// extensions; refuses a call without a usable identity.
    pub(crate) fn authenticate(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let peer = request.remote_addr();
        if self.client_cert_required && request.peer_certs().is_none_or(|certs| certs.is_empty()) {
            let reason = "this cluster requires a client certificate (tls.client_auth = required)";
            self.audit.record(AuditEvent {
                principal: None,
                peer,
                operation: "authenticate",
                resource: None,
                result: "denied",
                detail: Some(reason.into()),
            });
            return Err(Status::unauthenticated(reason));
        }
        let principal = if self.enabled {
            match self.principal_of(&request) {
                Ok(principal) => principal,
                Err(reason) => {
                    self.audit.record(AuditEvent {
                        principal: None,
                        peer,
                        operation: "authenticate",
                        resource: None,
                        result: "denied",
                        detail: Some(reason.clone()),
                    });
                    return Err(Status::unauthenticated(reason));
                }
            }
        } else {
            Principal::Anonymous
        };
        request.extensions_mut().insert(Caller { principal, peer });
        Ok(request)
    }

    fn principal_of<T>(&self, request: &Request<T>) -> Result<Principal, String> {
        let certs = request.peer_certs();
        let first = certs.as_ref().and_then(|certs| certs.first());
        if let Some(node) = first.and_then(weir_raft::tls::node_id_of) {
            // Another node: a forwarded call says whose it is.
            return Ok(match request.metadata().get(PRINCIPAL_HEADER) {
                Some(value) => match value.to_str() {
                    Ok(principal) if principal.starts_with("User:") => {
                        Principal::User(principal.to_string())
                    }
                    _ => return Err(format!("node {node} forwarded a malformed principal")),
                },
                None => Principal::Node(node),
            });
        }
        let metadata = self.controller.metadata();
        if let Some(value) = request.metadata().get("authorization") {
            let text = value
                .to_str()
                .map_err(|_| "the authorization header is not text".to_string())?;
            let token = text
                .strip_prefix("Bearer ")
                .ok_or_else(|| "the authorization header is not `Bearer <token>`".to_string())?;
            return metadata
                .security
                .authenticate_token(token.trim(), now_ms())
                .map(Principal::User)
                .map_err(|why| format!("token refused: {why}"));
        }
        if let Some(cert) = first {
            let (subject, common_name, sans) = cert_names(cert)
                .ok_or_else(|| "the client certificate does not parse".to_string())?;
            return metadata
                .security
                .principal_for_cert(&subject, common_name.as_deref(), &sans)
                .map(Principal::User)
                .ok_or_else(|| {
                    format!("the client certificate ({subject}) maps to no user; map it with `weir user map-cert`")
                });
        }
        Err("no credentials: send a bearer token (authorization: Bearer <token>) or a client certificate".into())
    }

    /// The user a client certificate maps to (`User:NAME`), if it parses and is mapped.
    pub(crate) fn cert_principal(
        &self,
        cert: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
    ) -> Option<String> {
        let (subject, common_name, sans) = cert_names(cert)?;
        self.controller.metadata().security.principal_for_cert(
            &subject,
            common_name.as_deref(),
            &sans,
        )
    }

    /// Whether `caller` may do `op` on `resource`; the refusal names all three and is audited.
    pub(crate) fn authorize(
        &self,
        caller: &Caller,
        op: Operation,
        resource: Resource<'_>,
    ) -> Result<(), Status> {
        let decision = self.decide(caller, op, resource);
        match decision {
            None => Ok(()),
            Some(reason) => {
                self.audit.record(AuditEvent {
                    principal: Some(caller.principal.to_string()),
                    peer: caller.peer,
                    operation: op.as_str(),
                    resource: Some(resource.to_string()),
                    result: "denied",
                    detail: Some(reason.clone()),
                });
                Err(Status::permission_denied(format!(
                    "{} may not {} {resource}: {reason}",
                    caller.principal,
                    op.as_str()
                )))
            }
        }
    }

    /// Whether `caller` may do `op` on `resource`, without auditing a refusal (for filtering
    /// listings).
    pub(crate) fn allows(&self, caller: &Caller, op: Operation, resource: Resource<'_>) -> bool {
        self.decide(caller, op, resource).is_none()
    }

    /// `None`: allowed; else why not.
    fn decide(&self, caller: &Caller, op: Operation, resource: Resource<'_>) -> Option<String> {
        let user = match &caller.principal {
            Principal::Anonymous | Principal::Node(_) => return None,
            Principal::User(user) => user,
        };
        let metadata = self.controller.metadata();
        let (kind, name) = resource.parts();
        let decision = if kind == ResourceType::Topic && op == Operation::Create {
            metadata
                .security
                .authorize_create_topic(user, &self.super_users, name)
        } else {
            metadata
                .security
                .authorize(user, &self.super_users, kind, name, op)
        };
        match decision {
            Decision::SuperUser | Decision::AllowedBy(_) => None,
            denied => Some(denied.to_string()),
        }
    }

    /// Whether `caller` may write to some topic or to the cluster (to get a producer id, as
    /// Kafka's InitProducerId asks for idempotent write).
    pub(crate) fn may_write_somewhere(&self, caller: &Caller) -> Result<(), Status> {
        let Principal::User(user) = &caller.principal else {
            return Ok(());
        };
        if self.super_users.iter().any(|s| s == user)
            || self.allows(caller, Operation::Write, Resource::Cluster)
        {
            return Ok(());
        }
        let metadata = self.controller.metadata();
        let writes = metadata
            .security
            .acls(&weir_controller::security::AclFilter::default())
            .into_iter()
            .any(|acl| {
                acl.matches_principal(user)
                    && acl.resource == ResourceType::Topic
                    && acl.permission == weir_controller::security::Permission::Allow
                    && acl.operation.allows(Operation::Write)
            });
        if writes {
            Ok(())
        } else {
            self.authorize(caller, Operation::Write, Resource::Cluster)
        }
    }
}

/// (subject as RFC 4514 text, common name, SANs) of a DER certificate.
fn cert_names(
    cert: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
) -> Option<(String, Option<String>, Vec<String>)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject().to_string();
    let common_name = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let mut sans = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(n)
                | x509_parser::extensions::GeneralName::RFC822Name(n)
                | x509_parser::extensions::GeneralName::URI(n) => sans.push((*n).to_string()),
                _ => {}
            }
        }
    }
    Some((subject, common_name, sans))
}
