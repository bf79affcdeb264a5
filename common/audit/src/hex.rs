//! Lowercase hex, the text form of every hash, key and signature in the
//! audit files.
//!
//! [`encode`] writes lowercase; [`decode_array`] accepts only lowercase, so
//! that each value has exactly one text form.

use std::fmt::Write as _;

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The lowercase hex text of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Decodes exactly `N` bytes from lowercase hex text (`2 * N` characters).
///
/// The error says what is wrong: the length, or the first character that is
/// not a lowercase hex digit and its position.
pub fn decode_array<const N: usize>(text: &str) -> Result<[u8; N], String> {
    let bytes = text.as_bytes();
    if bytes.len() != 2 * N {
        return Err(format!(
            "expected {} lowercase hex characters, found {}",
            2 * N,
            text.chars().count()
        ));
    }
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = nibble(pair[0]);
        let lo = nibble(pair[1]);
        match (hi, lo) {
            (Some(hi), Some(lo)) => out[i] = (hi << 4) | lo,
            (None, _) => return Err(bad_char(text, 2 * i)),
            (_, None) => return Err(bad_char(text, 2 * i + 1)),
        }
    }
    Ok(out)
}

fn bad_char(text: &str, byte_pos: usize) -> String {
    // `byte_pos` may fall inside a multi-byte character: name the character
    // that contains it.
    let (pos, c) = text
        .char_indices()
        .take_while(|&(i, _)| i <= byte_pos)
        .last()
        .unwrap_or((0, '?'));
    let mut s = String::new();
    let _ = write!(
        s,
        "character {:?} at position {pos} is not a lowercase hex digit",
        c
    );
    s
}

/// Serde helpers: a fixed-size byte array as a lowercase hex string.
pub(crate) mod serde_array {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        v: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        super::decode_array::<N>(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde helpers: a list of 32-byte hashes as a list of lowercase hex strings.
pub(crate) mod serde_hashes {
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::merkle::Hash;

    pub(crate) fn serialize<S: Serializer>(v: &[Hash], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for h in v {
            seq.serialize_element(&super::encode(h))?;
        }
        seq.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash>, D::Error> {
        let texts = Vec::<std::borrow::Cow<'de, str>>::deserialize(d)?;
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                super::decode_array::<32>(t)
                    .map_err(|e| serde::de::Error::custom(format!("hash {i}: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let bytes = [0x00, 0x01, 0x7f, 0x80, 0xab, 0xff];
        let text = encode(&bytes);
        assert_eq!(text, "00017f80abff");
        assert_eq!(decode_array::<6>(&text).unwrap(), bytes);
    }

    #[test]
    fn rejects_bad_text() {
        assert!(decode_array::<2>("abc").unwrap_err().contains("expected 4"));
        let e = decode_array::<2>("abCd").unwrap_err();
        assert!(e.contains("'C'") && e.contains("position 2"), "{e}");
        let e = decode_array::<2>("ab\u{e9}").unwrap_err();
        assert!(e.contains("position 2"), "{e}");
        assert!(decode_array::<1>("g0").is_err());
    }
}
