//! Prometheus metrics of the data path.
//!
//! Families are registered once into the node's registry. Per-pool handles are resolved when a
//! pool is built, so the request path only does atomic adds.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    pool: String,
    class: &'static str,
}

/// Status classes as label values, indexed by `status / 100 - 1`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn class_index(status: u16) -> usize {
    ((status / 100).clamp(1, 5) - 1) as usize
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    pool: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    ClientToUpstream,
    UpstreamToClient,
}

/// The data path's metric families. Cheap to clone (every handle is an `Arc`).
#[derive(Clone, Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    upstream_latency: Family<PoolLabel, Histogram>,
    ejections: Family<PoolLabel, Counter>,
    upstream_errors: Family<PoolLabel, Counter>,
    active_connections: Family<ListenerLabel, Gauge>,
    connections: Family<ListenerLabel, Counter>,
    accept_pauses: Family<ListenerLabel, Counter>,
    timeouts: Family<PoolLabel, Counter>,
    bytes: Family<DirectionLabel, Counter>,
    bad_requests: Counter,
    access_log_dropped: Counter,
    health_checks: Family<CheckLabels, Counter>,
    fail_open: Family<PoolLabel, Counter>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            requests: Family::default(),
            upstream_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            ejections: Family::default(),
            upstream_errors: Family::default(),
            active_connections: Family::default(),
            connections: Family::default(),
            accept_pauses: Family::default(),
            timeouts: Family::default(),
            bytes: Family::default(),
            bad_requests: Counter::default(),
            access_log_dropped: Counter::default(),
            health_checks: Family::default(),
            fail_open: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("edgemesh");
        r.register(
            "http_requests",
            "HTTP requests answered, by pool and status class",
            m.requests.clone(),
        );
        r.register(
            "upstream_latency_seconds",
            "Time from sending a request upstream to its response headers",
            m.upstream_latency.clone(),
        );
        r.register(
            "endpoint_ejections",
            "Endpoints taken out of rotation after a failed connection",
            m.ejections.clone(),
        );
        r.register(
            "upstream_errors",
            "Upstream connections or exchanges that failed",
            m.upstream_errors.clone(),
        );
        r.register(
            "active_connections",
            "Client connections open now, by listener",
            m.active_connections.clone(),
        );
        r.register(
            "connections",
            "Client connections accepted, by listener",
            m.connections.clone(),
        );
        r.register(
            "accept_pauses",
            "Times a listener stopped accepting at its connection limit",
            m.accept_pauses.clone(),
        );
        r.register(
            "upstream_timeouts",
            "Upstream connects or response heads that timed out (answered 504), by pool",
            m.timeouts.clone(),
        );
        r.register(
            "proxied_bytes",
            "Body and stream bytes relayed",
            m.bytes.clone(),
        );
        r.register(
            "malformed_requests",
            "Requests refused as malformed or ambiguous (smuggling attempts included)",
            m.bad_requests.clone(),
        );
        r.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            m.access_log_dropped.clone(),
        );
        r.register(
            "health_checks",
            "Active health checks, by pool and result (passed, failed)",
            m.health_checks.clone(),
        );
        r.register(
            "pool_fail_open",
            "Requests sent to an unhealthy endpoint because no endpoint of the pool was healthy",
            m.fail_open.clone(),
        );
        m
    }

    pub(crate) fn pool(&self, pool: &str) -> PoolMetrics {
        let label = PoolLabel { pool: pool.into() };
        // One statement per lookup: a family's read guard lives to the end of its statement,
        // and a second lookup needing its write lock would wait for it forever.
        let check = |result| {
            self.health_checks
                .get_or_create(&CheckLabels {
                    pool: pool.into(),
                    result,
                })
                .clone()
        };
        let checks_ok = check("passed");
        let checks_failed = check("failed");
        PoolMetrics {
            by_class: CLASSES.map(|class| {
                self.requests
                    .get_or_create(&RequestLabels {
                        pool: pool.into(),
                        class,
                    })
                    .clone()
            }),
            latency: self.upstream_latency.get_or_create(&label).clone(),
            ejections: self.ejections.get_or_create(&label).clone(),
            errors: self.upstream_errors.get_or_create(&label).clone(),
            timeouts: self.timeouts.get_or_create(&label).clone(),
            checks_ok,
            checks_failed,
            fail_open: self.fail_open.get_or_create(&label).clone(),
        }
    }

    /// Requests answered without a pool (no route, bad host): counted under pool "-".
    pub(crate) fn unrouted(&self, status: u16) {
        let class = CLASSES[class_index(status)];
        self.requests
            .get_or_create(&RequestLabels {
                pool: "-".into(),
                class,
            })
            .inc();
    }

    pub(crate) fn listener(&self, listener: &str) -> ListenerMetrics {
        let label = ListenerLabel {
            listener: listener.into(),
        };
        ListenerMetrics {
            active: self.active_connections.get_or_create(&label).clone(),
            accepted: self.connections.get_or_create(&label).clone(),
            paused: self.accept_pauses.get_or_create(&label).clone(),
        }
    }

    pub(crate) fn bytes(&self, direction: Direction) -> Counter {
        self.bytes
            .get_or_create(&DirectionLabel {
                direction: match direction {
                    Direction::ClientToUpstream => "client_to_upstream",
                    Direction::UpstreamToClient => "upstream_to_client",
                },
            })
            .clone()
    }

    pub(crate) fn access_log_dropped(&self) -> Counter {
        self.access_log_dropped.clone()
    }

    pub(crate) fn bad_request(&self) {
        self.bad_requests.inc();
    }
}

#[derive(Clone, Debug)]
pub(crate) struct PoolMetrics {
    by_class: [Counter; 5],
    pub latency: Histogram,
    pub ejections: Counter,
    pub errors: Counter,
    pub timeouts: Counter,
    pub checks_ok: Counter,
    pub checks_failed: Counter,
    pub fail_open: Counter,
}

impl PoolMetrics {
    pub fn response(&self, status: u16) {
        self.by_class[class_index(status)].inc();
    }
}

#[derive(Clone, Debug)]
pub(crate) struct ListenerMetrics {
    pub active: Gauge,
    pub accepted: Counter,
    pub paused: Counter,
}

impl ListenerMetrics {
    /// Counts a connection as active until the guard drops.
    pub fn open(&self) -> ConnectionGuard {
        self.accepted.inc();
        self.active.inc();
        ConnectionGuard(self.active.clone())
    }
}

pub(crate) struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
