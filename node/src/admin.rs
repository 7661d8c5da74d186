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

use crate::daemon::Daemon;

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

async fn handle(d: &Daemon, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            d.metrics_text(),
        ),
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
            "try /healthz, /status, /members, /metrics or POST /reload\n".into(),
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
