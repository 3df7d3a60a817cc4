//! The replicated security model: users and their SCRAM credentials, bearer-token hashes,
//! certificate identity mappings, ACLs, tenants and quotas. It is part of the cluster
//! [`Metadata`](crate::Metadata) ([`SecurityState`], its `security` field), changed only by the
//! security [`MetadataCommand`]s, and read by the brokers to authenticate and authorize clients.
//!
//! Invariants:
//! - Applying is deterministic: it never draws randomness nor reads the clock. Salts, token
//!   secrets and creation times are chosen by the proposer ([`ScramCredential::generate`],
//!   [`new_token`]) and the command carries only derived values.
//! - No secret is stored or shown: a password only as its SCRAM StoredKey and ServerKey
//!   (RFC 5802), a token only as the SHA-256 of the whole token string. Neither appears in
//!   `Debug` output or error messages; derived keys and hashes are compared in constant time.
//! - A user has at most one credential per mechanism. Tokens and certificate mappings point at
//!   existing users: deleting a user deletes them. ACLs, tenant membership and quotas name
//!   principals and outlive the user (as in Kafka; a certificate principal may have no user
//!   record at all).
//! - Tenants' prefixes never overlap (neither is a prefix of the other), a principal belongs to
//!   at most one tenant, and a tenant's quota goes when the tenant goes.
//! - A rejected command leaves the state unchanged.
//! - Authorization ([`SecurityState::authorize`]): super users may do everything; a tenant's
//!   principals never reach topics or groups outside its prefix; otherwise a matching Deny ACL
//!   wins over any Allow, and without a matching Allow the answer is no.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::metadata::{INTERNAL_TOPICS, MAX_TOPIC_NAME_LEN, MetadataCommand, MetadataError};

// ---------------------------------------------------------------------------------------------
// Principals

/// The principal an ACL names to mean every principal.
pub const ANY_PRINCIPAL: &str = "*";
/// What a user's principal starts with (`User:alice`).
pub const USER_PRINCIPAL_PREFIX: &str = "User:";
/// Longest user name.
pub const MAX_USER_NAME_LEN: usize = 128;
/// Longest tenant name.
pub const MAX_TENANT_NAME_LEN: usize = 64;

/// The principal of user `name`: `User:<name>`.
pub fn user_principal(name: &str) -> String {
    format!("{USER_PRINCIPAL_PREFIX}{name}")
}

/// The user name of a `User:<name>` principal.
pub fn principal_user(principal: &str) -> Option<&str> {
    principal.strip_prefix(USER_PRINCIPAL_PREFIX)
}

/// Checks a user name: 1 to 128 of `[A-Za-z0-9._@-]`.
pub fn validate_user_name(name: &str) -> Result<(), MetadataError> {
    check_name(name, MAX_USER_NAME_LEN, "[A-Za-z0-9._@-]", |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-')
    })
    .map_err(|reason| MetadataError::InvalidUserName {
        name: name.to_string(),
        reason,
    })
}

/// Checks a tenant name: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn validate_tenant_name(name: &str) -> Result<(), MetadataError> {
    check_name(name, MAX_TENANT_NAME_LEN, "[A-Za-z0-9._-]", |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
    })
    .map_err(|reason| {
        MetadataError::InvalidSecurity(format!("invalid tenant name {name:?}: {reason}"))
    })
}

/// Checks a principal as ACLs and tenants name it: `User:<valid user name>`, or [`ANY_PRINCIPAL`]
/// when `any_allowed`.
fn validate_principal(principal: &str, any_allowed: bool) -> Result<(), MetadataError> {
    if principal == ANY_PRINCIPAL {
        return if any_allowed {
            Ok(())
        } else {
            Err(MetadataError::InvalidSecurity(
                "the principal \"*\" cannot be a tenant member".into(),
            ))
        };
    }
    match principal_user(principal) {
        Some(name) => validate_user_name(name),
        None => Err(MetadataError::InvalidSecurity(format!(
            "invalid principal {principal:?}: expected User:<name>{}",
            if any_allowed { " or *" } else { "" }
        ))),
    }
}

/// The reason `name` is not 1 to `max` characters accepted by `ok`, if it is not.
fn check_name(
    name: &str,
    max: usize,
    chars: &str,
    ok: impl Fn(char) -> bool,
) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if let Some(bad) = name.chars().find(|c| !ok(*c)) {
        return Err(format!("character {bad:?} is not one of {chars}"));
    }
    if name.len() > max {
        return Err(format!("it is longer than {max} characters"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// SCRAM

/// A SCRAM mechanism (RFC 5802 with the hashes of RFC 7677 and Kafka).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ScramMechanism {
    /// SCRAM-SHA-256.
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
}

impl ScramMechanism {
    /// Every mechanism.
    pub const ALL: [Self; 2] = [Self::Sha256, Self::Sha512];

    /// The SASL name: `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "SCRAM-SHA-256",
            Self::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The mechanism of a SASL name (ASCII case ignored).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(name.trim()))
    }

    /// Length in bytes of the hash's output (and so of StoredKey and ServerKey).
    pub fn output_len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }
}

impl fmt::Display for ScramMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ScramMechanism {
    type Err = MetadataError;

    fn from_str(s: &str) -> Result<Self, MetadataError> {
        Self::parse(s).ok_or_else(|| {
            MetadataError::InvalidSecurity(format!(
                "invalid SCRAM mechanism {s:?}: expected one of SCRAM-SHA-256, SCRAM-SHA-512"
            ))
        })
    }
}

/// Fewest PBKDF2 iterations a credential may have (RFC 7677's minimum, as Kafka).
pub const MIN_SCRAM_ITERATIONS: u32 = 4096;
/// Most PBKDF2 iterations a credential may have (as Kafka; bounds the cost of
/// [`ScramCredential::verify_password`]).
pub const MAX_SCRAM_ITERATIONS: u32 = 16384;
/// Iterations of a credential made without a choice.
pub const DEFAULT_SCRAM_ITERATIONS: u32 = 4096;
/// Length of a generated salt.
pub const SCRAM_SALT_LEN: usize = 32;
/// Shortest and longest salt a stored credential may have.
pub const SCRAM_SALT_LEN_RANGE: (usize, usize) = (16, 128);

/// `H(data)` with the mechanism's hash.
pub fn hash(mechanism: ScramMechanism, data: &[u8]) -> Vec<u8> {
    match mechanism {
        ScramMechanism::Sha256 => Sha256::digest(data).to_vec(),
        ScramMechanism::Sha512 => Sha512::digest(data).to_vec(),
    }
}

/// `HMAC(key, data)` with the mechanism's hash.
pub fn hmac(mechanism: ScramMechanism, key: &[u8], data: &[u8]) -> Vec<u8> {
    fn mac<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
        match <M as KeyInit>::new_from_slice(key) {
            Ok(mut mac) => {
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            // HMAC takes keys of any length.
            Err(_) => unreachable!("HMAC rejected a key"),
        }
    }
    match mechanism {
        ScramMechanism::Sha256 => mac::<Hmac<Sha256>>(key, data),
        ScramMechanism::Sha512 => mac::<Hmac<Sha512>>(key, data),
    }
}

/// SCRAM's `Hi(password, salt, i)`: PBKDF2-HMAC with the mechanism's hash, one output block.
/// The password is used as its UTF-8 bytes, without SASLprep (as Kafka).
pub fn salted_password(
    mechanism: ScramMechanism,
    password: &str,
    salt: &[u8],
    iterations: u32,
) -> Vec<u8> {
    let mut out = vec![0; mechanism.output_len()];
    match mechanism {
        ScramMechanism::Sha256 => {
            pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
        }
        ScramMechanism::Sha512 => {
            pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), salt, iterations, &mut out);
        }
    }
    out
}

/// Whether two byte strings are equal, in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// A user's SCRAM credential as a server stores it (RFC 5802 §3): it can check a client's proof
/// and prove itself, but does not reveal the password. `Debug` shows no key material.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    /// The mechanism this credential is for.
    pub mechanism: ScramMechanism,
    /// The PBKDF2 salt.
    pub salt: Vec<u8>,
    /// The PBKDF2 iteration count.
    pub iterations: u32,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

impl ScramCredential {
    /// The credential for `password` with `salt` and `iterations`: SaltedPassword =
    /// PBKDF2-HMAC(password, salt, iterations), ClientKey = HMAC(SaltedPassword, "Client Key"),
    /// StoredKey = H(ClientKey), ServerKey = HMAC(SaltedPassword, "Server Key"). Does not check
    /// the parameters (see [`ScramCredential::validate`]).
    pub fn derive(mechanism: ScramMechanism, password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = salted_password(mechanism, password, salt, iterations);
        let client_key = hmac(mechanism, &salted, b"Client Key");
        Self {
            mechanism,
            salt: salt.to_vec(),
            iterations,
            stored_key: hash(mechanism, &client_key),
            server_key: hmac(mechanism, &salted, b"Server Key"),
        }
    }

    /// The credential for `password` with a fresh random salt of [`SCRAM_SALT_LEN`] bytes. For
    /// the proposer: the command then carries only the derived keys. Rejects an empty password
    /// and iterations outside [`MIN_SCRAM_ITERATIONS`]..=[`MAX_SCRAM_ITERATIONS`].
    pub fn generate(
        mechanism: ScramMechanism,
        password: &str,
        iterations: u32,
    ) -> Result<Self, MetadataError> {
        if password.is_empty() {
            return Err(MetadataError::InvalidSecurity(
                "the password is empty".into(),
            ));
        }
        check_iterations(iterations)?;
        let mut salt = [0u8; SCRAM_SALT_LEN];
        rand::rng().fill_bytes(&mut salt);
        Ok(Self::derive(mechanism, password, &salt, iterations))
    }

    /// Whether `password` is the one this credential was derived from. Keys are compared in
    /// constant time; a credential that does not pass [`ScramCredential::validate`] matches no
    /// password.
    pub fn verify_password(&self, password: &str) -> bool {
        if self.validate().is_err() {
            return false;
        }
        let other = Self::derive(self.mechanism, password, &self.salt, self.iterations);
        let stored = other.stored_key.ct_eq(&self.stored_key);
        let server = other.server_key.ct_eq(&self.server_key);
        (stored & server).into()
    }

    /// Checks the parameters: iterations in range, a salt of
    /// [`SCRAM_SALT_LEN_RANGE`] bytes, keys as long as the mechanism's hash.
    pub fn validate(&self) -> Result<(), MetadataError> {
        check_iterations(self.iterations)?;
        let (min, max) = SCRAM_SALT_LEN_RANGE;
        if !(min..=max).contains(&self.salt.len()) {
            return Err(MetadataError::InvalidSecurity(format!(
                "a {} salt must have {min} to {max} bytes, not {}",
                self.mechanism,
                self.salt.len()
            )));
        }
        let len = self.mechanism.output_len();
        if self.stored_key.len() != len || self.server_key.len() != len {
            return Err(MetadataError::InvalidSecurity(format!(
                "{} keys must have {len} bytes",
                self.mechanism
            )));
        }
        Ok(())
    }
}

fn check_iterations(iterations: u32) -> Result<(), MetadataError> {
    if (MIN_SCRAM_ITERATIONS..=MAX_SCRAM_ITERATIONS).contains(&iterations) {
        Ok(())
    } else {
        Err(MetadataError::InvalidSecurity(format!(
            "SCRAM iterations must be in [{MIN_SCRAM_ITERATIONS}, {MAX_SCRAM_ITERATIONS}], not {iterations}"
        )))
    }
}

impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredential")
            .field("mechanism", &self.mechanism)
            .field("iterations", &self.iterations)
            .field("salt", &format_args!("<{} bytes>", self.salt.len()))
            .field("stored_key", &format_args!("<redacted>"))
            .field("server_key", &format_args!("<redacted>"))
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Users

/// A user that can authenticate with SCRAM (with `credentials`), a token or a mapped
/// certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The user name (see [`validate_user_name`]); its principal is `User:<name>`.
    pub name: String,
    /// At most one per mechanism, ordered by mechanism.
    pub credentials: Vec<ScramCredential>,
}

impl UserRecord {
    /// The user's credential for `mechanism`.
    pub fn credential(&self, mechanism: ScramMechanism) -> Option<&ScramCredential> {
        self.credentials.iter().find(|c| c.mechanism == mechanism)
    }

    /// `User:<name>`.
    pub fn principal(&self) -> String {
        user_principal(&self.name)
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens

/// What every bearer token starts with.
pub const TOKEN_PREFIX: &str = "weir_";
/// Length of a token's id: lowercase hex digits of 8 random bytes.
pub const TOKEN_ID_LEN: usize = 16;
/// Length of a token's secret: URL-safe base64 (no padding) of 32 random bytes.
pub const TOKEN_SECRET_LEN: usize = 43;
/// Longest token description.
pub const MAX_TOKEN_DESCRIPTION_LEN: usize = 256;

/// A bearer token as the cluster stores it: the SHA-256 of the token, never the token. `Debug`
/// shows no hash.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The public part of the token (16 lowercase hex characters), its lookup key.
    pub id: String,
    /// The user the token authenticates as.
    pub user: String,
    /// SHA-256 of the whole token string.
    pub hash: Vec<u8>,
    /// When it was made, in milliseconds since the Unix epoch (the proposer's clock).
    pub created_ms: u64,
    /// From when on it is refused; None: never.
    pub expires_ms: Option<u64>,
    /// What it is for, as its creator put it.
    pub description: Option<String>,
}

impl TokenRecord {
    /// Whether the token is refused at `now_ms` for its age.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|expires| now_ms >= expires)
    }

    fn validate(&self) -> Result<(), MetadataError> {
        let bad = |reason: String| Err(MetadataError::InvalidSecurity(reason));
        if !is_token_id(&self.id) {
            return bad(format!(
                "invalid token id {:?}: expected {TOKEN_ID_LEN} lowercase hex digits",
                self.id
            ));
        }
        validate_user_name(&self.user)?;
        if self.hash.len() != 32 {
            return bad("a token hash must be a SHA-256 (32 bytes)".into());
        }
        if let Some(expires) = self.expires_ms
            && expires <= self.created_ms
        {
            return bad(format!(
                "token {} would expire ({expires}) before it was created ({})",
                self.id, self.created_ms
            ));
        }
        if let Some(description) = &self.description
            && description.len() > MAX_TOKEN_DESCRIPTION_LEN
        {
            return bad(format!(
                "a token description may have at most {MAX_TOKEN_DESCRIPTION_LEN} bytes"
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRecord")
            .field("id", &self.id)
            .field("user", &self.user)
            .field("hash", &format_args!("<redacted>"))
            .field("created_ms", &self.created_ms)
            .field("expires_ms", &self.expires_ms)
            .field("description", &self.description)
            .finish()
    }
}

/// A new random token for `user`: the record to propose (`CreateToken`) and the token itself,
/// `weir_<id>_<secret>`, to show its owner once (it is stored nowhere).
pub fn new_token(
    user: &str,
    now_ms: u64,
    expires_ms: Option<u64>,
    description: Option<String>,
) -> (TokenRecord, String) {
    let mut rng = rand::rng();
    let id = format!("{:016x}", rng.next_u64());
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let token = format!("{TOKEN_PREFIX}{id}_{}", URL_SAFE_NO_PAD.encode(secret));
    let record = TokenRecord {
        id,
        user: user.to_string(),
        hash: token_hash(&token),
        created_ms: now_ms,
        expires_ms,
        description,
    };
    (record, token)
}

/// The hash a [`TokenRecord`] stores for `token`: SHA-256 of the whole string.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Splits a well-formed token `weir_<id>_<secret>` into its id and secret.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    if !rest.is_ascii() || rest.len() != TOKEN_ID_LEN + 1 + TOKEN_SECRET_LEN {
        return None;
    }
    let (id, tail) = rest.split_at(TOKEN_ID_LEN);
    let secret = tail.strip_prefix('_')?;
    let base64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    (is_token_id(id) && secret.bytes().all(base64url)).then_some((id, secret))
}

fn is_token_id(id: &str) -> bool {
    id.len() == TOKEN_ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Why a token was refused. The messages never contain the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    /// Not of the form `weir_<16 hex>_<43 base64url>`.
    #[error("malformed token: expected weir_<16 hex digits>_<43 base64url characters>")]
    Malformed,
    /// No token with that id, or the secret does not match (revoked tokens are unknown).
    #[error("unknown or revoked token")]
    Unknown,
    /// Past its expiry.
    #[error("the token has expired")]
    Expired,
    /// The token's user no longer exists.
    #[error("the token's user no longer exists")]
    UserGone,
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// Longest string a certificate matcher may hold.
pub const MAX_CERT_MATCHER_LEN: usize = 1024;

/// What part of a client certificate a [`CertMapping`] matches, exactly as given.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CertMatcher {
    /// The whole subject as an RFC 4514 DN string (`CN=alice,O=Example`).
    Subject(String),
    /// One subject alternative name: a DNS name, email address or URI.
    San(String),
    /// The subject's common name.
    CommonName(String),
}

impl CertMatcher {
    /// The matched string.
    pub fn value(&self) -> &str {
        match self {
            Self::Subject(s) | Self::San(s) | Self::CommonName(s) => s,
        }
    }

    fn validate(&self) -> Result<(), MetadataError> {
        let value = self.value();
        if value.is_empty() || value.len() > MAX_CERT_MATCHER_LEN {
            return Err(MetadataError::InvalidSecurity(format!(
                "a certificate matcher must have 1 to {MAX_CERT_MATCHER_LEN} bytes"
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(MetadataError::InvalidSecurity(
                "a certificate matcher may not contain control characters".into(),
            ));
        }
        Ok(())
    }
}

/// `subject:<dn>`, `san:<name>` or `cn:<name>`, as [`FromStr`] reads it.
impl fmt::Display for CertMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Subject(s) => write!(f, "subject:{s}"),
            Self::San(s) => write!(f, "san:{s}"),
            Self::CommonName(s) => write!(f, "cn:{s}"),
        }
    }
}

impl FromStr for CertMatcher {
    type Err = MetadataError;

    fn from_str(s: &str) -> Result<Self, MetadataError> {
        let (kind, value) = s.split_once(':').unwrap_or((s, ""));
        let matcher = match kind.trim().to_ascii_lowercase().as_str() {
            "subject" => Self::Subject(value.to_string()),
            "san" => Self::San(value.to_string()),
            "cn" => Self::CommonName(value.to_string()),
            _ => {
                return Err(MetadataError::InvalidSecurity(format!(
                    "invalid certificate matcher {s:?}: expected subject:<DN>, san:<name> or cn:<name>"
                )));
            }
        };
        matcher.validate()?;
        Ok(matcher)
    }
}

/// Maps the certificates that `matcher` matches to `user`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertMapping {
    /// What the certificate must have.
    pub matcher: CertMatcher,
    /// The user (an existing one) such a certificate authenticates as.
    pub user: String,
}

// ---------------------------------------------------------------------------------------------
// ACLs

/// Declares a fieldless enum with a lowercase name per value: `ALL`, `as_str`, `Display` and a
/// `FromStr` (ASCII case ignored) whose error names the accepted values.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The lowercase name (as the CLI takes it).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = MetadataError;

            fn from_str(s: &str) -> Result<Self, MetadataError> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str().eq_ignore_ascii_case(s.trim()))
                    .ok_or_else(|| {
                        MetadataError::InvalidSecurity(format!(
                            "invalid {} {s:?}: expected one of {}",
                            $what,
                            [$($text),+].join(", ")
                        ))
                    })
            }
        }
    };
}

named_enum! {
    /// The kind of resource an ACL protects.
    ResourceType, "resource type" {
        /// A topic, by name.
        Topic => "topic",
        /// A consumer group, by id.
        Group => "group",
        /// The cluster itself (one resource, [`CLUSTER_RESOURCE_NAME`]).
        Cluster => "cluster",
    }
}

named_enum! {
    /// How an ACL's resource name matches.
    PatternType, "pattern type" {
        /// The name exactly; the name `*` matches every resource of the type.
        Literal => "literal",
        /// Every name that starts with it.
        Prefixed => "prefixed",
    }
}

named_enum! {
    /// What an ACL allows or denies.
    Operation, "operation" {
        /// Every operation.
        All => "all",
        /// Fetch from a topic; join and commit in a group.
        Read => "read",
        /// Produce to a topic.
        Write => "write",
        /// Create a topic.
        Create => "create",
        /// Delete a topic or group.
        Delete => "delete",
        /// Change a topic's settings or partitions.
        Alter => "alter",
        /// See that it exists and its metadata. Allowed too by an Allow of Read, Write, Delete
        /// or Alter.
        Describe => "describe",
        /// Inter-broker and controller operations on the cluster.
        ClusterAction => "cluster-action",
    }
}

named_enum! {
    /// Whether an ACL allows or denies.
    Permission, "permission" {
        /// Allows the operation (unless a Deny also matches).
        Allow => "allow",
        /// Denies the operation, whatever the Allows.
        Deny => "deny",
    }
}

/// The name of the one [`ResourceType::Cluster`] resource (Kafka's).
pub const CLUSTER_RESOURCE_NAME: &str = "kafka-cluster";
/// Longest ACL resource name.
pub const MAX_ACL_NAME_LEN: usize = 256;

impl Operation {
    /// Whether an Allow ACL for this operation allows `requested`: the same one, All, or
    /// Describe when this is Read, Write, Delete or Alter (Kafka's rule).
    pub fn allows(self, requested: Operation) -> bool {
        self == Self::All
            || self == requested
            || (requested == Self::Describe
                && matches!(self, Self::Read | Self::Write | Self::Delete | Self::Alter))
    }

    /// Whether a Deny ACL for this operation denies `requested`: the same one, or All (a
    /// Deny implies nothing else, as in Kafka).
    pub fn denies(self, requested: Operation) -> bool {
        self == Self::All || self == requested
    }
}

/// One access rule, as Kafka's: `permission` for `principal` to do `operation` on the resources
/// of type `resource` that `name` matches with `pattern`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclRecord {
    /// `User:<name>`, or [`ANY_PRINCIPAL`] for everyone.
    pub principal: String,
    /// The type of the resources it covers.
    pub resource: ResourceType,
    /// How `name` matches resource names.
    pub pattern: PatternType,
    /// A resource name, a prefix, or (literal) `*` for every resource of the type.
    pub name: String,
    /// The operation it covers.
    pub operation: Operation,
    /// Allow or deny.
    pub permission: Permission,
}

impl AclRecord {
    /// Whether it names `principal` (or everyone).
    pub fn matches_principal(&self, principal: &str) -> bool {
        self.principal == principal || self.principal == ANY_PRINCIPAL
    }

    /// Whether it covers the resource `name` of type `resource`.
    pub fn matches_resource(&self, resource: ResourceType, name: &str) -> bool {
        self.resource == resource
            && match self.pattern {
                PatternType::Literal => self.name == name || self.name == "*",
                PatternType::Prefixed => name.starts_with(&self.name),
            }
    }

    fn validate(&self) -> Result<(), MetadataError> {
        let bad = |reason: String| Err(MetadataError::InvalidSecurity(reason));
        validate_principal(&self.principal, true)?;
        if self.name.is_empty() || self.name.len() > MAX_ACL_NAME_LEN {
            return bad(format!(
                "an ACL resource name must have 1 to {MAX_ACL_NAME_LEN} bytes"
            ));
        }
        if self.name.chars().any(char::is_control) {
            return bad("an ACL resource name may not contain control characters".into());
        }
        match self.resource {
            ResourceType::Cluster => {
                if self.pattern != PatternType::Literal
                    || !(self.name == CLUSTER_RESOURCE_NAME || self.name == "*")
                {
                    return bad(format!(
                        "a cluster ACL names the cluster literally: {CLUSTER_RESOURCE_NAME} or *"
                    ));
                }
            }
            ResourceType::Topic | ResourceType::Group => {
                if self.operation == Operation::ClusterAction {
                    return bad(format!(
                        "cluster-action applies to the cluster, not to a {}",
                        self.resource
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `allow User:alice read on topic literal "orders"`.
impl fmt::Display for AclRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} on {} {} {:?}",
            self.permission, self.principal, self.operation, self.resource, self.pattern, self.name
        )
    }
}

/// Selects ACLs: each part that is Some must equal the ACL's (exactly; no pattern matching).
/// The default selects every ACL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclFilter {
    /// The ACL's principal.
    pub principal: Option<String>,
    /// The ACL's resource type.
    pub resource: Option<ResourceType>,
    /// The ACL's pattern type.
    pub pattern: Option<PatternType>,
    /// The ACL's resource name or prefix.
    pub name: Option<String>,
    /// The ACL's operation.
    pub operation: Option<Operation>,
    /// The ACL's permission.
    pub permission: Option<Permission>,
}

impl AclFilter {
    /// Whether it selects `acl`.
    pub fn matches(&self, acl: &AclRecord) -> bool {
        self.principal.as_ref().is_none_or(|p| *p == acl.principal)
            && self.resource.is_none_or(|r| r == acl.resource)
            && self.pattern.is_none_or(|p| p == acl.pattern)
            && self.name.as_ref().is_none_or(|n| *n == acl.name)
            && self.operation.is_none_or(|o| o == acl.operation)
            && self.permission.is_none_or(|p| p == acl.permission)
    }
}

/// An authorization decision and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Allowed: the principal is a super user.
    SuperUser,
    /// Allowed by this ACL (and no Deny matched).
    AllowedBy(&'a AclRecord),
    /// Denied by this ACL.
    DeniedBy(&'a AclRecord),
    /// Denied: no ACL allows it.
    NoMatchingAcl,
    /// Denied: the resource is outside the principal's tenant.
    OutsideTenant(&'a TenantRecord),
}

impl Decision<'_> {
    /// Whether the operation is allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::SuperUser | Self::AllowedBy(_))
    }
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SuperUser => write!(f, "allowed: a super user"),
            Self::AllowedBy(acl) => write!(f, "allowed by ACL {acl}"),
            Self::DeniedBy(acl) => write!(f, "denied by ACL {acl}"),
            Self::NoMatchingAcl => write!(f, "denied: no ACL allows it"),
            Self::OutsideTenant(tenant) => write!(
                f,
                "denied: outside tenant {} (its topics and groups start with {:?})",
                tenant.name, tenant.prefix
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tenants

/// A tenant: the principals confined to the topics and groups whose names start with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    /// 1 to 64 of `[A-Za-z0-9._-]`.
    pub name: String,
    /// The start of every topic and group name of the tenant: 1 to 200 topic-name characters,
    /// not overlapping another tenant's.
    pub prefix: String,
    /// Its members (`User:<name>`); each in no other tenant.
    pub principals: BTreeSet<String>,
}

impl TenantRecord {
    /// Whether a topic or group of this name belongs to the tenant.
    pub fn owns(&self, resource_name: &str) -> bool {
        resource_name.starts_with(&self.prefix)
    }

    fn validate(&self) -> Result<(), MetadataError> {
        let bad = |reason: String| Err(MetadataError::InvalidSecurity(reason));
        validate_tenant_name(&self.name)?;
        if let Err(reason) = check_name(&self.prefix, MAX_TOPIC_NAME_LEN, "[A-Za-z0-9._-]", |c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
        }) {
            return bad(format!("invalid tenant prefix {:?}: {reason}", self.prefix));
        }
        if self.prefix.starts_with("__")
            || INTERNAL_TOPICS.iter().any(|t| t.starts_with(&self.prefix))
        {
            return bad(format!(
                "invalid tenant prefix {:?}: it would own internal topics (names starting with __)",
                self.prefix
            ));
        }
        for principal in &self.principals {
            validate_principal(principal, false)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Quotas

/// Who a quota limits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum QuotaEntity {
    /// One user (its principal `User:<name>`, whether or not it has a user record).
    User(String),
    /// A tenant as a whole.
    Tenant(String),
}

/// `user:alice` or `tenant:team-a`, as [`FromStr`] reads it.
impl fmt::Display for QuotaEntity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(name) => write!(f, "user:{name}"),
            Self::Tenant(name) => write!(f, "tenant:{name}"),
        }
    }
}

impl FromStr for QuotaEntity {
    type Err = MetadataError;

    fn from_str(s: &str) -> Result<Self, MetadataError> {
        let entity = match s.split_once(':') {
            Some((kind, name)) if kind.eq_ignore_ascii_case("user") => Self::User(name.into()),
            Some((kind, name)) if kind.eq_ignore_ascii_case("tenant") => Self::Tenant(name.into()),
            _ => {
                return Err(MetadataError::InvalidSecurity(format!(
                    "invalid quota entity {s:?}: expected user:<name> or tenant:<name>"
                )));
            }
        };
        match &entity {
            Self::User(name) => validate_user_name(name)?,
            Self::Tenant(name) => validate_tenant_name(name)?,
        }
        Ok(entity)
    }
}

/// Limits on an entity; None: no limit. The broker enforces the rates and retained bytes; the
/// metadata enforces a tenant's `max_partitions` when a topic is created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaLimits {
    /// `produce.bytes.per.sec`.
    pub produce_bytes_per_sec: Option<u64>,
    /// `fetch.bytes.per.sec`.
    pub fetch_bytes_per_sec: Option<u64>,
    /// `requests.per.sec`.
    pub requests_per_sec: Option<u64>,
    /// `partitions`: most partitions of the entity's topics.
    pub max_partitions: Option<u32>,
    /// `retained.bytes`: most bytes the entity's topics may keep.
    pub max_retained_bytes: Option<u64>,
}

/// The quota settings' names, as [`QuotaLimits::from_pairs`] takes them.
pub const QUOTA_SETTINGS: &[&str] = &[
    "produce.bytes.per.sec",
    "fetch.bytes.per.sec",
    "requests.per.sec",
    "partitions",
    "retained.bytes",
];

impl QuotaLimits {
    /// The limits named in `pairs` (`produce.bytes.per.sec` = `"1048576"`, ...); the others
    /// None. Values are positive integers (0 is rejected: remove the quota instead); unknown
    /// names are rejected with the known ones listed.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, MetadataError> {
        let mut limits = Self::default();
        for (key, value) in pairs {
            let bad = |expected: &str| MetadataError::InvalidQuota {
                key: key.to_string(),
                value: value.to_string(),
                expected: expected.to_string(),
            };
            let positive = || match value.trim().parse::<u64>() {
                Ok(0) => Err(bad("an integer > 0 (to lift a limit, remove the quota)")),
                Ok(n) => Ok(n),
                Err(_) => Err(bad("an integer > 0")),
            };
            match key {
                "produce.bytes.per.sec" => limits.produce_bytes_per_sec = Some(positive()?),
                "fetch.bytes.per.sec" => limits.fetch_bytes_per_sec = Some(positive()?),
                "requests.per.sec" => limits.requests_per_sec = Some(positive()?),
                "partitions" => {
                    let n = positive()?;
                    let n = u32::try_from(n)
                        .map_err(|_| bad(&format!("an integer in [1, {}]", u32::MAX)))?;
                    limits.max_partitions = Some(n);
                }
                "retained.bytes" => limits.max_retained_bytes = Some(positive()?),
                _ => return Err(MetadataError::UnknownQuotaSetting(key.to_string())),
            }
        }
        Ok(limits)
    }

    /// The limits that are set, by their public names, as `from_pairs` reads them.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        [
            ("produce.bytes.per.sec", self.produce_bytes_per_sec),
            ("fetch.bytes.per.sec", self.fetch_bytes_per_sec),
            ("requests.per.sec", self.requests_per_sec),
            ("partitions", self.max_partitions.map(u64::from)),
            ("retained.bytes", self.max_retained_bytes),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.map(|v| (key, v.to_string())))
        .collect()
    }

    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// These limits with the ones set in `other` replacing theirs.
    pub fn merged(self, other: &Self) -> Self {
        Self {
            produce_bytes_per_sec: other.produce_bytes_per_sec.or(self.produce_bytes_per_sec),
            fetch_bytes_per_sec: other.fetch_bytes_per_sec.or(self.fetch_bytes_per_sec),
            requests_per_sec: other.requests_per_sec.or(self.requests_per_sec),
            max_partitions: other.max_partitions.or(self.max_partitions),
            max_retained_bytes: other.max_retained_bytes.or(self.max_retained_bytes),
        }
    }

    fn validate(&self) -> Result<(), MetadataError> {
        if self.is_empty() {
            return Err(MetadataError::InvalidSecurity(format!(
                "a quota needs at least one limit (known: {})",
                QUOTA_SETTINGS.join(", ")
            )));
        }
        let zero = [
            ("produce.bytes.per.sec", self.produce_bytes_per_sec),
            ("fetch.bytes.per.sec", self.fetch_bytes_per_sec),
            ("requests.per.sec", self.requests_per_sec),
            ("partitions", self.max_partitions.map(u64::from)),
            ("retained.bytes", self.max_retained_bytes),
        ]
        .into_iter()
        .find(|(_, value)| *value == Some(0));
        match zero {
            Some((key, _)) => Err(MetadataError::InvalidQuota {
                key: key.to_string(),
                value: "0".into(),
                expected: "an integer > 0 (to lift a limit, remove the quota)".into(),
            }),
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The state

/// Users, tokens, certificate mappings, ACLs, tenants and quotas: the security part of the
/// metadata. Changed only by the security commands of [`MetadataCommand`] (see the module
/// documentation for its invariants).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityState {
    users: BTreeMap<String, UserRecord>,
    /// By token id.
    tokens: BTreeMap<String, TokenRecord>,
    /// Matcher → user name.
    cert_mappings: BTreeMap<CertMatcher, String>,
    acls: BTreeSet<AclRecord>,
    tenants: BTreeMap<String, TenantRecord>,
    quotas: BTreeMap<QuotaEntity, QuotaLimits>,
}

impl SecurityState {
    /// Every user, by name.
    pub fn users(&self) -> impl Iterator<Item = &UserRecord> {
        self.users.values()
    }

    /// The user `name`.
    pub fn user(&self, name: &str) -> Option<&UserRecord> {
        self.users.get(name)
    }

    /// The SCRAM credential of user `name` for `mechanism` (what a SASL listener looks up).
    pub fn scram_credential(
        &self,
        name: &str,
        mechanism: ScramMechanism,
    ) -> Option<&ScramCredential> {
        self.users.get(name)?.credential(mechanism)
    }

    /// Every token, by id.
    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values()
    }

    /// The token with this id.
    pub fn token(&self, id: &str) -> Option<&TokenRecord> {
        self.tokens.get(id)
    }

    /// The principal a bearer token authenticates at `now_ms`, `User:<name>`. The token's hash
    /// is compared in constant time; a wrong secret is `Unknown`, like an unknown id.
    pub fn authenticate_token(&self, token: &str, now_ms: u64) -> Result<String, TokenRejection> {
        let (id, _) = parse_token(token).ok_or(TokenRejection::Malformed)?;
        let record = self.tokens.get(id).ok_or(TokenRejection::Unknown)?;
        if !constant_time_eq(&token_hash(token), &record.hash) {
            return Err(TokenRejection::Unknown);
        }
        if record.is_expired(now_ms) {
            return Err(TokenRejection::Expired);
        }
        if !self.users.contains_key(&record.user) {
            return Err(TokenRejection::UserGone);
        }
        Ok(user_principal(&record.user))
    }

    /// Every certificate mapping: matcher and user name.
    pub fn cert_mappings(&self) -> impl Iterator<Item = (&CertMatcher, &str)> {
        self.cert_mappings.iter().map(|(m, u)| (m, u.as_str()))
    }

    /// The principal a client certificate authenticates as: the user of a mapping that matches
    /// its `subject`, else of one that matches one of its `sans` (the first in the certificate's
    /// order), else of one that matches its `common_name`; without a mapping, `User:<common
    /// name>` when the common name is a valid user name; else none.
    pub fn principal_for_cert(
        &self,
        subject: &str,
        common_name: Option<&str>,
        sans: &[String],
    ) -> Option<String> {
        let mapped = self
            .cert_mappings
            .get(&CertMatcher::Subject(subject.to_string()))
            .or_else(|| {
                sans.iter()
                    .find_map(|san| self.cert_mappings.get(&CertMatcher::San(san.clone())))
            })
            .or_else(|| {
                common_name.and_then(|cn| {
                    self.cert_mappings
                        .get(&CertMatcher::CommonName(cn.to_string()))
                })
            });
        if let Some(user) = mapped {
            return Some(user_principal(user));
        }
        let cn = common_name?;
        validate_user_name(cn).ok()?;
        Some(user_principal(cn))
    }

    /// The ACLs `filter` selects, in a stable order.
    pub fn acls(&self, filter: &AclFilter) -> Vec<&AclRecord> {
        self.acls.iter().filter(|acl| filter.matches(acl)).collect()
    }

    /// Every tenant, by name.
    pub fn tenants(&self) -> impl Iterator<Item = &TenantRecord> {
        self.tenants.values()
    }

    /// The tenant `name`.
    pub fn tenant(&self, name: &str) -> Option<&TenantRecord> {
        self.tenants.get(name)
    }

    /// The tenant `principal` belongs to.
    pub fn tenant_of(&self, principal: &str) -> Option<&TenantRecord> {
        self.tenants
            .values()
            .find(|t| t.principals.contains(principal))
    }

    /// The tenant whose prefix starts `resource_name` (a topic or group name).
    pub fn tenant_owning(&self, resource_name: &str) -> Option<&TenantRecord> {
        self.tenants.values().find(|t| t.owns(resource_name))
    }

    /// Every quota.
    pub fn quotas(&self) -> impl Iterator<Item = (&QuotaEntity, &QuotaLimits)> {
        self.quotas.iter()
    }

    /// The quota of `entity`.
    pub fn quota(&self, entity: &QuotaEntity) -> Option<&QuotaLimits> {
        self.quotas.get(entity)
    }

    /// Whether `principal` may do `op` on the resource `name` of type `resource`. In order:
    /// super users (principals in `super_users`) may do everything; a tenant's principal may not
    /// reach a topic or group outside its tenant's prefix; an ACL for the principal (or `*`)
    /// that covers the resource and denies the operation denies it; one that allows it allows
    /// it; otherwise it is denied.
    ///
    /// Creating a topic is allowed by Create on the topic or on the cluster: use
    /// [`SecurityState::authorize_create_topic`], not this with `Topic`/`Create`, which sees
    /// only the topic's ACLs.
    pub fn authorize(
        &self,
        principal: &str,
        super_users: &[String],
        resource: ResourceType,
        name: &str,
        op: Operation,
    ) -> Decision<'_> {
        if super_users.iter().any(|s| s == principal) {
            return Decision::SuperUser;
        }
        if let Some(outside) = self.confine(principal, resource, name) {
            return outside;
        }
        self.decide(principal, &[(resource, name)], op)
    }

    /// Whether `principal` may create the topic `topic`: as [`SecurityState::authorize`], with
    /// the Create ACLs of the topic and of the cluster together (a Deny of either wins; an Allow
    /// of either allows).
    pub fn authorize_create_topic(
        &self,
        principal: &str,
        super_users: &[String],
        topic: &str,
    ) -> Decision<'_> {
        if super_users.iter().any(|s| s == principal) {
            return Decision::SuperUser;
        }
        if let Some(outside) = self.confine(principal, ResourceType::Topic, topic) {
            return outside;
        }
        self.decide(
            principal,
            &[
                (ResourceType::Topic, topic),
                (ResourceType::Cluster, CLUSTER_RESOURCE_NAME),
            ],
            Operation::Create,
        )
    }

    fn confine(&self, principal: &str, resource: ResourceType, name: &str) -> Option<Decision<'_>> {
        if resource == ResourceType::Cluster {
            return None;
        }
        self.tenant_of(principal)
            .filter(|tenant| !tenant.owns(name))
            .map(Decision::OutsideTenant)
    }

    fn decide(
        &self,
        principal: &str,
        resources: &[(ResourceType, &str)],
        op: Operation,
    ) -> Decision<'_> {
        let mut allowed = None;
        for acl in self.acls.iter().filter(|acl| {
            acl.matches_principal(principal)
                && resources.iter().any(|(r, n)| acl.matches_resource(*r, n))
        }) {
            match acl.permission {
                Permission::Deny if acl.operation.denies(op) => return Decision::DeniedBy(acl),
                Permission::Allow if allowed.is_none() && acl.operation.allows(op) => {
                    allowed = Some(acl);
                }
                _ => {}
            }
        }
        allowed.map_or(Decision::NoMatchingAcl, Decision::AllowedBy)
    }

    /// Applies a security command (the others are rejected). The reply: `UpsertUser`,
    /// `UpsertTenant`, `SetQuota`, `AddCertMapping`, `AddAcl`: 1 when it created something, 0
    /// when it replaced or merged into what was there (or it was there already); `DeleteUser`:
    /// the number of tokens and certificate mappings deleted with the user; `RemoveAcls`: the
    /// number removed; the other removals: 1.
    pub(crate) fn apply(&mut self, command: MetadataCommand) -> Result<u64, MetadataError> {
        match command {
            MetadataCommand::UpsertUser { name, credentials } => {
                self.upsert_user(name, credentials)
            }
            MetadataCommand::DeleteUser { name } => self.delete_user(&name),
            MetadataCommand::CreateToken(record) => {
                record.validate()?;
                if !self.users.contains_key(&record.user) {
                    return Err(MetadataError::UnknownUser(record.user));
                }
                if self.tokens.contains_key(&record.id) {
                    return Err(MetadataError::TokenExists(record.id));
                }
                self.tokens.insert(record.id.clone(), record);
                Ok(1)
            }
            MetadataCommand::RevokeToken { id } => match self.tokens.remove(&id) {
                Some(_) => Ok(1),
                None => Err(MetadataError::UnknownToken(id)),
            },
            MetadataCommand::AddCertMapping(CertMapping { matcher, user }) => {
                matcher.validate()?;
                if !self.users.contains_key(&user) {
                    return Err(MetadataError::UnknownUser(user));
                }
                match self.cert_mappings.get(&matcher) {
                    Some(existing) if *existing == user => Ok(0),
                    Some(existing) => Err(MetadataError::CertMappingExists {
                        matcher: matcher.to_string(),
                        user: existing.clone(),
                    }),
                    None => {
                        self.cert_mappings.insert(matcher, user);
                        Ok(1)
                    }
                }
            }
            MetadataCommand::RemoveCertMapping(matcher) => {
                match self.cert_mappings.remove(&matcher) {
                    Some(_) => Ok(1),
                    None => Err(MetadataError::UnknownCertMapping(matcher.to_string())),
                }
            }
            MetadataCommand::AddAcl(acl) => {
                acl.validate()?;
                Ok(u64::from(self.acls.insert(acl)))
            }
            MetadataCommand::RemoveAcls(filter) => {
                let before = self.acls.len();
                self.acls.retain(|acl| !filter.matches(acl));
                Ok((before - self.acls.len()) as u64)
            }
            MetadataCommand::UpsertTenant(tenant) => self.upsert_tenant(tenant),
            MetadataCommand::DeleteTenant { name } => match self.tenants.remove(&name) {
                Some(_) => {
                    self.quotas.remove(&QuotaEntity::Tenant(name));
                    Ok(1)
                }
                None => Err(MetadataError::UnknownTenant(name)),
            },
            MetadataCommand::SetQuota { entity, limits } => {
                match &entity {
                    QuotaEntity::User(name) => validate_user_name(name)?,
                    QuotaEntity::Tenant(name) => {
                        if !self.tenants.contains_key(name) {
                            return Err(MetadataError::UnknownTenant(name.clone()));
                        }
                    }
                }
                limits.validate()?;
                match self.quotas.get_mut(&entity) {
                    Some(existing) => {
                        *existing = existing.merged(&limits);
                        Ok(0)
                    }
                    None => {
                        self.quotas.insert(entity, limits);
                        Ok(1)
                    }
                }
            }
            MetadataCommand::RemoveQuota { entity } => match self.quotas.remove(&entity) {
                Some(_) => Ok(1),
                None => Err(MetadataError::UnknownQuota(entity.to_string())),
            },
            MetadataCommand::RegisterBroker { .. }
            | MetadataCommand::CreateTopic { .. }
            | MetadataCommand::CreateUserTopic { .. }
            | MetadataCommand::DeleteTopic { .. }
            | MetadataCommand::ReassignPartition { .. }
            | MetadataCommand::SetDecommissioning { .. }
            | MetadataCommand::ReassignmentDone { .. }
            | MetadataCommand::SetKafkaListener { .. }
            | MetadataCommand::AddPartitions { .. }
            | MetadataCommand::AlterTopicConfig { .. }
            | MetadataCommand::AllocateProducerId => {
                Err(MetadataError::Invalid("not a security command".to_string()))
            }
        }
    }

    fn upsert_user(
        &mut self,
        name: String,
        credentials: Vec<ScramCredential>,
    ) -> Result<u64, MetadataError> {
        validate_user_name(&name)?;
        let mut mechanisms = BTreeSet::new();
        for credential in &credentials {
            credential.validate()?;
            if !mechanisms.insert(credential.mechanism) {
                return Err(MetadataError::InvalidSecurity(format!(
                    "two {} credentials given for user {name:?}",
                    credential.mechanism
                )));
            }
        }
        let created = !self.users.contains_key(&name);
        let user = self
            .users
            .entry(name.clone())
            .or_insert_with(|| UserRecord {
                name,
                credentials: Vec::new(),
            });
        user.credentials
            .retain(|c| !mechanisms.contains(&c.mechanism));
        user.credentials.extend(credentials);
        user.credentials.sort_by_key(|c| c.mechanism);
        Ok(u64::from(created))
    }

    fn delete_user(&mut self, name: &str) -> Result<u64, MetadataError> {
        if self.users.remove(name).is_none() {
            return Err(MetadataError::UnknownUser(name.to_string()));
        }
        let before = self.tokens.len() + self.cert_mappings.len();
        self.tokens.retain(|_, token| token.user != name);
        self.cert_mappings.retain(|_, user| user != name);
        Ok((before - self.tokens.len() - self.cert_mappings.len()) as u64)
    }

    fn upsert_tenant(&mut self, tenant: TenantRecord) -> Result<u64, MetadataError> {
        tenant.validate()?;
        for other in self.tenants.values().filter(|t| t.name != tenant.name) {
            if other.prefix.starts_with(&tenant.prefix) || tenant.prefix.starts_with(&other.prefix)
            {
                return Err(MetadataError::TenantPrefixOverlap {
                    tenant: tenant.name,
                    prefix: tenant.prefix,
                    other: other.name.clone(),
                    other_prefix: other.prefix.clone(),
                });
            }
            if let Some(principal) = tenant.principals.intersection(&other.principals).next() {
                return Err(MetadataError::PrincipalInOtherTenant {
                    principal: principal.clone(),
                    tenant: other.name.clone(),
                });
            }
        }
        Ok(u64::from(
            self.tenants.insert(tenant.name.clone(), tenant).is_none(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;
    use proptest::prelude::*;

    use super::*;

    fn apply(state: &mut SecurityState, command: MetadataCommand) -> Result<u64, MetadataError> {
        state.apply(command)
    }

    fn credential(mechanism: ScramMechanism, password: &str) -> ScramCredential {
        ScramCredential::derive(mechanism, password, &[7; 16], MIN_SCRAM_ITERATIONS)
    }

    fn with_users(names: &[&str]) -> SecurityState {
        let mut state = SecurityState::default();
        for name in names {
            apply(
                &mut state,
                MetadataCommand::UpsertUser {
                    name: (*name).into(),
                    credentials: vec![],
                },
            )
            .unwrap();
        }
        state
    }

    fn acl(
        principal: &str,
        resource: ResourceType,
        pattern: PatternType,
        name: &str,
        operation: Operation,
        permission: Permission,
    ) -> AclRecord {
        AclRecord {
            principal: principal.into(),
            resource,
            pattern,
            name: name.into(),
            operation,
            permission,
        }
    }

    fn tenant(name: &str, prefix: &str, principals: &[&str]) -> TenantRecord {
        TenantRecord {
            name: name.into(),
            prefix: prefix.into(),
            principals: principals.iter().map(|p| (*p).to_string()).collect(),
        }
    }

    /// RFC 7677 §3: the SCRAM-SHA-256 exchange for user "user", password "pencil". The keys
    /// derived from the password must verify the client's proof and produce the server's
    /// signature of that exchange.
    #[test]
    fn rfc_7677_scram_sha_256_exchange() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let m = ScramMechanism::Sha256;
        let credential = ScramCredential::derive(m, "pencil", &salt, 4096);
        credential.validate().unwrap();
        let client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let client_final_without_proof =
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let auth_message =
            format!("{client_first_bare},{server_first},{client_final_without_proof}");
        let proof = STANDARD
            .decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        let server_signature = STANDARD
            .decode("6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();

        // The server's check: ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage), and
        // H(ClientKey) must be StoredKey.
        let client_signature = hmac(m, &credential.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        assert!(constant_time_eq(
            &hash(m, &client_key),
            &credential.stored_key
        ));
        // The server's proof.
        assert_eq!(
            hmac(m, &credential.server_key, auth_message.as_bytes()),
            server_signature
        );
        // And from the password directly.
        let salted = salted_password(m, "pencil", &salt, 4096);
        assert_eq!(hmac(m, &salted, b"Client Key"), client_key);
        assert!(credential.verify_password("pencil"));
        assert!(!credential.verify_password("pencil "));
        assert!(!credential.verify_password(""));
    }

    #[test]
    fn scram_sha_512_round_trip_and_fresh_salts() {
        let m = ScramMechanism::Sha512;
        let a = ScramCredential::generate(m, "correct horse", DEFAULT_SCRAM_ITERATIONS).unwrap();
        let b = ScramCredential::generate(m, "correct horse", DEFAULT_SCRAM_ITERATIONS).unwrap();
        a.validate().unwrap();
        assert_eq!(a.salt.len(), SCRAM_SALT_LEN);
        assert_eq!(a.stored_key.len(), 64);
        assert_eq!(a.server_key.len(), 64);
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.stored_key, b.stored_key);
        assert!(a.verify_password("correct horse"));
        assert!(b.verify_password("correct horse"));
        assert!(!a.verify_password("correct horse battery"));
        // The same inputs derive the same keys.
        assert_eq!(
            ScramCredential::derive(m, "correct horse", &a.salt, a.iterations),
            a
        );
    }

    #[test]
    fn scram_parameters_are_checked() {
        let m = ScramMechanism::Sha256;
        for iterations in [0, 1, MIN_SCRAM_ITERATIONS - 1, MAX_SCRAM_ITERATIONS + 1] {
            let err = ScramCredential::generate(m, "pw", iterations).unwrap_err();
            assert!(err.to_string().contains("4096"), "{err}");
        }
        assert!(ScramCredential::generate(m, "", 4096).is_err());
        let mut short_salt = ScramCredential::derive(m, "pw", &[1; 8], 4096);
        assert!(short_salt.validate().is_err());
        assert!(!short_salt.verify_password("pw"));
        short_salt.salt = vec![1; 16];
        short_salt.stored_key.pop();
        assert!(short_salt.validate().is_err());
        let low = ScramCredential::derive(m, "pw", &[1; 16], 4095);
        assert!(
            !low.verify_password("pw"),
            "below the minimum never matches"
        );
    }

    #[test]
    fn mechanisms_and_names_parse() {
        for m in ScramMechanism::ALL {
            assert_eq!(m.as_str().parse::<ScramMechanism>().unwrap(), m);
            assert_eq!(
                m.to_string()
                    .to_lowercase()
                    .parse::<ScramMechanism>()
                    .unwrap(),
                m
            );
        }
        let err = "SCRAM-SHA-1".parse::<ScramMechanism>().unwrap_err();
        assert!(
            err.to_string().contains("SCRAM-SHA-256, SCRAM-SHA-512"),
            "{err}"
        );
        assert_eq!(user_principal("alice"), "User:alice");
        assert_eq!(principal_user("User:alice"), Some("alice"));
        for good in ["alice", "a.b-c_d@example.com", "X", &"a".repeat(128)] {
            validate_user_name(good).unwrap();
        }
        for (bad, reason) in [
            ("", "empty"),
            ("a b", "' '"),
            ("ál", "'á'"),
            ("a:b", "':'"),
            ("a*", "'*'"),
            (&"a".repeat(129), "128"),
        ] {
            let err = validate_user_name(bad).unwrap_err();
            assert!(
                matches!(err, MetadataError::InvalidUserName { .. }),
                "{bad:?}: {err}"
            );
            assert!(err.to_string().contains(reason), "{bad:?}: {err}");
        }
    }

    #[test]
    fn debug_output_shows_no_key_material() {
        let credential = credential(ScramMechanism::Sha256, "pw");
        let (token, secret) = new_token("alice", 1, None, Some("ci".into()));
        let command = MetadataCommand::UpsertUser {
            name: "alice".into(),
            credentials: vec![credential.clone()],
        };
        for text in [
            format!("{credential:?}"),
            format!("{command:?}"),
            format!("{token:?}"),
            format!("{:?}", MetadataCommand::CreateToken(token.clone())),
        ] {
            assert!(text.contains("<redacted>"), "{text}");
            for bytes in [&credential.stored_key, &credential.server_key, &token.hash] {
                assert!(!text.contains(&format!("{bytes:?}")), "{text}");
                assert!(!text.contains(&format!("{}", bytes[0])) || bytes[0] < 100);
            }
            assert!(!text.contains(&secret), "{text}");
        }
        assert!(format!("{token:?}").contains(&token.id));
    }

    #[test]
    fn tokens_have_the_documented_form() {
        let (record, token) = new_token("alice", 1000, Some(2000), None);
        assert_eq!(token.len(), 5 + TOKEN_ID_LEN + 1 + TOKEN_SECRET_LEN);
        let (id, secret) = parse_token(&token).unwrap();
        assert_eq!(id, record.id);
        assert_eq!(secret.len(), TOKEN_SECRET_LEN);
        assert_eq!(URL_SAFE_NO_PAD.decode(secret).unwrap().len(), 32);
        assert_eq!(record.hash, token_hash(&token));
        assert_eq!(record.created_ms, 1000);
        record.validate().unwrap();
        let (other, other_token) = new_token("alice", 1000, None, None);
        assert_ne!(other.id, record.id);
        assert_ne!(other_token, token);
        let good_secret = "A".repeat(TOKEN_SECRET_LEN);
        for bad in [
            String::new(),
            "weir_".into(),
            token[..token.len() - 1].to_string(),
            format!("{token}A"),
            token.replacen("weir_", "wier_", 1),
            format!("weir_0123456789ABCDEF_{good_secret}"),
            format!("weir_0123456789abcdef-{good_secret}"),
            format!(
                "weir_0123456789abcdef_{}+",
                "A".repeat(TOKEN_SECRET_LEN - 1)
            ),
            format!("weir_0123456789abcdeé_{}", "A".repeat(TOKEN_SECRET_LEN - 1)),
        ] {
            assert_eq!(parse_token(&bad), None, "{bad:?}");
        }
        assert!(parse_token(&format!("weir_0123456789abcdef_{good_secret}")).is_some());
    }

    #[test]
    fn tokens_authenticate_until_expired_revoked_or_their_user_is_deleted() {
        let mut state = SecurityState::default();
        let (record, token) = new_token("alice", 1000, Some(5000), None);
        assert_eq!(
            apply(&mut state, MetadataCommand::CreateToken(record.clone())),
            Err(MetadataError::UnknownUser("alice".into()))
        );
        state = with_users(&["alice", "bob"]);
        assert_eq!(
            apply(&mut state, MetadataCommand::CreateToken(record.clone())),
            Ok(1)
        );
        assert_eq!(
            apply(&mut state, MetadataCommand::CreateToken(record.clone())),
            Err(MetadataError::TokenExists(record.id.clone()))
        );
        assert_eq!(
            state.authenticate_token(&token, 4999),
            Ok("User:alice".to_string())
        );
        assert_eq!(
            state.authenticate_token(&token, 5000),
            Err(TokenRejection::Expired)
        );
        assert_eq!(
            state.authenticate_token("Bearer x", 0),
            Err(TokenRejection::Malformed)
        );
        // Right id, wrong secret.
        let (id, _) = parse_token(&token).unwrap();
        let forged = format!("weir_{id}_{}", "A".repeat(TOKEN_SECRET_LEN));
        assert_eq!(
            state.authenticate_token(&forged, 0),
            Err(TokenRejection::Unknown)
        );
        let (unknown, unknown_token) = new_token("alice", 0, None, None);
        assert!(state.token(&unknown.id).is_none());
        assert_eq!(
            state.authenticate_token(&unknown_token, 0),
            Err(TokenRejection::Unknown)
        );

        // Revoked.
        assert_eq!(
            apply(
                &mut state,
                MetadataCommand::RevokeToken {
                    id: record.id.clone()
                }
            ),
            Ok(1)
        );
        assert_eq!(
            state.authenticate_token(&token, 0),
            Err(TokenRejection::Unknown)
        );
        assert_eq!(
            apply(
                &mut state,
                MetadataCommand::RevokeToken {
                    id: record.id.clone()
                }
            ),
            Err(MetadataError::UnknownToken(record.id.clone()))
        );

        // Deleting the user deletes its tokens (and only its).
        let (a, a_token) = new_token("alice", 0, None, None);
        let (b, b_token) = new_token("bob", 0, None, Some("bob's".into()));
        apply(&mut state, MetadataCommand::CreateToken(a.clone())).unwrap();
        apply(&mut state, MetadataCommand::CreateToken(b)).unwrap();
        assert_eq!(
            apply(
                &mut state,
                MetadataCommand::DeleteUser {
                    name: "alice".into()
                }
            ),
            Ok(1)
        );
        assert_eq!(
            state.authenticate_token(&a_token, 0),
            Err(TokenRejection::Unknown)
        );
        assert_eq!(state.authenticate_token(&b_token, 0), Ok("User:bob".into()));
        // A token whose user is gone (not reachable through commands) is refused.
        state.tokens.insert(a.id.clone(), a);
        assert_eq!(
            state.authenticate_token(&a_token, 0),
            Err(TokenRejection::UserGone)
        );
    }

    #[test]
    fn malformed_token_records_are_rejected() {
        let mut state = with_users(&["alice"]);
        let before = state.clone();
        let (good, _) = new_token("alice", 1000, Some(2000), None);
        let cases: [fn(&mut TokenRecord); 6] = [
            |t| t.id = "XYZ".into(),
            |t| t.id = "0123456789ABCDEF".into(),
            |t| t.hash.truncate(16),
            |t| t.expires_ms = Some(1000),
            |t| t.description = Some("x".repeat(MAX_TOKEN_DESCRIPTION_LEN + 1)),
            |t| t.user = "a b".into(),
        ];
        for spoil in cases {
            let mut record = good.clone();
            spoil(&mut record);
            let err = apply(&mut state, MetadataCommand::CreateToken(record)).unwrap_err();
            assert!(
                matches!(
                    err,
                    MetadataError::InvalidSecurity(_) | MetadataError::InvalidUserName { .. }
                ),
                "{err}"
            );
        }
        assert_eq!(state, before);
    }

    #[test]
    fn users_keep_one_credential_per_mechanism() {
        let mut state = SecurityState::default();
        let sha256 = credential(ScramMechanism::Sha256, "one");
        let sha512 = credential(ScramMechanism::Sha512, "two");
        let upsert = |credentials| MetadataCommand::UpsertUser {
            name: "alice".into(),
            credentials,
        };
        assert_eq!(apply(&mut state, upsert(vec![sha512.clone()])), Ok(1));
        assert_eq!(apply(&mut state, upsert(vec![sha256.clone()])), Ok(0));
        let user = state.user("alice").unwrap();
        assert_eq!(user.credentials, vec![sha256.clone(), sha512.clone()]);
        // Replacing one mechanism leaves the other.
        let new_sha256 = credential(ScramMechanism::Sha256, "three");
        apply(&mut state, upsert(vec![new_sha256.clone()])).unwrap();
        assert_eq!(
            state.scram_credential("alice", ScramMechanism::Sha256),
            Some(&new_sha256)
        );
        assert_eq!(
            state.scram_credential("alice", ScramMechanism::Sha512),
            Some(&sha512)
        );
        assert_eq!(state.users().count(), 1);
        assert_eq!(state.user("alice").unwrap().principal(), "User:alice");

        let before = state.clone();
        let low = ScramCredential::derive(ScramMechanism::Sha256, "x", &[1; 16], 1000);
        for bad in [
            upsert(vec![sha256.clone(), new_sha256.clone()]),
            upsert(vec![low]),
            MetadataCommand::UpsertUser {
                name: "bad name".into(),
                credentials: vec![],
            },
            MetadataCommand::DeleteUser {
                name: "nobody".into(),
            },
        ] {
            assert!(apply(&mut state, bad).is_err());
        }
        assert_eq!(state, before);
    }

    #[test]
    fn cert_mappings_take_precedence_over_the_common_name() {
        let mut state = with_users(&["alice", "bob", "carol", "svc"]);
        let map = |matcher, user: &str| {
            MetadataCommand::AddCertMapping(CertMapping {
                matcher,
                user: user.into(),
            })
        };
        let subject = "CN=svc-1,O=Example";
        let sans = vec!["svc.example.com".to_string(), "spiffe://x/svc".into()];
        // Default rule: User:<CN> when the CN is a valid user name.
        assert_eq!(
            state.principal_for_cert(subject, Some("svc-1"), &sans),
            Some("User:svc-1".into())
        );
        assert_eq!(
            state.principal_for_cert(subject, Some("svc 1"), &sans),
            None
        );
        assert_eq!(state.principal_for_cert(subject, None, &sans), None);
        // CN mapping, then SAN, then subject, each overriding the one before.
        apply(
            &mut state,
            map(CertMatcher::CommonName("svc-1".into()), "carol"),
        )
        .unwrap();
        assert_eq!(
            state.principal_for_cert(subject, Some("svc-1"), &sans),
            Some("User:carol".into())
        );
        apply(
            &mut state,
            map(CertMatcher::San("spiffe://x/svc".into()), "bob"),
        )
        .unwrap();
        assert_eq!(
            state.principal_for_cert(subject, Some("svc-1"), &sans),
            Some("User:bob".into())
        );
        apply(
            &mut state,
            map(CertMatcher::San("svc.example.com".into()), "svc"),
        )
        .unwrap();
        assert_eq!(
            state.principal_for_cert(subject, Some("svc-1"), &sans),
            Some("User:svc".into()),
            "the certificate's first mapped SAN"
        );
        apply(
            &mut state,
            map(CertMatcher::Subject(subject.into()), "alice"),
        )
        .unwrap();
        assert_eq!(
            state.principal_for_cert(subject, Some("svc-1"), &sans),
            Some("User:alice".into())
        );
        // Idempotent; another user for a mapped matcher is refused; unknown users refused.
        assert_eq!(
            apply(
                &mut state,
                map(CertMatcher::Subject(subject.into()), "alice")
            ),
            Ok(0)
        );
        let before = state.clone();
        assert!(matches!(
            apply(&mut state, map(CertMatcher::Subject(subject.into()), "bob")),
            Err(MetadataError::CertMappingExists { .. })
        ));
        assert_eq!(
            apply(&mut state, map(CertMatcher::CommonName("x".into()), "dave")),
            Err(MetadataError::UnknownUser("dave".into()))
        );
        assert!(apply(&mut state, map(CertMatcher::San(String::new()), "bob")).is_err());
        assert_eq!(state, before);
        // Removing, and deleting the user removes the mappings to it.
        assert_eq!(
            apply(
                &mut state,
                MetadataCommand::RemoveCertMapping(CertMatcher::Subject(subject.into()))
            ),
            Ok(1)
        );
        assert!(matches!(
            apply(
                &mut state,
                MetadataCommand::RemoveCertMapping(CertMatcher::Subject(subject.into()))
            ),
            Err(MetadataError::UnknownCertMapping(_))
        ));
        apply(
            &mut state,
            MetadataCommand::DeleteUser { name: "svc".into() },
        )
        .unwrap();
        assert_eq!(
            state.principal_for_cert(subject, Some("svc-1"), &sans),
            Some("User:bob".into())
        );
        assert_eq!(state.cert_mappings().count(), 2);
    }

    #[test]
    fn cert_matchers_parse_and_render() {
        for matcher in [
            CertMatcher::Subject("CN=a,O=b".into()),
            CertMatcher::San("a.example.com".into()),
            CertMatcher::CommonName("alice".into()),
        ] {
            assert_eq!(matcher.to_string().parse::<CertMatcher>().unwrap(), matcher);
        }
        let err = "dn:CN=a".parse::<CertMatcher>().unwrap_err();
        assert!(err.to_string().contains("subject:<DN>"), "{err}");
        assert!("cn:".parse::<CertMatcher>().is_err());
    }

    #[test]
    fn enums_parse_their_lowercase_names_and_name_the_accepted_ones() {
        for r in ResourceType::ALL {
            assert_eq!(r.to_string().parse::<ResourceType>().unwrap(), *r);
        }
        for p in PatternType::ALL {
            assert_eq!(p.to_string().parse::<PatternType>().unwrap(), *p);
        }
        for o in Operation::ALL {
            assert_eq!(o.to_string().parse::<Operation>().unwrap(), *o);
        }
        for p in Permission::ALL {
            assert_eq!(p.to_string().parse::<Permission>().unwrap(), *p);
        }
        assert_eq!(
            "cluster-action".parse::<Operation>().unwrap(),
            Operation::ClusterAction
        );
        assert_eq!(
            "TOPIC".parse::<ResourceType>().unwrap(),
            ResourceType::Topic
        );
        for (err, accepted) in [
            (
                "queue".parse::<ResourceType>().unwrap_err(),
                "topic, group, cluster",
            ),
            (
                "regex".parse::<PatternType>().unwrap_err(),
                "literal, prefixed",
            ),
            (
                "idempotent-write".parse::<Operation>().unwrap_err(),
                "all, read, write, create, delete, alter, describe, cluster-action",
            ),
            ("maybe".parse::<Permission>().unwrap_err(), "allow, deny"),
        ] {
            assert!(err.to_string().contains(accepted), "{err}");
        }
    }

    #[test]
    fn acls_match_literal_star_and_prefixed_names() {
        use Operation::*;
        use PatternType::*;
        use Permission::*;
        use ResourceType::*;
        let mut state = SecurityState::default();
        for a in [
            acl("User:alice", Topic, Literal, "orders", Write, Allow),
            acl("User:alice", Topic, Prefixed, "logs.", Read, Allow),
            acl("User:bob", Topic, Literal, "*", Read, Allow),
            acl("*", Group, Literal, "shared", Read, Allow),
        ] {
            assert_eq!(apply(&mut state, MetadataCommand::AddAcl(a.clone())), Ok(1));
            assert_eq!(apply(&mut state, MetadataCommand::AddAcl(a)), Ok(0));
        }
        let su: &[String] = &[];
        let allowed = |p: &str, r, n: &str, o| state.authorize(p, su, r, n, o).is_allowed();
        assert!(allowed("User:alice", Topic, "orders", Write));
        assert!(!allowed("User:alice", Topic, "orders2", Write));
        assert!(!allowed("User:alice", Topic, "orders", Read));
        assert!(allowed("User:alice", Topic, "logs.app", Read));
        assert!(allowed("User:alice", Topic, "logs.", Read));
        assert!(!allowed("User:alice", Topic, "logs", Read));
        assert!(!allowed("User:alice", Group, "logs.app", Read));
        assert!(allowed("User:bob", Topic, "anything", Read));
        assert!(!allowed("User:bob", Topic, "anything", Write));
        assert!(allowed("User:carol", Group, "shared", Read));
        assert!(!allowed("User:carol", Topic, "shared", Read));
        // Describe is implied by an Allow of Read, Write, Delete or Alter, not of Create.
        assert!(allowed("User:alice", Topic, "orders", Describe));
        assert!(allowed("User:alice", Topic, "logs.x", Describe));
        let mut with_create = state.clone();
        apply(
            &mut with_create,
            MetadataCommand::AddAcl(acl("User:dave", Topic, Literal, "t", Create, Allow)),
        )
        .unwrap();
        assert!(
            !with_create
                .authorize("User:dave", su, Topic, "t", Describe)
                .is_allowed()
        );
        assert_eq!(
            state.authorize("User:eve", su, Topic, "orders", Read),
            Decision::NoMatchingAcl
        );
        let decision = state.authorize("User:alice", su, Topic, "orders", Write);
        assert_eq!(
            decision.to_string(),
            "allowed by ACL allow User:alice write on topic literal \"orders\""
        );
    }

    #[test]
    fn deny_wins_and_super_users_pass() {
        use Operation::*;
        use PatternType::*;
        use Permission::*;
        use ResourceType::*;
        let mut state = SecurityState::default();
        for a in [
            acl("User:alice", Topic, Literal, "*", All, Allow),
            acl("*", Topic, Prefixed, "secret.", Read, Deny),
            acl("User:alice", Topic, Literal, "audit", All, Deny),
        ] {
            apply(&mut state, MetadataCommand::AddAcl(a)).unwrap();
        }
        let su = ["User:root".to_string()];
        let decide = |p: &str, n: &str, o| state.authorize(p, &su, Topic, n, o);
        assert!(decide("User:alice", "orders", Write).is_allowed());
        assert!(matches!(
            decide("User:alice", "secret.keys", Read),
            Decision::DeniedBy(acl) if acl.principal == "*"
        ));
        // A Deny of Read does not deny Describe (Kafka: implication is for Allows only).
        assert!(decide("User:alice", "secret.keys", Describe).is_allowed());
        assert!(matches!(
            decide("User:alice", "audit", Describe),
            Decision::DeniedBy(_)
        ));
        assert_eq!(decide("User:root", "audit", Delete), Decision::SuperUser);
        assert_eq!(
            state.authorize(
                "User:root",
                &su,
                Cluster,
                CLUSTER_RESOURCE_NAME,
                ClusterAction
            ),
            Decision::SuperUser
        );
        assert!(
            !state
                .authorize(
                    "User:alice",
                    &su,
                    Cluster,
                    CLUSTER_RESOURCE_NAME,
                    ClusterAction
                )
                .is_allowed()
        );
    }

    #[test]
    fn creating_a_topic_needs_create_on_it_or_on_the_cluster() {
        use Operation::*;
        use PatternType::*;
        use Permission::*;
        use ResourceType::*;
        let mut state = SecurityState::default();
        for a in [
            acl("User:a", Topic, Prefixed, "a.", Create, Allow),
            acl(
                "User:ops",
                Cluster,
                Literal,
                CLUSTER_RESOURCE_NAME,
                Create,
                Allow,
            ),
            acl("User:ops", Topic, Literal, "protected", Create, Deny),
            acl("User:b", Cluster, Literal, "*", All, Allow),
        ] {
            apply(&mut state, MetadataCommand::AddAcl(a)).unwrap();
        }
        let create = |p: &str, t: &str| state.authorize_create_topic(p, &[], t).is_allowed();
        assert!(create("User:a", "a.x"));
        assert!(!create("User:a", "b.x"));
        assert!(create("User:ops", "anything"));
        assert!(!create("User:ops", "protected"), "a topic Deny wins");
        assert!(create("User:b", "anything"));
        // Create on the cluster is not seen by a plain topic check.
        assert!(
            !state
                .authorize("User:ops", &[], Topic, "anything", Create)
                .is_allowed()
        );
    }

    #[test]
    fn tenants_confine_their_principals() {
        use Operation::*;
        use PatternType::*;
        use Permission::*;
        use ResourceType::*;
        let mut state = SecurityState::default();
        apply(
            &mut state,
            MetadataCommand::UpsertTenant(tenant("team-a", "team-a.", &["User:alice"])),
        )
        .unwrap();
        for a in [
            acl("User:alice", Topic, Literal, "*", All, Allow),
            acl("User:alice", Group, Literal, "*", All, Allow),
            acl("User:alice", Cluster, Literal, "*", Describe, Allow),
            acl("User:bob", Topic, Literal, "*", All, Allow),
        ] {
            apply(&mut state, MetadataCommand::AddAcl(a)).unwrap();
        }
        let su = ["User:admin".to_string()];
        let decide = |p: &str, r, n: &str| state.authorize(p, &su, r, n, Read);
        assert!(decide("User:alice", Topic, "team-a.orders").is_allowed());
        assert!(decide("User:alice", Group, "team-a.app").is_allowed());
        let outside = decide("User:alice", Topic, "team-b.orders");
        assert!(matches!(outside, Decision::OutsideTenant(t) if t.name == "team-a"));
        assert!(outside.to_string().contains("team-a."), "{outside}");
        assert!(!decide("User:alice", Group, "other").is_allowed());
        assert!(
            !state
                .authorize_create_topic("User:alice", &su, "orders")
                .is_allowed()
        );
        // The cluster resource is not confined; non-members and super users are not confined.
        assert!(
            state
                .authorize("User:alice", &su, Cluster, CLUSTER_RESOURCE_NAME, Describe)
                .is_allowed()
        );
        assert!(decide("User:bob", Topic, "team-a.orders").is_allowed());
        assert!(decide("User:bob", Topic, "elsewhere").is_allowed());
        let admin = ["User:alice".to_string()];
        assert_eq!(
            state.authorize("User:alice", &admin, Topic, "x", Write),
            Decision::SuperUser
        );
        assert_eq!(
            state.tenant_of("User:alice").map(|t| t.name.as_str()),
            Some("team-a")
        );
        assert_eq!(state.tenant_of("User:bob"), None);
        assert_eq!(
            state
                .tenant_owning("team-a.orders")
                .map(|t| t.name.as_str()),
            Some("team-a")
        );
        assert_eq!(state.tenant_owning("team-b.orders"), None);
    }

    #[test]
    fn tenants_may_not_overlap_or_share_principals() {
        let mut state = SecurityState::default();
        let upsert = |t| MetadataCommand::UpsertTenant(t);
        assert_eq!(
            apply(&mut state, upsert(tenant("a", "team-a.", &["User:alice"]))),
            Ok(1)
        );
        // Replacing itself is fine (its own prefix and principals do not conflict).
        assert_eq!(
            apply(
                &mut state,
                upsert(tenant("a", "team-a.", &["User:alice", "User:ann"]))
            ),
            Ok(0)
        );
        let before = state.clone();
        for (bad, what) in [
            (tenant("b", "team-a.x", &[]), "overlap"),
            (tenant("b", "team-", &[]), "overlap"),
            (tenant("b", "team-a.", &[]), "overlap"),
            (tenant("b", "team-b.", &["User:ann"]), "principal"),
            (tenant("b", "", &[]), "prefix"),
            (tenant("b", "a b", &[]), "prefix"),
            (tenant("b", "__x", &[]), "internal"),
            (tenant("b", "_", &[]), "internal"),
            (tenant("b c", "team-b.", &[]), "tenant name"),
            (tenant("b", "team-b.", &["*"]), "principal"),
            (tenant("b", "team-b.", &["alice"]), "principal"),
        ] {
            let err = apply(&mut state, upsert(bad.clone())).unwrap_err();
            let expected = match what {
                "overlap" => matches!(err, MetadataError::TenantPrefixOverlap { .. }),
                "principal" => matches!(
                    err,
                    MetadataError::PrincipalInOtherTenant { .. }
                        | MetadataError::InvalidSecurity(_)
                ),
                _ => {
                    matches!(err, MetadataError::InvalidSecurity(_))
                        && err.to_string().contains(what)
                }
            };
            assert!(expected, "{bad:?}: {err}");
        }
        assert_eq!(state, before);
        let err = apply(&mut state, upsert(tenant("b", "team-", &[]))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tenant \"b\" prefix \"team-\" overlaps tenant \"a\" prefix \"team-a.\": neither may start the other"
        );
        apply(&mut state, upsert(tenant("b", "team-b.", &["User:bob"]))).unwrap();
        assert_eq!(state.tenants().count(), 2);
    }

    #[test]
    fn quota_settings_parse_render_and_reject_bad_values() {
        let limits = QuotaLimits::from_pairs([
            ("produce.bytes.per.sec", "1048576"),
            ("fetch.bytes.per.sec", "2097152"),
            ("requests.per.sec", "100"),
            ("partitions", "10"),
            ("retained.bytes", "1000000000"),
        ])
        .unwrap();
        assert_eq!(limits.produce_bytes_per_sec, Some(1 << 20));
        assert_eq!(limits.fetch_bytes_per_sec, Some(2 << 20));
        assert_eq!(limits.requests_per_sec, Some(100));
        assert_eq!(limits.max_partitions, Some(10));
        assert_eq!(limits.max_retained_bytes, Some(1_000_000_000));
        let pairs = limits.to_pairs();
        assert_eq!(pairs.len(), 5);
        let again = QuotaLimits::from_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str()))).unwrap();
        assert_eq!(again, limits);
        let some = QuotaLimits::from_pairs([("partitions", "3")]).unwrap();
        assert_eq!(some.to_pairs(), vec![("partitions", "3".to_string())]);
        for (key, value, named) in [
            ("partitions", "0", "remove"),
            ("partitions", "4294967296", "4294967295"),
            ("requests.per.sec", "-1", "integer > 0"),
            ("produce.bytes.per.sec", "1MB", "integer > 0"),
        ] {
            let err = QuotaLimits::from_pairs([(key, value)]).unwrap_err();
            assert!(matches!(err, MetadataError::InvalidQuota { .. }), "{err}");
            assert!(err.to_string().contains(named), "{key}={value}: {err}");
            assert!(err.to_string().contains(key), "{err}");
        }
        let err = QuotaLimits::from_pairs([("consumer_byte_rate", "1")]).unwrap_err();
        assert_eq!(
            err,
            MetadataError::UnknownQuotaSetting("consumer_byte_rate".into())
        );
        assert!(
            err.to_string().contains(&QUOTA_SETTINGS.join(", ")),
            "{err}"
        );
    }

    #[test]
    fn quotas_merge_and_go_with_their_tenant() {
        let mut state = SecurityState::default();
        let team = QuotaEntity::Tenant("team-a".into());
        let alice = QuotaEntity::User("alice".into());
        let set = |entity: &QuotaEntity, pairs: &[(&str, &str)]| MetadataCommand::SetQuota {
            entity: entity.clone(),
            limits: QuotaLimits::from_pairs(pairs.iter().copied()).unwrap(),
        };
        assert_eq!(
            apply(&mut state, set(&team, &[("partitions", "10")])),
            Err(MetadataError::UnknownTenant("team-a".into()))
        );
        apply(
            &mut state,
            MetadataCommand::UpsertTenant(tenant("team-a", "team-a.", &[])),
        )
        .unwrap();
        assert_eq!(
            apply(&mut state, set(&team, &[("partitions", "10")])),
            Ok(1)
        );
        assert_eq!(
            apply(&mut state, set(&team, &[("requests.per.sec", "5")])),
            Ok(0)
        );
        let limits = state.quota(&team).unwrap();
        assert_eq!(limits.max_partitions, Some(10));
        assert_eq!(limits.requests_per_sec, Some(5));
        // A user quota needs no user record.
        assert_eq!(
            apply(
                &mut state,
                set(&alice, &[("produce.bytes.per.sec", "1000")])
            ),
            Ok(1)
        );
        let before = state.clone();
        for bad in [
            MetadataCommand::SetQuota {
                entity: alice.clone(),
                limits: QuotaLimits::default(),
            },
            MetadataCommand::SetQuota {
                entity: alice.clone(),
                limits: QuotaLimits {
                    max_partitions: Some(0),
                    ..QuotaLimits::default()
                },
            },
            set(&QuotaEntity::User("a b".into()), &[("partitions", "1")]),
            MetadataCommand::RemoveQuota {
                entity: QuotaEntity::User("bob".into()),
            },
        ] {
            assert!(apply(&mut state, bad).is_err());
        }
        assert_eq!(state, before);
        assert_eq!(
            apply(
                &mut state,
                MetadataCommand::DeleteTenant {
                    name: "team-a".into()
                }
            ),
            Ok(1)
        );
        assert_eq!(state.quota(&team), None);
        assert!(state.quota(&alice).is_some());
        assert_eq!(
            apply(
                &mut state,
                MetadataCommand::RemoveQuota {
                    entity: alice.clone()
                }
            ),
            Ok(1)
        );
        assert_eq!(state.quotas().count(), 0);
        assert_eq!(
            apply(
                &mut state,
                MetadataCommand::DeleteTenant {
                    name: "team-a".into()
                }
            ),
            Err(MetadataError::UnknownTenant("team-a".into()))
        );
    }

    #[test]
    fn quota_entities_parse_and_render() {
        for entity in [
            QuotaEntity::User("alice".into()),
            QuotaEntity::Tenant("team-a".into()),
        ] {
            assert_eq!(entity.to_string().parse::<QuotaEntity>().unwrap(), entity);
        }
        assert_eq!(
            QuotaEntity::Tenant("team-a".into()).to_string(),
            "tenant:team-a"
        );
        for bad in ["alice", "group:x", "user:", "tenant:", "user:a b"] {
            assert!(bad.parse::<QuotaEntity>().is_err(), "{bad}");
        }
        let err = "client:x".parse::<QuotaEntity>().unwrap_err();
        assert!(
            err.to_string().contains("user:<name> or tenant:<name>"),
            "{err}"
        );
    }

    #[test]
    fn acls_are_listed_and_removed_by_filter() {
        use Operation::*;
        use PatternType::*;
        use Permission::*;
        use ResourceType::*;
        let mut state = SecurityState::default();
        for a in [
            acl("User:alice", Topic, Literal, "t", Read, Allow),
            acl("User:alice", Topic, Literal, "t", Write, Allow),
            acl("User:alice", Group, Literal, "g", Read, Allow),
            acl("User:bob", Topic, Literal, "t", Read, Deny),
        ] {
            apply(&mut state, MetadataCommand::AddAcl(a)).unwrap();
        }
        let alice = AclFilter {
            principal: Some("User:alice".into()),
            ..AclFilter::default()
        };
        assert_eq!(state.acls(&alice).len(), 3);
        assert_eq!(state.acls(&AclFilter::default()).len(), 4);
        let alice_topics = AclFilter {
            resource: Some(Topic),
            ..alice.clone()
        };
        assert_eq!(
            apply(
                &mut state,
                MetadataCommand::RemoveAcls(alice_topics.clone())
            ),
            Ok(2)
        );
        assert_eq!(
            apply(&mut state, MetadataCommand::RemoveAcls(alice_topics)),
            Ok(0)
        );
        assert_eq!(state.acls(&AclFilter::default()).len(), 2);
        // Bad ACLs are refused.
        let before = state.clone();
        for bad in [
            acl("alice", Topic, Literal, "t", Read, Allow),
            acl("User:a b", Topic, Literal, "t", Read, Allow),
            acl("User:alice", Topic, Literal, "", Read, Allow),
            acl("User:alice", Cluster, Prefixed, "kafka", Read, Allow),
            acl("User:alice", Cluster, Literal, "my-cluster", Read, Allow),
            acl("User:alice", Topic, Literal, "t", ClusterAction, Allow),
        ] {
            assert!(
                matches!(
                    apply(&mut state, MetadataCommand::AddAcl(bad.clone())),
                    Err(MetadataError::InvalidSecurity(_) | MetadataError::InvalidUserName { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(state, before);
    }

    #[test]
    fn applying_the_same_commands_gives_the_same_state() {
        let (token, _) = new_token("alice", 10, None, None);
        let commands = vec![
            MetadataCommand::UpsertUser {
                name: "alice".into(),
                credentials: vec![
                    credential(ScramMechanism::Sha512, "a"),
                    credential(ScramMechanism::Sha256, "a"),
                ],
            },
            MetadataCommand::UpsertUser {
                name: "bob".into(),
                credentials: vec![],
            },
            MetadataCommand::CreateToken(token),
            MetadataCommand::AddCertMapping(CertMapping {
                matcher: CertMatcher::CommonName("a".into()),
                user: "alice".into(),
            }),
            MetadataCommand::AddAcl(acl(
                "User:bob",
                ResourceType::Group,
                PatternType::Prefixed,
                "g",
                Operation::Read,
                Permission::Allow,
            )),
            MetadataCommand::AddAcl(acl(
                "*",
                ResourceType::Topic,
                PatternType::Literal,
                "*",
                Operation::Describe,
                Permission::Allow,
            )),
            MetadataCommand::UpsertTenant(tenant("t", "t.", &["User:bob", "User:alice"])),
            MetadataCommand::SetQuota {
                entity: QuotaEntity::Tenant("t".into()),
                limits: QuotaLimits::from_pairs([("partitions", "4")]).unwrap(),
            },
            MetadataCommand::DeleteUser { name: "x".into() },
            MetadataCommand::DeleteUser { name: "bob".into() },
        ];
        let mut a = SecurityState::default();
        let mut b = SecurityState::default();
        let replies_a: Vec<_> = commands.iter().map(|c| a.apply(c.clone())).collect();
        let replies_b: Vec<_> = commands.iter().map(|c| b.apply(c.clone())).collect();
        assert_eq!(replies_a, replies_b);
        assert_eq!(a, b);
        let encoded = postcard::to_stdvec(&a).unwrap();
        assert_eq!(postcard::from_bytes::<SecurityState>(&encoded).unwrap(), a);
        assert_eq!(postcard::to_stdvec(&b).unwrap(), encoded);
        // ACLs and tenant membership outlive bob.
        assert_eq!(a.tenant_of("User:bob").map(|t| t.name.as_str()), Some("t"));
        assert_eq!(a.acls(&AclFilter::default()).len(), 2);
    }

    /// The operations that apply to topics and groups.
    fn topic_operations() -> Vec<Operation> {
        Operation::ALL
            .iter()
            .copied()
            .filter(|o| *o != Operation::ClusterAction)
            .collect()
    }

    fn any_acl() -> impl Strategy<Value = AclRecord> {
        (
            prop::sample::select(vec!["User:a", "User:b", "*"]),
            prop::sample::select(vec![ResourceType::Topic, ResourceType::Group]),
            prop::sample::select(vec![PatternType::Literal, PatternType::Prefixed]),
            prop::sample::select(vec!["*", "t", "t1", "tx", "g", "a.", "a.t"]),
            prop::sample::select(topic_operations()),
            prop::sample::select(Permission::ALL.to_vec()),
        )
            .prop_map(|(p, r, pt, n, o, perm)| acl(p, r, pt, n, o, perm))
    }

    proptest! {
        /// Adding a Deny ACL that matches the request always denies it, whatever the other
        /// ACLs (a Deny never becomes an Allow; an Allow becomes a Deny).
        #[test]
        fn a_matching_deny_always_wins(
            acls in prop::collection::vec(any_acl(), 0..24),
            principal in prop::sample::select(vec!["User:a", "User:b"]),
            resource in prop::sample::select(vec![ResourceType::Topic, ResourceType::Group]),
            name in prop::sample::select(vec!["t", "t1", "tx", "g", "a.t", "a.x"]),
            op in prop::sample::select(topic_operations()),
            deny_principal_is_any in any::<bool>(),
            deny_pattern in 0..3u8,
            deny_all_ops in any::<bool>(),
            tenant_member in any::<bool>(),
        ) {
            let mut state = SecurityState::default();
            if tenant_member {
                state.apply(MetadataCommand::UpsertTenant(tenant("a", "a.", &[principal]))).unwrap();
            }
            for a in acls {
                state.apply(MetadataCommand::AddAcl(a)).unwrap();
            }
            let before = state.authorize(principal, &[], resource, name, op).is_allowed();
            let deny = acl(
                if deny_principal_is_any { "*" } else { principal },
                resource,
                if deny_pattern == 2 { PatternType::Prefixed } else { PatternType::Literal },
                match deny_pattern {
                    0 => name,
                    1 => "*",
                    _ => &name[..1],
                },
                if deny_all_ops { Operation::All } else { op },
                Permission::Deny,
            );
            state.apply(MetadataCommand::AddAcl(deny)).unwrap();
            let after = state.authorize(principal, &[], resource, name, op);
            prop_assert!(!after.is_allowed(), "{after} (allowed before: {before})");
            if !tenant_member || name.starts_with("a.") {
                prop_assert!(matches!(after, Decision::DeniedBy(_)), "{after}");
            }
            // Super users stay allowed.
            let su = [principal.to_string()];
            prop_assert_eq!(state.authorize(principal, &su, resource, name, op), Decision::SuperUser);
        }
    }
}
