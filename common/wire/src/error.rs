//! The one error type of the wire layer.

/// `Result` with a [`WireError`].
pub type Result<T, E = WireError> = std::result::Result<T, E>;

/// Anything that can go wrong while framing, encoding or decoding protocol
/// traffic. Every variant says what was wrong and where (frame kind, message,
/// tensor name), so a refusal can be logged and the peer told why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The underlying stream failed.
    #[error("i/o error while {context}: {source}")]
    Io {
        /// What was being read or written.
        context: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The input ended in the middle of something.
    #[error("truncated {what}: needed {needed} bytes, {available} available")]
    Truncated {
        /// What was being read (frame header, payload of a kind, ...).
        what: String,
        /// Bytes needed.
        needed: u64,
        /// Bytes there were (for a stream: bytes read before it ended).
        available: u64,
    },
    /// A frame does not start with the protocol magic.
    #[error("bad frame magic {got:02x?}, expected {expected:02x?} (not a fedcrime peer?)")]
    BadMagic {
        /// The bytes found.
        got: [u8; 2],
        /// The magic expected.
        expected: [u8; 2],
    },
    /// The frame format version is not the one this build speaks.
    #[error(
        "frame version mismatch: peer sent version {got}, this build speaks version {supported}"
    )]
    VersionMismatch {
        /// The version in the frame header.
        got: u8,
        /// The version this build speaks.
        supported: u8,
    },
    /// The reserved bytes of a frame header are not zero.
    #[error("reserved frame header bytes are {got:#06x}, must be zero")]
    ReservedBits {
        /// The reserved field's value.
        got: u16,
    },
    /// A frame kind no version of the protocol defines.
    #[error("unknown frame kind {kind:#04x}")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// A frame kind that is reserved for a later feature, or an extension
    /// that was not negotiated.
    #[error("unsupported frame kind {kind:#04x} ({what}): not implemented by this build")]
    Unsupported {
        /// The kind byte.
        kind: u8,
        /// What the kind is reserved for.
        what: &'static str,
    },
    /// Flag bits this build does not understand and must not ignore.
    #[error("unknown critical flags {flags:#06x} on a {kind} frame")]
    UnknownFlags {
        /// The frame kind's name.
        kind: &'static str,
        /// The offending flag bits.
        flags: u16,
    },
    /// A frame (or a declared model) is larger than the configured maximum.
    /// Raised from the header alone, before anything is allocated.
    #[error("{what} of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its declared size.
        len: u64,
        /// The configured maximum.
        max: u64,
    },
    /// A control message's payload could not be decoded.
    #[error("cannot decode {message} message: {reason}")]
    Decode {
        /// The message type.
        message: &'static str,
        /// Why.
        reason: String,
    },
    /// A value could not be encoded.
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A frame of the wrong kind for the point in the conversation.
    #[error("unexpected {got} frame: expected {expected}")]
    UnexpectedFrame {
        /// What was expected.
        expected: &'static str,
        /// The kind that came.
        got: &'static str,
    },
    /// A tensor's header or data is malformed or does not match the expected layout.
    #[error("tensor {tensor}: {reason}")]
    Tensor {
        /// The tensor's name (or `#index` when the name is not known yet).
        tensor: String,
        /// Why.
        reason: String,
    },
    /// A model (header or parameters) is inconsistent as a whole.
    #[error("model mismatch: {0}")]
    Model(String),
    /// The two sides have no protocol version in common.
    #[error(
        "no common protocol version: peer offers {offered:?}, this build supports {supported:?}"
    )]
    NoCommonVersion {
        /// Versions the peer offered.
        offered: Vec<u16>,
        /// Versions this build supports.
        supported: Vec<u16>,
    },
}

impl WireError {
    /// Whether the error is the peer's fault (malformed or hostile input) as
    /// opposed to a failure of the local stream.
    pub fn is_protocol_violation(&self) -> bool {
        !matches!(self, WireError::Io { .. } | WireError::Encode { .. })
    }
}
