//! TLS material for one node: its certificate and key, the cluster's CA, and the rustls
//! configurations built from them — the server side of every listener and the client side of
//! node-to-node connections — reloaded when the files change.
//!
//! Invariants:
//! - A node certificate names its node id in a URI subject alternative name,
//!   `weir://node/<id>` ([`node_id_of`]); a node refuses to start with a certificate that names
//!   another id (or none), so a peer that proves a node certificate proves which node it is.
//! - Node-to-node connections are always mutual: the connecting node presents its node
//!   certificate, and it accepts a server only with a node certificate signed by the cluster CA
//!   (host names are not checked: nodes are identified by node id, not by address).
//! - Reloading swaps whole configurations: a connection uses the old or the new material, never a
//!   mix; connections already open keep theirs. Files that do not load (half-written, a key that
//!   does not match) leave the current material in place, and the failure is logged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::types::NodeId;

/// The URI SAN prefix of a node certificate: `weir://node/7` is node 7.
pub const NODE_URI_PREFIX: &str = "weir://node/";

/// The node id a peer proved with its node certificate (a request extension set by the
/// node's server; see `service.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdentity(pub NodeId);

/// Where a node's TLS material lives (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The node's certificate (chain), naming `weir://node/<id>`.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA that signs node and client certificates.
    pub ca: PathBuf,
}

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no usable {what} (PEM expected)", path.display())]
    Pem { path: PathBuf, what: &'static str },
    #[error(
        "certificate {} names node {found:?}, not this node ({expected}): a node certificate carries the URI SAN {NODE_URI_PREFIX}<id>",
        path.display()
    )]
    WrongNode {
        path: PathBuf,
        expected: NodeId,
        found: Option<NodeId>,
    },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

/// The configurations in use, swapped whole on reload.
#[derive(Debug)]
struct Loaded {
    server: Arc<ServerConfig>,
    peer_client: Arc<ClientConfig>,
}

/// A node's TLS material, reloaded by [`NodeTls::watch`] when its files change.
#[derive(Debug)]
pub struct NodeTls {
    files: TlsFiles,
    node_id: NodeId,
    current: RwLock<Arc<Loaded>>,
    /// Modification time and length of each file when last loaded.
    stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

/// The crypto provider of every configuration: ring.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The certificates of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem {
            path: path.to_path_buf(),
            what: "certificate",
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::Pem {
        path: path.to_path_buf(),
        what: "private key",
    })
}

/// A root store holding the CA certificates of `path`.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|_| TlsError::Pem {
            path: path.to_path_buf(),
            what: "CA certificate",
        })?;
    }
    Ok(roots)
}

/// The node id a certificate names in its `weir://node/<id>` URI SAN, if any.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Option<NodeId> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => uri
            .strip_prefix(NODE_URI_PREFIX)
            .and_then(|id| id.parse::<NodeId>().ok())
            .filter(|id| *id > 0),
        _ => None,
    })
}

impl NodeTls {
    /// Loads the material of node `node_id`; fails when a file is missing or unusable, or the
    /// certificate is not this node's.
    pub fn load(files: TlsFiles, node_id: NodeId) -> Result<Arc<Self>, TlsError> {
        let loaded = build(&files, node_id)?;
        let stamps = stamps(&files);
        Ok(Arc::new(Self {
            files,
            node_id,
            current: RwLock::new(Arc::new(loaded)),
            stamps: Mutex::new(stamps),
        }))
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn current(&self) -> Arc<Loaded> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The server side of every listener (ALPN h2). A client certificate is optional here but, when
    /// presented, must be the CA's; whether one is required is the listener's decision after the
    /// handshake (so that a client without one gets an answer saying so, not a dropped
    /// connection).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current().server)
    }

    /// The client side of connections to other nodes (presents this node's certificate).
    pub fn peer_client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.current().peer_client)
    }

    /// Loads the files again if any changed since the last load. `Ok(true)`: new material is in
    /// use. A failure leaves the current material in place.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.files);
        {
            let seen = self
                .stamps
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *seen == now {
                return Ok(false);
            }
        }
        let loaded = build(&self.files, self.node_id)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(loaded);
        *self
            .stamps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = now;
        Ok(true)
    }

    /// Checks the files every `every` and reloads them when they change (runs until dropped).
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.reload_if_changed() {
                Ok(true) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS material reloaded")
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(%err, "TLS files changed but do not load; keeping the current ones")
                }
            }
        }
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<(SystemTime, u64)>> {
    [&files.cert, &files.key, &files.ca]
        .iter()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

fn build(files: &TlsFiles, node_id: NodeId) -> Result<Loaded, TlsError> {
    let certs = load_certs(&files.cert)?;
    let found = certs.first().and_then(node_id_of);
    if found != Some(node_id) {
        return Err(TlsError::WrongNode {
            path: files.cert.clone(),
            expected: node_id,
            found,
        });
    }
    let key = load_key(&files.key)?;
    let roots = Arc::new(load_roots(&files.ca)?);

    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key.clone_key())?;
    server.alpn_protocols = vec![b"h2".to_vec()];

    let server_verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut peer_client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NodeServerVerifier {
            inner: server_verifier,
        }))
        .with_client_auth_cert(certs, key)?;
    peer_client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        server: Arc::new(server),
        peer_client: Arc::new(peer_client),
    })
}

/// Accepts a server that proves a node certificate signed by the cluster CA, whatever the host
/// name it was reached by (nodes are identified by id; addresses may be IPs or container names).
#[derive(Debug)]
struct NodeServerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if node_id_of(end_entity).is_none() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => Ok(verified),
            // The chain is good (name checks come last in webpki); only the name differs.
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            Err(err) => Err(err),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The server name to present in a connection to `host` (an IP or a DNS name).
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
    .ok()
}

/// Opens a TLS connection to the node at `addr` (`host:port`) with `config`.
pub async fn connect(
    addr: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let name = server_name(host).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{host:?} is not a host name or IP address"),
        )
    })?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}
