//! Messages with their models, over byte slices and async streams.
//!
//! A message that announces a model ([`Message::model`]) is followed by that
//! model's tensor frames; [`WireWriter::send`] writes both and
//! [`WireReader::recv`] reads both. The sync functions do the same over byte
//! slices ([`encode_message`], [`decode_message`], [`decode_all`]).

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::error::{Result, WireError};
use super::frame::{self, FrameHeader, HEADER_LEN};
use super::message::Message;
use super::tensor::{self, ModelDecoder, ModelHeader};
use super::WireConfig;
use crate::params::{ParamSpec, Params};

/// A message and, when it announced one, its model.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    /// The message.
    pub message: Message,
    /// The model that followed it.
    pub params: Option<Params>,
}

/// Checks that `model` is given exactly when `msg` announces one, and matches it.
fn check_model<'p>(msg: &Message, model: Option<&'p Params>) -> Result<Option<(ModelHeader, &'p Params)>> {
    match (msg.model(), model) {
        (Some(h), Some(p)) => {
            h.check_matches(p)?;
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
    let model = check_model(msg, model)?;
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
const KEEP_BUF: usize = 64 * 1024;

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

    /// Reads the model `header` announced into `params` in place (the layout
    /// must match; no allocation).
    pub async fn recv_params_into(&mut self, header: &ModelHeader, params: &mut Params) -> Result<()> {
        let mut dec = ModelDecoder::into_params(*header, params)?;
        let read = dec.read_from(&mut self.inner, self.cfg.max_frame_bytes).await?;
        dec.finish()?;
        self.bytes_read += read;
        Ok(())
    }

    /// Reads the next message and, when it announces one, its model.
    pub async fn recv(&mut self, expected: Option<&Arc<ParamSpec>>) -> Result<Option<Received>> {
        let Some(message) = self.recv_message().await? else {
            return Ok(None);
        };
        let params = match message.model() {
            Some(h) => Some(self.recv_params(&h.clone(), expected).await?),
            None => None,
        };
        Ok(Some(Received { message, params }))
    }
}

/// Writes messages (and their models) to an async byte stream, e.g. a QUIC
/// `SendStream`, counting the bytes.
#[derive(Debug)]
pub struct WireWriter<W> {
    inner: W,
    cfg: WireConfig,
    buf: Vec<u8>,
    bytes_written: u64,
}

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
        let model = check_model(msg, model)?;
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
            self.bytes_written +=
                tensor::write_params(&mut self.inner, params, header.encoding, self.cfg.chunk_bytes())
                    .await?;
        }
        self.flush().await
    }

    /// Flushes the stream.
    pub async fn flush(&mut self) -> Result<()> {
        self.inner.flush().await.map_err(|source| WireError::Io {
            context: "flushing",
            source,
        })
    }
}
