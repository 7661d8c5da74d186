//! SWIM membership through foca: who is in the mesh, who is suspect, who is down.
//!
//! foca is already sans-IO; this module supplies what it leaves to us: the node identity, the
//! codec (bincode, as every edgemesh wire format), configuration from our settings, and a
//! clock-driven wrapper ([`Membership`]) whose effects (datagrams to send, timers to arm,
//! members that came up or went down) a driver or a simulation carries out.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroU8, NonZeroUsize};
use std::time::Duration;

use bytes::{Buf, BufMut};
use foca::{
    AccumulatingRuntime, Codec, Foca, Header, Identity, Incarnation, Member, Message,
    OwnedNotification, State, Timer,
};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use std::sync::{Arc, Mutex};

use crate::broadcast::{self, StateBroadcasts};
use crate::state::{ClusterState, NodeId, Update};

/// Who a member is. foca tells members apart by gossip address (`Addr`); a node restarted on
/// the same address comes back with a higher `incarnation` (its start time) and replaces its
/// previous self.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub id: NodeId,
    pub gossip: SocketAddr,
    /// UDP port of the QUIC sync endpoint, on the gossip address's IP.
    pub sync_port: u16,
    /// The address clients reach (what the DNS record holds), when known.
    pub public: Option<IpAddr>,
    pub incarnation: u64,
    /// Raised when the cluster declared this identity down although it was alive, so it can
    /// rejoin as a fresh identity.
    pub bump: u16,
}

impl NodeIdentity {
    /// A placeholder for a seed known only by address: foca accepts an announce addressed to
    /// any identity with the receiver's address.
    pub fn seed(gossip: SocketAddr) -> NodeIdentity {
        NodeIdentity {
            id: String::new(),
            gossip,
            sync_port: 0,
            public: None,
            incarnation: 0,
            bump: 0,
        }
    }
}

impl NodeIdentity {
    pub fn sync_addr(&self) -> SocketAddr {
        SocketAddr::new(self.gossip.ip(), self.sync_port)
    }
}

impl Identity for NodeIdentity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(NodeIdentity {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.incarnation, self.bump) > (adversary.incarnation, adversary.bump)
    }
}

/// foca's headers and members as bincode 2 (standard config, bounded).
#[derive(Debug, Default, Clone, Copy)]
pub struct BincodeCodec;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encode: {0}")]
    Encode(String),
    #[error("decode: {0}")]
    Decode(String),
    #[error("no room: {need} bytes needed, {left} left")]
    NoRoom { need: usize, left: usize },
}

const CODEC_LIMIT: usize = 64 * 1024;

fn cfg() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<CODEC_LIMIT>()
}

fn put<T: Serialize>(value: &T, mut buf: impl BufMut) -> Result<(), CodecError> {
    let bytes = bincode::serde::encode_to_vec(value, cfg())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    // foca requires a buffer left untouched when the item does not fit.
    if buf.remaining_mut() < bytes.len() {
        return Err(CodecError::NoRoom {
            need: bytes.len(),
            left: buf.remaining_mut(),
        });
    }
    buf.put_slice(&bytes);
    Ok(())
}

fn take<T: serde::de::DeserializeOwned>(mut buf: impl Buf) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(buf.chunk(), cfg())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    buf.advance(used);
    Ok(value)
}

impl Codec<NodeIdentity> for BincodeCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<NodeIdentity>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        put(header, buf)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<NodeIdentity>, CodecError> {
        take(buf)
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeIdentity>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        put(member, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<NodeIdentity>, CodecError> {
        take(buf)
    }
}

/// Protocol parameters; `lan(n)` gives edgemesh's defaults for about `n` members.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    pub probe_period: Duration,
    pub probe_rtt: Duration,
    pub indirect_probes: usize,
    /// How long a suspect has to refute before it is declared down.
    pub suspect_to_down: Duration,
    pub max_packet_size: usize,
    /// How many times each member passes on one broadcast (`retransmit_mult * log10(n + 1)`).
    pub max_transmissions: u8,
    /// Expected cluster size, which scales dissemination and suspicion.
    pub cluster_size: u32,
    /// How often two members this node holds down are sent an announce, so the two sides of
    /// a healed partition find each other again (foca's LAN profile: every 65 s).
    pub announce_to_down: Duration,
}

impl MembershipConfig {
    /// edgemesh's defaults for about `cluster_size` members: memberlist's LAN profile with a
    /// faster probe (400 ms, RTT bound 150 ms instead of 1 s / 500 ms), a 1 s suspicion
    /// timeout instead of 4 x log10(n) periods, 5 indirect probes instead of 3 and 6 x
    /// log10(n + 1) retransmissions instead of 4. In the seeded simulation (bench/gossip.sh)
    /// that detects a dead node in 2.0 s p50 / 2.2 s p99 at 50 members (memberlist's profile:
    /// 9.4 s), for about 550 B/s per member at rest. A 1 s suspicion is short, so a suspect
    /// must hear of it and answer fast: with [`Membership`]'s direct suspicion notices, no
    /// live member was declared down in 200 simulated minutes at 5 members and 20% loss, nor
    /// at 20 or 50 members (BENCHMARKS.md). Edge hosts share a VPC: round trips are about a
    /// millisecond, so 150 ms leaves a wide margin for a busy host.
    pub fn lan(cluster_size: u32) -> MembershipConfig {
        let c = foca::Config::new_lan(NonZeroU32::new(cluster_size.max(1)).expect("max(1)"));
        MembershipConfig {
            probe_period: Duration::from_millis(400),
            probe_rtt: Duration::from_millis(150),
            indirect_probes: 5,
            suspect_to_down: Duration::from_millis(1_000),
            max_packet_size: c.max_packet_size.get(),
            max_transmissions: max_transmissions(cluster_size, RETRANSMIT_MULT),
            cluster_size: cluster_size.max(1),
            // A healed 3/2 partition took 52 s to rejoin with 65 s (chaos tests); the cost
            // is two small packets per period, only while some member is down.
            announce_to_down: Duration::from_secs(3),
        }
    }

    /// memberlist's LAN defaults (1 s probe, 500 ms RTT, suspicion 4 x log10(n) periods,
    /// 3 indirect probes, 4 x log10(n + 1) retransmissions): the comparison in the benchmarks.
    pub fn memberlist_lan(cluster_size: u32) -> MembershipConfig {
        let c = foca::Config::new_lan(NonZeroU32::new(cluster_size.max(1)).expect("max(1)"));
        MembershipConfig {
            probe_period: c.probe_period,
            probe_rtt: c.probe_rtt,
            indirect_probes: c.num_indirect_probes.get(),
            suspect_to_down: c.suspect_to_down_after,
            max_packet_size: c.max_packet_size.get(),
            max_transmissions: c.max_transmissions.get(),
            cluster_size: cluster_size.max(1),
            announce_to_down: c
                .periodic_announce_to_down_members
                .as_ref()
                .map_or(Duration::from_secs(65), |p| p.frequency),
        }
    }

    fn to_foca(&self) -> foca::Config {
        let mut c =
            foca::Config::new_lan(NonZeroU32::new(self.cluster_size.max(1)).expect("max(1)"));
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_rtt;
        c.num_indirect_probes = NonZeroUsize::new(self.indirect_probes.max(1)).expect("max(1)");
        c.suspect_to_down_after = self.suspect_to_down;
        c.max_packet_size = NonZeroUsize::new(self.max_packet_size.max(512)).expect("max(512)");
        c.max_transmissions = NonZeroU8::new(self.max_transmissions.max(1)).expect("max(1)");
        c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: self.announce_to_down,
            num_members: NonZeroUsize::new(2).expect("2"),
        });
        c
    }
}

/// memberlist uses 4. Each member that misses every copy of an update waits for anti-entropy
/// (30 s); with `m * log10(n + 1)` copies per holder sent to random members, that happens to
/// a given member with probability about exp(-m * log10(n + 1)) = (n + 1)^(-0.43 m) without
/// loss: 6 instead of 4 makes it about 50 times rarer at 100 members, for 50% more copies of
/// each update (and nothing at rest).
const RETRANSMIT_MULT: f64 = 6.0;

fn max_transmissions(cluster_size: u32, mult: f64) -> u8 {
    let copies = (f64::from(cluster_size.max(1)) + 1.0).log10() * mult;
    copies.ceil().clamp(1.0, 255.0) as u8
}

/// A timer this late means the process was stalled, not that the timer was jittery (tokio's
/// are late by a millisecond or two).
const STALL: Duration = Duration::from_millis(100);

/// A suspicion timer as foca arms it: the suspect, its incarnation, and our timer token.
type SuspicionTimer = (NodeIdentity, Incarnation, foca::TimerToken);

fn suspicion_timer(t: &Timer<NodeIdentity>) -> Option<SuspicionTimer> {
    match t {
        Timer::ChangeSuspectToDown {
            member_id,
            incarnation,
            token,
        } => Some((member_id.clone(), *incarnation, *token)),
        _ => None,
    }
}

/// What the driver must do after a call into [`Membership`].
#[derive(Debug, Default)]
pub struct Effects {
    pub send: Vec<(NodeIdentity, Vec<u8>)>,
    /// Feed each back through [`Membership::timer`] after its delay.
    pub timers: Vec<(Duration, Timer<NodeIdentity>)>,
    pub up: Vec<NodeIdentity>,
    pub down: Vec<NodeIdentity>,
    /// A member took a new identity (restart, or refuting a false down): same node, still up.
    pub renamed: Vec<(NodeIdentity, NodeIdentity)>,
}

#[derive(Debug, thiserror::Error)]
#[error("membership: {0}")]
pub struct MembershipError(String);

type Swim = Foca<NodeIdentity, BincodeCodec, SmallRng, StateBroadcasts>;

pub struct Membership {
    foca: Swim,
    rt: AccumulatingRuntime<NodeIdentity>,
    /// Suspicions this node has told their subject about in this probe period
    /// (see [`Membership::tell_suspects`]).
    told: HashSet<(NodeIdentity, Incarnation)>,
    /// Time this process was stalled, in all (see [`Membership::stalled`]).
    stalled: Duration,
    /// Pending suspicion timers, with `stalled` when each was armed (or last extended).
    suspicions: HashMap<SuspicionTimer, Duration>,
    suspect_to_down: Duration,
}

impl Membership {
    pub fn new(me: NodeIdentity, config: &MembershipConfig, seed: u64) -> Membership {
        let state = Arc::new(Mutex::new(ClusterState::new(me.id.clone())));
        Membership::with_state(me, config, seed, state)
    }

    /// Membership whose custom broadcasts carry updates of `state`.
    pub fn with_state(
        me: NodeIdentity,
        config: &MembershipConfig,
        seed: u64,
        state: Arc<Mutex<ClusterState>>,
    ) -> Membership {
        Membership {
            foca: Foca::with_custom_broadcast(
                me,
                config.to_foca(),
                SmallRng::seed_from_u64(seed),
                BincodeCodec,
                StateBroadcasts::new(state),
            ),
            rt: AccumulatingRuntime::new(),
            told: HashSet::new(),
            stalled: Duration::ZERO,
            suspicions: HashMap::new(),
            suspect_to_down: config.suspect_to_down,
        }
    }

    /// Disseminates an update this node made (already applied to its state).
    pub fn publish(&mut self, update: &Update) -> Result<Effects, MembershipError> {
        let item = broadcast::encode(update).map_err(|e| MembershipError(e.to_string()))?;
        self.foca
            .add_broadcast(&item)
            .map_err(|e| MembershipError(e.to_string()))?;
        let r = self.foca.broadcast(&mut self.rt);
        self.finish(r)
    }

    pub fn me(&self) -> &NodeIdentity {
        self.foca.identity()
    }

    /// Asks a seed (known by address only) to let us in.
    pub fn join(&mut self, seed: SocketAddr) -> Result<Effects, MembershipError> {
        let r = self.foca.announce(NodeIdentity::seed(seed), &mut self.rt);
        self.finish(r)
    }

    /// A datagram from the network (already authenticated and opened).
    pub fn datagram(&mut self, data: &[u8]) -> Result<Effects, MembershipError> {
        let accuser = self.suspected_by(data);
        let mut r = self.foca.handle_data(data, &mut self.rt);
        if let (Ok(()), Some(accuser)) = (&r, accuser) {
            // foca refutes a suspicion of us by raising our incarnation and spreading that
            // as a broadcast, to random members; the one that suspects us may not be among
            // them before its timeout. Any message carries our incarnation in its header, so
            // a direct one to the sender refutes the suspicion where it was raised.
            tracing::debug!(by = %accuser.id, "suspected; answering the accuser");
            r = self.foca.announce(accuser, &mut self.rt);
        }
        self.finish(r)
    }

    /// The sender of `data` when it says that we are suspect.
    fn suspected_by(&self, data: &[u8]) -> Option<NodeIdentity> {
        let mut buf = data;
        let header = BincodeCodec.decode_header(&mut buf).ok()?;
        if header.message == Message::Broadcast || buf.remaining() < 2 {
            return None;
        }
        let me = self.foca.identity();
        for _ in 0..buf.get_u16() {
            let m = BincodeCodec.decode_member(&mut buf).ok()?;
            if m.id() == me && m.state() == State::Suspect {
                return Some(header.src);
            }
        }
        None
    }

    /// This process was stalled for `d`: not running (a paused or starved host, a blocked
    /// runtime) while its timers came due. The driver tells from how late its first timer
    /// fired after the stall.
    ///
    /// Suspicions that were pending meanwhile lost that much of their window: the suspect
    /// could not refute them here, and when the stall hit the whole host it could not answer
    /// at all. Each is given the time back before it can expire (Lifeguard makes the same
    /// point with its local health multiplier). In the seeded simulation at 20% loss with a
    /// 1 s stall of the whole mesh every 5 s, 40 minutes declared a live member down 84 times
    /// without this and never with it.
    pub fn stalled(&mut self, d: Duration) {
        if d >= STALL {
            tracing::debug!(
                stalled_ms = d.as_millis() as u64,
                "stalled; suspicions extended"
            );
            self.stalled += d;
        }
    }

    /// A timer armed by an earlier [`Effects`] fired.
    pub fn timer(&mut self, t: Timer<NodeIdentity>) -> Result<Effects, MembershipError> {
        if let Some(key) = suspicion_timer(&t) {
            if let Some(armed) = self.suspicions.remove(&key) {
                // At most a whole window back: a host that slept for an hour must not keep
                // a dead member suspect for another hour.
                let lost = (self.stalled - armed).min(self.suspect_to_down);
                if !lost.is_zero() {
                    self.suspicions.insert(key, self.stalled);
                    let mut fx = Effects::default();
                    fx.timers.push((lost, t));
                    return Ok(fx);
                }
            }
        }
        if matches!(t, Timer::ProbeRandomMember(_)) {
            // A new probe period: suspects still pending are told again (once per period).
            self.told.clear();
        }
        let r = self.foca.handle_timer(t, &mut self.rt);
        self.finish(r)
    }

    /// Tells the others we are leaving, so they drop us at once.
    pub fn leave(&mut self) -> Result<Effects, MembershipError> {
        let r = self.foca.leave_cluster(&mut self.rt);
        self.finish(r)
    }

    /// State updates still being disseminated, and membership updates likewise.
    pub fn backlog(&self) -> (usize, usize) {
        (
            self.foca.custom_broadcast_backlog(),
            self.foca.updates_backlog(),
        )
    }

    /// Members this node considers alive (not counting itself).
    pub fn members(&self) -> impl Iterator<Item = &NodeIdentity> {
        self.foca.iter_members().map(|m| m.id())
    }

    fn finish(&mut self, r: Result<(), foca::Error>) -> Result<Effects, MembershipError> {
        let mut fx = Effects::default();
        let me = self.foca.identity().gossip;
        while let Some((to, data)) = self.rt.to_send() {
            // foca may relay a probe to a previous identity of ours (same address) after we
            // rejoined under a new one; we would only refuse it on arrival.
            if to.gossip != me {
                fx.send.push((to, data.to_vec()));
            }
        }
        self.tell_suspects(&mut fx);
        while let Some(t) = self.rt.to_schedule() {
            if let Some(key) = suspicion_timer(&t.1) {
                // foca arms the same suspicion again when its subject fails another probe.
                // The first timer decides (the subject is down when it fires, unless it
                // refuted); a second, armed later, could only fire before it once the first
                // was extended, and would undo the extension.
                if self.suspicions.contains_key(&key) {
                    continue;
                }
                self.suspicions.insert(key, self.stalled);
            }
            fx.timers.push(t);
        }
        while let Some(n) = self.rt.to_notify() {
            match n {
                OwnedNotification::MemberUp(id) => fx.up.push(id),
                OwnedNotification::MemberDown(id) => fx.down.push(id),
                OwnedNotification::Rename(old, new) => fx.renamed.push((old, new)),
                _ => {}
            }
        }
        r.map(|_| fx).map_err(|e| MembershipError(e.to_string()))
    }

    /// Tells each member this node holds suspect that it is suspected, once per probe period
    /// while the suspicion lasts.
    ///
    /// foca only spreads a suspicion as a broadcast: `max_transmissions` copies per holder,
    /// each to a random member. In a small mesh most copies go to members that already know,
    /// and under loss the suspect can miss every one, never refute, and be declared down
    /// although it is alive: 64 of 500 simulated minutes had a false "down" at 5 members and
    /// 20% loss. Sending the suspicion straight to its subject (Lifeguard's "buddy system";
    /// memberlist does the same) gives it a copy from every member that knows, every probe
    /// period, and [`Membership::datagram`] answers the sender directly. The notice is an
    /// ordinary foca datagram: a `Gossip` message whose only update is the suspicion, so the
    /// receiver's foca refutes it as it would any other copy.
    fn tell_suspects(&mut self, fx: &mut Effects) {
        let suspects: Vec<(NodeIdentity, Incarnation)> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == State::Suspect)
            .map(|m| (m.id().clone(), m.incarnation()))
            .collect();
        self.told.retain(|t| suspects.contains(t));
        for (id, incarnation) in suspects {
            if !self.told.insert((id.clone(), incarnation)) {
                continue;
            }
            if let Some(data) = self.suspicion_notice(&id, incarnation) {
                tracing::debug!(member = %id.id, incarnation, "holding suspect; telling it");
                fx.send.push((id, data));
            }
        }
    }

    fn suspicion_notice(&self, to: &NodeIdentity, incarnation: Incarnation) -> Option<Vec<u8>> {
        let header = Header {
            src: self.foca.identity().clone(),
            // A member that knows us holds our incarnation at 0 or higher, and takes the
            // header's as news only when it is higher: the notice says nothing about us.
            src_incarnation: 0,
            dst: to.clone(),
            message: Message::Gossip,
        };
        let mut buf = Vec::with_capacity(256);
        BincodeCodec.encode_header(&header, &mut buf).ok()?;
        // foca's layout after the header: the number of updates (u16, big endian), then each.
        buf.put_u16(1);
        let suspicion = Member::new(to.clone(), incarnation, State::Suspect);
        BincodeCodec.encode_member(&suspicion, &mut buf).ok()?;
        Some(buf)
    }
}

#[cfg(test)]
mod tests;
