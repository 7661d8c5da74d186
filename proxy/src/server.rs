//! Listeners, connection lifecycle and the [`Proxy`] handle the node drives.
//!
//! Two stop signals exist and they differ on purpose: removing a listener (a config change)
//! only stops accepting on it, its connections carry on; draining (shutdown) also asks every
//! HTTP connection to finish its in-flight requests and close, then waits for them.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use futures_util::task::AtomicWaker;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::access_log::{AccessLog, AccessLogSpec};
use crate::first_bytes;
use crate::h2_idle::{Streams, Tracked};
use crate::health;
use crate::http::{self, ConnInfo};
use crate::metrics::{ConnectionGuard, Direction, Metrics};
use crate::pool::{now_ms, PoolStatus};
use crate::proxy_protocol;
use crate::route::RouteSpec;
use crate::table::{Table, TableSpec, TcpRouteSpec};
use crate::tcp;
use crate::tls::{self, CertStatus, CertStore};
use crate::workers::Workers;

/// Limits and timeouts of the data path, fixed when the proxy starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// Time a client has to send a complete request head (slowloris guard), counted for the
    /// first one from the connection's start (after its TLS handshake). The clock also runs
    /// while a keep-alive connection waits for its next request, so it is the longest such a
    /// connection may sit idle too. An HTTP/2 connection with no open stream for this long is
    /// sent GOAWAY (`h2_idle`).
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) in bytes; larger ones get 431.
    pub max_header_bytes: usize,
    /// Most header fields in a request; more get 431.
    pub max_headers: usize,
    /// Client connections served at once per listener (all workers together). At the limit
    /// each worker holds the one connection it accepted last, unserved, and accepts nothing
    /// more (the kernel's backlog queues new clients) until a connection closes.
    pub max_connections: usize,
    /// Streams one HTTP/2 connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// Time an upstream has to send the response head once the request is sent; 504 after.
    pub response_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    /// Time a PROXY protocol sender has to send its header.
    pub proxy_protocol_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long an idle pooled upstream connection is kept.
    pub upstream_idle_timeout: Duration,
    /// TLS session resumption (TLS 1.3 tickets naming sessions kept in memory, TLS 1.2
    /// session IDs). Off: every connection makes a full handshake.
    pub session_resumption: bool,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_connections: 10_000,
            h2_max_concurrent_streams: 250,
            response_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            proxy_protocol_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            upstream_idle_timeout: Duration::from_secs(90),
            session_resumption: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ListenerKind {
    Http,
    Https,
    Tcp { idle_timeout_ms: Option<u64> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerSpec {
    pub name: String,
    pub addr: SocketAddr,
    pub kind: ListenerKind,
    /// Expect a PROXY protocol v2 header first (an NLB in front) and take the client address
    /// from it.
    pub accept_proxy_protocol: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListenerStatus {
    #[serde(flatten)]
    pub spec: ListenerSpec,
    /// The address actually bound (differs from `spec.addr` for port 0).
    pub bound: SocketAddr,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    pub listeners: Vec<ListenerStatus>,
    pub routes: Vec<RouteSpec>,
    pub tcp_routes: Vec<TcpRouteSpec>,
    pub pools: Vec<PoolStatus>,
    pub certificates: Vec<CertStatus>,
    pub active_connections: usize,
    pub draining: bool,
}

/// State every connection task reaches through one `Arc`.
pub(crate) struct Shared {
    pub table: ArcSwap<Table>,
    /// ACME HTTP-01 answers: token -> key authorization (any node may be asked).
    pub acme_tokens: ArcSwap<std::collections::HashMap<String, String>>,
    pub certs: Arc<CertStore>,
    pub metrics: Metrics,
    pub settings: ProxySettings,
    pub bytes_up: Counter,
    pub bytes_down: Counter,
    pub access_log: ArcSwapOption<AccessLog>,
    tls: TlsAcceptor,
    /// The HTTP/1 and HTTP/2 servers, configured; a connection gets one by its first bytes.
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    drain: watch::Sender<bool>,
    conns: ConnTracker,
}

/// Counts live client connections so a drain can wait for them.
#[derive(Default)]
struct ConnTracker {
    live: AtomicUsize,
    idle: Notify,
}

/// Keeps a connection counted as live (for drain) until dropped.
pub(crate) struct ConnGuard(Arc<Shared>);

impl Shared {
    pub(crate) fn track(self: &Arc<Self>) -> ConnGuard {
        self.conns.live.fetch_add(1, Ordering::AcqRel);
        ConnGuard(self.clone())
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.conns.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.conns.idle.notify_waiters();
        }
    }
}

struct Running {
    spec: ListenerSpec,
    bound: SocketAddr,
    stop: watch::Sender<bool>,
    /// One accept loop per worker.
    tasks: Vec<JoinHandle<()>>,
}

/// The data path of one node. Cheap to share behind an `Arc`.
pub struct Proxy {
    shared: Arc<Shared>,
    workers: Workers,
    listeners: Mutex<Vec<Running>>,
    /// The access log's configuration, to restart its writer only when it changes.
    access_log_spec: std::sync::Mutex<Option<AccessLogSpec>>,
    /// What `status()` shows; rewritten whenever the listener set changes.
    listener_status: std::sync::Mutex<Vec<ListenerStatus>>,
}

impl Proxy {
    /// Connections are served on `workers`; the caller's runtime only drives control calls.
    pub fn new(
        metrics: Metrics,
        certs: Arc<CertStore>,
        settings: ProxySettings,
        workers: Workers,
    ) -> Proxy {
        let mut h1 = http1::Builder::new();
        // hyper answers a head over max_buf_size or with too many fields with 431; its
        // buffer has a floor of 8 KiB (config validation enforces it).
        h1.timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .max_buf_size(settings.max_header_bytes.max(8192))
            .max_headers(settings.max_headers);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        // Rapid-reset guard: a client that makes the server reset streams more than this
        // (accepted then cancelled, or refused for protocol errors) loses its connection.
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(settings.h2_max_concurrent_streams)
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(1024)
            .max_header_list_size(settings.max_header_bytes as u32);
        let shared = Shared {
            table: ArcSwap::from_pointee(Table::default()),
            acme_tokens: ArcSwap::from_pointee(Default::default()),
            tls: TlsAcceptor::from(tls::server_config(
                certs.clone(),
                settings.session_resumption,
            )),
            certs,
            bytes_up: metrics.bytes(Direction::ClientToUpstream),
            bytes_down: metrics.bytes(Direction::UpstreamToClient),
            metrics,
            settings,
            h1,
            h2,
            access_log: ArcSwapOption::empty(),
            drain: watch::channel(false).0,
            conns: ConnTracker::default(),
        };
        Proxy {
            shared: Arc::new(shared),
            workers,
            listeners: Mutex::new(Vec::new()),
            access_log_spec: std::sync::Mutex::new(None),
            listener_status: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Replaces routes and pools atomically. Endpoint health survives for addresses that stay.
    pub fn apply(&self, spec: TableSpec) {
        let old = self.shared.table.load();
        let (table, checkers) = Table::build(spec, &old, &self.shared.metrics);
        self.shared.table.store(Arc::new(table));
        // Checkers run on the workers, spread round-robin; each ends with its endpoint.
        let handles = self.workers.handles();
        for (i, (endpoint, pool)) in checkers.into_iter().enumerate() {
            handles[i % handles.len()].spawn(health::run(Arc::downgrade(&endpoint), pool));
        }
    }

    /// Starts, changes or stops the access log; with `reopen`, a file is opened again even
    /// when nothing changed (after logrotate moved it away). A destination that cannot be
    /// opened changes nothing: the error names it and the previous log carries on.
    pub fn set_access_log(
        &self,
        spec: Option<&AccessLogSpec>,
        reopen: bool,
    ) -> std::io::Result<()> {
        let mut current = self.access_log_spec.lock().expect("access log lock");
        let is_file = spec.is_some_and(|s| s.path.is_some());
        if current.as_ref() == spec && !(reopen && is_file) {
            return Ok(());
        }
        let log = match spec {
            None => None,
            Some(s) => Some(AccessLog::start(
                s,
                self.shared.metrics.access_log_dropped(),
            )?),
        };
        // The old log writes its last lines and its writer thread ends once the last exchange
        // holding it has finished.
        self.shared.access_log.store(log);
        *current = spec.cloned();
        Ok(())
    }

    /// Replaces the ACME HTTP-01 answers served on plain-HTTP listeners.
    pub fn set_acme_tokens(&self, tokens: std::collections::HashMap<String, String>) {
        self.shared.acme_tokens.store(Arc::new(tokens));
    }

    pub fn certs(&self) -> &Arc<CertStore> {
        &self.shared.certs
    }

    /// Makes the running listeners equal to `specs`: binds new ones, stops removed ones (their
    /// connections carry on) and leaves unchanged ones alone. All-or-nothing: when a bind
    /// fails, nothing changes and the error names the listener.
    pub async fn set_listeners(&self, specs: &[ListenerSpec]) -> Result<(), ListenerError> {
        let mut running = self.listeners.lock().await;
        let (keep, stop): (Vec<Running>, Vec<Running>) =
            running.drain(..).partition(|r| specs.contains(&r.spec));
        let new: Vec<&ListenerSpec> = specs
            .iter()
            .filter(|s| !keep.iter().any(|r| &r.spec == *s))
            .collect();
        // Bind what is free now, so a bad address changes nothing. An address held by a
        // listener being replaced can only be bound after that one has stopped.
        let mut bound = Vec::new();
        for spec in new
            .iter()
            .filter(|s| !stop.iter().any(|r| r.bound == s.addr))
        {
            match bind(spec, self.workers.len()) {
                Ok(l) => bound.push(((*spec).clone(), l)),
                Err(e) => {
                    *running = keep.into_iter().chain(stop).collect();
                    return Err(e);
                }
            }
        }
        for r in stop {
            info!(listener = %r.spec.name, addr = %r.bound, "listener stopped");
            let _ = r.stop.send(true);
            for t in r.tasks {
                let _ = t.await;
            }
        }
        *running = keep;
        let mut result = Ok(());
        let pending: Vec<&ListenerSpec> = new
            .into_iter()
            .filter(|s| !bound.iter().any(|(b, _)| b == *s))
            .collect();
        for spec in pending {
            match bind(spec, self.workers.len()) {
                Ok(l) => bound.push((spec.clone(), l)),
                Err(e) => result = Err(e),
            }
        }
        for (spec, (addr, sockets)) in bound {
            info!(listener = %spec.name, %addr, kind = ?spec.kind, workers = sockets.len(), "listening");
            let (stop, stop_rx) = watch::channel(false);
            let slots = Arc::new(Semaphore::new(self.shared.settings.max_connections.max(1)));
            let tasks = sockets
                .into_iter()
                .zip(self.workers.handles())
                .map(|(socket, handle)| {
                    let (shared, spec, stop_rx, slots) = (
                        self.shared.clone(),
                        spec.clone(),
                        stop_rx.clone(),
                        slots.clone(),
                    );
                    handle.spawn(async move {
                        match TcpListener::from_std(socket) {
                            Ok(l) => accept_loop(shared, spec, l, stop_rx, slots).await,
                            Err(e) => {
                                warn!(listener = %spec.name, error = %e, "listener setup failed")
                            }
                        }
                    })
                })
                .collect();
            running.push(Running {
                spec,
                bound: addr,
                stop,
                tasks,
            });
        }
        *self.listener_status.lock().expect("listener status lock") = running
            .iter()
            .map(|r| ListenerStatus {
                spec: r.spec.clone(),
                bound: r.bound,
            })
            .collect();
        result
    }

    pub fn status(&self) -> ProxyStatus {
        let table = self.shared.table.load();
        ProxyStatus {
            listeners: self
                .listener_status
                .lock()
                .expect("listener status lock")
                .clone(),
            routes: table.spec.routes.clone(),
            tcp_routes: table.spec.tcp_routes.clone(),
            pools: table.pool_status(now_ms()),
            certificates: self.shared.certs.status(),
            active_connections: self.shared.conns.live.load(Ordering::Relaxed),
            draining: *self.shared.drain.borrow(),
        }
    }

    /// Stops accepting everywhere, lets in-flight HTTP requests finish and TCP streams run, for
    /// at most `deadline`. Returns how many connections were still open at the deadline.
    pub async fn drain(&self, deadline: Duration) -> usize {
        self.shared.drain.send_replace(true);
        let wait = async {
            loop {
                let idle = self.shared.conns.idle.notified();
                if self.shared.conns.live.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        self.shared.conns.live.load(Ordering::Acquire)
    }
}

/// The cause is part of the message (not `source()`), so a chain printer shows it once.
#[derive(Debug, thiserror::Error)]
#[error("listener {name} on {addr}: {cause}")]
pub struct ListenerError {
    pub name: String,
    pub addr: SocketAddr,
    pub cause: std::io::Error,
}

/// One listening socket per worker on the same address (`SO_REUSEPORT`: the kernel spreads
/// connections). With port 0, the first socket picks the port and the others join it.
fn bind(
    spec: &ListenerSpec,
    count: usize,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), ListenerError> {
    let listen = |addr: SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        // Linux copies both into every socket this one accepts: set once here instead of
        // with four system calls per connection.
        #[cfg(target_os = "linux")]
        tune(socket2::SockRef::from(&socket));
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        Ok(socket.into())
    };
    let attempt = || -> std::io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
        let first = listen(spec.addr)?;
        let addr = first.local_addr()?;
        let mut all = vec![first];
        for _ in 1..count.max(1) {
            all.push(listen(addr)?);
        }
        Ok((addr, all))
    };
    attempt().map_err(|cause| ListenerError {
        name: spec.name.clone(),
        addr: spec.addr,
        cause,
    })
}

/// No-delay, and TCP keep-alive (first probe after 60 s idle, then every 15 s) so that a
/// long-lived stream to a dead peer ends: on listeners (Linux, whose accepted sockets inherit
/// both), client connections elsewhere, and upstream connections.
pub(crate) fn tune(s: socket2::SockRef<'_>) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(15));
    let nodelay = s.set_nodelay(true);
    if let Err(e) = nodelay.and(s.set_tcp_keepalive(&ka)) {
        debug!(error = %e, "setting TCP no-delay and keep-alive failed");
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    spec: ListenerSpec,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    slots: Arc<Semaphore>,
) {
    let name: Arc<str> = Arc::from(spec.name.as_str());
    let lm = shared.metrics.listener(&spec.name);
    // A listener on one address knows each connection's local address without asking.
    let bound = listener
        .local_addr()
        .ok()
        .filter(|a| !a.ip().is_unspecified());
    let mut drain = shared.drain.subscribe();
    if *drain.borrow_and_update() {
        return;
    }
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
            _ = drain.changed() => return,
        };
        // At the connection limit this loop holds the connection it just accepted and
        // accepts nothing more until one closes: the kernel's backlog queues the rest.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                lm.paused.inc();
                warn!(listener = %name, limit = shared.settings.max_connections, "connection limit reached; accepting paused");
                let s = tokio::select! {
                    s = slots.clone().acquire_owned() => s,
                    _ = stop.changed() => return,
                    _ = drain.changed() => return,
                };
                let Ok(s) = s else { return };
                info!(listener = %name, "accepting again");
                s
            }
        };
        let accepted = Accepted {
            stream,
            peer,
            bound,
            kind: spec.kind.clone(),
            accept_pp: spec.accept_proxy_protocol,
            listener: name.clone(),
            guard: (shared.track(), lm.open(), slot),
        };
        tokio::spawn(serve_accepted(shared.clone(), accepted));
    }
}

/// A connection the accept loop took, with what its task needs.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    /// The listener's address, if it is bound to one (else asked of the socket).
    bound: Option<SocketAddr>,
    kind: ListenerKind,
    accept_pp: bool,
    listener: Arc<str>,
    /// Counts the connection (drain, metrics, connection limit) until it ends.
    guard: (ConnGuard, ConnectionGuard, OwnedSemaphorePermit),
}

/// A connection's task. Each kind's connection state is boxed, so the task holds only what
/// its own kind needs (a plain HTTP connection does not carry space for a TLS handshake or a
/// TCP relay): it is kept for the connection's lifetime, idle or not.
///
/// Not an `async fn`, which would keep `a` beside the locals it is taken apart into.
fn serve_accepted(shared: Arc<Shared>, a: Accepted) -> impl Future<Output = ()> + Send {
    let Accepted {
        mut stream,
        mut peer,
        bound,
        kind,
        accept_pp,
        listener: name,
        guard,
    } = a;
    async move {
        // Moved in, so that it lives as long as the task.
        let _guard = guard;
        #[cfg(not(target_os = "linux"))]
        tune(socket2::SockRef::from(&stream));
        let Some(local) = bound.or_else(|| stream.local_addr().ok()) else {
            return;
        };
        if accept_pp {
            let t = shared.settings.proxy_protocol_timeout;
            match tokio::time::timeout(t, Box::pin(proxy_protocol::read_v2(&mut stream))).await {
                Ok(Ok(Some(client))) => peer = client,
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    warn!(listener = %name, %peer, error = %e, "PROXY protocol header rejected");
                    return;
                }
                Err(_) => {
                    warn!(listener = %name, %peer, "no PROXY protocol header in time");
                    return;
                }
            }
        }
        match kind {
            ListenerKind::Http => {
                Box::pin(serve_http(shared, stream, ConnInfo::new(peer, false))).await
            }
            ListenerKind::Https => {
                // The handshake's result (a TLS stream, 1.2 KiB) is moved into the boxed
                // connection before that is awaited, in a statement of its own: a local or match
                // scrutinee still in scope across the await would keep its space in this task
                // for the connection's lifetime, moved out or not.
                let serve = match Box::pin(tls_handshake(&shared, stream, peer, &name)).await {
                    Some((tls, info)) => Box::pin(serve_http(shared, tls, info)),
                    None => return,
                };
                serve.await
            }
            ListenerKind::Tcp { idle_timeout_ms } => {
                let conn = tcp::TcpConn {
                    listener: name,
                    client: stream,
                    peer,
                    local,
                    idle_timeout: idle_timeout_ms.map(Duration::from_millis),
                };
                // A drain lets TCP streams run until the deadline; the process exit ends them.
                Box::pin(tcp::serve(shared, conn)).await
            }
        }
    }
}

/// A TLS handshake within the listener's time limit, and what it tells about the connection.
async fn tls_handshake(
    shared: &Shared,
    stream: TcpStream,
    peer: SocketAddr,
    listener: &str,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, ConnInfo)> {
    let t = shared.settings.tls_handshake_timeout;
    match tokio::time::timeout(t, shared.tls.accept(stream)).await {
        Ok(Ok(tls)) => {
            let mut info = ConnInfo::new(peer, true);
            let session = tls.get_ref().1;
            info.tls_version = session.protocol_version().map(tls::version_name);
            info.sni = session.server_name().map(Arc::from);
            Some((tls, info))
        }
        Ok(Err(e)) => {
            debug!(listener, %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(listener, %peer, "TLS handshake timed out");
            None
        }
    }
}

async fn serve_http<I>(shared: Arc<Shared>, io: I, mut info: ConnInfo)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut drain = shared.drain.subscribe();
    if *drain.borrow_and_update() {
        return;
    }
    // The first request head must be complete within the header timeout of the connection's
    // start (after its TLS handshake). Its first bytes (HTTP/1 or HTTP/2) are read here, and
    // hyper's own timer starts only after them, so an HTTP/1 connection is held to this
    // deadline until its first head is in (`first_head`). A drain closes a connection that
    // has sent nothing yet.
    let deadline = tokio::time::Instant::now() + shared.settings.header_read_timeout;
    info.head_deadline = Some(deadline);
    // The connection's details go to the heap before the first wait: this future lives as
    // long as the connection, and every value it keeps across a wait is part of it.
    let info = Arc::new(info);
    let io = tokio::select! {
        r = tokio::time::timeout_at(deadline, first_bytes::read(io)) => {
            match r {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => {
                    debug!(peer = %info.peer, error = %e, "connection failed before its first request");
                    return;
                }
                Err(_) => {
                    debug!(peer = %info.peer, "no request within the header timeout; closed");
                    return;
                }
            }
        }
        _ = drain.changed() => return,
    };
    // An HTTP/1 connection is kept in this future, an HTTP/2 one boxed with its idle watch:
    // its state is over twice the size (1,488 bytes against 640), and most connections are
    // HTTP/1. hyper_util's `auto` connection, used before, was as large as the HTTP/2 one
    // for every connection.
    let result = if io.is_http2() {
        Some(Box::pin(serve_h2(&shared, TokioIo::new(io), &info, &mut drain)).await)
    } else {
        let (svc_shared, svc_info) = (shared.clone(), info.clone());
        // `http::handle` boxes each exchange's future (see `http::Exchange`), and sets
        // `head_seen`.
        let svc = service_fn(move |req| http::handle(&svc_shared, &svc_info, req));
        let conn = shared
            .h1
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        drive(&mut drain, std::pin::pin!(conn), Some(&info), |c| {
            c.graceful_shutdown()
        })
        .await
    };
    let Some(result) = result else {
        debug!(peer = %info.peer, "first request head not complete within the header timeout; closed");
        return;
    };
    if let Err(e) = result {
        if e.is_parse() || e.is_parse_too_large() {
            shared.metrics.bad_request();
            debug!(peer = %info.peer, error = %e, "malformed HTTP request");
        } else {
            debug!(peer = %info.peer, error = %e, "HTTP connection ended with error");
        }
    }
}

/// How long an idle HTTP/2 connection that was sent GOAWAY has to acknowledge it (the PING
/// that follows it) before it is closed: a client that never does would keep it open.
const H2_GOAWAY_GRACE: Duration = Duration::from_secs(2);

/// Serves an HTTP/2 connection (boxed: see `serve_http`) to its end. One with no open stream
/// for the header timeout, from its start or since its last stream closed, is shut down
/// gracefully (GOAWAY), and closed if it has still none [`H2_GOAWAY_GRACE`] later.
async fn serve_h2<I>(
    shared: &Arc<Shared>,
    io: TokioIo<I>,
    info: &Arc<ConnInfo>,
    drain: &mut watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The connection's start, from its first head's deadline (`serve_http` sets it): kept
    // there rather than in the caller's future, which every HTTP/1 connection has.
    let timeout = shared.settings.header_read_timeout;
    let started = info
        .head_deadline
        .map_or_else(tokio::time::Instant::now, |d| d - timeout);
    let streams = Arc::new(Streams::new(started));
    let (svc_shared, svc_info, svc_streams) = (shared.clone(), info.clone(), streams.clone());
    let svc = service_fn(move |req| {
        let stream = svc_streams.open();
        let exchange = http::handle(&svc_shared, &svc_info, req);
        async move {
            let resp = exchange.await?;
            Ok::<_, std::convert::Infallible>(resp.map(|body| Tracked::new(body, stream)))
        }
    });
    // Inline: the caller boxes this whole future.
    let mut conn = std::pin::pin!(shared.h2.serve_connection(io, svc));
    let (mut timeout, mut from) = (timeout, started);
    let mut told = false;
    loop {
        let idle = streams.idle_for(timeout, from);
        // Without a first head to wait for, `drive` always ends with `Some`: `None` here is
        // the idle watch's.
        let served = tokio::select! {
            r = drive(drain, conn.as_mut(), None, |c| c.graceful_shutdown()) => r,
            () = idle => None,
        };
        if let Some(result) = served {
            return result;
        }
        if told {
            debug!(peer = %info.peer, "idle HTTP/2 connection did not close after its GOAWAY; closed");
            return Ok(());
        }
        debug!(peer = %info.peer, timeout_ms = timeout.as_millis() as u64, "HTTP/2 connection idle; GOAWAY");
        conn.as_mut().graceful_shutdown();
        told = true;
        (timeout, from) = (H2_GOAWAY_GRACE, tokio::time::Instant::now());
    }
}

/// How an HTTP/1 connection's wait for its first request head ended.
enum FirstHead {
    /// The head is in and the service has it.
    Served,
    /// The connection ended first (the client closed, or sent a malformed head).
    Ended(Result<(), hyper::Error>),
    /// The deadline passed first.
    TimedOut,
    /// The drain started first; [`drive`] shuts the connection down.
    Draining,
}

/// Polls `conn` until its first request head is complete (`seen` set by the service), it
/// ends, the drain starts or `deadline` passes. Kept out of [`drive`]'s loop, which runs
/// every later request: the check costs nothing there.
async fn first_head<C>(
    mut conn: Pin<&mut C>,
    seen: &AtomicBool,
    deadline: tokio::time::Instant,
    drain: &mut watch::Receiver<bool>,
) -> FirstHead
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let mut step = |cx: &mut Context<'_>| match conn.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(FirstHead::Ended(r)),
        Poll::Pending if seen.load(Ordering::Relaxed) => Poll::Ready(FirstHead::Served),
        Poll::Pending => Poll::Pending,
    };
    // Usually the whole head came with the first bytes and is in after one poll: no timer
    // is registered then. Otherwise the wait is boxed: this future is part of every HTTP/1
    // connection's, kept for its lifetime, and inline the wait (a timer, the drain watch)
    // made that 128 bytes larger (1,400 against 1,272).
    if let Poll::Ready(r) = std::future::poll_fn(|cx| Poll::Ready(step(cx))).await {
        return r;
    }
    Box::pin(async move {
        tokio::select! {
            r = std::future::poll_fn(step) => r,
            _ = tokio::time::sleep_until(deadline) => FirstHead::TimedOut,
            _ = drain.changed() => FirstHead::Draining,
        }
    })
    .await
}

/// Runs a connection to its end, and starts its graceful shutdown (`shutdown`) when the
/// drain does. With `first` (an HTTP/1 connection), its first request head must be complete
/// by the deadline (the flag is set when it is): `None` if it was not. That wait is here, not
/// in a function around this one, which kept the arguments of both (an HTTP connection's
/// future was 1,400 bytes with the wrapper). `drain` is borrowed for the same reason: moved
/// in, it was kept twice.
async fn drive<C, F>(
    drain: &mut watch::Receiver<bool>,
    mut conn: Pin<&mut C>,
    first: Option<&ConnInfo>,
    shutdown: F,
) -> Option<Result<(), hyper::Error>>
where
    C: Future<Output = Result<(), hyper::Error>>,
    F: Fn(Pin<&mut C>),
{
    if let Some((info, deadline)) = first.and_then(|i| Some((i, i.head_deadline?))) {
        match first_head(conn.as_mut(), &info.head_seen, deadline, drain).await {
            FirstHead::Ended(r) => return Some(r),
            FirstHead::TimedOut => return None,
            FirstHead::Served | FirstHead::Draining => {}
        }
    }
    // The drain watch is polled only after it woke this task (its own waker sets a flag),
    // not on every wake of the connection: polling it each time cost about 310 instructions
    // per proxied request (callgrind).
    let mut watching = !*drain.borrow_and_update();
    if !watching {
        shutdown(conn.as_mut());
    }
    let flag = Arc::new(WakeFlag::default());
    let flag_waker = Waker::from(flag.clone());
    let mut changed = std::pin::pin!(drain.changed());
    // The task's waker is registered with the flag only when it is not there yet (first
    // poll, and after the flag woke the task, which takes it) or changed: registering on
    // every poll, and swapping the flag when it was clear, cost six locked instructions
    // per proxied request (`lock`-prefixed instructions executed, counted with callgrind).
    let mut registered: Option<Waker> = None;
    let result = std::future::poll_fn(|cx| loop {
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if !watching {
            return Poll::Pending;
        }
        if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            flag.task.register(cx.waker());
            registered = Some(cx.waker().clone());
        }
        if !flag.set.load(Ordering::Acquire) || !flag.set.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        // Waking took the waker out of the flag: register again on the next poll.
        registered = None;
        match changed.as_mut().poll(&mut Context::from_waker(&flag_waker)) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => {
                watching = false;
                if r.is_ok() {
                    // The loop polls the connection again: the shutdown starts there.
                    shutdown(conn.as_mut());
                }
            }
        }
    })
    .await;
    Some(result)
}

/// Set (and the connection's task woken) when the drain watch wakes. Starts set, so the
/// watch is polled once to register.
struct WakeFlag {
    set: AtomicBool,
    task: AtomicWaker,
}

impl Default for WakeFlag {
    fn default() -> Self {
        WakeFlag {
            set: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }
    }
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.set.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    fn options(s: &TcpStream) -> (bool, bool, Duration, Duration) {
        let r = socket2::SockRef::from(s);
        (
            r.nodelay().unwrap(),
            r.keepalive().unwrap(),
            r.keepalive_time().unwrap(),
            r.keepalive_interval().unwrap(),
        )
    }

    /// A connection's task is kept for the connection's lifetime, so its size is memory per
    /// idle connection: it was 2,856 bytes when the TLS branch kept the handshake's result in it.
    #[test]
    fn a_connections_task_stays_small() {
        fn future_size<F, Fut>(_: F) -> usize
        where
            F: FnOnce(Arc<Shared>, Accepted) -> Fut,
        {
            std::mem::size_of::<Fut>()
        }
        let task = future_size(serve_accepted);
        assert!(
            task <= 400,
            "a connection's task is {task} bytes (360 when written)"
        );
    }

    /// An HTTP connection's future, boxed for the connection's lifetime, is memory per idle
    /// connection too. An HTTP/2 connection's state is boxed apart.
    #[test]
    fn an_http_connections_future_stays_small() {
        fn future_size<F, Fut>(_: F) -> usize
        where
            F: FnOnce(Arc<Shared>, TcpStream, ConnInfo) -> Fut,
        {
            std::mem::size_of::<Fut>()
        }
        let conn = future_size(serve_http::<TcpStream>);
        assert!(
            conn <= 1_280,
            "an HTTP connection's future is {conn} bytes (1,248 when written; 2,008 with \
             hyper_util's auto connection; 1,272 with the first head's deadline). Over \
             1,280 it takes the allocator's next size class, 1,536: the first deadline's \
             first cut was 1,336 bytes, and 6.6 KiB per idle connection against 6.3"
        );
    }

    /// The accept loop leaves no-delay and keep-alive to the listener (Linux copies them
    /// into accepted sockets); a plain listener's connections have neither.
    #[tokio::test]
    async fn accepted_connections_inherit_no_delay_and_keep_alive_from_the_listener() {
        let spec = ListenerSpec {
            name: "web".into(),
            addr: "127.0.0.1:0".parse().unwrap(),
            kind: ListenerKind::Http,
            accept_proxy_protocol: false,
        };
        let (addr, mut sockets) = bind(&spec, 1).unwrap();
        let ours = TcpListener::from_std(sockets.remove(0)).unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = ours.accept().await.unwrap();
        let (nodelay, keepalive, time, interval) = options(&accepted);
        assert!(
            nodelay && keepalive,
            "no-delay {nodelay}, keep-alive {keepalive}"
        );
        assert_eq!(
            (time, interval),
            (Duration::from_secs(60), Duration::from_secs(15))
        );

        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(plain.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = plain.accept().await.unwrap();
        let (nodelay, keepalive, _, _) = options(&accepted);
        assert!(
            !nodelay && !keepalive,
            "a plain listener's connection is untuned"
        );
    }
}
