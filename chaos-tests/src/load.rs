//! The load client: HTTP/1.1 keep-alive workers and long-lived TCP streams that count every
//! request and every byte, so "no failed request" and "no lost byte" are measured. Run it on
//! a runtime inside the client's namespace ([`crate::Lab::runtime`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::NsRuntime;

/// What an HTTP load has seen so far.
#[derive(Default)]
pub struct HttpStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Response body bytes received in full.
    pub bytes: AtomicU64,
    /// The first failures: "+12.3 s 10.77.0.3:8080: reason".
    pub errors: Mutex<Vec<String>>,
}

/// Workers sending `GET /` with `host` to the current targets, round robin, one request at a
/// time each over a pooled keep-alive connection, 5 s limit per request. A request counts as
/// failed on any error, timeout or status other than 200. Like a browser, the client resends
/// a request only when a pooled connection was closed before the request went out.
pub struct HttpLoad {
    pub stats: Arc<HttpStats>,
    targets: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl HttpLoad {
    pub fn start(rt: &NsRuntime, host: &str, targets: Vec<SocketAddr>, workers: usize) -> HttpLoad {
        let stats = Arc::new(HttpStats::default());
        let targets = Arc::new(Mutex::new(targets));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http::<Empty<Bytes>>();
        let workers = (0..workers)
            .map(|w| {
                let (stats, targets, stop, client) =
                    (stats.clone(), targets.clone(), stop.clone(), client.clone());
                let host = host.to_string();
                rt.spawn(async move {
                    let mut i = w;
                    while !stop.load(Ordering::Relaxed) {
                        let target = {
                            let t = targets.lock().unwrap();
                            if t.is_empty() {
                                None
                            } else {
                                Some(t[i % t.len()])
                            }
                        };
                        i += 1;
                        let Some(target) = target else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        let outcome = tokio::time::timeout(
                            Duration::from_secs(5),
                            get(&client, target, &host),
                        )
                        .await
                        .unwrap_or_else(|_| Err("no answer within 5 s".into()));
                        match outcome {
                            Ok(body) => {
                                stats.ok.fetch_add(1, Ordering::Relaxed);
                                stats.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                            }
                            Err(why) => {
                                stats.failed.fetch_add(1, Ordering::Relaxed);
                                let mut e = stats.errors.lock().unwrap();
                                if e.len() < 20 {
                                    e.push(format!(
                                        "+{:.1} s {target}: {why}",
                                        started.elapsed().as_secs_f64()
                                    ));
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        HttpLoad {
            stats,
            targets,
            stop,
            workers,
            started,
        }
    }

    /// The targets, to replace (for example by what the DNS record holds now).
    pub fn targets(&self) -> Arc<Mutex<Vec<SocketAddr>>> {
        self.targets.clone()
    }

    pub fn ok(&self) -> u64 {
        self.stats.ok.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.stats.failed.load(Ordering::Relaxed)
    }

    /// Stops the workers after their current request; returns (ok, failed, bytes, seconds).
    pub fn finish(self, rt: &NsRuntime) -> (u64, u64, u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            rt.run(async move {
                let _ = w.await;
            });
        }
        (
            self.stats.ok.load(Ordering::Relaxed),
            self.stats.failed.load(Ordering::Relaxed),
            self.stats.bytes.load(Ordering::Relaxed),
            self.started.elapsed().as_secs_f64(),
        )
    }

    pub fn errors(&self) -> Vec<String> {
        self.stats.errors.lock().unwrap().clone()
    }
}

async fn get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    target: SocketAddr,
    host: &str,
) -> Result<Bytes, String> {
    let req = hyper::Request::get(format!("http://{target}/"))
        .header(hyper::header::HOST, host)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| error_chain(&e))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    if status != hyper::StatusCode::OK {
        return Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    Ok(body)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The byte at `offset` of every stream: 8-byte blocks of splitmix64(block index), so a byte
/// that is lost, duplicated, reordered or altered shows as a mismatch at its offset.
fn pattern(offset: u64) -> u8 {
    let mut z = (offset / 8).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    z.to_le_bytes()[(offset % 8) as usize]
}

/// FNV-1a over a stream, fed in pieces.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn feed(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// What a TCP stream moved, checked byte by byte against what was sent.
#[derive(Debug, Clone)]
pub struct StreamReport {
    pub sent: u64,
    pub received: u64,
    pub sent_fnv: u64,
    pub received_fnv: u64,
    /// The first offset whose byte differed from the one sent, or the error that ended the
    /// stream early.
    pub fault: Option<String>,
    pub secs: f64,
}

/// One long-lived TCP connection to an echo service (an SFTP-like transfer): it writes the
/// pattern at `rate` bytes/s and reads the echo back, comparing every byte.
pub struct TcpStream {
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<StreamReport>,
}

impl TcpStream {
    pub fn start(rt: &NsRuntime, target: SocketAddr, rate: u64) -> TcpStream {
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, r, st) = (sent.clone(), received.clone(), stop.clone());
        let task = rt.spawn(async move { stream(target, rate, s, r, st).await });
        TcpStream {
            sent,
            received,
            stop,
            task,
        }
    }

    /// (sent, received) so far.
    pub fn progress(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops writing, half-closes, reads the rest of the echo and reports.
    pub fn finish(self, rt: &NsRuntime) -> StreamReport {
        self.stop.store(true, Ordering::Relaxed);
        let task = self.task;
        rt.run(async move { task.await.expect("stream task") })
    }
}

async fn stream(
    target: SocketAddr,
    rate: u64,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> StreamReport {
    let started = Instant::now();
    let mut report = StreamReport {
        sent: 0,
        received: 0,
        sent_fnv: 0,
        received_fnv: 0,
        fault: None,
        secs: 0.0,
    };
    let conn = match tokio::net::TcpStream::connect(target).await {
        Ok(c) => c,
        Err(e) => {
            report.fault = Some(format!("connect {target}: {e}"));
            return report;
        }
    };
    let (mut rd, mut wr) = conn.into_split();
    let writer = {
        let (sent, stop) = (sent.clone(), stop.clone());
        tokio::spawn(async move {
            let mut fnv = Fnv::new();
            let mut off = 0u64;
            let chunk = 16 * 1024u64;
            let begun = Instant::now();
            let mut buf = vec![0u8; chunk as usize];
            while !stop.load(Ordering::Relaxed) {
                // Pace to `rate`: never ahead of rate x elapsed.
                let allowed = (begun.elapsed().as_secs_f64() * rate as f64) as u64;
                if off + chunk > allowed {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = pattern(off + i as u64);
                }
                if let Err(e) = wr.write_all(&buf).await {
                    return (off, fnv.0, Some(format!("write at {off}: {e}")));
                }
                fnv.feed(&buf);
                off += chunk;
                sent.store(off, Ordering::Relaxed);
            }
            let _ = wr.shutdown().await;
            (off, fnv.0, None)
        })
    };
    let mut fnv = Fnv::new();
    let mut off = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut fault = None;
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                fault = Some(format!("read at {off}: {e}"));
                break;
            }
        };
        if fault.is_none() {
            if let Some(i) = (0..n).find(|&i| buf[i] != pattern(off + i as u64)) {
                fault = Some(format!("byte {} differs from the one sent", off + i as u64));
            }
        }
        fnv.feed(&buf[..n]);
        off += n as u64;
        received.store(off, Ordering::Relaxed);
    }
    let (sent_total, sent_fnv, write_fault) = writer.await.expect("writer");
    report.sent = sent_total;
    report.sent_fnv = sent_fnv;
    report.received = off;
    report.received_fnv = fnv.0;
    report.fault = fault.or(write_fault).or_else(|| {
        (off != sent_total).then(|| format!("sent {sent_total} bytes, {off} came back"))
    });
    report.secs = started.elapsed().as_secs_f64();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_differs_between_neighbouring_blocks_and_fnv_sees_one_flipped_byte() {
        let a: Vec<u8> = (0..64).map(pattern).collect();
        assert_ne!(a[0..8], a[8..16]);
        let mut b = a.clone();
        b[17] ^= 1;
        let (mut fa, mut fb) = (Fnv::new(), Fnv::new());
        fa.feed(&a);
        fb.feed(&b);
        assert_ne!(fa.0, fb.0);
    }
}
