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

/// One AEAD's throughput on this machine ([`bench_aead`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AeadFigure {
    /// The algorithm, as TLS 1.3 names its suite's cipher.
    pub aead: &'static str,
    /// Sealing (encrypt + tag) throughput on one core, MB/s (10^6 bytes).
    pub seal_mb_s: f64,
    /// Opening (verify + decrypt) throughput on one core, MB/s.
    pub open_mb_s: f64,
}

impl AeadFigure {
    /// Seconds one core spends sealing and opening `bytes` bytes once.
    pub fn seal_open_s(&self, bytes: u64) -> f64 {
        let mb = bytes as f64 / 1e6;
        mb / self.seal_mb_s + mb / self.open_mb_s
    }
}

/// What [`bench_aead`] measured: ring's AES-128-GCM, AES-256-GCM and
/// ChaCha20-Poly1305 on QUIC-sized packets, the ciphers of fedcrime's three
/// TLS 1.3 suites.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AeadFigures {
    /// Bytes sealed and opened per algorithm and direction.
    pub bytes: usize,
    /// Plaintext bytes per packet (quinn's largest UDP payload less headers and tag).
    pub packet: usize,
    /// One figure per algorithm, AES-128-GCM first.
    pub figures: Vec<AeadFigure>,
}

impl AeadFigures {
    /// The figure for `aead` (`"AES_128_GCM"`, `"AES_256_GCM"` or `"CHACHA20_POLY1305"`).
    pub fn get(&self, aead: &str) -> Option<&AeadFigure> {
        self.figures.iter().find(|f| f.aead == aead)
    }

    /// The fastest algorithm for sealing plus opening.
    pub fn fastest(&self) -> Option<&AeadFigure> {
        self.figures.iter().min_by(|a, b| {
            a.seal_open_s(1_000_000)
                .total_cmp(&b.seal_open_s(1_000_000))
        })
    }

    /// The cryptographic lower bound on moving `bytes` bytes of round
    /// traffic with AES-128-GCM (the suite fedcrime negotiates): every byte is
    /// sealed once by its sender and opened once by its receiver, with the
    /// work spread over `cores` cores and nothing else to do. `None` when
    /// AES-128-GCM was not measured.
    pub fn aes_128_gcm_bound_s(&self, bytes: u64, cores: usize) -> Option<f64> {
        self.get("AES_128_GCM")
            .map(|f| f.seal_open_s(bytes) / cores.max(1) as f64)
    }
}

impl fmt::Display for AeadFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AEAD on one core, {:.1} MB in {}-byte packets:",
            self.bytes as f64 / 1e6,
            self.packet
        )?;
        for a in &self.figures {
            write!(
                f,
                " {} seal {:.0} MB/s, open {:.0} MB/s;",
                a.aead, a.seal_mb_s, a.open_mb_s
            )?;
        }
        if let Some(best) = self.fastest() {
            write!(f, " fastest {}", best.aead)?;
        }
        Ok(())
    }
}

/// Measures ring's three TLS 1.3 AEADs on this machine: seals then opens
/// `bytes` bytes (at least one packet) in packets the size QUIC sends with
/// segmentation offload, in place, best of three timings each. The opened
/// bytes are checked against the original.
pub fn bench_aead(bytes: usize) -> Result<AeadFigures> {
    use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

    // A 6,500-byte UDP payload less QUIC's short header (≤ 25 bytes) and the tag.
    const PACKET: usize = 6_400;
    let packets = bytes.div_ceil(PACKET).max(1);
    let algorithms: [(&'static str, &'static aead::Algorithm); 3] = [
        ("AES_128_GCM", &aead::AES_128_GCM),
        ("AES_256_GCM", &aead::AES_256_GCM),
        ("CHACHA20_POLY1305", &aead::CHACHA20_POLY1305),
    ];
    let crypto_err = |what: &'static str| NetError::Socket {
        what,
        source: std::io::Error::other("ring AEAD failure"),
    };
    let original = pattern(PACKET);
    let mut figures = Vec::with_capacity(algorithms.len());
    for (name, alg) in algorithms {
        let key_bytes = vec![0x5au8; alg.key_len()];
        let key = LessSafeKey::new(
            UnboundKey::new(alg, &key_bytes).map_err(|_| crypto_err("building an AEAD key"))?,
        );
        let nonce = |i: usize| {
            let mut n = [0u8; aead::NONCE_LEN];
            n[4..].copy_from_slice(&(i as u64).to_be_bytes());
            Nonce::assume_unique_for_key(n)
        };
        // Sealed packets of one pass, kept so that opening has real input.
        let mut sealed: Vec<Vec<u8>> = (0..packets).map(|_| original.clone()).collect();
        let mut tags = Vec::with_capacity(packets);
        let (mut seal_best, mut open_best) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..3 {
            for p in sealed.iter_mut() {
                p.copy_from_slice(&original);
            }
            tags.clear();
            let t0 = Instant::now();
            for (i, p) in sealed.iter_mut().enumerate() {
                let tag = key
                    .seal_in_place_separate_tag(nonce(i), Aad::from(&[0u8; 16]), p)
                    .map_err(|_| crypto_err("sealing"))?;
                tags.push(tag);
            }
            seal_best = seal_best.min(t0.elapsed().as_secs_f64());
            let mut opened: Vec<Vec<u8>> = sealed
                .iter()
                .zip(&tags)
                .map(|(p, t)| {
                    let mut v = Vec::with_capacity(p.len() + t.as_ref().len());
                    v.extend_from_slice(p);
                    v.extend_from_slice(t.as_ref());
                    v
                })
                .collect();
            let t0 = Instant::now();
            for (i, p) in opened.iter_mut().enumerate() {
                let plain = key
                    .open_in_place(nonce(i), Aad::from(&[0u8; 16]), p)
                    .map_err(|_| crypto_err("opening"))?;
                if plain != original.as_slice() {
                    return Err(crypto_err("checking opened bytes"));
                }
            }
            open_best = open_best.min(t0.elapsed().as_secs_f64());
        }
        let mb = (packets * PACKET) as f64 / 1e6;
        figures.push(AeadFigure {
            aead: name,
            seal_mb_s: mb / seal_best,
            open_mb_s: mb / open_best,
        });
    }
    Ok(AeadFigures {
        bytes: packets * PACKET,
        packet: PACKET,
        figures,
    })
}
