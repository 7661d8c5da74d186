//! Graceful drain as a state machine over a clock (milliseconds), driven by the daemon:
//!
//! 1. **Draining**: the node marks itself draining in the cluster state ([`Step::Announce`]);
//!    the leader drops it from the DNS entrypoint. It keeps serving.
//! 2. Once the entrypoint no longer names it, it keeps serving for the record's TTL plus a
//!    grace period (resolvers and clients holding the old answer), the **linger**.
//! 3. **Closing** (only when the node is to exit): stop accepting, finish in-flight requests,
//!    let TCP streams run until the deadline ([`Step::StopAccepting`]).
//! 4. Leave the mesh and exit ([`Step::Leave`], [`Step::Exit`]).
//!
//! Everything fits in `budget` from the exit request (ECS `stopTimeout`): lingering ends by
//! `budget - closing share` even if the DNS never changed (no leader, Route53 down), and the
//! closing share ends `leave_ms` before the budget so leaving is announced in time.
//! A drain without exit (`meshctl drain`) stops after the linger, out of DNS and still
//! serving, until `meshctl drain --undo` or SIGTERM.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainConfig {
    /// From the exit request to the exit.
    pub budget_ms: u64,
    /// Serving after the node left DNS: the record's TTL plus a grace period.
    pub linger_ms: u64,
    /// Kept at the end to leave the mesh.
    pub leave_ms: u64,
}

impl DrainConfig {
    /// The part of the budget for finishing in-flight work: a third, at most 10 s.
    fn closing_ms(&self) -> u64 {
        (self.budget_ms / 3).min(10_000)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Mark this node draining in the cluster state.
    Announce,
    /// Mark it serving again.
    Unannounce,
    /// Stop accepting; finish in-flight requests and streams by this moment (ms).
    StopAccepting {
        finish_by: u64,
    },
    /// Tell the mesh we leave.
    Leave,
    Exit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Serving,
    /// Announced; waiting to be out of DNS, then lingering.
    Draining,
    /// Out of DNS and lingered; serving whatever still arrives (drain without exit).
    Drained,
    /// Not accepting; finishing in-flight work.
    Closing,
    Done,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainStatus {
    pub phase: Phase,
    /// Unix ms of each milestone.
    pub since: Option<u64>,
    pub out_of_dns_at: Option<u64>,
    pub exit_requested_at: Option<u64>,
    pub closing_at: Option<u64>,
    /// The exit deadline (exit requested + budget).
    pub deadline: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Drain {
    cfg: DrainConfig,
    status: DrainStatus,
}

impl Drain {
    pub fn new(cfg: DrainConfig) -> Drain {
        Drain {
            cfg,
            status: DrainStatus {
                phase: Phase::Serving,
                since: None,
                out_of_dns_at: None,
                exit_requested_at: None,
                closing_at: None,
                deadline: None,
            },
        }
    }

    pub fn status(&self) -> &DrainStatus {
        &self.status
    }

    pub fn phase(&self) -> Phase {
        self.status.phase
    }

    /// Starts draining (`exit`: then stop and exit, SIGTERM; else stay drained).
    pub fn request(&mut self, now: u64, exit: bool) -> Vec<Step> {
        let mut steps = Vec::new();
        if self.status.phase == Phase::Serving {
            self.status.phase = Phase::Draining;
            self.status.since = Some(now);
            steps.push(Step::Announce);
        }
        if exit && self.status.exit_requested_at.is_none() {
            self.status.exit_requested_at = Some(now);
            self.status.deadline = Some(now + self.cfg.budget_ms);
        }
        steps
    }

    /// Back to service, unless the node is already stopping.
    pub fn undo(&mut self) -> Result<Vec<Step>, &'static str> {
        match self.status.phase {
            Phase::Serving => Ok(Vec::new()),
            Phase::Draining | Phase::Drained if self.status.exit_requested_at.is_none() => {
                self.status = Drain::new(self.cfg).status;
                Ok(vec![Step::Unannounce])
            }
            _ => Err("the node is exiting; it cannot return to service"),
        }
    }

    /// Advances. `out_of_dns`: the entrypoint no longer names this node (true when there is
    /// no entrypoint); `idle`: no request or stream in flight.
    pub fn tick(&mut self, now: u64, out_of_dns: bool, idle: bool) -> Vec<Step> {
        let s = &mut self.status;
        if matches!(s.phase, Phase::Draining | Phase::Drained)
            && out_of_dns
            && s.out_of_dns_at.is_none()
        {
            s.out_of_dns_at = Some(now);
        }
        let lingered = s
            .out_of_dns_at
            .is_some_and(|t| now >= t + self.cfg.linger_ms);
        match s.phase {
            Phase::Draining if lingered => {
                s.phase = Phase::Drained;
                self.tick(now, out_of_dns, idle)
            }
            Phase::Draining | Phase::Drained => {
                let Some(deadline) = s.deadline else {
                    return Vec::new();
                };
                let must_close = now + self.cfg.closing_ms() >= deadline;
                if s.phase == Phase::Drained || must_close {
                    s.phase = Phase::Closing;
                    s.closing_at = Some(now);
                    return vec![Step::StopAccepting {
                        finish_by: deadline.saturating_sub(self.cfg.leave_ms).max(now),
                    }];
                }
                Vec::new()
            }
            Phase::Closing => {
                let deadline = s.deadline.unwrap_or(now);
                if idle || now + self.cfg.leave_ms >= deadline {
                    s.phase = Phase::Done;
                    return vec![Step::Leave, Step::Exit];
                }
                Vec::new()
            }
            Phase::Serving | Phase::Done => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: DrainConfig = DrainConfig {
        budget_ms: 30_000,
        linger_ms: 7_000,
        leave_ms: 1_000,
    };

    /// Runs `d` in 100 ms steps from `from` to `to`, with `out_of_dns(t)` and `idle(t)`;
    /// returns each step with its time.
    fn run(
        d: &mut Drain,
        from: u64,
        to: u64,
        out_of_dns: impl Fn(u64) -> bool,
        idle: impl Fn(u64) -> bool,
    ) -> Vec<(u64, Step)> {
        let mut out = Vec::new();
        let mut t = from;
        while t <= to {
            for s in d.tick(t, out_of_dns(t), idle(t)) {
                out.push((t, s));
            }
            t += 100;
        }
        out
    }

    #[test]
    fn sigterm_leaves_dns_lingers_then_closes_and_exits_within_the_budget() {
        let mut d = Drain::new(CFG);
        assert_eq!(d.request(0, true), vec![Step::Announce]);
        // The leader drops us from DNS after 2.5 s; in-flight work ends 1 s after closing.
        let steps = run(&mut d, 0, 40_000, |t| t >= 2_500, |t| t >= 10_500);
        assert_eq!(
            steps,
            vec![
                (9_500, Step::StopAccepting { finish_by: 29_000 }),
                (10_500, Step::Leave),
                (10_500, Step::Exit),
            ]
        );
        assert_eq!(d.status().out_of_dns_at, Some(2_500));
        assert_eq!(d.phase(), Phase::Done);
    }

    #[test]
    fn without_a_dns_change_the_budget_still_holds() {
        let mut d = Drain::new(CFG);
        d.request(1_000, true);
        // No leader to update DNS, and a stream that never ends.
        let steps = run(&mut d, 1_000, 60_000, |_| false, |_| false);
        assert_eq!(
            steps,
            vec![
                // Closing share of a 30 s budget: 10 s.
                (21_000, Step::StopAccepting { finish_by: 30_000 }),
                (30_000, Step::Leave),
                (30_000, Step::Exit),
            ]
        );
        let last = steps.last().unwrap().0;
        assert!(last <= 1_000 + CFG.budget_ms, "exit at {last}");
    }

    #[test]
    fn drain_without_exit_stays_drained_until_undo_or_sigterm() {
        let mut d = Drain::new(CFG);
        assert_eq!(d.request(0, false), vec![Step::Announce]);
        assert!(run(&mut d, 0, 60_000, |t| t >= 1_000, |_| true).is_empty());
        assert_eq!(d.phase(), Phase::Drained);
        assert_eq!(d.undo(), Ok(vec![Step::Unannounce]));
        assert_eq!(d.phase(), Phase::Serving);
        assert_eq!(d.status().out_of_dns_at, None);
        // Drained again, then SIGTERM: already out of DNS and lingered, so it closes at once.
        d.request(100_000, false);
        run(&mut d, 100_000, 110_000, |_| true, |_| false);
        assert_eq!(d.phase(), Phase::Drained);
        assert!(d.request(110_000, true).is_empty(), "already announced");
        assert_eq!(
            d.tick(110_100, true, false),
            vec![Step::StopAccepting { finish_by: 139_000 }]
        );
        assert_eq!(
            d.undo(),
            Err("the node is exiting; it cannot return to service")
        );
        assert_eq!(d.tick(110_200, true, true), vec![Step::Leave, Step::Exit]);
    }

    #[test]
    fn a_short_budget_shrinks_every_phase() {
        let cfg = DrainConfig {
            budget_ms: 1_000,
            linger_ms: 7_000,
            leave_ms: 100,
        };
        let mut d = Drain::new(cfg);
        d.request(0, true);
        let steps = run(&mut d, 0, 5_000, |_| true, |_| false);
        assert_eq!(
            steps,
            vec![
                (700, Step::StopAccepting { finish_by: 900 }),
                (900, Step::Leave),
                (900, Step::Exit),
            ]
        );
    }
}
