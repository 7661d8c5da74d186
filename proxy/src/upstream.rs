//! Upstream HTTP/1.1 connections, kept alive and pooled per worker thread and endpoint.
//!
//! Each worker is a single-threaded runtime, so its pool is a thread-local map: checkout and
//! return take no lock and hash no string. A connection is checked out (or connected) before
//! the request is built, so a refused connection leaves the request untouched and it can be
//! tried on another endpoint without copying anything.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use rustc_hash::FxHashMap as HashMap;
use tokio::net::TcpStream;
use tracing::debug;

use crate::http::ReqBody;
use crate::server::set_keepalive;

/// Idle connections kept per endpoint and worker; more are closed when returned.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

struct Idle {
    sender: SendRequest<ReqBody>,
    since: Instant,
}

thread_local! {
    static IDLE: RefCell<HashMap<SocketAddr, Vec<Idle>>> = RefCell::new(HashMap::default());
}

/// A connection to one endpoint, owned by one exchange at a time.
pub struct Conn {
    sender: SendRequest<ReqBody>,
    addr: SocketAddr,
    /// Came from the pool: the server may have closed it meanwhile.
    pub reused: bool,
}

/// A pooled connection that can take a request, or a new one.
/// Errors are connect errors: nothing was sent.
pub async fn checkout(
    addr: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
) -> io::Result<Conn> {
    while let Some(mut idle) = pop(addr) {
        if idle.since.elapsed() > idle_timeout || idle.sender.is_closed() {
            continue;
        }
        // The previous exchange ended (the body was dropped); the connection task may not
        // have caught up yet, so wait for it rather than discard a good connection.
        if idle.sender.ready().await.is_ok() {
            return Ok(Conn {
                sender: idle.sender,
                addr,
                reused: true,
            });
        }
    }
    // Boxed: the connect path's state (a timer, the TCP connect and hyper's handshake) would
    // otherwise sit in, and be copied with, every exchange's future.
    Box::pin(connect(addr, connect_timeout)).await
}

pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    set_keepalive(&stream);
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(upstream = %addr, error = %e, "upstream connection ended");
        }
    });
    Ok(Conn {
        sender,
        addr,
        reused: false,
    })
}

fn pop(addr: SocketAddr) -> Option<Idle> {
    IDLE.with(|m| m.borrow_mut().get_mut(&addr)?.pop())
}

impl Conn {
    /// Sends `req`. On failure the request comes back when it was not written at all.
    pub async fn send(
        &mut self,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<ReqBody>>> {
        self.sender.try_send_request(req).await
    }

    /// Returns the connection to this thread's pool for the next exchange.
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        IDLE.with(|m| {
            let mut m = m.borrow_mut();
            let idle = m.entry(self.addr).or_default();
            if idle.len() < MAX_IDLE_PER_ENDPOINT {
                idle.push(Idle {
                    sender: self.sender,
                    since: Instant::now(),
                });
            }
        });
    }
}
