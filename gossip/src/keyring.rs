//! The cluster key and the keyring that seals every gossip packet.
//!
//! Packets are sealed with XChaCha20-Poly1305 under the first key of the ring; any key of the
//! ring opens them. Rotation works as in Serf: add the new key everywhere, make it first
//! everywhere, then remove the old one. The 24-byte nonce is random per packet, which is safe
//! for XChaCha at any realistic packet count and needs no state across restarts.
//!
//! ```text
//! sealed packet = nonce (24 bytes) | ciphertext | tag (16 bytes)
//! ```

use std::fmt;

use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a sealed packet adds to its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("cluster key is not valid base64: {0}")]
    Base64(String),
    #[error("cluster key must be {KEY_LEN} bytes, got {0}")]
    Length(usize),
    #[error("keyring is empty: at least one cluster key is needed")]
    Empty,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("packet of {0} bytes is too short to be sealed")]
    TooShort(usize),
    #[error("packet does not authenticate under any cluster key")]
    Unauthenticated,
}

/// One 32-byte cluster key. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; KEY_LEN]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// A new random key, as `meshctl keygen` prints it.
    pub fn generate() -> ClusterKey {
        ClusterKey(XChaCha20Poly1305::generate_key(&mut OsRng).into())
    }

    /// Parses standard base64 (surrounding whitespace ignored, as in a key file).
    pub fn from_base64(s: &str) -> Result<ClusterKey, KeyError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| KeyError::Base64(e.to_string()))?;
        let key: [u8; KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Length(bytes.len()))?;
        Ok(ClusterKey(key))
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// Raw key material, for deriving other secrets (the cluster CA, later).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// Keys accepted for opening; the first also seals.
pub struct Keyring {
    keys: Vec<(ClusterKey, XChaCha20Poly1305)>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keyring({} keys)", self.keys.len())
    }
}

impl Keyring {
    pub fn new(keys: Vec<ClusterKey>) -> Result<Keyring, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Keyring {
            keys: keys
                .into_iter()
                .map(|k| {
                    let cipher = XChaCha20Poly1305::new(&k.0.into());
                    (k, cipher)
                })
                .collect(),
        })
    }

    pub fn primary(&self) -> &ClusterKey {
        &self.keys[0].0
    }

    /// Every key of the ring, the sending one first.
    pub fn keys(&self) -> impl Iterator<Item = &ClusterKey> {
        self.keys.iter().map(|(k, _)| k)
    }

    /// Seals `plaintext`; `aad` is authenticated but not sent (e.g. the protocol name).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self.keys[0]
            .1
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption of an in-memory buffer does not fail");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a packet sealed under any key of the ring.
    pub fn open(&self, packet: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpenError> {
        if packet.len() < OVERHEAD {
            return Err(OpenError::TooShort(packet.len()));
        }
        let (nonce, sealed) = packet.split_at(NONCE_LEN);
        let nonce = XNonce::from_slice(nonce);
        self.keys
            .iter()
            .find_map(|(_, c)| c.decrypt(nonce, Payload { msg: sealed, aad }).ok())
            .ok_or(OpenError::Unauthenticated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_and_errors() {
        let k = ClusterKey::generate();
        let text = k.to_base64();
        assert_eq!(ClusterKey::from_base64(&format!("  {text}\n")).unwrap(), k);
        assert_eq!(format!("{k:?}"), "ClusterKey(..)");
        assert!(matches!(
            ClusterKey::from_base64("not base64!"),
            Err(KeyError::Base64(_))
        ));
        assert_eq!(ClusterKey::from_base64("AAAA"), Err(KeyError::Length(3)));
        assert_eq!(Keyring::new(vec![]).unwrap_err(), KeyError::Empty);
    }

    #[test]
    fn seal_open_and_tamper() {
        let ring = Keyring::new(vec![ClusterKey::generate()]).unwrap();
        let sealed = ring.seal(b"hello mesh", b"gossip");
        assert_eq!(sealed.len(), 10 + OVERHEAD);
        assert_eq!(ring.open(&sealed, b"gossip").unwrap(), b"hello mesh");
        // Same plaintext, fresh nonce: packets are not linkable.
        assert_ne!(ring.seal(b"hello mesh", b"gossip"), sealed);
        assert_eq!(ring.open(&sealed, b"quic"), Err(OpenError::Unauthenticated));
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x01;
            assert_eq!(
                ring.open(&t, b"gossip"),
                Err(OpenError::Unauthenticated),
                "byte {i}"
            );
        }
        assert_eq!(
            ring.open(&sealed[..OVERHEAD - 1], b"gossip"),
            Err(OpenError::TooShort(39))
        );
    }

    #[test]
    fn rotation_without_downtime() {
        let (old, new) = (ClusterKey::generate(), ClusterKey::generate());
        let before = Keyring::new(vec![old.clone()]).unwrap();
        // Step 1: every node accepts the new key, still sending with the old one.
        let step1 = Keyring::new(vec![old.clone(), new.clone()]).unwrap();
        // Step 2: every node sends with the new key.
        let step2 = Keyring::new(vec![new.clone(), old.clone()]).unwrap();
        // Step 3: the old key is gone.
        let after = Keyring::new(vec![new.clone()]).unwrap();
        let aad = b"gossip";
        // Nodes one step apart always understand each other.
        for (a, b) in [(&before, &step1), (&step1, &step2), (&step2, &after)] {
            assert!(b.open(&a.seal(b"x", aad), aad).is_ok());
            assert!(a.open(&b.seal(b"x", aad), aad).is_ok());
        }
        // Two steps apart they need not, and a stranger never does.
        assert!(after.open(&before.seal(b"x", aad), aad).is_err());
        let stranger = Keyring::new(vec![ClusterKey::generate()]).unwrap();
        assert!(after.open(&stranger.seal(b"x", aad), aad).is_err());
    }
}
