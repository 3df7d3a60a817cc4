//! [`SecurityService`]: the `weir.v1.Security` RPCs — users, tokens, certificate mappings,
//! ACLs, tenants and quotas — over the replicated metadata (`weir_controller::security`).
//!
//! Invariants: changes need Alter on the cluster and listings Describe on the cluster, except
//! that an authenticated user may create, list and revoke tokens of its own; secrets are made
//! here (salts, token secrets) and only derived values enter the metadata; a token is returned
//! once, in the CreateToken answer, and never logged; every change is audited (names and ids,
//! never passwords or tokens).

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use tonic::{Request, Response, Status};
use weir_controller::MetadataCommand;
use weir_controller::security::{
    AclFilter, AclRecord, CertMapping, CertMatcher, DEFAULT_SCRAM_ITERATIONS, Operation,
    PatternType, Permission, QuotaEntity, QuotaLimits, ResourceType, ScramCredential,
    ScramMechanism, TenantRecord, new_token,
};
use weir_proto::v1::security_server::Security;
use weir_proto::v1::{
    Acl, AddAclRequest, AddAclResponse, CertificateMapping, CreateTokenRequest,
    CreateTokenResponse, DeleteTenantRequest, DeleteTenantResponse, DeleteUserRequest,
    DeleteUserResponse, ListAclsRequest, ListAclsResponse, ListCertificateMappingsRequest,
    ListCertificateMappingsResponse, ListQuotasRequest, ListQuotasResponse, ListTenantsRequest,
    ListTenantsResponse, ListTokensRequest, ListTokensResponse, ListUsersRequest,
    ListUsersResponse, MapCertificateRequest, MapCertificateResponse, Quota, RemoveAclsRequest,
    RemoveAclsResponse, RemoveQuotaRequest, RemoveQuotaResponse, RevokeTokenRequest,
    RevokeTokenResponse, SetQuotaRequest, SetQuotaResponse, Tenant, TokenInfo,
    UnmapCertificateRequest, UnmapCertificateResponse, UpsertTenantRequest, UpsertTenantResponse,
    UpsertUserRequest, UpsertUserResponse, UserInfo, WhoAmIRequest, WhoAmIResponse,
};

use crate::auth::{Caller, Principal, Resource, now_ms};
use crate::router::Router;
use crate::status::{from_controller, from_metadata};

/// The Security service of one node.
#[derive(Debug, Clone)]
pub(crate) struct SecurityService {
    pub(crate) router: Router,
}

fn parse<T: FromStr<Err = weir_controller::MetadataError>>(text: &str) -> Result<T, Status> {
    T::from_str(text).map_err(from_metadata)
}

fn optional<T: FromStr<Err = weir_controller::MetadataError>>(
    text: &str,
) -> Result<Option<T>, Status> {
    if text.is_empty() {
        Ok(None)
    } else {
        parse(text).map(Some)
    }
}

fn acl_to_proto(acl: &AclRecord) -> Acl {
    Acl {
        principal: acl.principal.clone(),
        resource: acl.resource.to_string(),
        pattern: acl.pattern.to_string(),
        name: acl.name.clone(),
        operation: acl.operation.to_string(),
        permission: acl.permission.to_string(),
    }
}

fn filter_from_proto(filter: Option<weir_proto::v1::AclFilter>) -> Result<AclFilter, Status> {
    let filter = filter.unwrap_or_default();
    Ok(AclFilter {
        principal: (!filter.principal.is_empty()).then_some(filter.principal),
        resource: optional::<ResourceType>(&filter.resource)?,
        pattern: optional::<PatternType>(&filter.pattern)?,
        name: (!filter.name.is_empty()).then_some(filter.name),
        operation: optional::<Operation>(&filter.operation)?,
        permission: optional::<Permission>(&filter.permission)?,
    })
}

fn token_info(token: &weir_controller::security::TokenRecord) -> TokenInfo {
    TokenInfo {
        id: token.id.clone(),
        user: token.user.clone(),
        created_ms: token.created_ms,
        expires_ms: token.expires_ms.unwrap_or(0),
        description: token.description.clone().unwrap_or_default(),
    }
}

impl SecurityService {
    /// Proposes `command` on behalf of `caller` and audits the outcome.
    async fn change(
        &self,
        caller: &Caller,
        operation: &'static str,
        resource: String,
        command: MetadataCommand,
    ) -> Result<u64, Status> {
        let result = self
            .router
            .controller
            .propose(command)
            .await
            .map_err(from_controller);
        self.router
            .access
            .audit
            .change(caller, operation, resource, &result);
        result
    }

    fn alter<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        self.router
            .authorize(request, Operation::Alter, Resource::Cluster)?;
        Ok(Caller::of(request))
    }

    fn describe<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.router
            .authorize(request, Operation::Describe, Resource::Cluster)
    }

    /// The user a token request is about: `user`, or the caller's own when empty. Another
    /// user's tokens need Alter (Describe to list) on the cluster.
    fn token_user<T>(
        &self,
        request: &Request<T>,
        user: &str,
        op: Operation,
    ) -> Result<String, Status> {
        let caller = Caller::of(request);
        let own = match &caller.principal {
            Principal::User(principal) => principal.strip_prefix("User:").map(str::to_string),
            Principal::Anonymous | Principal::Node(_) => None,
        };
        match (user.is_empty(), own) {
            (true, Some(own)) => Ok(own),
            (true, None) => Err(Status::invalid_argument(
                "name the user: the caller is not a user",
            )),
            (false, Some(own)) if own == user => Ok(own),
            (false, _) => {
                self.router.authorize(request, op, Resource::Cluster)?;
                Ok(user.to_string())
            }
        }
    }
}

#[tonic::async_trait]
impl Security for SecurityService {
    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        let caller = Caller::of(&request);
        let principal = caller.principal.to_string();
        let metadata = self.router.controller.metadata();
        Ok(Response::new(WhoAmIResponse {
            tenant: metadata
                .security
                .tenant_of(&principal)
                .map(|t| t.name.clone())
                .unwrap_or_default(),
            super_user: self.router.access.super_users.contains(&principal)
                || !matches!(caller.principal, Principal::User(_)),
            principal,
        }))
    }

    async fn upsert_user(
        &self,
        request: Request<UpsertUserRequest>,
    ) -> Result<Response<UpsertUserResponse>, Status> {
        let caller = self.alter(&request)?;
        let request = request.into_inner();
        let mechanisms: Vec<ScramMechanism> = if request.mechanisms.is_empty() {
            vec![ScramMechanism::Sha256, ScramMechanism::Sha512]
        } else {
            request
                .mechanisms
                .iter()
                .map(|m| parse::<ScramMechanism>(m))
                .collect::<Result<_, _>>()?
        };
        let credentials = mechanisms
            .into_iter()
            .map(|m| ScramCredential::generate(m, &request.password, DEFAULT_SCRAM_ITERATIONS))
            .collect::<Result<Vec<_>, _>>()
            .map_err(from_metadata)?;
        let created = self
            .change(
                &caller,
                "upsert-user",
                format!("user {:?}", request.name),
                MetadataCommand::UpsertUser {
                    name: request.name,
                    credentials,
                },
            )
            .await?;
        Ok(Response::new(UpsertUserResponse {
            created: created == 1,
        }))
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<DeleteUserResponse>, Status> {
        let caller = self.alter(&request)?;
        let name = request.into_inner().name;
        self.change(
            &caller,
            "delete-user",
            format!("user {name:?}"),
            MetadataCommand::DeleteUser { name },
        )
        .await?;
        Ok(Response::new(DeleteUserResponse {}))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        self.describe(&request)?;
        let metadata = self.router.controller.metadata();
        Ok(Response::new(ListUsersResponse {
            users: metadata
                .security
                .users()
                .map(|u| UserInfo {
                    name: u.name.clone(),
                    mechanisms: u
                        .credentials
                        .iter()
                        .map(|c| c.mechanism.as_str().to_string())
                        .collect(),
                })
                .collect(),
        }))
    }

    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let user = self.token_user(&request, &request.get_ref().user, Operation::Alter)?;
        let caller = Caller::of(&request);
        let request = request.into_inner();
        let now = now_ms();
        let expires = (request.ttl_ms > 0).then(|| now.saturating_add(request.ttl_ms));
        let description = (!request.description.is_empty()).then_some(request.description);
        let (record, token) = new_token(&user, now, expires, description);
        let info = token_info(&record);
        self.change(
            &caller,
            "create-token",
            format!("token {} of user {user:?}", record.id),
            MetadataCommand::CreateToken(record),
        )
        .await?;
        Ok(Response::new(CreateTokenResponse {
            token,
            info: Some(info),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let id = request.get_ref().id.clone();
        let owner = self
            .router
            .controller
            .metadata()
            .security
            .token(&id)
            .map(|t| t.user.clone())
            .unwrap_or_default();
        // A user may revoke its own tokens; others' (and unknown ids) need Alter.
        self.token_user(&request, &owner, Operation::Alter)?;
        let caller = Caller::of(&request);
        self.change(
            &caller,
            "revoke-token",
            format!("token {id}"),
            MetadataCommand::RevokeToken { id },
        )
        .await?;
        Ok(Response::new(RevokeTokenResponse {}))
    }

    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let everyone = request.get_ref().user.is_empty()
            && self.router.access.allows(
                &Caller::of(&request),
                Operation::Describe,
                Resource::Cluster,
            );
        let user = if everyone {
            None
        } else {
            Some(self.token_user(&request, &request.get_ref().user, Operation::Describe)?)
        };
        let metadata = self.router.controller.metadata();
        Ok(Response::new(ListTokensResponse {
            tokens: metadata
                .security
                .tokens()
                .filter(|t| user.as_ref().is_none_or(|u| *u == t.user))
                .map(token_info)
                .collect(),
        }))
    }

    async fn map_certificate(
        &self,
        request: Request<MapCertificateRequest>,
    ) -> Result<Response<MapCertificateResponse>, Status> {
        let caller = self.alter(&request)?;
        let request = request.into_inner();
        let matcher: CertMatcher = parse(&request.matcher)?;
        self.change(
            &caller,
            "map-certificate",
            format!("certificate {matcher} to user {:?}", request.user),
            MetadataCommand::AddCertMapping(CertMapping {
                matcher,
                user: request.user,
            }),
        )
        .await?;
        Ok(Response::new(MapCertificateResponse {}))
    }

    async fn unmap_certificate(
        &self,
        request: Request<UnmapCertificateRequest>,
    ) -> Result<Response<UnmapCertificateResponse>, Status> {
        let caller = self.alter(&request)?;
        let matcher: CertMatcher = parse(&request.get_ref().matcher)?;
        self.change(
            &caller,
            "unmap-certificate",
            format!("certificate {matcher}"),
            MetadataCommand::RemoveCertMapping(matcher),
        )
        .await?;
        Ok(Response::new(UnmapCertificateResponse {}))
    }

    async fn list_certificate_mappings(
        &self,
        request: Request<ListCertificateMappingsRequest>,
    ) -> Result<Response<ListCertificateMappingsResponse>, Status> {
        self.describe(&request)?;
        let metadata = self.router.controller.metadata();
        Ok(Response::new(ListCertificateMappingsResponse {
            mappings: metadata
                .security
                .cert_mappings()
                .map(|(matcher, user)| CertificateMapping {
                    matcher: matcher.to_string(),
                    user: user.to_string(),
                })
                .collect(),
        }))
    }

    async fn add_acl(
        &self,
        request: Request<AddAclRequest>,
    ) -> Result<Response<AddAclResponse>, Status> {
        let caller = self.alter(&request)?;
        let acl = request
            .into_inner()
            .acl
            .ok_or_else(|| Status::invalid_argument("no ACL given"))?;
        let record = AclRecord {
            principal: acl.principal,
            resource: parse(&acl.resource)?,
            pattern: if acl.pattern.is_empty() {
                PatternType::Literal
            } else {
                parse(&acl.pattern)?
            },
            name: acl.name,
            operation: parse(&acl.operation)?,
            permission: if acl.permission.is_empty() {
                Permission::Allow
            } else {
                parse(&acl.permission)?
            },
        };
        let added = self
            .change(
                &caller,
                "add-acl",
                format!("acl {record}"),
                MetadataCommand::AddAcl(record),
            )
            .await?;
        Ok(Response::new(AddAclResponse { added: added == 1 }))
    }

    async fn remove_acls(
        &self,
        request: Request<RemoveAclsRequest>,
    ) -> Result<Response<RemoveAclsResponse>, Status> {
        let caller = self.alter(&request)?;
        let filter = filter_from_proto(request.into_inner().filter)?;
        let removed = self
            .change(
                &caller,
                "remove-acls",
                format!("acls {filter:?}"),
                MetadataCommand::RemoveAcls(filter),
            )
            .await?;
        Ok(Response::new(RemoveAclsResponse { removed }))
    }

    async fn list_acls(
        &self,
        request: Request<ListAclsRequest>,
    ) -> Result<Response<ListAclsResponse>, Status> {
        self.describe(&request)?;
        let filter = filter_from_proto(request.into_inner().filter)?;
        let metadata = self.router.controller.metadata();
        Ok(Response::new(ListAclsResponse {
            acls: metadata
                .security
                .acls(&filter)
                .into_iter()
                .map(acl_to_proto)
                .collect(),
        }))
    }

    async fn upsert_tenant(
        &self,
        request: Request<UpsertTenantRequest>,
    ) -> Result<Response<UpsertTenantResponse>, Status> {
        let caller = self.alter(&request)?;
        let tenant = request
            .into_inner()
            .tenant
            .ok_or_else(|| Status::invalid_argument("no tenant given"))?;
        let record = TenantRecord {
            name: tenant.name,
            prefix: tenant.prefix,
            principals: tenant.principals.into_iter().collect::<BTreeSet<_>>(),
        };
        let created = self
            .change(
                &caller,
                "upsert-tenant",
                format!("tenant {:?} prefix {:?}", record.name, record.prefix),
                MetadataCommand::UpsertTenant(record),
            )
            .await?;
        Ok(Response::new(UpsertTenantResponse {
            created: created == 1,
        }))
    }

    async fn delete_tenant(
        &self,
        request: Request<DeleteTenantRequest>,
    ) -> Result<Response<DeleteTenantResponse>, Status> {
        let caller = self.alter(&request)?;
        let name = request.into_inner().name;
        self.change(
            &caller,
            "delete-tenant",
            format!("tenant {name:?}"),
            MetadataCommand::DeleteTenant { name },
        )
        .await?;
        Ok(Response::new(DeleteTenantResponse {}))
    }

    async fn list_tenants(
        &self,
        request: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsResponse>, Status> {
        self.describe(&request)?;
        let metadata = self.router.controller.metadata();
        Ok(Response::new(ListTenantsResponse {
            tenants: metadata
                .security
                .tenants()
                .map(|t| Tenant {
                    name: t.name.clone(),
                    prefix: t.prefix.clone(),
                    principals: t.principals.iter().cloned().collect(),
                })
                .collect(),
        }))
    }

    async fn set_quota(
        &self,
        request: Request<SetQuotaRequest>,
    ) -> Result<Response<SetQuotaResponse>, Status> {
        let caller = self.alter(&request)?;
        let request = request.into_inner();
        let entity: QuotaEntity = parse(&request.entity)?;
        let limits =
            QuotaLimits::from_pairs(request.limits.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .map_err(from_metadata)?;
        let pairs: Vec<String> = limits
            .to_pairs()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        self.change(
            &caller,
            "set-quota",
            format!("quota {entity} {}", pairs.join(",")),
            MetadataCommand::SetQuota { entity, limits },
        )
        .await?;
        Ok(Response::new(SetQuotaResponse {}))
    }

    async fn remove_quota(
        &self,
        request: Request<RemoveQuotaRequest>,
    ) -> Result<Response<RemoveQuotaResponse>, Status> {
        let caller = self.alter(&request)?;
        let entity: QuotaEntity = parse(&request.get_ref().entity)?;
        self.change(
            &caller,
            "remove-quota",
            format!("quota {entity}"),
            MetadataCommand::RemoveQuota { entity },
        )
        .await?;
        Ok(Response::new(RemoveQuotaResponse {}))
    }

    async fn list_quotas(
        &self,
        request: Request<ListQuotasRequest>,
    ) -> Result<Response<ListQuotasResponse>, Status> {
        self.describe(&request)?;
        let metadata = self.router.controller.metadata();
        Ok(Response::new(ListQuotasResponse {
            quotas: metadata
                .security
                .quotas()
                .map(|(entity, limits)| Quota {
                    entity: entity.to_string(),
                    limits: limits
                        .to_pairs()
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<BTreeMap<_, _>>()
                        .into_iter()
                        .collect(),
                })
                .collect(),
        }))
    }
}
