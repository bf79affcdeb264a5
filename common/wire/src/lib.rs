//! # fedcrime-wire
//!
//! The fedcrime wire protocol: frames, messages and tensors. It links no
//! libtorch and, without its `tokio` feature, no async runtime: the fuzz
//! target in `fuzz/` builds against this crate (and `fedcrime-params`) alone.
//!
//! Layers, bottom up:
//! - [`frame`]: length-prefixed frames (magic, version, kind, flags, length),
//!   the size checked against [`WireConfig::max_frame_bytes`] before anything
//!   is allocated;
//! - [`codec`]: the one module that touches bincode (control payloads);
//! - [`settings`]: [`RoundSettings`], how stations train in a round, the
//!   one typed form from the server's config to the station's trainer;
//! - [`message`]: protocol version 1 ([`ALPN`] `fedcrime/1`): Hello, Welcome,
//!   Reject, RoundStart, Update, EvaluateRequest/Result, Heartbeat, Error, Bye;
//! - [`tensor`]: models as a stream of tensor frames (header, then raw
//!   little-endian f32, f16 or int8 bytes), written and read in place;
//! - [`stream`]: a message plus its model over byte slices and, with the
//!   `tokio` feature, tokio `AsyncRead`/`AsyncWrite` (quinn's streams
//!   implement both).
//!
//! ## Use
//! ```ignore
//! // Server, on a QUIC stream pair after the handshake:
//! let mut tx = WireWriter::new(send_stream, WireConfig::default());
//! let mut rx = WireReader::new(recv_stream, WireConfig::default());
//! let header = ModelHeader::describe(&global, Encoding::F32)?;
//! tx.send(&RoundStart { round, config, model: header }.into(), Some(&global)).await?;
//! // The update is decoded against the global layout and shares its Arc<ParamSpec>.
//! match rx.recv(Some(global.spec())).await? {
//!     Some(Received { message: Message::Update(u), params: Some(p) }) => { /* validate, aggregate */ }
//!     Some(other) => { /* heartbeat, error, bye ... */ }
//!     None => { /* the station closed its stream */ }
//! }
//! ```
//! A station's first `recv(None)` learns the layout from the stream; later
//! rounds can fill the same buffer in place with
//! [`WireReader::recv_message`] + [`WireReader::recv_params_into`].
//!
//! Every decoder takes untrusted bytes: malformed input of any kind is a
//! [`WireError`] naming what and where, never a panic and never an allocation
//! larger than the configured limits. The fuzz target in `common/wire/fuzz` and a
//! property test feed arbitrary bytes to [`decode_all`].

#[cfg(feature = "bench")]
pub mod bench;
pub mod codec;
mod error;
pub mod frame;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod message;
pub mod settings;
pub mod stream;
pub mod tensor;

pub use error::{Result, WireError};
pub use frame::{FrameHeader, FrameKind};
pub use message::{
    negotiate_version, Bye, ByeReason, Capabilities, ErrorCode, ErrorMsg, EvalModel,
    EvaluateRequest, EvaluateResult, Extensions, Heartbeat, Hello, Message, Metrics, Reject,
    RejectCode, RoundStart, Scalar, SecAgg, ServerLimits, Update, UpdateKind, UpdateSignature,
    Welcome, ALPN, INSTANCE_EXTENSION, PROTOCOL_VERSION, SIGNED_UPDATES_EXTENSION,
    SUPPORTED_VERSIONS,
};
pub use settings::{
    local_work, round_seed, RoundSettings, SettingsError, DEFAULT_MIN_LOCAL_STEPS,
    MIN_LOCAL_STEPS_EXTENSION,
};
pub use stream::{decode_all, decode_message, encode_message, Received};
#[cfg(feature = "tokio")]
pub use stream::{WireReader, WireWriter};
pub use tensor::{as_received, Encoding, ModelHeader};

/// Limits and sizes of the wire layer. Both sides should agree (the server
/// announces its own in [`ServerLimits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WireConfig {
    /// Largest frame payload accepted (and written), in bytes. Default 16 MiB.
    pub max_frame_bytes: u32,
    /// Tensor data is sent in frames of at most this many bytes (capped at
    /// `max_frame_bytes`). Default 1 MiB.
    pub chunk_bytes: u32,
    /// Largest model, in scalar values, a decoder without an expected layout
    /// allocates for. Default 2^28 (1 GiB of f32).
    pub max_model_params: u64,
    /// Most tensors in a model. Default 65,536.
    pub max_tensors: u32,
}

impl Default for WireConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 16 << 20,
            chunk_bytes: 1 << 20,
            max_model_params: 1 << 28,
            max_tensors: 1 << 16,
        }
    }
}

impl WireConfig {
    /// The data chunk size actually used: `chunk_bytes` capped at the frame maximum.
    pub fn chunk_bytes(&self) -> u32 {
        self.chunk_bytes.min(self.max_frame_bytes).max(4)
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Fixtures shared by the wire tests.

    use std::sync::Arc;

    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, Normal};

    use super::*;
    use fedcrime_params::{ParamSpec, Params};

    pub use super::fuzzing::sample_model as small_model;

    /// Params of `spec` filled with N(0, std) values.
    pub(crate) fn normal_params(spec: Arc<ParamSpec>, seed: u64, std: f32) -> Params {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, std).unwrap();
        let data = (0..spec.total()).map(|_| normal.sample(&mut rng)).collect();
        Params::new(spec, data).unwrap()
    }

    /// One message of every kind; those announcing a model come with it.
    pub(crate) fn every_message(
        model: &Params,
        encoding: Encoding,
    ) -> Vec<(Message, Option<Params>)> {
        fuzzing::sample_messages(model, encoding).unwrap()
    }
}
