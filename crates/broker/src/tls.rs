//! The TLS side of a listener: accepts TCP connections, runs each TLS handshake with the node's
//! current material (`weir_raft::tls::NodeTls`, reloaded when its files change) and hands the
//! finished connections to the gRPC server.
//!
//! Invariants: a handshake that does not finish within [`HANDSHAKE_TIMEOUT`] is dropped (a slow
//! or idle client holds no server resources beyond that); at most [`MAX_HANDSHAKES`] run at once
//! (more connections wait in the kernel's accept queue); a failed handshake — plaintext, a
//! certificate from another CA, no certificate where one is required — closes the connection
//! and is reported to `on_failure` (the audit log).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use weir_raft::tls::NodeTls;

use crate::router::Listener;

/// Longest a TLS handshake may take.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once on one listener.
pub(crate) const MAX_HANDSHAKES: usize = 256;

/// Called with the peer address and the reason of each failed handshake.
pub(crate) type OnFailure = Arc<dyn Fn(SocketAddr, &str) + Send + Sync>;

/// The TLS connections accepted on `listener`, as a stream for tonic's
/// `serve_with_incoming_shutdown`. The accept loop ends when the stream is dropped.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: Arc<NodeTls>,
    which: Listener,
    on_failure: OnFailure,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tls, which, on_failure, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<NodeTls>,
    which: Listener,
    on_failure: OnFailure,
    tx: mpsc::Sender<std::io::Result<TlsStream<TcpStream>>>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = tx.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(%err, listener = ?which, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small answers must not wait out Nagle's algorithm (see node.rs).
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
        let tx = tx.clone();
        let on_failure = Arc::clone(&on_failure);
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send(Ok(stream)).await;
                }
                Ok(Err(err)) => {
                    tracing::debug!(%peer, %err, listener = ?which, "TLS handshake failed");
                    on_failure(peer, &err.to_string());
                }
                Err(_) => {
                    tracing::debug!(%peer, listener = ?which, "TLS handshake timed out");
                    on_failure(peer, "TLS handshake did not finish in time");
                }
            }
        });
    }
}
