//! Throughput of one model update over QUIC + mutual TLS on loopback,
//! against a plain TCP loopback copy of the same bytes in the same run.
//!
//! Both sides do the same work per round: the sender hands over `bytes`
//! bytes, the receiver copies them into a preallocated buffer and answers one
//! byte; the round time runs from the first byte sent to the answer received.
//! Connections are set up beforehand (the QUIC handshake is timed apart), one
//! untimed warm-up round of each checks the bytes arrive intact, then the
//! timed rounds alternate QUIC and TCP so that noise on a shared machine hits
//! both alike. The figure of merit is the ratio of median throughputs.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::connector::{Connector, ReconnectPolicy};
use super::error::{NetError, Result};
use super::listener::Listener;
use super::tls::{ClientTls, ServerTls};
use super::transport::TransportSettings;

/// What [`bench_quic_vs_tcp`] measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchResult {
    /// Bytes per transfer.
    pub bytes: usize,
    /// Timed rounds per transport.
    pub rounds: usize,
    /// QUIC + mTLS handshake (connect until confirmed), milliseconds.
    pub quic_handshake_ms: f64,
    /// Median QUIC transfer time, seconds.
    pub quic_median_s: f64,
    /// Best QUIC transfer time, seconds.
    pub quic_best_s: f64,
    /// Median TCP transfer time, seconds.
    pub tcp_median_s: f64,
    /// Best TCP transfer time, seconds.
    pub tcp_best_s: f64,
    /// QUIC throughput at the median, MB/s (10^6 bytes).
    pub quic_mb_s: f64,
    /// TCP throughput at the median, MB/s.
    pub tcp_mb_s: f64,
    /// `quic_mb_s / tcp_mb_s`, at the medians.
    pub ratio: f64,
    /// The same ratio at the best rounds (less sensitive to a noisy machine).
    pub ratio_best: f64,
    /// UDP datagrams the QUIC sender sent per round (a measure of packet size).
    pub quic_datagrams_per_round: f64,
    /// Send system calls of the QUIC sender per round (fewer with segmentation offload).
    pub quic_send_calls_per_round: f64,
    /// Path MTU (UDP payload bytes) the QUIC sender ended with.
    pub quic_mtu: u16,
    /// Packets the QUIC sender declared lost over all rounds (warm-up included).
    pub quic_lost_packets: u64,
}

impl fmt::Display for BenchResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.1} MB x {} rounds: QUIC+mTLS {:.0} MB/s (median {:.1} ms, best {:.1} ms, MTU {}, \
             {:.0} datagrams and {:.0} sends/round, {} lost), TCP {:.0} MB/s (median {:.1} ms, \
             best {:.1} ms), ratio {:.2}x at the medians, {:.2}x at the best; handshake {:.2} ms",
            self.bytes as f64 / 1e6,
            self.rounds,
            self.quic_mb_s,
            self.quic_median_s * 1e3,
            self.quic_best_s * 1e3,
            self.quic_mtu,
            self.quic_datagrams_per_round,
            self.quic_send_calls_per_round,
            self.quic_lost_packets,
            self.tcp_mb_s,
            self.tcp_median_s * 1e3,
            self.tcp_best_s * 1e3,
            self.ratio,
            self.ratio_best,
            self.quic_handshake_ms,
        )
    }
}

/// Runs the benchmark on a fresh multi-threaded tokio runtime (do not call
/// from inside a runtime; use [`bench_quic_vs_tcp_async`] there). `server`
/// and `client` must come from one PKI whose server certificate names
/// `127.0.0.1` or the client's `server_name`.
pub fn bench_quic_vs_tcp(
    server: &ServerTls,
    client: &ClientTls,
    transport: &TransportSettings,
    bytes: usize,
    rounds: usize,
) -> Result<BenchResult> {
    // Sender and receiver connection drivers, two endpoint drivers and the
    // application tasks can all run in parallel.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|source| NetError::Socket {
            what: "starting the tokio runtime",
            source,
        })?;
    rt.block_on(bench_quic_vs_tcp_async(
        server, client, transport, bytes, rounds,
    ))
}

/// The benchmark, inside an existing tokio runtime.
pub async fn bench_quic_vs_tcp_async(
    server: &ServerTls,
    client: &ClientTls,
    transport: &TransportSettings,
    bytes: usize,
    rounds: usize,
) -> Result<BenchResult> {
    let rounds = rounds.max(1);
    let payload = bytes::Bytes::from(pattern(bytes));
    let loopback: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();

    // QUIC + mTLS.
    let listener = Listener::bind(loopback, server, transport)?;
    let addr = listener.local_addr()?;
    let policy = ReconnectPolicy {
        max_attempts: 1,
        ..ReconnectPolicy::default()
    };
    let connector = Connector::new(client, transport, addr, policy, 0)?;
    let t = Instant::now();
    let (conn, accepted) = tokio::join!(connector.connect(), listener.accept());
    let quic_handshake_ms = t.elapsed().as_secs_f64() * 1e3;
    let conn = conn?;
    let accepted = accepted.ok_or(NetError::Closed)?;
    let quic_server = tokio::spawn(quic_receiver(accepted.connection, bytes));

    // Plain TCP.
    let mut tcp = TcpReference::connect(bytes)?;

    // Warm-up rounds (MTU discovery, congestion windows, buffers), untimed;
    // the receivers return what they got the first time, to check it.
    quic_send(&conn, &payload).await?;
    let shared = payload.clone();
    tcp = on_tcp(tcp, move |t| t.transfer(&shared, 1)).await?.0;

    let mut quic_times = Vec::with_capacity(rounds);
    let mut tcp_times = Vec::with_capacity(rounds);
    let before = conn.stats().udp_tx;
    for round in 0..rounds {
        if round % 2 == 0 {
            quic_times.push(quic_send(&conn, &payload).await?);
            let shared = payload.clone();
            let (t, d) = on_tcp(tcp, move |t| t.transfer(&shared, 1)).await?;
            tcp = t;
            tcp_times.push(d);
        } else {
            let shared = payload.clone();
            let (t, d) = on_tcp(tcp, move |t| t.transfer(&shared, 1)).await?;
            tcp = t;
            tcp_times.push(d);
            quic_times.push(quic_send(&conn, &payload).await?);
        }
    }
    let stats = conn.stats();
    let datagrams = stats.udp_tx.datagrams - before.datagrams;
    let send_calls = stats.udp_tx.ios - before.ios;

    conn.close(super::CLOSE_SHUTDOWN, b"benchmark done");
    let quic_first = join(quic_server).await?;
    let tcp_first = tokio::task::spawn_blocking(move || tcp.finish())
        .await
        .map_err(|e| NetError::Socket {
            what: "the TCP reference",
            source: std::io::Error::other(e.to_string()),
        })??;
    if quic_first != payload || tcp_first != payload {
        return Err(NetError::Stream {
            peer: addr,
            reason: "the receiver got different bytes than were sent".to_owned(),
        });
    }
    listener.close();
    connector.close();

    let (quic_median_s, quic_best_s) = median_and_best(&mut quic_times);
    let (tcp_median_s, tcp_best_s) = median_and_best(&mut tcp_times);
    let quic_mb_s = bytes as f64 / quic_median_s / 1e6;
    let tcp_mb_s = bytes as f64 / tcp_median_s / 1e6;
    Ok(BenchResult {
        bytes,
        rounds,
        quic_handshake_ms,
        quic_median_s,
        quic_best_s,
        tcp_median_s,
        tcp_best_s,
        quic_mb_s,
        tcp_mb_s,
        ratio: quic_mb_s / tcp_mb_s,
        ratio_best: tcp_best_s / quic_best_s,
        quic_datagrams_per_round: datagrams as f64 / rounds as f64,
        quic_send_calls_per_round: send_calls as f64 / rounds as f64,
        quic_mtu: stats.path.current_mtu,
        quic_lost_packets: stats.path.lost_packets,
    })
}

/// Deterministic, incompressible-looking test bytes.
fn pattern(bytes: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut out = Vec::with_capacity(bytes + 8);
    while out.len() < bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(bytes);
    out
}

fn median_and_best(times: &mut [Duration]) -> (f64, f64) {
    times.sort();
    let median = times[times.len() / 2].as_secs_f64();
    let best = times[0].as_secs_f64();
    (median, best)
}

async fn join<T>(h: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    h.await.map_err(|e| NetError::Stream {
        peer: (Ipv4Addr::LOCALHOST, 0).into(),
        reason: format!("benchmark task failed: {e}"),
    })?
}

fn stream_err(peer: SocketAddr, what: &str, e: impl fmt::Display) -> NetError {
    NetError::Stream {
        peer,
        reason: format!("{what}: {e}"),
    }
}

async fn quic_send(conn: &quinn::Connection, payload: &bytes::Bytes) -> Result<Duration> {
    let peer = conn.remote_address();
    let t = Instant::now();
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| NetError::from_connection(peer, e))?;
    // Hand quinn the shared buffer: no copy on the sending side.
    send.write_chunk(payload.clone())
        .await
        .map_err(|e| stream_err(peer, "sending", e))?;
    send.finish()
        .map_err(|e| stream_err(peer, "finishing", e))?;
    let mut ack = [0u8; 1];
    recv.read_exact(&mut ack)
        .await
        .map_err(|e| stream_err(peer, "reading the acknowledgement", e))?;
    Ok(t.elapsed())
}

/// Receives one payload per stream into a reused buffer; returns the first.
async fn quic_receiver(conn: quinn::Connection, bytes: usize) -> Result<Vec<u8>> {
    let peer = conn.remote_address();
    let mut buf: Vec<u8> = Vec::with_capacity(bytes);
    let mut first = None;
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => break,
        };
        buf.clear();
        while let Some(chunk) = recv
            .read_chunk(usize::MAX, true)
            .await
            .map_err(|e| stream_err(peer, "receiving", e))?
        {
            let quinn::Chunk { bytes: data, .. } = chunk;
            buf.extend_from_slice(&data);
        }
        if buf.len() != bytes {
            return Err(stream_err(
                peer,
                "receiving",
                format!("got {} of {bytes} bytes", buf.len()),
            ));
        }
        send.write_all(b"k")
            .await
            .map_err(|e| stream_err(peer, "acknowledging", e))?;
        send.finish()
            .map_err(|e| stream_err(peer, "acknowledging", e))?;
        if first.is_none() {
            first = Some(buf.clone());
        }
    }
    first.ok_or_else(|| stream_err(peer, "receiving", "nothing received"))
}

/// A plain TCP loopback connection with its receiver thread: the reference
/// every fedcrime transport benchmark measures against in the same run (the
/// QUIC transfer above, the rounds benchmark of the one-machine federation,
/// the end-to-end round-overhead test).
///
/// Blocking std sockets and a receiver thread, the fastest plain copy the OS
/// offers (an async runtime would only add to the reference). A transfer
/// sends one length prefix and then the payload `copies` times; the receiver
/// reads everything into a payload-sized buffer and answers one byte, so a
/// transfer is timed from the first byte sent to the answer. From async
/// code, call it through `spawn_blocking`.
#[derive(Debug)]
pub struct TcpReference {
    client: std::net::TcpStream,
    receiver: std::thread::JoinHandle<std::io::Result<Vec<u8>>>,
}

fn tcp_err(what: &'static str) -> impl FnOnce(std::io::Error) -> NetError {
    move |source| NetError::Socket { what, source }
}

impl TcpReference {
    /// Connects a sender and a receiver of `bytes`-long payloads on loopback
    /// (`TCP_NODELAY` on both ends).
    pub fn connect(bytes: usize) -> Result<Self> {
        use std::net::{TcpListener, TcpStream};
        let loopback: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
        let listener = TcpListener::bind(loopback).map_err(|source| NetError::Bind {
            addr: loopback,
            source,
        })?;
        let addr = listener
            .local_addr()
            .map_err(tcp_err("reading the TCP listener address"))?;
        let receiver = std::thread::spawn(move || {
            let (stream, _) = listener.accept()?;
            tcp_receiver(stream, bytes)
        });
        let client = TcpStream::connect(addr).map_err(tcp_err("connecting over TCP"))?;
        client
            .set_nodelay(true)
            .map_err(tcp_err("setting TCP_NODELAY"))?;
        Ok(TcpReference { client, receiver })
    }

    /// Sends `payload` `copies` times and waits for the answer.
    pub fn transfer(&mut self, payload: &[u8], copies: usize) -> Result<Duration> {
        use std::io::{Read, Write};
        let total = (payload.len() as u64).saturating_mul(copies as u64);
        let t = Instant::now();
        self.client
            .write_all(&total.to_le_bytes())
            .map_err(tcp_err("sending over TCP"))?;
        for _ in 0..copies {
            self.client
                .write_all(payload)
                .map_err(tcp_err("sending over TCP"))?;
        }
        let mut ack = [0u8; 1];
        self.client
            .read_exact(&mut ack)
            .map_err(tcp_err("reading the TCP acknowledgement"))?;
        Ok(t.elapsed())
    }

    /// Closes the connection; the first payload the receiver got, to check.
    pub fn finish(self) -> Result<Vec<u8>> {
        drop(self.client);
        match self.receiver.join() {
            Ok(r) => r.map_err(tcp_err("receiving over TCP")),
            Err(_) => Err(NetError::Socket {
                what: "receiving over TCP",
                source: std::io::Error::other("the receiver thread panicked"),
            }),
        }
    }
}

/// Runs `f` on `tcp` on a blocking thread of the current runtime.
async fn on_tcp<T: Send + 'static>(
    mut tcp: TcpReference,
    f: impl FnOnce(&mut TcpReference) -> Result<T> + Send + 'static,
) -> Result<(TcpReference, T)> {
    tokio::task::spawn_blocking(move || {
        let out = f(&mut tcp)?;
        Ok((tcp, out))
    })
    .await
    .map_err(|e| NetError::Socket {
        what: "the TCP reference",
        source: std::io::Error::other(e.to_string()),
    })?
}

/// The best of `reps` seconds to move `copies` copies of a `bytes`-long
/// payload over one warm TCP loopback connection ([`TcpReference`]).
pub fn tcp_seconds(bytes: usize, copies: usize, reps: usize) -> Result<f64> {
    let payload = pattern(bytes.max(1));
    let mut tcp = TcpReference::connect(payload.len())?;
    tcp.transfer(&payload, 1)?;
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        best = best.min(tcp.transfer(&payload, copies)?.as_secs_f64());
    }
    if tcp.finish()? != payload {
        return Err(NetError::Socket {
            what: "receiving over TCP",
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "bytes changed"),
        });
    }
    Ok(best)
}

/// The receiver side of a [`TcpReference`]: reads each announced transfer
/// into a payload-sized buffer (large reads, as a real receiver would) and
/// answers one byte; returns the first payload.
fn tcp_receiver(mut stream: std::net::TcpStream, bytes: usize) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; bytes.max(1)];
    let mut first: Option<Vec<u8>> = None;
    loop {
        let mut len = [0u8; 8];
        match stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let mut left = u64::from_le_bytes(len);
        let mut filled = 0usize;
        while left > 0 {
            let want = (buf.len() - filled).min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = stream.read(&mut buf[filled..filled + want])?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            filled += n;
            left -= n as u64;
            if filled == buf.len() {
                if first.is_none() {
                    first = Some(buf.clone());
                }
                filled = 0;
            }
        }
        stream.write_all(b"k")?;
    }
    first.ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into())
}
