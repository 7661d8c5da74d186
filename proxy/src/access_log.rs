//! Access logs: one line per HTTP request and per TCP session, as JSON or in the combined log
//! format, to stdout or a file.
//!
//! The data path only fills a record and hands it to a bounded channel; a dedicated thread
//! formats and writes. When the writer falls behind, records are dropped and counted
//! (`edgemesh_access_log_dropped_total`) rather than slowing requests down.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, Uri, Version};
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

/// Records waiting for the writer; more are dropped.
const QUEUE: usize = 16_384;

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

/// The sending half, shared by every connection task.
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<Record>,
    sample: f64,
    dropped: Counter,
}

impl AccessLog {
    /// Opens the destination (appending to a file) and starts the writer thread.
    pub fn start(spec: &AccessLogSpec, dropped: Counter) -> io::Result<Arc<AccessLog>> {
        let out: Box<dyn Write + Send> = match &spec.path {
            None => Box::new(io::stdout()),
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?,
            ),
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let format = spec.format;
        std::thread::Builder::new()
            .name("edgemesh-access-log".into())
            .spawn(move || write_loop(rx, out, format))?;
        Ok(Arc::new(AccessLog {
            tx,
            sample: spec.sample,
            dropped,
        }))
    }

    /// Whether this request or session is logged.
    pub fn sampled(&self) -> bool {
        self.sample >= 1.0 || fastrand::f64() < self.sample
    }

    pub(crate) fn send(&self, r: Record) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(r) {
            self.dropped.inc();
        }
    }
}

pub(crate) enum Record {
    Http(Box<HttpRecord>),
    Tcp(TcpRecord),
}

/// One HTTP exchange. Fields are the cheap clones of what the request already holds; the
/// writer thread does the formatting.
pub(crate) struct HttpRecord {
    pub time: SystemTime,
    pub client: SocketAddr,
    pub host: Option<HeaderValue>,
    pub method: Method,
    pub uri: Uri,
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
/// only then). Sent when dropped through [`PendingLog::finish`].
pub(crate) struct PendingLog {
    pub log: Arc<AccessLog>,
    pub record: Box<HttpRecord>,
    pub started: Instant,
    /// Request body bytes, stored by the request body when it is dropped.
    pub bytes_in: Arc<AtomicU64>,
}

impl PendingLog {
    pub fn finish(self, bytes_out: u64) {
        let PendingLog {
            log,
            mut record,
            started,
            bytes_in,
        } = self;
        record.bytes_out = bytes_out;
        record.bytes_in = bytes_in.load(Ordering::Relaxed);
        record.total_time = started.elapsed();
        log.send(Record::Http(record));
    }
}

/// How often the writer drains the queue. Senders never wake it (a wake-up per request costs
/// a system call and a context switch); lines reach the destination within this.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

fn write_loop(rx: Receiver<Record>, out: Box<dyn Write + Send>, format: LogFormat) {
    let mut out = io::BufWriter::with_capacity(256 * 1024, out);
    let mut f = Formatter::default();
    loop {
        std::thread::sleep(DRAIN_EVERY);
        let mut wrote = false;
        loop {
            let r = match rx.try_recv() {
                Ok(r) => r,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            };
            f.line.clear();
            match format {
                LogFormat::Json => f.json(&r),
                LogFormat::Combined => f.combined(&r),
            }
            f.line.push('\n');
            if out.write_all(f.line.as_bytes()).is_err() {
                // The destination is gone (a closed stdout): nothing better to do than stop.
                return;
            }
            wrote = true;
        }
        if wrote && out.flush().is_err() {
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

/// Formats records into `line`, by hand (the writer formats every request; serde and
/// `format!` cost several times more), reusing the date of the last second.
#[derive(Default)]
pub(crate) struct Formatter {
    pub line: String,
    /// (Unix second, `2026-12-03T07:05:09`, `03/Dec/2026:07:05:09 +0000`)
    date: Option<(u64, String, String)>,
    ip: Option<(IpAddr, String)>,
    addr: Option<(SocketAddr, String)>,
}

impl Formatter {
    fn dates(&mut self, t: SystemTime) -> (&str, &str, u32) {
        let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        if self.date.as_ref().is_none_or(|d| d.0 != secs) {
            const MONTHS: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            let d = time::OffsetDateTime::from(t);
            let (y, m, day) = (d.year(), d.month() as u8, d.day());
            let (h, min, sec) = (d.hour(), d.minute(), d.second());
            self.date = Some((
                secs,
                format!("{y:04}-{m:02}-{day:02}T{h:02}:{min:02}:{sec:02}"),
                format!(
                    "{day:02}/{}/{y:04}:{h:02}:{min:02}:{sec:02} +0000",
                    MONTHS[m as usize - 1]
                ),
            ));
        }
        let d = self.date.as_ref().expect("set above");
        (&d.1, &d.2, since.subsec_millis())
    }

    /// `ip` as text, formatted once while it repeats (one client, one upstream).
    fn ip(&mut self, ip: IpAddr) -> &str {
        let ip = ip.to_canonical();
        if self.ip.as_ref().is_none_or(|c| c.0 != ip) {
            self.ip = Some((ip, ip.to_string()));
        }
        &self.ip.as_ref().expect("set above").1
    }

    fn addr(&mut self, addr: SocketAddr) -> &str {
        if self.addr.as_ref().is_none_or(|c| c.0 != addr) {
            self.addr = Some((addr, addr.to_string()));
        }
        &self.addr.as_ref().expect("set above").1
    }

    fn json_addr(&mut self, out: &mut String, addr: Option<SocketAddr>) {
        match addr {
            Some(a) => {
                out.push('"');
                out.push_str(self.addr(a));
                out.push('"');
            }
            None => out.push_str("null"),
        }
    }

    /// The JSON line of a record: the field names are the stable interface (documented in
    /// the example configuration).
    pub fn json(&mut self, r: &Record) {
        let mut out = std::mem::take(&mut self.line);
        let (time, client) = match r {
            Record::Http(h) => (h.time, h.client),
            Record::Tcp(t) => (t.time, t.client),
        };
        let (iso, _, ms) = self.dates(time);
        out.push_str("{\"time\":\"");
        out.push_str(iso);
        out.push('.');
        pad3(&mut out, ms);
        out.push_str("Z\",\"kind\":");
        out.push_str(match r {
            Record::Http(_) => "\"http\",\"client\":\"",
            Record::Tcp(_) => "\"tcp\",\"client\":\"",
        });
        out.push_str(self.ip(client.ip()));
        out.push('"');
        match r {
            Record::Http(h) => {
                out.push_str(",\"host\":");
                json_opt(&mut out, h.host.as_ref().map(HeaderValue::as_bytes));
                out.push_str(",\"method\":");
                json_str(&mut out, h.method.as_str().as_bytes());
                out.push_str(",\"path\":");
                json_str(&mut out, path(&h.uri).as_bytes());
                out.push_str(",\"protocol\":\"");
                out.push_str(version_str(h.version));
                out.push_str("\",\"status\":");
                num(&mut out, h.status as u64);
                out.push_str(",\"bytes_in\":");
                num(&mut out, h.bytes_in);
                out.push_str(",\"bytes_out\":");
                num(&mut out, h.bytes_out);
                out.push_str(",\"upstream\":");
                self.json_addr(&mut out, h.upstream);
                out.push_str(",\"upstream_ms\":");
                match h.upstream_time {
                    Some(d) => millis(&mut out, d),
                    None => out.push_str("null"),
                }
                out.push_str(",\"total_ms\":");
                millis(&mut out, h.total_time);
                out.push_str(",\"tls_version\":");
                json_opt(&mut out, h.tls_version.map(str::as_bytes));
                out.push_str(",\"sni\":");
                json_opt(&mut out, h.sni.as_deref().map(str::as_bytes));
                out.push_str(",\"referer\":");
                json_opt(&mut out, h.referer.as_ref().map(HeaderValue::as_bytes));
                out.push_str(",\"user_agent\":");
                json_opt(&mut out, h.user_agent.as_ref().map(HeaderValue::as_bytes));
            }
            Record::Tcp(t) => {
                out.push_str(",\"listener\":");
                json_str(&mut out, t.listener.as_bytes());
                out.push_str(",\"upstream\":");
                self.json_addr(&mut out, t.upstream);
                out.push_str(",\"bytes_in\":");
                num(&mut out, t.bytes_in);
                out.push_str(",\"bytes_out\":");
                num(&mut out, t.bytes_out);
                out.push_str(",\"total_ms\":");
                millis(&mut out, t.total_time);
                out.push_str(",\"error\":");
                json_opt(&mut out, t.error.as_deref().map(str::as_bytes));
            }
        }
        out.push('}');
        self.line = out;
    }

    /// `client - - [time] "METHOD path PROTO" status bytes "referer" "agent" "host"
    /// "upstream" upstream_ms total_ms tls sni bytes_in`; a TCP session puts `TCP listener`
    /// in the request field.
    pub fn combined(&mut self, r: &Record) {
        let mut out = std::mem::take(&mut self.line);
        let (time, client) = match r {
            Record::Http(h) => (h.time, h.client),
            Record::Tcp(t) => (t.time, t.client),
        };
        let (_, clf, _) = self.dates(time);
        let _ = write!(out, "{} - - [{clf}] \"", client.ip().to_canonical());
        match r {
            Record::Http(h) => {
                clf_escaped(&mut out, h.method.as_str().as_bytes());
                out.push(' ');
                clf_escaped(&mut out, path(&h.uri).as_bytes());
                let _ = write!(
                    out,
                    " {}\" {} {} ",
                    version_str(h.version),
                    h.status,
                    h.bytes_out
                );
                for v in [&h.referer, &h.user_agent, &h.host] {
                    clf_quoted(&mut out, v.as_ref().map(HeaderValue::as_bytes));
                    out.push(' ');
                }
                match h.upstream {
                    Some(a) => {
                        let _ = write!(out, "\"{a}\" ");
                    }
                    None => out.push_str("\"-\" "),
                }
                match h.upstream_time {
                    Some(d) => {
                        millis(&mut out, d);
                        out.push_str("ms ");
                    }
                    None => out.push_str("- "),
                }
                millis(&mut out, h.total_time);
                let _ = write!(
                    out,
                    "ms {} {} {}",
                    h.tls_version.unwrap_or("-"),
                    h.sni.as_deref().unwrap_or("-"),
                    h.bytes_in
                );
            }
            Record::Tcp(t) => {
                out.push_str("TCP ");
                clf_escaped(&mut out, t.listener.as_bytes());
                let status = if t.error.is_some() { 502 } else { 200 };
                let _ = write!(out, "\" {status} {} \"-\" \"-\" \"-\" ", t.bytes_out);
                match t.upstream {
                    Some(a) => {
                        let _ = write!(out, "\"{a}\"");
                    }
                    None => out.push_str("\"-\""),
                }
                out.push_str(" - ");
                millis(&mut out, t.total_time);
                let _ = write!(out, "ms - - {}", t.bytes_in);
            }
        }
        self.line = out;
    }
}

fn path(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |p| p.as_str())
}

fn num(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// `n` (below 1000) as three digits.
fn pad3(out: &mut String, n: u32) {
    let n = n.min(999);
    for d in [n / 100, n / 10 % 10, n % 10] {
        out.push(char::from(b'0' + d as u8));
    }
}

/// Milliseconds with three decimals, from integers.
fn millis(out: &mut String, d: Duration) {
    let us = d.as_micros() as u64;
    num(out, us / 1000);
    out.push('.');
    pad3(out, (us % 1000) as u32);
}

/// A JSON string: quotes, backslashes and control characters escaped; bytes that are not
/// UTF-8 (allowed in header values) replaced.
fn json_str(out: &mut String, v: &[u8]) {
    out.push('"');
    // The usual case: printable ASCII with nothing to escape.
    if v.iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push_str(std::str::from_utf8(v).expect("checked ASCII"));
        out.push('"');
        return;
    }
    for c in String::from_utf8_lossy(v).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_opt(out: &mut String, v: Option<&[u8]>) {
    match v {
        Some(v) => json_str(out, v),
        None => out.push_str("null"),
    }
}

/// Text inside a combined-format quoted field: quotes and backslashes escaped, control
/// characters as `\xNN` (as Apache does).
fn clf_escaped(out: &mut String, v: &[u8]) {
    for c in String::from_utf8_lossy(v).chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

fn clf_quoted(out: &mut String, v: Option<&[u8]>) {
    out.push('"');
    match v {
        Some(v) => clf_escaped(out, v),
        None => out.push('-'),
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_record() -> HttpRecord {
        HttpRecord {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_745_509_123),
            client: "[::ffff:192.0.2.7]:5000".parse().unwrap(),
            host: Some(HeaderValue::from_static("shop.example.com")),
            method: Method::POST,
            uri: "/cart?id=1".parse().unwrap(),
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

    #[test]
    fn json_line_carries_every_field() {
        let mut f = Formatter::default();
        f.json(&Record::Http(Box::new(http_record())));
        let v: serde_json::Value = serde_json::from_str(&f.line).unwrap();
        assert_eq!(v["time"], "2025-12-03T07:05:09.123Z");
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
        r.user_agent = Some(HeaderValue::from_bytes(b"a\tb\xffc\\").unwrap());
        f.line.clear();
        f.json(&Record::Http(Box::new(r)));
        let v: serde_json::Value = serde_json::from_str(&f.line).unwrap();
        assert_eq!(v["user_agent"], "a\tb\u{fffd}c\\");
    }

    #[test]
    fn combined_line_quotes_and_escapes() {
        let mut f = Formatter::default();
        f.combined(&Record::Http(Box::new(http_record())));
        assert_eq!(
            f.line,
            "192.0.2.7 - - [03/Dec/2025:07:05:09 +0000] \"POST /cart?id=1 HTTP/1.1\" 201 42 \
             \"-\" \"curl/8 \\\"x\\\"\" \"shop.example.com\" \"10.0.0.5:8080\" 1.500ms 2.250ms \
             TLSv1.3 shop.example.com 17"
        );
        f.line.clear();
        f.combined(&Record::Tcp(TcpRecord {
            time: SystemTime::UNIX_EPOCH,
            client: "192.0.2.1:1".parse().unwrap(),
            listener: Arc::from("db"),
            upstream: None,
            bytes_in: 0,
            bytes_out: 0,
            total_time: Duration::from_millis(3),
            error: Some("no endpoint".into()),
        }));
        assert_eq!(
            f.line,
            "192.0.2.1 - - [01/Jan/1970:00:00:00 +0000] \"TCP db\" 502 0 \"-\" \"-\" \"-\" \"-\" - 3.000ms - - 0"
        );
    }

    #[test]
    fn sampling_logs_about_the_configured_fraction() {
        let (tx, _rx) = mpsc::sync_channel(1);
        let log = |sample| AccessLog {
            tx: tx.clone(),
            sample,
            dropped: Counter::default(),
        };
        let quarter = log(0.25);
        let n = (0..20_000).filter(|_| quarter.sampled()).count();
        assert!((4_000..6_000).contains(&n), "{n} of 20000 at 0.25");
        let all = log(1.0);
        assert!((0..1_000).all(|_| all.sampled()));
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tx, _rx) = mpsc::sync_channel(1);
        let log = AccessLog {
            tx,
            sample: 1.0,
            dropped: Counter::default(),
        };
        for _ in 0..3 {
            log.send(Record::Http(Box::new(http_record())));
        }
        assert_eq!(log.dropped.get(), 2);
    }

    #[test]
    fn writer_thread_writes_lines_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let dropped = Counter::default();
        let log = AccessLog::start(
            &AccessLogSpec {
                format: LogFormat::Json,
                path: Some(path.clone()),
                sample: 1.0,
            },
            dropped.clone(),
        )
        .unwrap();
        for _ in 0..3 {
            log.send(Record::Http(Box::new(http_record())));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let lines = loop {
            let text = std::fs::read_to_string(&path).unwrap();
            if text.lines().count() == 3 || Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(lines.lines().count(), 3, "{lines}");
        for l in lines.lines() {
            serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
        assert_eq!(dropped.get(), 0);
        let bad = AccessLog::start(
            &AccessLogSpec {
                format: LogFormat::Json,
                path: Some(dir.path().join("missing/dir/access.log")),
                sample: 1.0,
            },
            Counter::default(),
        );
        assert!(bad.unwrap_err().to_string().contains("missing/dir"));
    }
}
