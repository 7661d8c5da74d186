//! The idle timeout of an HTTP/2 client connection: one with no open stream for the header
//! timeout is sent GOAWAY and closed, as an HTTP/1 connection is closed when its next request
//! head is not complete in that time. Without it, a client that sent the preface (or only
//! PINGs, or nothing after its last response) held its connection and a slot of the
//! connection limit for as long as it liked.
//!
//! A stream is open from the moment the service has its request until hyper drops its
//! response body (sent whole, or reset): a long download or a silent long poll keeps the
//! connection, whatever its length.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::pool::now_ms;

/// The open streams of one connection, and since when it has had none.
#[derive(Debug)]
pub(crate) struct Streams {
    start: Instant,
    /// `start` on the coarse clock ([`now_ms`]), which stamps closes: a stream's close reads
    /// no finer clock (its ticks are at most 10 ms apart).
    start_ms: u64,
    open: AtomicUsize,
    /// When the last stream closed, on the coarse clock (0: none has).
    closed_ms: AtomicU64,
}

impl Streams {
    /// A connection that started at `start` with no stream yet: idle since then.
    pub(crate) fn new(start: Instant) -> Streams {
        Streams {
            start,
            start_ms: now_ms().saturating_sub(start.elapsed().as_millis() as u64),
            open: AtomicUsize::new(0),
            closed_ms: AtomicU64::new(0),
        }
    }

    /// A stream opens; it is closed when the guard drops.
    pub(crate) fn open(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }

    /// Completes when the connection has had no open stream for `timeout`, counted from
    /// `from` at the earliest. Wakes at most once per `timeout` while streams are open, and
    /// once more after the last one closed.
    pub(crate) async fn idle_for(&self, timeout: Duration, from: Instant) {
        let mut at = from + timeout;
        loop {
            tokio::time::sleep_until(at).await;
            match self.next_look(timeout, from, Instant::now()) {
                Some(next) => at = next,
                None => return,
            }
        }
    }

    /// `None` if the connection has been idle for `timeout` at `now` (counted from `from` at
    /// the earliest), else when to look again.
    fn next_look(&self, timeout: Duration, from: Instant, now: Instant) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) > 0 {
            return Some(now + timeout);
        }
        let closed_ms = self.closed_ms.load(Ordering::Relaxed);
        let closed = Duration::from_millis(closed_ms.saturating_sub(self.start_ms));
        let idle_at = (self.start + closed).max(from) + timeout;
        (idle_at > now).then_some(idle_at)
    }
}

/// One open stream of a [`Streams`].
#[derive(Debug)]
pub(crate) struct StreamGuard(Arc<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let s = &self.0;
        // The time first: a watcher that sees no open stream reads a close no older than it.
        s.closed_ms.fetch_max(now_ms(), Ordering::Relaxed);
        s.open.fetch_sub(1, Ordering::Release);
    }
}

/// A response body that keeps its stream open until hyper drops it.
#[derive(Debug)]
pub(crate) struct Tracked<B> {
    body: B,
    _stream: StreamGuard,
}

impl<B> Tracked<B> {
    pub(crate) fn new(body: B, stream: StreamGuard) -> Tracked<B> {
        Tracked {
            body,
            _stream: stream,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_connection_without_streams_is_idle_from_its_start() {
        let start = Instant::now();
        let s = Streams::new(start);
        assert_eq!(s.next_look(T, start, start + secs(9)), Some(start + T));
        assert_eq!(s.next_look(T, start, start + T), None);
    }

    #[test]
    fn an_open_stream_keeps_it_and_the_clock_restarts_when_the_last_closes() {
        let start = Instant::now();
        let s = Arc::new(Streams::new(start));
        let (a, b) = (s.open(), s.open());
        // Open streams: look again a whole timeout later, however long it has been.
        assert_eq!(
            s.next_look(T, start, start + secs(30)),
            Some(start + secs(40))
        );
        drop(a);
        assert_eq!(
            s.next_look(T, start, start + secs(40)),
            Some(start + secs(50))
        );
        // The last one closes, at 37 s (stamped by hand: the guard stamps the real clock):
        // idle one timeout after that.
        drop(b);
        s.closed_ms.store(s.start_ms + 37_000, Ordering::Relaxed);
        assert_eq!(
            s.next_look(T, start, start + secs(40)),
            Some(start + secs(47))
        );
        assert_eq!(s.next_look(T, start, start + secs(47)), None);
    }

    #[test]
    fn idleness_counts_from_the_later_of_the_last_close_and_from() {
        let start = Instant::now();
        let s = Streams::new(start);
        s.closed_ms.store(s.start_ms + 5_000, Ordering::Relaxed);
        let (from, grace) = (start + secs(30), secs(2));
        assert_eq!(s.next_look(grace, from, from + secs(1)), Some(from + grace));
        assert_eq!(s.next_look(grace, from, from + grace), None);
    }

    #[test]
    fn the_body_holds_its_stream_until_dropped_and_stamps_the_close() {
        let s = Arc::new(Streams::new(Instant::now() - secs(5)));
        let body = Tracked::new(http_body_util::Full::new(Bytes::from("x")), s.open());
        assert_eq!(s.open.load(Ordering::Relaxed), 1);
        assert_eq!(body.size_hint().exact(), Some(1));
        drop(body);
        assert_eq!(s.open.load(Ordering::Relaxed), 0);
        // On the coarse clock, which may lag by a tick.
        let ms = s.closed_ms.load(Ordering::Relaxed) - s.start_ms;
        assert!((4_980..60_000).contains(&ms), "closed at {ms} ms");
    }

    #[tokio::test]
    async fn idle_for_returns_once_idle() {
        let start = Instant::now();
        let s = Streams::new(start);
        s.idle_for(Duration::from_millis(50), start).await;
        assert!(start.elapsed() >= Duration::from_millis(50));
    }
}
