//! Test harness: a real `edgemesh` process with a config written from a template, real
//! backends on loopback, and clients (plain, TLS with the node's local CA, raw TCP).

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use edgemesh_acme::testing::free_port;

/// A running `edgemesh` process. Killed on drop.
pub struct Node {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub ports: HashMap<&'static str, u16>,
    env: Vec<(String, String)>,
}

impl Node {
    pub fn write_config(&self, template: &str, vars: &[(&str, String)]) {
        let text = render(template, self.dir.path(), &self.ports, vars);
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn port(&self, name: &str) -> u16 {
        self.ports[name]
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port(name)))
    }

    pub fn admin(&self) -> String {
        format!("127.0.0.1:{}", self.port("admin"))
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("data/ca/ca.pem")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("edgemesh.log")).unwrap_or_default()
    }

    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("edgemesh exited early ({status}):\n{}", self.log());
            }
            if let Ok((200, _)) = http_get(&self.admin(), "/healthz").await {
                return;
            }
            assert!(Instant::now() < deadline, "node not ready:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn status(&self) -> serde_json::Value {
        let (code, body) = http_get(&self.admin(), "/status").await.unwrap();
        assert_eq!(code, 200);
        serde_json::from_str(&body).unwrap()
    }

    pub async fn reload(&self) -> (u16, String) {
        http_request(&self.admin(), "POST", "/reload")
            .await
            .unwrap()
    }

    /// kill -9, then the same process again on the same configuration and data directory
    /// (the log is appended to).
    pub async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let env: Vec<(&str, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        self.child = spawn_edgemesh(&self.config, self.dir.path(), &env);
        self.wait_ready().await;
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "node did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory of the node process, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_edgemesh(config: &Path, dir: &Path, env: &[(&str, String)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("edgemesh.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_edgemesh"))
        .arg("--config")
        .arg(config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env(
            "EDGEMESH_LOG",
            "debug,hyper=info,hyper_util=info,rustls=info,aws_runtime=info,aws_smithy_runtime=info,aws_smithy_runtime_api=info,aws_sdk_ecs=info,aws_sdk_ec2=info,aws_sdk_route53=info,aws_sdk_sts=info,aws_config=info,hickory_resolver=info,hickory_net=info,hickory_proto=info",
        )
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

/// Replaces `{port-name}`, `{data}` and `vars` in a config template.
fn render(
    template: &str,
    dir: &Path,
    ports: &HashMap<&'static str, u16>,
    vars: &[(&str, String)],
) -> String {
    let mut s = template.replace("{data}", &dir.join("data").display().to_string());
    for (k, v) in ports {
        s = s.replace(&format!("{{{k}}}"), &v.to_string());
    }
    for (k, v) in vars {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

/// Starts a node: chooses free ports for `{http}`, `{https}`, `{tcp}`, `{tcp2}`, `{admin}`,
/// `{gossip}` and `{sync}`,
/// writes the config, spawns the process and waits until the admin API answers.
pub async fn node(template: &str, vars: &[(&str, String)]) -> Node {
    node_env(template, vars, &[]).await
}

/// [`node`] with extra environment variables for the process.
pub async fn node_env(template: &str, vars: &[(&str, String)], env: &[(&str, String)]) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let ports: HashMap<&'static str, u16> =
        ["http", "https", "tcp", "tcp2", "admin", "gossip", "sync"]
            .into_iter()
            .map(|p| (p, free_port()))
            .collect();
    let config = dir.path().join("edgemesh.toml");
    std::fs::write(&config, render(template, dir.path(), &ports, vars)).unwrap();
    let mut n = Node {
        child: spawn_edgemesh(&config, dir.path(), env),
        dir,
        config,
        ports,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    };
    n.wait_ready().await;
    n
}

// ------------------------------------------------------------------ plain HTTP client

pub async fn http_request(addr: &str, method: &str, path: &str) -> Result<(u16, String), String> {
    http_request_host(addr, method, path, None).await
}

pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    http_request(addr, "GET", path).await
}

/// One request on a fresh HTTP/1.1 connection, optionally with a Host header.
pub async fn http_request_host(
    addr: &str,
    method: &str,
    path: &str,
    host: Option<&str>,
) -> Result<(u16, String), String> {
    let (resp, body) = http_full(addr, method, path, host, &[]).await?;
    Ok((resp.status.as_u16(), body))
}

pub async fn http_full(
    addr: &str,
    method: &str,
    path: &str,
    host: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<(hyper::http::response::Parts, String), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host.unwrap_or(addr));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = send
        .send_request(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((parts, String::from_utf8_lossy(&body).into_owned()))
}

// ------------------------------------------------------------------ TLS client

pub fn tls_connector(ca_pem: &Path, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let pem = std::fs::read(ca_pem).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    ca_pem: &Path,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    tls_connector(ca_pem, alpn).connect(name, tcp).await
}

/// GET over TLS with ALPN `h2` or `http/1.1`; returns (version, status, body).
pub async fn tls_get(
    addr: SocketAddr,
    sni: &str,
    ca_pem: &Path,
    h2: bool,
    path: &str,
) -> (hyper::Version, u16, String) {
    let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
    let tls = tls_connect(addr, sni, ca_pem, &[alpn]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    let io = TokioIo::new(tls);
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .uri(format!("https://{sni}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .uri(path)
            .header("host", sni)
            .body(Full::new(Bytes::new()))
            .unwrap();
        send.send_request(req).await.unwrap()
    };
    let version = resp.version();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (version, status, String::from_utf8_lossy(&body).into_owned())
}

// ------------------------------------------------------------------ backends

/// An HTTP backend. It answers:
/// - `/slow`: after 1.5 s;
/// - `/upload`: streams the request body, answers `bytes=<n> fnv=<hash>`;
/// - `/download?<n>`: streams n pseudo-random bytes;
/// - WebSocket upgrades: echoes messages;
/// - anything else: `<name> <METHOD> <path>` then one `header: value` line per header.
pub struct Backend {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
}

pub async fn backend(name: &'static str) -> Backend {
    backend_at(name, "127.0.0.1:0".parse().unwrap()).await.0
}

/// A backend on `addr`; aborting the handle closes its listener (new connections are refused).
pub async fn backend_at(
    name: &'static str,
    addr: SocketAddr,
) -> (Backend, tokio::task::AbortHandle) {
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("backend on {addr}: {e}"));
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    serve_backend(name, req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (Backend { addr, requests }, task.abort_handle())
}

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

async fn serve_backend(
    name: &'static str,
    mut req: Request<Incoming>,
) -> Result<Response<BoxBody>, std::convert::Infallible> {
    let full = |s: String| Full::new(Bytes::from(s)).map_err(|e| match e {}).boxed();
    // A strict origin server: absolute-form request lines are for proxies (RFC 9112
    // §3.2.1), and some servers (Python's http.server) answer them with 404.
    if req.uri().scheme().is_some() {
        return Ok(Response::builder()
            .status(400)
            .body(full(format!(
                "{name}: absolute-form request line {}\n",
                req.uri()
            )))
            .unwrap());
    }
    let path = req.uri().path().to_string();
    if req.headers().contains_key("sec-websocket-key") {
        let key = req.headers()["sec-websocket-key"].as_bytes().to_vec();
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let upgraded = on.await.unwrap();
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            use futures_util::{SinkExt, StreamExt};
            let (mut tx, mut rx) = ws.split();
            while let Some(Ok(m)) = rx.next().await {
                if m.is_text() || m.is_binary() {
                    tx.send(m).await.unwrap();
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
        return Ok(Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(full(String::new()))
            .unwrap());
    }
    match path.as_str() {
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok(Response::new(full(format!("{name} slow done"))))
        }
        "/upload" => {
            let mut body = req.into_body();
            let (mut n, mut h) = (0u64, Fnv::new());
            while let Some(frame) = body.frame().await {
                if let Ok(d) = frame.unwrap().into_data() {
                    n += d.len() as u64;
                    h.write(&d);
                }
            }
            Ok(Response::new(full(format!("bytes={n} fnv={:x}", h.0))))
        }
        "/download" => {
            let n: u64 = req.uri().query().unwrap_or("0").parse().unwrap();
            Ok(Response::new(pattern_body(n)))
        }
        _ => {
            let mut out = format!("{name} {} {}\n", req.method(), path);
            for (k, v) in req.headers() {
                out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            Ok(Response::builder()
                .header("x-backend", name)
                .header("connection", "keep-alive")
                .header("keep-alive", "timeout=5")
                .body(full(out))
                .unwrap())
        }
    }
}

/// `n` bytes of `pattern()`, streamed in 64 KiB frames.
pub fn pattern_body(n: u64) -> BoxBody {
    let chunks = pattern_chunks(n).map(|c| Ok::<_, std::io::Error>(hyper::body::Frame::data(c)));
    http_body_util::StreamBody::new(futures_util::stream::iter(chunks)).boxed()
}

pub fn pattern_chunks(n: u64) -> impl Iterator<Item = Bytes> {
    const CHUNK: u64 = 64 * 1024;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..n.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(n - i * CHUNK) as usize;
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            v.extend_from_slice(&state.to_le_bytes()[..8.min(len - v.len())]);
        }
        Bytes::from(v)
    })
}

/// FNV-1a over a byte stream: chunk boundaries do not change it.
pub struct Fnv(pub u64);

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub fn write(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// A TCP echo backend that counts connections.
pub async fn echo_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, conns)
}

/// Sends raw bytes on a new connection and reads until the server closes or `within` passes.
pub async fn raw_exchange(addr: SocketAddr, data: &[u8], within: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(data).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A new cluster key from `meshctl keygen`, written to `dir/cluster.key`.
pub fn cluster_key(dir: &Path) -> PathBuf {
    let key = dir.join("cluster.key");
    let (code, out, err) = run(env!("CARGO_BIN_EXE_meshctl"), &["keygen"]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(&key, out).unwrap();
    key
}

/// Runs a blocking command and returns (exit code, stdout, stderr).
pub fn run(cmd: &str, args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(cmd)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let code = child.wait().unwrap().code().unwrap_or(-1);
    (code, out, err)
}

/// Polls `f` every 50 ms until it holds; fails the test after `within`.
pub async fn wait_for(within: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
