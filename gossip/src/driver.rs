//! The tokio driver: one UDP socket, one task. Every datagram is a versioned [`envelope`]
//! sealed with the cluster [`Keyring`]; anything that does not open or decode is dropped and
//! counted, and never reaches the protocol cores.
//!
//! Datagram kinds: 1 = SWIM (foca's own bytes inside the envelope).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use foca::Timer;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::election::{Election, ElectionConfig, ElectionMsg, Outbox, Role};
use crate::envelope;
use crate::keyring::Keyring;
use crate::membership::{Effects, Membership, MembershipConfig, NodeIdentity};
use crate::state::ClusterState;
use crate::sync::SyncEndpoint;
use crate::voters::{self, VoterChange};

const KIND_SWIM: u8 = 1;
const KIND_ELECTION: u8 = 6;
const ELECTION_TICK: Duration = Duration::from_millis(50);
/// Tombstones older than this are dropped. A node away for longer must not sync old state back
/// in; it comes back with a new incarnation and an empty state (see `state`).
const TOMBSTONE_TTL: Duration = Duration::from_secs(24 * 3600);
pub const LEADER_KEY: &str = "cluster/leader";
/// Authenticated data bound into every seal: a packet for another protocol never opens here.
const AAD: &[u8] = b"edgemesh-gossip-v1";
const MAX_DATAGRAM: usize = 64 * 1024;

/// What a node publishes about itself under `node/<id>` in the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct NodeMeta {
    pub version: String,
    pub public: Option<std::net::IpAddr>,
    /// Unix milliseconds.
    pub started_at: u64,
    pub draining: bool,
}

pub fn meta_key(id: &str) -> String {
    format!("node/{id}")
}

/// Wall-clock Unix milliseconds, the timestamps of state writes.
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn encode_meta(meta: &NodeMeta) -> Vec<u8> {
    bincode::serde::encode_to_vec(meta, bincode::config::standard()).unwrap_or_default()
}

pub struct MeshConfig {
    /// `me.sync_port` is bound for QUIC sync on `bind`'s IP.
    pub me: NodeIdentity,
    pub meta: NodeMeta,
    pub bind: SocketAddr,
    /// A sync round with a random member this often (and one with every member that joins).
    pub sync_interval: Duration,
    pub election: ElectionConfig,
    /// Members that must be seen before the first voter set is written (see [`crate::voters`]).
    pub bootstrap_expect: usize,
    /// A voter down this long is removed from the set by the acting leader.
    pub reap_after: Duration,
    pub seeds: Box<dyn SeedSource>,
    pub keyring: Keyring,
    pub membership: MembershipConfig,
}

/// Packet counters, shown by `meshctl` and exported as metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    /// Bytes on the wire (sealed datagrams) sent.
    pub bytes_sent: AtomicU64,
    pub received: AtomicU64,
    /// Failed authentication (wrong or no cluster key).
    pub rejected_auth: AtomicU64,
    /// Authenticated but malformed (bad envelope, version, or protocol payload).
    pub rejected_decode: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub id: String,
    /// From the member's `node/<id>` entry, once it has reached us.
    pub meta: Option<NodeMeta>,
    pub gossip: SocketAddr,
    pub public: Option<std::net::IpAddr>,
    pub incarnation: u64,
    /// Seconds since this node first saw the member up.
    pub age_secs: u64,
}

impl MemberStatus {
    /// Where clients reach the member: its identity's public address, else the one its
    /// `node/<id>` entry announces.
    pub fn public_addr(&self) -> Option<std::net::IpAddr> {
        self.public
            .or(self.meta.as_ref().and_then(|meta| meta.public))
    }

    /// Whether its `node/<id>` entry says it is draining.
    pub fn draining(&self) -> bool {
        self.meta.as_ref().is_some_and(|meta| meta.draining)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MeshStatus {
    pub me: MemberStatus,
    pub members: Vec<MemberStatus>,
    pub joined: bool,
    /// Members seen going down and not back up since.
    pub down: Vec<String>,
    /// Entries in the replicated state (tombstones included).
    pub state_entries: usize,
    pub election: ElectionStatus,
    /// State updates still being disseminated by this node.
    pub broadcast_backlog: usize,
    pub sync_rounds_ok: u64,
    pub sync_rounds_failed: u64,
    pub sync_updates_applied: u64,
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub packets_rejected_auth: u64,
    pub packets_rejected_decode: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ElectionStatus {
    pub role: Option<Role>,
    pub term: u64,
    pub leader: Option<String>,
    /// This node is the leader and holds a quorum lease: it may act (ACME, DNS).
    pub acting: bool,
    pub voters: Vec<String>,
    pub leader_changes: u64,
    /// Seconds since this node first saw the current leader.
    pub leader_since_secs: Option<u64>,
}

struct Shared {
    election: Mutex<ElectionStatus>,
    leader_since: Mutex<Option<Instant>>,
    backlog: AtomicU64,
    down: Mutex<Vec<String>>,
    counters: Counters,
    sync: SyncEndpoint,
    state: Arc<Mutex<ClusterState>>,
    members: Mutex<BTreeMap<SocketAddr, (NodeIdentity, Instant)>>,
    me: NodeIdentity,
    started: Instant,
    /// Our `node/<id>` value, (re)published at start and whenever a member comes up.
    meta: Mutex<NodeMeta>,
}

impl Shared {
    /// Writes one of this member's own entries into the local state, now: the update to
    /// disseminate.
    fn set_own(&self, key: &str, value: Vec<u8>) -> crate::state::Update {
        self.state
            .lock()
            .expect("state lock")
            .set(key, value, wall_ms())
    }

    /// This member's `node/<id>` entry as it is now.
    fn meta_update(&self) -> crate::state::Update {
        let meta = encode_meta(&self.meta.lock().expect("meta lock"));
        self.set_own(&meta_key(&self.me.id), meta)
    }
}

/// Where a node finds members to join through. Asked again at every join attempt, so a
/// source can change (the DNS entrypoint and ECS come later behind this trait).
pub trait SeedSource: Send + Sync + 'static {
    fn seeds(&mut self) -> Vec<SocketAddr>;
}

impl SeedSource for Vec<SocketAddr> {
    fn seeds(&mut self) -> Vec<SocketAddr> {
        self.clone()
    }
}

/// A leader write refused because this node is not the acting leader.
#[derive(Debug, thiserror::Error)]
#[error("not the acting leader (leader: {})", leader.as_deref().unwrap_or("none known"))]
pub struct NotLeader {
    pub leader: Option<String>,
}

/// A running mesh member. Dropping it without [`Mesh::leave`] just stops it.
pub struct Mesh {
    shared: Arc<Shared>,
    publish: tokio::sync::mpsc::UnboundedSender<crate::state::Update>,
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
    pub local_addr: SocketAddr,
}

impl Mesh {
    pub async fn start(cfg: MeshConfig) -> std::io::Result<Mesh> {
        let socket = UdpSocket::bind(cfg.bind).await?;
        let local_addr = socket.local_addr()?;
        let state = Arc::new(Mutex::new(ClusterState::new(cfg.me.id.clone())));
        let keyring = Arc::new(cfg.keyring);
        let sync = SyncEndpoint::start(
            SocketAddr::new(cfg.bind.ip(), cfg.me.sync_port),
            &cfg.me.id,
            keyring.clone(),
            state.clone(),
        )?;
        let shared = Arc::new(Shared {
            election: Mutex::new(ElectionStatus::default()),
            leader_since: Mutex::new(None),
            backlog: AtomicU64::new(0),
            down: Mutex::new(Vec::new()),
            counters: Counters::default(),
            sync,
            state: state.clone(),
            members: Mutex::new(BTreeMap::new()),
            me: cfg.me.clone(),
            started: Instant::now(),
            meta: Mutex::new(cfg.meta.clone()),
        });
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let swim = Membership::with_state(cfg.me.clone(), &cfg.membership, seed, state);
        let (stop, stopped) = oneshot::channel();
        let (publish, to_publish) = tokio::sync::mpsc::unbounded_channel();
        let epoch = Instant::now();
        let mut election = Election::new(cfg.me.id.clone(), cfg.election, 0);
        election.seed(seed, 0);
        // No voter set yet: nobody stands until one is bootstrapped.
        election.set_voters(BTreeSet::new());
        let driver = Driver {
            election,
            epoch,
            bootstrap_expect: cfg.bootstrap_expect,
            reap_after: cfg.reap_after,
            down_since: BTreeMap::new(),
            acting_term: None,
            view: (BTreeSet::new(), epoch),
            socket,
            keyring,
            sync_interval: cfg.sync_interval,
            sync_round: 0,
            swim,
            timers: BTreeMap::new(),
            seq: 0,
            shared: shared.clone(),
            seeds: cfg.seeds,
        };
        tokio::spawn(driver.run(stopped, to_publish));
        info!(addr = %local_addr, id = %cfg.me.id, "gossip listening");
        Ok(Mesh {
            shared,
            publish,
            stop: Some(stop),
            local_addr,
        })
    }

    /// How many other members this node sees alive.
    pub fn member_count(&self) -> usize {
        self.shared.members.lock().expect("members lock").len()
    }

    /// Whether this member is the acting leader now (a majority and a valid lease).
    pub fn acting(&self) -> bool {
        self.shared.election.lock().expect("election lock").acting
    }

    /// Writes `key` as the acting leader, in its term, and disseminates it. Refused on any
    /// other node: leader data has one writer.
    pub fn publish_as_leader(&self, key: &str, value: Vec<u8>) -> Result<(), NotLeader> {
        self.leader_write(|state, term, now| state.set_as_leader(key, value, term, now).map(Some))
    }

    /// Writes `key` as this member's own entry (any member may; by convention keys that
    /// name the member, such as `held/<id>`) and disseminates it.
    pub fn publish_own(&self, key: &str, value: Vec<u8>) {
        let _ = self.publish.send(self.shared.set_own(key, value));
    }

    /// Marks this member draining (or serving again) in its `node/<id>` entry: the leader
    /// then leaves it out of the DNS entrypoint.
    pub fn set_draining(&self, draining: bool) {
        self.shared.meta.lock().expect("meta lock").draining = draining;
        let _ = self.publish.send(self.shared.meta_update());
    }

    /// This member's id.
    pub fn id(&self) -> &str {
        &self.shared.me.id
    }

    /// Deletes `key` as the acting leader (a tombstone in its term). Refused elsewhere.
    pub fn delete_as_leader(&self, key: &str) -> Result<(), NotLeader> {
        self.leader_write(|state, term, now| state.delete_as_leader(key, term, now))
    }

    fn leader_write(
        &self,
        write: impl FnOnce(&mut ClusterState, u64, u64) -> Result<Option<crate::Update>, crate::Fenced>,
    ) -> Result<(), NotLeader> {
        let view = self.shared.election.lock().expect("election lock").clone();
        if !view.acting {
            return Err(NotLeader {
                leader: view.leader,
            });
        }
        let now = wall_ms();
        let mut state = self.shared.state.lock().expect("state lock");
        let update = write(&mut state, view.term, now).map_err(|_| NotLeader {
            leader: view.leader.clone(),
        })?;
        drop(state);
        // The driver task owns the SWIM instance; it sends the update on its next turn.
        if let Some(update) = update {
            let _ = self.publish.send(update);
        }
        Ok(())
    }

    /// The replicated state this member holds.
    pub fn state(&self) -> Arc<Mutex<ClusterState>> {
        self.shared.state.clone()
    }

    pub fn status(&self) -> MeshStatus {
        let now = Instant::now();
        // Members first, released before the state is locked: never two of these locks at
        // once (the driver takes them one at a time too).
        let known: Vec<(NodeIdentity, Instant)> = self
            .shared
            .members
            .lock()
            .expect("members lock")
            .values()
            .cloned()
            .collect();
        let state = self.shared.state.lock().expect("state lock");
        let meta = |id: &str| {
            let bytes = state.get(&meta_key(id))?;
            bincode::serde::decode_from_slice(bytes, bincode::config::standard())
                .ok()
                .map(|(m, _)| m)
        };
        let view = |id: &NodeIdentity, since: Instant| MemberStatus {
            meta: meta(&id.id),
            id: id.id.clone(),
            gossip: id.gossip,
            public: id.public,
            incarnation: id.incarnation,
            age_secs: now.duration_since(since).as_secs(),
        };
        let mut members: Vec<MemberStatus> =
            known.iter().map(|(id, since)| view(id, *since)).collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        let state_entries = state.len();
        let me = view(&self.shared.me, self.shared.started);
        drop(state);
        let c = &self.shared.counters;
        let sc = &self.shared.sync.counters;
        MeshStatus {
            state_entries,
            election: {
                let mut e = self.shared.election.lock().expect("election lock").clone();
                e.leader_since_secs = self
                    .shared
                    .leader_since
                    .lock()
                    .expect("leader lock")
                    .map(|t| t.elapsed().as_secs());
                e
            },
            broadcast_backlog: self.shared.backlog.load(Ordering::Relaxed) as usize,
            sync_rounds_ok: sc.rounds_ok.load(Ordering::Relaxed),
            sync_rounds_failed: sc.rounds_failed.load(Ordering::Relaxed),
            sync_updates_applied: sc.updates_applied.load(Ordering::Relaxed),
            me,
            joined: !members.is_empty(),
            down: self.shared.down.lock().expect("down lock").clone(),
            members,
            packets_sent: c.sent.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            packets_received: c.received.load(Ordering::Relaxed),
            packets_rejected_auth: c.rejected_auth.load(Ordering::Relaxed),
            packets_rejected_decode: c.rejected_decode.load(Ordering::Relaxed),
        }
    }

    /// Announces our departure so peers drop us at once, then stops (bounded wait).
    pub async fn leave(mut self) {
        self.shared.sync.close();
        if let Some(stop) = self.stop.take() {
            let (done, left) = oneshot::channel();
            if stop.send(done).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(2), left).await;
            }
        }
    }
}

/// How long the alive set must stay unchanged before a node bootstraps the voter set.
const BOOTSTRAP_STABLE: Duration = Duration::from_secs(1);

struct Driver {
    election: Election,
    /// Origin of the election's millisecond clock.
    epoch: Instant,
    bootstrap_expect: usize,
    reap_after: Duration,
    /// Members currently down, since when (for reaping voters).
    down_since: BTreeMap<String, Instant>,
    /// The term this node last announced itself as acting leader in.
    acting_term: Option<u64>,
    /// The alive set last seen, and since when it has not changed (bootstrap waits for a
    /// stable view).
    view: (BTreeSet<String>, Instant),
    sync_interval: Duration,
    sync_round: usize,
    socket: UdpSocket,
    keyring: Arc<Keyring>,
    swim: Membership,
    /// (deadline, sequence) -> timer
    timers: BTreeMap<(Instant, u64), Timer<NodeIdentity>>,
    seq: u64,
    shared: Arc<Shared>,
    seeds: Box<dyn SeedSource>,
}

impl Driver {
    async fn run(
        mut self,
        mut stop: oneshot::Receiver<oneshot::Sender<()>>,
        mut to_publish: tokio::sync::mpsc::UnboundedReceiver<crate::state::Update>,
    ) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        self.publish_meta().await;
        // Join: retry the seeds with back-off until someone answers; meanwhile the node serves
        // with its own state.
        let mut election_tick = tokio::time::interval(ELECTION_TICK);
        election_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gc_tick = tokio::time::interval(Duration::from_secs(600));
        gc_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sync_tick = tokio::time::interval(self.sync_interval);
        sync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut join_backoff = Duration::from_millis(500);
        let mut next_join = Instant::now();
        loop {
            let next_timer = self.timers.keys().next().map(|(t, _)| *t);
            let joined = !self.shared.members.lock().expect("members lock").is_empty();
            let wake = match (next_timer, joined) {
                (Some(t), true) => t,
                (Some(t), false) => t.min(next_join),
                (None, true) => Instant::now() + Duration::from_secs(3600),
                (None, false) => next_join,
            };
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.datagram(&buf[..n], from).await,
                    Err(e) => debug!(error = %e, "gossip receive failed"),
                },
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if !joined && now >= next_join {
                        for seed in self.seeds.seeds() {
                            let fx = self.swim.join(seed);
                            self.effects(fx).await;
                        }
                        next_join = now + join_backoff;
                        join_backoff = (join_backoff * 2).min(Duration::from_secs(30));
                    }
                    if let Some(((due, _), _)) = self.timers.first_key_value() {
                        self.swim.stalled(now.saturating_duration_since(*due));
                    }
                    while let Some(entry) = self.timers.first_entry() {
                        if entry.key().0 > now {
                            break;
                        }
                        let timer = entry.remove();
                        let fx = self.swim.timer(timer);
                        self.effects(fx).await;
                    }
                }
                _ = election_tick.tick() => self.election_tick().await,
                Some(update) = to_publish.recv() => {
                    match self.swim.publish(&update) {
                        Ok(fx) => self.effects(Ok(fx)).await,
                        Err(e) => {
                            // Too large for a broadcast item (certificates, big topologies):
                            // push it at once with a sync round to every member instead of
                            // waiting for the periodic one.
                            debug!(key = %update.key, error = %e, "pushing by sync to every member");
                            let peers: Vec<SocketAddr> = self
                                .shared
                                .members
                                .lock()
                                .expect("members lock")
                                .values()
                                .map(|(id, _)| id.sync_addr())
                                .collect();
                            for peer in peers {
                                self.spawn_sync(peer);
                            }
                        }
                    }
                }
                _ = gc_tick.tick() => {
                    let now = wall_ms();
                    let ttl = TOMBSTONE_TTL.as_millis() as u64;
                    let dropped = self.shared.state.lock().expect("state lock").gc(now, ttl);
                    if dropped > 0 {
                        debug!(dropped, "tombstones collected");
                    }
                }
                _ = sync_tick.tick() => {
                    let peer = {
                        let members = self.shared.members.lock().expect("members lock");
                        let n = members.len();
                        // Round-robin over the members: each is synced with every n rounds.
                        self.sync_round = self.sync_round.wrapping_add(1);
                        (n > 0)
                            .then(|| members.values().nth(self.sync_round % n))
                            .flatten()
                            .map(|(id, _)| id.sync_addr())
                    };
                    if let Some(peer) = peer {
                        self.spawn_sync(peer);
                    }
                }
                done = &mut stop => {
                    let fx = self.swim.leave();
                    if let Ok(fx) = fx {
                        for (to, data) in fx.send {
                            self.send(to.gossip, &data).await;
                        }
                    }
                    if let Ok(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
            }
        }
    }

    async fn datagram(&mut self, packet: &[u8], from: SocketAddr) {
        let c = &self.shared.counters;
        c.received.fetch_add(1, Ordering::Relaxed);
        let Ok(plain) = self.keyring.open(packet, AAD) else {
            c.rejected_auth.fetch_add(1, Ordering::Relaxed);
            debug!(%from, "gossip packet failed authentication");
            return;
        };
        if envelope::peek_kind(&plain, MAX_DATAGRAM) == Ok(KIND_ELECTION) {
            match envelope::decode::<(String, ElectionMsg)>(&plain, KIND_ELECTION, MAX_DATAGRAM) {
                Ok((peer, msg)) => {
                    let now = self.now_ms();
                    let out = self.election.handle(&peer, msg, now);
                    self.send_election(out).await;
                }
                Err(e) => {
                    c.rejected_decode.fetch_add(1, Ordering::Relaxed);
                    warn!(%from, error = %e, "election message rejected");
                }
            }
            return;
        }
        let payload: Vec<u8> = match envelope::decode(&plain, KIND_SWIM, MAX_DATAGRAM) {
            Ok(p) => p,
            Err(e) => {
                c.rejected_decode.fetch_add(1, Ordering::Relaxed);
                warn!(%from, error = %e, "gossip packet rejected");
                return;
            }
        };
        let fx = self.swim.datagram(&payload);
        if fx.is_err() {
            c.rejected_decode.fetch_add(1, Ordering::Relaxed);
        }
        self.effects(fx).await;
    }

    async fn effects(&mut self, fx: Result<Effects, crate::membership::MembershipError>) {
        let fx = match fx {
            Ok(fx) => fx,
            Err(e) => {
                debug!(error = %e, "membership refused input");
                return;
            }
        };
        for (to, data) in &fx.send {
            self.send(to.gossip, data).await;
        }
        let now = Instant::now();
        for (after, timer) in fx.timers {
            self.seq += 1;
            self.timers.insert((now + after, self.seq), timer);
        }
        let someone_new = {
            let mut members = self.shared.members.lock().expect("members lock");
            for id in fx.down {
                info!(member = %id.id, addr = %id.gossip, "member down");
                members.remove(&id.gossip);
                self.down_since.entry(id.id.clone()).or_insert(now);
            }
            for (old, new) in fx.renamed {
                members.remove(&old.gossip);
                members.insert(new.gossip, (new, now));
            }
            let mut new = Vec::new();
            for id in fx.up {
                info!(member = %id.id, addr = %id.gossip, "member up");
                self.down_since.remove(&id.id);
                new.push(id.sync_addr());
                members.insert(id.gossip, (id, now));
            }
            new
        };
        *self.shared.down.lock().expect("down lock") = self.down_since.keys().cloned().collect();
        // A member that just came up may have missed anything: sync with it at once.
        for peer in &someone_new {
            self.spawn_sync(*peer);
        }
        let someone_new = !someone_new.is_empty();
        if someone_new {
            // Broadcasts are not replayed to late joiners: tell them about ourselves again.
            Box::pin(self.publish_meta()).await;
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    async fn election_tick(&mut self) {
        let now = self.now_ms();
        let me = self.shared.me.id.clone();
        // One lock at a time: `Mesh::status` takes them in the other order.
        let mut alive: BTreeSet<String> = self
            .shared
            .members
            .lock()
            .expect("members lock")
            .values()
            .map(|(id, _)| id.id.clone())
            .collect();
        alive.insert(me.clone());
        let voters = voters::read(&self.shared.state.lock().expect("state lock"));
        if let Some(v) = &voters {
            self.election.set_voters(v.clone());
        }
        let out = self.election.tick(now);
        self.send_election(out).await;
        let acting = self.election.acting(now);

        // Voter-set upkeep and the leader record: writes of the acting leader only (or the
        // bootstrap write, before there is a set).
        let down_for: BTreeMap<String, Duration> = self
            .down_since
            .iter()
            .map(|(id, since)| (id.clone(), since.elapsed()))
            .collect();
        if self.view.0 != alive {
            self.view = (alive.clone(), Instant::now());
        }
        // Bootstrap only from a view that has held still for a while: nodes still discovering
        // each other could otherwise write different first sets (see `voters`).
        let stable = self.view.1.elapsed() >= BOOTSTRAP_STABLE;
        let change = if voters.is_none() && !stable {
            None
        } else {
            voters::plan(
                &me,
                voters.as_ref(),
                &alive,
                &down_for,
                acting.is_some(),
                self.bootstrap_expect,
                self.reap_after,
            )
        };
        let wall = wall_ms();
        let mut updates = Vec::new();
        {
            let mut state = self.shared.state.lock().expect("state lock");
            match (change, acting) {
                (Some(VoterChange::Bootstrap(set)), _) => {
                    info!(voters = ?set, "bootstrapping the voter set");
                    updates.push(state.set(voters::VOTERS_KEY, voters::encode(&set), wall));
                }
                (Some(VoterChange::Update(set)), Some(term)) => {
                    info!(voters = ?set, term, "voter set changed");
                    updates.extend(
                        state
                            .set_as_leader(voters::VOTERS_KEY, voters::encode(&set), term, wall)
                            .ok(),
                    );
                }
                _ => {}
            }
            if let Some(term) = acting.filter(|t| Some(*t) != self.acting_term) {
                info!(term, "acting as leader");
                self.acting_term = Some(term);
                updates.extend(
                    state
                        .set_as_leader(LEADER_KEY, me.clone().into_bytes(), term, wall)
                        .ok(),
                );
            }
        }
        for u in updates {
            let fx = self.swim.publish(&u);
            self.effects(fx).await;
        }

        self.shared
            .backlog
            .store(self.swim.backlog().0 as u64, Ordering::Relaxed);
        let mut view = self.shared.election.lock().expect("election lock");
        let leader = self.election.leader().cloned();
        if leader != view.leader {
            if leader.is_some() {
                view.leader_changes += 1;
            }
            *self.shared.leader_since.lock().expect("leader lock") =
                leader.is_some().then(Instant::now);
        }
        *view = ElectionStatus {
            role: Some(self.election.role()),
            term: self.election.term(),
            leader,
            acting: acting.is_some(),
            voters: voters.map(|v| v.into_iter().collect()).unwrap_or_default(),
            leader_changes: view.leader_changes,
            leader_since_secs: None,
        };
    }

    async fn send_election(&self, out: Outbox) {
        if out.is_empty() {
            return;
        }
        let addrs: BTreeMap<String, SocketAddr> = self
            .shared
            .members
            .lock()
            .expect("members lock")
            .values()
            .map(|(id, _)| (id.id.clone(), id.gossip))
            .collect();
        for (to, msg) in out {
            let Some(addr) = addrs.get(&to) else {
                continue; // not reachable now; the election retries on its own
            };
            let payload = (self.shared.me.id.clone(), msg);
            let Ok(wire) = envelope::encode(KIND_ELECTION, &payload, MAX_DATAGRAM) else {
                continue;
            };
            let sealed = self.keyring.seal(&wire, AAD);
            if self.socket.send_to(&sealed, addr).await.is_ok() {
                let c = &self.shared.counters;
                c.sent.fetch_add(1, Ordering::Relaxed);
                c.bytes_sent
                    .fetch_add(sealed.len() as u64, Ordering::Relaxed);
            }
        }
    }

    fn spawn_sync(&self, peer: SocketAddr) {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            if let Err(e) = shared.sync.sync_with(peer).await {
                debug!(%peer, error = %e, "sync with member failed");
            }
        });
    }

    async fn publish_meta(&mut self) {
        let update = self.shared.meta_update();
        let fx = self.swim.publish(&update);
        Box::pin(self.effects(fx)).await;
    }

    async fn send(&self, to: SocketAddr, data: &[u8]) {
        let Ok(wire) = envelope::encode(KIND_SWIM, &data, MAX_DATAGRAM) else {
            warn!(%to, len = data.len(), "gossip message too large; dropped");
            return;
        };
        let sealed = self.keyring.seal(&wire, AAD);
        match self.socket.send_to(&sealed, to).await {
            Ok(_) => {
                let c = &self.shared.counters;
                c.sent.fetch_add(1, Ordering::Relaxed);
                c.bytes_sent
                    .fetch_add(sealed.len() as u64, Ordering::Relaxed);
            }
            Err(e) => debug!(%to, error = %e, "gossip send failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::ClusterKey;

    fn fast() -> MembershipConfig {
        MembershipConfig {
            probe_period: Duration::from_millis(200),
            probe_rtt: Duration::from_millis(100),
            // Far longer than any wait below: a member that disappears within a wait was
            // announced gone, not detected.
            suspect_to_down: Duration::from_secs(30),
            ..MembershipConfig::lan(4)
        }
    }

    async fn mesh(id: &str, key: &ClusterKey, seeds: Vec<SocketAddr>) -> Mesh {
        mesh_with(id, key, seeds, Duration::from_millis(300)).await
    }

    async fn mesh_with(
        id: &str,
        key: &ClusterKey,
        seeds: Vec<SocketAddr>,
        sync_interval: Duration,
    ) -> Mesh {
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        // The gossip address must be known before binding: take a free port first.
        let free = || {
            std::net::UdpSocket::bind(bind)
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (port, sync_port) = (free(), free());
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Mesh::start(MeshConfig {
            me: NodeIdentity {
                id: id.into(),
                gossip: addr,
                sync_port,
                public: None,
                incarnation: 1,
                bump: 0,
            },
            meta: NodeMeta {
                version: format!("test-{id}"),
                public: None,
                started_at: 0,
                draining: false,
            },
            bind: addr,
            sync_interval,
            election: ElectionConfig::default(),
            bootstrap_expect: 3,
            reap_after: Duration::from_secs(600),
            seeds: Box::new(seeds),
            keyring: Keyring::new(vec![key.clone()]).unwrap(),
            membership: fast(),
        })
        .await
        .unwrap()
    }

    async fn wait(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn ids(m: &Mesh) -> Vec<String> {
        m.status().members.into_iter().map(|s| s.id).collect()
    }

    #[tokio::test]
    async fn meshes_converge_strangers_are_rejected_and_leaving_is_immediate() {
        let key = ClusterKey::generate();
        let a = mesh("a", &key, vec![]).await;
        let b = mesh("b", &key, vec![a.local_addr]).await;
        let c = mesh("c", &key, vec![a.local_addr]).await;
        wait("3 members", || {
            [&a, &b, &c].iter().all(|m| m.status().members.len() == 2)
        })
        .await;
        assert_eq!(ids(&b), ["a", "c"]);

        let stranger = mesh(
            "x",
            &ClusterKey::generate(),
            vec![a.local_addr, b.local_addr],
        )
        .await;
        wait("rejected packets", || a.status().packets_rejected_auth > 0).await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        for m in [&a, &b, &c] {
            assert!(!ids(m).contains(&"x".to_string()));
        }
        assert!(stranger.status().members.is_empty());

        c.leave().await;
        wait("c gone", || ids(&a) == ["b"] && ids(&b) == ["a"]).await;
    }

    fn acting(ms: &[&Mesh]) -> Vec<String> {
        ms.iter()
            .filter(|m| m.status().election.acting)
            .map(|m| m.status().me.id)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_acting_leader_voters_follow_members_and_failover() {
        let key = ClusterKey::generate();
        let a = mesh("a", &key, vec![]).await;
        let b = mesh("b", &key, vec![a.local_addr]).await;
        // Two members are below bootstrap_expect (3): nobody stands.
        wait("a and b meet", || a.status().members.len() == 1).await;
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        assert!(acting(&[&a, &b]).is_empty());
        assert!(a.status().election.voters.is_empty());

        let c = mesh("c", &key, vec![a.local_addr]).await;
        wait("a leader acts", || acting(&[&a, &b, &c]).len() == 1).await;
        let leader = acting(&[&a, &b, &c]).remove(0);
        for m in [&a, &b, &c] {
            wait("everyone knows the leader", || {
                m.status().election.leader.as_deref() == Some(leader.as_str())
            })
            .await;
            assert_eq!(m.status().election.voters, ["a", "b", "c"]);
        }
        // The acting leader announced itself in the state, under its term.
        let term = a.status().election.term;
        wait("leader record", || {
            let state = a.state();
            let st = state.lock().unwrap();
            let found = st
                .current_term("cluster/leader")
                .any(|(_, v)| v == leader.as_bytes());
            found
        })
        .await;

        // A fourth member becomes a voter through the leader.
        let d = mesh("d", &key, vec![a.local_addr]).await;
        wait("d votes", || {
            [&a, &b, &c, &d]
                .iter()
                .all(|m| m.status().election.voters.len() == 4)
        })
        .await;

        // The leader leaves: the other three are a majority of four and take over.
        let mut all = vec![a, b, c, d];
        let i = all.iter().position(|m| m.status().me.id == leader).unwrap();
        all.remove(i).leave().await;
        let rest: Vec<&Mesh> = all.iter().collect();
        wait("new leader acts", || {
            let now = acting(&rest);
            now.len() == 1 && now[0] != leader
        })
        .await;
        assert!(rest.iter().all(|m| m.status().election.term > term));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_read_in_a_tight_loop_never_deadlocks_the_driver() {
        // `status` and the driver's election tick both take the members and state locks;
        // taken in opposite orders they deadlocked (seen once in a suite run). Both now take
        // one at a time. Readers hammer `status` while three members elect.
        // A deadlock blocks this test's own thread too: a watchdog turns it into a failure.
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d = done.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(60));
            if !d.load(Ordering::Relaxed) {
                eprintln!("status_read_in_a_tight_loop_never_deadlocks_the_driver: deadlocked");
                std::process::exit(101);
            }
        });
        let key = ClusterKey::generate();
        let a = Arc::new(mesh("a", &key, vec![]).await);
        let b = mesh("b", &key, vec![a.local_addr]).await;
        let c = mesh("c", &key, vec![a.local_addr]).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (a, stop) = (a.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += a.status().members.len() as u64 + 1;
                    }
                    n
                })
            })
            .collect();
        wait("a leader acts", || acting(&[&a, &b, &c]).len() == 1).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
        assert_eq!(acting(&[&a, &b, &c]).len(), 1);
        done.store(true, Ordering::Relaxed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_entry_too_large_to_broadcast_is_pushed_by_sync_at_once() {
        let key = ClusterKey::generate();
        // Periodic anti-entropy an hour apart: only the push on publish can deliver in time.
        let hour = Duration::from_secs(3600);
        let a = mesh_with("a", &key, vec![], hour).await;
        let b = mesh_with("b", &key, vec![a.local_addr], hour).await;
        let c = mesh_with("c", &key, vec![a.local_addr], hour).await;
        let all = [&a, &b, &c];
        wait("a leader acts", || acting(&all).len() == 1).await;
        let leader = acting(&all).remove(0);
        let l = all.iter().find(|m| m.status().me.id == leader).unwrap();
        let big = vec![7u8; 4 * crate::broadcast::MAX_ITEM];
        l.publish_as_leader("cert/big.test", big.clone()).unwrap();
        for m in all {
            wait("the large entry everywhere", || {
                m.state().lock().unwrap().get("cert/big.test") == Some(&big[..])
            })
            .await;
        }
    }
}
