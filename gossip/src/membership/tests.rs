//! Seeded simulation of SWIM membership: virtual time, per-datagram delay and loss,
//! partitions, crashes and restarts. Everything is deterministic for a seed.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::testing::Rng;

enum Event {
    Datagram {
        to: usize,
        data: Vec<u8>,
    },
    Timer {
        node: usize,
        generation: u32,
        timer: Timer<NodeIdentity>,
        /// Its deadline: handled later than this (after a stall), it is late.
        due: u64,
    },
    /// Anti-entropy round of `node` (the QUIC digest push-pull of `sync.rs`, modelled).
    Sync {
        node: usize,
        generation: u32,
    },
}

struct Node {
    swim: Membership,
    state: std::sync::Arc<std::sync::Mutex<crate::state::ClusterState>>,
    /// Members this node believes alive, by id, from the up/down notifications.
    view: BTreeSet<String>,
    /// When each peer was seen going down (for detection times).
    downs: Vec<(String, u64)>,
}

struct Sim {
    now: u64,
    rng: Rng,
    nodes: Vec<Option<Node>>,
    /// (time, 0 for an event a stall deferred and 1 for any other, sequence) -> event
    queue: BTreeMap<(u64, u8, u64), Event>,
    /// Per node, until when its process is stalled (not scheduled): what reaches it meanwhile
    /// waits, and is handled when the stall ends.
    stalled_until: Vec<u64>,
    /// Stalls go unreported to `Membership::stalled` (as before the driver reported them).
    blind_to_stalls: bool,
    /// Per node, when it last handled a timer.
    resumed: Vec<u64>,
    seq: u64,
    loss_pct: u64,
    group: Vec<u8>,
    /// Per slot, bumped at every start: timers of a dead process never reach its successor.
    generation: Vec<u32>,
    cfg: MembershipConfig,
    /// Down notifications about a node that was alive and reachable at the time.
    false_downs: usize,
    /// SWIM payload bytes sent, all nodes together.
    bytes_sent: u64,
    datagrams_sent: u64,
    /// Anti-entropy period; `None` leaves dissemination to the broadcasts alone.
    sync_ms: Option<u64>,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 7946))
}

fn index(a: SocketAddr) -> usize {
    match a.ip() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[2] as usize * 250 + o[3] as usize - 1
        }
        IpAddr::V6(_) => unreachable!(),
    }
}

impl Sim {
    fn new(n: usize, seed: u64) -> Sim {
        Sim::with(n, seed, profile(n as u32))
    }

    fn with(n: usize, seed: u64, cfg: MembershipConfig) -> Sim {
        let mut sim = Sim {
            now: 0,
            rng: Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            nodes: (0..n).map(|_| None).collect(),
            queue: BTreeMap::new(),
            stalled_until: vec![0; n],
            blind_to_stalls: false,
            resumed: vec![0; n],
            seq: 0,
            loss_pct: 0,
            group: vec![0; n],
            generation: vec![0; n],
            cfg,
            false_downs: 0,
            bytes_sent: 0,
            datagrams_sent: 0,
            sync_ms: None,
        };
        for i in 0..n {
            sim.start(i, 1);
        }
        sim
    }

    fn start(&mut self, i: usize, incarnation: u64) {
        self.generation[i] += 1;
        let me = NodeIdentity {
            id: format!("n{i:03}"),
            gossip: addr(i),
            sync_port: 7947,
            public: None,
            incarnation,
            bump: 0,
        };
        let state = std::sync::Arc::new(std::sync::Mutex::new(crate::state::ClusterState::new(
            me.id.clone(),
        )));
        let swim = Membership::with_state(me, &self.cfg, self.rng.next(), state.clone());
        self.nodes[i] = Some(Node {
            swim,
            state,
            view: BTreeSet::new(),
            downs: Vec::new(),
        });
        if i != 0 {
            let fx = self.nodes[i].as_mut().unwrap().swim.join(addr(0)).unwrap();
            self.effects(i, fx);
        }
        if let Some(period) = self.sync_ms {
            self.schedule_sync(i, period);
        }
    }

    /// Turns anti-entropy on for every node, each at a random phase of `period`.
    fn with_sync(mut self, period: u64) -> Sim {
        self.sync_ms = Some(period);
        for i in self.alive() {
            let first = self.rng.below(period) + 1;
            self.schedule_sync(i, first);
        }
        self
    }

    fn schedule_sync(&mut self, node: usize, after: u64) {
        let generation = self.generation[node];
        self.push(self.now + after, Event::Sync { node, generation });
    }

    /// One push-pull round: `i` and a random member of its view exchange what the other
    /// lacks by digest, as `sync.rs` does over QUIC. A partition or a dead peer fails it.
    fn sync_round(&mut self, i: usize) {
        let view: Vec<usize> = self.nodes[i]
            .as_ref()
            .unwrap()
            .view
            .iter()
            .map(|id| id[1..].parse().expect("ids are n<index>"))
            .collect();
        if view.is_empty() {
            return;
        }
        let j = view[self.rng.below(view.len() as u64) as usize];
        if self.group[i] != self.group[j] || self.nodes[j].is_none() {
            return;
        }
        let (a, b) = (
            self.nodes[i].as_ref().unwrap().state.clone(),
            self.nodes[j].as_ref().unwrap().state.clone(),
        );
        let to_b = a.lock().unwrap().newer_than(&b.lock().unwrap().digest());
        let to_a = b.lock().unwrap().newer_than(&a.lock().unwrap().digest());
        for u in to_b {
            b.lock().unwrap().apply(u);
        }
        for u in to_a {
            a.lock().unwrap().apply(u);
        }
    }

    fn effects(&mut self, from: usize, fx: Effects) {
        let generation = self.generation[from];
        for (to, data) in fx.send {
            self.bytes_sent += data.len() as u64;
            self.datagrams_sent += 1;
            let to = index(to.gossip);
            if self.group[from] != self.group[to] || self.rng.below(100) < self.loss_pct {
                continue;
            }
            let at = self.now + 1 + self.rng.below(5);
            self.push(at, Event::Datagram { to, data });
        }
        for (after, timer) in fx.timers {
            let at = self.now + after.as_millis() as u64;
            self.push(
                at,
                Event::Timer {
                    node: from,
                    generation,
                    timer,
                    due: at,
                },
            );
        }
        let now = self.now;
        for id in fx.down {
            // Was it alive, on our side, and is it the same incarnation? Then it was a mistake.
            let j = index(id.gossip);
            let alive_same = self.nodes[j].as_ref().is_some_and(|n| *n.swim.me() == id);
            if alive_same && self.group[j] == self.group[from] {
                self.false_downs += 1;
            }
            let node = self.nodes[from].as_mut().unwrap();
            node.view.remove(&id.id);
            node.downs.push((id.id, now));
        }
        let node = self.nodes[from].as_mut().unwrap();
        for id in fx.up {
            node.view.insert(id.id);
        }
        for (old, new) in fx.renamed {
            node.view.remove(&old.id);
            node.view.insert(new.id);
        }
    }

    fn push(&mut self, at: u64, e: Event) {
        self.seq += 1;
        // After any event deferred to the same millisecond by a stall: those were due earlier.
        self.queue.insert((at, 1, self.seq), e);
    }

    /// Stalls node `i`'s process for `ms` from now.
    fn stall(&mut self, i: usize, ms: u64) {
        self.stalled_until[i] = self.now + ms;
    }

    fn run(&mut self, ms: u64) {
        let end = self.now + ms;
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > end {
                break;
            }
            let ((at, _, _), event) = entry.remove_entry();
            self.now = at;
            let node = match &event {
                Event::Datagram { to, .. } => *to,
                Event::Timer { node, .. } | Event::Sync { node, .. } => *node,
            };
            let until = self.stalled_until[node];
            if at < until {
                // Handled when the stall ends, in the order they came due.
                self.seq += 1;
                self.queue.insert((until, 0, self.seq), event);
                continue;
            }
            let (i, fx) = match event {
                Event::Datagram { to, data } => match self.nodes[to].as_mut() {
                    Some(n) => (to, n.swim.datagram(&data)),
                    None => continue,
                },
                Event::Timer {
                    node,
                    generation,
                    timer,
                    due,
                } => match self.nodes[node].as_mut() {
                    Some(n) if self.generation[node] == generation => {
                        // As the driver: the first timer handled after a stall tells how long
                        // the stall was.
                        if due < at && self.resumed[node] < at && !self.blind_to_stalls {
                            n.swim.stalled(Duration::from_millis(at - due));
                        }
                        self.resumed[node] = at;
                        (node, n.swim.timer(timer))
                    }
                    _ => continue,
                },
                Event::Sync { node, generation } => {
                    if self.nodes[node].is_some() && self.generation[node] == generation {
                        self.sync_round(node);
                        let period = self.sync_ms.expect("scheduled only with a period");
                        self.schedule_sync(node, period);
                    }
                    continue;
                }
            };
            self.effects(i, fx.expect("a datagram from a peer always decodes"));
        }
        self.now = end;
    }

    fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    /// Whether live node `i` holds `key` in its state.
    fn holds(&self, i: usize, key: &str) -> bool {
        self.nodes[i]
            .as_ref()
            .is_some_and(|n| n.state.lock().unwrap().get(key).is_some())
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect()
    }

    /// Every live node sees exactly the other live nodes of its group.
    fn converged(&self) -> bool {
        self.alive().into_iter().all(|i| {
            let expected: BTreeSet<String> = self
                .alive()
                .into_iter()
                .filter(|&j| j != i && self.group[j] == self.group[i])
                .map(|j| format!("n{j:03}"))
                .collect();
            self.nodes[i].as_ref().unwrap().view == expected
        })
    }

    fn run_until_converged(&mut self, limit: u64) -> u64 {
        self.try_converge(limit)
            .unwrap_or_else(|sizes| panic!("not converged within {limit}ms: {sizes}"))
    }

    /// Runs until every view is right, or says how the views differ after `limit`.
    fn try_converge(&mut self, limit: u64) -> Result<u64, String> {
        let start = self.now;
        while !self.converged() {
            if self.now - start >= limit {
                let sizes: BTreeMap<usize, usize> =
                    self.alive().into_iter().fold(BTreeMap::new(), |mut m, i| {
                        *m.entry(self.nodes[i].as_ref().unwrap().view.len())
                            .or_default() += 1;
                        m
                    });
                return Err(format!("view size -> nodes {sizes:?}"));
            }
            self.run(100);
        }
        Ok(self.now - start)
    }
}

fn percentile(mut v: Vec<u64>, p: usize) -> u64 {
    v.sort_unstable();
    v[(v.len() - 1) * p / 100]
}

#[test]
fn fifty_nodes_join_detect_a_crash_and_take_back_a_restart() {
    let mut sim = Sim::new(50, 1);
    sim.run_until_converged(30_000);

    let crashed_at = sim.now;
    sim.crash(17);
    sim.run_until_converged(30_000);
    let detect: Vec<u64> = sim
        .alive()
        .into_iter()
        .filter_map(|i| {
            let n = sim.nodes[i].as_ref().unwrap();
            n.downs
                .iter()
                .find(|(id, _)| id == "n017")
                .map(|(_, t)| t - crashed_at)
        })
        .collect();
    assert_eq!(detect.len(), 49, "every survivor saw n017 go down");
    let (p50, p99) = (percentile(detect.clone(), 50), percentile(detect, 99));
    eprintln!("50 nodes, crash detection: p50 {p50} ms, p99 {p99} ms");
    // The gossip issue's bounds, in simulated time (deterministic for the seed).
    assert!(
        p50 <= 2_000 && p99 <= 5_000,
        "detection p50 {p50} ms, p99 {p99} ms"
    );

    // Same address, new process: a higher incarnation takes the old identity's place.
    sim.start(17, 2);
    sim.run_until_converged(30_000);
    assert_eq!(sim.false_downs, 0);
}

#[test]
fn no_false_positives_at_10_percent_loss() {
    for seed in 1..=4 {
        let mut sim = Sim::new(50, seed);
        sim.run_until_converged(30_000);
        sim.loss_pct = 10;
        sim.run(120_000);
        assert_eq!(
            sim.false_downs, 0,
            "seed {seed}: alive members declared down at 10% loss"
        );
        sim.loss_pct = 0;
        sim.run_until_converged(30_000);
    }
}

/// Minutes of `loss_pct` loss on a mesh of `n` members with configuration `cfg`, one per
/// seed, and how many of them had a false "down".
fn minutes_with_false_downs(n: usize, cfg: &MembershipConfig, loss_pct: u64, seeds: u64) -> u64 {
    let mut bad = 0;
    for seed in 1..=seeds {
        let mut sim = Sim::with(n, seed, cfg.clone());
        sim.run_until_converged(30_000);
        sim.loss_pct = loss_pct;
        sim.run(60_000);
        bad += u64::from(sim.false_downs > 0);
    }
    bad
}

/// A small mesh under heavy loss: the suspect must hear of its suspicion and the member that
/// raised it must hear the refutation, within the suspicion timeout. With suspicions spread as
/// broadcasts only, 64 of 500 minutes at 5 members and 20% loss had a false "down", 155 of
/// 300 at 30%, and 25 of 100 at 20 members (the chaos lab's 5-member 20% scenario failed in CI
/// with this symptom); suspicion notices and direct refutations took each to 0 (in 1,000, 300
/// and 100 minutes).
#[test]
fn small_meshes_under_heavy_loss_declare_no_live_member_down() {
    for (n, size, loss, seeds) in [(5, 6, 20, 100), (5, 6, 30, 40), (20, 20, 20, 20)] {
        let bad = minutes_with_false_downs(n, &MembershipConfig::lan(size), loss, seeds);
        assert_eq!(
            bad, 0,
            "{n} members at {loss}% loss: {bad} of {seeds} minutes had a live member declared down"
        );
    }
}

/// A stall of the whole host (every member's process paused at once, as a VM pause does)
/// around the suspicion timeout: a suspicion pending when it began expired as the processes
/// resumed, before its subject could answer, and a live member was declared down. Stalled
/// time given back to pending suspicions (`Membership::stalled`) fixes that. At 20% loss,
/// with a 1 s stall every 5 s, 40 minutes each way.
#[test]
fn a_stalled_host_gives_pending_suspicions_their_time_back() {
    let false_downs = |blind| {
        let mut downs = 0;
        for seed in 1..=40 {
            let mut sim = Sim::with(5, seed, MembershipConfig::lan(6));
            sim.blind_to_stalls = blind;
            sim.run_until_converged(30_000);
            sim.loss_pct = 20;
            for _ in 0..12 {
                for i in 0..5 {
                    sim.stall(i, 1_000);
                }
                sim.run(5_000);
            }
            downs += sim.false_downs;
        }
        downs
    };
    let (blind, counted) = (false_downs(true), false_downs(false));
    eprintln!("live members declared down: {blind} with stalls unreported, {counted} counted");
    assert!(
        blind >= 20,
        "the scenario no longer exercises stalls: {blind} false downs"
    );
    assert!(
        counted * 10 <= blind,
        "stalled time counted: {counted} false downs, against {blind} without"
    );
}

/// What a stall gives back is capped at one suspicion timeout: a host that was paused for
/// a minute while it suspected a member that had really died still declares it down soon
/// after it resumes.
#[test]
fn a_long_stall_delays_a_real_death_by_one_suspicion_timeout_at_most() {
    for seed in 1..=10 {
        let mut sim = Sim::with(5, seed, MembershipConfig::lan(6));
        sim.run_until_converged(30_000);
        sim.crash(4);
        // Long enough for a probe of the dead member to fail, too short for any suspicion
        // of it to expire.
        sim.run(900);
        for i in 0..4 {
            sim.stall(i, 60_000);
        }
        sim.run(60_000);
        let resumed = sim.now;
        // The window left, one timeout given back, and a probe period to spare.
        sim.run(2_400);
        for i in 0..4 {
            let n = sim.nodes[i].as_ref().unwrap();
            let down = n.downs.iter().find(|(id, _)| id == "n004");
            assert!(
                down.is_some_and(|(_, at)| *at >= resumed),
                "seed {seed}: node {i} holds the dead member {} {} ms after a 60 s stall",
                if n.view.contains("n004") {
                    "alive or suspect"
                } else {
                    "down, but declared before the stall"
                },
                sim.now - resumed
            );
        }
    }
}

#[test]
fn partition_heals_into_one_membership() {
    let mut sim = Sim::new(20, 3);
    sim.run_until_converged(30_000);
    sim.group = (0..20).map(|i| u8::from(i >= 12)).collect();
    // Each side loses the other...
    sim.run_until_converged(60_000);
    assert_eq!(sim.nodes[0].as_ref().unwrap().view.len(), 11);
    // ...and after healing (periodic announces to down members) they find each other again.
    sim.group = vec![0; 20];
    sim.run_until_converged(180_000);
}

#[test]
fn garbage_datagrams_are_errors_not_panics() {
    let mut sim = Sim::new(2, 4);
    sim.run_until_converged(10_000);
    let n = sim.nodes[0].as_mut().unwrap();
    for junk in [
        &b""[..],
        b"\x00",
        b"\xff\xff\xff\xff\xff\xff\xff\xff",
        b"hello, world",
    ] {
        assert!(n.swim.datagram(junk).is_err(), "{junk:?} accepted");
    }
    assert_eq!(n.view.len(), 1, "state untouched");
}

/// The configuration the simulations start from for about `size` members: ours, or
/// memberlist's LAN defaults with `SIM_PROFILE=memberlist`, with [`tuned`]'s overrides.
fn profile(size: u32) -> MembershipConfig {
    if std::env::var("SIM_PROFILE").as_deref() == Ok("memberlist") {
        tuned(MembershipConfig::memberlist_lan(size))
    } else {
        tuned(MembershipConfig::lan(size))
    }
}

/// Timing overrides for tuning runs (`SIM_PROBE_MS`, `SIM_RTT_MS`, `SIM_SUSPECT_MS`;
/// `SIM_PROFILE=memberlist` starts from memberlist's LAN defaults instead of ours).
fn tuned(mut cfg: MembershipConfig) -> MembershipConfig {
    let ms = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    };
    if let Some(d) = ms("SIM_PROBE_MS") {
        cfg.probe_period = d;
    }
    if let Some(d) = ms("SIM_RTT_MS") {
        cfg.probe_rtt = d;
    }
    if let Some(d) = ms("SIM_SUSPECT_MS") {
        cfg.suspect_to_down = d;
    }
    cfg
}

/// Time until every live node holds `key`, publishing it from `from`.
fn spread(sim: &mut Sim, from: usize, key: &str, limit: u64) -> u64 {
    try_spread(sim, from, key, limit)
        .unwrap_or_else(|| panic!("{key} did not reach every node within {limit}ms"))
}

fn try_spread(sim: &mut Sim, from: usize, key: &str, limit: u64) -> Option<u64> {
    let now = sim.now;
    let fx = {
        let n = sim.nodes[from].as_mut().unwrap();
        let update = n.state.lock().unwrap().set(key, b"v".to_vec(), now);
        n.swim.publish(&update).unwrap()
    };
    sim.effects(from, fx);
    let start = sim.now;
    loop {
        let all = sim.alive().into_iter().all(|i| sim.holds(i, key));
        if all {
            return Some(sim.now - start);
        }
        if sim.now - start >= limit {
            return None;
        }
        sim.run(10);
    }
}

#[test]
fn state_updates_reach_all_fifty_nodes() {
    let mut sim = Sim::new(50, 6);
    sim.run_until_converged(30_000);
    let clean = spread(&mut sim, 5, "node/n005", 10_000);
    eprintln!("50 nodes, one update to all without loss: {clean} ms");
    // Dissemination stops once everyone has it: the key is not re-sent forever.
    sim.run(30_000);
    assert_eq!(
        sim.nodes[0].as_ref().unwrap().state.lock().unwrap().len(),
        1
    );
}

/// Under loss, a bounded number of transmissions is not guaranteed to reach everyone (a run
/// with a second update from this node missed some within 20 s); this records the reach of one
/// update. The anti-entropy sync (still to build) is what guarantees convergence.
#[test]
fn broadcast_reach_at_10_percent_loss() {
    let mut sim = Sim::new(50, 6);
    sim.run_until_converged(30_000);
    sim.loss_pct = 10;
    let now = sim.now;
    let fx = {
        let n = sim.nodes[9].as_mut().unwrap();
        let update = n.state.lock().unwrap().set("k", b"v".to_vec(), now);
        n.swim.publish(&update).unwrap()
    };
    sim.effects(9, fx);
    sim.run(20_000);
    let reached = sim
        .alive()
        .into_iter()
        .filter(|&i| sim.holds(i, "k"))
        .count();
    eprintln!("50 nodes at 10% loss: broadcast reached {reached} of 50 after 20 s");
    assert!((40..=50).contains(&reached), "{reached}");
}

#[test]
fn malformed_broadcast_items_are_refused() {
    let state = std::sync::Arc::new(std::sync::Mutex::new(crate::state::ClusterState::new("a")));
    let mut h = crate::broadcast::StateBroadcasts::new(state.clone());
    let from = NodeIdentity::seed(addr(1));
    use foca::BroadcastHandler;
    assert!(h.receive_item(b"garbage", Some(&from)).is_err());
    let mut other = crate::state::ClusterState::new("b");
    let u = other.set("k", b"1".to_vec(), 5);
    let item = crate::broadcast::encode(&u).unwrap();
    assert!(
        h.receive_item(&item, Some(&from)).unwrap().is_some(),
        "new: pass it on"
    );
    assert!(
        h.receive_item(&item, Some(&from)).unwrap().is_none(),
        "known: stop"
    );
    assert_eq!(state.lock().unwrap().get("k"), Some(&b"1"[..]));
}

/// The daemon's default anti-entropy period (`sync_interval_secs`).
const SYNC_MS: u64 = 30_000;

/// Broadcasts are sent a bounded number of times, so a member cut off while they fly never
/// gets them from SWIM; the anti-entropy rounds bring the update to it after the cut heals.
#[test]
fn anti_entropy_delivers_what_broadcasts_missed() {
    let mut sim = Sim::new(50, 6).with_sync(SYNC_MS);
    sim.run_until_converged(30_000);
    let has = |sim: &Sim, i: usize| sim.holds(i, "k");
    // Node 7 is unreachable for 3 s (less than the suspicion timeout, so it stays a member).
    sim.group = (0..50).map(|i| u8::from(i == 7)).collect();
    let now = sim.now;
    let fx = {
        let n = sim.nodes[9].as_mut().unwrap();
        let update = n.state.lock().unwrap().set("k", b"v".to_vec(), now);
        n.swim.publish(&update).unwrap()
    };
    sim.effects(9, fx);
    sim.run(3_000);
    assert!(!has(&sim, 7), "cut off, it cannot have the update");
    sim.group = vec![0; 50];
    sim.run(3_000);
    assert!(
        !has(&sim, 7),
        "the broadcasts are spent: SWIM alone never delivers it"
    );
    let start = sim.now;
    while !has(&sim, 7) {
        assert!(
            sim.now - start <= SYNC_MS + 1_000,
            "anti-entropy did not deliver within one period"
        );
        sim.run(100);
    }
    eprintln!(
        "anti-entropy delivered the missed update {} ms after the cut healed",
        sim.now - start + 3_000
    );
    // Every other member got it by broadcast.
    assert!(sim.alive().into_iter().all(|i| has(&sim, i)));
}

/// Not a test: the gossip figures for BENCHMARKS.md (`bench/gossip.sh` runs it in release).
#[test]
#[ignore]
fn bench_report() {
    // Envelope (8) + length prefix of the bytes (up to 3) + seal (nonce 24, tag 16).
    const WIRE_OVERHEAD: u64 = 8 + 3 + 24 + 16;
    println!(
        "| nodes | detection p50 | detection p99 | change reaches all (p50 / max of 5) | bytes/s per node at rest |"
    );
    println!("|---:|---:|---:|---:|---:|");
    let sizes: Vec<usize> = std::env::var("SIM_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 50, 100, 200]);
    for n in sizes {
        let mut sim = Sim::new(n, 42).with_sync(SYNC_MS);
        if let Err(views) = sim.try_converge(120_000) {
            println!("| {n} | join not converged after 120 s ({views}) | | | |");
            continue;
        }
        let (b0, d0, t0) = (sim.bytes_sent, sim.datagrams_sent, sim.now);
        sim.run(60_000);
        let secs = (sim.now - t0) as f64 / 1000.0;
        let wire = (sim.bytes_sent - b0) + (sim.datagrams_sent - d0) * WIRE_OVERHEAD;
        let rest = wire as f64 / secs / n as f64;
        // Five updates from different nodes; anti-entropy on at the default period, so an
        // update the broadcasts miss somewhere still arrives (and shows in the max).
        let mut reach = Vec::new();
        for k in 0..5 {
            let from = 1 + k * (n - 2) / 5;
            reach.push(spread(&mut sim, from, &format!("bench/{k}"), 120_000));
        }
        let reach_max = *reach.iter().max().unwrap();
        let reach_p50 = percentile(reach, 50);
        let crashed_at = sim.now;
        sim.crash(n - 1);
        sim.run_until_converged(120_000);
        let victim = format!("n{:03}", n - 1);
        let detect: Vec<u64> = sim
            .alive()
            .into_iter()
            .filter_map(|i| {
                let node = sim.nodes[i].as_ref().unwrap();
                node.downs
                    .iter()
                    .find(|(id, _)| *id == victim)
                    .map(|(_, t)| t - crashed_at)
            })
            .collect();
        println!(
            "| {n} | {:.1} s | {:.1} s | {:.2} s / {:.2} s | {:.0} B/s |",
            percentile(detect.clone(), 50) as f64 / 1000.0,
            percentile(detect, 99) as f64 / 1000.0,
            reach_p50 as f64 / 1000.0,
            reach_max as f64 / 1000.0,
            rest
        );
    }
    println!();
    println!("| members | loss | minutes with a live member declared down |");
    println!("|---:|---:|---:|");
    for (n, loss, minutes) in [
        (5, 10, 200),
        (5, 20, 200),
        (5, 30, 200),
        (20, 20, 50),
        (50, 10, 8),
        (50, 20, 8),
    ] {
        let bad = minutes_with_false_downs(n, &profile(n as u32), loss, minutes);
        println!("| {n} | {loss}% | {bad} of {minutes} |");
    }
}

#[test]
fn twenty_percent_loss_then_recovery_converges() {
    let mut sim = Sim::new(50, 8);
    sim.run_until_converged(30_000);
    sim.loss_pct = 20;
    sim.run(60_000);
    // False suspicions happen at this loss rate; once it clears, everyone agrees again
    // (wrongly downed members refute with a new identity and are taken back).
    sim.loss_pct = 0;
    sim.run_until_converged(120_000);
}

#[test]
fn a_node_away_for_ten_minutes_rejoins() {
    let mut sim = Sim::new(20, 9);
    sim.run_until_converged(30_000);
    sim.group = (0..20).map(|i| u8::from(i == 7)).collect();
    sim.run(600_000);
    assert!(
        sim.nodes[7].as_ref().unwrap().view.is_empty(),
        "alone, it sees nobody"
    );
    assert!(!sim.nodes[0].as_ref().unwrap().view.contains("n007"));
    sim.group = vec![0; 20];
    sim.run_until_converged(180_000);
}
