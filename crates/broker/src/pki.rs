//! A cluster's certificates, made here: a CA, node certificates (naming `weir://node/<id>` and
//! the node's host names) and client certificates (naming a user in their common name). For
//! `weir local --secure`, `weir certs`, the container manifests' TLS variants and the tests;
//! production clusters may use any CA that issues certificates of the same shape.
//!
//! Invariants: keys are ECDSA P-256, made fresh each time; a node certificate serves both as a
//! server and as a client certificate (nodes connect to each other); certificates last one year.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use weir_raft::NodeId;
use weir_raft::tls::NODE_URI_PREFIX;

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} is not a host name or IP address")]
    BadHost(String),
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKey")
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A certificate authority that signs node and client certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: CertKey,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// Valid from yesterday for a year.
fn validity(params: &mut CertificateParams) {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    let (y, m, d) = civil_from_days(days - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_from_days(days + 365);
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// The (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as i32, month as u8, day as u8)
}

impl Ca {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Self, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let pem = CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(Self {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// The CA of `cert_pem` with its key `key_pem` (to sign more certificates later).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            issuer,
            pem: CertKey {
                cert_pem: cert_pem.to_string(),
                key_pem: key_pem.to_string(),
            },
        })
    }

    /// The CA's certificate and key.
    pub fn pem(&self) -> &CertKey {
        &self.pem
    }

    /// A certificate for node `id`, valid for `hosts` (DNS names or IP addresses) as a server.
    pub fn node(&self, id: NodeId, hosts: &[String]) -> Result<CertKey, PkiError> {
        let mut sans = vec![SanType::URI(
            format!("{NODE_URI_PREFIX}{id}")
                .try_into()
                .map_err(|_| PkiError::BadHost(format!("{NODE_URI_PREFIX}{id}")))?,
        )];
        for host in hosts {
            sans.push(match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    host.clone()
                        .try_into()
                        .map_err(|_| PkiError::BadHost(host.clone()))?,
                ),
            });
        }
        self.sign(&format!("weir-node-{id}"), sans)
    }

    /// A client certificate whose common name is `user` (the default mapping makes it the
    /// principal `User:<user>`).
    pub fn client(&self, user: &str) -> Result<CertKey, PkiError> {
        self.sign(user, Vec::new())
    }

    fn sign(&self, common_name: &str, sans: Vec<SanType>) -> Result<CertKey, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes `contents` to `path`, readable by the owner only when it is a key.
pub fn write_pem(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(io)?;
    std::io::Write::write_all(&mut file, contents.as_bytes()).map_err(io)?;
    Ok(())
}

/// The files of one node's material in `dir`: `node-<id>.pem`, `node-<id>.key`, `ca.pem`.
pub fn node_files(dir: &Path, id: NodeId) -> weir_raft::tls::TlsFiles {
    weir_raft::tls::TlsFiles {
        cert: dir.join(format!("node-{id}.pem")),
        key: dir.join(format!("node-{id}.key")),
        ca: dir.join("ca.pem"),
    }
}

/// Makes (or, when `dir` has `ca.pem` and `ca.key`, reuses) a CA in `dir` and writes a
/// certificate for each node (`node-<id>.pem`/`.key`, valid for `hosts`) and each client user
/// (`client-<user>.pem`/`.key`). Returns the CA.
pub fn write_cluster(
    dir: &Path,
    nodes: &[(NodeId, Vec<String>)],
    users: &[String],
) -> Result<Ca, PkiError> {
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let ca = match (
        std::fs::read_to_string(&ca_cert),
        std::fs::read_to_string(&ca_key),
    ) {
        (Ok(cert), Ok(key)) => Ca::from_pem(&cert, &key)?,
        _ => {
            let ca = Ca::new("Weir cluster CA")?;
            write_pem(&ca_cert, &ca.pem().cert_pem, false)?;
            write_pem(&ca_key, &ca.pem().key_pem, true)?;
            ca
        }
    };
    for (id, hosts) in nodes {
        let pair = ca.node(*id, hosts)?;
        let files = node_files(dir, *id);
        write_pem(&files.cert, &pair.cert_pem, false)?;
        write_pem(&files.key, &pair.key_pem, true)?;
    }
    for user in users {
        let pair = ca.client(user)?;
        write_pem(
            &dir.join(format!("client-{user}.pem")),
            &pair.cert_pem,
            false,
        )?;
        write_pem(&dir.join(format!("client-{user}.key")), &pair.key_pem, true)?;
    }
    Ok(ca)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_791), (2026, 12, 4));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
    }

    #[test]
    fn node_certificates_name_their_node_and_load() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        write_cluster(
            dir.path(),
            &[(3, vec!["127.0.0.1".into(), "localhost".into()])],
            &["alice".into()],
        )?;
        let files = node_files(dir.path(), 3);
        let certs = weir_raft::tls::load_certs(&files.cert)?;
        assert_eq!(weir_raft::tls::node_id_of(&certs[0]), Some(3));
        let client = weir_raft::tls::load_certs(&dir.path().join("client-alice.pem"))?;
        assert_eq!(weir_raft::tls::node_id_of(&client[0]), None);
        // The material loads for node 3 and not as any other node.
        weir_raft::tls::NodeTls::load(files.clone(), 3)?;
        let wrong = weir_raft::tls::NodeTls::load(files, 4);
        assert!(
            matches!(
                wrong,
                Err(weir_raft::tls::TlsError::WrongNode { found: Some(3), .. })
            ),
            "{wrong:?}"
        );
        // A second call reuses the CA.
        let before = std::fs::read_to_string(dir.path().join("ca.pem"))?;
        write_cluster(dir.path(), &[(4, vec!["localhost".into()])], &[])?;
        assert_eq!(before, std::fs::read_to_string(dir.path().join("ca.pem"))?);
        Ok(())
    }
}
