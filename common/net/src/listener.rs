//! The server endpoint: accepts QUIC connections and hands out only those
//! whose client certificate verified and named a station.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};

use super::error::{NetError, Result};
use super::identity::peer_identity;
use super::secret::EndpointSecret;
use super::tls::ServerTls;
use super::transport::TransportSettings;
use super::verifier::CrlVerifier;
use super::{bind_udp, CLOSE_NO_IDENTITY, CLOSE_SHUTDOWN};
use fedcrime_identity::StationId;

/// How many refused handshakes [`Listener::rejections`] remembers.
const REJECTIONS_KEPT: usize = 64;

/// An authenticated connection from a station.
#[derive(Debug, Clone)]
pub struct StationConnection {
    /// The identity from the station's certificate.
    pub station: StationId,
    /// The QUIC connection.
    pub connection: quinn::Connection,
}

impl StationConnection {
    /// The station's address.
    pub fn remote(&self) -> SocketAddr {
        self.connection.remote_address()
    }
}

/// A refused connection attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Where it came from.
    pub remote: SocketAddr,
    /// Why it was refused (the error, rendered).
    pub reason: String,
}

/// Counters of a listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Connections authenticated and handed to [`Listener::accept`].
    pub accepted: u64,
    /// Connection attempts refused (bad certificate, no identity, timeout, overload).
    pub rejected: u64,
}

/// Limits of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Handshakes in progress at once; further attempts are refused.
    pub max_pending_handshakes: usize,
    /// Authenticated connections waiting for [`Listener::accept`]; handshakes
    /// pause while this queue is full.
    pub accept_queue: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_pending_handshakes: 256,
            accept_queue: 64,
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    accepted: AtomicU64,
    rejected: AtomicU64,
    rejections: Mutex<VecDeque<Rejection>>,
}

impl Shared {
    fn reject(&self, remote: SocketAddr, error: &NetError) {
        tracing::warn!(%remote, error = %error, "connection refused");
        self.rejected.fetch_add(1, Ordering::Relaxed);
        let mut r = self.rejections.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() == REJECTIONS_KEPT {
            r.pop_front();
        }
        r.push_back(Rejection {
            remote,
            reason: error.to_string(),
        });
    }
}

/// The server's QUIC endpoint (see the module docs). Handshakes run
/// concurrently in background tasks, so a slow or hostile client never holds
/// up the others; a refused one is logged and counted, and the listener keeps
/// serving.
#[derive(Debug)]
pub struct Listener {
    endpoint: quinn::Endpoint,
    verifier: Arc<CrlVerifier>,
    queue: tokio::sync::Mutex<mpsc::Receiver<StationConnection>>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Binds `addr` and starts accepting, with a random [`EndpointSecret`]
    /// (stations of a previous server process on this port wait for their
    /// idle timeout). Must be called inside a tokio runtime.
    pub fn bind(addr: SocketAddr, tls: &ServerTls, transport: &TransportSettings) -> Result<Self> {
        Listener::bind_with_secret(addr, tls, transport, &EndpointSecret::random())
    }

    /// [`Listener::bind`] with a kept secret: a restarted server on the same
    /// secret resets its predecessor's connections at once.
    pub fn bind_with_secret(
        addr: SocketAddr,
        tls: &ServerTls,
        transport: &TransportSettings,
        secret: &EndpointSecret,
    ) -> Result<Self> {
        Listener::bind_with_limits(addr, tls, transport, secret, ListenerLimits::default())
    }

    /// [`Listener::bind_with_secret`] with explicit limits.
    pub(crate) fn bind_with_limits(
        addr: SocketAddr,
        tls: &ServerTls,
        transport: &TransportSettings,
        secret: &EndpointSecret,
        limits: ListenerLimits,
    ) -> Result<Self> {
        let (config, verifier) = tls.quinn_config(transport)?;
        let socket = bind_udp(addr, transport.socket_buffer)?;
        let mut endpoint_config = transport.endpoint_config()?;
        secret.apply(&mut endpoint_config);
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| NetError::Bind { addr, source })?;
        let (tx, rx) = mpsc::channel(limits.accept_queue.max(1));
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(accept_loop(
            endpoint.clone(),
            tx,
            shared.clone(),
            transport.handshake_timeout(),
            Arc::new(Semaphore::new(limits.max_pending_handshakes.max(1))),
        ));
        tracing::info!(addr = %endpoint.local_addr().unwrap_or(addr), "listening for stations");
        Ok(Listener {
            endpoint,
            verifier,
            queue: tokio::sync::Mutex::new(rx),
            shared,
            task,
        })
    }

    /// The bound address (useful after binding port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.endpoint
            .local_addr()
            .map_err(|source| NetError::Socket {
                what: "reading the listener address",
                source,
            })
    }

    /// The next authenticated station connection; `None` once the listener is closed.
    pub async fn accept(&self) -> Option<StationConnection> {
        self.queue.lock().await.recv().await
    }

    /// Re-reads the CRL now (it is also re-read on its own when the file changes).
    pub fn reload_crl(&self) -> Result<()> {
        self.verifier.reload()
    }

    /// The certificate verifier (CRL state).
    pub fn verifier(&self) -> &Arc<CrlVerifier> {
        &self.verifier
    }

    /// Counters.
    pub fn stats(&self) -> ListenerStats {
        ListenerStats {
            accepted: self.shared.accepted.load(Ordering::Relaxed),
            rejected: self.shared.rejected.load(Ordering::Relaxed),
        }
    }

    /// The most recent refused attempts, oldest first.
    pub fn rejections(&self) -> Vec<Rejection> {
        let r = self
            .shared
            .rejections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        r.iter().cloned().collect()
    }

    /// The underlying quinn endpoint.
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// Stops accepting and closes every connection.
    pub fn close(&self) {
        self.endpoint.close(CLOSE_SHUTDOWN, b"server shutting down");
        self.task.abort();
    }

    /// Waits until every connection has been cleanly shut down.
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    tx: mpsc::Sender<StationConnection>,
    shared: Arc<Shared>,
    handshake_timeout: Duration,
    pending: Arc<Semaphore>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            incoming.refuse();
            shared.reject(
                remote,
                &NetError::Stream {
                    peer: remote,
                    reason: "too many handshakes in progress".to_owned(),
                },
            );
            continue;
        };
        let tx = tx.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let result = handshake(incoming, handshake_timeout).await;
            drop(permit);
            match result {
                Ok(conn) => {
                    tracing::info!(station = %conn.station, remote = %remote, "station connected");
                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                    if let Err(mpsc::error::SendError(conn)) = tx.send(conn).await {
                        conn.connection
                            .close(CLOSE_SHUTDOWN, b"server shutting down");
                    }
                }
                Err(e) => shared.reject(remote, &e),
            }
        });
    }
}

async fn handshake(incoming: quinn::Incoming, limit: Duration) -> Result<StationConnection> {
    let peer = incoming.remote_address();
    let connecting = incoming
        .accept()
        .map_err(|e| NetError::from_connection(peer, e))?;
    let connection = tokio::time::timeout(limit, connecting)
        .await
        .map_err(|_| NetError::HandshakeTimeout { peer, after: limit })?
        .map_err(|e| NetError::from_connection(peer, e))?;
    match peer_identity(&connection) {
        Ok(station) => Ok(StationConnection {
            station,
            connection,
        }),
        Err(e) => {
            connection.close(CLOSE_NO_IDENTITY, b"no station identity in the certificate");
            Err(e)
        }
    }
}
