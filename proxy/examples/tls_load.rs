//! A load generator for full TLS 1.3 handshakes, for `bench/proxies.py`'s `tls_new` scenario:
//! CONNS connections at a time, each one a TCP connect, a full handshake (no resumption), one
//! `GET /` with `Connection: close` and the response read to the end, then the next.
//!
//! Why not wrk: wrk's side of a handshake (OpenSSL; X25519 and verifying the server's P-256
//! signature, which costs more than making it) costs about as much as a fast server's, so on
//! one load core it bounds every contender's rate. This client does the X25519 exchange and the
//! key schedule like any client, but does not check the server's certificate or signature: it
//! measures the server, whose side of every handshake is complete (key exchange, signing,
//! certificate, Finished). It offers TLS_AES_128_GCM_SHA256 first, the cheaper suite, to every
//! contender alike. Its crypto is aws-lc-rs, whose X25519 costs half of ring's: with ring, this
//! client on the one load core bounded a proxy running aws-lc-rs (near 6,000/s on the bench
//! host, the proxy at 88% of its core).
//!
//!   cargo run --release -p edgemesh-proxy --example tls_load -- ADDR HOST CONNS SECONDS
//!
//! Prints one JSON line: connections completed, errors, seconds, p50/p99 of a connection's
//! whole life (connect to last byte) in ms, the first error seen and the cipher suite the
//! server chose.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::aws_lc_rs as provider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Accepts whatever the server presents: see the module comment.
#[derive(Debug)]
struct Unchecked;

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA512,
        ]
    }
}

fn config() -> Result<ClientConfig, rustls::Error> {
    let suites = vec![
        provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
        provider::cipher_suite::TLS13_AES_256_GCM_SHA384,
        provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: suites,
        kx_groups: vec![provider::kx_group::X25519],
        ..provider::default_provider()
    };
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unchecked))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// One connection's whole life; its duration on success.
async fn one(
    addr: SocketAddr,
    connector: &TlsConnector,
    name: &ServerName<'static>,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> Result<(Duration, Option<rustls::CipherSuite>), String> {
    let start = Instant::now();
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let mut tls = connector
        .connect(name.clone(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let suite = tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
    tls.write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    buf.clear();
    match tls.read_to_end(buf).await {
        Ok(_) => {}
        // A server that closes without close_notify after a complete response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
        Err(e) => return Err(format!("read: {e}")),
    }
    if !buf.starts_with(b"HTTP/1.1 200") {
        let head = String::from_utf8_lossy(&buf[..buf.len().min(40)]).into_owned();
        return Err(format!("response: {head:?}"));
    }
    Ok((start.elapsed(), suite))
}

#[derive(Default)]
struct Tally {
    lives: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
    suite: Option<rustls::CipherSuite>,
}

impl Tally {
    fn merge(&mut self, mut other: Tally) {
        self.lives.append(&mut other.lives);
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.suite = self.suite.or(other.suite);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, host, conns, seconds] = &args[..] else {
        eprintln!("usage: tls_load ADDR HOST CONNS SECONDS");
        std::process::exit(2);
    };
    let fail = |what: &str, value: &str, e: &dyn std::fmt::Display| -> ! {
        eprintln!("tls_load: {what} {value:?}: {e}");
        std::process::exit(2)
    };
    let addr: SocketAddr = addr.parse().unwrap_or_else(|e| fail("ADDR", addr, &e));
    let name = ServerName::try_from(host.clone()).unwrap_or_else(|e| fail("HOST", host, &e));
    let conns: usize = conns.parse().unwrap_or_else(|e| fail("CONNS", conns, &e));
    let seconds: u64 = seconds
        .parse()
        .unwrap_or_else(|e| fail("SECONDS", seconds, &e));
    let connector = TlsConnector::from(Arc::new(
        config().unwrap_or_else(|e| fail("config", "", &e)),
    ));
    let request =
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail("runtime", "", &e));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tally = runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..conns {
            let (connector, name, request) = (connector.clone(), name.clone(), request.clone());
            tasks.spawn(async move {
                let mut buf = Vec::with_capacity(1024);
                let mut mine = Tally::default();
                while Instant::now() < deadline {
                    match one(addr, &connector, &name, &request, &mut buf).await {
                        Ok((life, suite)) => {
                            mine.lives.push(life);
                            mine.suite = mine.suite.or(suite);
                        }
                        Err(e) => {
                            mine.errors += 1;
                            mine.first_error.get_or_insert(e);
                            // A refused or reset connection returns at once: do not spin.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                mine
            });
        }
        let mut all = Tally::default();
        while let Some(done) = tasks.join_next().await {
            all.merge(done.unwrap_or_else(|e| fail("task", "", &e)));
        }
        all
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut lives = tally.lives;
    lives.sort_unstable();
    let pct = |p: f64| -> f64 {
        lives
            .get(((lives.len() as f64 * p) as usize).min(lives.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{}",
        serde_json::json!({
            "connections": lives.len(),
            "errors": tally.errors,
            "seconds": elapsed,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "first_error": tally.first_error,
            "suite": tally.suite.map(|s| format!("{s:?}")),
        })
    );
}
