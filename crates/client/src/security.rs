//! How a client proves who it is and checks whom it talks to: TLS (the cluster CA, optionally a
//! client certificate) and a bearer token sent with every call.
//!
//! Invariant: the token is sent only over TLS — [`Security::validate`] refuses a token without
//! TLS, so a secret never crosses the network in plaintext.

use std::path::Path;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::ClientError;

/// TLS settings of a client (PEM bytes).
#[derive(Clone, Default)]
pub struct TlsOptions {
    /// The CA that signed the nodes' certificates.
    pub ca_pem: Vec<u8>,
    /// A client certificate and its key, for clients identified by certificate (mTLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to check the nodes' certificates against, when it is not the host of the
    /// address dialled (a load balancer, an IP address outside the certificate).
    pub server_name: Option<String>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field(
                "identity",
                &self.identity.as_ref().map(|_| "<certificate and key>"),
            )
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl TlsOptions {
    /// Reads the CA and, when both are given, a client certificate and key from PEM files.
    pub fn from_files(
        ca: &Path,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|err| ClientError::Tls(format!("{}: {err}", path.display())))
        };
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            (None, None) => None,
            _ => {
                return Err(ClientError::Tls(
                    "a client certificate needs both its certificate and its key file".into(),
                ));
            }
        };
        Ok(Self {
            ca_pem: read(ca)?,
            identity,
            server_name: None,
        })
    }

    pub(crate) fn tonic_config(&self, host: &str) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(self.server_name.as_deref().unwrap_or(host));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

/// A client's security settings: none (plaintext, anonymous), TLS, and/or a bearer token.
#[derive(Clone, Default)]
pub struct Security {
    pub tls: Option<TlsOptions>,
    /// A token made with `weir token create` (`weir_<id>_<secret>`).
    pub token: Option<String>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.tls)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Security {
    /// Refuses settings that would leak a secret: a token without TLS.
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.token.is_some() && self.tls.is_none() {
            return Err(ClientError::Tls(
                "a token is sent only over TLS: give the cluster's CA certificate too".into(),
            ));
        }
        if let Some(token) = &self.token
            && MetadataValue::<Ascii>::try_from(format!("Bearer {token}")).is_err()
        {
            return Err(ClientError::Tls(
                "the token holds characters that cannot be sent in a header".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn interceptor(&self) -> Auth {
        Auth {
            header: self
                .token
                .as_ref()
                .and_then(|t| MetadataValue::try_from(format!("Bearer {t}")).ok()),
        }
    }
}

/// Adds `authorization: Bearer <token>` to every call, when there is a token.
#[derive(Clone, Default)]
pub(crate) struct Auth {
    header: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("token", &self.header.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}
