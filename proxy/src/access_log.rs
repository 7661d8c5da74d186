//! Access logs: one line per HTTP request and per TCP session, as JSON or in the combined log
//! format, to stdout or a file.
//!
//! The data path only fills a record and hands it to a bounded channel; a dedicated thread
//! formats and writes. When the writer falls behind, records are dropped and counted
//! (`edgemesh_access_log_dropped_total`) rather than slowing requests down.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::SocketAddr;
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
    pub record: HttpRecord,
    pub started: Instant,
    /// Request body bytes, stored by the request body when it is dropped.
    pub bytes_in: Arc<AtomicU64>,
}

impl PendingLog {
    pub fn finish(self: Box<Self>, bytes_out: u64) {
        let PendingLog {
            log,
            mut record,
            started,
            bytes_in,
        } = *self;
        record.bytes_out = bytes_out;
        record.bytes_in = bytes_in.load(Ordering::Relaxed);
        record.total_time = started.elapsed();
        log.send(Record::Http(Box::new(record)));
    }
}

fn write_loop(rx: Receiver<Record>, out: Box<dyn Write + Send>, format: LogFormat) {
    let mut out = io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = String::with_capacity(512);
    let mut unflushed = false;
    loop {
        // Flush whenever the queue runs dry: lines show up promptly, and under load they
        // are written 64 KiB at a time.
        let r = match rx.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => {
                if unflushed {
                    let _ = out.flush();
                }
                match rx.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        line.clear();
        match format {
            LogFormat::Json => json_line(&r, &mut line),
            LogFormat::Combined => combined_line(&r, &mut line),
        }
        line.push('\n');
        if out.write_all(line.as_bytes()).is_err() {
            // The destination is gone (a closed stdout): nothing better to do than stop.
            return;
        }
        unflushed = true;
    }
    let _ = out.flush();
}

fn text(v: &Option<HeaderValue>) -> Option<&str> {
    v.as_ref().and_then(|v| v.to_str().ok())
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
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

/// The JSON line of a record: the field names are the stable interface (documented in the
/// example configuration).
pub(crate) fn json_line(r: &Record, out: &mut String) {
    #[derive(Serialize)]
    struct Http<'a> {
        time: String,
        kind: &'static str,
        client: String,
        host: Option<&'a str>,
        method: &'a str,
        path: &'a str,
        protocol: &'static str,
        status: u16,
        bytes_in: u64,
        bytes_out: u64,
        upstream: Option<String>,
        upstream_ms: Option<f64>,
        total_ms: f64,
        tls_version: Option<&'static str>,
        sni: Option<&'a str>,
        referer: Option<&'a str>,
        user_agent: Option<&'a str>,
    }
    #[derive(Serialize)]
    struct Tcp<'a> {
        time: String,
        kind: &'static str,
        client: String,
        listener: &'a str,
        upstream: Option<String>,
        bytes_in: u64,
        bytes_out: u64,
        total_ms: f64,
        error: Option<&'a str>,
    }
    let line = match r {
        Record::Http(h) => serde_json::to_string(&Http {
            time: rfc3339(h.time),
            kind: "http",
            client: h.client.ip().to_canonical().to_string(),
            host: text(&h.host),
            method: h.method.as_str(),
            path: h.uri.path_and_query().map_or("/", |p| p.as_str()),
            protocol: version_str(h.version),
            status: h.status,
            bytes_in: h.bytes_in,
            bytes_out: h.bytes_out,
            upstream: h.upstream.map(|a| a.to_string()),
            upstream_ms: h.upstream_time.map(millis),
            total_ms: millis(h.total_time),
            tls_version: h.tls_version,
            sni: h.sni.as_deref(),
            referer: text(&h.referer),
            user_agent: text(&h.user_agent),
        }),
        Record::Tcp(t) => serde_json::to_string(&Tcp {
            time: rfc3339(t.time),
            kind: "tcp",
            client: t.client.ip().to_canonical().to_string(),
            listener: &t.listener,
            upstream: t.upstream.map(|a| a.to_string()),
            bytes_in: t.bytes_in,
            bytes_out: t.bytes_out,
            total_ms: millis(t.total_time),
            error: t.error.as_deref(),
        }),
    };
    out.push_str(&line.expect("records serialize"));
}

/// `client - - [time] "METHOD path PROTO" status bytes "referer" "agent" "host" "upstream"
/// upstream_ms total_ms tls sni`; a TCP session puts `TCP listener` in the request field.
pub(crate) fn combined_line(r: &Record, out: &mut String) {
    fn quoted(out: &mut String, v: Option<&str>) {
        out.push('"');
        match v {
            None => out.push('-'),
            Some(v) => {
                for c in v.chars() {
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
        }
        out.push('"');
    }
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    match r {
        Record::Http(h) => {
            let _ = write!(
                out,
                "{} - - [{}] ",
                h.client.ip().to_canonical(),
                clf_time(h.time)
            );
            let request = format!(
                "{} {} {}",
                h.method,
                h.uri.path_and_query().map_or("/", |p| p.as_str()),
                version_str(h.version)
            );
            quoted(out, Some(&request));
            let _ = write!(out, " {} {} ", h.status, h.bytes_out);
            quoted(out, text(&h.referer));
            out.push(' ');
            quoted(out, text(&h.user_agent));
            out.push(' ');
            quoted(out, text(&h.host));
            out.push(' ');
            quoted(out, h.upstream.map(|a| a.to_string()).as_deref());
            let _ = write!(
                out,
                " {} {}ms {} {} {}",
                dash(h.upstream_time.map(|d| format!("{}ms", millis(d)))),
                millis(h.total_time),
                h.tls_version.unwrap_or("-"),
                h.sni.as_deref().unwrap_or("-"),
                h.bytes_in,
            );
        }
        Record::Tcp(t) => {
            let _ = write!(
                out,
                "{} - - [{}] ",
                t.client.ip().to_canonical(),
                clf_time(t.time)
            );
            quoted(out, Some(&format!("TCP {}", t.listener)));
            let status = if t.error.is_some() { 502 } else { 200 };
            let _ = write!(out, " {status} {} \"-\" \"-\" \"-\" ", t.bytes_out);
            quoted(out, t.upstream.map(|a| a.to_string()).as_deref());
            let _ = write!(out, " - {}ms - - {}", millis(t.total_time), t.bytes_in);
        }
    }
}

fn utc(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

/// `2026-12-03T07:05:09.123Z`
fn rfc3339(t: SystemTime) -> String {
    let d = utc(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        d.year(),
        d.month() as u8,
        d.day(),
        d.hour(),
        d.minute(),
        d.second(),
        d.millisecond()
    )
}

/// `03/Dec/2026:07:05:09 +0000`
fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let d = utc(t);
    format!(
        "{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000",
        d.day(),
        MONTHS[d.month() as usize - 1],
        d.year(),
        d.hour(),
        d.minute(),
        d.second()
    )
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
        let mut s = String::new();
        json_line(&Record::Http(Box::new(http_record())), &mut s);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
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
    }

    #[test]
    fn combined_line_quotes_and_escapes() {
        let mut s = String::new();
        combined_line(&Record::Http(Box::new(http_record())), &mut s);
        assert_eq!(
            s,
            "192.0.2.7 - - [03/Dec/2025:07:05:09 +0000] \"POST /cart?id=1 HTTP/1.1\" 201 42 \
             \"-\" \"curl/8 \\\"x\\\"\" \"shop.example.com\" \"10.0.0.5:8080\" 1.5ms 2.25ms \
             TLSv1.3 shop.example.com 17"
        );
        s.clear();
        combined_line(
            &Record::Tcp(TcpRecord {
                time: SystemTime::UNIX_EPOCH,
                client: "192.0.2.1:1".parse().unwrap(),
                listener: Arc::from("db"),
                upstream: None,
                bytes_in: 0,
                bytes_out: 0,
                total_time: Duration::from_millis(3),
                error: Some("no endpoint".into()),
            }),
            &mut s,
        );
        assert_eq!(
            s,
            "192.0.2.1 - - [01/Jan/1970:00:00:00 +0000] \"TCP db\" 502 0 \"-\" \"-\" \"-\" \"-\" - 3ms - - 0"
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
