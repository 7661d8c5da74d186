//! TLS termination: a hot-swappable certificate store and the SNI resolver rustls asks.
//!
//! The store is replaced whole (arc-swap): a handshake sees either the old or the new set,
//! never a mix, and an established TLS session keeps the certificate it was started with.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
// aws-lc-rs, not ring, for every handshake the proxy serves: on the benchmark host its X25519
// key generation and agreement took 33-40 µs against ring's 63-74 µs (with ring's ADX code),
// about a sixth of a full handshake's CPU; ECDSA P-256 signing costs the same in both
// (BENCHMARKS.md, 2026-12-06 late). The keys it loads sign with the same provider.
use rustls::crypto::aws_lc_rs as provider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate for {names:?}: no certificate in the chain")]
    EmptyChain { names: Vec<String> },
    #[error("certificate for {names:?}: unusable private key: {source}")]
    Key {
        names: Vec<String>,
        source: rustls::Error,
    },
}

/// One certificate and the names it serves, with what operators want to see about it.
#[derive(Clone)]
pub struct CertEntry {
    pub names: Vec<String>,
    pub key: Arc<CertifiedKey>,
    /// Unix seconds.
    pub not_after: i64,
    /// Where it came from: "local-ca", "acme", "file:/path", ...
    pub source: String,
    /// The issuer's common name (or whole name), for status output; empty when unknown.
    pub issuer: String,
}

impl fmt::Debug for CertEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertEntry")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .field("source", &self.source)
            .finish()
    }
}

impl CertEntry {
    pub fn new(
        names: Vec<String>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        not_after: i64,
        source: impl Into<String>,
    ) -> Result<CertEntry, CertError> {
        if chain.is_empty() {
            return Err(CertError::EmptyChain { names });
        }
        let signing =
            provider::sign::any_supported_type(&key).map_err(|source| CertError::Key {
                names: names.clone(),
                source,
            })?;
        Ok(CertEntry {
            names,
            key: Arc::new(CertifiedKey::new(chain, signing)),
            not_after,
            source: source.into(),
            issuer: String::new(),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CertStatus {
    pub names: Vec<String>,
    pub not_after: i64,
    pub source: String,
    pub issuer: String,
    pub default: bool,
}

#[derive(Default)]
struct CertSet {
    entries: Vec<CertEntry>,
    exact: HashMap<String, usize>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, usize>,
    default: Option<usize>,
}

impl CertSet {
    fn find(&self, name: &str) -> Option<&CertEntry> {
        let i = self.exact.get(name).or_else(|| {
            // A certificate wildcard covers exactly one label (RFC 6125).
            let (_, suffix) = name.split_once('.')?;
            self.wildcard.get(suffix)
        })?;
        Some(&self.entries[*i])
    }
}

/// The certificates this node serves, looked up by SNI name.
#[derive(Default)]
pub struct CertStore {
    set: ArcSwap<CertSet>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("entries", &self.set.load().entries)
            .finish()
    }
}

impl CertStore {
    /// Replaces the whole set atomically. When several entries claim a name, the one that
    /// expires last wins. `default`, an index into `entries`, answers names nobody claims.
    pub fn replace(&self, entries: Vec<CertEntry>, default: Option<usize>) {
        let mut set = CertSet {
            default: default.filter(|&d| d < entries.len()),
            ..CertSet::default()
        };
        for (i, entry) in entries.iter().enumerate() {
            for name in &entry.names {
                let name = name.to_ascii_lowercase();
                let map = match name.strip_prefix("*.") {
                    Some(suffix) => (&mut set.wildcard, suffix.to_string()),
                    None => (&mut set.exact, name),
                };
                let (map, key) = map;
                match map.get(&key) {
                    Some(&j) if entries[j].not_after >= entry.not_after => {}
                    _ => {
                        map.insert(key, i);
                    }
                }
            }
        }
        set.entries = entries;
        self.set.store(Arc::new(set));
    }

    /// Whether a certificate is configured for this exact host (the default does not count).
    pub fn covers(&self, host: &str) -> bool {
        self.set.load().find(host).is_some()
    }

    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let set = self.set.load();
        let found = sni.and_then(|n| set.find(&n.to_ascii_lowercase()));
        found
            .or_else(|| set.default.map(|d| &set.entries[d]))
            .map(|e| e.key.clone())
    }

    pub fn entries(&self) -> Vec<CertEntry> {
        self.set.load().entries.clone()
    }

    pub fn status(&self) -> Vec<CertStatus> {
        let set = self.set.load();
        set.entries
            .iter()
            .enumerate()
            .map(|(i, e)| CertStatus {
                names: e.names.clone(),
                not_after: e.not_after,
                source: e.source.clone(),
                issuer: e.issuer.clone(),
                default: set.default == Some(i),
            })
            .collect()
    }
}

/// rustls' view of the store. Returning `None` makes rustls abort the handshake with an alert.
#[derive(Debug)]
struct StoreResolver(Arc<CertStore>);

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.lookup(hello.server_name())
    }
}

/// How the access log names a TLS version.
pub(crate) fn version_name(v: rustls::ProtocolVersion) -> &'static str {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "TLS?",
    }
}

/// The server configuration of every TLS listener: TLS 1.2 and 1.3 only (the provider's suites:
/// every TLS 1.2 one is ECDHE with an AEAD cipher), ALPN h2 then http/1.1,
/// certificates from `store`. Built once; the store changes underneath it. Without
/// `resumption`, no session is kept and no ticket sent: every handshake is a full one.
pub fn server_config(store: Arc<CertStore>, resumption: bool) -> Arc<ServerConfig> {
    let mut provider = provider::default_provider();
    // AES-128-GCM first, as Mozilla's server-side recommendation and Go's crypto/tls have it:
    // its suites hash with SHA-256, which runs on the CPU's SHA extensions where there are
    // any (with ring, the AES-256 suites' SHA-384 was 8.5% of a full handshake's CPU on the
    // benchmark host, BENCHMARKS.md). A stable sort: TLS 1.3 suites stay ahead of TLS 1.2
    // ones, and each keeps the provider's order otherwise.
    provider.cipher_suites.sort_by_key(|s| {
        use rustls::CipherSuite as S;
        let aes128 = matches!(
            s.suite(),
            S::TLS13_AES_128_GCM_SHA256
                | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        );
        (matches!(s, rustls::SupportedCipherSuite::Tls12(_)), !aes128)
    });
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(StoreResolver(store)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's order (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305; all AEAD with
    // ephemeral ECDHE), not the client's.
    cfg.ignore_client_order = true;
    if !resumption {
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
    }
    Arc::new(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(names: &[&str], not_after: i64) -> CertEntry {
        entry_with(names, not_after, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    fn entry_with(
        names: &[&str],
        not_after: i64,
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> CertEntry {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let cert = rcgen::CertificateParams::new(names.clone())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        CertEntry::new(
            names,
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            not_after,
            "test",
        )
        .unwrap()
    }

    #[test]
    fn only_tls12_and_13_with_forward_secret_aead_suites_in_server_order() {
        use rustls::{CipherSuite as S, SupportedCipherSuite};
        let cfg = server_config(Arc::new(CertStore::default()), true);
        assert!(cfg.ignore_client_order);
        let suites: Vec<S> = cfg
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        for s in &cfg.crypto_provider().cipher_suites {
            if let SupportedCipherSuite::Tls12(t) = s {
                let name = format!("{:?}", t.common.suite);
                assert!(
                    name.starts_with("TLS_ECDHE_")
                        && (name.contains("_GCM_") || name.contains("CHACHA20_POLY1305")),
                    "{name}"
                );
            }
        }
        assert_eq!(
            &suites[..3],
            [
                S::TLS13_AES_128_GCM_SHA256,
                S::TLS13_AES_256_GCM_SHA384,
                S::TLS13_CHACHA20_POLY1305_SHA256
            ]
        );
        assert_eq!(
            &suites[3..5],
            [
                S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            ]
        );
        assert_eq!(suites.len(), 9, "{suites:?}");
    }

    #[test]
    fn lookup_exact_wildcard_default() {
        let store = CertStore::default();
        let a = entry(&["a.example.com"], 10);
        let w = entry(&["*.example.com"], 10);
        let d = entry(&["default.test"], 10);
        store.replace(vec![a.clone(), w.clone(), d.clone()], None);
        let is = |got: Option<Arc<CertifiedKey>>, e: &CertEntry| Arc::ptr_eq(&got.unwrap(), &e.key);
        assert!(is(store.lookup(Some("A.example.com")), &a));
        assert!(is(store.lookup(Some("b.example.com")), &w));
        // One label only for certificate wildcards.
        assert!(store.lookup(Some("x.b.example.com")).is_none());
        assert!(store.lookup(None).is_none());
        assert!(store.covers("b.example.com") && !store.covers("example.com"));

        store.replace(vec![a, w, d.clone()], Some(2));
        assert!(is(store.lookup(Some("unknown.org")), &d));
        assert!(is(store.lookup(None), &d));
        assert!(!store.covers("unknown.org"));
        assert_eq!(store.status().iter().filter(|s| s.default).count(), 1);
    }

    #[test]
    fn later_expiry_wins_a_shared_name() {
        let store = CertStore::default();
        let old = entry(&["a.test"], 100);
        let new = entry(&["a.test"], 200);
        store.replace(vec![new.clone(), old.clone()], None);
        assert!(Arc::ptr_eq(
            &store.lookup(Some("a.test")).unwrap(),
            &new.key
        ));
        store.replace(vec![old, new.clone()], None);
        assert!(Arc::ptr_eq(
            &store.lookup(Some("a.test")).unwrap(),
            &new.key
        ));
    }

    /// Moves TLS records between the two sides until neither has anything to send.
    fn pump(c: &mut rustls::ClientConnection, s: &mut rustls::ServerConnection) {
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            let mut back = Vec::new();
            s.write_tls(&mut back).unwrap();
            c.read_tls(&mut back.as_slice()).unwrap();
            c.process_new_packets().unwrap();
            if buf.is_empty() && back.is_empty() && !c.is_handshaking() {
                return;
            }
        }
        panic!("handshake did not finish");
    }

    /// A store holding one certificate for `name` with a key of `alg`, and roots that trust it.
    fn one_cert(
        name: &str,
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> (Arc<CertStore>, rustls::RootCertStore) {
        let store = Arc::new(CertStore::default());
        let e = entry_with(&[name], 10, alg);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(e.key.cert[0].clone()).unwrap();
        store.replace(vec![e], None);
        (store, roots)
    }

    /// Two connections of one client: the second resumes unless resumption is off.
    fn second_handshake(resumption: bool) -> rustls::HandshakeKind {
        let (store, roots) = one_cert("r.test", &rcgen::PKCS_ECDSA_P256_SHA256);
        let server = server_config(store, resumption);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let name = rustls::pki_types::ServerName::try_from("r.test").unwrap();
            let mut c = rustls::ClientConnection::new(client.clone(), name).unwrap();
            let mut s = rustls::ServerConnection::new(server.clone()).unwrap();
            pump(&mut c, &mut s);
            kinds.push(c.handshake_kind().unwrap());
        }
        assert_eq!(kinds[0], rustls::HandshakeKind::Full);
        kinds[1]
    }

    /// The server's provider (aws-lc-rs) against a client on the other one (ring), and a
    /// post-quantum hybrid key exchange, which only aws-lc-rs has, against itself: every key
    /// type the store loads signs, and every key exchange group is agreed.
    #[test]
    fn every_key_type_and_key_exchange_group_completes_a_handshake() {
        use rustls::crypto::{aws_lc_rs, ring, CryptoProvider};
        let keys = [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ];
        let groups = [
            (ring::default_provider(), ring::kx_group::X25519),
            (ring::default_provider(), ring::kx_group::SECP256R1),
            (ring::default_provider(), ring::kx_group::SECP384R1),
            (
                aws_lc_rs::default_provider(),
                aws_lc_rs::kx_group::X25519MLKEM768,
            ),
        ];
        for alg in keys {
            for (provider, group) in &groups {
                let (store, roots) = one_cert("k.test", alg);
                let provider = CryptoProvider {
                    kx_groups: vec![*group],
                    ..provider.clone()
                };
                let client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let name = rustls::pki_types::ServerName::try_from("k.test").unwrap();
                let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
                let mut s = rustls::ServerConnection::new(server_config(store, false)).unwrap();
                pump(&mut c, &mut s);
                let agreed = s.negotiated_key_exchange_group().map(|g| g.name());
                assert_eq!(agreed, Some(group.name()), "{alg:?}");
            }
        }
    }

    #[test]
    fn session_resumption_can_be_turned_off() {
        assert_eq!(second_handshake(true), rustls::HandshakeKind::Resumed);
        assert_eq!(second_handshake(false), rustls::HandshakeKind::Full);
    }

    #[test]
    fn rejects_empty_chain_and_bad_key() {
        let err = CertEntry::new(
            vec!["x.test".into()],
            vec![],
            PrivateKeyDer::Pkcs8(vec![1, 2, 3].into()),
            0,
            "t",
        )
        .unwrap_err();
        assert!(err.to_string().contains("x.test"), "{err}");
        let err = CertEntry::new(
            vec!["y.test".into()],
            vec![CertificateDer::from(vec![1u8])],
            PrivateKeyDer::Pkcs8(vec![1, 2, 3].into()),
            0,
            "t",
        )
        .unwrap_err();
        assert!(err.to_string().contains("y.test"), "{err}");
    }
}
