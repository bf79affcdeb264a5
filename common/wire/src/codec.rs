//! The one place that touches bincode.
//!
//! Control messages (everything but tensor data) are serde types encoded with
//! bincode 2's standard configuration: little-endian, variable-length
//! integers. bincode is no longer maintained upstream; keeping every call
//! behind [`encode_control`] / `decode_control` makes it replaceable by
//! another serde format without touching the protocol code.
//!
//! ## Allocation bound
//! bincode trusts length prefixes: a string that claims to be 4 GiB long is
//! allocated before its bytes are read. Its *limit* (a const generic of the
//! configuration) caps the bytes a decode may claim. `decode_control` first
//! refuses payloads longer than the caller's `limit`, then decodes under the
//! smallest limit tier that is at least eight times the payload length (a
//! valid payload never claims more: the widest primitive we use, a `u64`,
//! takes at least one byte on the wire and claims eight). A hostile payload of
//! `n` bytes can therefore make the decoder allocate at most
//! `max(4 KiB, 128 n)` bytes, and never more than 16 times the tier it picked.

use bincode::config::{Config, Configuration};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{Result, WireError};

/// The configuration every message uses (limit added per decode).
const fn base_config() -> Configuration {
    bincode::config::standard()
}

/// The short name of a type, for error messages (`Hello`, not `fedcrime_wire::message::Hello`).
fn type_label<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

/// Encodes a control value to a new buffer.
pub fn encode_control<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_control_into(value, &mut out)?;
    Ok(out)
}

/// Appends the encoding of a control value to `out` (which keeps its capacity
/// between messages).
pub(crate) fn encode_control_into<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<usize> {
    bincode::serde::encode_into_std_write(value, out, base_config()).map_err(|e| {
        WireError::Encode {
            what: type_label::<T>(),
            reason: e.to_string(),
        }
    })
}

/// Decodes a control value that must fill `bytes` exactly, refusing payloads
/// over `limit` bytes and bounding what the decoder may allocate (see the
/// module documentation).
pub fn decode_control<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T> {
    let message = type_label::<T>();
    if bytes.len() > limit {
        return Err(WireError::TooLarge {
            what: format!("{message} payload"),
            len: bytes.len() as u64,
            max: limit as u64,
        });
    }
    let claims = bytes.len().saturating_mul(8);
    let (value, used) = if claims <= 1 << 12 {
        decode_with(bytes, base_config().with_limit::<{ 1 << 12 }>())
    } else if claims <= 1 << 16 {
        decode_with(bytes, base_config().with_limit::<{ 1 << 16 }>())
    } else if claims <= 1 << 20 {
        decode_with(bytes, base_config().with_limit::<{ 1 << 20 }>())
    } else if claims <= 1 << 24 {
        decode_with(bytes, base_config().with_limit::<{ 1 << 24 }>())
    } else if claims <= 1 << 28 {
        decode_with(bytes, base_config().with_limit::<{ 1 << 28 }>())
    } else {
        decode_with(bytes, base_config().with_limit::<{ 1 << 32 }>())
    }
    .map_err(|e| WireError::Decode {
        message,
        reason: describe(e),
    })?;
    if used != bytes.len() {
        return Err(WireError::Decode {
            message,
            reason: format!("{} trailing bytes after the message", bytes.len() - used),
        });
    }
    Ok(value)
}

fn decode_with<T: DeserializeOwned, C: Config>(
    bytes: &[u8],
    config: C,
) -> std::result::Result<(T, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, config)
}

fn describe(e: bincode::error::DecodeError) -> String {
    match e {
        bincode::error::DecodeError::LimitExceeded => {
            "a length prefix claims more data than the payload can hold".to_string()
        }
        bincode::error::DecodeError::UnexpectedEnd { additional } => {
            format!("payload ends {additional} byte(s) early")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        values: Vec<u64>,
        map: BTreeMap<String, f64>,
    }

    fn sample() -> Sample {
        Sample {
            name: "station-07".into(),
            values: (0..500).collect(),
            map: [("loss".to_string(), 0.25)].into_iter().collect(),
        }
    }

    #[test]
    fn round_trip_and_short_type_label() {
        let bytes = encode_control(&sample()).unwrap();
        let back: Sample = decode_control(&bytes, 1 << 20).unwrap();
        assert_eq!(back, sample());
        assert_eq!(type_label::<Sample>(), "Sample");
        assert_eq!(type_label::<Vec<u8>>(), "Vec");
    }

    #[test]
    fn payload_over_the_limit_is_refused_before_decoding() {
        let bytes = encode_control(&sample()).unwrap();
        let err = decode_control::<Sample>(&bytes, bytes.len() - 1).unwrap_err();
        assert!(matches!(err, WireError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn huge_length_prefix_is_refused_not_allocated() {
        // A string claiming 2^40 bytes followed by nothing: must fail on the
        // limit, not try to allocate a terabyte.
        let mut bytes = Vec::new();
        bytes.push(253u8); // varint marker for a u64
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let err = decode_control::<String>(&bytes, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("claims more data"), "{err}");
    }

    /// A secure-aggregation body goes as one byte string, which in bincode
    /// is the same bytes as serde's default `Vec<u8>` (a sequence of `u8`):
    /// peers of either encoding read each other.
    #[test]
    fn secagg_bodies_are_byte_strings_with_the_sequence_layout() {
        #[derive(Serialize)]
        struct AsSequence {
            round: u64,
            body: Vec<u8>,
        }
        let body: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let message = crate::SecAgg {
            round: 300,
            body: body.clone(),
        };
        let bytes = encode_control(&message).unwrap();
        assert_eq!(
            bytes,
            encode_control(&AsSequence { round: 300, body }).unwrap()
        );
        let back: crate::SecAgg = decode_control(&bytes, 1 << 20).unwrap();
        assert_eq!(back, message);
        let err = decode_control::<crate::SecAgg>(&bytes[..bytes.len() - 1], 1 << 20).unwrap_err();
        assert!(err.to_string().contains("SecAgg"), "{err}");
    }

    #[test]
    fn trailing_bytes_and_truncation_are_errors() {
        let mut bytes = encode_control(&sample()).unwrap();
        bytes.push(0);
        let err = decode_control::<Sample>(&bytes, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("1 trailing bytes"), "{err}");
        bytes.truncate(bytes.len() - 10);
        let err = decode_control::<Sample>(&bytes, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("Sample"), "{err}");
    }
}
