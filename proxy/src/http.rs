//! The HTTP reverse proxy: one request in, one routed request out.
//!
//! Bodies stream in both directions (never buffered); hop-by-hop headers are removed;
//! `X-Forwarded-*` are set from what this node saw (client-supplied values are replaced: this
//! is the edge); `Upgrade` (WebSocket) is relayed as raw bytes after the 101.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{debug, warn};

use crate::access_log::{AccessLog, HttpRecord, Pending, PendingLog};
use crate::body::{Cut, Metered};
use crate::pool::{now_ms, Pool};
use crate::route::{normalize_host, Route};
use crate::server::Shared;
use crate::upstream;

pub type RespBody = Either<Metered<Incoming>, Full<Bytes>>;
/// A request body is boxed: few proxied requests have one, and unboxed it would make every
/// outgoing request 408 bytes instead of 232. A request is moved a dozen times between here
/// and hyper's connection task, and each pooled connection's queue keeps 32 slots of one.
pub type ReqBody = Either<Box<Metered<Incoming>>, Empty<Bytes>>;

#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The client address as an `X-Forwarded-For` value, formatted once per connection.
    client_ip: HeaderValue,
    /// Negotiated TLS version and the client's SNI, for the access log.
    pub tls_version: Option<&'static str>,
    pub sni: Option<Arc<str>>,
    /// When the connection's first request head must be complete (set by the server), and
    /// whether it is (set when the service is called). Kept here, on the heap, rather than in
    /// the server's future, which lives as long as the connection.
    pub(crate) head_deadline: Option<tokio::time::Instant>,
    pub(crate) head_seen: AtomicBool,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> ConnInfo {
        let ip = peer.ip().to_canonical().to_string();
        ConnInfo {
            peer,
            tls,
            client_ip: HeaderValue::from_str(&ip).expect("an IP address is a valid header value"),
            tls_version: None,
            sni: None,
            head_deadline: None,
            head_seen: AtomicBool::new(false),
        }
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The future of one exchange, boxed: hyper keeps space for one per connection for the
/// connection's lifetime, and a pointer is what an idle connection should hold.
pub type Exchange = Pin<Box<dyn Future<Output = Result<Response<RespBody>, Infallible>> + Send>>;

/// `shared` and `conn` are borrowed, and cloned (a reference count taken) only for what the
/// exchange keeps: a forwarded request's future keeps `shared` alone. A logged request's
/// record waits in a recycled slot ([`PendingLog`], one pointer), so a logged exchange is
/// the same future as one that is not.
pub fn handle(shared: &Arc<Shared>, conn: &Arc<ConnInfo>, req: Request<Incoming>) -> Exchange {
    // The connection's first head is in (the server's deadline for it ends). Here, not in the
    // server's service closure: there it made hyper copy every request once more (+52
    // instructions of memcpy per request).
    conn.head_seen.store(true, Ordering::Relaxed);
    let (pending, bytes_in) = match shared.access_log.load_full().filter(|l| l.sampled()) {
        Some(log) => {
            let (pending, bytes_in) = start_log(conn, &req, log);
            (Some(pending), bytes_in)
        }
        None => (None, None),
    };
    // Routing and the outgoing request are settled here, before anything is boxed, and the
    // box holds `forward`'s future itself. A future is built on the stack and then copied
    // whole into its box: wrapped in an async block that also held the incoming request,
    // this one was 2,336 bytes, and that copy alone took 280 instructions of memcpy per
    // request (callgrind).
    match dispatch(shared, conn, req) {
        Err(answer) => Box::pin(std::future::ready(Ok(finish_log(pending, answer)))),
        Ok(fwd) => {
            let out = outgoing(shared, conn, fwd, bytes_in);
            Box::pin(forward(shared.clone(), out, pending))
        }
    }
}

/// The access log's record of a request, as far as the request tells, and for a request
/// with a body the counter its body hands its size to.
fn start_log(
    conn: &ConnInfo,
    req: &Request<Incoming>,
    log: Arc<AccessLog>,
) -> (PendingLog, Option<Arc<AtomicU64>>) {
    // One pass over the fields rather than a hashed lookup for each.
    let (mut host, mut referer, mut user_agent) = (None, None, None);
    for (name, value) in req.headers() {
        let slot = match *name {
            header::HOST => &mut host,
            header::REFERER => &mut referer,
            header::USER_AGENT => &mut user_agent,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(value.clone());
        }
    }
    // Only a request with a body needs its size handed back from the body.
    let bytes_in = (!req.body().is_end_stream()).then(|| Arc::new(AtomicU64::new(0)));
    let pending = PendingLog::new(Pending {
        log,
        record: HttpRecord {
            time: SystemTime::now(),
            client: conn.peer,
            host: match req.uri().authority() {
                Some(a) => HeaderValue::from_str(a.as_str()).ok(),
                None => host,
            },
            method: req.method().clone(),
            path: req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            version: req.version(),
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            upstream: None,
            upstream_time: None,
            total_time: Default::default(),
            tls_version: conn.tls_version,
            sni: conn.sni.clone(),
            referer,
            user_agent,
        },
        bytes_in: bytes_in.clone(),
    });
    (pending, bytes_in)
}

/// Completes a logged exchange's record with its response. The line is written when the
/// response body ends (bytes out and total time known).
fn finish_log(pending: Option<PendingLog>, resp: Response<RespBody>) -> Response<RespBody> {
    let Some(mut pending) = pending else {
        return resp;
    };
    pending.record().status = resp.status().as_u16();
    resp.map(|b| match b {
        Either::Left(m) => Either::Left(m.log(Some(pending))),
        Either::Right(full) => {
            pending.finish(full.size_hint().exact().unwrap_or(0));
            Either::Right(full)
        }
    })
}

/// Where ACME HTTP-01 validators ask for a token.
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// A request that routing sent to a pool.
struct Forward {
    req: Request<Incoming>,
    /// The request's `Host` field, looked up once here for `forward` too.
    host_field: Option<HeaderValue>,
    route: Arc<Route>,
    pool: Arc<Pool>,
}

/// Everything decided before a request leaves this node: `Err` is the answer given here
/// (refused framing, ACME token, no host, no route, redirect, empty pool, body too large).
#[expect(
    clippy::result_large_err,
    reason = "the Err is the response itself, moved once; boxing it would add an allocation"
)]
fn dispatch(
    shared: &Shared,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Result<Forward, Response<RespBody>> {
    // HTTP/1: hyper refuses what it cannot frame and marks what it settled (vendored hyper,
    // PATCHES.md); HTTP/2 requests are checked here.
    let refuse = match req.extensions().get::<hyper::ext::AmbiguousFraming>() {
        Some(a) => Some(a.reason()),
        None if req.version() == Version::HTTP_2 => ambiguous_framing(&req),
        None => None,
    };
    if let Some(why) = refuse {
        // The connection closes after the answer: where this request's body ends is
        // exactly what is in doubt.
        shared.metrics.bad_request();
        shared.metrics.unrouted(400);
        debug!(peer = %conn.peer, why, "request with ambiguous framing refused");
        let mut r = local(StatusCode::BAD_REQUEST, format!("{why}\n"));
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Err(r);
    }
    // A token of an order in progress: answered here, for any host (the validator may reach
    // any node). Unknown tokens go to the route like any request.
    if !conn.tls {
        if let Some(token) = req.uri().path().strip_prefix(ACME_CHALLENGE) {
            if let Some(answer) = shared.acme_tokens.load().get(token) {
                shared.metrics.unrouted(200);
                return Err(local(StatusCode::OK, answer.clone()));
            }
        }
    }
    let host_field = req.headers().get(header::HOST);
    let raw_host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| host_field?.to_str().ok());
    let Some(host) = raw_host.and_then(normalize_host) else {
        shared.metrics.unrouted(400);
        return Err(local(
            StatusCode::BAD_REQUEST,
            "missing or invalid Host header\n",
        ));
    };
    let table = shared.table.load();
    let Some(route) = table.router.find(&host, req.uri().path()) else {
        shared.metrics.unrouted(404);
        return Err(local(
            StatusCode::NOT_FOUND,
            format!("no route for host {host}\n"),
        ));
    };
    if !conn.tls && route.redirect_https {
        if let Some(port) = table.https_port.filter(|_| shared.certs.covers(&host)) {
            shared.metrics.unrouted(308);
            return Err(redirect(&host, port, req.uri()));
        }
    }
    let pool = table.pools.get(&route.pool).cloned();
    let route = route.clone();
    drop(table);
    let Some(pool) = pool.filter(|p| !p.is_empty()) else {
        shared.metrics.unrouted(503);
        return Err(local(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no running tasks for service {}\n", route.pool),
        ));
    };
    if let Some(limit) = route.max_body_bytes {
        let declared = req.body().size_hint().exact();
        if declared.is_some_and(|n| n > limit) {
            pool.metrics.response(413);
            return Err(too_large(limit));
        }
    }
    let host_field = host_field.cloned();
    Ok(Forward {
        req,
        host_field,
        route,
        pool,
    })
}

fn too_large(limit: u64) -> Response<RespBody> {
    let mut r = local(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than {limit} bytes\n"),
    );
    // The rest of the body is not read: the connection cannot carry another request.
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// A routed request made ready to leave: what `forward` needs across its awaits, and no more.
struct Outgoing {
    req: Request<ReqBody>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// The route's whole-exchange deadline.
    deadline: Option<tokio::time::Instant>,
    route: Arc<Route>,
    pool: Arc<Pool>,
    tls: bool,
}

/// Rewrites a routed request for its upstream: hop-by-hop fields out, `X-Forwarded-*` in,
/// origin-form target, HTTP/1.1, and a counted body if it has one (whose size goes to
/// `bytes_in` when dropped, for the access log).
fn outgoing(
    shared: &Shared,
    conn: &ConnInfo,
    fwd: Forward,
    bytes_in: Option<Arc<AtomicU64>>,
) -> Outgoing {
    let Forward {
        mut req,
        host_field,
        route,
        pool,
    } = fwd;
    let deadline = route.timeout.map(|t| tokio::time::Instant::now() + t);
    let upgrade = is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // HTTP/2 carries the host in :authority; HTTP/1.1 upstreams need the header. (A request
    // with neither was refused by `dispatch`.)
    let orig_host = host_field.or_else(|| {
        let v = HeaderValue::from_str(parts.uri.authority()?.as_str()).ok()?;
        parts.headers.insert(header::HOST, v.clone());
        Some(v)
    });
    strip_hop_by_hop(&mut parts.headers, upgrade.is_some());
    set_forwarded(&mut parts.headers, conn, orig_host);
    // Origin-form (`/path?query`): what an origin server expects on HTTP/1.1 (RFC 9112
    // §3.2.1); the Host header carries the authority. Absolute-form is for proxies, and
    // servers such as Python's http.server answer it with 404.
    parts.uri = Uri::from(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    parts.version = Version::HTTP_11;
    // Most requests have no body: nothing to count, cut or report, so none is wrapped (the
    // counter's reference alone was two locked instructions per request).
    let body = if body.is_end_stream() {
        Either::Right(Empty::new())
    } else {
        Either::Left(Box::new(
            Metered::new(body, shared.bytes_up.clone(), None, None)
                .limit(route.max_body_bytes)
                .report_to(bytes_in),
        ))
    };
    Outgoing {
        req: Request::from_parts(parts, body),
        upgrade,
        deadline,
        route,
        pool,
        tls: conn.tls,
    }
}

/// Sends a routed request to an endpoint of its pool (to another one when the first refuses
/// the connection), or answers 502/504/413 itself; `log`'s record, if any, is completed.
///
/// Not an `async fn`: one keeps its arguments and the locals they are moved into side by
/// side in its future, for the whole exchange. Here the parts of `out` are captured as they
/// are, so the future holds each once.
fn forward(
    shared: Arc<Shared>,
    out: Outgoing,
    mut log: Option<PendingLog>,
) -> impl Future<Output = Result<Response<RespBody>, Infallible>> + Send {
    let Outgoing {
        mut req,
        upgrade,
        deadline,
        route,
        pool,
        tls,
    } = out;
    async move {
        let mut resp = 'answer: {
            // A connection is made (or taken from the pool) before anything is sent, so a
            // refused connection leaves the request intact: it is tried once more on another
            // endpoint, whatever its method. A pooled connection the server closed meanwhile
            // hands the request back too.
            let s = &shared.settings;
            let mut exclude = None;
            let mut connect_failures = 0;
            let mut timed_out = false;
            while let Some(ep) = pool.pick(now_ms(), exclude) {
                let mut upstream = match upstream::checkout(
                    ep.addr,
                    s.connect_timeout,
                    s.upstream_idle_timeout,
                )
                .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        let ms = ep.eject(now_ms());
                        pool.metrics.ejections.inc();
                        pool.metrics.errors.inc();
                        timed_out = e.kind() == std::io::ErrorKind::TimedOut;
                        if timed_out {
                            pool.metrics.timeouts.inc();
                        }
                        warn!(pool = %pool.name, endpoint = %ep.addr, eject_ms = ms, error = %e, "upstream connect failed; endpoint ejected");
                        connect_failures += 1;
                        if connect_failures == 2 {
                            break;
                        }
                        exclude = Some(ep.addr);
                        continue;
                    }
                };
                let in_flight = ep.begin();
                let started = tokio::time::Instant::now();
                if let Some(p) = log.as_mut() {
                    p.record().upstream = Some(ep.addr);
                }
                let head_deadline = {
                    let d = started + s.response_timeout;
                    deadline.map_or(d, |r| r.min(d))
                };
                let sent = upstream.send(req, head_deadline).await;
                let took = started.elapsed();
                if let Some(p) = log.as_mut() {
                    p.record().upstream_time = Some(took);
                }
                let Some(sent) = sent else {
                    pool.metrics.timeouts.inc();
                    pool.metrics.errors.inc();
                    warn!(pool = %pool.name, endpoint = %ep.addr, timeout_ms = took.as_millis() as u64, "upstream sent no response head in time");
                    break 'answer local(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("upstream of service {} did not answer in time\n", pool.name),
                    );
                };
                match sent {
                    Ok(resp) => {
                        pool.metrics.latency.observe(took.as_secs_f64());
                        ep.mark_success();
                        break 'answer respond(
                            &shared, resp, upgrade, in_flight, upstream, deadline,
                        );
                    }
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if upstream.reused => {
                            debug!(endpoint = %ep.addr, error = %e.error(), "pooled upstream connection was closed; retrying");
                            req = unsent;
                        }
                        _ => {
                            if let Some(Cut::TooLarge(limit)) = Cut::find(e.error()) {
                                debug!(pool = %pool.name, limit, "request body over the route's limit; cut");
                                break 'answer too_large(*limit);
                            }
                            pool.metrics.errors.inc();
                            warn!(pool = %pool.name, endpoint = %ep.addr, error = %source_chain(e.error()), "upstream request failed");
                            break;
                        }
                    },
                }
            }
            if timed_out {
                break 'answer local(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("upstream of service {} did not accept in time\n", pool.name),
                );
            }
            local(
                StatusCode::BAD_GATEWAY,
                format!("upstream of service {} unreachable\n", pool.name),
            )
        };
        if tls {
            if let Some(v) = &route.hsts {
                resp.headers_mut()
                    .entry(header::STRICT_TRANSPORT_SECURITY)
                    .or_insert_with(|| v.clone());
            }
        }
        pool.metrics.response(resp.status().as_u16());
        Ok(finish_log(log, resp))
    }
}

/// Request smuggling vectors (RFC 9112 §6.1-6.3): framing an HTTP/1.1 upstream might read
/// otherwise than this proxy. `Transfer-Encoding` with `Content-Length`, or `Content-Length`
/// repeated or not a plain number. hyper's HTTP/1 parser refuses these (and obsolete line
/// folding, and `Transfer-Encoding` in HTTP/1.0) or, where RFC 9112 lets it settle them, marks
/// the request with `hyper::ext::AmbiguousFraming`; an HTTP/2 request is forwarded as
/// HTTP/1.1 and its `content-length` fields are checked here.
fn ambiguous_framing<B>(req: &Request<B>) -> Option<&'static str> {
    let h = req.headers();
    let mut lengths = h.get_all(header::CONTENT_LENGTH).iter();
    let length = lengths.next();
    let te = h.contains_key(header::TRANSFER_ENCODING);
    if te && length.is_some() {
        return Some("both Transfer-Encoding and Content-Length");
    }
    if lengths.next().is_some() {
        return Some("more than one Content-Length");
    }
    if let Some(v) = length {
        if v.is_empty() || !v.as_bytes().iter().all(u8::is_ascii_digit) {
            return Some("Content-Length is not a number");
        }
    }
    None
}

fn respond(
    shared: &Arc<Shared>,
    mut resp: Response<Incoming>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    in_flight: crate::pool::InFlight,
    upstream: upstream::Conn,
    deadline: Option<tokio::time::Instant>,
) -> Response<RespBody> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = upgrade {
            let upstream_side = hyper::upgrade::on(&mut resp);
            // The upgraded stream outlives its HTTP connection: a drain waits for it like
            // for a TCP stream.
            let live = shared.track();
            tokio::spawn(async move {
                let _guards = (in_flight, live, upstream);
                match tokio::try_join!(client_side, upstream_side) {
                    Ok((c, u)) => {
                        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                        if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                            debug!(error = %e, "upgraded connection ended");
                        }
                    }
                    Err(e) => debug!(error = %e, "upgrade failed"),
                }
            });
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, Either::Right(Full::default()));
        }
    }
    strip_hop_by_hop(resp.headers_mut(), false);
    resp.map(|b| {
        Either::Left(
            Metered::new(
                b,
                shared.bytes_down.clone(),
                Some(in_flight),
                Some(upstream),
            )
            .deadline(deadline),
        )
    })
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .any(|v| header_has_token(v, "upgrade"))
}

fn header_has_token(v: &HeaderValue, token: &str) -> bool {
    v.to_str()
        .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

/// Removes RFC 9110 §7.6.1 connection-specific headers, including those named in
/// `Connection`. For an upgrade, `Connection: upgrade` and `Upgrade` are kept.
/// Hop-by-hop fields (RFC 9110 §7.6.1), plus the legacy ones proxies drop.
static HOP_BY_HOP: [&HeaderName; 8] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::PROXY_AUTHORIZATION,
    &header::UPGRADE,
];

/// The index of `name` in [`HOP_BY_HOP`]: one match on the name's text instead of eight
/// comparisons per field.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "te" => 3,
        "trailer" => 4,
        "transfer-encoding" => 5,
        "proxy-authorization" => 6,
        "upgrade" => 7,
        _ => return None,
    })
}

fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // One pass comparing names finds the few fields present (usually none in a request,
    // `Connection: keep-alive` in a response), and only those are removed: a hashed removal
    // per listed name cost 6% of a proxied request's instructions (callgrind). The same pass
    // reads `Connection`'s values, rather than a hashed lookup of them afterwards.
    let mut present = 0u8;
    let mut named: Vec<HeaderName> = Vec::new();
    for (k, value) in h.iter() {
        let Some(i) = hop_by_hop_index(k) else {
            continue;
        };
        present |= 1 << i;
        // HOP_BY_HOP[0] is Connection. The usual tokens (`keep-alive`, `close`) are
        // recognised as bytes, and only other tokens are parsed into names: this cost 700
        // instructions per response as a chain of string adapters parsing every token.
        if i != 0 {
            continue;
        }
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.is_empty()
                || token.eq_ignore_ascii_case(b"keep-alive")
                || token.eq_ignore_ascii_case(b"close")
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token) {
                if hop_by_hop_index(&name).is_none() {
                    named.push(name);
                }
            }
        }
    }
    for name in named {
        h.remove(name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 && !(keep_upgrade && **name == header::UPGRADE) {
            h.remove(*name);
        }
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn set_forwarded(h: &mut HeaderMap, conn: &ConnInfo, host: Option<HeaderValue>) {
    h.insert(X_FORWARDED_FOR.clone(), conn.client_ip.clone());
    h.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    match host {
        Some(v) => h.insert(X_FORWARDED_HOST.clone(), v),
        None => h.remove(&X_FORWARDED_HOST),
    };
}

fn redirect(host: &str, port: u16, uri: &Uri) -> Response<RespBody> {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{port}{pq}")
    };
    let mut r = local(StatusCode::PERMANENT_REDIRECT, "");
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

pub fn local(status: StatusCode, body: impl Into<Bytes>) -> Response<RespBody> {
    let mut r = Response::new(Either::Right(Full::new(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every forwarded request's future is built on the stack and copied into its box, and
    /// the outgoing request and the response are moved a dozen times each between this
    /// proxy and hyper: all three are kept small (BENCHMARKS.md, 2026-12-07: a future of
    /// 2,336 bytes and a request of 408 cost 1,700 instructions per request). A change that
    /// holds the request twice in the future (an `async fn`'s arguments beside their
    /// locals), or puts a large field in a body or the upstream connection, fails here. The
    /// sizes are of types, so nothing is run.
    #[test]
    fn the_forwarded_exchange_its_request_and_response_stay_small() {
        fn future_size<F, Fut>(_: F) -> usize
        where
            F: FnOnce(Arc<Shared>, Outgoing, Option<PendingLog>) -> Fut,
        {
            std::mem::size_of::<Fut>()
        }
        let future = future_size(forward);
        assert!(
            future <= 800,
            "forward's future is {future} bytes (704 when written)"
        );
        let request = std::mem::size_of::<Request<ReqBody>>();
        assert!(
            request <= 240,
            "an outgoing request is {request} bytes (232 when written)"
        );
        let response = std::mem::size_of::<Response<RespBody>>();
        assert!(
            response <= 272,
            "a response is {response} bytes (264 when written)"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive, X-Secret ,close"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("x-other"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn hop_by_hop_index_follows_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        for other in [
            header::HOST,
            header::ACCEPT,
            HeaderName::from_static("x-te"),
        ] {
            assert_eq!(hop_by_hop_index(&other), None, "{other}");
        }
    }

    #[test]
    fn each_hop_by_hop_field_alone_is_removed_and_others_are_untouched() {
        for name in HOP_BY_HOP {
            let mut h = HeaderMap::new();
            h.insert("x-kept", HeaderValue::from_static("1"));
            h.insert(name.clone(), HeaderValue::from_static("v"));
            strip_hop_by_hop(&mut h, false);
            let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(names, vec!["x-kept"], "{name}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a.test"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }

    #[test]
    fn upgrade_keeps_upgrade_headers_only() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert!(!h.contains_key("keep-alive"));
    }

    #[test]
    fn ambiguous_framing_is_named() {
        let req = |version, headers: &[(&str, &str)]| {
            let mut b = Request::builder().version(version);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap()
        };
        let h11 = Version::HTTP_11;
        let cases: [(Request<()>, Option<&str>); 6] = [
            (req(h11, &[("content-length", "5")]), None),
            (req(h11, &[("transfer-encoding", "chunked")]), None),
            (
                req(
                    h11,
                    &[("content-length", "5"), ("transfer-encoding", "chunked")],
                ),
                Some("both Transfer-Encoding and Content-Length"),
            ),
            (
                req(h11, &[("content-length", "5"), ("content-length", "5")]),
                Some("more than one Content-Length"),
            ),
            (
                req(h11, &[("content-length", "+5")]),
                Some("Content-Length is not a number"),
            ),
            (req(Version::HTTP_2, &[("content-length", "5")]), None),
        ];
        for (r, want) in cases {
            assert_eq!(ambiguous_framing(&r), want, "{:?}", r.headers());
        }
    }

    #[test]
    fn forwarded_headers_replace_client_values() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        let conn = ConnInfo::new("[::ffff:192.0.2.1]:5000".parse().unwrap(), true);
        set_forwarded(&mut h, &conn, Some(HeaderValue::from_static("a.test")));
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "a.test");
    }

    #[test]
    fn redirect_keeps_path_and_query_and_port() {
        let uri: Uri = "/a/b?c=d".parse().unwrap();
        let r = redirect("x.test", 8443, &uri);
        assert_eq!(r.status(), 308);
        assert_eq!(r.headers()[header::LOCATION], "https://x.test:8443/a/b?c=d");
        let r = redirect("x.test", 443, &uri);
        assert_eq!(r.headers()[header::LOCATION], "https://x.test/a/b?c=d");
    }
}
