//! Raw TCP relaying without copying through this process (Linux): `splice(2)` moves the
//! bytes socket -> pipe -> socket inside the kernel, as HAProxy's `option splice-auto` does.
//! Copying through a user buffer cost a read and a write of every byte (measured in
//! BENCHMARKS.md, TCP bulk).
//!
//! A direction holds a pipe only while bytes are in it: pipes come from a small per-thread
//! pool and go back once drained, so an idle stream holds no more descriptors than its two
//! sockets. A pipe whose bytes were not delivered (the stream ended with an error or was cut
//! by the idle timeout) is closed, never reused. Where no pipe can be had (the process is out
//! of descriptors, EMFILE), a chunk is copied through a buffer instead and the stream goes on.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tracing::debug;

use crate::pool::now_ms;

/// Bytes a pipe is asked to hold (the default is 64 KiB); where the kernel grants less, the
/// pipe keeps its size and splices move less at a time.
const PIPE_BYTES: usize = 256 * 1024;
/// Drained pipes kept per worker thread for the next stream.
const POOL_MAX: usize = 32;
/// Bytes a chunk copied through a buffer moves at most, when no pipe can be had.
const COPY_BYTES: usize = 64 * 1024;

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

thread_local! {
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
thread_local! {
    /// Tests: `take` fails as it does when the process is out of descriptors.
    static NO_PIPES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Pipe {
    fn take() -> io::Result<Pipe> {
        #[cfg(test)]
        if NO_PIPES.with(|n| n.get()) {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        if let Some(p) = PIPES.with(|p| p.borrow_mut().pop()) {
            return Ok(p);
        }
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let pipe = unsafe {
            Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        };
        // SAFETY: F_SETPIPE_SZ on a pipe this function owns; a refusal leaves it as it was.
        unsafe {
            libc::fcntl(
                pipe.write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_BYTES as i32,
            )
        };
        Ok(pipe)
    }

    /// Back to the pool: only an empty pipe.
    fn release(self) {
        PIPES.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_MAX {
                p.push(self);
            }
        });
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (borrowed from a
    // TcpStream or a Pipe the caller holds); null offsets are valid for sockets and pipes.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One direction's tally: every byte read from its source.
pub struct Flow<'a> {
    pub counter: &'a Counter,
    pub total: &'a AtomicU64,
}

/// Relays `a` -> `b` and `b` -> `a` until both directions ended (a FIN is passed on as a
/// write shutdown while the other direction keeps flowing) or one failed. `activity` is
/// stamped with [`now_ms`] whenever bytes arrive.
pub async fn relay(
    a: &TcpStream,
    b: &TcpStream,
    a_to_b: Flow<'_>,
    b_to_a: Flow<'_>,
    activity: &AtomicU64,
) -> io::Result<()> {
    tokio::try_join!(
        one_way(a, b, a_to_b, activity),
        one_way(b, a, b_to_a, activity)
    )?;
    Ok(())
}

async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    flow: Flow<'_>,
    activity: &AtomicU64,
) -> io::Result<()> {
    loop {
        from.readable().await?;
        let pipe = match Pipe::take() {
            Ok(p) => p,
            // No descriptor (EMFILE, ENFILE) or pipe memory left: this chunk goes through a
            // buffer, and the next one asks for a pipe again.
            Err(e) => {
                debug!(error = %e, "no pipe to splice through; copying through a buffer");
                if copy_chunk(from, to, &flow, activity).await? {
                    continue;
                }
                return pass_fin(to);
            }
        };
        let got = match from.try_io(Interest::READABLE, || {
            splice(from.as_raw_fd(), pipe.write.as_raw_fd(), PIPE_BYTES)
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pipe.release();
                continue;
            }
            Err(e) => return Err(e),
        };
        if got == 0 {
            pipe.release();
            return pass_fin(to);
        }
        tally(&flow, activity, got);
        let mut left = got;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), to.as_raw_fd(), left)
            }) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "splice to the socket moved nothing",
                    ))
                }
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // `pipe` is dropped, and closed, with the bytes it still holds.
                Err(e) => return Err(e),
            }
        }
        pipe.release();
    }
}

fn tally(flow: &Flow<'_>, activity: &AtomicU64, bytes: usize) {
    flow.counter.inc_by(bytes as u64);
    flow.total.fetch_add(bytes as u64, Ordering::Relaxed);
    activity.store(now_ms(), Ordering::Relaxed);
}

/// Passes the end of one direction on as a write shutdown.
fn pass_fin(to: &TcpStream) -> io::Result<()> {
    // SAFETY: shutdown on a socket `to` keeps open; no memory is involved.
    if unsafe { libc::shutdown(to.as_raw_fd(), libc::SHUT_WR) } != 0 {
        let e = io::Error::last_os_error();
        // The peer may be gone already; that ends the stream the other way.
        if e.raw_os_error() != Some(libc::ENOTCONN) {
            return Err(e);
        }
    }
    Ok(())
}

/// Moves what `from` holds, up to [`COPY_BYTES`], to `to` through a buffer; false at the end
/// of the stream.
async fn copy_chunk(
    from: &TcpStream,
    to: &TcpStream,
    flow: &Flow<'_>,
    activity: &AtomicU64,
) -> io::Result<bool> {
    // Read into the spare capacity, not zeroed first.
    let mut buf = Vec::with_capacity(COPY_BYTES);
    let got = loop {
        match from.try_read_buf(&mut buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => from.readable().await?,
            Err(e) => return Err(e),
        }
    };
    if got == 0 {
        return Ok(false);
    }
    tally(flow, activity, got);
    let mut sent = 0;
    while sent < got {
        match to.try_write(&buf[sent..got]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the socket took nothing",
                ))
            }
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (c, l.accept().await.unwrap().0)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close_and_counts_every_byte() {
        five_up_three_down().await;
        // The pipes came back to the pool, drained, for the next stream.
        assert!(PIPES.with(|p| p.borrow().len()) >= 1);
    }

    /// Out of descriptors, every chunk is copied through a buffer: the same bytes arrive,
    /// half-close and counts included, and the stream is not cut.
    #[tokio::test]
    async fn without_pipes_the_bytes_go_through_a_buffer() {
        PIPES.with(|p| p.borrow_mut().clear());
        NO_PIPES.with(|n| n.set(true));
        five_up_three_down().await;
        NO_PIPES.with(|n| n.set(false));
        assert_eq!(PIPES.with(|p| p.borrow().len()), 0, "a pipe was made");
    }

    /// 5 MiB up, then the client's FIN; the server reads it all, then answers 3 MiB and
    /// closes: the answer flows after the client half-closed. Checks every byte and count.
    async fn five_up_three_down() {
        // client <-> (a | relay | b) <-> server
        let (mut client, a) = pair().await;
        let (b, mut server) = pair().await;
        let (up, down) = (Counter::default(), Counter::default());
        let (up_total, down_total, activity) =
            (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
        let relay = relay(
            &a,
            &b,
            Flow {
                counter: &up,
                total: &up_total,
            },
            Flow {
                counter: &down,
                total: &down_total,
            },
            &activity,
        );
        let sent_up = pattern(5 << 20, 1);
        let sent_down = pattern(3 << 20, 7);
        let client_side = async {
            client.write_all(&sent_up).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        };
        let server_side = async {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            server.write_all(&sent_down).await.unwrap();
            server.shutdown().await.unwrap();
            got
        };
        // A failed relay leaves both sides waiting for bytes: it fails the test at once.
        let relay = async { relay.await.expect("the relay failed") };
        let ((), got_down, got_up) = tokio::join!(relay, client_side, server_side);
        assert!(got_up == sent_up, "upstream got {} bytes", got_up.len());
        assert!(got_down == sent_down, "client got {} bytes", got_down.len());
        assert_eq!(up.get(), 5 << 20);
        assert_eq!(down.get(), 3 << 20);
        assert_eq!(up_total.load(Ordering::Relaxed), 5 << 20);
        assert_eq!(down_total.load(Ordering::Relaxed), 3 << 20);
        assert!(activity.load(Ordering::Relaxed) > 0);
    }

    #[tokio::test]
    async fn a_reset_ends_the_relay_with_the_error() {
        let (client, a) = pair().await;
        let (b, _server) = pair().await;
        let (c1, c2, t1, t2, act) = (
            Counter::default(),
            Counter::default(),
            AtomicU64::new(0),
            AtomicU64::new(0),
            AtomicU64::new(0),
        );
        // SO_LINGER 0: closing sends a RST instead of a FIN.
        socket2::SockRef::from(&client)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(client);
        let r = relay(
            &a,
            &b,
            Flow {
                counter: &c1,
                total: &t1,
            },
            Flow {
                counter: &c2,
                total: &t2,
            },
            &act,
        )
        .await;
        let e = r.expect_err("a reset stream relayed as a clean end");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    }
}
