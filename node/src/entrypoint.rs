//! The DNS entrypoint: record sets (A for IPv4, AAAA for IPv6) that hold exactly the public
//! addresses of the live, non-draining members. [`Reconciler`] decides, from the members and
//! a clock, when to write and when to read the record back (a hand edit or a lost write is
//! repaired); the daemon's driver carries out its actions with Route53 while this node is
//! the acting leader (a minority side of a partition is never acting, so it never writes).
//!
//! Rules: the full set is written (UPSERT, idempotent); never an empty set (the last node
//! stays); changes are debounced; failures back off exponentially, but a membership change
//! is tried once it settles (a drain does not wait out the back-off of an outage).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::ecs::Publisher;

/// One record set to keep: zone, name and TTL. Both its A and AAAA sets are kept (each only
/// once a member of that family exists).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RecordSpec {
    pub zone: String,
    pub name: String,
    pub ttl: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrypointSettings {
    pub records: Vec<RecordSpec>,
    pub timings: Timings,
    /// Route53's API region.
    pub region: Option<String>,
}

/// The leader's reconciliation report, replicated so `meshctl dns` shows it on every node.
pub const STATUS_KEY: &str = "dns/entrypoint";

/// The leader's report as the cluster state holds it.
pub fn report(state: &edgemesh_gossip::state::ClusterState) -> Option<Vec<RecordReport>> {
    state
        .leader_entries(STATUS_KEY)
        .find(|(k, _)| *k == STATUS_KEY)
        .and_then(|(_, b)| crate::ecs::model::decode(b))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordReport {
    pub zone: String,
    pub name: String,
    /// "A" or "AAAA".
    pub rtype: String,
    pub ttl: u32,
    pub leader: String,
    pub status: RecordStatus,
}

/// Timings, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// A membership change is written once the view has been stable this long.
    pub debounce_ms: u64,
    /// The record is read back this often and rewritten if it differs.
    pub check_ms: u64,
    /// First retry after a failed call; doubles up to `backoff_max_ms`.
    pub backoff_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            debounce_ms: 1_000,
            check_ms: 60_000,
            backoff_ms: 1_000,
            backoff_max_ms: 60_000,
        }
    }
}

/// What the driver should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write the record to hold exactly these addresses, then report with [`Reconciler::wrote`].
    Write(BTreeSet<IpAddr>),
    /// Read the record, then report with [`Reconciler::read`].
    Read,
}

/// One record set's reconciliation, for `meshctl dns` and metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordStatus {
    /// The addresses of live, non-draining members of this family.
    pub desired: BTreeSet<IpAddr>,
    /// What the record holds, as last written or read.
    pub current: Option<BTreeSet<IpAddr>>,
    pub writes_ok: u64,
    pub writes_failed: u64,
    /// Unix ms.
    pub last_write_ms: Option<u64>,
    pub last_error: Option<String>,
    /// Failed calls in a row.
    pub failures: u32,
}

#[derive(Debug, Clone)]
pub struct Reconciler {
    timings: Timings,
    status: RecordStatus,
    /// When `desired` last changed.
    changed_at: u64,
    next_read: u64,
    retry_at: u64,
    in_flight: bool,
}

impl Reconciler {
    pub fn new(timings: Timings) -> Reconciler {
        Reconciler {
            timings,
            status: RecordStatus::default(),
            changed_at: 0,
            next_read: 0,
            retry_at: 0,
            in_flight: false,
        }
    }

    pub fn status(&self) -> &RecordStatus {
        &self.status
    }

    /// The addresses the record should hold now (this family's, live and not draining).
    ///
    /// A change is worth one prompt attempt even while failures back off: the wait grew
    /// while Route53 failed, perhaps only periodic reads during an outage that is over, and
    /// a draining member must not wait out a minute of back-off to leave the record. The
    /// attempt comes once the view has settled; if it fails too, the back-off goes on
    /// doubling from where it was, so a flapping view cannot turn into a stream of calls.
    pub fn members(&mut self, now: u64, desired: BTreeSet<IpAddr>) {
        if desired != self.status.desired {
            self.status.desired = desired;
            self.changed_at = now;
            self.retry_at = self.retry_at.min(now + self.timings.debounce_ms);
        }
    }

    /// The next action, if any. `acting`: this node is the acting leader now.
    pub fn poll(&mut self, now: u64, acting: bool) -> Option<Action> {
        if !acting || self.in_flight || now < self.retry_at {
            return None;
        }
        // Never an empty set: with no member to name, the record keeps what it has.
        if self.status.desired.is_empty() {
            return None;
        }
        let settled = now >= self.changed_at + self.timings.debounce_ms;
        // Unknown (a new leader) or different: read first when unknown, so a record that is
        // already right is not rewritten by every leader change.
        let action = match &self.status.current {
            None => Some(Action::Read),
            Some(c) if *c != self.status.desired && settled => {
                Some(Action::Write(self.status.desired.clone()))
            }
            Some(_) if now >= self.next_read => Some(Action::Read),
            Some(_) => None,
        };
        self.in_flight = action.is_some();
        action
    }

    /// The outcome of [`Action::Write`] of `set`.
    pub fn wrote(&mut self, now: u64, set: BTreeSet<IpAddr>, result: Result<(), String>) {
        self.in_flight = false;
        match result {
            Ok(()) => {
                self.status.current = Some(set);
                self.status.writes_ok += 1;
                self.status.last_write_ms = Some(now);
                self.status.last_error = None;
                self.status.failures = 0;
                self.next_read = now + self.timings.check_ms;
            }
            Err(e) => {
                self.status.writes_failed += 1;
                self.failed(now, e);
            }
        }
    }

    /// The outcome of [`Action::Read`]: what the record holds (empty: no record).
    pub fn read(&mut self, now: u64, result: Result<BTreeSet<IpAddr>, String>) {
        self.in_flight = false;
        match result {
            Ok(set) => {
                self.status.current = Some(set);
                self.status.failures = 0;
                self.next_read = now + self.timings.check_ms;
            }
            Err(e) => self.failed(now, e),
        }
    }

    /// This node stopped leading: what the record holds is unknown to it from now on.
    pub fn forget(&mut self) {
        self.status.current = None;
        self.in_flight = false;
    }

    fn failed(&mut self, now: u64, e: String) {
        self.status.failures += 1;
        self.status.last_error = Some(e);
        let wait = self
            .timings
            .backoff_ms
            .saturating_mul(1 << (self.status.failures - 1).min(16))
            .min(self.timings.backoff_max_ms);
        self.retry_at = now + wait;
    }
}

/// What the driver needs from the daemon.
pub trait EntrypointHost: Publisher {
    fn entrypoint(&self) -> impl std::future::Future<Output = Option<EntrypointSettings>> + Send;
    /// Public addresses of the live members, this node included, that are not draining.
    fn serving_addresses(&self) -> BTreeSet<IpAddr>;
    /// This node's id in the mesh.
    fn node_id(&self) -> String;
    /// A write's outcome (metrics).
    fn dns_written(&self, ok: bool);
}

type Key = (RecordSpec, bool);

/// Keeps the entrypoint records while this node is the acting leader, forever.
pub async fn run<H: EntrypointHost + 'static>(host: Arc<H>) {
    use aws_sdk_route53::types::{ChangeAction, RrType};
    let mut reconcilers: BTreeMap<Key, Reconciler> = BTreeMap::new();
    let mut clients: BTreeMap<(String, Option<String>), Arc<crate::route53::Route53>> =
        BTreeMap::new();
    let mut published: Option<Vec<RecordReport>> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(settings) = host.entrypoint().await else {
            reconcilers.clear();
            continue;
        };
        let wanted: BTreeSet<Key> = settings
            .records
            .iter()
            .flat_map(|r| [(r.clone(), false), (r.clone(), true)])
            .collect();
        reconcilers.retain(|k, _| wanted.contains(k));
        for k in wanted {
            reconcilers
                .entry(k)
                .or_insert_with(|| Reconciler::new(settings.timings));
        }
        let acting = host.acting();
        let addresses = host.serving_addresses();
        for ((spec, v6), r) in reconcilers.iter_mut() {
            let now = crate::unix_ms();
            r.members(
                now,
                addresses
                    .iter()
                    .filter(|a| a.is_ipv6() == *v6)
                    .copied()
                    .collect(),
            );
            if !acting {
                r.forget();
                continue;
            }
            let Some(action) = r.poll(now, acting) else {
                continue;
            };
            let key = (spec.zone.clone(), settings.region.clone());
            let client = match clients.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let c = Arc::new(
                        crate::route53::Route53::new(&spec.zone, settings.region.as_deref()).await,
                    );
                    clients.insert(key, c.clone());
                    c
                }
            };
            let rtype = if *v6 { RrType::Aaaa } else { RrType::A };
            match action {
                Action::Read => {
                    let result = client.values(&spec.name, rtype).await.map(|v| {
                        v.iter()
                            .filter_map(|a| a.parse().ok())
                            .collect::<BTreeSet<IpAddr>>()
                    });
                    if let Err(e) = &result {
                        warn!(record = %spec.name, error = %e, "entrypoint record not read");
                    }
                    r.read(crate::unix_ms(), result);
                }
                Action::Write(set) => {
                    let values: Vec<String> = set.iter().map(IpAddr::to_string).collect();
                    let result = client
                        .change(
                            ChangeAction::Upsert,
                            &spec.name,
                            rtype,
                            i64::from(spec.ttl),
                            &values,
                        )
                        .await;
                    host.dns_written(result.is_ok());
                    match &result {
                        Ok(()) => {
                            info!(record = %spec.name, addresses = ?values, "entrypoint record written")
                        }
                        Err(e) => {
                            warn!(record = %spec.name, error = %e, "entrypoint record not written; the last one stays")
                        }
                    }
                    r.wrote(crate::unix_ms(), set, result);
                }
            }
        }
        if acting {
            let me = host.node_id();
            let report: Vec<RecordReport> = reconcilers
                .iter()
                .filter(|(_, r)| !r.status().desired.is_empty() || r.status().current.is_some())
                .map(|((spec, v6), r)| RecordReport {
                    zone: spec.zone.clone(),
                    name: spec.name.clone(),
                    rtype: if *v6 { "AAAA" } else { "A" }.into(),
                    ttl: spec.ttl,
                    leader: me.clone(),
                    status: r.status().clone(),
                })
                .collect();
            if published.as_ref() != Some(&report)
                && host
                    .publish(STATUS_KEY, crate::ecs::model::encode(&report))
                    .is_ok()
            {
                published = Some(report);
            }
        } else {
            published = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(v: &[&str]) -> BTreeSet<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn quick() -> Timings {
        Timings {
            debounce_ms: 1_000,
            check_ms: 10_000,
            backoff_ms: 500,
            backoff_max_ms: 4_000,
        }
    }

    #[test]
    fn reads_first_then_writes_the_settled_set_then_checks_periodically() {
        let mut r = Reconciler::new(quick());
        r.members(0, ips(&["10.0.0.1", "10.0.0.2"]));
        assert_eq!(r.poll(0, false), None, "only the acting leader acts");
        assert_eq!(r.poll(0, true), Some(Action::Read));
        assert_eq!(r.poll(0, true), None, "one call at a time");
        r.read(100, Ok(ips(&["10.0.0.1"])));
        // Different, but the view changed 100 ms ago: wait for the debounce.
        assert_eq!(r.poll(500, true), None);
        assert_eq!(
            r.poll(1_000, true),
            Some(Action::Write(ips(&["10.0.0.1", "10.0.0.2"])))
        );
        r.wrote(1_200, ips(&["10.0.0.1", "10.0.0.2"]), Ok(()));
        assert_eq!(r.poll(5_000, true), None, "in sync");
        assert_eq!(r.poll(11_200, true), Some(Action::Read), "periodic check");
        // Somebody edited it by hand: repaired at once (the view has long been stable).
        r.read(11_300, Ok(ips(&["192.0.2.9"])));
        assert_eq!(
            r.poll(11_300, true),
            Some(Action::Write(ips(&["10.0.0.1", "10.0.0.2"])))
        );
        r.wrote(11_400, ips(&["10.0.0.1", "10.0.0.2"]), Ok(()));
        assert_eq!(r.status().writes_ok, 2);
    }

    #[test]
    fn flapping_membership_is_written_once_it_settles() {
        let mut r = Reconciler::new(quick());
        r.members(0, ips(&["10.0.0.1", "10.0.0.2"]));
        assert_eq!(r.poll(0, true), Some(Action::Read));
        r.read(0, Ok(ips(&["10.0.0.1", "10.0.0.2"])));
        let mut writes = 0;
        for t in (0..3_000).step_by(100) {
            // A member flaps every 300 ms for 3 s.
            let view = if (t / 300) % 2 == 0 {
                ips(&["10.0.0.1"])
            } else {
                ips(&["10.0.0.1", "10.0.0.2"])
            };
            r.members(t, view);
            if let Some(Action::Write(s)) = r.poll(t, true) {
                writes += 1;
                r.wrote(t, s, Ok(()));
            }
        }
        assert_eq!(writes, 0, "nothing written while the view flaps");
        r.members(3_000, ips(&["10.0.0.1"]));
        assert_eq!(r.poll(3_999, true), None);
        assert_eq!(r.poll(4_000, true), Some(Action::Write(ips(&["10.0.0.1"]))));
    }

    #[test]
    fn never_writes_an_empty_set_and_keeps_the_last_on_errors() {
        let mut r = Reconciler::new(quick());
        r.members(0, ips(&["10.0.0.1"]));
        assert_eq!(r.poll(0, true), Some(Action::Read));
        r.read(0, Ok(ips(&["10.0.0.1"])));
        // Every member draining or gone: the record is left as it is, not emptied.
        r.members(100, BTreeSet::new());
        for t in (100..100_000).step_by(500) {
            assert_eq!(r.poll(t, true), None);
        }
        // Route53 failing: back-off 0.5, 1, 2, 4, 4 s; the status names the error.
        r.members(100_000, ips(&["10.0.0.1", "10.0.0.3"]));
        let mut t = 101_000;
        let mut gaps = Vec::new();
        let mut last = None;
        while gaps.len() < 5 {
            if let Some(Action::Write(s)) = r.poll(t, true) {
                if let Some(l) = last {
                    gaps.push(t - l);
                }
                last = Some(t);
                r.wrote(t, s, Err("Throttling: Rate exceeded".into()));
            }
            t += 50;
        }
        assert_eq!(gaps, vec![500, 1_000, 2_000, 4_000, 4_000]);
        let s = r.status();
        assert_eq!(s.current, Some(ips(&["10.0.0.1"])), "last good kept");
        assert_eq!(s.last_error.as_deref(), Some("Throttling: Rate exceeded"));
        assert_eq!(s.writes_failed, 6);
        // Recovery clears the error.
        let Some(Action::Write(s)) = r.poll(t + 4_000, true) else {
            panic!("no retry")
        };
        r.wrote(t + 4_000, s, Ok(()));
        assert_eq!(r.status().failures, 0);
        assert_eq!(r.status().last_error, None);
    }

    #[test]
    fn a_membership_change_is_tried_once_settled_without_waiting_out_the_back_off() {
        let mut r = Reconciler::new(Timings {
            backoff_max_ms: 60_000,
            ..quick()
        });
        r.members(0, ips(&["10.0.0.1", "10.0.0.2"]));
        assert_eq!(r.poll(0, true), Some(Action::Read));
        r.read(0, Ok(ips(&["10.0.0.1", "10.0.0.2"])));
        // Failing periodic reads until the back-off reaches its 60 s cap (0.5 s doubling:
        // the eighth failure waits 60 s).
        let mut t = 0;
        let mut failed_at = 0;
        while r.status().failures < 8 {
            if let Some(a) = r.poll(t, true) {
                assert_eq!(a, Action::Read);
                r.read(t, Err("ThrottlingException".into()));
                failed_at = t;
            }
            t += 100;
        }
        assert_eq!(r.retry_at, failed_at + 60_000, "backing off for 60 s");
        let t = failed_at + 5_000;
        // Route53 is back and a member drains: written after the debounce, not the back-off.
        r.members(t, ips(&["10.0.0.1"]));
        assert_eq!(r.poll(t + 999, true), None, "debounced");
        assert_eq!(
            r.poll(t + 1_000, true),
            Some(Action::Write(ips(&["10.0.0.1"])))
        );
        // Had it failed, the back-off goes on from the cap rather than from the start.
        r.wrote(
            t + 1_000,
            ips(&["10.0.0.1"]),
            Err("ThrottlingException".into()),
        );
        assert_eq!(r.retry_at, t + 1_000 + 60_000);
        // A change never pushes a retry later than it was.
        r.members(t + 2_000, ips(&["10.0.0.1", "10.0.0.3"]));
        assert_eq!(r.retry_at, t + 3_000);
        r.members(t + 2_100, ips(&["10.0.0.1"]));
        assert_eq!(r.retry_at, t + 3_000, "the earlier retry stays");
    }

    #[test]
    fn a_new_leader_reads_before_it_writes() {
        let mut r = Reconciler::new(quick());
        r.members(0, ips(&["10.0.0.1", "10.0.0.2"]));
        assert_eq!(r.poll(5_000, true), Some(Action::Read));
        r.read(5_000, Ok(ips(&["10.0.0.1", "10.0.0.2"])));
        assert_eq!(r.poll(5_000, true), None, "already right: not rewritten");
        r.forget();
        assert_eq!(r.poll(6_000, false), None);
        assert_eq!(r.poll(6_000, true), Some(Action::Read));
    }
}
