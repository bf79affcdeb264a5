//! The fedcrime wire protocol: frames, messages and tensors.
//!
//! Layers, bottom up:
//! - [`frame`]: length-prefixed frames (magic, version, kind, flags, length),
//!   the size checked against [`WireConfig::max_frame_bytes`] before anything
//!   is allocated;
//! - [`codec`]: the one module that touches bincode (control payloads);
//! - [`message`]: protocol version 1 ([`ALPN`] `fedcrime/1`): Hello, Welcome,
//!   Reject, RoundStart, Update, EvaluateRequest/Result, Heartbeat, Error, Bye;
//! - [`tensor`]: models as a stream of tensor frames (header, then raw
//!   little-endian f32, f16 or int8 bytes), written and read in place;
//! - [`stream`]: a message plus its model over byte slices and tokio
//!   `AsyncRead`/`AsyncWrite` (quinn's streams implement both).
//!
//! Every decoder takes untrusted bytes: malformed input of any kind is a
//! [`WireError`] naming what and where, never a panic and never an allocation
//! larger than the configured limits. The fuzz target in `common/fuzz` and a
//! property test feed arbitrary bytes to [`decode_all`].

pub mod bench;
pub mod codec;
mod error;
pub mod frame;
pub mod message;
pub mod stream;
pub mod tensor;

pub use error::{Result, WireError};
pub use frame::{FrameHeader, FrameKind};
pub use message::{
    negotiate_version, Bye, ByeReason, Capabilities, ErrorCode, ErrorMsg, EvalModel,
    EvaluateRequest, EvaluateResult, Extensions, Heartbeat, Hello, Message, Metrics, Reject,
    RejectCode, RoundStart, Scalar, ServerLimits, TrainConfig, Update, UpdateKind, Welcome, ALPN,
    PROTOCOL_VERSION, SUPPORTED_VERSIONS,
};
pub use stream::{decode_all, decode_message, encode_message, Received, WireReader, WireWriter};
pub use tensor::{Encoding, ModelHeader};

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

    use std::collections::BTreeMap;
    use std::sync::Arc;

    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, Normal};

    use super::*;
    use crate::params::{ParamSpec, Params};

    /// A small model with a matrix, a vector, a scalar and an empty tensor,
    /// filled with N(0, std) values.
    pub fn small_model(seed: u64, std: f32) -> Params {
        let spec = Arc::new(
            ParamSpec::new([
                ("lstm.weight_ih_l0", vec![8, 5]),
                ("lstm.bias", vec![8]),
                ("head.scale", vec![]),
                ("gat.empty", vec![0, 3]),
                ("head.weight", vec![3, 7]),
            ])
            .unwrap(),
        );
        normal_params(spec, seed, std)
    }

    /// Params of `spec` filled with N(0, std) values.
    pub fn normal_params(spec: Arc<ParamSpec>, seed: u64, std: f32) -> Params {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, std).unwrap();
        let data = (0..spec.total()).map(|_| normal.sample(&mut rng)).collect();
        Params::new(spec, data).unwrap()
    }

    fn metrics() -> Metrics {
        BTreeMap::from([("loss".to_string(), 0.42), ("mae".to_string(), 1.5)])
    }

    /// One message of every kind; those announcing a model come with it.
    pub fn every_message(model: &Params, encoding: Encoding) -> Vec<(Message, Option<Params>)> {
        let header = ModelHeader::describe(model, encoding).unwrap();
        let ext = Extensions::from([
            ("secagg".to_string(), Scalar::Bool(false)),
            ("threads".to_string(), Scalar::Int(4)),
            ("clip".to_string(), Scalar::Float(1.5)),
            ("note".to_string(), Scalar::Str("hi".into())),
            ("key".to_string(), Scalar::Bytes(vec![1, 2, 3])),
        ]);
        let m = Some(model.clone());
        vec![
            (
                Hello::new(
                    "fedcrime-client 0.1.0",
                    Capabilities {
                        encodings: Encoding::ALL.to_vec(),
                        device: "cuda:0".into(),
                        extensions: ext.clone(),
                    },
                )
                .into(),
                None,
            ),
            (
                Welcome {
                    protocol_version: PROTOCOL_VERSION,
                    session_id: 0xdead_beef,
                    run_id: "run-2024-02".into(),
                    station: "station-07".into(),
                    encoding,
                    limits: ServerLimits {
                        max_frame_bytes: 1 << 20,
                        max_model_params: 1 << 24,
                        heartbeat_interval_ms: 5_000,
                        idle_timeout_ms: 30_000,
                    },
                    extensions: ext.clone(),
                }
                .into(),
                None,
            ),
            (
                Reject {
                    code: RejectCode::NotAuthorized,
                    text: "certificate revoked".into(),
                }
                .into(),
                None,
            ),
            (
                RoundStart {
                    round: 3,
                    config: TrainConfig {
                        epochs: 2,
                        lr: 1e-3,
                        batch_size: 64,
                        mu: 0.01,
                        deadline_ms: 60_000,
                        update_encoding: Encoding::Int8,
                        send_delta: true,
                        seed: 42,
                        extensions: ext.clone(),
                    },
                    model: header,
                }
                .into(),
                m.clone(),
            ),
            (
                Update {
                    round: 3,
                    kind: UpdateKind::Delta,
                    num_examples: 1234,
                    metrics: metrics(),
                    train_seconds: 12.5,
                    model: header,
                }
                .into(),
                m.clone(),
            ),
            (
                EvaluateRequest {
                    round: 3,
                    model: EvalModel::LastGlobal,
                    config: ext.clone(),
                }
                .into(),
                None,
            ),
            (
                EvaluateRequest {
                    round: 4,
                    model: EvalModel::Attached(header),
                    config: Extensions::new(),
                }
                .into(),
                m,
            ),
            (
                EvaluateResult {
                    round: 3,
                    num_examples: 99,
                    loss: 0.37,
                    metrics: metrics(),
                }
                .into(),
                None,
            ),
            (Heartbeat { seq: 17 }.into(), None),
            (
                ErrorMsg {
                    code: ErrorCode::InvalidUpdate,
                    text: "tensor head.weight has a NaN".into(),
                }
                .into(),
                None,
            ),
            (
                Bye {
                    reason: ByeReason::Done,
                    text: "run complete".into(),
                }
                .into(),
                None,
            ),
        ]
    }
}
