//! Anti-entropy over QUIC: two members compare digests and send each other what differs, so a
//! node that missed broadcasts (loss, a partition, a late join) converges.
//!
//! One push-pull round on one bidirectional stream:
//! ```text
//! A -> B  Offer { digest of A }
//! B -> A  Reply { updates A lacks, digest of B }
//! A -> B  Push  { updates B lacks }
//! ```
//! Frames are `u32 length | envelope`, the length checked against the limit before anything is
//! read. Links are mutually authenticated with certificates attested by the cluster key
//! ([`crate::attest`]); a peer without the key fails the handshake.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, RecvStream, SendStream};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::attest::{self, ClusterVerifier};
use crate::envelope::{self, MAX_PAYLOAD};
use crate::keyring::Keyring;
use crate::state::{ClusterState, Digest, Update};

const KIND_OFFER: u8 = 3;
const KIND_REPLY: u8 = 4;
const KIND_PUSH: u8 = 5;
const ALPN: &[u8] = b"edgemesh-sync/1";
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize)]
struct Offer {
    digest: Digest,
}

#[derive(Serialize, Deserialize)]
struct Reply {
    updates: Vec<Update>,
    digest: Digest,
}

#[derive(Serialize, Deserialize)]
struct Push {
    updates: Vec<Update>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("stream: {0}")]
    Stream(String),
    #[error("message: {0}")]
    Message(#[from] envelope::EnvelopeError),
    #[error("round timed out")]
    Timeout,
}

#[derive(Debug, Default)]
pub struct SyncCounters {
    pub rounds_ok: AtomicU64,
    pub rounds_failed: AtomicU64,
    /// Updates received that changed our state.
    pub updates_applied: AtomicU64,
}

pub struct SyncEndpoint {
    endpoint: Endpoint,
    state: Arc<Mutex<ClusterState>>,
    pub counters: Arc<SyncCounters>,
}

fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl SyncEndpoint {
    /// Binds `bind` (UDP) and answers sync rounds from attested peers.
    pub fn start(
        bind: SocketAddr,
        node_id: &str,
        keyring: Arc<Keyring>,
        state: Arc<Mutex<ClusterState>>,
    ) -> std::io::Result<SyncEndpoint> {
        let (chain, key) = attest::node_cert(&keyring, node_id).map_err(std::io::Error::other)?;
        let provider = tls_provider();
        let verifier = Arc::new(ClusterVerifier::new(keyring, provider.clone()));
        let tls13 = [&rustls::version::TLS13];
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&tls13)
            .map_err(std::io::Error::other)?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(std::io::Error::other)?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&tls13)
            .map_err(std::io::Error::other)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain, key)
            .map_err(std::io::Error::other)?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        let server = QuicServerConfig::try_from(server).map_err(std::io::Error::other)?;
        let client = QuicClientConfig::try_from(client).map_err(std::io::Error::other)?;
        let mut endpoint =
            Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(server)), bind)?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(client)));
        let counters = Arc::new(SyncCounters::default());
        tokio::spawn(serve(endpoint.clone(), state.clone(), counters.clone()));
        Ok(SyncEndpoint {
            endpoint,
            state,
            counters,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// One push-pull round with `peer`. Returns how many updates changed our state.
    pub async fn sync_with(&self, peer: SocketAddr) -> Result<usize, SyncError> {
        let r = tokio::time::timeout(ROUND_TIMEOUT, self.round(peer))
            .await
            .unwrap_or(Err(SyncError::Timeout));
        let c = &self.counters;
        match &r {
            Ok(n) => {
                c.rounds_ok.fetch_add(1, Ordering::Relaxed);
                c.updates_applied.fetch_add(*n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                c.rounds_failed.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, error = %e, "sync round failed");
            }
        }
        r
    }

    async fn round(&self, peer: SocketAddr) -> Result<usize, SyncError> {
        let conn = self
            .endpoint
            .connect(peer, attest::SERVER_NAME)
            .map_err(|e| SyncError::Connect(e.to_string()))?
            .await
            .map_err(|e| SyncError::Connect(e.to_string()))?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| SyncError::Stream(e.to_string()))?;
        let digest = self.state.lock().expect("state lock").digest();
        write(&mut send, KIND_OFFER, &Offer { digest }).await?;
        let reply: Reply = read(&mut recv, KIND_REPLY).await?;
        let (applied, push) = {
            let mut state = self.state.lock().expect("state lock");
            let applied = apply_all(&mut state, reply.updates);
            (applied, state.newer_than(&reply.digest))
        };
        write(&mut send, KIND_PUSH, &Push { updates: push }).await?;
        send.finish()
            .map_err(|e| SyncError::Stream(e.to_string()))?;
        // Wait for the peer to read everything before the connection goes away.
        let _ = recv.read_to_end(16).await;
        conn.close(0u32.into(), b"done");
        Ok(applied)
    }

    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"leaving");
    }
}

fn apply_all(state: &mut ClusterState, updates: Vec<Update>) -> usize {
    updates
        .into_iter()
        .filter(|u| state.apply(u.clone()) == crate::state::Applied::Changed)
        .count()
}

async fn serve(endpoint: Endpoint, state: Arc<Mutex<ClusterState>>, counters: Arc<SyncCounters>) {
    while let Some(incoming) = endpoint.accept().await {
        let (state, counters) = (state.clone(), counters.clone());
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    // Includes peers whose certificate is not attested by our key.
                    debug!(error = %e, "sync handshake refused");
                    counters.rounds_failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            while let Ok((send, recv)) = conn.accept_bi().await {
                let r = tokio::time::timeout(ROUND_TIMEOUT, respond(send, recv, &state))
                    .await
                    .unwrap_or(Err(SyncError::Timeout));
                match r {
                    Ok(n) => {
                        counters.rounds_ok.fetch_add(1, Ordering::Relaxed);
                        counters
                            .updates_applied
                            .fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        counters.rounds_failed.fetch_add(1, Ordering::Relaxed);
                        debug!(peer = %conn.remote_address(), error = %e, "sync round failed");
                    }
                }
            }
        });
    }
}

async fn respond(
    mut send: SendStream,
    mut recv: RecvStream,
    state: &Mutex<ClusterState>,
) -> Result<usize, SyncError> {
    let offer: Offer = read(&mut recv, KIND_OFFER).await?;
    let reply = {
        let state = state.lock().expect("state lock");
        Reply {
            updates: state.newer_than(&offer.digest),
            digest: state.digest(),
        }
    };
    write(&mut send, KIND_REPLY, &reply).await?;
    let push: Push = read(&mut recv, KIND_PUSH).await?;
    let applied = apply_all(&mut state.lock().expect("state lock"), push.updates);
    send.finish()
        .map_err(|e| SyncError::Stream(e.to_string()))?;
    Ok(applied)
}

async fn write<T: Serialize>(send: &mut SendStream, kind: u8, msg: &T) -> Result<(), SyncError> {
    let bytes = envelope::encode(kind, msg, MAX_PAYLOAD + envelope::HEADER_LEN)?;
    send.write_all(&(bytes.len() as u32).to_be_bytes())
        .await
        .map_err(|e| SyncError::Stream(e.to_string()))?;
    send.write_all(&bytes)
        .await
        .map_err(|e| SyncError::Stream(e.to_string()))
}

async fn read<T: DeserializeOwned>(recv: &mut RecvStream, kind: u8) -> Result<T, SyncError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len)
        .await
        .map_err(|e| SyncError::Stream(e.to_string()))?;
    let len = u32::from_be_bytes(len) as usize;
    let max = MAX_PAYLOAD + envelope::HEADER_LEN;
    if len > max {
        return Err(envelope::EnvelopeError::TooLarge { len, max }.into());
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf)
        .await
        .map_err(|e| SyncError::Stream(e.to_string()))?;
    Ok(envelope::decode(&buf, kind, max)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::ClusterKey;

    fn endpoint(id: &str, key: &ClusterKey) -> SyncEndpoint {
        let ring = Arc::new(Keyring::new(vec![key.clone()]).unwrap());
        let state = Arc::new(Mutex::new(ClusterState::new(id)));
        SyncEndpoint::start("127.0.0.1:0".parse().unwrap(), id, ring, state).unwrap()
    }

    #[tokio::test]
    async fn one_round_makes_both_sides_equal() {
        let key = ClusterKey::generate();
        let (a, b) = (endpoint("a", &key), endpoint("b", &key));
        {
            let mut sa = a.state.lock().unwrap();
            for i in 0..200 {
                sa.set(&format!("a/{i}"), vec![7; 100], 1_000 + i);
            }
            sa.set_as_leader("topology/web", b"v1".to_vec(), 3, 5_000)
                .unwrap();
            let mut sb = b.state.lock().unwrap();
            sb.set("b/only", b"x".to_vec(), 2_000);
        }
        let applied = a.sync_with(b.local_addr().unwrap()).await.unwrap();
        assert_eq!(applied, 1, "a learned b/only");
        // The responder applies the push after answering; give it a moment.
        for _ in 0..100 {
            if b.state.lock().unwrap().len() == 202 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            a.state.lock().unwrap().entries(),
            b.state.lock().unwrap().entries()
        );
        assert_eq!(b.state.lock().unwrap().max_term(), 3);
        assert_eq!(a.counters.rounds_ok.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_peer_without_the_key_cannot_sync_either_way() {
        let (a, stranger) = (
            endpoint("a", &ClusterKey::generate()),
            endpoint("x", &ClusterKey::generate()),
        );
        stranger
            .state
            .lock()
            .unwrap()
            .set("injected", b"evil".to_vec(), 1);
        a.state.lock().unwrap().set("secret", b"s".to_vec(), 1);
        assert!(stranger.sync_with(a.local_addr().unwrap()).await.is_err());
        assert!(a.sync_with(stranger.local_addr().unwrap()).await.is_err());
        assert!(a.state.lock().unwrap().get("injected").is_none());
        assert!(stranger.state.lock().unwrap().get("secret").is_none());
        assert!(a.counters.rounds_failed.load(Ordering::Relaxed) >= 1);
    }
}
