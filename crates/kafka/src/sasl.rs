//! SASL on a Kafka connection: PLAIN (only over TLS: the password travels as it is) and
//! SCRAM-SHA-256/512 (RFC 5802/7677, as Kafka speaks them), checked against the users and
//! salted credentials of Weir's replicated metadata.
//!
//! Invariants: a connection is authenticated only by a completed exchange whose proof checked
//! against the stored key (compared in constant time); an unknown user runs the same exchange
//! with a made-up salt and fails at the same step with the same message as a wrong password, so
//! the answers do not tell which users exist; nothing of a password or proof is logged.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use weir_controller::security::{
    DEFAULT_SCRAM_ITERATIONS, ScramCredential, ScramMechanism, constant_time_eq, hash, hmac,
};

/// What the listener needs to authenticate: the stored credentials.
pub trait Credentials {
    /// `user`'s credential for `mechanism`, if the user exists and has one.
    fn scram_credential(&self, user: &str, mechanism: ScramMechanism) -> Option<ScramCredential>;
}

/// The mechanisms a connection may use (PLAIN only with TLS).
pub fn mechanisms(tls: bool) -> Vec<&'static str> {
    let mut out = vec!["SCRAM-SHA-256", "SCRAM-SHA-512"];
    if tls {
        out.push("PLAIN");
    }
    out
}

/// The exchange of one connection, after SaslHandshake chose its mechanism.
#[derive(Debug)]
pub enum Exchange {
    Plain,
    Scram(ScramState),
}

#[derive(Debug)]
pub enum ScramState {
    /// Waiting for client-first.
    Start(ScramMechanism),
    /// server-first sent; waiting for client-final.
    Sent {
        mechanism: ScramMechanism,
        user: String,
        /// None: an unknown user (the exchange fails at the proof).
        credential: Option<ScramCredential>,
        nonce: String,
        client_first_bare: String,
        server_first: String,
    },
}

/// One SaslAuthenticate step's outcome.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes back; the exchange goes on.
    Continue(Vec<u8>),
    /// Authenticated as `User:NAME`; send these bytes back (SCRAM's server-final, or nothing).
    Done { principal: String, reply: Vec<u8> },
    /// Refused; the message says why without telling whether the user exists.
    Failed(String),
}

const REFUSED: &str = "authentication failed: unknown user or wrong password";

impl Exchange {
    /// The exchange for a SaslHandshake `mechanism`, if this connection may use it.
    pub fn start(mechanism: &str, tls: bool) -> Option<Self> {
        if mechanism == "PLAIN" {
            return tls.then_some(Self::Plain);
        }
        ScramMechanism::parse(mechanism)
            .filter(|m| m.as_str() == mechanism)
            .map(|m| Self::Scram(ScramState::Start(m)))
    }

    /// Takes the client's next message.
    pub fn step(&mut self, message: &[u8], store: &dyn Credentials) -> Step {
        match self {
            Self::Plain => plain(message, store),
            Self::Scram(state) => {
                let (next, step) = scram(
                    std::mem::replace(state, ScramState::Start(ScramMechanism::Sha256)),
                    message,
                    store,
                );
                if let Some(next) = next {
                    *state = next;
                }
                step
            }
        }
    }
}

/// PLAIN: `authzid NUL user NUL password`, checked against the user's SCRAM-SHA-512 (else
/// SHA-256) credential.
fn plain(message: &[u8], store: &dyn Credentials) -> Step {
    let Ok(text) = std::str::from_utf8(message) else {
        return Step::Failed("PLAIN: not UTF-8".into());
    };
    let mut parts = text.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Step::Failed("PLAIN: expected authzid, user and password".into());
    };
    if !authzid.is_empty() && authzid != user {
        return Step::Failed("PLAIN: acting for another user is not allowed".into());
    }
    let credential = store
        .scram_credential(user, ScramMechanism::Sha512)
        .or_else(|| store.scram_credential(user, ScramMechanism::Sha256));
    match credential {
        Some(c) if c.verify_password(password) => Step::Done {
            principal: format!("User:{user}"),
            reply: Vec::new(),
        },
        _ => Step::Failed(REFUSED.into()),
    }
}

/// The value of `key=` among SCRAM's comma-separated attributes.
fn attribute(text: &str, key: char) -> Option<&str> {
    text.split(',').find_map(|part| {
        let mut chars = part.chars();
        (chars.next() == Some(key) && chars.next() == Some('=')).then(|| &part[2..])
    })
}

/// SCRAM's `saslname` decoding (`=2C` is `,`, `=3D` is `=`).
fn decode_name(name: &str) -> Option<String> {
    let out = name.replace("=2C", ",").replace("=3D", "=");
    (!out.contains('=')).then_some(out)
}

fn scram(state: ScramState, message: &[u8], store: &dyn Credentials) -> (Option<ScramState>, Step) {
    let Ok(text) = std::str::from_utf8(message) else {
        return (None, Step::Failed("SCRAM: not UTF-8".into()));
    };
    match state {
        ScramState::Start(mechanism) => {
            // gs2-header ("n,," — no channel binding, no authzid) then client-first-bare.
            let Some(bare) = text
                .strip_prefix("n,,")
                .or_else(|| text.strip_prefix("y,,"))
            else {
                return (None, Step::Failed("SCRAM: expected the gs2 header n,, (no channel binding, no authorization id)".into()));
            };
            let (Some(name), Some(client_nonce)) = (attribute(bare, 'n'), attribute(bare, 'r'))
            else {
                return (
                    None,
                    Step::Failed("SCRAM: client-first needs n= and r=".into()),
                );
            };
            let Some(user) = decode_name(name) else {
                return (None, Step::Failed("SCRAM: bad user name encoding".into()));
            };
            if client_nonce.is_empty() || client_nonce.contains(',') {
                return (None, Step::Failed("SCRAM: bad client nonce".into()));
            }
            let credential = store.scram_credential(&user, mechanism);
            // An unknown user gets a salt derived from its name (stable, so repeated tries
            // look alike) and fails at the proof.
            let (salt, iterations) = match &credential {
                Some(c) => (c.salt.clone(), c.iterations),
                None => (
                    hash(mechanism, format!("weir-unknown-user:{user}").as_bytes())[..16].to_vec(),
                    DEFAULT_SCRAM_ITERATIONS,
                ),
            };
            let nonce = format!("{client_nonce}{:032x}", rand::random::<u128>());
            let server_first = format!("r={nonce},s={},i={iterations}", BASE64.encode(&salt));
            let reply = server_first.clone().into_bytes();
            (
                Some(ScramState::Sent {
                    mechanism,
                    user,
                    credential,
                    nonce,
                    client_first_bare: bare.to_string(),
                    server_first,
                }),
                Step::Continue(reply),
            )
        }
        ScramState::Sent {
            mechanism,
            user,
            credential,
            nonce,
            client_first_bare,
            server_first,
        } => {
            let Some((without_proof, proof)) = text.rsplit_once(",p=") else {
                return (None, Step::Failed("SCRAM: client-final needs p=".into()));
            };
            if attribute(without_proof, 'r') != Some(nonce.as_str()) {
                return (None, Step::Failed("SCRAM: the nonce does not match".into()));
            }
            if attribute(without_proof, 'c') != Some("biws") {
                return (
                    None,
                    Step::Failed("SCRAM: channel binding is not supported".into()),
                );
            }
            let Ok(proof) = BASE64.decode(proof) else {
                return (None, Step::Failed("SCRAM: the proof is not base64".into()));
            };
            let Some(credential) = credential else {
                tracing::debug!(%user, "SCRAM: no such user (or no credential for this mechanism)");
                return (None, Step::Failed(REFUSED.into()));
            };
            let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
            let signature = hmac(mechanism, &credential.stored_key, auth_message.as_bytes());
            if proof.len() != signature.len() {
                return (None, Step::Failed(REFUSED.into()));
            }
            let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
            if !constant_time_eq(&hash(mechanism, &client_key), &credential.stored_key) {
                tracing::debug!(%user, "SCRAM: the client's proof does not match");
                return (None, Step::Failed(REFUSED.into()));
            }
            let server_signature = hmac(mechanism, &credential.server_key, auth_message.as_bytes());
            (
                None,
                Step::Done {
                    principal: format!("User:{user}"),
                    reply: format!("v={}", BASE64.encode(server_signature)).into_bytes(),
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Store(Vec<(String, ScramCredential)>);

    impl Credentials for Store {
        fn scram_credential(
            &self,
            user: &str,
            mechanism: ScramMechanism,
        ) -> Option<ScramCredential> {
            self.0
                .iter()
                .find(|(u, c)| u == user && c.mechanism == mechanism)
                .map(|(_, c)| c.clone())
        }
    }

    fn store() -> Store {
        Store(
            ScramMechanism::ALL
                .into_iter()
                .map(|m| {
                    (
                        "alice".to_string(),
                        ScramCredential::derive(m, "s3cret", b"0123456789abcdef", 4096),
                    )
                })
                .collect(),
        )
    }

    /// A SCRAM client (RFC 5802) for `user` with `password`: the final step's outcome.
    fn scram_client(mechanism: ScramMechanism, user: &str, password: &str) -> Step {
        let store = store();
        let mut exchange = Exchange::start(mechanism.as_str(), false).expect("scram");
        let first_bare = format!("n={user},r=clientnonce");
        let Step::Continue(server_first) =
            exchange.step(format!("n,,{first_bare}").as_bytes(), &store)
        else {
            panic!("no server-first");
        };
        let server_first = String::from_utf8(server_first).expect("utf8");
        let nonce = attribute(&server_first, 'r').expect("r");
        assert!(nonce.starts_with("clientnonce") && nonce.len() > "clientnonce".len());
        let salt = BASE64
            .decode(attribute(&server_first, 's').expect("s"))
            .expect("b64");
        let iterations: u32 = attribute(&server_first, 'i')
            .expect("i")
            .parse()
            .expect("i");
        let salted =
            weir_controller::security::salted_password(mechanism, password, &salt, iterations);
        let client_key = hmac(mechanism, &salted, b"Client Key");
        let stored = hash(mechanism, &client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("{first_bare},{server_first},{without_proof}");
        let signature = hmac(mechanism, &stored, auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let step = exchange.step(
            format!("{without_proof},p={}", BASE64.encode(proof)).as_bytes(),
            &store,
        );
        if let Step::Done { reply, .. } = &step {
            let server_key = hmac(mechanism, &salted, b"Server Key");
            let expected = format!(
                "v={}",
                BASE64.encode(hmac(mechanism, &server_key, auth.as_bytes()))
            );
            assert_eq!(reply, expected.as_bytes(), "the server proves itself");
        }
        step
    }

    #[test]
    fn scram_authenticates_the_right_password_only_and_hides_unknown_users() {
        for m in ScramMechanism::ALL {
            assert!(
                matches!(scram_client(m, "alice", "s3cret"), Step::Done { principal, .. } if principal == "User:alice")
            );
            assert_eq!(
                scram_client(m, "alice", "wrong"),
                Step::Failed(REFUSED.into())
            );
            assert_eq!(
                scram_client(m, "mallory", "s3cret"),
                Step::Failed(REFUSED.into())
            );
        }
    }

    #[test]
    fn plain_is_only_offered_over_tls_and_checks_the_password() {
        assert!(Exchange::start("PLAIN", false).is_none());
        assert!(Exchange::start("GSSAPI", true).is_none());
        let store = store();
        let mut plain = Exchange::start("PLAIN", true).expect("plain");
        assert!(matches!(
            plain.step(b"\0alice\0s3cret", &store),
            Step::Done { .. }
        ));
        assert_eq!(
            plain.step(b"\0alice\0nope", &store),
            Step::Failed(REFUSED.into())
        );
        assert_eq!(
            plain.step(b"\0mallory\0s3cret", &store),
            Step::Failed(REFUSED.into())
        );
        assert!(matches!(
            plain.step(b"bob\0alice\0s3cret", &store),
            Step::Failed(_)
        ));
        assert!(matches!(plain.step(b"garbage", &store), Step::Failed(_)));
    }

    #[test]
    fn malformed_scram_messages_fail_with_a_reason() {
        let store = store();
        for bad in [
            &b"p=tls-unique,,n=alice,r=x"[..],
            b"n,,r=x",
            b"n,,n=alice",
            b"\xff",
        ] {
            let mut e = Exchange::start("SCRAM-SHA-256", false).expect("scram");
            assert!(matches!(e.step(bad, &store), Step::Failed(_)), "{bad:?}");
        }
    }
}
