//! The fedcrime protocol, version 1: its messages and their frame kinds.
//!
//! A station opens a QUIC connection with ALPN [`ALPN`] and sends [`Hello`]
//! (the protocol versions it speaks and its capabilities; never its
//! identity, which the server takes from the client certificate). The server
//! answers [`Welcome`] (the chosen version, session, encoding and limits) or
//! [`Reject`]. Then, per round, [`RoundStart`] (followed by the global model as
//! tensor frames) and [`Update`] (followed by the trained parameters or their
//! delta), optionally [`EvaluateRequest`] / [`EvaluateResult`], with
//! [`Heartbeat`]s in between and [`Bye`] at the end. [`ErrorMsg`] reports a
//! problem without closing. When the server's Welcome announces secure
//! aggregation (extension `fedcrime.secure_aggregation`), each round's
//! protocol messages travel as [`Message::SecAggDown`] and
//! [`Message::SecAggUp`] ([`SecAgg`]), and the station's update is a masked
//! [`Message::SecAggUp`] instead of an [`Update`].
//!
//! Each message is one control frame whose kind byte is the message type
//! ([`FrameKind`]) and whose payload is the message struct encoded by
//! [`super::codec`]. Models never go through that codec: messages that carry
//! one hold a small [`ModelHeader`] and the tensors follow as their own frames
//! (see [`super::tensor`]).
//!
//! ## Evolution
//! The payload format is not self-describing, so the struct layouts below are
//! fixed for protocol version 1. Additive changes go in the extension maps
//! ([`Capabilities::extensions`], [`Welcome::extensions`],
//! [`RoundSettings::extensions`], [`EvaluateRequest::config`]) without a version
//! bump; anything else is a new [`PROTOCOL_VERSION`], negotiated by
//! [`negotiate_version`]. Codes (reject, error, bye) decode even when unknown
//! (as `Other(n)`) so a newer peer's reasons still reach the log. The secure
//! aggregation kinds are sent only after the Welcome announced them, and so is
//! [`UpdateSignature`] (after [`SIGNED_UPDATES_EXTENSION`]); further kinds
//! for secure aggregation, differential privacy and update signatures are
//! reserved ([`super::frame::reserved`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::codec;
use super::error::{Result, WireError};
use super::frame::FrameKind;
use super::settings::RoundSettings;
use super::tensor::{Encoding, ModelHeader};

/// The ALPN protocol identifier of QUIC connections.
pub const ALPN: &[u8] = b"fedcrime/1";
/// The protocol version this build prefers.
pub const PROTOCOL_VERSION: u16 = 1;
/// Every protocol version this build speaks.
pub const SUPPORTED_VERSIONS: &[u16] = &[PROTOCOL_VERSION];

/// The highest version both sides speak, or an error listing both sides' versions.
pub fn negotiate_version(offered: &[u16], supported: &[u16]) -> Result<u16> {
    offered
        .iter()
        .copied()
        .filter(|v| supported.contains(v))
        .max()
        .ok_or_else(|| WireError::NoCommonVersion {
            offered: offered.to_vec(),
            supported: supported.to_vec(),
        })
}

/// A loosely typed value for configuration and extension maps (as in Flower's
/// `Scalar`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Scalar {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
}

/// A string-keyed map of [`Scalar`]s.
pub type Extensions = BTreeMap<String, Scalar>;
/// Named metrics (loss, accuracy, MAE ...).
pub type Metrics = BTreeMap<String, f64>;

/// Defines a `u16` code enum that decodes unknown values as `Other(n)`.
macro_rules! code_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $n:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "u16", into = "u16")]
        pub enum $name {
            $($(#[$vm])* $variant,)+
            /// A code this build does not know (from a newer peer).
            Other(u16),
        }

        impl From<u16> for $name {
            fn from(n: u16) -> Self {
                match n {
                    $($n => $name::$variant,)+
                    other => $name::Other(other),
                }
            }
        }

        impl From<$name> for u16 {
            fn from(c: $name) -> u16 {
                match c {
                    $($name::$variant => $n,)+
                    $name::Other(n) => n,
                }
            }
        }
    };
}

code_enum! {
    /// Why the server refused a station.
    RejectCode {
        /// No protocol version in common.
        UnsupportedVersion = 1,
        /// The certificate's station is not allowed in this run (unknown or revoked).
        NotAuthorized = 2,
        /// The same station is already connected.
        AlreadyConnected = 3,
        /// The server accepts no more stations.
        ServerFull = 4,
        /// The run is over.
        RunFinished = 5,
        /// The Hello was malformed or its capabilities insufficient (e.g. no common encoding).
        BadHello = 6,
        /// The server is shutting down.
        ShuttingDown = 7,
        /// The run was given up (too few stations or updates); it will not go on.
        RunAborted = 8,
    }
}

code_enum! {
    /// What an [`ErrorMsg`] reports.
    ErrorCode {
        /// A malformed frame or message.
        Protocol = 1,
        /// A message that makes no sense at this point (e.g. an update for another round).
        UnexpectedMessage = 2,
        /// An update or model refused by validation (shapes, non-finite values, norm ...).
        InvalidUpdate = 3,
        /// Local training or evaluation failed.
        TrainingFailed = 4,
        /// The round deadline passed before the message arrived.
        DeadlineMissed = 5,
        /// Something went wrong on the sender's side.
        Internal = 6,
    }
}

code_enum! {
    /// Why a side says goodbye.
    ByeReason {
        /// The run completed.
        Done = 1,
        /// The side is shutting down.
        Shutdown = 2,
        /// The side restarts and will reconnect.
        Restart = 3,
        /// The other side was idle for too long.
        IdleTimeout = 4,
        /// The server gave the run up (too few stations or updates); its
        /// completed rounds are kept. Stations stop: the run will not go on.
        Aborted = 5,
    }
}

/// What a station can do.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Tensor encodings it can read and write (codes this build does not know
    /// are dropped when decoding).
    #[serde(deserialize_with = "known_encodings")]
    pub encodings: Vec<Encoding>,
    /// Where it trains, e.g. `cpu` or `cuda:0`.
    pub device: String,
    /// Anything else (room for secure aggregation, DP, signatures ...).
    pub extensions: Extensions,
}

/// The [`Capabilities::extensions`] key of a station process's instance number.
pub const INSTANCE_EXTENSION: &str = "instance";

impl Capabilities {
    /// The number the station process drew at start ([`INSTANCE_EXTENSION`]):
    /// two connections with the same number come from the same process.
    pub fn instance(&self) -> Option<u64> {
        match self.extensions.get(INSTANCE_EXTENSION) {
            Some(Scalar::Int(n)) => Some(*n as u64),
            _ => None,
        }
    }

    /// Sets the process's instance number.
    pub fn set_instance(&mut self, instance: u64) {
        self.extensions
            .insert(INSTANCE_EXTENSION.to_owned(), Scalar::Int(instance as i64));
    }
}

fn known_encodings<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<Encoding>, D::Error> {
    let codes = Vec::<u8>::deserialize(d)?;
    Ok(codes.into_iter().filter_map(Encoding::from_code).collect())
}

/// Station → server: the opening message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol versions the station speaks.
    pub protocol_versions: Vec<u16>,
    /// The station software's version (e.g. `fedcrime-client 0.1.0`).
    pub software_version: String,
    /// What it can do.
    pub capabilities: Capabilities,
}

impl Hello {
    /// A Hello offering this build's protocol versions.
    pub fn new(software_version: impl Into<String>, capabilities: Capabilities) -> Self {
        Self {
            protocol_versions: SUPPORTED_VERSIONS.to_vec(),
            software_version: software_version.into(),
            capabilities,
        }
    }
}

/// Limits the server applies to this session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerLimits {
    /// Largest frame payload it accepts.
    pub max_frame_bytes: u32,
    /// Largest model (values) it accepts.
    pub max_model_params: u64,
    /// How often the station should send a heartbeat when idle.
    pub heartbeat_interval_ms: u64,
    /// After how long without traffic the server drops the station.
    pub idle_timeout_ms: u64,
}

/// Server → station: accepted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version chosen for this session.
    pub protocol_version: u16,
    /// This connection's session id (in logs on both sides).
    pub session_id: u64,
    /// The federated run the station joins.
    pub run_id: String,
    /// The station identity the server read from its certificate.
    pub station: String,
    /// The encoding the server sends models in and expects updates in
    /// (unless a round's [`RoundStart::update_encoding`] says otherwise).
    pub encoding: Encoding,
    /// The server's limits.
    pub limits: ServerLimits,
    /// Anything else.
    pub extensions: Extensions,
}

/// Server → station: refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    /// Why, for programs.
    pub code: RejectCode,
    /// Why, for people.
    pub text: String,
}

/// Server → station: a round begins; the global model follows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundStart {
    /// The round number (from 1).
    pub round: u64,
    /// How to train.
    pub settings: RoundSettings,
    /// Encoding of the update's tensors.
    pub update_encoding: Encoding,
    /// Send `trained - global` instead of the trained parameters.
    pub send_delta: bool,
    /// The global model that follows.
    pub model: ModelHeader,
}

/// What an update's tensors hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateKind {
    /// The trained parameters.
    Full,
    /// Trained parameters minus the round's global model.
    Delta,
}

/// Station → server: the result of local training; the tensors follow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// The round it answers.
    pub round: u64,
    /// Parameters or delta.
    pub kind: UpdateKind,
    /// Training examples seen (the FedAvg weight).
    pub num_examples: u64,
    /// Local metrics (train loss ...).
    pub metrics: Metrics,
    /// Wall-clock seconds spent training.
    pub train_seconds: f64,
    /// The tensors that follow.
    pub model: ModelHeader,
}

/// Which model an evaluation uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvalModel {
    /// The last global model the station received.
    LastGlobal,
    /// The model whose tensors follow.
    Attached(ModelHeader),
}

/// Server → station: evaluate a model on local validation data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvaluateRequest {
    /// The round it belongs to.
    pub round: u64,
    /// Which model.
    pub model: EvalModel,
    /// Evaluation settings (batch size ...).
    pub config: Extensions,
}

/// Station → server: an evaluation's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvaluateResult {
    /// The round it answers.
    pub round: u64,
    /// Examples evaluated.
    pub num_examples: u64,
    /// Mean loss.
    pub loss: f64,
    /// Other metrics.
    pub metrics: Metrics,
}

/// Either way: liveness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Sequence number, increasing per sender.
    pub seq: u64,
}

/// Either way: a problem, reported without closing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// What kind of problem.
    pub code: ErrorCode,
    /// Details for people.
    pub text: String,
}

impl ErrorMsg {
    /// The message to send a peer whose traffic failed to decode (code
    /// [`ErrorCode::Protocol`]) or when the local side failed ([`ErrorCode::Internal`]).
    pub fn from_wire(e: &WireError) -> Self {
        Self {
            code: if e.is_protocol_violation() {
                ErrorCode::Protocol
            } else {
                ErrorCode::Internal
            },
            text: e.to_string(),
        }
    }
}

/// Either way: orderly goodbye.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bye {
    /// Why.
    pub reason: ByeReason,
    /// Details for people.
    pub text: String,
}

/// Any protocol message.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`Reject`].
    Reject(Reject),
    /// See [`RoundStart`].
    RoundStart(RoundStart),
    /// See [`Update`].
    Update(Update),
    /// See [`EvaluateRequest`].
    EvaluateRequest(EvaluateRequest),
    /// See [`EvaluateResult`].
    EvaluateResult(EvaluateResult),
    /// See [`Heartbeat`].
    Heartbeat(Heartbeat),
    /// See [`ErrorMsg`].
    Error(ErrorMsg),
    /// See [`Bye`].
    Bye(Bye),
    /// A secure-aggregation message from the server ([`SecAgg`]).
    SecAggDown(SecAgg),
    /// A secure-aggregation message from a station ([`SecAgg`]).
    SecAggUp(SecAgg),
    /// See [`UpdateSignature`].
    UpdateSignature(UpdateSignature),
}

/// Station → server, right before an [`Update`] of the same round: the
/// station's Ed25519 signature over that update, made with the key its
/// certificate binds (`fedcrime_audit::SignedUpdate` defines the signed
/// bytes: run, station, round, example count, delta or not, and the SHA-256
/// of the values as the server decodes them). Under secure aggregation it
/// comes right before the masked input ([`Message::SecAggUp`]) instead and
/// signs that message's bytes (`fedcrime_audit::SignedMaskedUpdate`). Sent
/// when the station holds a signing key; the server then verifies the next
/// update with it (and, when its Welcome announced
/// [`SIGNED_UPDATES_EXTENSION`], refuses updates that come without one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateSignature {
    /// The round of the update it signs.
    pub round: u64,
    /// The 64-byte Ed25519 signature.
    pub signature: Vec<u8>,
}

/// The [`Welcome::extensions`] key by which the server announces that every
/// update must be followed by its [`UpdateSignature`] (`Scalar::Bool(true)`).
pub const SIGNED_UPDATES_EXTENSION: &str = "fedcrime.signed_updates";

/// A secure-aggregation protocol message of one round, either way. The
/// protocol's own types (`fedcrime_fl::secure`) travel encoded in `body`:
/// this layer only frames them and bounds their size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecAgg {
    /// The round.
    pub round: u64,
    /// The encoded protocol message. Encoded as one byte string: in bincode
    /// that is the same bytes as a sequence of `u8`, but written and read
    /// in one copy instead of one call per byte (a masked update at 1M
    /// parameters is a 4 MB body).
    #[serde(with = "byte_string")]
    pub body: Vec<u8>,
}

/// A `Vec<u8>` field as a serde byte string (`serialize_bytes`), which
/// serde's own `Vec<u8>` impl does not use. Accepts a sequence of bytes too.
mod byte_string {
    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }

            fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<Vec<u8>, E> {
                Ok(b.to_vec())
            }

            fn visit_byte_buf<E: serde::de::Error>(self, b: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(b)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}

impl Message {
    /// The frame kind that carries this message.
    pub fn kind(&self) -> FrameKind {
        match self {
            Message::Hello(_) => FrameKind::Hello,
            Message::Welcome(_) => FrameKind::Welcome,
            Message::Reject(_) => FrameKind::Reject,
            Message::RoundStart(_) => FrameKind::RoundStart,
            Message::Update(_) => FrameKind::Update,
            Message::EvaluateRequest(_) => FrameKind::EvaluateRequest,
            Message::EvaluateResult(_) => FrameKind::EvaluateResult,
            Message::Heartbeat(_) => FrameKind::Heartbeat,
            Message::Error(_) => FrameKind::Error,
            Message::Bye(_) => FrameKind::Bye,
            Message::SecAggDown(_) => FrameKind::SecAggDown,
            Message::SecAggUp(_) => FrameKind::SecAggUp,
            Message::UpdateSignature(_) => FrameKind::UpdateSignature,
        }
    }

    /// The message type's name.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The model whose tensor frames follow this message, if any.
    pub fn model(&self) -> Option<&ModelHeader> {
        match self {
            Message::RoundStart(m) => Some(&m.model),
            Message::Update(m) => Some(&m.model),
            Message::EvaluateRequest(EvaluateRequest {
                model: EvalModel::Attached(h),
                ..
            }) => Some(h),
            _ => None,
        }
    }

    /// Appends the message's payload (not its frame header) to `out`.
    pub fn encode_payload(&self, out: &mut Vec<u8>) -> Result<usize> {
        match self {
            Message::Hello(m) => codec::encode_control_into(m, out),
            Message::Welcome(m) => codec::encode_control_into(m, out),
            Message::Reject(m) => codec::encode_control_into(m, out),
            Message::RoundStart(m) => codec::encode_control_into(m, out),
            Message::Update(m) => codec::encode_control_into(m, out),
            Message::EvaluateRequest(m) => codec::encode_control_into(m, out),
            Message::EvaluateResult(m) => codec::encode_control_into(m, out),
            Message::Heartbeat(m) => codec::encode_control_into(m, out),
            Message::Error(m) => codec::encode_control_into(m, out),
            Message::Bye(m) => codec::encode_control_into(m, out),
            Message::SecAggDown(m) | Message::SecAggUp(m) => codec::encode_control_into(m, out),
            Message::UpdateSignature(m) => codec::encode_control_into(m, out),
        }
    }

    /// Decodes the payload of a control frame of `kind` (at most `limit` bytes).
    pub fn decode_payload(kind: FrameKind, payload: &[u8], limit: usize) -> Result<Self> {
        Ok(match kind {
            FrameKind::Hello => Message::Hello(codec::decode_control(payload, limit)?),
            FrameKind::Welcome => Message::Welcome(codec::decode_control(payload, limit)?),
            FrameKind::Reject => Message::Reject(codec::decode_control(payload, limit)?),
            FrameKind::RoundStart => Message::RoundStart(codec::decode_control(payload, limit)?),
            FrameKind::Update => Message::Update(codec::decode_control(payload, limit)?),
            FrameKind::EvaluateRequest => {
                Message::EvaluateRequest(codec::decode_control(payload, limit)?)
            }
            FrameKind::EvaluateResult => {
                Message::EvaluateResult(codec::decode_control(payload, limit)?)
            }
            FrameKind::Heartbeat => Message::Heartbeat(codec::decode_control(payload, limit)?),
            FrameKind::Error => Message::Error(codec::decode_control(payload, limit)?),
            FrameKind::Bye => Message::Bye(codec::decode_control(payload, limit)?),
            FrameKind::SecAggDown => Message::SecAggDown(codec::decode_control(payload, limit)?),
            FrameKind::SecAggUp => Message::SecAggUp(codec::decode_control(payload, limit)?),
            FrameKind::UpdateSignature => {
                Message::UpdateSignature(codec::decode_control(payload, limit)?)
            }
            FrameKind::TensorHeader | FrameKind::TensorData => {
                return Err(WireError::UnexpectedFrame {
                    expected: "a control message",
                    got: kind.name(),
                })
            }
        })
    }
}

macro_rules! from_variant {
    ($($t:ident => $v:ident),+ $(,)?) => {
        $(impl From<$t> for Message {
            fn from(m: $t) -> Self {
                Message::$v(m)
            }
        })+
    };
}

from_variant! {
    Hello => Hello,
    Welcome => Welcome,
    Reject => Reject,
    RoundStart => RoundStart,
    Update => Update,
    EvaluateRequest => EvaluateRequest,
    EvaluateResult => EvaluateResult,
    Heartbeat => Heartbeat,
    ErrorMsg => Error,
    Bye => Bye,
    UpdateSignature => UpdateSignature,
}
