//! The least an HTTP/1.1 reverse proxy built on hyper can do per request: the floor under
//! edgemesh's data path, for `bench/callgrind.py --floor` and `bench/floor.py`.
//!
//! One single-threaded runtime (as an edgemesh worker); each client connection gets its own
//! upstream connection, made when the connection's first request arrives and used for every
//! later one, so there is no pool to consult. Requests and responses pass through untouched:
//! no routing, no header rewrite, no metrics, no timeouts, no access log. Not a proxy anyone
//! should run: it is a measuring stick.
//!
//!   cargo run --release -p edgemesh-proxy --example hyper_floor -- LISTEN_ADDR BACKEND_ADDR

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

// The allocator edgemesh runs with.
#[global_allocator]
static ALLOC: edgemesh_proxy::Mimalloc = edgemesh_proxy::Mimalloc;

type Upstream = Arc<Mutex<Option<client::SendRequest<Incoming>>>>;

async fn exchange(
    backend: SocketAddr,
    upstream: Upstream,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    // Requests on one client connection come one after another, so the lock is never
    // contended: it only makes the sender shareable with the service.
    let mut slot = upstream.lock().await;
    if slot.as_ref().is_none_or(|s| s.is_closed()) {
        let stream = TcpStream::connect(backend).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = client::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        *slot = Some(sender);
    }
    let sender = slot.as_mut().expect("set above");
    sender.ready().await?;
    Ok(sender.send_request(req).await?)
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, backend] = &args[..] else {
        eprintln!("usage: hyper_floor LISTEN_ADDR BACKEND_ADDR");
        std::process::exit(2);
    };
    let parse = |what: &str, s: &str| -> std::io::Result<SocketAddr> {
        s.parse().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{what} {s:?}: {e}"),
            )
        })
    };
    let (listen, backend) = (
        parse("LISTEN_ADDR", listen)?,
        parse("BACKEND_ADDR", backend)?,
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(listen).await?;
            loop {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                let upstream = Upstream::default();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| exchange(backend, upstream.clone(), req));
                    let _ = server::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
}
