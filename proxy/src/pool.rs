//! Upstream pools: endpoints with weights, the balancing policy and passive health.
//!
//! A [`Pool`] is immutable once built; only per-endpoint counters and the ejection deadline
//! change, through atomics, so picking an endpoint takes no lock. When a pool is rebuilt from a
//! new spec, endpoints with the same address keep their [`Endpoint`] (and with it their health
//! and counters), so a hot update never forgets that an endpoint is down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tracing::{info, warn};

use crate::health::{CheckState, HealthCheckSpec};
use crate::metrics::PoolMetrics;

/// First ejection lasts this long; each further consecutive ejection doubles it.
const EJECT_BASE_MS: u64 = 1_000;
/// Upper bound of one ejection.
const EJECT_MAX_MS: u64 = 30_000;

/// Milliseconds on a monotonic clock, never 0; the unit of every deadline in this module
/// (ejections, idle upstream connections, TCP idle timeouts: none finer than a second).
///
/// On Linux the coarse clock: the kernel's last tick (at most 10 ms old), read from the vDSO
/// without the TSC. Several reads per proxied request took about 250 instructions as
/// `Instant`s with `Duration` arithmetic (callgrind).
#[cfg(target_os = "linux")]
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC_COARSE exists since
    // Linux 2.6.32, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000 + 1
}

#[cfg(not(target_os = "linux"))]
pub fn now_ms() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    /// Power of two choices on in-flight requests.
    LeastRequests,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub addr: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// The service name, shown to clients when the pool is empty.
    pub name: String,
    pub endpoints: Vec<EndpointSpec>,
    pub balance: Balance,
    /// Active checks of every endpoint, on top of passive ejection.
    pub health_check: Option<HealthCheckSpec>,
}

/// One upstream address and what we know about its health.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    weight: AtomicU32,
    in_flight: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    ejections: AtomicU64,
    consecutive_ejections: AtomicU32,
    /// `now_ms()` value until which the endpoint is ejected; 0 when healthy.
    ejected_until: AtomicU64,
    pub(crate) check: EndpointCheck,
}

/// The active health check of one endpoint (see `health`).
#[derive(Debug, Default)]
pub(crate) struct EndpointCheck {
    pub spec: ArcSwapOption<HealthCheckSpec>,
    pub state: Mutex<CheckState>,
    /// Mirrors `state.down` for the request path.
    pub down: AtomicBool,
    /// A checker task is running for this endpoint.
    pub running: AtomicBool,
    /// Passed and failed checks of the endpoint's pool.
    pub metrics: OnceLock<(Counter, Counter)>,
}

impl Endpoint {
    fn new(addr: SocketAddr, weight: u32) -> Self {
        Endpoint {
            addr,
            weight: AtomicU32::new(weight),
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            consecutive_ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            check: EndpointCheck::default(),
        }
    }

    /// Neither ejected (passive health) nor down by its active check.
    pub fn is_available(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) <= now
            && !self.check.down.load(Ordering::Relaxed)
    }

    /// Marks the start of a request or stream; the guard ends it.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The endpoint refused or did not answer a connection: take it out of rotation for a
    /// back-off period that doubles with each consecutive ejection.
    /// Returns the ejection length in milliseconds.
    pub fn eject(&self, now: u64) -> u64 {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        let n = self
            .consecutive_ejections
            .fetch_add(1, Ordering::Relaxed)
            .min(5);
        let ms = (EJECT_BASE_MS << n).min(EJECT_MAX_MS);
        self.ejected_until.store(now + ms, Ordering::Relaxed);
        ms
    }

    /// A connection succeeded: the back-off starts from the base again next time.
    pub fn mark_success(&self) {
        if self.consecutive_ejections.load(Ordering::Relaxed) != 0 {
            self.consecutive_ejections.store(0, Ordering::Relaxed);
        }
    }

    pub fn status(&self, now: u64) -> EndpointStatus {
        let until = self.ejected_until.load(Ordering::Relaxed);
        EndpointStatus {
            addr: self.addr,
            weight: self.weight.load(Ordering::Relaxed),
            healthy: self.is_available(now),
            ejected_for_ms: until.saturating_sub(now),
            check: self.check_description(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
        }
    }
}

/// Held while a request or stream uses an endpoint; feeds least-requests balancing.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    /// The endpoint's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.0.addr
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EndpointStatus {
    pub addr: SocketAddr,
    pub weight: u32,
    /// Usable: not ejected and not down by its active check.
    pub healthy: bool,
    pub ejected_for_ms: u64,
    /// The active check's verdict and its reason.
    pub check: Option<String>,
    pub in_flight: u64,
    pub requests: u64,
    pub failures: u64,
    pub ejections: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    pub name: String,
    pub balance: Balance,
    pub health_check: Option<HealthCheckSpec>,
    /// No endpoint is usable, so requests go to all of them.
    pub failing_open: bool,
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    balance: Balance,
    endpoints: Vec<Arc<Endpoint>>,
    /// Endpoint indexes interleaved by weight (smooth weighted round-robin, precomputed).
    schedule: Vec<u32>,
    next: AtomicUsize,
    health_check: Option<HealthCheckSpec>,
    /// Set while picks find no usable endpoint (logged on each change).
    failing_open: AtomicBool,
    pub(crate) metrics: PoolMetrics,
}

impl Pool {
    /// Builds a pool, reusing the endpoints of `previous` that keep their address. Endpoints
    /// that need a health checker started are pushed to `checkers`.
    pub(crate) fn build(
        spec: &PoolSpec,
        previous: Option<&Pool>,
        metrics: PoolMetrics,
        checkers: &mut Vec<Arc<Endpoint>>,
    ) -> Pool {
        let mut old: HashMap<SocketAddr, &Arc<Endpoint>> = previous
            .map(|p| p.endpoints.iter().map(|e| (e.addr, e)).collect())
            .unwrap_or_default();
        let mut endpoints: Vec<Arc<Endpoint>> = Vec::with_capacity(spec.endpoints.len());
        for e in &spec.endpoints {
            if endpoints.iter().any(|x| x.addr == e.addr) {
                continue;
            }
            let weight = e.weight.max(1);
            let ep = match old.remove(&e.addr) {
                Some(existing) => {
                    existing.weight.store(weight, Ordering::Relaxed);
                    existing.clone()
                }
                None => Arc::new(Endpoint::new(e.addr, weight)),
            };
            let _ = ep
                .check
                .metrics
                .set((metrics.checks_ok.clone(), metrics.checks_failed.clone()));
            if ep.set_check(spec.health_check.as_ref()) {
                checkers.push(ep.clone());
            }
            endpoints.push(ep);
        }
        let weights: Vec<u32> = endpoints
            .iter()
            .map(|e| e.weight.load(Ordering::Relaxed))
            .collect();
        let next = previous.map_or(0, |p| p.next.load(Ordering::Relaxed));
        Pool {
            name: Arc::from(spec.name.as_str()),
            balance: spec.balance,
            schedule: smooth_schedule(&weights),
            endpoints,
            next: AtomicUsize::new(next),
            health_check: spec.health_check.clone(),
            failing_open: AtomicBool::new(
                previous.is_some_and(|p| p.failing_open.load(Ordering::Relaxed)),
            ),
            metrics,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Chooses an endpoint that is not ejected and is not `exclude`. When every endpoint is
    /// ejected the pool fails open: a refused connection costs less than refusing everyone.
    pub fn pick(&self, now: u64, exclude: Option<SocketAddr>) -> Option<Arc<Endpoint>> {
        if self.endpoints.is_empty() {
            return None;
        }
        let usable = |e: &Arc<Endpoint>| e.is_available(now) && Some(e.addr) != exclude;
        let chosen = match self.balance {
            Balance::RoundRobin => self.pick_round_robin(&usable),
            Balance::LeastRequests => self.pick_least_requests(&usable),
        };
        if chosen.is_some() {
            if self.failing_open.load(Ordering::Relaxed)
                && self.failing_open.swap(false, Ordering::Relaxed)
            {
                info!(pool = %self.name, "an endpoint is usable again; no longer failing open");
            }
            return chosen;
        }
        let all_down = exclude.is_none() || self.endpoints.iter().all(|e| !e.is_available(now));
        if all_down {
            self.metrics.fail_open.inc();
            if !self.failing_open.swap(true, Ordering::Relaxed) {
                warn!(pool = %self.name, endpoints = self.endpoints.len(), "no endpoint is healthy; failing open to all of them");
            }
        }
        {
            // Fail open: everyone is ejected or down (or excluded); prefer anything but
            // `exclude`. Round-robin has already advanced `next` for this pick.
            let start = match self.balance {
                Balance::RoundRobin => self.next.load(Ordering::Relaxed),
                Balance::LeastRequests => self.next.fetch_add(1, Ordering::Relaxed),
            };
            let n = self.endpoints.len();
            (0..n)
                .map(|i| &self.endpoints[(start + i) % n])
                .find(|e| Some(e.addr) != exclude)
                .or_else(|| exclude.is_none().then(|| &self.endpoints[start % n]))
                .cloned()
        }
    }

    fn pick_round_robin(&self, usable: &dyn Fn(&Arc<Endpoint>) -> bool) -> Option<Arc<Endpoint>> {
        let n = self.schedule.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.endpoints[self.schedule[(start + i) % n] as usize])
            .find(|e| usable(e))
            .cloned()
    }

    fn pick_least_requests(
        &self,
        usable: &dyn Fn(&Arc<Endpoint>) -> bool,
    ) -> Option<Arc<Endpoint>> {
        let n = self.schedule.len();
        // Two weighted random draws; fall back to a scan when both are unusable.
        let a = &self.endpoints[self.schedule[fastrand::usize(..n)] as usize];
        let b = &self.endpoints[self.schedule[fastrand::usize(..n)] as usize];
        match (usable(a), usable(b)) {
            (true, true) => {
                let la = a.in_flight.load(Ordering::Relaxed);
                let lb = b.in_flight.load(Ordering::Relaxed);
                Some(if lb < la { b.clone() } else { a.clone() })
            }
            (true, false) => Some(a.clone()),
            (false, true) => Some(b.clone()),
            (false, false) => self
                .endpoints
                .iter()
                .filter(|e| usable(e))
                .min_by_key(|e| e.in_flight.load(Ordering::Relaxed))
                .cloned(),
        }
    }

    pub fn status(&self, now: u64) -> PoolStatus {
        let endpoints: Vec<EndpointStatus> = self.endpoints.iter().map(|e| e.status(now)).collect();
        PoolStatus {
            name: self.name.to_string(),
            balance: self.balance,
            health_check: self.health_check.clone(),
            failing_open: !endpoints.is_empty() && endpoints.iter().all(|e| !e.healthy),
            endpoints,
        }
    }
}

/// Nginx's smooth weighted round-robin, unrolled into one cycle of endpoint indexes so that the
/// hot path is an atomic increment. Weights are reduced by their gcd and the cycle is capped.
fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().fold(0u64, |g, &w| gcd(g, w as u64)).max(1);
    let reduced: Vec<i64> = weights.iter().map(|&w| (w as u64 / g) as i64).collect();
    let total: i64 = reduced.iter().sum();
    let len = total.min(4096) as usize;
    let mut current = vec![0i64; reduced.len()];
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        for (c, w) in current.iter_mut().zip(&reduced) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, -(*i as i64)))
            .expect("non-empty");
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn spec(weights: &[u32], balance: Balance) -> PoolSpec {
        PoolSpec {
            name: "svc".into(),
            endpoints: weights
                .iter()
                .enumerate()
                .map(|(i, &w)| EndpointSpec {
                    addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                    weight: w,
                })
                .collect(),
            balance,
            health_check: None,
        }
    }

    fn pool(weights: &[u32], balance: Balance) -> Pool {
        let m = Metrics::new(&mut Default::default());
        Pool::build(
            &spec(weights, balance),
            None,
            m.pool("svc"),
            &mut Vec::new(),
        )
    }

    fn counts(p: &Pool, n: usize, now: u64) -> Vec<usize> {
        let mut c = vec![0; p.endpoints.len()];
        for _ in 0..n {
            let e = p.pick(now, None).unwrap();
            c[(e.addr.port() - 1000) as usize] += 1;
        }
        c
    }

    #[test]
    fn round_robin_honours_weights_and_interleaves() {
        let p = pool(&[1, 2, 1], Balance::RoundRobin);
        assert_eq!(counts(&p, 400, 1), vec![100, 200, 100]);
        // Smooth: within one cycle the heavy endpoint never serves twice in a row.
        let order: Vec<u16> = (0..4)
            .map(|_| p.pick(1, None).unwrap().addr.port())
            .collect();
        assert!(order.windows(2).all(|w| w[0] != w[1]), "{order:?}");
    }

    #[test]
    fn schedule_reduces_weights_by_gcd() {
        assert_eq!(smooth_schedule(&[100, 200]).len(), 3);
        assert_eq!(
            smooth_schedule(&[5, 3, 2]),
            vec![0, 1, 2, 0, 0, 1, 0, 2, 1, 0]
        );
    }

    #[test]
    fn ejected_endpoint_is_skipped_until_its_backoff_ends() {
        let p = pool(&[1, 1], Balance::RoundRobin);
        let first = p.endpoints[0].clone();
        assert_eq!(first.eject(100), 1_000);
        assert_eq!(counts(&p, 10, 500), vec![0, 10]);
        assert_eq!(counts(&p, 10, 1_100), vec![5, 5]);
        // Consecutive ejections double the back-off, a success resets it.
        assert_eq!(first.eject(2_000), 2_000);
        assert_eq!(first.eject(5_000), 4_000);
        first.mark_success();
        assert_eq!(first.eject(10_000), 1_000);
        assert_eq!(first.status(10_500).ejected_for_ms, 500);
        assert!(!first.status(10_500).healthy);
    }

    #[test]
    fn fails_open_when_all_ejected_and_honours_exclude() {
        let p = pool(&[1, 1], Balance::LeastRequests);
        p.endpoints[0].eject(0);
        p.endpoints[1].eject(0);
        assert!(p.pick(10, None).is_some());
        let a = p.endpoints[0].addr;
        for _ in 0..10 {
            assert_ne!(p.pick(10, Some(a)).unwrap().addr, a);
        }
        let single = pool(&[1], Balance::RoundRobin);
        let only = single.endpoints[0].addr;
        assert!(single.pick(10, Some(only)).is_none());
        assert!(pool(&[], Balance::RoundRobin).pick(0, None).is_none());
    }

    #[test]
    fn check_down_endpoints_are_skipped_and_an_all_down_pool_fails_open() {
        let p = pool(&[1, 1], Balance::RoundRobin);
        p.endpoints[0].check.down.store(true, Ordering::Relaxed);
        assert_eq!(counts(&p, 10, 1), vec![0, 10]);
        assert!(!p.status(1).failing_open);
        assert!(!p.status(1).endpoints[0].healthy);
        p.endpoints[1].check.down.store(true, Ordering::Relaxed);
        // Every endpoint down: requests go to all of them, and the pool says so.
        assert_eq!(counts(&p, 10, 1), vec![5, 5]);
        assert!(p.status(1).failing_open);
        assert_eq!(p.metrics.fail_open.get(), 10);
        assert!(p.failing_open.load(Ordering::Relaxed));
        p.endpoints[1].check.down.store(false, Ordering::Relaxed);
        assert_eq!(counts(&p, 4, 1), vec![0, 4]);
        assert!(!p.failing_open.load(Ordering::Relaxed));
        assert_eq!(p.metrics.fail_open.get(), 10);
    }

    #[test]
    fn least_requests_prefers_idle_endpoint() {
        let p = pool(&[1, 1], Balance::LeastRequests);
        let _busy: Vec<_> = (0..5).map(|_| p.endpoints[0].begin()).collect();
        let c = counts(&p, 200, 1);
        // Whenever both are drawn, the idle one wins: at least 3/4 of picks in expectation.
        assert!(c[1] > 130, "{c:?}");
        drop(_busy);
        assert_eq!(p.endpoints[0].status(1).in_flight, 0);
    }

    #[test]
    fn rebuild_keeps_endpoint_state_by_address() {
        let m = Metrics::new(&mut Default::default());
        let a = Pool::build(
            &spec(&[1, 1], Balance::RoundRobin),
            None,
            m.pool("svc"),
            &mut Vec::new(),
        );
        a.endpoints[1].eject(0);
        let mut s = spec(&[1, 1, 3], Balance::RoundRobin);
        s.endpoints.remove(0);
        let b = Pool::build(&s, Some(&a), m.pool("svc"), &mut Vec::new());
        assert_eq!(b.endpoints.len(), 2);
        assert!(Arc::ptr_eq(&a.endpoints[1], &b.endpoints[0]));
        assert!(!b.endpoints[0].is_available(10));
        assert_eq!(b.endpoints[1].status(0).weight, 3);
    }
}
