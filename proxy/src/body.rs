//! Body and stream wrappers that count relayed bytes and keep an endpoint's in-flight count
//! until the exchange really ends (the last body frame, not the response headers).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::access_log::PendingLog;
use crate::pool::{now_ms, InFlight};
use crate::upstream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why this proxy ended a body early (the error its reader sees).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Cut {
    #[error("request body is larger than the route's limit of {0} bytes")]
    TooLarge(u64),
    #[error("the route's timeout passed")]
    Timeout,
}

impl Cut {
    /// Finds a `Cut` in an error's source chain.
    pub fn find<'a>(mut e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Cut> {
        loop {
            if let Some(c) = e.downcast_ref::<Cut>() {
                return Some(c);
            }
            e = e.source()?;
        }
    }
}

/// Counts data bytes locally and adds them to the shared counter once, on drop, so streaming
/// a GiB costs no shared atomic per chunk. A response body also carries its upstream
/// connection and hands it back to the pool once the body has ended (not when dropped midway:
/// such a connection is not reusable).
pub struct Metered<B> {
    inner: B,
    bytes: u64,
    counter: Counter,
    ended: bool,
    in_flight: Option<InFlight>,
    upstream: Option<upstream::Conn>,
    /// Data bytes past this end the body with [`Cut::TooLarge`].
    limit: Option<u64>,
    /// The body ends with [`Cut::Timeout`] when this fires.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Told the byte count when the body is dropped: the access log's record (response
    /// bodies) or the request size it reads (request bodies).
    log: Option<PendingLog>,
    bytes_seen: Option<Arc<AtomicU64>>,
}

impl<B: Body> Metered<B> {
    pub fn new(
        inner: B,
        counter: Counter,
        in_flight: Option<InFlight>,
        upstream: Option<upstream::Conn>,
    ) -> Self {
        Metered {
            ended: inner.is_end_stream(),
            inner,
            bytes: 0,
            counter,
            in_flight,
            upstream,
            limit: None,
            deadline: None,
            log: None,
            bytes_seen: None,
        }
    }

    pub fn limit(mut self, limit: Option<u64>) -> Self {
        self.limit = limit;
        self
    }

    pub fn deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline.map(|d| Box::pin(tokio::time::sleep_until(d)));
        self
    }

    pub fn log(mut self, log: Option<PendingLog>) -> Self {
        self.log = log;
        self
    }

    /// Stores the byte count in `seen` when dropped.
    pub fn report_to(mut self, seen: Option<Arc<AtomicU64>>) -> Self {
        self.bytes_seen = seen;
        self
    }
}

impl<B> Drop for Metered<B> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.counter.inc_by(self.bytes);
        }
        if self.ended {
            if let (Some(c), Some(f)) = (self.upstream.take(), &self.in_flight) {
                c.release(f.addr());
            }
        }
        if let Some(seen) = &self.bytes_seen {
            seen.store(self.bytes, Ordering::Relaxed);
        }
        if let Some(log) = self.log.take() {
            log.finish(self.bytes);
        }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(d) = &mut self.deadline {
            if d.as_mut().poll(cx).is_ready() {
                self.deadline = None;
                return Poll::Ready(Some(Err(Cut::Timeout.into())));
            }
        }
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    self.bytes += d.len() as u64;
                    if let Some(limit) = self.limit.filter(|&l| self.bytes > l) {
                        return Poll::Ready(Some(Err(Cut::TooLarge(limit).into())));
                    }
                }
                self.ended = self.inner.is_end_stream();
            }
            None => self.ended = true,
            Some(Err(_)) => {}
        }
        Poll::Ready(frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A stream wrapper for raw TCP relaying through buffers (where `splice` is not available):
/// counts bytes read into a shared counter (streams may live for days, so counts are
/// published as they happen) and stamps the last activity.
#[cfg_attr(target_os = "linux", allow(dead_code))]
pub struct Counted<'a, S> {
    inner: S,
    counter: Counter,
    last_activity: &'a AtomicU64,
    /// Bytes read so far, kept outside so that a relay cut short still has its count.
    total: &'a AtomicU64,
}

#[cfg_attr(target_os = "linux", allow(dead_code))]
impl<'a, S> Counted<'a, S> {
    pub fn new(
        inner: S,
        counter: Counter,
        last_activity: &'a AtomicU64,
        total: &'a AtomicU64,
    ) -> Self {
        Counted {
            inner,
            counter,
            last_activity,
            total,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.total.fetch_add(n, Ordering::Relaxed);
            self.counter.inc_by(n);
            self.last_activity.store(now_ms(), Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The relay where splice is not available: bytes read through `Counted` reach the
    /// shared counter and the total outside it as they arrive, so a relay dropped mid-stream
    /// (as the idle timeout drops it) keeps its count.
    #[tokio::test]
    async fn counted_totals_outlive_a_dropped_relay() {
        let (mut client, a) = tokio::io::duplex(1024);
        let (b, mut server) = tokio::io::duplex(1024);
        let counter = Counter::<u64>::default();
        let (up, down, activity) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
        {
            let mut a = Counted::new(a, counter.clone(), &activity, &up);
            let mut b = Counted::new(b, Counter::default(), &activity, &down);
            let relay = tokio::io::copy_bidirectional(&mut a, &mut b);
            tokio::pin!(relay);
            client.write_all(b"hello").await.unwrap();
            let mut got = [0u8; 5];
            tokio::select! {
                _ = &mut relay => panic!("the relay ended"),
                r = server.read_exact(&mut got) => { r.unwrap(); }
            }
            assert_eq!(&got, b"hello");
        }
        assert_eq!(up.load(Ordering::Relaxed), 5);
        assert_eq!(counter.get(), 5);
        assert_eq!(down.load(Ordering::Relaxed), 0);
        assert!(activity.load(Ordering::Relaxed) > 0, "activity stamped");
    }
}
