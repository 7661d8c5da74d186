//! ECS topology: the acting leader polls the ECS API and publishes each service's endpoints
//! into the cluster state (`ecs/svc/<service>`, in its term) with a status record
//! (`ecs/status`); every node projects them onto the pools that name a service.
//!
//! Keep the last good topology: a failed poll publishes nothing but the error, so every node
//! keeps routing by the last snapshot; a new leader resumes polling from scratch.

pub mod api;
pub mod model;
pub mod poll;
pub mod seeds;

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use self::api::EcsApi;
use self::model::{encode, ServiceTopology};
use self::poll::{Backoff, Poller};

pub const SERVICE_PREFIX: &str = "ecs/svc/";
pub const STATUS_KEY: &str = "ecs/status";

#[derive(Debug, Clone, PartialEq)]
pub struct EcsSettings {
    pub cluster: String,
    pub region: Option<String>,
    pub poll_interval: Duration,
    /// Routes from the task definitions' `edgemesh.*` docker labels.
    pub labels: bool,
    /// Address TCP listeners from `edgemesh.tcp.port` labels bind on.
    pub label_tcp_ip: std::net::IpAddr,
    /// Per attempt of an API call (the SDK retries throttling and 5xx up to 3 attempts).
    pub call_timeout: Duration,
}

/// What the poller needs from the mesh (or from a single node's own state).
pub trait Publisher: Send + Sync {
    /// Whether this node is the acting leader now.
    fn acting(&self) -> bool;
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Live keys under `prefix`.
    fn keys(&self, prefix: &str) -> Vec<String>;
    /// Writes as the acting leader; fails when this node is not (any more).
    fn publish(&self, key: &str, value: Vec<u8>) -> Result<(), String>;
    /// Deletes as the acting leader.
    fn delete(&self, key: &str) -> Result<(), String>;
}

/// The leader's last poll, replicated so `meshctl topology` shows it on every node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollStatus {
    pub leader: String,
    pub cluster: String,
    /// Unix ms of the last poll, and of the last good one.
    pub at_ms: u64,
    pub last_ok_ms: u64,
    pub error: Option<String>,
    pub services: u32,
    pub tasks: u32,
    pub endpoints: u32,
    pub calls_last_minute: u32,
    pub polls_ok: u64,
    pub polls_failed: u64,
    pub problems: Vec<String>,
    pub next_poll_ms: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct CallLabel {
    call: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone)]
pub struct EcsMetrics {
    calls: Family<CallLabel, Counter>,
    polls: Family<ResultLabel, Counter>,
    endpoints: Gauge,
    backoff_ms: Gauge,
}

impl EcsMetrics {
    pub fn new(registry: &mut Registry) -> EcsMetrics {
        let m = EcsMetrics {
            calls: Family::default(),
            polls: Family::default(),
            endpoints: Gauge::default(),
            backoff_ms: Gauge::default(),
        };
        registry.register(
            "edgemesh_ecs_api_calls",
            "AWS API calls made by this node's ECS poller, by call and result",
            m.calls.clone(),
        );
        registry.register(
            "edgemesh_ecs_polls",
            "ECS polls by this node, by result",
            m.polls.clone(),
        );
        registry.register(
            "edgemesh_ecs_endpoints",
            "Endpoints in this node's last good ECS poll",
            m.endpoints.clone(),
        );
        registry.register(
            "edgemesh_ecs_backoff_ms",
            "Delay before the next ECS poll, milliseconds (longer than the interval after errors)",
            m.backoff_ms.clone(),
        );
        m
    }
}

/// Polls while this node is the acting leader, forever. `me` names this node in the status.
pub async fn run<A: EcsApi>(
    api: A,
    settings: EcsSettings,
    me: String,
    publisher: std::sync::Arc<dyn Publisher>,
    metrics: EcsMetrics,
) {
    let mut poller = Poller::new(6);
    let mut backoff = Backoff::new(settings.poll_interval);
    let mut status = PollStatus {
        leader: me.clone(),
        cluster: settings.cluster.clone(),
        ..PollStatus::default()
    };
    let mut was_leader = false;
    loop {
        if !publisher.acting() {
            if was_leader {
                info!("no longer the leader: ECS polling stops here");
                // Start afresh if leadership comes back: the caches may be old by then.
                poller = Poller::new(6);
                was_leader = false;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        if !was_leader {
            info!(cluster = %settings.cluster, "acting leader: ECS polling starts");
            was_leader = true;
        }
        let result = poller.poll(&api).await;
        for (call, (ok, failed)) in &poller.calls {
            for (result, n) in [("ok", *ok), ("failed", *failed)] {
                let c = metrics.calls.get_or_create(&CallLabel { call, result });
                c.inc_by(n.saturating_sub(c.get()));
            }
        }
        status.at_ms = crate::unix_ms();
        status.calls_last_minute = poller.calls_last_minute() as u32;
        let delay = match result {
            Ok(r) => {
                metrics
                    .polls
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
                for p in &r.problems {
                    warn!(problem = %p, "ECS task without an endpoint");
                }
                let changed = publish_services(&*publisher, &r.services);
                if changed > 0 {
                    info!(
                        services = changed,
                        calls = r.calls,
                        "ECS topology changed; published"
                    );
                }
                status.last_ok_ms = status.at_ms;
                status.error = None;
                status.polls_ok += 1;
                status.services = r.services.len() as u32;
                status.tasks = r.services.values().map(|s| s.tasks).sum();
                status.endpoints = r.services.values().map(|s| s.endpoints.len() as u32).sum();
                status.problems = r.problems;
                metrics.endpoints.set(i64::from(status.endpoints));
                backoff.next(true, 0.0)
            }
            Err(e) => {
                metrics
                    .polls
                    .get_or_create(&ResultLabel { result: "failed" })
                    .inc();
                status.error = Some(e.to_string());
                status.polls_failed += 1;
                let d = backoff.next(false, fastrand::f64());
                warn!(call = e.call, kind = ?e.kind, error = %e.message, retry_in_ms = d.as_millis() as u64,
                    "ECS poll failed; every node keeps the last good topology");
                d
            }
        };
        metrics.backoff_ms.set(delay.as_millis() as i64);
        status.next_poll_ms = crate::unix_ms() + delay.as_millis() as u64;
        if let Err(e) = publisher.publish(STATUS_KEY, encode(&status)) {
            warn!(error = %e, "ECS status not published");
        }
        tokio::time::sleep(delay).await;
    }
}

/// Publishes the services whose topology differs from the state's; returns how many.
fn publish_services(p: &dyn Publisher, services: &BTreeMap<String, ServiceTopology>) -> usize {
    let mut changed = 0;
    for (name, topo) in services {
        let key = format!("{SERVICE_PREFIX}{name}");
        let value = encode(topo);
        if p.get(&key).as_deref() == Some(&value[..]) {
            continue;
        }
        match p.publish(&key, value) {
            Ok(()) => changed += 1,
            Err(e) => warn!(service = %name, error = %e, "ECS topology not published"),
        }
    }
    // A service whose tasks all stopped is no longer listed: publish it empty (it then
    // answers 503), rather than leaving its old endpoints.
    for key in p.keys(SERVICE_PREFIX) {
        let name = &key[SERVICE_PREFIX.len()..];
        if !services.contains_key(name) {
            let empty = encode(&ServiceTopology::default());
            if p.get(&key).as_deref() != Some(&empty[..]) && p.publish(&key, empty).is_ok() {
                changed += 1;
            }
        }
    }
    changed
}
