//! Length-prefixed frames: the unit of everything on a fedcrime stream.
//!
//! ```text
//!  0      2        3      4        6          8                12
//!  +------+--------+------+--------+----------+----------------+---------
//!  | "FC" | version| kind | flags  | reserved | payload length | payload
//!  |      |  (u8)  | (u8) |(u16 LE)| (0, u16) |    (u32 LE)    | ...
//!  +------+--------+------+--------+----------+----------------+---------
//! ```
//!
//! The header is checked in that order (magic, version, reserved, kind, flags,
//! length) and the length is compared with the configured maximum before a
//! single payload byte is read or allocated. Flags: the low byte holds
//! *critical* bits (a receiver that does not know one refuses the frame), the
//! high byte bits a receiver may ignore. The only flag defined today is
//! `FLAG_FINAL`, set on the last data frame of a tensor.
//!
//! Kinds are listed in [`FrameKind`] and, for the roadmap, in [`reserved`].

#[cfg(feature = "tokio")]
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::{Result, WireError};

/// The two bytes every frame starts with.
pub(crate) const MAGIC: [u8; 2] = *b"FC";
/// The frame format version this build reads and writes.
pub(crate) const FRAME_VERSION: u8 = 1;
/// Size of a frame header in bytes.
pub const HEADER_LEN: usize = 12;
/// Flag on a [`FrameKind::TensorData`] frame: the tensor's last chunk.
pub(crate) const FLAG_FINAL: u16 = 0x0001;
/// Flag bits a receiver must understand (the low byte).
pub(crate) const CRITICAL_FLAGS: u16 = 0x00ff;

/// The kinds of frame this build understands. The numbers are the kind byte.
///
/// | kind | frame |
/// |------|-------|
/// | `0x00` | never valid (catches zeroed buffers) |
/// | `0x01`..`0x0a` | control messages, see [`super::message`] |
/// | `0x0b`..`0x1f` | free for future control messages |
/// | `0x20`, `0x21` | tensor header / tensor data, see [`super::tensor`] |
/// | `0x40`, `0x41` | secure aggregation, server to station / station to server |
/// | `0x42`..`0x57` | reserved for the roadmap, see [`reserved`] |
/// | `0x58` | station to server: the signature over the update that follows |
/// | `0x59`..`0x5f` | reserved for update signatures |
/// | `0x80`..`0xff` | extensions, only after negotiation in Hello/Welcome |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Station → server: the opening message.
    Hello = 0x01,
    /// Server → station: accepted.
    Welcome = 0x02,
    /// Server → station: refused.
    Reject = 0x03,
    /// Server → station: train on this model; tensor frames follow.
    RoundStart = 0x04,
    /// Station → server: the trained update; tensor frames follow.
    Update = 0x05,
    /// Server → station: evaluate a model (tensor frames may follow).
    EvaluateRequest = 0x06,
    /// Station → server: evaluation result.
    EvaluateResult = 0x07,
    /// Either way: liveness.
    Heartbeat = 0x08,
    /// Either way: a protocol or processing error.
    Error = 0x09,
    /// Either way: orderly goodbye.
    Bye = 0x0a,
    /// Name, dtype and shape of the next tensor.
    TensorHeader = 0x20,
    /// A chunk of raw little-endian tensor data.
    TensorData = 0x21,
    /// Server → station: a secure-aggregation protocol message.
    SecAggDown = 0x40,
    /// Station → server: a secure-aggregation protocol message.
    SecAggUp = 0x41,
    /// Station → server: the Ed25519 signature over the update that follows.
    UpdateSignature = 0x58,
}

/// Kind numbers reserved for the roadmap. Decoding one today fails with
/// [`WireError::Unsupported`] naming the feature, so an old peer meeting a new
/// one says clearly what is missing instead of "garbage".
pub mod reserved {
    /// Secure aggregation: a masked update streamed as tensor frames
    /// (models too large for one frame).
    pub(crate) const SECAGG_MASKED_UPDATE: u8 = 0x42;
    /// Differential privacy metadata (clipping norm, noise multiplier, spent budget).
    pub(crate) const DP_METADATA: u8 = 0x50;
    /// First kind of the extension range (`0x80..=0xff`).
    pub(crate) const EXTENSION_FIRST: u8 = 0x80;

    /// What a reserved kind is for, or `None` when the kind is not reserved.
    pub fn describe(kind: u8) -> Option<&'static str> {
        Some(match kind {
            SECAGG_MASKED_UPDATE => "secure aggregation: streamed masked update (reserved)",
            0x43..=0x4f => "secure aggregation (reserved range)",
            DP_METADATA => "differential privacy metadata (reserved)",
            0x51..=0x57 => "differential privacy (reserved range)",
            0x59..=0x5f => "update signatures (reserved range)",
            EXTENSION_FIRST..=0xff => "extension kind that was not negotiated",
            _ => return None,
        })
    }
}

impl FrameKind {
    /// Every kind this build understands.
    pub const ALL: [FrameKind; 15] = [
        FrameKind::Hello,
        FrameKind::Welcome,
        FrameKind::Reject,
        FrameKind::RoundStart,
        FrameKind::Update,
        FrameKind::EvaluateRequest,
        FrameKind::EvaluateResult,
        FrameKind::Heartbeat,
        FrameKind::Error,
        FrameKind::Bye,
        FrameKind::TensorHeader,
        FrameKind::TensorData,
        FrameKind::SecAggDown,
        FrameKind::SecAggUp,
        FrameKind::UpdateSignature,
    ];

    /// Parses a kind byte: unknown and reserved kinds are errors.
    pub(crate) fn from_u8(kind: u8) -> Result<Self> {
        FrameKind::ALL
            .iter()
            .copied()
            .find(|k| *k as u8 == kind)
            .ok_or_else(|| match reserved::describe(kind) {
                Some(what) => WireError::Unsupported { kind, what },
                None => WireError::UnknownKind { kind },
            })
    }

    /// The kind byte.
    pub(crate) fn as_u8(self) -> u8 {
        self as u8
    }

    /// A name for logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Hello => "Hello",
            FrameKind::Welcome => "Welcome",
            FrameKind::Reject => "Reject",
            FrameKind::RoundStart => "RoundStart",
            FrameKind::Update => "Update",
            FrameKind::EvaluateRequest => "EvaluateRequest",
            FrameKind::EvaluateResult => "EvaluateResult",
            FrameKind::Heartbeat => "Heartbeat",
            FrameKind::Error => "Error",
            FrameKind::Bye => "Bye",
            FrameKind::TensorHeader => "TensorHeader",
            FrameKind::TensorData => "TensorData",
            FrameKind::SecAggDown => "SecAggDown",
            FrameKind::SecAggUp => "SecAggUp",
            FrameKind::UpdateSignature => "UpdateSignature",
        }
    }

    /// Whether the kind carries a control message (as opposed to tensor data).
    pub fn is_control(self) -> bool {
        !matches!(self, FrameKind::TensorHeader | FrameKind::TensorData)
    }

    /// The critical flags this kind may carry.
    fn known_flags(self) -> u16 {
        match self {
            FrameKind::TensorData => FLAG_FINAL,
            _ => 0,
        }
    }
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the payload is.
    pub kind: FrameKind,
    /// Flag bits (see the module documentation).
    pub flags: u16,
    /// Payload length in bytes.
    pub len: u32,
}

impl FrameHeader {
    /// A header with no flags.
    pub fn new(kind: FrameKind, len: u32) -> Self {
        Self {
            kind,
            flags: 0,
            len,
        }
    }

    /// The 12 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&MAGIC);
        b[2] = FRAME_VERSION;
        b[3] = self.kind.as_u8();
        b[4..6].copy_from_slice(&self.flags.to_le_bytes());
        // b[6..8]: reserved, zero.
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Parses and checks 12 header bytes; `max_frame` is the largest payload
    /// accepted. Nothing is allocated.
    pub fn decode(b: &[u8; HEADER_LEN], max_frame: u32) -> Result<Self> {
        let magic = [b[0], b[1]];
        if magic != MAGIC {
            return Err(WireError::BadMagic {
                got: magic,
                expected: MAGIC,
            });
        }
        if b[2] != FRAME_VERSION {
            return Err(WireError::VersionMismatch {
                got: b[2],
                supported: FRAME_VERSION,
            });
        }
        let reserved = u16::from_le_bytes([b[6], b[7]]);
        if reserved != 0 {
            return Err(WireError::ReservedBits { got: reserved });
        }
        let kind = FrameKind::from_u8(b[3])?;
        let flags = u16::from_le_bytes([b[4], b[5]]);
        let unknown = flags & CRITICAL_FLAGS & !kind.known_flags();
        if unknown != 0 {
            return Err(WireError::UnknownFlags {
                kind: kind.name(),
                flags: unknown,
            });
        }
        let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if len > max_frame {
            return Err(WireError::TooLarge {
                what: format!("{} frame", kind.name()),
                len: len.into(),
                max: max_frame.into(),
            });
        }
        Ok(Self { kind, flags, len })
    }

    /// Whether [`FLAG_FINAL`] is set.
    pub(crate) fn is_final(&self) -> bool {
        self.flags & FLAG_FINAL != 0
    }
}

/// A frame borrowed from an input buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    /// The header.
    pub header: FrameHeader,
    /// The payload.
    pub payload: &'a [u8],
}

/// The payload length as the header's `u32`, or an error naming the kind.
pub(crate) fn payload_len(kind: FrameKind, len: usize) -> Result<u32> {
    u32::try_from(len).map_err(|_| WireError::TooLarge {
        what: format!("{} frame", kind.name()),
        len: len as u64,
        max: u32::MAX.into(),
    })
}

/// Appends one frame to `out`.
pub fn encode_frame(kind: FrameKind, flags: u16, payload: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let len = payload_len(kind, payload.len())?;
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&FrameHeader { kind, flags, len }.encode());
    out.extend_from_slice(payload);
    Ok(())
}

/// Parses a frame header at the start of `buf`.
pub(crate) fn decode_header(buf: &[u8], max_frame: u32) -> Result<FrameHeader> {
    let head: &[u8; HEADER_LEN] = buf
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| WireError::Truncated {
            what: "frame header".into(),
            needed: HEADER_LEN as u64,
            available: buf.len() as u64,
        })?;
    FrameHeader::decode(head, max_frame)
}

/// Decodes the frame at the start of `buf`, returning it and the number of
/// bytes it took.
pub(crate) fn decode_frame(buf: &[u8], max_frame: u32) -> Result<(Frame<'_>, usize)> {
    let header = decode_header(buf, max_frame)?;
    let end = HEADER_LEN + header.len as usize;
    let payload = buf
        .get(HEADER_LEN..end)
        .ok_or_else(|| WireError::Truncated {
            what: format!("{} frame payload", header.kind.name()),
            needed: header.len.into(),
            available: (buf.len() - HEADER_LEN) as u64,
        })?;
    Ok((Frame { header, payload }, end))
}

#[cfg(feature = "tokio")]
/// Fills `buf` from `r`, returning how many bytes were read before the
/// stream ended (`buf.len()` when it did not).
pub(crate) async fn read_full<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    buf: &mut [u8],
    context: &'static str,
) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => return Err(WireError::Io { context, source }),
        }
    }
    Ok(filled)
}

#[cfg(feature = "tokio")]
/// Reads exactly `buf.len()` bytes or fails with [`WireError::Truncated`].
pub(crate) async fn read_exact_or_truncated<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    buf: &mut [u8],
    what: impl FnOnce() -> String,
) -> Result<()> {
    let got = read_full(r, buf, "reading a frame payload").await?;
    if got < buf.len() {
        return Err(WireError::Truncated {
            what: what(),
            needed: buf.len() as u64,
            available: got as u64,
        });
    }
    Ok(())
}

#[cfg(feature = "tokio")]
/// Reads and checks a frame header. `Ok(None)` means the stream ended cleanly
/// before the first byte of a frame.
pub(crate) async fn read_header<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    max_frame: u32,
) -> Result<Option<FrameHeader>> {
    let mut head = [0u8; HEADER_LEN];
    let got = read_full(r, &mut head, "reading a frame header").await?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER_LEN {
        return Err(WireError::Truncated {
            what: "frame header".into(),
            needed: HEADER_LEN as u64,
            available: got as u64,
        });
    }
    FrameHeader::decode(&head, max_frame).map(Some)
}

#[cfg(feature = "tokio")]
/// Reads one whole frame, its payload into `buf` (resized only after the
/// length passed the `max_frame` check). `Ok(None)` on a clean end of stream.
pub(crate) async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    max_frame: u32,
    buf: &mut Vec<u8>,
) -> Result<Option<FrameHeader>> {
    let Some(header) = read_header(r, max_frame).await? else {
        return Ok(None);
    };
    buf.clear();
    buf.resize(header.len as usize, 0);
    read_exact_or_truncated(r, buf, || format!("{} frame payload", header.kind.name())).await?;
    Ok(Some(header))
}

#[cfg(feature = "tokio")]
/// Writes one frame (header and payload, without copying the payload).
pub async fn write_frame<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    kind: FrameKind,
    flags: u16,
    payload: &[u8],
) -> Result<()> {
    let len = payload_len(kind, payload.len())?;
    let head = FrameHeader { kind, flags, len }.encode();
    w.write_all(&head).await.map_err(|source| WireError::Io {
        context: "writing a frame header",
        source,
    })?;
    w.write_all(payload).await.map_err(|source| WireError::Io {
        context: "writing a frame payload",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        for kind in FrameKind::ALL {
            let h = FrameHeader {
                kind,
                flags: if kind == FrameKind::TensorData {
                    FLAG_FINAL
                } else {
                    0x0100
                },
                len: 77,
            };
            assert_eq!(FrameHeader::decode(&h.encode(), 1000).unwrap(), h);
            assert_eq!(FrameKind::from_u8(kind.as_u8()).unwrap(), kind);
        }
    }

    #[test]
    fn every_kind_byte_is_known_reserved_or_unknown() {
        for b in 0..=255u8 {
            match FrameKind::from_u8(b) {
                Ok(k) => assert_eq!(k.as_u8(), b),
                Err(WireError::Unsupported { kind, what }) => {
                    assert_eq!(kind, b);
                    assert!(what.contains("reserved") || what.contains("extension"));
                }
                Err(WireError::UnknownKind { kind }) => assert_eq!(kind, b),
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        let err = FrameKind::from_u8(reserved::SECAGG_MASKED_UPDATE).unwrap_err();
        assert!(err.to_string().contains("masked update"), "{err}");
        assert!(matches!(
            FrameKind::from_u8(0),
            Err(WireError::UnknownKind { kind: 0 })
        ));
    }

    #[test]
    fn oversize_is_refused_from_the_header() {
        let h = FrameHeader::new(FrameKind::Hello, 1 << 30).encode();
        let err = FrameHeader::decode(&h, 1 << 20).unwrap_err();
        assert!(
            matches!(err, WireError::TooLarge { len, max, .. } if len == 1 << 30 && max == 1 << 20),
            "{err}"
        );
    }

    #[test]
    fn bad_magic_version_reserved_and_flags() {
        let good = FrameHeader::new(FrameKind::Bye, 0).encode();
        let mut b = good;
        b[0] = b'X';
        assert!(matches!(
            FrameHeader::decode(&b, 10),
            Err(WireError::BadMagic { .. })
        ));
        let mut b = good;
        b[2] = 2;
        assert!(matches!(
            FrameHeader::decode(&b, 10),
            Err(WireError::VersionMismatch {
                got: 2,
                supported: 1
            })
        ));
        let mut b = good;
        b[7] = 1;
        assert!(matches!(
            FrameHeader::decode(&b, 10),
            Err(WireError::ReservedBits { .. })
        ));
        let mut b = good;
        b[4] = 0x01; // FINAL is critical and not valid on Bye
        assert!(matches!(
            FrameHeader::decode(&b, 10),
            Err(WireError::UnknownFlags {
                kind: "Bye",
                flags: 1
            })
        ));
        let mut b = good;
        b[5] = 0x80; // non-critical: ignored
        assert!(FrameHeader::decode(&b, 10).is_ok());
    }

    #[test]
    fn frames_decode_from_slices_and_truncation_is_reported() {
        let mut buf = Vec::new();
        encode_frame(FrameKind::Heartbeat, 0, b"abc", &mut buf).unwrap();
        encode_frame(FrameKind::Bye, 0, b"", &mut buf).unwrap();
        let (f, used) = decode_frame(&buf, 100).unwrap();
        assert_eq!(
            (f.header.kind, f.payload, used),
            (FrameKind::Heartbeat, &b"abc"[..], 15)
        );
        let (f, used2) = decode_frame(&buf[used..], 100).unwrap();
        assert_eq!((f.header.kind, used + used2), (FrameKind::Bye, buf.len()));
        for cut in 0..15 {
            let err = decode_frame(&buf[..cut], 100).unwrap_err();
            assert!(
                matches!(err, WireError::Truncated { .. }),
                "cut {cut}: {err}"
            );
        }
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn async_frames_clean_eof_and_truncation() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            write_frame(&mut a, FrameKind::Heartbeat, 0, &[7u8; 100])
                .await
                .unwrap();
            a.write_all(&FrameHeader::new(FrameKind::Bye, 5).encode())
                .await
                .unwrap();
            a.write_all(b"ab").await.unwrap();
        });
        let mut buf = Vec::new();
        let h = read_frame(&mut b, 1000, &mut buf).await.unwrap().unwrap();
        assert_eq!((h.kind, buf.len()), (FrameKind::Heartbeat, 100));
        writer.await.unwrap();
        let err = read_frame(&mut b, 1000, &mut buf).await.unwrap_err();
        assert!(
            matches!(
                err,
                WireError::Truncated {
                    needed: 5,
                    available: 2,
                    ..
                }
            ),
            "{err}"
        );
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty, 1000, &mut buf)
            .await
            .unwrap()
            .is_none());
        let mut partial: &[u8] = &[b'F', b'C', 1];
        let err = read_header(&mut partial, 1000).await.unwrap_err();
        assert!(
            matches!(err, WireError::Truncated { available: 3, .. }),
            "{err}"
        );
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn async_oversize_is_refused_before_reading_the_payload() {
        // The header claims 4 GiB; the reader must refuse without allocating
        // or waiting for the payload (none is ever sent).
        let head = FrameHeader::new(FrameKind::Update, u32::MAX).encode();
        let mut r: &[u8] = &head;
        let mut buf = Vec::new();
        let err = read_frame(&mut r, 1 << 20, &mut buf).await.unwrap_err();
        assert!(matches!(err, WireError::TooLarge { .. }), "{err}");
        assert_eq!(buf.capacity(), 0);
    }
}
