//! The versioned envelope every wire message travels in.
//!
//! ```text
//! "EM" | version: u8 | kind: u8 | payload length: u32 BE | payload (bincode 2, standard config)
//! ```
//!
//! Everything that can be checked without decoding is checked first: the size against the
//! caller's limit, the magic, the version and the declared length. The decoder then runs with
//! bincode's own limit, so a forged length prefix inside the payload cannot make it allocate.

use serde::de::DeserializeOwned;
use serde::Serialize;

const MAGIC: [u8; 2] = *b"EM";
/// The wire version this build writes and reads.
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 8;
/// Largest payload any message may have (full-state sync over QUIC); datagrams use less.
pub const MAX_PAYLOAD: usize = 16 << 20;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_PAYLOAD>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<MAX_PAYLOAD>()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("message of {0} bytes is shorter than the envelope header")]
    Truncated(usize),
    #[error("not an edgemesh message (bad magic)")]
    BadMagic,
    #[error("wire version {0} is not supported (this build speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("message kind {got} where {expected} was expected")]
    WrongKind { got: u8, expected: u8 },
    #[error("declared payload length {declared} but {actual} bytes follow")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("payload does not decode: {0}")]
    Decode(String),
    #[error("payload does not encode: {0}")]
    Encode(String),
}

/// Encodes `msg` as a message of `kind`. Fails when the result would exceed `max` bytes.
pub fn encode<T: Serialize>(kind: u8, msg: &T, max: usize) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&[0; 4]);
    bincode::serde::encode_into_std_write(msg, &mut out, config())
        .map_err(|e| EnvelopeError::Encode(e.to_string()))?;
    let len = out.len() - HEADER_LEN;
    if out.len() > max || len > MAX_PAYLOAD {
        return Err(EnvelopeError::TooLarge {
            len: out.len(),
            max: max.min(MAX_PAYLOAD + HEADER_LEN),
        });
    }
    out[4..8].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// The kind of a message, after the header checks but before decoding the payload.
pub fn peek_kind(bytes: &[u8], max: usize) -> Result<u8, EnvelopeError> {
    check_header(bytes, max).map(|_| bytes[3])
}

/// Decodes a message of `kind` that is at most `max` bytes long.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], kind: u8, max: usize) -> Result<T, EnvelopeError> {
    let payload = check_header(bytes, max)?;
    if bytes[3] != kind {
        return Err(EnvelopeError::WrongKind {
            got: bytes[3],
            expected: kind,
        });
    }
    let (msg, used) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| EnvelopeError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(EnvelopeError::Decode(format!(
            "{} trailing bytes after the message",
            payload.len() - used
        )));
    }
    Ok(msg)
}

fn check_header(bytes: &[u8], max: usize) -> Result<&[u8], EnvelopeError> {
    if bytes.len() > max {
        return Err(EnvelopeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(EnvelopeError::Truncated(bytes.len()));
    }
    if bytes[..2] != MAGIC {
        return Err(EnvelopeError::BadMagic);
    }
    if bytes[2] != VERSION {
        return Err(EnvelopeError::UnsupportedVersion(bytes[2]));
    }
    let declared = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    let payload = &bytes[HEADER_LEN..];
    if declared != payload.len() {
        return Err(EnvelopeError::LengthMismatch {
            declared,
            actual: payload.len(),
        });
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Ping {
        from: String,
        seq: u64,
        tags: Vec<String>,
    }

    fn ping() -> Ping {
        Ping {
            from: "node-1".into(),
            seq: 42,
            tags: vec!["a".into(), "b".into()],
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(7, &ping(), 1400).unwrap();
        assert_eq!(&bytes[..4], b"EM\x01\x07");
        assert_eq!(peek_kind(&bytes, 1400), Ok(7));
        assert_eq!(decode::<Ping>(&bytes, 7, 1400).unwrap(), ping());
    }

    #[test]
    fn header_errors_are_named() {
        let good = encode(7, &ping(), 1400).unwrap();
        assert_eq!(
            decode::<Ping>(&good, 7, 10),
            Err(EnvelopeError::TooLarge {
                len: good.len(),
                max: 10
            })
        );
        assert_eq!(
            decode::<Ping>(&good[..5], 7, 1400),
            Err(EnvelopeError::Truncated(5))
        );
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(decode::<Ping>(&bad, 7, 1400), Err(EnvelopeError::BadMagic));
        let mut bad = good.clone();
        bad[2] = 9;
        assert_eq!(
            decode::<Ping>(&bad, 7, 1400),
            Err(EnvelopeError::UnsupportedVersion(9))
        );
        assert_eq!(
            decode::<Ping>(&good, 8, 1400),
            Err(EnvelopeError::WrongKind {
                got: 7,
                expected: 8
            })
        );
        let mut extra = good.clone();
        extra.push(0);
        assert!(matches!(
            decode::<Ping>(&extra, 7, 1400),
            Err(EnvelopeError::LengthMismatch { .. })
        ));
        assert!(matches!(
            encode(7, &vec![0u8; 2000], 1400),
            Err(EnvelopeError::TooLarge { .. })
        ));
    }

    #[test]
    fn forged_inner_length_does_not_allocate_or_panic() {
        // A Vec<String> claiming u64::MAX elements, inside a well-formed envelope.
        let mut payload = vec![6, b'n', b'o', b'd', b'e', b'-', b'1', 42];
        payload.extend_from_slice(&[0xFF; 9]);
        let mut bytes = b"EM\x01\x07".to_vec();
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&payload);
        assert!(matches!(
            decode::<Ping>(&bytes, 7, 1400),
            Err(EnvelopeError::Decode(_))
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap stand-in for the fuzz target: every prefix and bit flip of a valid message.
        let good = encode(7, &ping(), 1400).unwrap();
        for cut in 0..good.len() {
            assert!(
                decode::<Ping>(&good[..cut], 7, 1400).is_err(),
                "cut at {cut}"
            );
        }
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut b = good.clone();
                b[i] ^= 1 << bit;
                let r = decode::<Ping>(&b, 7, 1400);
                // Any change to the header is caught; a payload change decodes to something
                // else or fails, but never panics.
                if i < HEADER_LEN {
                    assert!(r.is_err(), "flip of bit {bit} in header byte {i} accepted");
                }
            }
        }
    }
}
