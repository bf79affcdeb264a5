//! The station session protocol, without I/O: what each side of one
//! station's connection may say when, in the shape of the round
//! [`Engine`](crate::Engine) (messages in, decisions out, no sockets, no
//! clock).
//!
//! - [`ServerSession`]: the server's side. The first message must be a Hello
//!   the run can serve (a protocol version both speak, the run's tensor
//!   encodings); the driver then admits the station (or refuses it) and the
//!   session writes the [`Welcome`]. After that every message is classified
//!   into what it means for the engine ([`FromStation`]); one a station must
//!   not send is a [`SessionError`].
//! - [`ClientSession`]: the station's side, its Hello and the checks on the
//!   server's answer (a version it offered, an encoding it reads), then the
//!   server's messages as [`FromServer`].
//! - [`encode_update`] / [`decode_update`]: the one place where an update
//!   becomes `trained - global` on the station and is added back on the
//!   server.
//!
//! The QUIC server and client drive these over streams; the in-memory
//! simulator drives the same machines by passing the messages by value.

use std::sync::Arc;
use std::time::Duration;

use fedcrime_params::Params;
use fedcrime_wire::{
    negotiate_version, Bye, Capabilities, Encoding, ErrorCode, ErrorMsg, EvaluateRequest,
    EvaluateResult, Extensions, Heartbeat, Hello, Message, Reject, RejectCode, RoundStart, SecAgg,
    ServerLimits, Update, UpdateKind, UpdateSignature, Welcome, WireConfig, SUPPORTED_VERSIONS,
};

use crate::StationId;

/// A message one side must not send at this point, or cannot be served:
/// the session ends with it. Carries the round when the message had one.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}{text}", round.map(|r| format!("round {r}: ")).unwrap_or_default())]
pub struct SessionError {
    /// The error code to send to the peer.
    pub code: ErrorCode,
    /// The round the offending message belonged to.
    pub round: Option<u64>,
    /// What is wrong.
    pub text: String,
}

impl SessionError {
    fn unexpected(msg: &Message, from: &str) -> Self {
        SessionError {
            code: ErrorCode::UnexpectedMessage,
            round: round_of(msg),
            text: format!("unexpected {} from {from}", msg.name()),
        }
    }
}

/// The round a message belongs to, when it has one.
pub(crate) fn round_of(msg: &Message) -> Option<u64> {
    match msg {
        Message::RoundStart(m) => Some(m.round),
        Message::Update(m) => Some(m.round),
        Message::EvaluateRequest(m) => Some(m.round),
        Message::EvaluateResult(m) => Some(m.round),
        Message::SecAggDown(m) | Message::SecAggUp(m) => Some(m.round),
        Message::UpdateSignature(m) => Some(m.round),
        Message::Hello(_)
        | Message::Welcome(_)
        | Message::Reject(_)
        | Message::Heartbeat(_)
        | Message::Error(_)
        | Message::Bye(_) => None,
    }
}

/// What the server tells every station it admits to the run.
#[derive(Clone, Debug, PartialEq)]
pub struct Admission {
    /// The run's name.
    pub run_id: String,
    /// Encoding of the models the server sends.
    pub model_encoding: Encoding,
    /// Encoding of the updates it asks for.
    pub update_encoding: Encoding,
    /// The limits it applies.
    pub limits: ServerLimits,
    /// The run's description (model, task, featurizer), opaque here.
    pub extensions: Extensions,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerState {
    AwaitingHello,
    Admitting { version: u16 },
    Active,
    Closed,
}

/// The server's side of one station's session (see the module docs).
#[derive(Debug)]
pub struct ServerSession {
    station: StationId,
    id: u64,
    state: ServerState,
}

/// A message from an admitted station, as the server acts on it.
#[derive(Clone, Debug, PartialEq)]
pub enum FromStation {
    /// An update; its model follows on the stream ([`decode_update`] it).
    Update(Update),
    /// An evaluation result.
    Evaluation(EvaluateResult),
    /// The station reports a problem (e.g. its training failed).
    Report(ErrorMsg),
    /// The station is alive.
    Heartbeat(Heartbeat),
    /// The station leaves.
    Bye(Bye),
    /// A secure-aggregation message ([`crate::secure::SecAggUp::from_wire`]).
    SecAgg(SecAgg),
    /// The signature of the update that follows.
    Signature(UpdateSignature),
}

impl ServerSession {
    /// A new session of `station` (the identity its certificate proved),
    /// numbered `id`.
    pub fn new(station: StationId, id: u64) -> Self {
        ServerSession {
            station,
            id,
            state: ServerState::AwaitingHello,
        }
    }

    /// The station.
    pub fn station(&self) -> &StationId {
        &self.station
    }

    /// The session's number.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the station was welcomed and the session is still open.
    pub fn is_active(&self) -> bool {
        self.state == ServerState::Active
    }

    /// The station's first message. A Hello the run can serve is returned
    /// for the driver to admit; anything else is the Reject to send before
    /// closing.
    pub fn on_first_message(&mut self, msg: Message, run: &Admission) -> Result<Hello, Reject> {
        if self.state != ServerState::AwaitingHello {
            return Err(self.refuse(RejectCode::BadHello, "a second Hello in one session".into()));
        }
        let hello = match msg {
            Message::Hello(h) => h,
            other @ (Message::Welcome(_)
            | Message::Reject(_)
            | Message::RoundStart(_)
            | Message::Update(_)
            | Message::EvaluateRequest(_)
            | Message::EvaluateResult(_)
            | Message::Heartbeat(_)
            | Message::Error(_)
            | Message::Bye(_)
            | Message::SecAggDown(_)
            | Message::SecAggUp(_)
            | Message::UpdateSignature(_)) => {
                return Err(self.refuse(
                    RejectCode::BadHello,
                    format!("expected Hello, got {}", other.name()),
                ))
            }
        };
        let version = match negotiate_version(&hello.protocol_versions, SUPPORTED_VERSIONS) {
            Ok(v) => v,
            Err(e) => return Err(self.refuse(RejectCode::UnsupportedVersion, e.to_string())),
        };
        for enc in [run.model_encoding, run.update_encoding] {
            if !hello.capabilities.encodings.contains(&enc) {
                return Err(self.refuse(
                    RejectCode::BadHello,
                    format!("the run uses {enc} tensors, which the station does not support"),
                ));
            }
        }
        self.state = ServerState::Admitting { version };
        Ok(hello)
    }

    /// No usable Hello arrived (`why`: undecodable, too late, ...): the
    /// Reject to send before closing.
    pub fn hello_failed(&mut self, why: String) -> Reject {
        self.refuse(RejectCode::BadHello, why)
    }

    /// The run refuses the station (`reject`, e.g. the run is over): passed
    /// through; the session closes.
    pub fn refuse_admission(&mut self, reject: Reject) -> Reject {
        self.state = ServerState::Closed;
        reject
    }

    /// The run admits the station: the Welcome to send. `None` unless a
    /// Hello was accepted and not yet answered.
    pub fn welcome(&mut self, run: &Admission) -> Option<Welcome> {
        let ServerState::Admitting { version } = self.state else {
            return None;
        };
        self.state = ServerState::Active;
        Some(Welcome {
            protocol_version: version,
            session_id: self.id,
            run_id: run.run_id.clone(),
            station: self.station.to_string(),
            encoding: run.model_encoding,
            limits: run.limits,
            extensions: run.extensions.clone(),
        })
    }

    /// A message from the admitted station.
    pub fn on_message(&mut self, msg: Message) -> Result<FromStation, SessionError> {
        if self.state != ServerState::Active {
            self.state = ServerState::Closed;
            return Err(SessionError {
                code: ErrorCode::Protocol,
                round: round_of(&msg),
                text: format!("{} before the Welcome", msg.name()),
            });
        }
        let out = match msg {
            Message::Update(u) => FromStation::Update(u),
            Message::EvaluateResult(r) => FromStation::Evaluation(r),
            Message::Error(e) => FromStation::Report(e),
            Message::Heartbeat(h) => FromStation::Heartbeat(h),
            Message::SecAggUp(m) => FromStation::SecAgg(m),
            Message::UpdateSignature(m) => FromStation::Signature(m),
            Message::Bye(b) => {
                self.state = ServerState::Closed;
                FromStation::Bye(b)
            }
            other @ (Message::Hello(_)
            | Message::Welcome(_)
            | Message::Reject(_)
            | Message::RoundStart(_)
            | Message::EvaluateRequest(_)
            | Message::SecAggDown(_)) => {
                self.state = ServerState::Closed;
                return Err(SessionError::unexpected(&other, "a station"));
            }
        };
        Ok(out)
    }

    fn refuse(&mut self, code: RejectCode, text: String) -> Reject {
        self.state = ServerState::Closed;
        Reject { code, text }
    }
}

/// Why a station's session did not get past the server's answer.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum HandshakeError {
    /// The server refused the station.
    #[error("refused ({code:?}): {text}")]
    Refused {
        /// Why, for programs.
        code: RejectCode,
        /// Why, for people.
        text: String,
    },
    /// The server is leaving.
    #[error("the server said goodbye: {0}")]
    ServerLeft(String),
    /// The server broke the protocol.
    #[error("{0}")]
    Protocol(SessionError),
    /// The server's run cannot be joined by this station (an encoding it
    /// does not read, a version it did not offer): retrying will not help.
    #[error("{0}")]
    Incompatible(String),
}

#[derive(Clone, Debug, PartialEq)]
enum ClientState {
    AwaitingWelcome,
    Active,
    Closed,
}

/// A station's side of its session with the server (see the module docs).
#[derive(Debug)]
pub struct ClientSession {
    hello: Hello,
    state: ClientState,
}

/// A message from the server, as a station acts on it.
#[derive(Clone, Debug, PartialEq)]
pub enum FromServer {
    /// Train this round; the global model follows on the stream.
    RoundStart(RoundStart),
    /// Evaluate a model (attached, or the last round's).
    EvaluateRequest(EvaluateRequest),
    /// The server reports a problem.
    Error(ErrorMsg),
    /// The server is alive.
    Heartbeat(Heartbeat),
    /// The server ends the session (the run is over, or it shuts down).
    Bye(Bye),
    /// A secure-aggregation message ([`crate::secure::SecAggDown::from_wire`]).
    SecAgg(SecAgg),
}

impl ClientSession {
    /// A session offering this build's protocol versions and `capabilities`.
    pub fn new(software_version: impl Into<String>, capabilities: Capabilities) -> Self {
        ClientSession {
            hello: Hello::new(software_version, capabilities),
            state: ClientState::AwaitingWelcome,
        }
    }

    /// The Hello to send first.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// The server's answer to the Hello: its Welcome, checked (a version
    /// this station offered, a model encoding it reads).
    pub fn on_answer(&mut self, msg: Message) -> Result<Welcome, HandshakeError> {
        if self.state != ClientState::AwaitingWelcome {
            return Err(HandshakeError::Protocol(SessionError::unexpected(
                &msg,
                "the server",
            )));
        }
        self.state = ClientState::Closed;
        let welcome = match msg {
            Message::Welcome(w) => w,
            Message::Reject(r) => {
                return Err(HandshakeError::Refused {
                    code: r.code,
                    text: r.text,
                })
            }
            Message::Bye(b) => return Err(HandshakeError::ServerLeft(b.text)),
            other @ (Message::Hello(_)
            | Message::RoundStart(_)
            | Message::Update(_)
            | Message::EvaluateRequest(_)
            | Message::EvaluateResult(_)
            | Message::Heartbeat(_)
            | Message::Error(_)
            | Message::SecAggDown(_)
            | Message::SecAggUp(_)
            | Message::UpdateSignature(_)) => {
                return Err(HandshakeError::Protocol(SessionError {
                    code: ErrorCode::Protocol,
                    round: round_of(&other),
                    text: format!("expected Welcome, got {}", other.name()),
                }))
            }
        };
        if !self
            .hello
            .protocol_versions
            .contains(&welcome.protocol_version)
        {
            return Err(HandshakeError::Incompatible(format!(
                "the server chose protocol version {}, which this station did not offer",
                welcome.protocol_version
            )));
        }
        if !self
            .hello
            .capabilities
            .encodings
            .contains(&welcome.encoding)
        {
            return Err(HandshakeError::Incompatible(format!(
                "the server sends {} models, which this station does not read",
                welcome.encoding
            )));
        }
        self.state = ClientState::Active;
        Ok(welcome)
    }

    /// A message from the server after the Welcome.
    pub fn on_message(&mut self, msg: Message) -> Result<FromServer, SessionError> {
        if self.state != ClientState::Active {
            return Err(SessionError {
                code: ErrorCode::Protocol,
                round: round_of(&msg),
                text: format!("{} outside an active session", msg.name()),
            });
        }
        let out = match msg {
            Message::RoundStart(rs) => FromServer::RoundStart(rs),
            Message::EvaluateRequest(r) => FromServer::EvaluateRequest(r),
            Message::Error(e) => FromServer::Error(e),
            Message::Heartbeat(h) => FromServer::Heartbeat(h),
            Message::SecAggDown(m) => FromServer::SecAgg(m),
            Message::Bye(b) => {
                self.state = ClientState::Closed;
                FromServer::Bye(b)
            }
            other @ (Message::Hello(_)
            | Message::Welcome(_)
            | Message::Reject(_)
            | Message::Update(_)
            | Message::EvaluateResult(_)
            | Message::SecAggUp(_)
            | Message::UpdateSignature(_)) => {
                self.state = ClientState::Closed;
                return Err(SessionError::unexpected(&other, "the server"));
            }
        };
        Ok(out)
    }
}

/// What a station writes with in a session: its own wire limits, lowered to
/// what the server's Welcome says it accepts (frame size, model size), so the
/// station never sends what the server would refuse.
pub fn station_write_config(welcome: &Welcome, own: WireConfig) -> WireConfig {
    let max_frame_bytes = own
        .max_frame_bytes
        .min(welcome.limits.max_frame_bytes.max(MIN_FRAME_BYTES));
    WireConfig {
        max_frame_bytes,
        chunk_bytes: own.chunk_bytes.min(max_frame_bytes),
        max_model_params: own.max_model_params.min(welcome.limits.max_model_params),
        ..own
    }
}

/// The smallest frame limit a server may announce that a station honours
/// (below it a control message may not fit; the server's own config refuses
/// less).
const MIN_FRAME_BYTES: u32 = 4096;

/// How often an idle station sends a heartbeat: as the server asks, and at
/// least three times within the server's idle timeout (never more often than
/// every 100 ms).
pub fn heartbeat_interval(limits: &ServerLimits) -> Duration {
    let mut ms = limits.heartbeat_interval_ms;
    if limits.idle_timeout_ms > 0 {
        ms = ms.min(limits.idle_timeout_ms / 3);
    }
    Duration::from_millis(ms.max(100))
}

/// The parameters a station sends for its `trained` model: `trained -
/// global` when the server asked for deltas and the layouts match, else the
/// trained parameters themselves.
pub fn encode_update(
    mut trained: Arc<Params>,
    global: &Params,
    send_delta: bool,
) -> (Arc<Params>, UpdateKind) {
    if send_delta && global.spec().check_same(trained.spec()).is_ok() {
        for (p, g) in Arc::make_mut(&mut trained)
            .data_mut()
            .iter_mut()
            .zip(global.data())
        {
            *p -= *g;
        }
        (trained, UpdateKind::Delta)
    } else {
        (trained, UpdateKind::Full)
    }
}

/// The trained parameters an update of `kind` stands for, against the
/// round's `global` model. A delta whose layout differs from the global's is
/// returned as is, for the update validator to refuse.
pub fn decode_update(kind: UpdateKind, mut received: Arc<Params>, global: &Params) -> Arc<Params> {
    match kind {
        UpdateKind::Full => received,
        UpdateKind::Delta => {
            if global.spec().check_same(received.spec()).is_ok() {
                for (p, g) in Arc::make_mut(&mut received)
                    .data_mut()
                    .iter_mut()
                    .zip(global.data())
                {
                    *p += *g;
                }
            }
            received
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fedcrime_params::ParamSpec;
    use fedcrime_wire::{ByeReason, Metrics, ModelHeader};

    use super::*;

    fn admission() -> Admission {
        Admission {
            run_id: "run".into(),
            model_encoding: Encoding::F32,
            update_encoding: Encoding::F16,
            limits: ServerLimits {
                max_frame_bytes: 1 << 20,
                max_model_params: 100,
                heartbeat_interval_ms: 1000,
                idle_timeout_ms: 30_000,
            },
            extensions: Extensions::new(),
        }
    }

    fn client(encodings: &[Encoding]) -> ClientSession {
        ClientSession::new(
            "test",
            Capabilities {
                encodings: encodings.to_vec(),
                device: "cpu".into(),
                extensions: Extensions::new(),
            },
        )
    }

    fn params(v: &[f32]) -> Params {
        let spec = Arc::new(ParamSpec::new([("w", vec![v.len()])]).unwrap());
        Params::new(spec, v.to_vec()).unwrap()
    }

    fn update(round: u64) -> Message {
        Message::Update(Update {
            round,
            kind: UpdateKind::Full,
            num_examples: 1,
            metrics: Metrics::new(),
            train_seconds: 0.0,
            model: ModelHeader::describe(&params(&[1.0]), Encoding::F32).unwrap(),
        })
    }

    #[test]
    fn a_handshake_through_both_machines() {
        let run = admission();
        let mut c = client(&[Encoding::F32, Encoding::F16]);
        let id = StationId::new("station-01").unwrap();
        let mut s = ServerSession::new(id, 7);
        let hello = s
            .on_first_message(Message::Hello(c.hello().clone()), &run)
            .unwrap();
        assert_eq!(hello.software_version, "test");
        assert!(!s.is_active());
        let welcome = s.welcome(&run).unwrap();
        assert!(s.is_active());
        assert!(s.welcome(&run).is_none(), "one Welcome per session");
        let w = c.on_answer(Message::Welcome(welcome)).unwrap();
        assert_eq!((w.session_id, w.station.as_str()), (7, "station-01"));
        assert_eq!(
            s.on_message(update(3)).unwrap(),
            match update(3) {
                Message::Update(u) => FromStation::Update(u),
                _ => unreachable!(),
            }
        );
        let bye = Bye {
            reason: ByeReason::Done,
            text: "done".into(),
        };
        assert_eq!(
            c.on_message(Message::Bye(bye.clone())).unwrap(),
            FromServer::Bye(bye)
        );
    }

    #[test]
    fn hellos_the_run_cannot_serve_are_rejected() {
        let run = admission();
        // The run sends f16 updates; this station reads f32 only.
        let c = client(&[Encoding::F32]);
        let mut s = ServerSession::new(StationId::new("a").unwrap(), 1);
        let r = s
            .on_first_message(Message::Hello(c.hello().clone()), &run)
            .unwrap_err();
        assert_eq!(r.code, RejectCode::BadHello);
        assert!(r.text.contains("f16"), "{}", r.text);
        assert!(s.welcome(&run).is_none());

        let mut old = c.hello().clone();
        old.protocol_versions = vec![99];
        let mut s = ServerSession::new(StationId::new("a").unwrap(), 2);
        let r = s.on_first_message(Message::Hello(old), &run).unwrap_err();
        assert_eq!(r.code, RejectCode::UnsupportedVersion);

        let mut s = ServerSession::new(StationId::new("a").unwrap(), 3);
        let r = s.on_first_message(update(1), &run).unwrap_err();
        assert!(r.text.contains("expected Hello, got Update"), "{}", r.text);
    }

    #[test]
    fn messages_out_of_place_end_the_session_and_name_the_round() {
        let run = admission();
        let mut s = ServerSession::new(StationId::new("a").unwrap(), 1);
        let e = s.on_message(update(4)).unwrap_err();
        assert_eq!((e.code, e.round), (ErrorCode::Protocol, Some(4)));
        assert!(e.to_string().starts_with("round 4: "), "{e}");

        let c = client(&[Encoding::F32, Encoding::F16]);
        let mut s = ServerSession::new(StationId::new("a").unwrap(), 2);
        s.on_first_message(Message::Hello(c.hello().clone()), &run)
            .unwrap();
        let welcome = s.welcome(&run).unwrap();
        let e = s.on_message(Message::Welcome(welcome)).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnexpectedMessage);
        assert!(!s.is_active());
    }

    #[test]
    fn stations_check_the_servers_answer() {
        let run = admission();
        let mut s = ServerSession::new(StationId::new("a").unwrap(), 1);
        let c = client(&[Encoding::F32, Encoding::F16]);
        s.on_first_message(Message::Hello(c.hello().clone()), &run)
            .unwrap();
        let mut w = s.welcome(&run).unwrap();
        w.protocol_version = 42;
        let mut c2 = client(&[Encoding::F32, Encoding::F16]);
        assert!(matches!(
            c2.on_answer(Message::Welcome(w.clone())),
            Err(HandshakeError::Incompatible(_))
        ));
        w.protocol_version = SUPPORTED_VERSIONS[0];
        w.encoding = Encoding::Int8;
        let mut c3 = client(&[Encoding::F32]);
        assert!(matches!(
            c3.on_answer(Message::Welcome(w)),
            Err(HandshakeError::Incompatible(_))
        ));
        let mut c4 = client(&[Encoding::F32]);
        let refused = c4.on_answer(Message::Reject(Reject {
            code: RejectCode::RunFinished,
            text: "over".into(),
        }));
        assert!(matches!(
            refused,
            Err(HandshakeError::Refused {
                code: RejectCode::RunFinished,
                ..
            })
        ));
        let mut c5 = client(&[Encoding::F32]);
        let e = c5.on_message(Message::Heartbeat(Heartbeat { seq: 1 }));
        assert!(e.is_err(), "nothing before the Welcome");
    }

    #[test]
    fn stations_honour_the_servers_limits() {
        let run = admission();
        let mut s = ServerSession::new(StationId::new("a").unwrap(), 1);
        let c = client(&[Encoding::F32, Encoding::F16]);
        s.on_first_message(Message::Hello(c.hello().clone()), &run)
            .unwrap();
        let mut w = s.welcome(&run).unwrap();
        let own = WireConfig::default();
        let cfg = station_write_config(&w, own);
        assert_eq!(cfg.max_frame_bytes, 1 << 20);
        assert_eq!(cfg.chunk_bytes, own.chunk_bytes.min(1 << 20));
        assert_eq!(cfg.max_model_params, 100);
        w.limits.max_frame_bytes = 10;
        assert_eq!(station_write_config(&w, own).max_frame_bytes, 4096);
        assert_eq!(heartbeat_interval(&w.limits), Duration::from_millis(1000));
        w.limits.idle_timeout_ms = 1500;
        assert_eq!(heartbeat_interval(&w.limits), Duration::from_millis(500));
        w.limits.heartbeat_interval_ms = 0;
        w.limits.idle_timeout_ms = 0;
        assert_eq!(heartbeat_interval(&w.limits), Duration::from_millis(100));
    }

    #[test]
    fn deltas_round_trip_and_mismatches_pass_through() {
        let global = params(&[1.0, 2.0]);
        let trained = Arc::new(params(&[1.5, 1.0]));
        // A shared update (a learner that hands back what it holds) is
        // copied before the difference is taken, never changed in place.
        let (sent, kind) = encode_update(trained.clone(), &global, true);
        assert_eq!(trained.data(), &[1.5f32, 1.0][..]);
        assert_eq!(
            (sent.data(), kind),
            (&[0.5f32, -1.0][..], UpdateKind::Delta)
        );
        assert_eq!(decode_update(kind, sent, &global), trained);
        let (sent, kind) = encode_update(trained.clone(), &global, false);
        assert!(Arc::ptr_eq(&sent, &trained), "a full update is not copied");
        assert_eq!(kind, UpdateKind::Full);
        assert_eq!(decode_update(kind, sent, &global), trained);
        let other = Arc::new(params(&[1.0, 2.0, 3.0]));
        assert_eq!(
            decode_update(UpdateKind::Delta, other.clone(), &global),
            other
        );
    }
}
