//! One station's connection: the Hello/Welcome handshake on the stream the
//! station opens, then a reader (decoding what the station sends and handing
//! it to the driver) and a writer (sending what the driver queued, bytes
//! encoded once per round and shared by every station). What may be said
//! when is decided by the sans-IO [`ServerSession`]; this module only moves
//! bytes and waits.
//!
//! Nothing a station sends can take the server down: every read is bounded
//! (frame size, model size against the global model's), a malformed or
//! unexpected message ends only this session, with an Error message to the
//! station when the stream still works.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fedcrime_fl::secure::SecAggUp;
use fedcrime_fl::{Admission, FromStation, ServerSession, StationId, UpdateProof};
use fedcrime_params::{ParamSpec, Params};
use fedcrime_wire::{
    encode_message, ErrorCode, ErrorMsg, EvaluateResult, Message, Reject, SecAgg, Update,
    UpdateKind, UpdateSignature, WireConfig, WireReader,
};
use tokio::sync::{mpsc, oneshot};

/// Outgoing items a session's writer can hold before the station counts as stuck.
pub(crate) const OUTBOX: usize = 16;
/// How long a finished session's writer may take to deliver what is queued.
const WRITER_GRACE: Duration = Duration::from_secs(2);

/// What the writer sends.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// Encoded frames (a message and, maybe, its model).
    Frames(Bytes),
    /// An encoded Bye: the last thing sent; the stream is finished after it.
    Bye(Bytes),
}

/// Update buffers kept for reuse: each update is read into one the round
/// engine is done with ([`fedcrime_fl::Engine::take_spent`]) instead of a
/// fresh model-sized allocation (at 10M parameters a fresh 40 MB buffer costs
/// about 10,000 page faults, more than decrypting it).
#[derive(Debug)]
pub(crate) struct UpdateBuffers {
    /// The run's layout: updates in it share this `Arc`.
    spec: Arc<ParamSpec>,
    free: Mutex<Vec<Vec<f32>>>,
}

/// Spare update buffers kept at most. Stations upload at once, so a round
/// needs one buffer per update in flight; keeping them costs no more memory
/// than the round's peak, and reading into them no page faults.
const MAX_SPARE_BUFFERS: usize = 32;

impl UpdateBuffers {
    pub(crate) fn new(spec: Arc<ParamSpec>) -> Self {
        UpdateBuffers {
            spec,
            free: Mutex::new(Vec::new()),
        }
    }

    /// A spare buffer, or an empty one.
    fn take(&self) -> Vec<f32> {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }

    /// Keeps `params`' buffer for a later update when it is the run's size
    /// and there is room.
    pub(crate) fn give(&self, params: Params) {
        if params.data().len() != self.spec.total() {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < MAX_SPARE_BUFFERS {
            free.push(params.into_data());
        }
    }
}

/// What every session needs to know about the run.
#[derive(Debug)]
pub(crate) struct SessionCtx {
    /// What the Welcome tells every station (run, encodings, limits, run description).
    pub admission: Admission,
    /// Limits for reading from stations (model sizes bounded by the global model's).
    pub read_cfg: WireConfig,
    /// Limits for writing.
    pub write_cfg: WireConfig,
    /// Time a station has to open its stream and say Hello.
    pub hello_timeout: Duration,
    /// Buffers updates are read into.
    pub buffers: UpdateBuffers,
    /// Whether each update's hash is taken and its signature checked
    /// ([`UpdateProof`]): with an audit log or required signatures.
    pub prove_updates: bool,
    /// Refuse updates without a valid signature.
    pub require_signed_updates: bool,
}

/// What a session tells the driver.
#[derive(Debug)]
pub(crate) enum FromSession {
    /// A station passed the handshake and asks to join; the driver answers
    /// `None` (welcome) or a refusal.
    Hello {
        station: StationId,
        session: u64,
        /// The station process's instance number, when its Hello carried one.
        instance: Option<u64>,
        connection: quinn::Connection,
        outbox: mpsc::Sender<Outgoing>,
        reply: oneshot::Sender<Option<Reject>>,
    },
    /// A decoded update (not yet validated).
    Update {
        station: StationId,
        session: u64,
        update: Update,
        params: Params,
        bytes: u64,
        /// Its hash and signature check, when the server takes them.
        proof: Option<UpdateProof>,
    },
    /// An evaluation result.
    Evaluation {
        station: StationId,
        session: u64,
        result: EvaluateResult,
        bytes: u64,
    },
    /// The station reported a problem.
    Report {
        station: StationId,
        session: u64,
        error: ErrorMsg,
    },
    /// A secure-aggregation message, decoded (or why not).
    SecAgg {
        station: StationId,
        session: u64,
        round: u64,
        msg: Result<SecAggUp, String>,
        bytes: u64,
        /// A masked input's hash and signature check, when the server takes them.
        proof: Option<UpdateProof>,
    },
    /// The session is over.
    Closed {
        station: StationId,
        session: u64,
        reason: String,
    },
}

/// Encodes `msg` (and its model) into one buffer.
pub(crate) fn encode(msg: &Message, model: Option<&Params>, cfg: &WireConfig) -> Bytes {
    let mut out = Vec::new();
    match encode_message(msg, model, cfg, &mut out) {
        Ok(()) => Bytes::from(out),
        Err(e) => {
            // Only a model/header mismatch or an oversized control message can
            // fail here, both bugs of ours; send an Error instead.
            tracing::error!(message = msg.name(), "cannot encode: {e}");
            let mut out = Vec::new();
            let fallback = Message::Error(ErrorMsg {
                code: ErrorCode::Internal,
                text: format!("server could not encode {}", msg.name()),
            });
            let _ = encode_message(&fallback, None, cfg, &mut out);
            Bytes::from(out)
        }
    }
}

/// Writes `msg` on `send`, finishes the stream and waits (bounded) until the
/// station has it.
async fn send_last(send: &mut quinn::SendStream, msg: &Message, cfg: &WireConfig) {
    let bytes = encode(msg, None, cfg);
    if send.write_chunk(bytes).await.is_ok() {
        let _ = send.finish();
        let _ = tokio::time::timeout(WRITER_GRACE, send.stopped()).await;
    }
}

/// Serves one authenticated connection until it ends.
pub(crate) async fn serve(
    station: StationId,
    session: u64,
    connection: quinn::Connection,
    ctx: Arc<SessionCtx>,
    tx: mpsc::Sender<FromSession>,
) {
    let end = match fedcrime_net::peer_update_key(&connection) {
        Ok(key) => {
            let key = key.map(fedcrime_audit::PublicKey);
            run(&station, session, &connection, &ctx, &tx, key).await
        }
        Err(e) => Err(format!("unusable certificate: {e}")),
    };
    let reason = match end {
        Ok(r) => {
            tracing::info!(station = %station, session, "session ended: {r}");
            r
        }
        Err(r) => {
            tracing::warn!(station = %station, session, "session ended: {r}");
            r
        }
    };
    connection.close(quinn::VarInt::from_u32(0), reason.as_bytes());
}

async fn run(
    station: &StationId,
    session: u64,
    connection: &quinn::Connection,
    ctx: &SessionCtx,
    tx: &mpsc::Sender<FromSession>,
    update_key: Option<fedcrime_audit::PublicKey>,
) -> Result<String, String> {
    let (mut send, recv) =
        match tokio::time::timeout(ctx.hello_timeout, connection.accept_bi()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("connection lost before the handshake: {e}")),
            Err(_) => return Err("no stream opened in time".into()),
        };
    let mut reader = WireReader::new(recv, ctx.read_cfg);
    let mut machine = ServerSession::new(station.clone(), session);
    let hello = match tokio::time::timeout(ctx.hello_timeout, reader.recv_message()).await {
        Ok(Ok(Some(msg))) => machine.on_first_message(msg, &ctx.admission),
        Ok(Ok(None)) => return Err("stream ended before Hello".into()),
        Ok(Err(e)) => Err(machine.hello_failed(format!("bad Hello: {e}"))),
        Err(_) => Err(machine.hello_failed("no Hello in time".into())),
    };
    let hello = match hello {
        Ok(h) => h,
        Err(reject) => {
            let text = reject.text.clone();
            send_last(&mut send, &Message::Reject(reject), &ctx.write_cfg).await;
            return Err(text);
        }
    };
    let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
    let (reply, answer) = oneshot::channel();
    let hello_msg = FromSession::Hello {
        station: station.clone(),
        session,
        instance: hello.capabilities.instance(),
        connection: connection.clone(),
        outbox: outbox.clone(),
        reply,
    };
    if tx.send(hello_msg).await.is_err() {
        return Err("server stopping".into());
    }
    match answer.await {
        Ok(None) => {}
        Ok(Some(r)) => {
            let r = machine.refuse_admission(r);
            let text = r.text.clone();
            send_last(&mut send, &Message::Reject(r), &ctx.write_cfg).await;
            return Ok(format!("refused: {text}"));
        }
        Err(_) => return Err("server stopping".into()),
    }
    let Some(welcome) = machine.welcome(&ctx.admission) else {
        return Err("no Hello to welcome".into());
    };
    let welcome = Message::Welcome(welcome);
    if let Err(e) = send
        .write_chunk(encode(&welcome, None, &ctx.write_cfg))
        .await
    {
        let _ = tx
            .send(FromSession::Closed {
                station: station.clone(),
                session,
                reason: format!("writing Welcome: {e}"),
            })
            .await;
        return Err(format!("writing Welcome: {e}"));
    }
    tracing::info!(
        station = %station,
        session,
        software = %hello.software_version,
        device = %hello.capabilities.device,
        "station joined"
    );
    let writer = tokio::spawn(write_loop(send, outbox_rx));
    let end = read_loop(&mut machine, &mut reader, tx, &outbox, ctx, update_key).await;
    let reason = match &end {
        Ok(r) | Err(r) => r.clone(),
    };
    let _ = tx
        .send(FromSession::Closed {
            station: station.clone(),
            session,
            reason,
        })
        .await;
    drop(outbox);
    let _ = tokio::time::timeout(WRITER_GRACE, writer).await;
    end
}

async fn write_loop(mut send: quinn::SendStream, mut rx: mpsc::Receiver<Outgoing>) {
    while let Some(item) = rx.recv().await {
        let (bytes, last) = match item {
            Outgoing::Frames(b) => (b, false),
            Outgoing::Bye(b) => (b, true),
        };
        if let Err(e) = send.write_chunk(bytes).await {
            tracing::debug!("write failed: {e}");
            return;
        }
        if last {
            break;
        }
    }
    let _ = send.finish();
    let _ = send.stopped().await;
}

/// Who sent an update, and what the server expects of its signature.
struct UpdateContext<'a> {
    run_id: &'a str,
    station: &'a StationId,
    /// The key the station's certificate binds.
    key: Option<&'a fedcrime_audit::PublicKey>,
    required: bool,
}

/// The update's hash (of its values as received, [`fedcrime_audit::sha256_f32_raw`])
/// and its signature check: a signature that comes with
/// an update must verify under the key the station's certificate binds;
/// an update without one passes only when signatures are not required.
fn prove_update(
    cx: &UpdateContext<'_>,
    update: &Update,
    values_sha256: [u8; 32],
    signature: Option<UpdateSignature>,
) -> UpdateProof {
    let signed = fedcrime_audit::SignedUpdate {
        run_id: cx.run_id,
        station: cx.station.as_str(),
        round: update.round,
        num_examples: update.num_examples,
        delta: update.kind == UpdateKind::Delta,
        values_sha256,
    };
    check_signature(cx, update.round, values_sha256, signature, |key, sig| {
        signed.verify(key, sig).is_ok()
    })
}

/// A masked input's hash (of the message as sent) and its signature check,
/// by the same rules as [`prove_update`].
fn prove_masked(
    cx: &UpdateContext<'_>,
    msg: &SecAgg,
    signature: Option<UpdateSignature>,
) -> UpdateProof {
    let body_sha256 = fedcrime_audit::sha256_raw(&msg.body);
    let signed = fedcrime_audit::SignedMaskedUpdate {
        run_id: cx.run_id,
        station: cx.station.as_str(),
        round: msg.round,
        body_sha256,
    };
    check_signature(cx, msg.round, body_sha256, signature, |key, sig| {
        signed.verify(key, sig).is_ok()
    })
}

/// The proof of content hashed to `sha256`: `signature` (if it answers
/// `round`) checked by `verifies` under the station's bound key.
fn check_signature(
    cx: &UpdateContext<'_>,
    round: u64,
    sha256: [u8; 32],
    signature: Option<UpdateSignature>,
    verifies: impl FnOnce(&fedcrime_audit::PublicKey, &fedcrime_audit::Signature) -> bool,
) -> UpdateProof {
    let signature = signature.filter(|s| s.round == round);
    let parsed = signature.as_ref().map(|s| {
        <[u8; 64]>::try_from(s.signature.as_slice())
            .map(fedcrime_audit::Signature)
            .map_err(|_| {
                format!(
                    "malformed signature ({} bytes, expected 64)",
                    s.signature.len()
                )
            })
    });
    let problem = match (cx.key, &parsed) {
        (_, Some(Err(e))) => Some(e.clone()),
        (Some(key), Some(Ok(sig))) => (!verifies(key, sig)).then(|| {
            format!(
                "the signature does not verify under the update key of {}'s certificate",
                cx.station
            )
        }),
        (Some(_), None) if cx.required => Some(format!(
            "unsigned update: this server requires every update signed with the key {}'s \
             certificate binds",
            cx.station
        )),
        (None, _) if cx.required => Some(format!(
            "this server requires signed updates, and {}'s certificate binds no \
             update-signing key (re-issue it with fedcrime-certs)",
            cx.station
        )),
        (None, Some(Ok(_))) => Some(format!(
            "a signature came with the update, but {}'s certificate binds no key to check it with",
            cx.station
        )),
        (Some(_) | None, None) => None,
    };
    UpdateProof {
        sha256: fedcrime_audit::hex::encode(&sha256),
        signature: parsed.and_then(|p| p.ok()).map(|s| s.to_text()),
        problem,
    }
}

/// Reads the station's messages until the stream ends, the station says
/// Bye, or it breaks the protocol.
async fn read_loop(
    machine: &mut ServerSession,
    reader: &mut WireReader<quinn::RecvStream>,
    tx: &mpsc::Sender<FromSession>,
    outbox: &mpsc::Sender<Outgoing>,
    ctx: &SessionCtx,
    update_key: Option<fedcrime_audit::PublicKey>,
) -> Result<String, String> {
    let mut signature: Option<UpdateSignature> = None;
    let complain = |code: ErrorCode, text: String| {
        let msg = Message::Error(ErrorMsg { code, text });
        let _ = outbox.try_send(Outgoing::Frames(encode(&msg, None, &ctx.write_cfg)));
    };
    let station = machine.station().clone();
    let session = machine.id();
    loop {
        let start = reader.bytes_read();
        let msg = match reader.recv_message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok("the station closed its stream".into()),
            Err(e) => {
                if e.is_protocol_violation() {
                    complain(ErrorCode::Protocol, e.to_string());
                }
                return Err(format!("reading: {e}"));
            }
        };
        let to_driver = match machine.on_message(msg) {
            Ok(FromStation::Update(update)) => {
                let buffer = ctx.buffers.take();
                // The hash the proof needs is taken as the values arrive,
                // while they are still in the cache and the rest of the
                // update is on the network.
                let mut hash = ctx.prove_updates.then(fedcrime_audit::Sha256F32::new);
                let mut observe = |values: &[f32]| {
                    if let Some(h) = &mut hash {
                        h.update(values);
                    }
                };
                let read = reader.recv_params_observed(
                    &update.model,
                    buffer,
                    &ctx.buffers.spec,
                    &mut observe,
                );
                let params = match read.await {
                    Ok(p) => p,
                    Err(e) => {
                        let text = format!("update for round {}: {e}", update.round);
                        complain(ErrorCode::InvalidUpdate, text.clone());
                        return Err(text);
                    }
                };
                let proof = hash.map(|hash| {
                    prove_update(
                        &UpdateContext {
                            run_id: &ctx.admission.run_id,
                            station: &station,
                            key: update_key.as_ref(),
                            required: ctx.require_signed_updates,
                        },
                        &update,
                        hash.finish(),
                        signature.take(),
                    )
                });
                FromSession::Update {
                    station: station.clone(),
                    session,
                    update,
                    params,
                    bytes: reader.bytes_read() - start,
                    proof,
                }
            }
            Ok(FromStation::Signature(s)) => {
                signature = Some(s);
                continue;
            }
            Ok(FromStation::Evaluation(result)) => FromSession::Evaluation {
                station: station.clone(),
                session,
                result,
                bytes: reader.bytes_read() - start,
            },
            Ok(FromStation::Report(error)) => FromSession::Report {
                station: station.clone(),
                session,
                error,
            },
            Ok(FromStation::SecAgg(msg)) => {
                // Decoded here, off the driver, like an update's tensors.
                let decoded = SecAggUp::from_wire(&msg).map_err(|e| e.to_string());
                let masked = matches!(decoded, Ok(SecAggUp::Masked { .. }));
                let proof = (masked && ctx.prove_updates).then(|| {
                    prove_masked(
                        &UpdateContext {
                            run_id: &ctx.admission.run_id,
                            station: &station,
                            key: update_key.as_ref(),
                            required: ctx.require_signed_updates,
                        },
                        &msg,
                        signature.take(),
                    )
                });
                FromSession::SecAgg {
                    station: station.clone(),
                    session,
                    round: msg.round,
                    msg: decoded,
                    bytes: reader.bytes_read() - start,
                    proof,
                }
            }
            Ok(FromStation::Heartbeat(_)) => continue,
            Ok(FromStation::Bye(b)) => {
                return Ok(format!(
                    "the station said goodbye ({:?}: {})",
                    b.reason, b.text
                ))
            }
            Err(e) => {
                complain(e.code, e.text.clone());
                return Err(e.to_string());
            }
        };
        if tx.send(to_driver).await.is_err() {
            return Ok("server stopping".into());
        }
    }
}
