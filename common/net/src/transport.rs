//! QUIC transport settings shared by server and stations, sized for model
//! updates of 40 MB and more.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{NetError, Result};

const MIB: u64 = 1024 * 1024;

/// The largest MTU discovery may reach while segmentation offload is on.
///
/// quinn hands the kernel up to 10 packets per send call as one GSO batch,
/// and Linux refuses batches over 64 KiB of UDP payload (`EMSGSIZE`), which
/// quinn-udp drops without a word: every packet of the batch is lost, loss
/// bursts of large packets look like an MTU black hole, and the path MTU falls
/// back to 1200 for a minute. 10 x 6500 bytes stays under the limit. Ethernet
/// paths (about 1500) are unaffected; loopback and jumbo-frame links get 6500.
pub const MAX_MTU_WITH_GSO: u16 = 6_500;

/// Congestion controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Congestion {
    /// CUBIC (RFC 9438), loss-based; the QUIC default.
    Cubic,
    /// NewReno (RFC 9002), loss-based.
    NewReno,
    /// BBR, model-based: paces to the measured bottleneck rate and keeps
    /// queues short, so buffers overflow (and packets are lost) less.
    Bbr,
}

/// QUIC transport settings (serde-friendly; every field has a default).
///
/// The defaults are tuned for noticing a lost peer quickly and for moving
/// 40+ MB model updates:
/// - A keep-alive every second and a 5 s idle timeout: a station that was
///   killed, or whose link broke, is dropped (and no longer sampled) within
///   5 s, and a station notices a dead server as fast. Five silent
///   keep-alive intervals in a row are needed, which a lossy city link does
///   not produce; a transfer in progress keeps the connection busy anyway.
/// - Receive windows (16 MiB per stream, 32 MiB per connection) bound the
///   unread data a peer may buffer here, and so the memory per connection.
/// - The send window (4 MiB) bounds unacknowledged data in flight per
///   connection: enough for about 1.6 Gbit/s at 20 ms RTT (670 Mbit/s at
///   50 ms, 335 Mbit/s at 100 ms), yet small enough that bursts seldom
///   overflow the 4 MiB UDP socket buffers. On loopback, 16 or 32 MiB
///   windows only bought 20 to 40 times more packet loss. On the emulated
///   city WAN (21 stations, 20-50 ms, `.ci/bench/wan.sh`) 8 MiB let 21
///   connections fill the agency link's queue: a 10M-parameter round took
///   19.9 s there against 17.3 s with 4 MiB (bound 13.5 s), and loopback
///   rounds did not slow down.
/// - MTU discovery searches up to [`MAX_MTU_WITH_GSO`]: Ethernet paths settle
///   near 1500 bytes; on loopback, packets of 6500 bytes cut the per-packet
///   cost of a bulk transfer five-fold against the 1200-byte QUIC minimum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportSettings {
    /// Keep-alive interval in milliseconds (0 disables); must be below the idle timeout.
    pub keep_alive_ms: u64,
    /// Idle timeout in milliseconds: a silent peer is dropped after this.
    pub idle_timeout_ms: u64,
    /// How long a handshake may take, in milliseconds.
    pub handshake_timeout_ms: u64,
    /// Per-stream receive window in bytes.
    pub stream_receive_window: u64,
    /// Per-connection receive window in bytes (all streams together).
    pub receive_window: u64,
    /// Per-connection send window in bytes: unacknowledged data buffered for sending.
    pub send_window: u64,
    /// Concurrent bidirectional streams a peer may open.
    pub max_concurrent_bidi_streams: u32,
    /// Concurrent unidirectional streams a peer may open.
    pub max_concurrent_uni_streams: u32,
    /// Initial UDP payload size (at least 1200).
    pub initial_mtu: u16,
    /// Upper bound of MTU discovery (UDP payload bytes, at most 65527, and at
    /// most [`MAX_MTU_WITH_GSO`] with segmentation offload); 0 disables discovery.
    pub mtu_upper_bound: u16,
    /// Largest UDP payload this endpoint accepts (1200 to 65527; at least
    /// `mtu_upper_bound`). quinn sizes each endpoint's receive buffer as this
    /// times 64 (GRO segments) times 32 (datagrams per call): the default
    /// [`MAX_MTU_WITH_GSO`] gives 13 MiB, the protocol's 65527 128 MiB.
    pub max_udp_payload: u16,
    /// Use generic segmentation offload (batching packets per syscall) where available.
    pub segmentation_offload: bool,
    /// Initial RTT estimate in milliseconds, before any sample.
    pub initial_rtt_ms: u64,
    /// UDP socket send and receive buffer size requested from the kernel, in
    /// bytes (0: OS default; the kernel may cap it).
    pub socket_buffer: usize,
    /// The congestion controller. Cubic (the default) is the standard one
    /// and quinn's mature one. On links that lose packets at random (radio
    /// or overloaded city links), loss-based controllers collapse: at 1%
    /// loss and 20-50 ms round trips a 1M-parameter round took 20.6 s with
    /// Cubic and 1.64 s with BBR (`.ci/bench/wan.sh`, BENCHMARKS.md).
    /// quinn calls its BBR experimental; set `congestion = "bbr"` on both
    /// the server and the stations where links are lossy.
    pub congestion: Congestion,
    /// After a suspected MTU black hole (the path MTU fell back to 1200),
    /// wait this long before searching for a larger MTU again, milliseconds.
    pub mtu_black_hole_cooldown_ms: u64,
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings {
            keep_alive_ms: 1_000,
            idle_timeout_ms: 5_000,
            handshake_timeout_ms: 10_000,
            stream_receive_window: 16 * MIB,
            receive_window: 32 * MIB,
            send_window: 4 * MIB,
            max_concurrent_bidi_streams: 32,
            max_concurrent_uni_streams: 32,
            initial_mtu: 1200,
            mtu_upper_bound: MAX_MTU_WITH_GSO,
            max_udp_payload: MAX_MTU_WITH_GSO,
            segmentation_offload: true,
            initial_rtt_ms: 100,
            socket_buffer: 4 * MIB as usize,
            congestion: Congestion::Cubic,
            mtu_black_hole_cooldown_ms: 60_000,
        }
    }
}

impl TransportSettings {
    /// The handshake time limit.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: String| Err(NetError::Settings { field, reason });
        if self.idle_timeout_ms == 0 {
            return bad("idle_timeout_ms", "must be positive".into());
        }
        if self.keep_alive_ms >= self.idle_timeout_ms {
            return bad(
                "keep_alive_ms",
                format!(
                    "{} ms must be below idle_timeout_ms ({} ms) or the connection drops while idle",
                    self.keep_alive_ms, self.idle_timeout_ms
                ),
            );
        }
        if self.handshake_timeout_ms == 0 {
            return bad("handshake_timeout_ms", "must be positive".into());
        }
        const VARINT_MAX: u64 = (1 << 62) - 1;
        for (field, v) in [
            ("stream_receive_window", self.stream_receive_window),
            ("receive_window", self.receive_window),
            ("send_window", self.send_window),
        ] {
            if !(64 * 1024..=VARINT_MAX).contains(&v) {
                return bad(field, format!("{v} bytes is outside 64 KiB ..= 2^62-1"));
            }
        }
        if self.stream_receive_window > self.receive_window {
            return bad(
                "stream_receive_window",
                "must not exceed receive_window".into(),
            );
        }
        if !(1200..=65_527).contains(&self.initial_mtu) {
            return bad(
                "initial_mtu",
                format!("{} is outside 1200..=65527", self.initial_mtu),
            );
        }
        if !(1200..=65_527).contains(&self.max_udp_payload) {
            return bad(
                "max_udp_payload",
                format!("{} is outside 1200..=65527", self.max_udp_payload),
            );
        }
        if self.mtu_upper_bound != 0 && !(self.initial_mtu..=65_527).contains(&self.mtu_upper_bound)
        {
            return bad(
                "mtu_upper_bound",
                format!(
                    "{} is outside initial_mtu ({})..=65527 (0 disables discovery)",
                    self.mtu_upper_bound, self.initial_mtu
                ),
            );
        }
        if self.segmentation_offload
            && (self.mtu_upper_bound > MAX_MTU_WITH_GSO || self.initial_mtu > MAX_MTU_WITH_GSO)
        {
            return bad(
                "mtu_upper_bound",
                format!(
                    "{} exceeds {MAX_MTU_WITH_GSO} with segmentation_offload on: send batches would \
                     pass the 64 KiB kernel limit and be dropped; lower it or turn segmentation_offload off",
                    self.mtu_upper_bound.max(self.initial_mtu)
                ),
            );
        }
        if self.mtu_upper_bound.max(self.initial_mtu) > self.max_udp_payload {
            return bad(
                "max_udp_payload",
                format!(
                    "{} is below initial_mtu / mtu_upper_bound ({}): raise it with them",
                    self.max_udp_payload,
                    self.mtu_upper_bound.max(self.initial_mtu)
                ),
            );
        }
        if self.initial_rtt_ms == 0 {
            return bad("initial_rtt_ms", "must be positive".into());
        }
        Ok(())
    }

    /// The quinn transport configuration.
    pub(crate) fn to_quinn(&self) -> Result<quinn::TransportConfig> {
        self.validate()?;
        let var = |field, v: u64| {
            quinn::VarInt::from_u64(v).map_err(|e| NetError::Settings {
                field,
                reason: e.to_string(),
            })
        };
        let mut t = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(Duration::from_millis(self.idle_timeout_ms))
            .map_err(|e| NetError::Settings {
                field: "idle_timeout_ms",
                reason: e.to_string(),
            })?;
        t.max_idle_timeout(Some(idle));
        t.keep_alive_interval(
            (self.keep_alive_ms > 0).then(|| Duration::from_millis(self.keep_alive_ms)),
        );
        t.stream_receive_window(var("stream_receive_window", self.stream_receive_window)?);
        t.receive_window(var("receive_window", self.receive_window)?);
        t.send_window(self.send_window);
        t.max_concurrent_bidi_streams(self.max_concurrent_bidi_streams.into());
        t.max_concurrent_uni_streams(self.max_concurrent_uni_streams.into());
        t.initial_mtu(self.initial_mtu);
        t.min_mtu(1200);
        if self.mtu_upper_bound == 0 {
            t.mtu_discovery_config(None);
        } else {
            let mut mtu = quinn::MtuDiscoveryConfig::default();
            mtu.upper_bound(self.mtu_upper_bound);
            mtu.black_hole_cooldown(Duration::from_millis(self.mtu_black_hole_cooldown_ms));
            t.mtu_discovery_config(Some(mtu));
        }
        t.enable_segmentation_offload(self.segmentation_offload);
        t.initial_rtt(Duration::from_millis(self.initial_rtt_ms));
        match self.congestion {
            Congestion::Cubic => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
            }
            Congestion::NewReno => t.congestion_controller_factory(Arc::new(
                quinn::congestion::NewRenoConfig::default(),
            )),
            Congestion::Bbr => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
            }
        };
        Ok(t)
    }

    /// The quinn endpoint configuration (largest accepted UDP payload).
    pub(crate) fn endpoint_config(&self) -> Result<quinn::EndpointConfig> {
        self.validate()?;
        let mut e = quinn::EndpointConfig::default();
        e.max_udp_payload_size(self.max_udp_payload)
            .map_err(|err| NetError::Settings {
                field: "max_udp_payload",
                reason: err.to_string(),
            })?;
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_sized_for_large_updates() {
        let s = TransportSettings::default();
        s.validate().unwrap();
        s.to_quinn().unwrap();
        s.endpoint_config().unwrap();
        // A 40 MB update fits the connection windows in few round trips, and
        // the send window covers a 100 Mbit/s station link at 100 ms RTT
        // (1.25 MB) with room to spare, without flooding a shared queue.
        assert!(s.stream_receive_window >= 16 * MIB);
        assert!((2 * MIB..=4 * MIB).contains(&s.send_window));
    }

    #[test]
    fn inconsistent_settings_are_named() {
        type Breaker = fn(&mut TransportSettings);
        let cases: [(&str, Breaker); 8] = [
            ("max_udp_payload", |s| s.max_udp_payload = 1500),
            ("keep_alive_ms", |s| s.keep_alive_ms = s.idle_timeout_ms),
            ("idle_timeout_ms", |s| s.idle_timeout_ms = 0),
            ("stream_receive_window", |s| {
                s.stream_receive_window = s.receive_window + 1
            }),
            ("send_window", |s| s.send_window = 10),
            ("initial_mtu", |s| s.initial_mtu = 1000),
            ("mtu_upper_bound", |s| s.mtu_upper_bound = 1100),
            ("mtu_upper_bound", |s| s.mtu_upper_bound = 9000),
        ];
        for (field, break_it) in cases {
            let mut s = TransportSettings::default();
            break_it(&mut s);
            match s.validate() {
                Err(NetError::Settings { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn large_mtus_need_segmentation_offload_off() {
        let s = TransportSettings {
            mtu_upper_bound: 65_527,
            max_udp_payload: 65_527,
            segmentation_offload: false,
            ..TransportSettings::default()
        };
        s.validate().unwrap();
    }

    #[test]
    fn settings_read_from_toml_with_defaults() {
        let s: TransportSettings =
            toml::from_str("idle_timeout_ms = 60000\nkeep_alive_ms = 10000").unwrap();
        assert_eq!(s.idle_timeout_ms, 60_000);
        assert_eq!(s.send_window, TransportSettings::default().send_window);
        assert!(toml::from_str::<TransportSettings>("idle_timeout = 1").is_err());
    }
}
