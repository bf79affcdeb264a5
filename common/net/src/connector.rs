//! The station endpoint: connects to the server, confirms the server accepted
//! our certificate, and reconnects with exponential backoff and full jitter.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::bind_udp;
use super::error::{NetError, Result};
use super::tls::ClientTls;
use super::transport::TransportSettings;
use fedcrime_identity::StationId;

/// When and how often to retry a failed connection.
///
/// The delay before retry `n` (1-based) is drawn uniformly from
/// `[0, min(max_delay, initial_delay * multiplier^(n-1))]` ("full jitter"),
/// which spreads the reconnections of many stations after a server restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconnectPolicy {
    /// Ceiling of the first delay, in milliseconds.
    pub initial_delay_ms: u64,
    /// Largest delay, in milliseconds.
    pub max_delay_ms: u64,
    /// Growth of the ceiling per failed attempt (at least 1).
    pub multiplier: f64,
    /// Give up after this many failed attempts (0: never).
    pub max_attempts: u32,
    /// Give up once this much time has passed since the first attempt, in
    /// milliseconds (0: never).
    pub give_up_after_ms: u64,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_delay_ms: 250,
            max_delay_ms: 30_000,
            multiplier: 2.0,
            max_attempts: 0,
            // A station that finds no server for half an hour stops with a
            // clear message (the run is likely over) instead of retrying
            // for ever; a server that is restarted is back long before.
            give_up_after_ms: 30 * 60 * 1000,
        }
    }
}

impl ReconnectPolicy {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(NetError::Settings {
                field: "multiplier",
                reason: format!("{} must be a finite number >= 1", self.multiplier),
            });
        }
        if self.max_delay_ms < self.initial_delay_ms {
            return Err(NetError::Settings {
                field: "max_delay_ms",
                reason: "must be at least initial_delay_ms".to_owned(),
            });
        }
        Ok(())
    }
}

/// The backoff schedule of one reconnection episode (pure: the caller passes
/// the elapsed time, the RNG is seeded).
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: ReconnectPolicy,
    rng: ChaCha8Rng,
    failures: u32,
}

impl Backoff {
    /// A fresh schedule drawing its jitter from `rng`.
    pub fn new(policy: ReconnectPolicy, rng: ChaCha8Rng) -> Self {
        Backoff {
            policy,
            rng,
            failures: 0,
        }
    }

    /// Failed attempts so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The ceiling of the delay after failure number `failure` (1-based).
    pub fn ceiling(&self, failure: u32) -> Duration {
        let p = &self.policy;
        let exp = f64::from(failure.saturating_sub(1)).min(1024.0);
        let ms = (p.initial_delay_ms as f64) * p.multiplier.powf(exp);
        let ms = if ms.is_finite() {
            ms.min(p.max_delay_ms as f64)
        } else {
            p.max_delay_ms as f64
        };
        Duration::from_secs_f64(ms / 1000.0)
    }

    /// Records a failure and returns how long to wait before the next
    /// attempt, or `None` to give up. `elapsed` is the time since the first
    /// attempt of this episode.
    pub fn next_delay(&mut self, elapsed: Duration) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        let p = &self.policy;
        if p.max_attempts != 0 && self.failures >= p.max_attempts {
            return None;
        }
        let ceiling = self.ceiling(self.failures);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let delay = Duration::from_nanos(self.rng.random_range(0..=nanos));
        if p.give_up_after_ms != 0 && elapsed + delay >= Duration::from_millis(p.give_up_after_ms) {
            return None;
        }
        Some(delay)
    }

    /// Starts a new episode (after a successful connection).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A station's QUIC endpoint bound to one server (see the module docs).
#[derive(Debug)]
pub struct Connector {
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    server_name: String,
    station: Option<StationId>,
    policy: ReconnectPolicy,
    rng: Mutex<ChaCha8Rng>,
    handshake_timeout: Duration,
}

impl Connector {
    /// A connector for the station described by `tls`, talking to `server`.
    /// `seed` seeds the backoff jitter. Must be called inside a tokio runtime.
    pub fn new(
        tls: &ClientTls,
        transport: &TransportSettings,
        server: SocketAddr,
        policy: ReconnectPolicy,
        seed: u64,
    ) -> Result<Self> {
        let config = tls.quinn_config(transport)?;
        let mut c =
            Connector::with_config(config, &tls.server_name, transport, server, policy, seed)?;
        c.station = Some(tls.station()?);
        Ok(c)
    }

    /// A connector from a ready quinn client configuration (e.g. one built
    /// from a custom rustls configuration).
    pub(crate) fn with_config(
        config: quinn::ClientConfig,
        server_name: &str,
        transport: &TransportSettings,
        server: SocketAddr,
        policy: ReconnectPolicy,
        seed: u64,
    ) -> Result<Self> {
        policy.validate()?;
        let local: SocketAddr = if server.is_ipv6() {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let socket = bind_udp(local, transport.socket_buffer)?;
        let mut endpoint = quinn::Endpoint::new(
            transport.endpoint_config()?,
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| NetError::Bind {
            addr: local,
            source,
        })?;
        endpoint.set_default_client_config(config);
        Ok(Connector {
            endpoint,
            server,
            server_name: server_name.to_owned(),
            station: None,
            policy,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            handshake_timeout: transport.handshake_timeout(),
        })
    }

    /// This station's identity, read from its own certificate.
    pub fn station(&self) -> Option<&StationId> {
        self.station.as_ref()
    }

    /// The server address.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The underlying quinn endpoint.
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// One connection attempt: handshake, then wait until the server confirms
    /// it (QUIC HANDSHAKE_DONE), which it sends only after accepting our
    /// certificate. A refused certificate therefore fails here, with
    /// [`NetError::Refused`], rather than on first use of the connection.
    pub(crate) async fn connect_once(&self) -> Result<quinn::Connection> {
        let peer = self.server;
        let connecting = self
            .endpoint
            .connect(peer, &self.server_name)
            .map_err(|source| NetError::Connect { peer, source })?;
        let attempt = async {
            let conn = connecting
                .await
                .map_err(|e| NetError::from_connection(peer, e))?;
            wait_confirmed(&conn).await?;
            Ok(conn)
        };
        tokio::time::timeout(self.handshake_timeout, attempt)
            .await
            .map_err(|_| NetError::HandshakeTimeout {
                peer,
                after: self.handshake_timeout,
            })?
    }

    /// Connects, retrying transient failures (timeouts, resets, a server not
    /// up yet) per the reconnect policy. Certificate refusals are not retried.
    pub async fn connect(&self) -> Result<quinn::Connection> {
        let start = tokio::time::Instant::now();
        let seed = self.rng.lock().unwrap_or_else(|e| e.into_inner()).random();
        let mut backoff = Backoff::new(self.policy.clone(), ChaCha8Rng::seed_from_u64(seed));
        loop {
            let err = match self.connect_once().await {
                Ok(conn) => {
                    tracing::info!(server = %self.server, attempts = backoff.failures() + 1, "connected");
                    return Ok(conn);
                }
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => e,
            };
            match backoff.next_delay(start.elapsed()) {
                Some(delay) => {
                    tracing::warn!(server = %self.server, error = %err, retry_in = ?delay,
                        "connection attempt failed");
                    tokio::time::sleep(delay).await;
                }
                None => {
                    return Err(NetError::GaveUp {
                        peer: self.server,
                        attempts: backoff.failures(),
                        elapsed: start.elapsed(),
                        last: Box::new(err),
                    })
                }
            }
        }
    }

    /// Closes the endpoint (and every connection of it).
    pub fn close(&self) {
        self.endpoint
            .close(super::CLOSE_SHUTDOWN, b"station shutting down");
    }
}

/// Waits for HANDSHAKE_DONE from the server, or for the connection to close.
async fn wait_confirmed(conn: &quinn::Connection) -> Result<()> {
    let peer = conn.remote_address();
    let confirmed = async {
        let mut wait = Duration::from_micros(200);
        while conn.stats().frame_rx.handshake_done == 0 {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(10));
        }
    };
    tokio::select! {
        biased;
        e = conn.closed() => Err(NetError::from_connection(peer, e)),
        () = confirmed => Ok(()),
    }
}
