//! Loopback ports for servers that tests start as separate processes and that must know their
//! addresses before they start (the initial controller voters name each other in `--peers`;
//! `weir local` puts node I on BASE+I-1; compose publishes fixed host ports), without the race of
//! binding port 0, releasing it and hoping it is still free when the server binds it.
//!
//! A [`PortReservation`] binds a port on 127.0.0.1 with `SO_REUSEADDR` and never listens on it.
//! While it is held, the kernel hands the port to no one else (binding port 0 and outgoing
//! connections skip ports in use) and a plain `bind` of it fails; a server binding it with
//! `SO_REUSEADDR` — as every tokio and Rust std listener does on Linux — can listen on it. While
//! that server is down (killed, not yet restarted) connections are refused as on a free port, and
//! the port waits for the server to come back.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context;
use tokio::net::TcpSocket;

/// A port on 127.0.0.1 held for a server that binds it later (see the module docs).
#[derive(Debug)]
pub struct PortReservation {
    // Held, never used: dropping it frees the port.
    _socket: TcpSocket,
    addr: SocketAddr,
}

impl PortReservation {
    /// A port the kernel picks (binding port 0).
    pub fn any() -> anyhow::Result<Self> {
        Self::at(0)
    }

    /// Port `port` (0: any), if it is free.
    pub fn at(port: u16) -> anyhow::Result<Self> {
        let socket = TcpSocket::new_v4().context("creating a socket")?;
        socket.set_reuseaddr(true)?;
        socket
            .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .with_context(|| format!("reserving port {port} on 127.0.0.1"))?;
        let addr = socket.local_addr()?;
        Ok(Self {
            _socket: socket,
            addr,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// `n` consecutive ports (for `weir local --base-port`), the first one picked by the kernel.
pub fn consecutive(n: u16) -> anyhow::Result<Vec<PortReservation>> {
    let mut last_err = None;
    for _ in 0..100 {
        let first = PortReservation::any()?;
        let base = first.port();
        let mut held = vec![first];
        for i in 1..n {
            match base.checked_add(i).map(PortReservation::at) {
                Some(Ok(next)) => held.push(next),
                Some(Err(err)) => {
                    last_err = Some(err);
                    break;
                }
                None => break,
            }
        }
        if held.len() == usize::from(n) {
            return Ok(held);
        }
    }
    Err(last_err
        .unwrap_or_else(|| anyhow::anyhow!("no room above the ports tried"))
        .context(format!(
            "no {n} consecutive free ports on 127.0.0.1 in 100 tries"
        )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserved_port_is_refused_to_others_and_granted_to_a_reusing_listener() {
        let reserved = PortReservation::any().expect("a port");
        // A plain bind (no SO_REUSEADDR) fails: the port is taken.
        let plain = tokio::net::TcpSocket::new_v4().expect("socket");
        assert!(plain.bind(reserved.addr()).is_err());
        // Nothing listens: connecting is refused.
        assert!(std::net::TcpStream::connect(reserved.addr()).is_err());
        // A server's listener (SO_REUSEADDR) binds it and serves.
        let listener = std::net::TcpListener::bind(reserved.addr()).expect("server binds it");
        assert!(std::net::TcpStream::connect(reserved.addr()).is_ok());
        drop(listener);
        // Down again: refused, and still held.
        assert!(std::net::TcpStream::connect(reserved.addr()).is_err());
        let again = std::net::TcpListener::bind(reserved.addr()).expect("rebinds after a restart");
        drop(again);
    }

    #[test]
    fn consecutive_ports_are_consecutive() {
        let ports: Vec<u16> = consecutive(3)
            .expect("three ports")
            .iter()
            .map(PortReservation::port)
            .collect();
        assert_eq!(ports, vec![ports[0], ports[0] + 1, ports[0] + 2]);
    }
}
