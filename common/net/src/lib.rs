//! # fedcrime-net
//!
//! The connection layer: QUIC (quinn) with mutual TLS (rustls, ring, TLS 1.3,
//! ALPN `fedcrime/1`) between the aggregation server and the stations.
//!
//! - [`ServerTls`] / [`ClientTls`]: typed paths to the PEM files made by
//!   `fedcrime-certs`, building rustls and quinn configurations.
//! - The server requires a client certificate that chains to the agency CA,
//!   is within its validity period, carries the client-auth usage and is not
//!   in the CRL; [`CrlVerifier`] re-reads the CRL file when it changes, so a
//!   revocation takes effect without a restart.
//! - The station identity comes from the verified peer certificate only
//!   ([`peer_identity`]: the `urn:fedcrime:station:<name>` URI SAN), never
//!   from a message.
//! - [`Listener`]: the server endpoint, yielding authenticated
//!   [`StationConnection`]s; [`Connector`]: the station endpoint, with
//!   reconnection under exponential backoff and full jitter ([`Backoff`]).
//! - [`TransportSettings`]: keep-alive, idle timeout, flow-control windows
//!   sized for 40+ MB updates, MTU discovery, segmentation offload.
//! - [`EndpointSecret`]: the server's stateless-reset and connection-ID
//!   keys, kept across restarts so stations notice a server crash at once.
//! - [`CloseCode`]: why an endpoint closed a connection.
//! - [`bench_quic_vs_tcp`]: a 40 MB transfer over QUIC + mTLS against plain
//!   TCP on loopback.
//!
//! The wire protocol (frames and messages) runs on the streams of these
//! connections and lives in its own module.

#[cfg(feature = "bench")]
pub mod bench;
mod connector;
mod error;
pub mod http;
mod identity;
mod listener;
mod secret;
mod tls;
mod transport;
mod verifier;

#[cfg(feature = "bench")]
pub use bench::{
    bench_aead, bench_quic_vs_tcp, bench_quic_vs_tcp_async, AeadFigure, AeadFigures, BenchResult,
    TcpReference,
};
pub use connector::{Backoff, Connector, ReconnectPolicy};
pub use error::{NetError, RefusedBy, Result};
pub use fedcrime_identity::{station_from_certificate, StationId, STATION_URI_PREFIX};
pub use identity::{peer_identity, peer_update_key};
pub use listener::{Listener, ListenerLimits, ListenerStats, Rejection, StationConnection};
pub use secret::EndpointSecret;
pub use tls::{pki_layout, ClientTls, ServerTls};
pub use transport::{Congestion, TransportSettings, MAX_MTU_WITH_GSO};
pub use verifier::CrlVerifier;

use std::net::SocketAddr;

/// The ALPN protocol identifier of fedcrime's protocol, version 1.
pub const ALPN: &[u8] = b"fedcrime/1";

/// Why a fedcrime endpoint closed a connection: the QUIC application close
/// codes both sides agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// An orderly end (a session that is over, an endpoint shutting down).
    Shutdown,
    /// The certificate verified but names no station.
    NoIdentity,
    /// The station did not read what the server sent it in time.
    NotKeepingUp,
    /// Another connection of the same station took this one's place.
    Replaced,
    /// The station's certificate was revoked while it was connected.
    Revoked,
}

impl CloseCode {
    /// The code on the wire.
    pub const fn code(self) -> quinn::VarInt {
        quinn::VarInt::from_u32(match self {
            CloseCode::Shutdown => 0,
            CloseCode::NoIdentity => 1,
            CloseCode::NotKeepingUp => 2,
            CloseCode::Replaced => 3,
            CloseCode::Revoked => 4,
        })
    }

    /// The code and reason the peer closed `connection` with, when it closed
    /// it with one of fedcrime's codes.
    pub fn of_peer(connection: &quinn::Connection) -> Option<(CloseCode, String)> {
        let Some(quinn::ConnectionError::ApplicationClosed(c)) = connection.close_reason() else {
            return None;
        };
        let code = [
            CloseCode::Shutdown,
            CloseCode::NoIdentity,
            CloseCode::NotKeepingUp,
            CloseCode::Replaced,
            CloseCode::Revoked,
        ]
        .into_iter()
        .find(|k| k.code() == c.error_code)?;
        Some((code, String::from_utf8_lossy(&c.reason).into_owned()))
    }
}

/// Application close code: orderly shutdown of an endpoint.
pub(crate) const CLOSE_SHUTDOWN: quinn::VarInt = CloseCode::Shutdown.code();
/// Application close code: the certificate verified but names no station.
pub(crate) const CLOSE_NO_IDENTITY: quinn::VarInt = CloseCode::NoIdentity.code();

/// Binds a UDP socket for a quinn endpoint, asking the kernel for
/// `buffer_bytes` of send and receive buffer (0 keeps the OS default). The
/// kernel caps the request (Linux: `net.core.rmem_max` / `wmem_max`); bulk
/// transfers lose packets, and then speed, when the receive buffer overflows.
fn bind_udp(addr: SocketAddr, buffer_bytes: usize) -> Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind_err = |source| NetError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_err)?;
    if buffer_bytes > 0 {
        if let Err(e) = socket.set_recv_buffer_size(buffer_bytes) {
            tracing::warn!(%addr, error = %e, "cannot enlarge the UDP receive buffer");
        }
        if let Err(e) = socket.set_send_buffer_size(buffer_bytes) {
            tracing::warn!(%addr, error = %e, "cannot enlarge the UDP send buffer");
        }
        tracing::debug!(
            %addr,
            recv = socket.recv_buffer_size().unwrap_or(0),
            send = socket.send_buffer_size().unwrap_or(0),
            "UDP socket buffers"
        );
    }
    socket.bind(&addr.into()).map_err(bind_err)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests;
