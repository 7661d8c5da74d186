//! The admin API on loopback: `/healthz`, `/status` (JSON) and `/metrics` (Prometheus text).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use http_body_util::BodyExt;

use crate::daemon::{ChangeError, Daemon, PublishError};

/// How long a client of the admin API has to send a request's head, counted from its
/// connection (or from the previous response on a kept-alive one).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request's body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections served at once. At the limit the loop stops accepting (the kernel's
/// backlog queues the rest) until one closes, as the proxy's listeners do.
pub const MAX_CONNECTIONS: usize = 64;

pub async fn serve(listener: TcpListener, daemon: Arc<Daemon>) {
    // HTTP/1 only: meshctl, curl and Prometheus speak it. hyper's HTTP/1 server runs its
    // header timeout from the connection's start, so a client that connects and sends
    // nothing is closed too.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                warn!(
                    limit = MAX_CONNECTIONS,
                    "admin API connection limit reached; accepting paused"
                );
                let Ok(s) = slots.clone().acquire_owned().await else {
                    return;
                };
                s
            }
        };
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let daemon = daemon.clone();
        let conn = builder.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| {
                let d = daemon.clone();
                async move { Ok::<_, Infallible>(handle(&d, req).await) }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "admin connection ended");
            }
            drop(slot);
        });
    }
}

/// `PUT /pools/<name>` with a JSON list of `"ip:port"` or `"ip:port=weight"`.
async fn put_pool(d: &Daemon, name: &str, req: Request<Incoming>) -> (StatusCode, String) {
    let body = match body(req, 64 * 1024).await {
        Ok(b) => b,
        Err(e) => return e,
    };
    let items: Vec<String> = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("expected a JSON list of \"ip:port\" or \"ip:port=weight\": {e}\n"),
            )
        }
    };
    let mut endpoints = Vec::new();
    for item in &items {
        let (addr, weight) = item.split_once('=').unwrap_or((item, "1"));
        match (addr.parse::<std::net::SocketAddr>(), weight.parse::<u32>()) {
            (Ok(a), Ok(w)) if (1..=1000).contains(&w) => endpoints.push((a, w)),
            _ => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("endpoint {item:?} is not ip:port[=weight 1..1000]\n"),
                )
            }
        }
    }
    match d.publish_pool(name, &endpoints).await {
        Ok(()) => (
            StatusCode::OK,
            format!("published pool {name}: {} endpoints\n", endpoints.len()),
        ),
        Err(e @ PublishError::UnknownPool(_)) => (StatusCode::NOT_FOUND, format!("{e}\n")),
        Err(e @ PublishError::NoMesh) => (StatusCode::CONFLICT, format!("{e}\n")),
        Err(e @ PublishError::NotLeader(_)) => (StatusCode::CONFLICT, format!("{e}\n")),
    }
}

/// A request body of at most `limit` bytes, arriving within [`BODY_TIMEOUT`].
async fn body(req: Request<Incoming>, limit: usize) -> Result<Bytes, (StatusCode, String)> {
    let collect = http_body_util::Limited::new(req.into_body(), limit).collect();
    match tokio::time::timeout(BODY_TIMEOUT, collect).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body: {e}\n"),
        )),
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            format!("request body: not received within {BODY_TIMEOUT:?}\n"),
        )),
    }
}

/// A change to the cluster configuration (`POST /config`, `/config/check`,
/// `/config/rollback`).
#[derive(serde::Deserialize)]
struct ConfigChange {
    /// The document (apply, check) or the version to restore (rollback).
    #[serde(default)]
    doc: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    author: String,
    /// The live version this change replaces (compare-and-set); absent for a first one.
    replaces: Option<u64>,
    rollback_to: Option<u64>,
}

async fn post_config(d: &Daemon, path: &str, req: Request<Incoming>) -> (StatusCode, String) {
    let bytes = match body(req, crate::cluster_config::MAX_DOC_BYTES + 64 * 1024).await {
        Ok(b) => b,
        Err(e) => return e,
    };
    let c: ConfigChange = match serde_json::from_slice(&bytes) {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("expected JSON {{doc, source, author, replaces}}: {e}\n"),
            )
        }
    };
    let source = if c.source.is_empty() {
        "admin API".to_string()
    } else {
        c.source
    };
    let result = match path {
        "/config/check" => {
            return match d.check_config(&source, &c.doc).await {
                Ok(hash) => (
                    StatusCode::OK,
                    serde_json::json!({ "hash": hash }).to_string(),
                ),
                Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")),
            }
        }
        "/config/rollback" => match c.rollback_to {
            Some(to) => d.rollback_config(to, c.author, c.replaces).await,
            None => return (StatusCode::BAD_REQUEST, "rollback_to is missing\n".into()),
        },
        _ => {
            d.change_config(crate::cluster_config::Proposal {
                id: 0,
                doc: c.doc,
                source,
                node: String::new(),
                author: c.author,
                replaces: c.replaces,
            })
            .await
        }
    };
    match result {
        Ok(v) => (
            StatusCode::OK,
            serde_json::json!({ "version": v }).to_string(),
        ),
        Err(e) => {
            let code = match e {
                ChangeError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                ChangeError::Conflict(_) => StatusCode::CONFLICT,
                ChangeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                ChangeError::NotFound(_) => StatusCode::NOT_FOUND,
            };
            (code, format!("{e}\n"))
        }
    }
}

async fn handle(d: &Daemon, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() == Method::POST && req.uri().path().starts_with("/config") {
        let path = req.uri().path().to_string();
        if ["/config", "/config/check", "/config/rollback"].contains(&path.as_str()) {
            let (status, body) = post_config(d, &path, req).await;
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            return r;
        }
    }
    if req.method() == Method::PUT {
        if let Some(name) = req.uri().path().strip_prefix("/pools/").map(str::to_string) {
            let (status, body) = put_pool(d, &name, req).await;
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            return r;
        }
    }
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        (&Method::GET, "/status") => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&d.status_json()).unwrap_or_default(),
        ),
        (&Method::GET, "/members") => match d.mesh_status() {
            Some(m) => (
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&m).unwrap_or_default(),
            ),
            None => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "this node runs alone: no [gossip] section in its configuration\n".into(),
            ),
        },
        (&Method::GET, "/topology") => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&d.topology_json().await).unwrap_or_default(),
        ),
        (&Method::GET, "/config") => (
            StatusCode::OK,
            "application/json",
            serde_json::json!({ "live": d.live_config() }).to_string(),
        ),
        (&Method::GET, "/config/history") => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string(&d.config_history()).unwrap_or_default(),
        ),
        (&Method::GET, "/config/status") => (
            StatusCode::OK,
            "application/json",
            d.config_status_json().to_string(),
        ),
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            d.metrics_text(),
        ),
        (&Method::POST, "/drain") => {
            d.request_drain("admin API", false).await;
            (
                StatusCode::OK,
                "text/plain",
                "draining: out of DNS once the leader updates it; still serving (undo: POST /drain/undo)\n".into(),
            )
        }
        (&Method::POST, "/drain/undo") => match d.undo_drain() {
            Ok(()) => (StatusCode::OK, "text/plain", "back in service\n".into()),
            Err(e) => (StatusCode::CONFLICT, "text/plain", format!("{e}\n")),
        },
        (&Method::POST, "/reload") => match d.reload("admin API").await {
            Ok(()) => (StatusCode::OK, "text/plain", "reloaded\n".into()),
            Err(e) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "text/plain",
                format!("{e}\n"),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /healthz, /status, /members, /topology, /metrics, /config, /config/history, /config/status, POST /config, POST /config/check, POST /config/rollback, POST /reload, POST /drain, POST /drain/undo or PUT /pools/<name>\n".into(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r
}
