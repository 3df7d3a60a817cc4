//! A listener's accept loop, plaintext or TLS: accepts TCP connections, wraps each in a
//! [`Watched`] stream that closes it when it goes idle, runs the TLS handshake (with the node's
//! current material, `weir_raft::tls::NodeTls`, reloaded when its files change) and hands the
//! connections to the gRPC server.
//!
//! Invariants:
//! - a connection from which nothing is read for the idle timeout (`limits.idle_timeout_ms`) is
//!   closed. The server's HTTP/2 keepalive pings come more often than that
//!   ([`crate::limits::keepalive_interval`]) and a live peer's ping ACKs are reads, so an open
//!   stream that carries no data (a Subscribe at the end of its partition, a long poll) keeps its
//!   connection, while a client that connects and sends nothing, stops reading (a slow or dead
//!   reader's writes pile up and it answers no ping), or never speaks HTTP/2 is dropped;
//! - a connection must send its first [`PREFACE_BYTES`] (a TLS ClientHello, or HTTP/2's client
//!   preface) within [`HANDSHAKE_TIMEOUT`], and a TLS handshake must finish within it: a slow
//!   opener holds nothing beyond that;
//! - at most [`MAX_HANDSHAKES`] handshakes run at once (more connections wait in the kernel's
//!   accept queue); a failed TLS handshake — plaintext, a certificate from another CA, no
//!   certificate where one is required — closes the connection and is reported to `on_failure`
//!   (the audit log).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use weir_raft::tls::NodeTls;

use crate::router::Listener;

/// Longest a TLS handshake may take, and the longest a new connection may take to send its
/// first [`PREFACE_BYTES`].
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once on one listener.
pub(crate) const MAX_HANDSHAKES: usize = 256;
/// The length of HTTP/2's client preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`); a TLS
/// ClientHello is longer.
pub(crate) const PREFACE_BYTES: u64 = 24;

/// Called with the peer address and the reason of each failed handshake.
pub(crate) type OnFailure = Arc<dyn Fn(SocketAddr, &str) + Send + Sync>;

/// What the accept loop of one listener needs to know.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Accept {
    pub(crate) which: Listener,
    /// Close a connection after this long without a byte read.
    pub(crate) idle_timeout: Duration,
}

/// The plaintext connections accepted on `listener`, as a stream for tonic's
/// `serve_with_incoming_shutdown`. The accept loop ends when the stream is dropped.
pub(crate) fn plaintext(
    listener: TcpListener,
    accept: Accept,
) -> ReceiverStream<io::Result<Watched<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(
        listener,
        accept,
        tx,
        |stream, _peer| async move { Some(stream) },
    ));
    ReceiverStream::new(rx)
}

/// The TLS connections accepted on `listener`, handshakes done, as a stream for tonic's
/// `serve_with_incoming_shutdown`. The accept loop ends when the stream is dropped.
pub(crate) fn tls(
    listener: TcpListener,
    tls: Arc<NodeTls>,
    accept: Accept,
    on_failure: OnFailure,
) -> ReceiverStream<io::Result<TlsStream<Watched<TcpStream>>>> {
    let (tx, rx) = mpsc::channel(64);
    let which = accept.which;
    let handshake = move |stream: Watched<TcpStream>, peer: SocketAddr| {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
        let on_failure = Arc::clone(&on_failure);
        async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => Some(stream),
                Ok(Err(err)) => {
                    tracing::debug!(%peer, %err, listener = ?which, "TLS handshake failed");
                    on_failure(peer, &err.to_string());
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, listener = ?which, "TLS handshake timed out");
                    on_failure(peer, "TLS handshake did not finish in time");
                    None
                }
            }
        }
    };
    tokio::spawn(accept_loop(listener, accept, tx, handshake));
    ReceiverStream::new(rx)
}

/// Accepts connections, runs `handshake` on each (at most [`MAX_HANDSHAKES`] at once) and sends
/// the connections it returns on `tx`.
async fn accept_loop<S, H, F>(
    listener: TcpListener,
    accept: Accept,
    tx: mpsc::Sender<io::Result<S>>,
    handshake: H,
) where
    S: Send + 'static,
    H: Fn(Watched<TcpStream>, SocketAddr) -> F,
    F: Future<Output = Option<S>> + Send + 'static,
{
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
                tracing::warn!(%err, listener = ?accept.which, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small answers must not wait out Nagle's algorithm: without it, small answers (Raft
        // acknowledgements, forwarded replies) sit out delayed ACKs, ~40 ms each.
        let _ = tcp.set_nodelay(true);
        let done = handshake(Watched::new(tcp, accept.idle_timeout), peer);
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(stream) = done.await {
                let _ = tx.send(Ok(stream)).await;
            }
        });
    }
}

/// A connection that fails its reads and writes (so the server closes it) once nothing has been
/// read from it for its idle timeout, or when it has not sent its first [`PREFACE_BYTES`] within
/// [`HANDSHAKE_TIMEOUT`]. The deadline is checked whenever a read or write has to wait, which the
/// server's connection task always has one of doing.
#[derive(Debug)]
pub(crate) struct Watched<S> {
    inner: S,
    idle_timeout: Duration,
    opened: Instant,
    last_read: Instant,
    read_total: u64,
    timer: Pin<Box<Sleep>>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, idle_timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner,
            idle_timeout,
            opened: now,
            last_read: now,
            read_total: 0,
            timer: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
        }
    }

    /// When the connection is to be closed unless it reads something first.
    fn due(&self) -> Instant {
        let idle = self.last_read + self.idle_timeout;
        if self.read_total < PREFACE_BYTES {
            idle.min(self.opened + HANDSHAKE_TIMEOUT)
        } else {
            idle
        }
    }

    /// The error that closes the connection, once it is due; otherwise `None`, with the task
    /// woken when it becomes due.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let due = self.due();
        if Instant::now() < due {
            if self.timer.deadline() != due {
                self.timer.as_mut().reset(due);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
        }
        let reason = if self.read_total < PREFACE_BYTES {
            format!(
                "{} bytes read in {:?}: closing a connection that does not open",
                self.read_total,
                self.opened.elapsed()
            )
        } else {
            format!(
                "nothing read for {:?}: closing an idle connection",
                self.idle_timeout
            )
        };
        tracing::debug!(reason, "connection closed");
        Some(io::Error::new(io::ErrorKind::TimedOut, reason))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                let read = buf.filled().len().saturating_sub(before);
                if read > 0 {
                    self.last_read = Instant::now();
                    self.read_total = self.read_total.saturating_add(read as u64);
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.expired(cx) {
                Some(err) => Poll::Ready(Err(err)),
                None => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => match self.expired(cx) {
                Some(err) => Poll::Ready(Err(err)),
                None => Poll::Pending,
            },
            ready => ready,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => match self.expired(cx) {
                Some(err) => Poll::Ready(Err(err)),
                None => Poll::Pending,
            },
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => match self.expired(cx) {
                Some(err) => Poll::Ready(Err(err)),
                None => Poll::Pending,
            },
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for Watched<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(idle: Duration) -> (Watched<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (Watched::new(server, idle), client)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() {
        let (mut server, _client) = pair(Duration::from_secs(5)).await;
        let mut buf = [0u8; 8];
        let started = Instant::now();
        let err = server.read(&mut buf).await.expect_err("closed");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(5), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_opener_is_closed_after_the_handshake_timeout() {
        let (mut server, mut client) = pair(Duration::from_secs(600)).await;
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let mut total = 0;
        let err = loop {
            // A byte every 5 s: never idle, but the preface is never complete.
            tokio::select! {
                read = server.read(&mut buf) => match read {
                    Ok(n) => total += n,
                    Err(err) => break err,
                },
                () = tokio::time::sleep(Duration::from_secs(5)) => {
                    client.write_all(b"P").await.expect("write");
                }
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(total < PREFACE_BYTES as usize);
        let elapsed = started.elapsed();
        assert!(
            elapsed >= HANDSHAKE_TIMEOUT && elapsed < HANDSHAKE_TIMEOUT + Duration::from_secs(1),
            "{elapsed:?}"
        );
    }

    #[tokio::test]
    async fn reads_keep_a_connection_open() {
        let idle = Duration::from_millis(300);
        let (mut server, mut client) = pair(idle).await;
        client.write_all(&[0u8; 24]).await.expect("preface");
        let mut buf = [0u8; 64];
        let started = Instant::now();
        // Something to read every 100 ms for over three idle timeouts: the connection stays.
        while started.elapsed() < idle * 4 {
            let n = server.read(&mut buf).await.expect("open while it reads");
            assert!(n > 0);
            tokio::time::sleep(idle / 3).await;
            client.write_all(b"ping ack").await.expect("write");
        }
        // Then silence closes it.
        let err = loop {
            if let Err(err) = server.read(&mut buf).await {
                break err;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
