//! Leader election: Raft's terms and votes without a log, plus a quorum lease that decides
//! when a leader may *act* (issue certificates, write DNS).
//!
//! Sans-IO: [`Election::tick`] and [`Election::handle`] take the time and return messages to
//! send; the driver carries them over the encrypted gossip transport.
//!
//! Safety argument (checked by the simulation tests):
//! - A voter grants a vote only when it has not heard from a leader of its term for
//!   `election_timeout_min` ("stickiness").
//! - A leader acts only while a majority of voters acknowledged heartbeats *sent* less than
//!   `lease` ago, with `lease < election_timeout_min`, and not before `settle` has passed since
//!   it won.
//! - Two majorities share a voter. If a new leader is acting, that voter granted its vote at
//!   least `election_timeout_min` after the last heartbeat it answered from the old leader, so
//!   the old leader's lease through that voter has expired; acks it sends later carry the new
//!   term and make the old leader step down. A minority never gathers a majority of acks, so it
//!   never acts.
//!
//! Voters are a fixed set given by the driver ([`Election::set_voters`]); how that set follows
//! hosts that come and go is the driver's job (see the crate docs).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::state::NodeId;

#[derive(Debug, Clone)]
pub struct ElectionConfig {
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time in `[min, 2 * min)` stands.
    pub election_timeout_min_ms: u64,
    /// How long an ack keeps counting towards the quorum; must be below the election timeout.
    pub lease_ms: u64,
    /// Delay between winning and acting, so a leader with a flaky majority does not act.
    pub settle_ms: u64,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            heartbeat_ms: 200,
            election_timeout_min_ms: 1_500,
            lease_ms: 1_000,
            settle_ms: 500,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElectionMsg {
    /// "Would you vote for me in `term`?" Changes nothing on the receiver (Raft's PreVote):
    /// a node cut off for a while cannot raise its term and depose a healthy leader on return.
    PreVote {
        term: u64,
    },
    PreVoteReply {
        term: u64,
        granted: bool,
    },
    RequestVote {
        term: u64,
    },
    Vote {
        term: u64,
        granted: bool,
    },
    Heartbeat {
        term: u64,
        sent_at: u64,
    },
    /// Answers a heartbeat; echoes its `sent_at` so the leader dates the ack by its own clock.
    Ack {
        term: u64,
        sent_at: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Follower,
    Candidate,
    Leader,
}

#[derive(Debug)]
pub struct Election {
    me: NodeId,
    cfg: ElectionConfig,
    voters: BTreeSet<NodeId>,
    term: u64,
    role: Role,
    voted_for: Option<NodeId>,
    leader: Option<NodeId>,
    /// When we last heard from the leader of our term (followers), for stickiness.
    heard_leader_at: Option<u64>,
    /// When to stand next (followers, candidates).
    deadline: u64,
    votes: BTreeSet<NodeId>,
    /// Pre-votes gathered for `term + 1` while not yet a candidate.
    prevotes: Option<BTreeSet<NodeId>>,
    /// Leader: per voter, the send time of the latest heartbeat it acknowledged.
    acks: BTreeMap<NodeId, u64>,
    won_at: u64,
    next_heartbeat: u64,
    /// Random source for election timeouts (xorshift; seeded from the node id by default).
    rng: u64,
}

pub type Outbox = Vec<(NodeId, ElectionMsg)>;

impl Election {
    pub fn new(me: impl Into<NodeId>, cfg: ElectionConfig, now: u64) -> Election {
        let me = me.into();
        let seed = me.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        let mut e = Election {
            voters: BTreeSet::from([me.clone()]),
            me,
            cfg,
            term: 0,
            role: Role::Follower,
            voted_for: None,
            leader: None,
            heard_leader_at: None,
            deadline: 0,
            votes: BTreeSet::new(),
            prevotes: None,
            acks: BTreeMap::new(),
            won_at: 0,
            next_heartbeat: 0,
            rng: seed | 1,
        };
        e.reset_deadline(now);
        e
    }

    /// Reseeds the election timer's randomness (simulations use one seed per run).
    pub fn seed(&mut self, seed: u64, now: u64) {
        self.rng = seed | 1;
        self.reset_deadline(now);
    }

    pub fn set_voters(&mut self, voters: BTreeSet<NodeId>) {
        self.voters = voters;
        self.acks.retain(|k, _| self.voters.contains(k));
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn leader(&self) -> Option<&NodeId> {
        self.leader.as_ref()
    }

    fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn reset_deadline(&mut self, now: u64) {
        let min = self.cfg.election_timeout_min_ms;
        self.deadline = now + min + self.random() % min.max(1);
    }

    /// The term this node may act for as leader now, if any.
    pub fn acting(&self, now: u64) -> Option<u64> {
        if self.role != Role::Leader || now < self.won_at + self.cfg.settle_ms {
            return None;
        }
        let fresh = self
            .acks
            .iter()
            .filter(|(id, sent)| **id != self.me && now < **sent + self.cfg.lease_ms)
            .count();
        let me = usize::from(self.voters.contains(&self.me));
        (fresh + me >= self.majority()).then_some(self.term)
    }

    fn others(&self) -> impl Iterator<Item = &NodeId> {
        self.voters.iter().filter(move |v| **v != self.me)
    }

    fn step_down(&mut self, term: u64, now: u64) {
        self.prevotes = None;
        if term > self.term {
            self.term = term;
            self.voted_for = None;
            self.leader = None;
            self.heard_leader_at = None;
        }
        if self.role != Role::Follower {
            self.role = Role::Follower;
            self.acks.clear();
            self.reset_deadline(now);
        }
    }

    /// Advances timers. Call at least every `heartbeat_ms / 2`.
    pub fn tick(&mut self, now: u64) -> Outbox {
        match self.role {
            Role::Leader if now >= self.next_heartbeat => {
                self.next_heartbeat = now + self.cfg.heartbeat_ms;
                let msg = ElectionMsg::Heartbeat {
                    term: self.term,
                    sent_at: now,
                };
                self.others().map(|v| (v.clone(), msg.clone())).collect()
            }
            Role::Follower | Role::Candidate
                if now >= self.deadline && self.voters.contains(&self.me) =>
            {
                self.reset_deadline(now);
                self.prevotes = Some(BTreeSet::from([self.me.clone()]));
                let mut out = Outbox::new();
                self.maybe_stand(now, &mut out);
                let msg = ElectionMsg::PreVote {
                    term: self.term + 1,
                };
                out.extend(self.others().map(|v| (v.clone(), msg.clone())));
                out
            }
            _ => Outbox::new(),
        }
    }

    /// With a majority of pre-votes, starts the real election for `term + 1`.
    fn maybe_stand(&mut self, now: u64, out: &mut Outbox) {
        if self
            .prevotes
            .as_ref()
            .is_none_or(|p| p.len() < self.majority())
        {
            return;
        }
        self.prevotes = None;
        self.term += 1;
        self.role = Role::Candidate;
        self.voted_for = Some(self.me.clone());
        self.leader = None;
        self.heard_leader_at = None;
        self.votes = BTreeSet::from([self.me.clone()]);
        self.reset_deadline(now);
        self.maybe_win(now, out);
        let msg = ElectionMsg::RequestVote { term: self.term };
        out.extend(self.others().map(|v| (v.clone(), msg.clone())));
    }

    /// Whether this node still follows a live leader (and so votes for nobody else).
    fn sticky(&self, now: u64) -> bool {
        self.role == Role::Leader
            || self
                .heard_leader_at
                .is_some_and(|t| now < t + self.cfg.election_timeout_min_ms)
    }

    fn maybe_win(&mut self, now: u64, out: &mut Outbox) {
        if self.role == Role::Candidate && self.votes.len() >= self.majority() {
            self.role = Role::Leader;
            self.leader = Some(self.me.clone());
            self.won_at = now;
            self.acks.clear();
            self.next_heartbeat = now + self.cfg.heartbeat_ms;
            let msg = ElectionMsg::Heartbeat {
                term: self.term,
                sent_at: now,
            };
            out.extend(self.others().map(|v| (v.clone(), msg.clone())));
        }
    }

    /// Handles a message from a peer. Messages from non-voters are ignored.
    pub fn handle(&mut self, from: &NodeId, msg: ElectionMsg, now: u64) -> Outbox {
        let mut out = Outbox::new();
        if !self.voters.contains(from) || *from == self.me {
            return out;
        }
        match msg {
            ElectionMsg::PreVote { term } => {
                let granted = term > self.term && !self.sticky(now);
                out.push((from.clone(), ElectionMsg::PreVoteReply { term, granted }));
            }
            ElectionMsg::PreVoteReply { term, granted } => {
                if granted && term == self.term + 1 {
                    if let Some(p) = self.prevotes.as_mut() {
                        p.insert(from.clone());
                    }
                    self.maybe_stand(now, &mut out);
                }
            }
            ElectionMsg::RequestVote { term } => {
                let sticky = self.sticky(now);
                if term > self.term && !sticky {
                    self.step_down(term, now);
                }
                let granted = term == self.term
                    && !sticky
                    && self.voted_for.as_ref().is_none_or(|v| v == from);
                if granted {
                    self.voted_for = Some(from.clone());
                    self.reset_deadline(now);
                }
                out.push((
                    from.clone(),
                    ElectionMsg::Vote {
                        term: self.term,
                        granted,
                    },
                ));
            }
            ElectionMsg::Vote { term, granted } => {
                if term > self.term {
                    self.step_down(term, now);
                } else if term == self.term && granted && self.role == Role::Candidate {
                    self.votes.insert(from.clone());
                    self.maybe_win(now, &mut out);
                }
            }
            ElectionMsg::Heartbeat { term, sent_at } => {
                if term >= self.term {
                    self.step_down(term, now);
                    self.leader = Some(from.clone());
                    self.heard_leader_at = Some(now);
                    self.reset_deadline(now);
                }
                out.push((
                    from.clone(),
                    ElectionMsg::Ack {
                        term: self.term,
                        sent_at,
                    },
                ));
            }
            ElectionMsg::Ack { term, sent_at } => {
                if term > self.term {
                    self.step_down(term, now);
                } else if term == self.term && self.role == Role::Leader {
                    let e = self.acks.entry(from.clone()).or_insert(0);
                    *e = (*e).max(sent_at);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
