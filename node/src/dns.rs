//! DNS discovery: pools that name an SRV record (`_web._tcp.internal`) or an A/AAAA name plus
//! a port, resolved with hickory-resolver and re-resolved when the answer's TTL runs out (as
//! HAProxy's `server-template` and the seeds' Route53/Cloud Map set-ups did). Every node
//! resolves for itself: DNS is already shared, so nothing goes through the cluster state.
//!
//! Keep the last good answer: a failed lookup (timeout, SERVFAIL, NXDOMAIN) leaves the pool as
//! it was, is logged, and retried with back-off.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use serde::Serialize;
use tracing::{info, warn};

use crate::ecs::poll::Backoff;

/// What a pool names in DNS.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum DnsTarget {
    /// `_service._proto.name`: targets and ports from the SRV records.
    Srv(String),
    /// An A/AAAA name; every address with this port.
    Host { name: String, port: u16 },
}

impl std::fmt::Display for DnsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsTarget::Srv(n) => write!(f, "SRV {n}"),
            DnsTarget::Host { name, port } => write!(f, "{name}:{port}"),
        }
    }
}

/// Answers are re-resolved within these bounds whatever their TTL says.
const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(300);

pub fn resolver(servers: &[SocketAddr]) -> anyhow::Result<TokioResolver> {
    let builder = if servers.is_empty() {
        TokioResolver::builder_tokio()?
    } else {
        let ns = servers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(ns),
            TokioRuntimeProvider::default(),
        )
    };
    let mut builder = builder;
    // A dead name server should surface within seconds, not the default 5 s x 2 per query.
    builder.options_mut().timeout = Duration::from_secs(2);
    builder.options_mut().attempts = 1;
    Ok(builder.build()?)
}

/// Resolves `target` once: the addresses and how long they are valid.
pub async fn resolve(
    r: &TokioResolver,
    target: &DnsTarget,
) -> Result<(Vec<SocketAddr>, Instant), String> {
    let mut out = Vec::new();
    let valid_until;
    match target {
        DnsTarget::Host { name, port } => {
            let ips = r
                .lookup_ip(name.as_str())
                .await
                .map_err(|e| e.to_string())?;
            valid_until = ips.valid_until();
            out.extend(ips.iter().map(|ip| SocketAddr::new(ip, *port)));
        }
        DnsTarget::Srv(name) => {
            let srv = r
                .srv_lookup(name.as_str())
                .await
                .map_err(|e| e.to_string())?;
            let mut until = srv.valid_until();
            for rec in srv.answers() {
                let RData::SRV(s) = &rec.data else { continue };
                let ips = r
                    .lookup_ip(s.target.clone())
                    .await
                    .map_err(|e| format!("SRV target {}: {e}", s.target))?;
                until = until.min(ips.valid_until());
                out.extend(ips.iter().map(|ip| SocketAddr::new(ip, s.port)));
            }
            valid_until = until;
        }
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err("no address in the answer".into());
    }
    Ok((out, valid_until))
}

#[derive(Debug, Clone, Serialize)]
pub struct DnsPoolStatus {
    pub target: String,
    pub endpoints: Vec<SocketAddr>,
    pub error: Option<String>,
    pub lookups_ok: u64,
    pub lookups_failed: u64,
}

struct Entry {
    target: DnsTarget,
    due: Instant,
    backoff: Backoff,
    status: DnsPoolStatus,
    resolved: bool,
}

/// The DNS-discovered pools of one node.
#[derive(Default)]
pub struct DnsPools {
    entries: BTreeMap<String, Entry>,
}

impl DnsPools {
    /// Resolves every pool whose answer is due; returns whether any pool's endpoints changed.
    /// `targets` is the configuration's current set (pools added or removed by a reload).
    pub async fn tick(&mut self, r: &TokioResolver, targets: &BTreeMap<String, DnsTarget>) -> bool {
        let now = Instant::now();
        self.entries
            .retain(|pool, e| targets.get(pool) == Some(&e.target));
        for (pool, target) in targets {
            self.entries.entry(pool.clone()).or_insert_with(|| Entry {
                target: target.clone(),
                due: now,
                backoff: Backoff::new(MIN_TTL),
                status: DnsPoolStatus {
                    target: target.to_string(),
                    endpoints: Vec::new(),
                    error: None,
                    lookups_ok: 0,
                    lookups_failed: 0,
                },
                resolved: false,
            });
        }
        let mut changed = false;
        for (pool, e) in &mut self.entries {
            if e.due > now {
                continue;
            }
            match resolve(r, &e.target).await {
                Ok((addrs, until)) => {
                    e.backoff.next(true, 0.0);
                    let ttl = until.saturating_duration_since(Instant::now());
                    e.due = Instant::now() + ttl.clamp(MIN_TTL, MAX_TTL);
                    e.status.lookups_ok += 1;
                    e.status.error = None;
                    if !e.resolved || addrs != e.status.endpoints {
                        info!(pool = %pool, target = %e.target, endpoints = ?addrs, "DNS pool resolved");
                        e.status.endpoints = addrs;
                        e.resolved = true;
                        changed = true;
                    }
                }
                Err(err) => {
                    let wait = e.backoff.next(false, fastrand::f64());
                    e.due = Instant::now() + wait;
                    e.status.lookups_failed += 1;
                    warn!(pool = %pool, target = %e.target, error = %err, retry_in_ms = wait.as_millis() as u64,
                        "DNS lookup failed; the pool keeps its last good endpoints");
                    e.status.error = Some(err);
                }
            }
        }
        changed
    }

    /// Pool -> endpoints, for the pools resolved at least once.
    pub fn endpoints(&self) -> BTreeMap<String, Vec<SocketAddr>> {
        self.entries
            .iter()
            .filter(|(_, e)| e.resolved)
            .map(|(p, e)| (p.clone(), e.status.endpoints.clone()))
            .collect()
    }

    pub fn status(&self) -> BTreeMap<String, DnsPoolStatus> {
        self.entries
            .iter()
            .map(|(p, e)| (p.clone(), e.status.clone()))
            .collect()
    }
}
