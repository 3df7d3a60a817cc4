//! The Security service's calls on [`Client`]: users, tokens, certificate mappings, ACLs,
//! tenants and quotas (see `proto/weir/v1/weir.proto` and docs/security.md). Each goes to any
//! node, with the usual retries; the answers are the proto messages.

use tonic::Response;
use weir_proto::v1::security_client::SecurityClient;
use weir_proto::v1::{
    AddAclRequest, AddAclResponse, CreateTokenRequest, CreateTokenResponse, DeleteTenantRequest,
    DeleteTenantResponse, DeleteUserRequest, DeleteUserResponse, ListAclsRequest, ListAclsResponse,
    ListCertificateMappingsRequest, ListCertificateMappingsResponse, ListQuotasRequest,
    ListQuotasResponse, ListTenantsRequest, ListTenantsResponse, ListTokensRequest,
    ListTokensResponse, ListUsersRequest, ListUsersResponse, MapCertificateRequest,
    MapCertificateResponse, RemoveAclsRequest, RemoveAclsResponse, RemoveQuotaRequest,
    RemoveQuotaResponse, RevokeTokenRequest, RevokeTokenResponse, SetQuotaRequest,
    SetQuotaResponse, UnmapCertificateRequest, UnmapCertificateResponse, UpsertTenantRequest,
    UpsertTenantResponse, UpsertUserRequest, UpsertUserResponse, WhoAmIRequest, WhoAmIResponse,
};

use crate::ClientError;
use crate::client::{Client, Route};

macro_rules! security_calls {
    ($($(#[$doc:meta])* $name:ident($request:ty) -> $response:ty;)*) => {
        impl Client {
            $(
                $(#[$doc])*
                pub async fn $name(&self, request: $request) -> Result<$response, ClientError> {
                    self.call(stringify!($name), Route::Any, self.deadline(), |channel| {
                        let request = request.clone();
                        async move {
                            SecurityClient::new(channel)
                                .$name(request)
                                .await
                                .map(Response::into_inner)
                        }
                    })
                    .await
                }
            )*
        }
    };
}

security_calls! {
    /// Who the cluster takes this client for.
    who_am_i(WhoAmIRequest) -> WhoAmIResponse;
    /// Creates a user or sets its password.
    upsert_user(UpsertUserRequest) -> UpsertUserResponse;
    /// Deletes a user, its tokens and its certificate mappings.
    delete_user(DeleteUserRequest) -> DeleteUserResponse;
    list_users(ListUsersRequest) -> ListUsersResponse;
    /// A new bearer token (in this answer only).
    create_token(CreateTokenRequest) -> CreateTokenResponse;
    revoke_token(RevokeTokenRequest) -> RevokeTokenResponse;
    list_tokens(ListTokensRequest) -> ListTokensResponse;
    map_certificate(MapCertificateRequest) -> MapCertificateResponse;
    unmap_certificate(UnmapCertificateRequest) -> UnmapCertificateResponse;
    list_certificate_mappings(ListCertificateMappingsRequest) -> ListCertificateMappingsResponse;
    add_acl(AddAclRequest) -> AddAclResponse;
    /// Removes the ACLs a filter selects.
    remove_acls(RemoveAclsRequest) -> RemoveAclsResponse;
    list_acls(ListAclsRequest) -> ListAclsResponse;
    upsert_tenant(UpsertTenantRequest) -> UpsertTenantResponse;
    delete_tenant(DeleteTenantRequest) -> DeleteTenantResponse;
    list_tenants(ListTenantsRequest) -> ListTenantsResponse;
    /// Sets limits of a user or tenant (only those given change).
    set_quota(SetQuotaRequest) -> SetQuotaResponse;
    remove_quota(RemoveQuotaRequest) -> RemoveQuotaResponse;
    list_quotas(ListQuotasRequest) -> ListQuotasResponse;
}
