//! A connection's first bytes, read before hyper takes it: as many as could begin the
//! HTTP/2 connection preface (RFC 9113 §3.4), at most 24. They tell which of hyper's servers
//! gets the connection ([`Rewind::is_http2`]), and are handed back in front of the stream.
//!
//! hyper_util's `auto` connection, used before, read them with no time limit: a client that
//! connected and then sent nothing (or part of the preface) held its connection, and a slot
//! of the connection limit, for as long as it liked. hyper's header-read timeout starts only
//! after. The caller bounds [`read`] with that timeout.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the bytes are no longer a prefix of the HTTP/2 preface (usually the first
/// byte of an HTTP/1 request), the whole preface is there, or the peer closes.
pub(crate) async fn read<I: AsyncRead + Unpin>(mut io: I) -> io::Result<Rewind<I>> {
    let mut pre = [0u8; H2_PREFACE.len()];
    let mut len = 0;
    while len < pre.len() {
        let n = io.read(&mut pre[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
        if pre[..len] != H2_PREFACE[..len] {
            break;
        }
    }
    Ok(Rewind {
        pre,
        pos: 0,
        len: len as u8,
        io,
    })
}

/// A stream with the bytes [`read`] took replayed in front of it.
pub(crate) struct Rewind<I> {
    pre: [u8; H2_PREFACE.len()],
    pos: u8,
    len: u8,
    io: I,
}

impl<I> Rewind<I> {
    /// Whether the peer sent the HTTP/2 preface (HTTP/2 with prior knowledge, or ALPN `h2`);
    /// anything else is HTTP/1.
    pub(crate) fn is_http2(&self) -> bool {
        &self.pre[..self.len as usize] == H2_PREFACE
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.len {
            let left = &this.pre[this.pos as usize..this.len as usize];
            let n = left.len().min(buf.remaining());
            buf.put_slice(&left[..n]);
            this.pos += n as u8;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use tokio::io::AsyncWriteExt;

    /// A peer whose bytes arrive in the given chunks, one per read, then end.
    struct Chunks(VecDeque<&'static [u8]>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(c) = self.0.pop_front() {
                let n = c.len().min(buf.remaining());
                buf.put_slice(&c[..n]);
                if n < c.len() {
                    self.0.push_front(&c[n..]);
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// What `read` took, and everything the stream then yields.
    async fn sniff(chunks: &[&'static [u8]]) -> (usize, Vec<u8>) {
        let mut r = read(Chunks(chunks.iter().copied().collect()))
            .await
            .unwrap();
        let took = r.len as usize;
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.unwrap();
        (took, all)
    }

    #[tokio::test]
    async fn an_http1_request_is_told_by_its_first_byte_and_replayed_whole() {
        let (took, all) = sniff(&[b"GET / HTTP/1.1\r\n", b"Host: a\r\n\r\n"]).await;
        assert_eq!(
            took, 16,
            "one read: its first byte already differs from the preface"
        );
        assert_eq!(all, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        // One read of 24 bytes, none of them the preface's: HTTP/1 all the same.
        let one = Chunks([&b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n"[..]].into());
        let long = read(one).await.unwrap();
        assert_eq!(long.len, 24);
        assert!(!long.is_http2());
    }

    #[tokio::test]
    async fn the_http2_preface_is_read_whole_across_reads() {
        let (took, all) = sniff(&[b"PRI * HTTP", b"/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04"]).await;
        assert_eq!(took, 24, "no more than the preface");
        let whole = read(Chunks([&H2_PREFACE[..]].into())).await.unwrap();
        assert!(whole.is_http2());
        assert!(!read(Chunks([&H2_PREFACE[..23]].into()))
            .await
            .unwrap()
            .is_http2());
        assert_eq!(&all[..24], H2_PREFACE);
        assert_eq!(&all[24..], b"\0\0\0\x04");
    }

    #[tokio::test]
    async fn a_peer_that_closes_early_leaves_what_it_sent() {
        assert_eq!(sniff(&[b"PRI *"]).await, (5, b"PRI *".to_vec()));
        assert_eq!(sniff(&[]).await, (0, Vec::new()));
    }

    #[tokio::test]
    async fn replayed_bytes_fit_a_small_read_buffer() {
        let mut r = read(Chunks([&b"GET /"[..]].into())).await.unwrap();
        let mut two = [0u8; 2];
        r.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"GE");
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"T /");
    }

    #[tokio::test]
    async fn writes_go_through() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        theirs.write_all(b"G").await.unwrap();
        let mut r = read(ours).await.unwrap();
        r.write_all(b"HTTP/1.1 400").await.unwrap();
        let mut got = [0u8; 12];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 400");
    }
}
