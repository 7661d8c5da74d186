//! Access logs: one line per HTTP request and per TCP session, as JSON or in the combined log
//! format, to stdout or a file.
//!
//! The data path formats its line where the exchange ends, straight into the buffer of its
//! thread's shard (no record handed to another thread, no allocation per line). A shard
//! that fills up is written to a file by the thread that filled it, or handed to the writer
//! thread for standard output; the writer also swaps out and writes whatever the shards
//! hold every 20 ms. When the writer falls
//! behind, a shard holding more than its limit drops lines and counts them
//! (`edgemesh_access_log_dropped_total`) rather than slowing requests down.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Version};
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

/// Buffers lines are formatted into: threads map onto them in turn, so up to this many
/// threads never contend for one.
const SHARDS: usize = 8;
/// Bytes a shard holds for the writer; lines past it are dropped (the writer is behind).
const SHARD_LIMIT: usize = 4 << 20;
/// A drained buffer larger than this is freed rather than kept for the next round.
const KEEP: usize = 1 << 20;
/// A shard holding this many bytes is written out before the writer's next round: by the
/// thread that filled it when the destination is a file (as nginx's `buffer=`: a write of
/// whole lines with `O_APPEND`, to the page cache), else by waking the writer (standard
/// output can be a pipe that blocks, which must not stop the proxy). Waking the writer for
/// a file instead cost the proxy about 2 µs of CPU per request (0.93x the requests/s
/// without the log; written in place, 1.0x: BENCHMARKS.md).
const WAKE_AT: usize = 32 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Apache's combined log format, then host, upstream, upstream and total milliseconds,
    /// TLS version and SNI (Traefik's layout).
    Combined,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessLogSpec {
    pub format: LogFormat,
    /// `None`: standard output.
    pub path: Option<PathBuf>,
    /// Fraction of requests and sessions logged, in (0, 1].
    pub sample: f64,
}

/// Shared by every connection task and the writer thread.
struct Shards {
    shards: [Mutex<Formatter>; SHARDS],
    format: LogFormat,
    limit: usize,
    /// Set when the [`AccessLog`] is dropped: the writer drains once more and ends.
    closed: AtomicBool,
    /// The writer was woken and has not drained yet: one wake-up per drain.
    woken: AtomicBool,
    writer: OnceLock<std::thread::Thread>,
    /// A file destination: a shard that fills up is written by the thread that filled it.
    direct: Option<std::fs::File>,
}

impl Shards {
    fn new(format: LogFormat, limit: usize) -> Arc<Shards> {
        Arc::new(Shards {
            shards: std::array::from_fn(|_| Mutex::default()),
            format,
            limit,
            closed: AtomicBool::new(false),
            woken: AtomicBool::new(false),
            writer: OnceLock::new(),
            direct: None,
        })
    }

    fn wake_writer(&self) {
        if let Some(w) = self.writer.get() {
            w.unpark();
        }
    }

    /// This thread's shard.
    fn mine(&self) -> MutexGuard<'_, Formatter> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local!(static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
        let i = INDEX.with(|i| *i);
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The access log of a running proxy.
pub struct AccessLog {
    shards: Arc<Shards>,
    sample: f64,
    dropped: Counter,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("format", &self.shards.format)
            .field("sample", &self.sample)
            .finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Opens the destination (appending to a file) and starts the writer thread.
    pub fn start(spec: &AccessLogSpec, dropped: Counter) -> io::Result<Arc<AccessLog>> {
        let mut shards = Shards::new(spec.format, SHARD_LIMIT);
        let out: Box<dyn Write + Send> = match &spec.path {
            None => Box::new(io::stdout()),
            Some(p) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
                // The same open file for the threads that write full shards.
                let direct = file.try_clone()?;
                Arc::get_mut(&mut shards).expect("not shared yet").direct = Some(direct);
                Box::new(file)
            }
        };
        let for_writer = shards.clone();
        let writer = std::thread::Builder::new()
            .name("edgemesh-access-log".into())
            .spawn(move || write_loop(&for_writer, out))?;
        let _ = shards.writer.set(writer.thread().clone());
        Ok(Arc::new(AccessLog {
            shards,
            sample: spec.sample,
            dropped,
        }))
    }

    /// Whether this request or session is logged.
    pub fn sampled(&self) -> bool {
        self.sample >= 1.0 || fastrand::f64() < self.sample
    }

    /// Formats `r` into this thread's shard, or drops and counts it when the shard is full.
    pub(crate) fn write(&self, r: Record<'_>) {
        let mut f = self.shards.mine();
        if f.buf.len() >= self.shards.limit {
            drop(f);
            self.dropped.inc();
            return;
        }
        f.line(self.shards.format, r);
        if f.buf.len() >= WAKE_AT {
            if let Some(file) = &self.shards.direct {
                if (&*file).write_all(&f.buf).is_err() {
                    let lines = f.buf.iter().filter(|&&b| b == b'\n').count();
                    self.dropped.inc_by(lines as u64);
                }
                f.buf.clear();
                return;
            }
            drop(f);
            if !self.shards.woken.swap(true, Ordering::Relaxed) {
                self.shards.wake_writer();
            }
        }
    }
}

impl Drop for AccessLog {
    /// Every line is in a shard by now (the last connection holding this log has let go):
    /// the writer writes them and ends.
    fn drop(&mut self) {
        self.shards.closed.store(true, Ordering::Release);
        self.shards.wake_writer();
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Record<'a> {
    Http(&'a HttpRecord),
    Tcp(&'a TcpRecord),
}

/// One HTTP exchange: the cheap clones of what the request holds, kept until its response
/// body ends and the line is formatted.
pub(crate) struct HttpRecord {
    pub time: SystemTime,
    pub client: SocketAddr,
    pub host: Option<HeaderValue>,
    pub method: Method,
    pub path: PathAndQuery,
    pub version: Version,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub upstream: Option<SocketAddr>,
    pub upstream_time: Option<Duration>,
    pub total_time: Duration,
    pub tls_version: Option<&'static str>,
    pub sni: Option<Arc<str>>,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
}

pub(crate) struct TcpRecord {
    pub time: SystemTime,
    pub client: SocketAddr,
    pub listener: Arc<str>,
    pub upstream: Option<SocketAddr>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub total_time: Duration,
    /// Why the session ended, when not by a close from either side.
    pub error: Option<String>,
}

/// An HTTP record waiting for its response body to end (bytes out and total time are known
/// only then); written by [`PendingLog::finish`].
///
/// Its box is taken from and given back to a per-thread free list: with more than a few
/// exchanges in flight, a fresh allocation of this size per request took the allocator's
/// slow path (its per-thread cache holds 7 chunks of a size), for it and for hyper's
/// allocations around it.
pub(crate) struct PendingLog(Box<Option<Pending>>);

pub(crate) struct Pending {
    pub log: Arc<AccessLog>,
    /// `time` is when the request came; the total time is measured from it (on the wall
    /// clock, as nginx's `$request_time` is: one clock read per end instead of two).
    pub record: HttpRecord,
    /// Request body bytes, stored by the request body when it is dropped; `None` for a
    /// request without a body.
    pub bytes_in: Option<Arc<AtomicU64>>,
}

/// Boxes kept per thread for [`PendingLog`]s.
const FREE_BOXES: usize = 256;

thread_local! {
    // The boxes are what is reused: each becomes a `PendingLog` without a copy.
    #[allow(clippy::vec_box)]
    static FREE: std::cell::RefCell<Vec<Box<Option<Pending>>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl PendingLog {
    pub fn new(pending: Pending) -> PendingLog {
        let mut slot = FREE
            .try_with(|f| f.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        *slot = Some(pending);
        PendingLog(slot)
    }

    pub fn record(&mut self) -> &mut HttpRecord {
        &mut (*self.0).as_mut().expect("set until finished").record
    }

    pub fn finish(mut self, bytes_out: u64) {
        if let Some(p) = (*self.0).as_mut() {
            let r = &mut p.record;
            r.bytes_out = bytes_out;
            r.bytes_in = p.bytes_in.as_ref().map_or(0, |b| b.load(Ordering::Relaxed));
            r.total_time = SystemTime::now().duration_since(r.time).unwrap_or_default();
            p.log.write(Record::Http(r));
        }
        *self.0 = None;
        let _ = FREE.try_with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < FREE_BOXES {
                f.push(self.0);
            }
        });
    }
}

/// How often the writer drains the shards. Senders wake it only when a shard passes
/// [`WAKE_AT`] (a wake-up per request would cost a system call and a context switch); lines
/// reach the destination within this.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

fn write_loop(shards: &Shards, mut out: Box<dyn Write + Send>) {
    let mut spare = Vec::new();
    loop {
        std::thread::park_timeout(DRAIN_EVERY);
        // Read before draining: every line written before the close is in a shard.
        let closing = shards.closed.load(Ordering::Acquire);
        shards.woken.store(false, Ordering::Relaxed);
        let mut wrote = false;
        for shard in &shards.shards {
            {
                let mut f = shard.lock().unwrap_or_else(PoisonError::into_inner);
                if f.buf.is_empty() {
                    continue;
                }
                std::mem::swap(&mut f.buf, &mut spare);
            }
            if out.write_all(&spare).is_err() {
                // The destination is gone (a closed stdout): nothing better to do than stop.
                return;
            }
            wrote = true;
            spare.clear();
            if spare.capacity() > KEEP {
                spare = Vec::new();
            }
        }
        if (wrote && out.flush().is_err()) || closing {
            return;
        }
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// Formats records into `buf`, by hand (every request is formatted; serde and `format!` cost
/// several times more), reusing the date of the last second and the last addresses.
#[derive(Default)]
pub(crate) struct Formatter {
    /// Lines waiting for the writer.
    pub buf: Vec<u8>,
    date: Dates,
    ip: Cached<IpAddr>,
    addr: Cached<SocketAddr>,
}

/// The text of the last second: (Unix second, `2026-12-03T07:05:09`,
/// `03/Dec/2026:07:05:09 +0000`).
#[derive(Default)]
struct Dates(Option<(u64, String, String)>);

impl Dates {
    /// ISO 8601 and combined-format text of `t`'s second, and its milliseconds.
    fn of(&mut self, t: SystemTime) -> (&str, &str, u32) {
        let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        if self.0.as_ref().is_none_or(|d| d.0 != secs) {
            const MONTHS: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            let d = time::OffsetDateTime::from(t);
            let (y, m, day) = (d.year(), d.month() as u8, d.day());
            let (h, min, sec) = (d.hour(), d.minute(), d.second());
            self.0 = Some((
                secs,
                format!("{y:04}-{m:02}-{day:02}T{h:02}:{min:02}:{sec:02}"),
                format!(
                    "{day:02}/{}/{y:04}:{h:02}:{min:02}:{sec:02} +0000",
                    MONTHS[m as usize - 1]
                ),
            ));
        }
        let d = self.0.as_ref().expect("set above");
        (&d.1, &d.2, since.subsec_millis())
    }
}

/// The text of the last value, formatted once while it repeats (one client, one upstream).
struct Cached<K>(Option<(K, String)>);

impl<K> Default for Cached<K> {
    fn default() -> Self {
        Cached(None)
    }
}

impl<K: PartialEq + Copy + std::fmt::Display> Cached<K> {
    fn text(&mut self, k: K) -> &[u8] {
        if self.0.as_ref().is_none_or(|c| c.0 != k) {
            self.0 = Some((k, k.to_string()));
        }
        self.0.as_ref().expect("set above").1.as_bytes()
    }

    /// `"k"` (quoted), or `none`.
    fn push_quoted(&mut self, out: &mut Vec<u8>, k: Option<K>, none: &str) {
        match k {
            Some(k) => {
                out.push(b'"');
                out.extend_from_slice(self.text(k));
                out.push(b'"');
            }
            None => out.extend_from_slice(none.as_bytes()),
        }
    }
}

impl Formatter {
    /// Appends the line of `r`, newline included.
    pub fn line(&mut self, format: LogFormat, r: Record<'_>) {
        match format {
            LogFormat::Json => self.json(r),
            LogFormat::Combined => self.combined(r),
        }
        self.buf.push(b'\n');
    }

    /// The JSON object of a record: the field names are the stable interface (documented in
    /// the example configuration).
    fn json(&mut self, r: Record<'_>) {
        let (time, client) = match r {
            Record::Http(h) => (h.time, h.client),
            Record::Tcp(t) => (t.time, t.client),
        };
        let (iso, _, ms) = self.date.of(time);
        let out = &mut self.buf;
        out.extend_from_slice(b"{\"time\":\"");
        out.extend_from_slice(iso.as_bytes());
        out.push(b'.');
        pad3(out, ms);
        out.extend_from_slice(match r {
            Record::Http(_) => b"Z\",\"kind\":\"http\",\"client\":\"",
            Record::Tcp(_) => b"Z\",\"kind\":\"tcp\",\"client\":\"",
        });
        out.extend_from_slice(self.ip.text(client.ip().to_canonical()));
        match r {
            Record::Http(h) => {
                out.extend_from_slice(b"\",\"host\":");
                json_opt(out, h.host.as_ref().map(HeaderValue::as_bytes));
                out.extend_from_slice(b",\"method\":");
                json_str(out, h.method.as_str().as_bytes());
                out.extend_from_slice(b",\"path\":");
                json_str(out, h.path.as_str().as_bytes());
                out.extend_from_slice(b",\"protocol\":\"");
                out.extend_from_slice(version_str(h.version).as_bytes());
                out.extend_from_slice(b"\",\"status\":");
                num(out, h.status as u64);
                out.extend_from_slice(b",\"bytes_in\":");
                num(out, h.bytes_in);
                out.extend_from_slice(b",\"bytes_out\":");
                num(out, h.bytes_out);
                out.extend_from_slice(b",\"upstream\":");
                self.addr.push_quoted(out, h.upstream, "null");
                out.extend_from_slice(b",\"upstream_ms\":");
                match h.upstream_time {
                    Some(d) => millis(out, d),
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b",\"total_ms\":");
                millis(out, h.total_time);
                out.extend_from_slice(b",\"tls_version\":");
                json_opt(out, h.tls_version.map(str::as_bytes));
                out.extend_from_slice(b",\"sni\":");
                json_opt(out, h.sni.as_deref().map(str::as_bytes));
                out.extend_from_slice(b",\"referer\":");
                json_opt(out, h.referer.as_ref().map(HeaderValue::as_bytes));
                out.extend_from_slice(b",\"user_agent\":");
                json_opt(out, h.user_agent.as_ref().map(HeaderValue::as_bytes));
            }
            Record::Tcp(t) => {
                out.extend_from_slice(b"\",\"listener\":");
                json_str(out, t.listener.as_bytes());
                out.extend_from_slice(b",\"upstream\":");
                self.addr.push_quoted(out, t.upstream, "null");
                out.extend_from_slice(b",\"bytes_in\":");
                num(out, t.bytes_in);
                out.extend_from_slice(b",\"bytes_out\":");
                num(out, t.bytes_out);
                out.extend_from_slice(b",\"total_ms\":");
                millis(out, t.total_time);
                out.extend_from_slice(b",\"error\":");
                json_opt(out, t.error.as_deref().map(str::as_bytes));
            }
        }
        out.push(b'}');
    }

    /// `client - - [time] "METHOD path PROTO" status bytes "referer" "agent" "host"
    /// "upstream" upstream_ms total_ms tls sni bytes_in`; a TCP session puts `TCP listener`
    /// in the request field.
    fn combined(&mut self, r: Record<'_>) {
        let (time, client) = match r {
            Record::Http(h) => (h.time, h.client),
            Record::Tcp(t) => (t.time, t.client),
        };
        let out = &mut self.buf;
        out.extend_from_slice(self.ip.text(client.ip().to_canonical()));
        out.extend_from_slice(b" - - [");
        out.extend_from_slice(self.date.of(time).1.as_bytes());
        out.extend_from_slice(b"] \"");
        match r {
            Record::Http(h) => {
                clf_escaped(out, h.method.as_str().as_bytes());
                out.push(b' ');
                clf_escaped(out, h.path.as_str().as_bytes());
                let _ = write!(
                    out,
                    " {}\" {} {} ",
                    version_str(h.version),
                    h.status,
                    h.bytes_out
                );
                for v in [&h.referer, &h.user_agent, &h.host] {
                    clf_quoted(out, v.as_ref().map(HeaderValue::as_bytes));
                    out.push(b' ');
                }
                self.addr.push_quoted(out, h.upstream, "\"-\"");
                match h.upstream_time {
                    Some(d) => {
                        out.push(b' ');
                        millis(out, d);
                        out.extend_from_slice(b"ms ");
                    }
                    None => out.extend_from_slice(b" - "),
                }
                millis(out, h.total_time);
                let _ = write!(
                    out,
                    "ms {} {} {}",
                    h.tls_version.unwrap_or("-"),
                    h.sni.as_deref().unwrap_or("-"),
                    h.bytes_in
                );
            }
            Record::Tcp(t) => {
                out.extend_from_slice(b"TCP ");
                clf_escaped(out, t.listener.as_bytes());
                let status = if t.error.is_some() { 502 } else { 200 };
                let _ = write!(out, "\" {status} {} \"-\" \"-\" \"-\" ", t.bytes_out);
                self.addr.push_quoted(out, t.upstream, "\"-\"");
                out.extend_from_slice(b" - ");
                millis(out, t.total_time);
                let _ = write!(out, "ms - - {}", t.bytes_in);
            }
        }
    }
}

fn num(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `n` (below 1000) as three digits.
fn pad3(out: &mut Vec<u8>, n: u32) {
    let n = n.min(999);
    out.extend_from_slice(&[
        b'0' + (n / 100) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
}

/// Milliseconds with three decimals, from integers.
fn millis(out: &mut Vec<u8>, d: Duration) {
    num(out, d.as_secs() * 1000 + u64::from(d.subsec_millis()));
    out.push(b'.');
    pad3(out, d.subsec_micros() % 1000);
}

/// A JSON string: quotes, backslashes and control characters escaped; bytes that are not
/// UTF-8 (allowed in header values) replaced.
fn json_str(out: &mut Vec<u8>, v: &[u8]) {
    out.push(b'"');
    if plain(v) {
        // The usual case: copied as it is.
        out.extend_from_slice(v);
        out.push(b'"');
        return;
    }
    for c in String::from_utf8_lossy(v).chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out.push(b'"');
}

/// Whether `v` is printable ASCII without `"` or `\`: nothing to escape in JSON. Eight bytes
/// at a time, with the bit tricks of "Bit Twiddling Hacks" (any byte zero, less than or more
/// than a constant); those are exact for "any byte", which is all this asks.
fn plain(v: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH != 0;
    let word_plain = |x: u64| {
        let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        // 0x7f and up: adding 1 sets the high bit of 0x7f, and the high bit is set above.
        let del_or_high = (x.wrapping_add(ONES) | x) & HIGH;
        below_space | del_or_high == 0
            && !has_zero(x ^ (ONES * u64::from(b'"')))
            && !has_zero(x ^ (ONES * u64::from(b'\\')))
    };
    let mut words = v.chunks_exact(8);
    if !words
        .by_ref()
        .all(|w| word_plain(u64::from_ne_bytes(w.try_into().expect("eight"))))
    {
        return false;
    }
    // The last bytes as one word, padded with spaces (plain).
    let mut last = [b' '; 8];
    let rest = words.remainder();
    last[..rest.len()].copy_from_slice(rest);
    word_plain(u64::from_ne_bytes(last))
}

fn json_opt(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) => json_str(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// Text inside a combined-format quoted field: quotes and backslashes escaped, control
/// characters as `\xNN` (as Apache does).
fn clf_escaped(out: &mut Vec<u8>, v: &[u8]) {
    for c in String::from_utf8_lossy(v).chars() {
        match c {
            '"' | '\\' => {
                out.push(b'\\');
                out.push(c as u8);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
}

fn clf_quoted(out: &mut Vec<u8>, v: Option<&[u8]>) {
    out.push(b'"');
    match v {
        Some(v) => clf_escaped(out, v),
        None => out.push(b'-'),
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn http_record() -> HttpRecord {
        HttpRecord {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_745_509_123),
            client: "[::ffff:192.0.2.7]:5000".parse().unwrap(),
            host: Some(HeaderValue::from_static("shop.example.com")),
            method: Method::POST,
            path: PathAndQuery::from_static("/cart?id=1"),
            version: Version::HTTP_11,
            status: 201,
            bytes_in: 17,
            bytes_out: 42,
            upstream: Some("10.0.0.5:8080".parse().unwrap()),
            upstream_time: Some(Duration::from_micros(1_500)),
            total_time: Duration::from_micros(2_250),
            tls_version: Some("TLSv1.3"),
            sni: Some(Arc::from("shop.example.com")),
            referer: None,
            user_agent: Some(HeaderValue::from_static("curl/8 \"x\"")),
        }
    }

    /// The line `r` formats to, without its newline.
    fn line(format: LogFormat, r: Record<'_>) -> String {
        let mut f = Formatter::default();
        f.line(format, r);
        let text = String::from_utf8(f.buf).unwrap();
        text.strip_suffix('\n').expect("one line").to_owned()
    }

    #[test]
    fn json_line_carries_every_field() {
        let v: serde_json::Value =
            serde_json::from_str(&line(LogFormat::Json, Record::Http(&http_record()))).unwrap();
        assert_eq!(v["time"], "2025-12-03T07:05:09.123Z");
        assert_eq!(v["kind"], "http");
        assert_eq!(v["client"], "192.0.2.7");
        assert_eq!(v["host"], "shop.example.com");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/cart?id=1");
        assert_eq!(v["status"], 201);
        assert_eq!(v["bytes_in"], 17);
        assert_eq!(v["bytes_out"], 42);
        assert_eq!(v["upstream"], "10.0.0.5:8080");
        assert_eq!(v["upstream_ms"], 1.5);
        assert_eq!(v["total_ms"], 2.25);
        assert_eq!(v["tls_version"], "TLSv1.3");
        assert_eq!(v["sni"], "shop.example.com");
        assert_eq!(v["referer"], serde_json::Value::Null);
        assert_eq!(v["user_agent"], "curl/8 \"x\"");
        assert_eq!(v["protocol"], "HTTP/1.1");
        // Control characters and bytes that are not UTF-8 still make valid JSON.
        let mut r = http_record();
        r.user_agent = Some(HeaderValue::from_bytes(b"a\tb\xffc\\\xc3\xa9").unwrap());
        r.upstream = None;
        let v: serde_json::Value =
            serde_json::from_str(&line(LogFormat::Json, Record::Http(&r))).unwrap();
        assert_eq!(v["user_agent"], "a\tb\u{fffd}c\\é");
        assert_eq!(v["upstream"], serde_json::Value::Null);
        let tcp = TcpRecord {
            time: SystemTime::UNIX_EPOCH,
            client: "192.0.2.1:1".parse().unwrap(),
            listener: Arc::from("db"),
            upstream: Some("10.0.0.9:5432".parse().unwrap()),
            bytes_in: 3,
            bytes_out: 4,
            total_time: Duration::from_millis(3),
            error: None,
        };
        let v: serde_json::Value =
            serde_json::from_str(&line(LogFormat::Json, Record::Tcp(&tcp))).unwrap();
        assert_eq!(v["kind"], "tcp");
        assert_eq!(v["listener"], "db");
        assert_eq!(v["upstream"], "10.0.0.9:5432");
        assert_eq!(
            (v["bytes_in"].as_u64(), v["bytes_out"].as_u64()),
            (Some(3), Some(4))
        );
        assert_eq!(v["error"], serde_json::Value::Null);
    }

    #[test]
    fn plain_finds_every_byte_json_escapes_at_every_position() {
        let base = b"GET /a/b?c=d&e=f HTTP/1.1 xyz~".to_vec();
        assert!(plain(&base));
        for pos in 0..base.len() {
            for b in (0..=255u8).filter(|&b| !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\')
            {
                let mut v = base.clone();
                v[pos] = b;
                assert!(!plain(&v), "byte {b:#x} at {pos} of {} missed", v.len());
            }
        }
        // Every printable byte but the two escaped ones, in words and in the remainder.
        let printable: Vec<u8> = (0x20..0x7f).filter(|&b| b != b'"' && b != b'\\').collect();
        assert!(plain(&printable));
        assert!(plain(&printable[3..]));
    }

    #[test]
    fn combined_line_quotes_and_escapes() {
        assert_eq!(
            line(LogFormat::Combined, Record::Http(&http_record())),
            "192.0.2.7 - - [03/Dec/2025:07:05:09 +0000] \"POST /cart?id=1 HTTP/1.1\" 201 42 \
             \"-\" \"curl/8 \\\"x\\\"\" \"shop.example.com\" \"10.0.0.5:8080\" 1.500ms 2.250ms \
             TLSv1.3 shop.example.com 17"
        );
        let tcp = TcpRecord {
            time: SystemTime::UNIX_EPOCH,
            client: "192.0.2.1:1".parse().unwrap(),
            listener: Arc::from("db"),
            upstream: None,
            bytes_in: 0,
            bytes_out: 0,
            total_time: Duration::from_millis(3),
            error: Some("no endpoint".into()),
        };
        assert_eq!(
            line(LogFormat::Combined, Record::Tcp(&tcp)),
            "192.0.2.1 - - [01/Jan/1970:00:00:00 +0000] \"TCP db\" 502 0 \"-\" \"-\" \"-\" \"-\" - 3.000ms - - 0"
        );
    }

    /// A log without a writer thread.
    fn unstarted(sample: f64, limit: usize) -> AccessLog {
        AccessLog {
            shards: Shards::new(LogFormat::Json, limit),
            sample,
            dropped: Counter::default(),
        }
    }

    #[test]
    fn sampling_logs_about_the_configured_fraction() {
        let quarter = unstarted(0.25, SHARD_LIMIT);
        let n = (0..20_000).filter(|_| quarter.sampled()).count();
        assert!((4_000..6_000).contains(&n), "{n} of 20000 at 0.25");
        let all = unstarted(1.0, SHARD_LIMIT);
        assert!((0..1_000).all(|_| all.sampled()));
    }

    #[test]
    fn a_full_shard_drops_and_counts() {
        // The first line fills the one-byte shard; the next two are dropped.
        let log = unstarted(1.0, 1);
        for _ in 0..3 {
            log.write(Record::Http(&http_record()));
        }
        assert_eq!(log.dropped.get(), 2);
        assert_eq!(
            log.shards
                .mine()
                .buf
                .iter()
                .filter(|&&b| b == b'\n')
                .count(),
            1
        );
    }

    #[test]
    fn a_full_shard_goes_to_the_file_from_the_thread_that_filled_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        std::fs::write(&path, "").unwrap();
        // No writer thread: only the filling thread can have written the lines.
        let mut log = unstarted(1.0, SHARD_LIMIT);
        Arc::get_mut(&mut log.shards).unwrap().direct = Some(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap(),
        );
        let mut n = 0;
        while std::fs::metadata(&path).unwrap().len() == 0 {
            log.write(Record::Http(&http_record()));
            n += 1;
            assert!(n < 1_000, "nothing written after {n} lines");
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), n, "every line so far, in one write");
        assert!(text.len() >= WAKE_AT);
        assert!(log.shards.mine().buf.is_empty());
        assert_eq!(log.dropped.get(), 0);
    }

    #[test]
    fn writer_thread_writes_lines_from_every_thread_and_ends_with_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let dropped = Counter::default();
        let spec = AccessLogSpec {
            format: LogFormat::Json,
            path: Some(path.clone()),
            sample: 1.0,
        };
        let log = AccessLog::start(&spec, dropped.clone()).unwrap();
        // More threads than shards: some share one.
        std::thread::scope(|s| {
            for _ in 0..SHARDS + 2 {
                s.spawn(|| {
                    for _ in 0..50 {
                        log.write(Record::Http(&http_record()));
                    }
                });
            }
        });
        let shards = Arc::downgrade(&log.shards);
        // Dropped right after the writes: what the writer had not drained yet is written
        // before it ends.
        drop(log);
        let deadline = Instant::now() + Duration::from_secs(5);
        while shards.upgrade().is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(shards.upgrade().is_none(), "the writer thread did not end");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), (SHARDS + 2) * 50);
        for l in text.lines() {
            serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
        assert_eq!(dropped.get(), 0);
        let bad = AccessLog::start(
            &AccessLogSpec {
                path: Some(dir.path().join("missing/dir/access.log")),
                ..spec
            },
            Counter::default(),
        );
        assert!(bad.unwrap_err().to_string().contains("missing/dir"));
    }
}
