//! Active health checks: each endpoint of a pool with a check is probed on an interval (an
//! HTTP GET whose status must fall in a range, or a TCP connect) and marked down after
//! `unhealthy_threshold` failures in a row, up again after `healthy_threshold` successes.
//!
//! The threshold logic is [`CheckState`], a plain state machine; [`run`] is the thin driver
//! that probes and feeds it. A down endpoint is skipped like an ejected one; when every
//! endpoint of a pool is down the pool fails open (see `Pool::pick`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use serde::Serialize;
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::pool::Endpoint;
use crate::upstream;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CheckKind {
    /// `GET path` with `Host: host` (default: the endpoint's address); healthy when the status
    /// is within `expect` (inclusive).
    Http {
        path: String,
        host: Option<String>,
        expect: (u16, u16),
    },
    /// Healthy when a TCP connection is accepted.
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheckSpec {
    #[serde(flatten)]
    pub kind: CheckKind,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Successes in a row that bring a down endpoint back.
    pub healthy_threshold: u32,
    /// Failures in a row that take an endpoint down.
    pub unhealthy_threshold: u32,
}

/// What the checks have established about one endpoint. Starts up: an endpoint is given the
/// benefit of the doubt until its checks say otherwise (as HAProxy and Traefik do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckState {
    pub down: bool,
    /// Consecutive results that disagree with `down`.
    streak: u32,
    /// The last result: `None` for a pass, else why it failed.
    pub last_error: Option<String>,
    pub checks: u64,
}

impl CheckState {
    /// Records one result; returns the new `down` when it changed.
    pub fn record(&mut self, result: Result<(), String>, spec: &HealthCheckSpec) -> Option<bool> {
        self.checks += 1;
        let failed = result.is_err();
        self.last_error = result.err();
        if failed == self.down {
            // Agrees with the current state: any run of opposite results is broken.
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.down {
            spec.healthy_threshold
        } else {
            spec.unhealthy_threshold
        };
        if self.streak < needed.max(1) {
            return None;
        }
        self.down = failed;
        self.streak = 0;
        Some(self.down)
    }

    /// One line for `meshctl status`: the state and the reason for it.
    pub fn describe(&self, spec: &HealthCheckSpec) -> String {
        let what = match &spec.kind {
            CheckKind::Http { path, .. } => format!("GET {path}"),
            CheckKind::Tcp => "TCP connect".to_string(),
        };
        match (&self.last_error, self.down) {
            (_, _) if self.checks == 0 => format!("{what}: not checked yet"),
            (Some(e), true) => format!("down: {what}: {e}"),
            (None, true) => format!(
                "down: {what} passing, {} of {} passes in a row needed",
                self.streak, spec.healthy_threshold
            ),
            (Some(e), false) => format!(
                "up: {what} failing ({e}), {} of {} failures in a row",
                self.streak, spec.unhealthy_threshold
            ),
            (None, false) => format!("up: {what} passing"),
        }
    }
}

/// Probes `endpoint` while it exists and has a check; starts at a random point of the first
/// interval so a pool's endpoints are not probed in lockstep.
pub(crate) async fn run(endpoint: Weak<Endpoint>, pool: Arc<str>) {
    let first = {
        let Some(ep) = endpoint.upgrade() else { return };
        let Some(spec) = ep.check_spec() else { return };
        Duration::from_millis(fastrand::u64(0..spec.interval_ms.max(1)))
    };
    tokio::time::sleep(first).await;
    loop {
        let Some(ep) = endpoint.upgrade() else { return };
        let Some(spec) = ep.check_spec() else {
            // The check was removed: the endpoint is judged by passive health alone again.
            if ep.stop_checker() {
                return;
            }
            continue;
        };
        let result = probe(ep.addr, &spec).await;
        let failed = result.is_err();
        let changed = ep.record_check(result, &spec);
        ep.metrics_check(failed);
        match changed {
            Some(true) => {
                warn!(%pool, endpoint = %ep.addr, state = %ep.check_description().unwrap_or_default(), "health check: endpoint down")
            }
            Some(false) => {
                info!(%pool, endpoint = %ep.addr, "health check: endpoint up again")
            }
            None => {}
        }
        drop(ep);
        tokio::time::sleep(Duration::from_millis(spec.interval_ms)).await;
    }
}

/// One probe, bounded by the check's timeout.
pub async fn probe(addr: SocketAddr, spec: &HealthCheckSpec) -> Result<(), String> {
    let timeout = Duration::from_millis(spec.timeout_ms);
    match tokio::time::timeout(timeout, probe_inner(addr, spec)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", spec.timeout_ms)),
    }
}

async fn probe_inner(addr: SocketAddr, spec: &HealthCheckSpec) -> Result<(), String> {
    let CheckKind::Http { path, host, expect } = &spec.kind else {
        return TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| format!("connect: {e}"));
    };
    // The proxy's own upstream connection (not pooled: dropped after the answer).
    let timeout = Duration::from_millis(spec.timeout_ms);
    let mut conn = upstream::connect(addr, timeout)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let host = host.clone().unwrap_or_else(|| addr.to_string());
    let req = http::Request::get(path.as_str())
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "edgemesh-health-check")
        .header(http::header::CONNECTION, "close")
        .body(Either::Right(Empty::<Bytes>::new()))
        .map_err(|e| format!("request for {path:?}: {e}"))?;
    // `probe`'s timeout covers the whole check and ends it first; this one only bounds the
    // exchange if that ever changed.
    let status = conn
        .send(req, tokio::time::Instant::now() + 2 * timeout)
        .await
        .ok_or_else(|| format!("no answer within {} ms", spec.timeout_ms))?
        .map_err(|e| format!("HTTP: {}", e.error()))?
        .status()
        .as_u16();
    if (expect.0..=expect.1).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP {status}, expected {}-{}", expect.0, expect.1))
    }
}

impl Endpoint {
    pub(crate) fn check_spec(&self) -> Option<Arc<HealthCheckSpec>> {
        self.check.spec.load_full()
    }

    /// Installs (or removes) the check; returns true when a checker task must be started.
    pub(crate) fn set_check(&self, spec: Option<&HealthCheckSpec>) -> bool {
        let current = self.check.spec.load();
        if current.as_deref() != spec {
            self.check.spec.store(spec.cloned().map(Arc::new));
            // A changed check starts from a clean slate (the endpoint stays where it was).
            let mut st = self.check.state.lock().expect("check state lock");
            st.streak = 0;
            st.checks = 0;
            st.last_error = None;
        }
        spec.is_some() && !self.check.running.swap(true, Ordering::AcqRel)
    }

    /// Called by a checker whose check was removed: returns false when a check came back
    /// meanwhile (the same task carries on).
    fn stop_checker(&self) -> bool {
        *self.check.state.lock().expect("check state lock") = CheckState::default();
        self.check.down.store(false, Ordering::Relaxed);
        self.check.running.store(false, Ordering::Release);
        self.check.spec.load().is_none() || self.check.running.swap(true, Ordering::AcqRel)
    }

    fn record_check(&self, result: Result<(), String>, spec: &HealthCheckSpec) -> Option<bool> {
        let mut st = self.check.state.lock().expect("check state lock");
        let changed = st.record(result, spec);
        self.check.down.store(st.down, Ordering::Relaxed);
        changed
    }

    pub(crate) fn check_description(&self) -> Option<String> {
        let spec = self.check.spec.load_full()?;
        Some(
            self.check
                .state
                .lock()
                .expect("check state lock")
                .describe(&spec),
        )
    }

    fn metrics_check(&self, failed: bool) {
        if let Some(m) = self.check.metrics.get() {
            if failed {
                m.1.inc();
            } else {
                m.0.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: CheckKind) -> HealthCheckSpec {
        HealthCheckSpec {
            kind,
            interval_ms: 100,
            timeout_ms: 500,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }

    #[test]
    fn thresholds_take_an_endpoint_down_and_up() {
        let s = spec(CheckKind::Tcp);
        let mut st = CheckState::default();
        let fail = || Err::<(), _>("refused".to_string());
        assert_eq!(st.record(fail(), &s), None);
        assert_eq!(st.record(fail(), &s), None);
        // A pass breaks the run: three more failures are needed.
        assert_eq!(st.record(Ok(()), &s), None);
        assert_eq!(st.record(fail(), &s), None);
        assert_eq!(st.record(fail(), &s), None);
        assert_eq!(st.record(fail(), &s), Some(true));
        assert!(st.down);
        assert_eq!(st.describe(&s), "down: TCP connect: refused");
        assert_eq!(st.record(Ok(()), &s), None);
        assert_eq!(
            st.describe(&s),
            "down: TCP connect passing, 1 of 2 passes in a row needed"
        );
        assert_eq!(st.record(fail(), &s), None);
        assert_eq!(st.record(Ok(()), &s), None);
        assert_eq!(st.record(Ok(()), &s), Some(false));
        assert!(!st.down);
        assert_eq!(st.describe(&s), "up: TCP connect passing");
    }

    #[tokio::test]
    async fn http_probe_checks_status_range_and_times_out() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A server answering 200 on /ok, 503 elsewhere, and never on /hang.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    if head.starts_with("GET /hang") {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        return;
                    }
                    assert!(head.contains("user-agent: edgemesh-health-check"), "{head}");
                    let status = if head.starts_with("GET /ok ") {
                        200
                    } else {
                        503
                    };
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let http = |path: &str| {
            spec(CheckKind::Http {
                path: path.into(),
                host: None,
                expect: (200, 399),
            })
        };
        assert_eq!(probe(addr, &http("/ok")).await, Ok(()));
        assert_eq!(
            probe(addr, &http("/bad")).await,
            Err("HTTP 503, expected 200-399".into())
        );
        assert_eq!(
            probe(addr, &http("/hang")).await,
            Err("no answer within 500 ms".into())
        );
        assert_eq!(probe(addr, &spec(CheckKind::Tcp)).await, Ok(()));
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let e = probe(closed, &spec(CheckKind::Tcp)).await.unwrap_err();
        assert!(e.starts_with("connect: "), "{e}");
    }
}
