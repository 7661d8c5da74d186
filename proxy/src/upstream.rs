//! Upstream HTTP/1.1 connections, kept alive and pooled per worker thread and endpoint.
//!
//! Each worker is a single-threaded runtime, so its pool is a thread-local map: checkout and
//! return take no lock and hash no string. A connection is checked out (or connected) before
//! the request is built, so a refused connection leaves the request untouched and it can be
//! tried on another endpoint without copying anything.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use rustc_hash::FxHashMap as HashMap;
use tokio::net::TcpStream;
use tokio::time::{Instant as TokioInstant, Sleep};
use tracing::debug;

use crate::http::ReqBody;
use crate::pool::now_ms;
use crate::server::tune;

/// Idle connections kept per endpoint and worker; more are closed when returned.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

struct Idle {
    sender: SendRequest<ReqBody>,
    /// [`now_ms`] when returned to the pool.
    since_ms: u64,
    timer: Option<Pin<Box<Sleep>>>,
}

thread_local! {
    static IDLE: RefCell<HashMap<SocketAddr, Vec<Idle>>> = RefCell::new(HashMap::default());
}

/// The response head, or the error and (when it was not written) the request.
type Answer = Result<Response<Incoming>, TrySendError<Request<ReqBody>>>;

/// A connection to one endpoint, owned by one exchange at a time. It does not keep the
/// endpoint's address (32 bytes): the response body that carries it back to the pool moves
/// with every response, and its in-flight guard knows the address.
pub struct Conn {
    sender: SendRequest<ReqBody>,
    /// Came from the pool: the server may have closed it meanwhile.
    pub reused: bool,
    /// The response-head timer, kept with the connection and moved lazily (see [`Conn::send`]).
    timer: Option<Pin<Box<Sleep>>>,
}

/// A pooled connection that can take a request, or a new one.
/// Errors are connect errors: nothing was sent.
pub async fn checkout(
    addr: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
) -> io::Result<Conn> {
    while let Some(mut idle) = pop(addr) {
        let idle_ms = now_ms().saturating_sub(idle.since_ms);
        if u128::from(idle_ms) > idle_timeout.as_millis() || idle.sender.is_closed() {
            continue;
        }
        // The previous exchange ended (the body was dropped); the connection task may not
        // have caught up yet, so wait for it rather than discard a good connection.
        if idle.sender.ready().await.is_ok() {
            return Ok(Conn {
                sender: idle.sender,
                reused: true,
                timer: idle.timer,
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
    tune(socket2::SockRef::from(&stream));
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
        reused: false,
        timer: None,
    })
}

fn pop(addr: SocketAddr) -> Option<Idle> {
    IDLE.with(|m| m.borrow_mut().get_mut(&addr)?.pop())
}

impl Conn {
    /// Sends `req` and waits for the response head until `deadline`; `None` when it passed.
    /// On failure the request comes back when it was not written at all.
    ///
    /// The timer lives with the connection and is moved only when it fires early or must
    /// fire sooner: one exchange after another pushes the deadline later, so the timer
    /// fires about once per timeout period and is then set to the current deadline, instead
    /// of a timer being registered and cancelled on every request (nginx's and HAProxy's
    /// approach to their expiry timers, too).
    ///
    /// The request goes to hyper here, not from a future: an `async fn` would hold it in
    /// its state beside hyper's future, which holds it too (560 bytes against 272).
    pub fn send(
        &mut self,
        req: Request<ReqBody>,
        deadline: TokioInstant,
    ) -> Sent<'_, impl Future<Output = Answer> + Send + use<>> {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        Sent {
            exchange: self.sender.try_send_request(req),
            timer,
            deadline,
        }
    }

    /// Returns the connection to this thread's pool of `addr`'s connections, for the next
    /// exchange.
    pub fn release(self, addr: SocketAddr) {
        if self.sender.is_closed() {
            return;
        }
        IDLE.with(|m| {
            let mut m = m.borrow_mut();
            let idle = m.entry(addr).or_default();
            if idle.len() < MAX_IDLE_PER_ENDPOINT {
                idle.push(Idle {
                    sender: self.sender,
                    since_ms: now_ms(),
                    timer: self.timer,
                });
            }
        });
    }
}

pin_project_lite::pin_project! {
    /// [`Conn::send`]'s future: hyper's exchange raced against the response-head timer.
    pub struct Sent<'a, F> {
        #[pin]
        exchange: F,
        timer: &'a mut Pin<Box<Sleep>>,
        deadline: TokioInstant,
    }
}

impl<F: Future<Output = Answer>> Future for Sent<'_, F> {
    type Output = Option<Answer>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Answer>> {
        let this = self.project();
        if let Poll::Ready(r) = this.exchange.poll(cx) {
            return Poll::Ready(Some(r));
        }
        while this.timer.as_mut().poll(cx).is_ready() {
            if TokioInstant::now() >= *this.deadline {
                return Poll::Ready(None);
            }
            this.timer.as_mut().reset(*this.deadline);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::StatusCode;
    use http_body_util::{Either, Empty};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers each request head on a connection in turn: `/slow` after 400 ms, anything
    /// else at once.
    async fn server() -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut pending = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head: Vec<u8> = pending.drain(..end + 4).collect();
                    if head.starts_with(b"GET /slow ") {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if s.write_all(ok).await.is_err() {
                        return;
                    }
                }
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                }
            }
        });
        addr
    }

    fn get(path: &str) -> Request<ReqBody> {
        Request::get(path)
            .header(http::header::HOST, "t")
            .body(Either::Right(Empty::<Bytes>::new()))
            .unwrap()
    }

    /// The head timer stays with the connection and is moved lazily: an exchange must not
    /// inherit an earlier exchange's deadline, and a sooner deadline must still hold.
    #[tokio::test]
    async fn each_exchange_gets_its_own_head_deadline() {
        let addr = server().await;
        let mut conn = connect(addr, Duration::from_secs(1)).await.unwrap();
        let at = |ms| TokioInstant::now() + Duration::from_millis(ms);
        // Sets the timer to fire 100 ms from now.
        let r = conn.send(get("/fast"), at(100)).await;
        assert_eq!(
            r.and_then(|r| r.ok()).map(|r| r.status()),
            Some(StatusCode::OK)
        );
        // The timer fires during this exchange, before its own deadline: it is moved on,
        // and the answer after 400 ms arrives in time.
        conn.sender.ready().await.unwrap();
        let started = Instant::now();
        let r = conn.send(get("/slow"), at(2_000)).await;
        assert_eq!(
            r.and_then(|r| r.ok()).map(|r| r.status()),
            Some(StatusCode::OK)
        );
        assert!(started.elapsed() >= Duration::from_millis(350));
        // The timer is now set 2 s out; a deadline 150 ms away must end this exchange then.
        conn.sender.ready().await.unwrap();
        let started = Instant::now();
        assert!(conn.send(get("/slow"), at(150)).await.is_none());
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(140) && took < Duration::from_millis(350),
            "{took:?}"
        );
    }
}
