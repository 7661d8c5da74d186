//! The DNS entrypoint: record sets (A for IPv4, AAAA for IPv6) that hold exactly the public
//! addresses of the live, non-draining members. [`Reconciler`] decides, from the members and
//! a clock, when to write and when to read the record back (a hand edit or a lost write is
//! repaired); the daemon's driver carries out its actions with Route53 while this node is
//! the acting leader (a minority side of a partition is never acting, so it never writes).
//!
//! Rules: the full set is written (UPSERT, idempotent); never an empty set (the last node
//! stays); changes are debounced; failures back off exponentially.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::Serialize;

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
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
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
    pub fn members(&mut self, now: u64, desired: BTreeSet<IpAddr>) {
        if desired != self.status.desired {
            self.status.desired = desired;
            self.changed_at = now;
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
