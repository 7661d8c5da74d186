//! Body and stream wrappers that count relayed bytes and keep an endpoint's in-flight count
//! until the exchange really ends (the last body frame, not the response headers).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::pool::{now_ms, InFlight};
use crate::upstream;

/// Counts data bytes locally and adds them to the shared counter once, on drop, so streaming
/// a GiB costs no shared atomic per chunk. A response body also carries its upstream
/// connection and hands it back to the pool once the body has ended (not when dropped midway:
/// such a connection is not reusable).
pub struct Metered<B> {
    inner: B,
    bytes: u64,
    counter: Counter,
    ended: bool,
    _in_flight: Option<InFlight>,
    upstream: Option<upstream::Conn>,
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
            _in_flight: in_flight,
            upstream,
        }
    }
}

impl<B> Drop for Metered<B> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.counter.inc_by(self.bytes);
        }
        if self.ended {
            if let Some(c) = self.upstream.take() {
                c.release();
            }
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Metered<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    self.bytes += d.len() as u64;
                }
                self.ended = self.inner.is_end_stream();
            }
            None => self.ended = true,
            Some(Err(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A stream wrapper for raw TCP relaying: counts bytes read into a shared counter (streams
/// may live for days, so counts are published as they happen) and stamps the last activity.
pub struct Counted<S> {
    inner: S,
    counter: Counter,
    last_activity: Arc<AtomicU64>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, counter: Counter, last_activity: Arc<AtomicU64>) -> Self {
        Counted {
            inner,
            counter,
            last_activity,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.counter.inc_by(n);
            self.last_activity.store(now_ms(), Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
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
