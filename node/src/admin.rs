//! The admin API on loopback: `/healthz`, `/status` (JSON) and `/metrics` (Prometheus text).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use http_body_util::BodyExt;

use crate::daemon::{Daemon, PublishError};

pub async fn serve(listener: TcpListener, daemon: Arc<Daemon>) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let daemon = daemon.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let d = daemon.clone();
                async move { Ok::<_, Infallible>(handle(&d, req).await) }
            });
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                debug!(error = %e, "admin connection ended");
            }
        });
    }
}

/// `PUT /pools/<name>` with a JSON list of `"ip:port"` or `"ip:port=weight"`.
async fn put_pool(d: &Daemon, name: &str, req: Request<Incoming>) -> (StatusCode, String) {
    let body = match http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body: {e}\n"),
            )
        }
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

async fn handle(d: &Daemon, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
            "try /healthz, /status, /members, /topology, /metrics, POST /reload, POST /drain, POST /drain/undo or PUT /pools/<name>\n".into(),
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
