//! Deterministic simulation: seeded delays, loss, partitions, crashes and restarts, in
//! simulated milliseconds. Invariants are checked every step.

use std::collections::BTreeMap;

use super::*;
use crate::testing::Rng;

const STEP: u64 = 5;

struct Sim {
    now: u64,
    rng: Rng,
    ids: Vec<NodeId>,
    nodes: Vec<Option<Election>>,
    /// (deliver at, sequence) -> (to, from, message)
    queue: BTreeMap<(u64, u64), (usize, usize, ElectionMsg)>,
    seq: u64,
    loss_pct: u64,
    /// Partition group of each node; messages cross only within a group.
    group: Vec<u8>,
    /// When the groups last changed.
    split_at: u64,
    /// Pairs that cannot talk although in one group (partial connectivity), both directions.
    blocked: Vec<(usize, usize)>,
    /// The last (node, term) seen acting, to check that leadership only moves forward.
    last_acting: Option<(usize, u64)>,
    leader_changes: usize,
}

impl Sim {
    fn new(n: usize, seed: u64) -> Sim {
        let ids: Vec<NodeId> = (0..n).map(|i| format!("n{i:02}")).collect();
        let mut sim = Sim {
            now: 0,
            rng: Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            nodes: Vec::new(),
            ids,
            queue: BTreeMap::new(),
            seq: 0,
            loss_pct: 0,
            group: vec![0; n],
            split_at: 0,
            blocked: Vec::new(),
            last_acting: None,
            leader_changes: 0,
        };
        sim.nodes = (0..n).map(|i| Some(sim.fresh(i))).collect();
        sim
    }

    fn fresh(&mut self, i: usize) -> Election {
        let mut e = Election::new(self.ids[i].clone(), ElectionConfig::default(), self.now);
        e.set_voters(self.ids.iter().cloned().collect());
        e.seed(self.rng.next(), self.now);
        e
    }

    fn send(&mut self, from: usize, out: Outbox) {
        for (to, msg) in out {
            let to = self.ids.binary_search(&to).unwrap();
            let blocked = self.blocked.contains(&(from, to)) || self.blocked.contains(&(to, from));
            if self.group[from] != self.group[to] || blocked || self.rng.below(100) < self.loss_pct
            {
                continue;
            }
            let at = self.now + 1 + self.rng.below(10);
            self.seq += 1;
            self.queue.insert((at, self.seq), (to, from, msg));
        }
    }

    fn step(&mut self) {
        self.now += STEP;
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (to, from, msg) = entry.remove();
            // A partition that started while the message was in flight drops it too.
            if self.group[from] != self.group[to] {
                continue;
            }
            let from_id = self.ids[from].clone();
            if let Some(node) = self.nodes[to].as_mut() {
                let out = node.handle(&from_id, msg, self.now);
                self.send(to, out);
            }
        }
        for i in 0..self.nodes.len() {
            if let Some(node) = self.nodes[i].as_mut() {
                let out = node.tick(self.now);
                self.send(i, out);
            }
        }
        self.check();
    }

    fn acting(&self) -> Vec<(usize, u64)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| Some((i, n.as_ref()?.acting(self.now)?)))
            .collect()
    }

    fn check(&mut self) {
        let acting = self.acting();
        assert!(
            acting.len() <= 1,
            "t={}ms: {} acting leaders: {acting:?}",
            self.now,
            acting.len()
        );
        if let Some(&(node, term)) = acting.first() {
            // A minority acts at most until the lease it held when the split came expires.
            let peers = (0..self.nodes.len())
                .filter(|&j| self.group[j] == self.group[node])
                .count();
            let lease = ElectionConfig::default().lease_ms;
            assert!(
                peers > self.nodes.len() / 2 || self.now < self.split_at + lease,
                "t={}ms: n{node} acts in a group of {peers}, {}ms after the split",
                self.now,
                self.now - self.split_at
            );
            match self.last_acting {
                Some((n, t)) if (n, t) == (node, term) => {}
                Some((_, t)) => {
                    assert!(
                        term > t,
                        "t={}ms: acting term went from {t} to {term}",
                        self.now
                    );
                    self.leader_changes += 1;
                    self.last_acting = Some((node, term));
                }
                None => self.last_acting = Some((node, term)),
            }
        }
    }

    fn run(&mut self, ms: u64) {
        for _ in 0..ms / STEP {
            self.step();
        }
    }

    /// Runs until one node acts; returns it and the time it took. Panics after `limit` ms.
    fn until_acting(&mut self, limit: u64) -> (usize, u64) {
        let start = self.now;
        while self.now - start <= limit {
            self.step();
            if let Some(&(node, _)) = self.acting().first() {
                return (node, self.now - start);
            }
        }
        panic!("no acting leader within {limit}ms (t={}ms)", self.now);
    }

    fn split(&mut self, group: Vec<u8>) {
        self.group = group;
        self.split_at = self.now;
    }

    fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    fn restart(&mut self, i: usize) {
        self.nodes[i] = Some(self.fresh(i));
    }
}

/// Failure detection (election timeout, at most 2 x 1.5 s) + a vote round + settle (0.5 s) +
/// the first quorum of acks, with margin for split votes.
const FAILOVER_BOUND_MS: u64 = 6_000;

#[test]
fn five_nodes_elect_one_leader_and_fail_over() {
    let mut sim = Sim::new(5, 1);
    let (first, _) = sim.until_acting(FAILOVER_BOUND_MS);
    sim.run(10_000);
    assert_eq!(
        sim.acting(),
        vec![(first, sim.nodes[first].as_ref().unwrap().term())]
    );
    assert_eq!(sim.leader_changes, 0, "a healthy cluster keeps its leader");

    sim.crash(first);
    let (second, took) = sim.until_acting(FAILOVER_BOUND_MS);
    assert_ne!(second, first);
    assert!(
        took >= 1_500,
        "acted {took}ms after the crash: before any timeout could expire"
    );

    // The old leader comes back with no memory: it follows, it does not disrupt.
    sim.restart(first);
    sim.run(10_000);
    assert_eq!(sim.acting().first().map(|a| a.0), Some(second));
    assert_eq!(sim.leader_changes, 1);
    let follower = sim.nodes[first].as_ref().unwrap();
    assert_eq!(follower.leader(), Some(&sim.ids[second]));
}

#[test]
fn minority_side_of_a_partition_never_acts_and_heal_converges() {
    let mut sim = Sim::new(5, 7);
    let (leader, _) = sim.until_acting(FAILOVER_BOUND_MS);
    // Put the leader in the minority: {leader, one other} | {three others}.
    let other = (leader + 1) % 5;
    sim.split(
        (0..5)
            .map(|i| u8::from(i == leader || i == other))
            .collect(),
    );
    // Its lease runs out; the per-step check asserts nobody else acts meanwhile.
    sim.run(ElectionConfig::default().lease_ms);
    assert_eq!(sim.nodes[leader].as_ref().unwrap().acting(sim.now), None);
    let (new_leader, _) = sim.until_acting(FAILOVER_BOUND_MS);
    assert!(sim.group[new_leader] == 0, "the majority side elects");
    sim.run(60_000);
    assert_eq!(sim.acting().first().map(|a| a.0), Some(new_leader));
    sim.split(vec![0; 5]);
    sim.run(10_000);
    let acting = sim.acting();
    assert_eq!(acting.len(), 1);
    let term = acting[0].1;
    for n in sim.nodes.iter().flatten() {
        assert_eq!(
            n.term(),
            term,
            "every node is in the leader's term after healing"
        );
    }
}

#[test]
fn fifty_nodes_with_20_percent_loss() {
    let mut sim = Sim::new(50, 3);
    sim.loss_pct = 20;
    sim.until_acting(3 * FAILOVER_BOUND_MS);
    sim.run(30_000);
    assert!(
        !sim.acting().is_empty(),
        "a leader keeps acting at 20% loss"
    );
}

/// Random crashes, restarts, partitions and loss for five simulated minutes; the per-step
/// checks assert safety all along. Then the network heals and exactly one leader must act.
#[test]
fn fifty_node_chaos_keeps_at_most_one_acting_leader() {
    for seed in 1..=3 {
        let mut sim = Sim::new(50, seed);
        sim.until_acting(3 * FAILOVER_BOUND_MS);
        for _ in 0..60 {
            match sim.rng.below(5) {
                0 => {
                    // Half the crashes hit the acting leader, so leadership has to move.
                    let leader = sim.acting().first().map(|a| a.0);
                    let i = match leader {
                        Some(l) if sim.rng.below(2) == 0 => l,
                        _ => sim.rng.below(50) as usize,
                    };
                    sim.crash(i);
                }
                1 => {
                    let i = sim.rng.below(50) as usize;
                    if sim.nodes[i].is_none() {
                        sim.restart(i);
                    }
                }
                2 => {
                    // A random split; sometimes the majority is intact, sometimes nobody has one.
                    let cut = 10 + sim.rng.below(31) as usize;
                    let mut order: Vec<usize> = (0..50).collect();
                    for i in (1..50).rev() {
                        order.swap(i, sim.rng.below(i as u64 + 1) as usize);
                    }
                    let mut group = vec![0; 50];
                    for (k, &i) in order.iter().enumerate() {
                        group[i] = u8::from(k < cut);
                    }
                    sim.split(group);
                }
                3 => sim.split(vec![0; 50]),
                _ => sim.loss_pct = sim.rng.below(25),
            }
            sim.run(5_000);
        }
        sim.split(vec![0; 50]);
        sim.loss_pct = 0;
        for i in 0..50 {
            if sim.nodes[i].is_none() {
                sim.restart(i);
            }
        }
        sim.until_acting(3 * FAILOVER_BOUND_MS);
        sim.run(10_000);
        assert_eq!(sim.acting().len(), 1, "seed {seed}");
        assert!(
            sim.leader_changes > 0,
            "seed {seed}: the chaos never moved the leader"
        );
    }
}

#[test]
fn a_node_back_from_isolation_does_not_depose_a_healthy_leader() {
    let mut sim = Sim::new(5, 11);
    let (leader, _) = sim.until_acting(FAILOVER_BOUND_MS);
    let loner = (leader + 2) % 5;
    let term = sim.nodes[leader].as_ref().unwrap().term();
    sim.split((0..5).map(|i| u8::from(i == loner)).collect());
    sim.run(30_000);
    // Cut off, it kept asking for pre-votes but never raised its term.
    assert_eq!(sim.nodes[loner].as_ref().unwrap().term(), term);
    sim.split(vec![0; 5]);
    sim.run(10_000);
    assert_eq!(sim.acting(), vec![(leader, term)]);
    assert_eq!(sim.leader_changes, 0);
}

/// A node that cannot hear the leader but reaches everyone else keeps asking for votes; the
/// others still hear the leader and refuse, so the leader stays.
#[test]
fn a_node_cut_off_from_the_leader_only_cannot_take_over() {
    let mut sim = Sim::new(5, 5);
    let (leader, _) = sim.until_acting(FAILOVER_BOUND_MS);
    let term = sim.nodes[leader].as_ref().unwrap().term();
    let cut = (leader + 1) % 5;
    sim.blocked.push((leader, cut));
    sim.run(30_000);
    assert_eq!(sim.acting(), vec![(leader, term)]);
    assert_eq!(sim.leader_changes, 0);
}
