//! Request smuggling guard for HTTP/1 client connections.
//!
//! hyper settles two ambiguous framings itself instead of refusing them: `Content-Length`
//! together with `Transfer-Encoding: chunked` (the length is dropped, RFC 9112 §6.3) and a
//! `Content-Length` repeated with the same value (one is kept). The request that reaches the
//! proxy no longer shows either, yet a peer that framed it otherwise may have been the target.
//! [`FramingScanner`] reads the connection's bytes as hyper reads them, follows the message
//! framing (request line, header fields, `Content-Length` bodies, chunked bodies and trailers)
//! and records the index of the first request head with such framing; the proxy answers that
//! request 400 and closes.
//!
//! The scanner only ever flags; anything it does not follow (an upgrade, CONNECT, HTTP/2's
//! preface, a malformed line hyper will refuse anyway) turns it off for the connection.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest line kept whole; longer lines are only followed to their end (a header name or
/// value the scanner cares about is far shorter).
const KEEP: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a request line (empty lines are skipped, RFC 9112 §2.2).
    RequestLine,
    Headers,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers,
    Off,
}

/// What one request head says about framing.
#[derive(Debug, Default)]
struct Head {
    lengths: u32,
    length: Option<u64>,
    transfer_encoding: bool,
    chunked_last: bool,
    /// CONNECT or Upgrade: the bytes after this head may not be HTTP/1.
    switches: bool,
}

#[derive(Debug)]
pub struct FramingScanner {
    state: State,
    line: Vec<u8>,
    /// Bytes of the current line beyond `KEEP`.
    overflow: usize,
    head: Head,
    heads: u64,
    flagged: Option<(u64, &'static str)>,
}

impl Default for FramingScanner {
    fn default() -> Self {
        FramingScanner {
            state: State::RequestLine,
            line: Vec::new(),
            overflow: 0,
            head: Head::default(),
            heads: 0,
            flagged: None,
        }
    }
}

impl FramingScanner {
    pub fn is_off(&self) -> bool {
        self.state == State::Off
    }

    /// The first request head with ambiguous framing: its index on the connection (0 for
    /// the first request) and why.
    pub fn flagged(&self) -> Option<(u64, &'static str)> {
        self.flagged
    }

    /// Follows `data`, the next bytes the client sent.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Off => return,
                State::Body(n) | State::ChunkData(n) => {
                    let take = n.min(data.len() as u64);
                    data = &data[take as usize..];
                    let left = n - take;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::RequestLine,
                        (State::Body(_), _) => State::Body(left),
                        (_, 0) => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                }
                _ => {
                    let end = memchr::memchr(b'\n', data);
                    let part = &data[..end.unwrap_or(data.len())];
                    let room = KEEP.saturating_sub(self.line.len()).min(part.len());
                    let Some(end) = end else {
                        self.line.extend_from_slice(&part[..room]);
                        self.overflow += part.len() - room;
                        return;
                    };
                    data = &data[end + 1..];
                    if self.line.is_empty() {
                        // The whole line is in this read: follow it where it lies.
                        self.line_done(trim_cr(&part[..room]), part.len() > room);
                        continue;
                    }
                    self.line.extend_from_slice(&part[..room]);
                    let long = std::mem::take(&mut self.overflow) + part.len() - room > 0;
                    let line = std::mem::take(&mut self.line);
                    self.line_done(trim_cr(&line), long);
                    self.line = line;
                    self.line.clear();
                }
            }
        }
    }

    fn line_done(&mut self, line: &[u8], long: bool) {
        match self.state {
            State::RequestLine => {
                if line.is_empty() {
                    return;
                }
                if line.starts_with(b"PRI * HTTP/2") {
                    self.state = State::Off;
                    return;
                }
                self.head = Head {
                    switches: line.starts_with(b"CONNECT "),
                    ..Head::default()
                };
                self.state = State::Headers;
            }
            State::Headers if line.is_empty() => self.head_done(),
            State::Headers => {
                if line[0] == b' ' || line[0] == b'\t' {
                    // Obsolete line folding: hyper refuses the request.
                    self.state = State::Off;
                    return;
                }
                if !matches!(line[0] | 0x20, b'c' | b't' | b'u') {
                    // Not a field this scanner reads (the first letter tells, and most
                    // fields are ones like Host or Accept); hyper judges its syntax.
                    return;
                }
                let Some(colon) = line.iter().position(|&b| b == b':') else {
                    self.state = State::Off;
                    return;
                };
                let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
                if name.eq_ignore_ascii_case(b"content-length") {
                    self.head.lengths += 1;
                    self.head.length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    if long {
                        self.state = State::Off;
                        return;
                    }
                    self.head.transfer_encoding = true;
                    self.head.chunked_last = value
                        .rsplit(|&b| b == b',')
                        .next()
                        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                } else if name.eq_ignore_ascii_case(b"upgrade") {
                    self.head.switches = true;
                }
            }
            State::ChunkSize => {
                let digits = line
                    .split(|&b| b == b';' || b == b' ' || b == b'\t')
                    .next()
                    .unwrap_or_default();
                let size = std::str::from_utf8(digits)
                    .ok()
                    .filter(|d| !d.is_empty() && d.len() <= 16)
                    .and_then(|d| u64::from_str_radix(d, 16).ok());
                self.state = match size {
                    None => State::Off,
                    Some(0) => State::Trailers,
                    Some(n) => State::ChunkData(n),
                };
            }
            State::ChunkEnd => {
                self.state = if line.is_empty() {
                    State::ChunkSize
                } else {
                    State::Off
                };
            }
            State::Trailers => {
                if line.is_empty() {
                    self.state = State::RequestLine;
                }
            }
            State::Body(_) | State::ChunkData(_) | State::Off => {}
        }
    }

    fn head_done(&mut self) {
        let index = self.heads;
        self.heads += 1;
        let h = std::mem::take(&mut self.head);
        let why = if h.lengths > 0 && h.transfer_encoding {
            Some("both Transfer-Encoding and Content-Length")
        } else if h.lengths > 1 {
            Some("more than one Content-Length")
        } else {
            None
        };
        if let Some(why) = why {
            self.flagged.get_or_insert((index, why));
            // The proxy answers 400 and closes: nothing after this head matters.
            self.state = State::Off;
            return;
        }
        self.state = if h.switches {
            State::Off
        } else if h.transfer_encoding {
            if h.chunked_last {
                State::ChunkSize
            } else {
                State::Off
            }
        } else {
            match h.length {
                Some(n) if n > 0 => State::Body(n),
                Some(_) => State::RequestLine,
                None if h.lengths > 0 => State::Off,
                None => State::RequestLine,
            }
        };
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Shared between a connection's reader and its request handler.
#[derive(Debug)]
pub struct Verdict {
    /// Index of the first ambiguous request head, `u64::MAX` while there is none.
    index: AtomicU64,
    why: OnceLock<&'static str>,
    /// Requests handed to the proxy so far on this connection.
    seen: AtomicU64,
}

impl Default for Verdict {
    fn default() -> Self {
        Verdict {
            index: AtomicU64::new(u64::MAX),
            why: OnceLock::new(),
            seen: AtomicU64::new(0),
        }
    }
}

impl Verdict {
    /// Called once per request, in order: why this request must be refused, if it must.
    pub fn next_request(&self) -> Option<&'static str> {
        let i = self.seen.fetch_add(1, Ordering::Relaxed);
        (self.index.load(Ordering::Acquire) == i)
            .then(|| self.why.get().copied())
            .flatten()
    }
}

/// The client side of an HTTP connection, read through a [`FramingScanner`].
pub struct Scanned<I> {
    inner: I,
    scanner: FramingScanner,
    verdict: Arc<Verdict>,
}

impl<I> Scanned<I> {
    pub fn new(inner: I) -> (Scanned<I>, Arc<Verdict>) {
        let verdict = Arc::new(Verdict::default());
        (
            Scanned {
                inner,
                scanner: FramingScanner::default(),
                verdict: verdict.clone(),
            },
            verdict,
        )
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Scanned<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let this = &mut *self;
        if !this.scanner.is_off() {
            let had = this.scanner.flagged().is_some();
            this.scanner.feed(&buf.filled()[before..]);
            if let (false, Some((index, why))) = (had, this.scanner.flagged()) {
                let _ = this.verdict.why.set(why);
                this.verdict.index.store(index, Ordering::Release);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Scanned<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` in pieces of every size from 1 to 7 bytes and checks all agree.
    fn scan(stream: &[u8]) -> (Option<(u64, &'static str)>, u64, bool) {
        let mut results = Vec::new();
        for piece in 1..=7 {
            let mut s = FramingScanner::default();
            for chunk in stream.chunks(piece) {
                s.feed(chunk);
            }
            let mut whole = FramingScanner::default();
            whole.feed(stream);
            assert_eq!(
                (s.flagged, s.heads, s.is_off()),
                (whole.flagged, whole.heads, whole.is_off()),
                "piece size {piece}"
            );
            results.push((s.flagged, s.heads, s.is_off()));
        }
        results[0]
    }

    #[test]
    fn follows_lengths_chunks_and_pipelined_heads() {
        // Bodies that look like heads: data, not requests.
        let body = "GET / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n";
        let chunk = "Content-Length: 5\r\n\r\nxxxxxx";
        let stream = format!(
            "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n\
             POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}\
             POST /c HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
             5;ext=1\r\nhello\r\n{:x}\r\n{chunk}\r\n0\r\nX-Trailer: 1\r\n\r\n\
             GET /last HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            body.len(),
            chunk.len()
        );
        assert_eq!(scan(stream.as_bytes()), (None, 4, false));
    }

    #[test]
    fn flags_the_first_ambiguous_head_by_index() {
        let cl_te = b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(
            scan(cl_te),
            (
                Some((1, "both Transfer-Encoding and Content-Length")),
                2,
                true
            )
        );
        let te_cl = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 4\r\n\r\n";
        assert_eq!(
            scan(te_cl).0,
            Some((0, "both Transfer-Encoding and Content-Length"))
        );
        let twice = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(scan(twice).0, Some((0, "more than one Content-Length")));
    }

    #[test]
    fn stops_at_what_it_does_not_follow() {
        for stream in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"[..],
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nContent-Length: 1\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let (flagged, _, off) = scan(stream);
            assert_eq!((flagged, off), (None, true), "{:?}", String::from_utf8_lossy(stream));
        }
    }

    #[test]
    fn lines_longer_than_kept_are_followed_to_their_end() {
        // A long field the scanner does not care about: the heads after it are still read.
        let cookie = "c".repeat(3 * KEEP);
        let stream = format!(
            "GET / HTTP/1.1\r\nCookie: {cookie}\r\n\r\n\
             POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"
        );
        assert_eq!(
            scan(stream.as_bytes()),
            (Some((1, "more than one Content-Length")), 2, true)
        );
        // A Transfer-Encoding value too long to keep whole: not followed.
        let codings = "gzip, ".repeat(KEEP / 4);
        let stream = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {codings}chunked\r\n\r\n");
        assert_eq!(scan(stream.as_bytes()), (None, 0, true));
        // A Transfer-Encoding line of KEEP bytes with its CR is followed; one byte more is not.
        for (pad, followed) in [(KEEP - 29, true), (KEEP - 28, false)] {
            let stream = format!(
                "POST / HTTP/1.1\r\nTransfer-Encoding: {}, chunked\r\n\r\n0\r\n\r\n\
                 GET / HTTP/1.1\r\n\r\n",
                "x".repeat(pad)
            );
            let want = if followed {
                (None, 2, false)
            } else {
                (None, 0, true)
            };
            assert_eq!(scan(stream.as_bytes()), want, "pad {pad}");
        }
    }

    #[test]
    fn verdict_refuses_only_the_flagged_request() {
        let v = Verdict::default();
        v.why.set("why").unwrap();
        v.index.store(1, Ordering::Release);
        assert_eq!(v.next_request(), None);
        assert_eq!(v.next_request(), Some("why"));
        assert_eq!(v.next_request(), None);
    }
}
