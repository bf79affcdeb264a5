//! Messages with their models, over byte slices and async streams.
//!
//! A message that announces a model ([`Message::model`]) is followed by that
//! model's tensor frames; [`WireWriter::send`] writes both and
//! [`WireReader::recv`] reads both. The sync functions do the same over byte
//! slices ([`encode_message`], [`decode_message`], [`decode_all`]).

use std::sync::Arc;

#[cfg(feature = "tokio")]
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::error::{Result, WireError};
use super::frame::{self, FrameHeader, HEADER_LEN};
use super::message::Message;
#[cfg(feature = "tokio")]
use super::tensor::ModelDecoder;
use super::tensor::{self, ModelHeader};
use super::WireConfig;
use fedcrime_params::{ParamSpec, Params};

/// A message and, when it announced one, its model.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    /// The message.
    pub message: Message,
    /// The model that followed it.
    pub params: Option<Params>,
}

/// Checks that `model` is given exactly when `msg` announces one, and matches it.
fn check_model<'p>(
    msg: &Message,
    model: Option<&'p Params>,
    cfg: &WireConfig,
) -> Result<Option<(ModelHeader, &'p Params)>> {
    match (msg.model(), model) {
        (Some(h), Some(p)) => {
            h.check_matches(p)?;
            // What the peer said it reads (or this side's own limit): a
            // larger model is refused here rather than by the peer.
            let values = p.spec().total() as u64;
            if values > cfg.max_model_params {
                return Err(WireError::Model(format!(
                    "{} carries {values} values, above the limit of {}",
                    msg.name(),
                    cfg.max_model_params
                )));
            }
            Ok(Some((*h, p)))
        }
        (None, None) => Ok(None),
        (Some(_), None) => Err(WireError::Model(format!(
            "{} announces a model but no parameters were given",
            msg.name()
        ))),
        (None, Some(_)) => Err(WireError::Model(format!(
            "{} carries no model but parameters were given",
            msg.name()
        ))),
    }
}

/// Appends a control frame for `msg` to `out`, checking its size against `max_frame`.
fn encode_control_frame(msg: &Message, max_frame: u32, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    let len = msg.encode_payload(out)?;
    if len > max_frame as usize {
        out.truncate(start);
        return Err(WireError::TooLarge {
            what: format!("{} message", msg.name()),
            len: len as u64,
            max: max_frame.into(),
        });
    }
    let header = FrameHeader::new(msg.kind(), frame::payload_len(msg.kind(), len)?);
    out[start..start + HEADER_LEN].copy_from_slice(&header.encode());
    Ok(())
}

/// Appends `msg` and, when it announces one, the model `model` to `out`.
pub fn encode_message(
    msg: &Message,
    model: Option<&Params>,
    cfg: &WireConfig,
    out: &mut Vec<u8>,
) -> Result<()> {
    let model = check_model(msg, model, cfg)?;
    encode_control_frame(msg, cfg.max_frame_bytes, out)?;
    if let Some((header, params)) = model {
        tensor::encode_params(params, header.encoding, cfg.chunk_bytes(), out)?;
    }
    Ok(())
}

/// Decodes the control message at the start of `buf` (no model).
fn decode_control_frame(buf: &[u8], cfg: &WireConfig) -> Result<(Message, usize)> {
    let (f, used) = frame::decode_frame(buf, cfg.max_frame_bytes)?;
    let message = Message::decode_payload(f.header.kind, f.payload, cfg.max_frame_bytes as usize)?;
    Ok((message, used))
}

/// Decodes one message and its model from the start of `buf`; models are
/// decoded against `expected` when given. Returns it and the bytes used.
pub fn decode_message(
    buf: &[u8],
    expected: Option<&Arc<ParamSpec>>,
    cfg: &WireConfig,
) -> Result<(Received, usize)> {
    let (message, used) = decode_control_frame(buf, cfg)?;
    let Some(header) = message.model().copied() else {
        return Ok((
            Received {
                message,
                params: None,
            },
            used,
        ));
    };
    let (params, model_used) = tensor::decode_params(&buf[used..], header, expected, cfg)?;
    Ok((
        Received {
            message,
            params: Some(params),
        },
        used + model_used,
    ))
}

/// Decodes every message in `buf` (models learning their layout from the
/// stream). This is the entry point the fuzz target and the property tests
/// feed arbitrary bytes to: whatever the input, it returns and never panics.
pub fn decode_all(buf: &[u8], cfg: &WireConfig) -> Result<Vec<Received>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let (r, used) = decode_message(&buf[pos..], None, cfg)?;
        out.push(r);
        pos += used;
    }
    Ok(out)
}

#[cfg(feature = "tokio")]
/// Reads messages (and their models) from an async byte stream, e.g. a QUIC
/// `RecvStream`, counting the bytes.
#[derive(Debug)]
pub struct WireReader<R> {
    inner: R,
    cfg: WireConfig,
    buf: Vec<u8>,
    bytes_read: u64,
}

/// Control-frame buffers above this capacity are released after use.
#[cfg(feature = "tokio")]
const KEEP_BUF: usize = 64 * 1024;

#[cfg(feature = "tokio")]
impl<R: AsyncRead + Unpin> WireReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R, cfg: WireConfig) -> Self {
        Self {
            inner,
            cfg,
            buf: Vec::new(),
            bytes_read: 0,
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &WireConfig {
        &self.cfg
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Gives the stream back.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Reads the next control message; `Ok(None)` when the stream ended
    /// cleanly between messages. When the message announces a model, read it
    /// next with [`recv_params`](Self::recv_params) or
    /// [`recv_params_into`](Self::recv_params_into).
    pub async fn recv_message(&mut self) -> Result<Option<Message>> {
        let max = self.cfg.max_frame_bytes;
        let header = frame::read_frame(&mut self.inner, max, &mut self.buf).await?;
        let Some(header) = header else {
            return Ok(None);
        };
        self.bytes_read += (HEADER_LEN + header.len as usize) as u64;
        let msg = Message::decode_payload(header.kind, &self.buf, max as usize);
        if self.buf.capacity() > KEEP_BUF {
            self.buf = Vec::new();
        }
        msg.map(Some)
    }

    /// Reads the model `header` announced into new parameters, against the
    /// layout `expected` when given (the result then shares that `Arc`).
    pub async fn recv_params(
        &mut self,
        header: &ModelHeader,
        expected: Option<&Arc<ParamSpec>>,
    ) -> Result<Params> {
        let (params, read) =
            tensor::read_params(&mut self.inner, *header, expected, &self.cfg).await?;
        self.bytes_read += read;
        Ok(params)
    }

    /// Reads the model `header` announced into `buffer` (reused, so no
    /// allocation when it is large enough), learning the layout from the
    /// stream like [`recv_params`](Self::recv_params) with no expected
    /// layout: a different layout is not an error here, it is what the
    /// stream says. The result shares `like` when its layout is the same.
    pub async fn recv_params_reusing(
        &mut self,
        header: &ModelHeader,
        buffer: Vec<f32>,
        like: &Arc<ParamSpec>,
    ) -> Result<Params> {
        self.recv_params_observed(header, buffer, like, &mut |_| {})
            .await
    }

    /// [`recv_params_reusing`](Self::recv_params_reusing), showing `observe`
    /// the decoded values as they arrive: in order, each once, together the
    /// whole model (the server hashes an update this way while the rest of
    /// it is still on the network).
    pub async fn recv_params_observed(
        &mut self,
        header: &ModelHeader,
        buffer: Vec<f32>,
        like: &Arc<ParamSpec>,
        observe: &mut (dyn FnMut(&[f32]) + Send),
    ) -> Result<Params> {
        let (params, read) =
            tensor::read_params_reusing(&mut self.inner, *header, buffer, like, &self.cfg, observe)
                .await?;
        self.bytes_read += read;
        Ok(params)
    }

    /// Reads the model `header` announced into `params` in place (the layout
    /// must match; no allocation).
    pub async fn recv_params_into(
        &mut self,
        header: &ModelHeader,
        params: &mut Params,
    ) -> Result<()> {
        let mut dec = ModelDecoder::into_params(*header, params)?;
        let read = dec
            .read_from(&mut self.inner, self.cfg.max_frame_bytes)
            .await?;
        dec.finish()?;
        self.bytes_read += read;
        Ok(())
    }

    /// Reads the next message and, when it announces one, its model.
    pub async fn recv(&mut self, expected: Option<&Arc<ParamSpec>>) -> Result<Option<Received>> {
        let Some(message) = self.recv_message().await? else {
            return Ok(None);
        };
        let params = match message.model().copied() {
            Some(header) => Some(self.recv_params(&header, expected).await?),
            None => None,
        };
        Ok(Some(Received { message, params }))
    }
}

#[cfg(feature = "tokio")]
/// Writes messages (and their models) to an async byte stream, e.g. a QUIC
/// `SendStream`, counting the bytes.
#[derive(Debug)]
pub struct WireWriter<W> {
    inner: W,
    cfg: WireConfig,
    buf: Vec<u8>,
    bytes_written: u64,
}

#[cfg(feature = "tokio")]
impl<W: AsyncWrite + Unpin> WireWriter<W> {
    /// Wraps a stream.
    pub fn new(inner: W, cfg: WireConfig) -> Self {
        Self {
            inner,
            cfg,
            buf: Vec::new(),
            bytes_written: 0,
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &WireConfig {
        &self.cfg
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Gives the stream back.
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// Writes `msg` and, when it announces one, `model` (which must match the
    /// announcement), tensor by tensor without building a model-sized buffer;
    /// then flushes.
    pub async fn send(&mut self, msg: &Message, model: Option<&Params>) -> Result<()> {
        let model = check_model(msg, model, &self.cfg)?;
        self.buf.clear();
        encode_control_frame(msg, self.cfg.max_frame_bytes, &mut self.buf)?;
        self.inner
            .write_all(&self.buf)
            .await
            .map_err(|source| WireError::Io {
                context: "writing a control frame",
                source,
            })?;
        self.bytes_written += self.buf.len() as u64;
        if self.buf.capacity() > KEEP_BUF {
            self.buf = Vec::new();
        }
        if let Some((header, params)) = model {
            self.bytes_written += tensor::write_params(
                &mut self.inner,
                params,
                header.encoding,
                self.cfg.chunk_bytes(),
            )
            .await?;
        }
        self.flush().await
    }

    /// Encodes `msg` and, when it announces one, `model` as byte chunks for
    /// a stream that takes them without copying (QUIC's
    /// `SendStream::write_all_chunks`): little-endian f32 tensor data stays
    /// in `model`'s buffer, shared. Counts the bytes as written; the caller
    /// writes the chunks.
    pub fn encode_chunks(
        &mut self,
        msg: &Message,
        model: Option<&Arc<Params>>,
    ) -> Result<Vec<bytes::Bytes>> {
        let checked = check_model(msg, model.map(|m| &**m), &self.cfg)?;
        let mut control = Vec::new();
        encode_control_frame(msg, self.cfg.max_frame_bytes, &mut control)?;
        self.bytes_written += control.len() as u64;
        let mut chunks = vec![bytes::Bytes::from(control)];
        if let (Some((header, _)), Some(params)) = (checked, model) {
            self.bytes_written += tensor::params_chunks(
                params,
                header.encoding,
                self.cfg.chunk_bytes(),
                &mut chunks,
            )?;
        }
        Ok(chunks)
    }

    /// Flushes the stream.
    pub async fn flush(&mut self) -> Result<()> {
        self.inner.flush().await.map_err(|source| WireError::Io {
            context: "flushing",
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::frame::{FrameKind, FRAME_VERSION};
    use crate::fuzzing::{decode_untrusted, FUZZ_CONFIG};
    use crate::message::*;
    use crate::tensor::Encoding;
    use crate::testutil::{every_message, normal_params, small_model};

    fn cfg() -> WireConfig {
        WireConfig {
            chunk_bytes: 24,
            ..WireConfig::default()
        }
    }

    fn encode_all(list: &[(Message, Option<Params>)], cfg: &WireConfig) -> (Vec<u8>, Vec<usize>) {
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for (m, p) in list {
            encode_message(m, p.as_ref(), cfg, &mut buf).unwrap();
            ends.push(buf.len());
        }
        (buf, ends)
    }

    #[test]
    fn every_message_round_trips_sync() {
        let model = small_model(5, 0.1);
        for enc in Encoding::ALL {
            let list = every_message(&model, enc);
            let (buf, _) = encode_all(&list, &cfg());
            let back = decode_all(&buf, &cfg()).unwrap();
            assert_eq!(back.len(), list.len());
            for ((m, p), r) in list.iter().zip(&back) {
                assert_eq!(&r.message, m);
                assert_eq!(r.params.is_some(), p.is_some(), "{}", m.name());
                if let (Some(p), Some(q), Encoding::F32) = (p, &r.params, enc) {
                    assert_eq!(p, q);
                }
            }
            // With the expected layout the decoded models share it.
            let mut pos = 0;
            while pos < buf.len() {
                let (r, used) = decode_message(&buf[pos..], Some(model.spec()), &cfg()).unwrap();
                if let Some(q) = r.params {
                    assert!(Arc::ptr_eq(q.spec(), model.spec()));
                }
                pos += used;
            }
        }
    }

    /// Issue 16: an update read into a reused buffer lands in that buffer
    /// (no new allocation), shares the expected layout when it is the same,
    /// and is still read, with its own layout, when it is not.
    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn updates_are_read_into_reused_buffers() {
        let model = small_model(7, 0.1);
        let other = normal_params(
            Arc::new(ParamSpec::new([("w", vec![model.spec().total()])]).unwrap()),
            3,
            0.1,
        );
        for (sent, same) in [(&model, true), (&other, false)] {
            let header = crate::ModelHeader::describe(sent, Encoding::F32).unwrap();
            let mut bytes = Vec::new();
            tensor::encode_params(sent, Encoding::F32, 64, &mut bytes).unwrap();
            let mut reader = WireReader::new(&bytes[..], cfg());
            let buffer = vec![9.0f32; model.spec().total()];
            let ptr = buffer.as_ptr();
            let got = reader
                .recv_params_reusing(&header, buffer, model.spec())
                .await
                .unwrap();
            assert_eq!(&got, sent);
            assert_eq!(got.data().as_ptr(), ptr, "the buffer was reused");
            assert_eq!(Arc::ptr_eq(got.spec(), model.spec()), same);
            assert_eq!(reader.bytes_read(), bytes.len() as u64);
        }
        // What an observer sees while an update is read (the server hashes
        // it there): every decoded value once, in order, in several pieces.
        for encoding in [Encoding::F32, Encoding::F16, Encoding::Int8] {
            let header = crate::ModelHeader::describe(&model, encoding).unwrap();
            let mut bytes = Vec::new();
            tensor::encode_params(&model, encoding, 64, &mut bytes).unwrap();
            let mut reader = WireReader::new(&bytes[..], cfg());
            let (mut seen, mut pieces) = (Vec::new(), 0);
            let got = reader
                .recv_params_observed(&header, Vec::new(), model.spec(), &mut |v| {
                    seen.extend_from_slice(v);
                    pieces += 1;
                })
                .await
                .unwrap();
            assert_eq!(seen, got.data(), "{encoding:?}");
            assert!(pieces > 1, "{encoding:?}: {pieces} pieces");
        }
    }

    /// Issue 16: the chunked encoding is byte for byte the plain one, for
    /// every message and encoding, and f32 tensor data goes out as slices of
    /// the model's own buffer (no copy); f16 and int8 are converted.
    #[cfg(feature = "tokio")]
    #[test]
    fn chunks_share_the_model_and_match_the_plain_encoding() {
        let model = small_model(6, 0.1);
        for encoding in [Encoding::F32, Encoding::F16, Encoding::Int8] {
            for (msg, p) in every_message(&model, encoding) {
                let mut plain = Vec::new();
                encode_message(&msg, p.as_ref(), &cfg(), &mut plain).unwrap();
                let shared = p.map(Arc::new);
                let mut w = WireWriter::new(Vec::<u8>::new(), cfg());
                let chunks = w.encode_chunks(&msg, shared.as_ref()).unwrap();
                assert_eq!(chunks.concat(), plain, "{} in {encoding:?}", msg.name());
                assert_eq!(w.bytes_written(), plain.len() as u64);
                let Some(shared) = shared else { continue };
                let values: &[u8] = bytemuck::cast_slice(shared.data());
                let inside = |c: &bytes::Bytes| {
                    let (at, base) = (c.as_ptr() as usize, values.as_ptr() as usize);
                    at >= base && at + c.len() <= base + values.len()
                };
                let shared_bytes: usize =
                    chunks.iter().filter(|c| inside(c)).map(|c| c.len()).sum();
                let want = if encoding == Encoding::F32 && cfg!(target_endian = "little") {
                    values.len()
                } else {
                    0
                };
                assert_eq!(shared_bytes, want, "{} in {encoding:?}", msg.name());
            }
        }
        // A model that does not match its announcement is refused, as by `send`.
        let (msg, _) = every_message(&model, Encoding::F32)
            .into_iter()
            .find(|(_, p)| p.is_some())
            .unwrap();
        let other = Arc::new(normal_params(
            Arc::new(ParamSpec::new([("w", vec![5])]).unwrap()),
            3,
            0.1,
        ));
        let mut w = WireWriter::new(Vec::<u8>::new(), cfg());
        assert!(w.encode_chunks(&msg, Some(&other)).is_err());
        assert!(w.encode_chunks(&msg, None).is_err());
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn every_message_round_trips_async_over_a_duplex() {
        let model = small_model(6, 0.1);
        let list = every_message(&model, Encoding::F32);
        let (a, b) = tokio::io::duplex(300);
        let to_send = list.clone();
        let writer = tokio::spawn(async move {
            let mut w = WireWriter::new(a, cfg());
            for (m, p) in &to_send {
                w.send(m, p.as_ref()).await.unwrap();
            }
            w.bytes_written()
        });
        let mut r = WireReader::new(b, cfg());
        let mut got = Vec::new();
        while let Some(rec) = r.recv(Some(model.spec())).await.unwrap() {
            got.push(rec);
        }
        let written = writer.await.unwrap();
        assert_eq!(r.bytes_read(), written);
        assert_eq!(written as usize, encode_all(&list, &cfg()).0.len());
        assert_eq!(got.len(), list.len());
        for ((m, p), rec) in list.iter().zip(got) {
            assert_eq!(&rec.message, m);
            assert_eq!(rec.params.as_ref(), p.as_ref());
        }
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn model_is_read_in_place_into_an_existing_buffer() {
        let model = small_model(7, 0.1);
        let (msg, p) = every_message(&model, Encoding::F16).swap_remove(4);
        let mut buf = Vec::new();
        encode_message(&msg, p.as_ref(), &cfg(), &mut buf).unwrap();
        let mut r = WireReader::new(&buf[..], cfg());
        let m = r.recv_message().await.unwrap().unwrap();
        let mut target = Params::zeros(model.spec().clone());
        let ptr = target.data().as_ptr();
        r.recv_params_into(m.model().unwrap(), &mut target)
            .await
            .unwrap();
        assert_eq!(target.data().as_ptr(), ptr, "no reallocation");
        let err = target.l2_distance(&model).unwrap();
        assert!(err > 0.0 && err < 1e-3, "{err}");
        assert!(r.recv_message().await.unwrap().is_none(), "clean end");
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn hostile_sizes_are_refused_before_allocation() {
        // A frame header claiming 4 GiB, with no payload behind it.
        let head = FrameHeader::new(FrameKind::Update, u32::MAX).encode();
        let mut r = WireReader::new(&head[..], cfg());
        let err = r.recv(None).await.unwrap_err();
        assert!(matches!(err, WireError::TooLarge { .. }), "{err}");
        // A valid RoundStart announcing a trillion values, no tensors behind it.
        let model = small_model(11, 0.1);
        let (Message::RoundStart(mut rs), _) = every_message(&model, Encoding::F32).swap_remove(3)
        else {
            panic!("fixture order changed")
        };
        rs.model.elements = 1 << 40;
        let mut buf = Vec::new();
        encode_control_frame(&rs.into(), cfg().max_frame_bytes, &mut buf).unwrap();
        let mut r = WireReader::new(&buf[..], cfg());
        let err = r.recv(None).await.unwrap_err();
        assert!(
            matches!(err, WireError::TooLarge { len, .. } if len == 1 << 40),
            "{err}"
        );
    }

    #[test]
    fn sending_requires_exactly_the_announced_model() {
        let model = small_model(8, 0.1);
        let list = every_message(&model, Encoding::F32);
        let mut out = Vec::new();
        let (round_start, _) = &list[3];
        let err = encode_message(round_start, None, &cfg(), &mut out).unwrap_err();
        assert!(
            err.to_string().contains("RoundStart announces a model"),
            "{err}"
        );
        let err = encode_message(&list[8].0, Some(&model), &cfg(), &mut out).unwrap_err();
        assert!(
            err.to_string().contains("Heartbeat carries no model"),
            "{err}"
        );
        let other = small_model(8, 0.1);
        let wrong = Params::zeros(Arc::new(ParamSpec::new([("x", vec![3])]).unwrap()));
        let err = encode_message(round_start, Some(&wrong), &cfg(), &mut out).unwrap_err();
        assert!(matches!(err, WireError::Model(_)), "{err}");
        assert!(encode_message(round_start, Some(&other), &cfg(), &mut out).is_ok());
    }

    #[test]
    fn oversized_control_message_is_refused_on_both_sides() {
        let big = Message::Error(ErrorMsg {
            code: ErrorCode::Internal,
            text: "x".repeat(5000),
        });
        let small = WireConfig {
            max_frame_bytes: 4096,
            ..cfg()
        };
        let mut out = Vec::new();
        let err = encode_message(&big, None, &small, &mut out).unwrap_err();
        assert!(matches!(err, WireError::TooLarge { .. }), "{err}");
        assert!(out.is_empty(), "nothing half-written");
        encode_message(&big, None, &cfg(), &mut out).unwrap();
        let err = decode_all(&out, &small).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::TooLarge {
                    len: 5004,
                    max: 4096,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn every_truncation_is_an_error_and_boundaries_are_not() {
        let model = small_model(9, 0.1);
        let (buf, ends) = encode_all(&every_message(&model, Encoding::Int8), &cfg());
        for cut in 0..buf.len() {
            let res = decode_all(&buf[..cut], &cfg());
            if cut == 0 || ends.contains(&cut) {
                assert_eq!(
                    res.unwrap().len(),
                    ends.iter().filter(|&&e| e <= cut).count()
                );
            } else {
                assert!(res.is_err(), "cut at {cut} decoded");
            }
        }
    }

    #[test]
    fn unknown_reserved_and_misplaced_kinds_are_errors() {
        let mut buf = Vec::new();
        frame::encode_frame(FrameKind::Heartbeat, 0, &[1], &mut buf).unwrap();
        let mut unknown = buf.clone();
        unknown[3] = 0x1f;
        let err = decode_all(&unknown, &cfg()).unwrap_err();
        assert!(
            matches!(err, WireError::UnknownKind { kind: 0x1f }),
            "{err}"
        );
        let reply = ErrorMsg::from_wire(&err);
        assert_eq!(reply.code, ErrorCode::Protocol);
        assert!(
            reply.text.contains("unknown frame kind 0x1f"),
            "{}",
            reply.text
        );
        let mut secagg = buf.clone();
        secagg[3] = 0x44;
        let err = decode_all(&secagg, &cfg()).unwrap_err();
        assert!(
            err.to_string().contains("unsupported")
                && err.to_string().contains("secure aggregation")
        );
        let mut stray = Vec::new();
        frame::encode_frame(FrameKind::TensorData, 0, &[0; 4], &mut stray).unwrap();
        let err = decode_all(&stray, &cfg()).unwrap_err();
        assert!(
            err.to_string().contains("expected a control message"),
            "{err}"
        );
        // A payload of the wrong type for its kind.
        let mut wrong = Vec::new();
        frame::encode_frame(FrameKind::Welcome, 0, &[1], &mut wrong).unwrap();
        let err = decode_all(&wrong, &cfg()).unwrap_err();
        assert!(err.to_string().contains("Welcome"), "{err}");
    }

    #[test]
    fn version_mismatch_in_frames_and_in_negotiation() {
        let mut buf = Vec::new();
        encode_message(&Heartbeat { seq: 1 }.into(), None, &cfg(), &mut buf).unwrap();
        buf[2] = FRAME_VERSION + 1;
        let err = decode_all(&buf, &cfg()).unwrap_err();
        assert!(err.to_string().contains("version mismatch"), "{err}");
        assert_eq!(negotiate_version(&[1, 2, 3], &[1, 2]).unwrap(), 2);
        let err = negotiate_version(&[2, 3], SUPPORTED_VERSIONS).unwrap_err();
        assert!(matches!(err, WireError::NoCommonVersion { .. }), "{err}");
        assert!(err.to_string().contains("[2, 3]"));
    }

    #[test]
    fn newer_peers_codes_and_encodings_still_decode() {
        // A Hello as a newer build would send it: encoding code 7 unknown here.
        #[derive(serde::Serialize)]
        struct FutureCaps {
            encodings: Vec<u8>,
            device: String,
            extensions: Extensions,
        }
        #[derive(serde::Serialize)]
        struct FutureHello {
            protocol_versions: Vec<u16>,
            software_version: String,
            capabilities: FutureCaps,
        }
        let payload = crate::codec::encode_control(&FutureHello {
            protocol_versions: vec![1, 2],
            software_version: "fedcrime-client 9".into(),
            capabilities: FutureCaps {
                encodings: vec![7, 1, 2],
                device: "cpu".into(),
                extensions: Extensions::new(),
            },
        })
        .unwrap();
        let Message::Hello(h) =
            Message::decode_payload(FrameKind::Hello, &payload, 1 << 16).unwrap()
        else {
            panic!("not a hello")
        };
        assert_eq!(
            h.capabilities.encodings,
            vec![Encoding::F16, Encoding::Int8]
        );
        assert_eq!(
            negotiate_version(&h.protocol_versions, SUPPORTED_VERSIONS).unwrap(),
            1
        );

        let reject = Message::Reject(Reject {
            code: RejectCode::Other(999),
            text: "quota".into(),
        });
        let mut buf = Vec::new();
        encode_message(&reject, None, &cfg(), &mut buf).unwrap();
        assert_eq!(decode_all(&buf, &cfg()).unwrap()[0].message, reject);
        assert_eq!(RejectCode::from(2), RejectCode::NotAuthorized);
        assert_eq!(u16::from(ByeReason::IdleTimeout), 4);
        assert_eq!(ErrorCode::from(42), ErrorCode::Other(42));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary bytes: an error or messages, never a panic.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            decode_untrusted(&bytes);
        }

        /// Arbitrary bytes behind a valid header of any kind, so the payload
        /// decoders (bincode, tensor headers) see them.
        #[test]
        fn random_payloads_never_panic(
            kind in 0usize..FrameKind::ALL.len(),
            flags in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..512),
            tail in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut buf = Vec::new();
            frame::encode_frame(FrameKind::ALL[kind], flags, &payload, &mut buf).unwrap();
            buf.extend_from_slice(&tail);
            decode_untrusted(&buf);
        }

        /// A valid stream with bytes overwritten: never a panic, and an
        /// untouched stream still decodes.
        #[test]
        fn mutated_streams_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let model = small_model(10, 0.1);
            let (mut buf, _) = encode_all(&every_message(&model, Encoding::Int8), &FUZZ_CONFIG);
            for (at, v) in &edits {
                let i = at.index(buf.len());
                buf[i] = *v;
            }
            let end = if edits.is_empty() { buf.len() } else { cut.index(buf.len() + 1) };
            let decoded = decode_untrusted(&buf[..end]);
            if edits.is_empty() {
                prop_assert_eq!(decoded, 14 + 1);
            }
        }
    }
}
