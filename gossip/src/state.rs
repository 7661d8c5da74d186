//! The replicated cluster state: a key-value map every node converges to.
//!
//! A plain value with no I/O and no clock of its own: callers pass `now_ms`, so tests drive it
//! with simulated time. Small updates travel as [`Update`]s on gossip broadcasts; anti-entropy
//! compares [`Digest`]s and sends what differs ([`ClusterState::newer_than`]).
//!
//! Merge rule (last writer wins, the same on every node whatever the delivery order):
//! entries are ordered by `(term, hlc, writer)`. `term` is 0 for a node's own writes (its
//! metadata) and the leadership term for leader writes (topology, certificates), so a newer
//! leader's write wins even if its clock is behind.
//!
//! Fencing happens on both ends, never in the merge (refusing updates by "the highest term
//! seen so far" would make the result depend on arrival order, and replicas could never
//! agree): a node that has seen a newer term cannot write as leader
//! ([`ClusterState::set_as_leader`]), and readers of leader-owned data take only entries of
//! the current term ([`ClusterState::current_term`]). A deposed leader's late writes are
//! replicated like anything else, and ignored.
//!
//! Deletes are tombstones, dropped by [`ClusterState::gc`] after a TTL. A node away for longer
//! than that TTL must discard its state before syncing, or it could bring deleted entries back;
//! the driver enforces that (it knows when it last synced).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type NodeId = String;

/// Hybrid logical clock value: milliseconds since the epoch in the high 48 bits, a counter in
/// the low 16. Monotonic per node, and never behind any value the node has seen.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Hlc(pub u64);

impl Hlc {
    pub fn physical_ms(self) -> u64 {
        self.0 >> 16
    }

    fn from_ms(ms: u64) -> Hlc {
        Hlc(ms << 16)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    /// Leadership term of a leader write; 0 for a node's own writes.
    pub term: u64,
    pub at: Hlc,
    pub writer: NodeId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub version: Version,
    /// `None` is a tombstone.
    pub value: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub key: String,
    pub entry: Entry,
}

/// What applying an update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The update was newer and is now the entry.
    Changed,
    /// We already had this version or a newer one.
    Stale,
}

/// A leader write refused because a newer term is known: the writer is no longer leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("leader write for term {term} refused: term {current} is current")]
pub struct Fenced {
    pub term: u64,
    pub current: u64,
}

/// Every key with its version: what a node tells a peer during anti-entropy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest(pub Vec<(String, Version)>);

#[derive(Debug)]
pub struct ClusterState {
    me: NodeId,
    clock: Hlc,
    entries: BTreeMap<String, Entry>,
    /// Highest leadership term seen in any write.
    max_term: u64,
    /// Bumped by every change (write, merge, collection): consumers skip work when it has not
    /// moved since they last looked.
    changes: u64,
}

impl ClusterState {
    pub fn new(me: impl Into<NodeId>) -> ClusterState {
        ClusterState {
            me: me.into(),
            clock: Hlc::default(),
            entries: BTreeMap::new(),
            max_term: 0,
            changes: 0,
        }
    }

    fn tick(&mut self, now_ms: u64) -> Hlc {
        self.clock = (Hlc(self.clock.0 + 1)).max(Hlc::from_ms(now_ms));
        self.clock
    }

    fn write(&mut self, key: &str, value: Option<Vec<u8>>, term: u64, now_ms: u64) -> Update {
        let at = self.tick(now_ms);
        let update = Update {
            key: key.to_string(),
            entry: Entry {
                version: Version {
                    term,
                    at,
                    writer: self.me.clone(),
                },
                value,
            },
        };
        self.entries
            .insert(update.key.clone(), update.entry.clone());
        self.changes += 1;
        update
    }

    /// Writes one of this node's own entries. Returns the update to broadcast.
    pub fn set(&mut self, key: &str, value: Vec<u8>, now_ms: u64) -> Update {
        self.write(key, Some(value), 0, now_ms)
    }

    /// Deletes one of this node's own entries (a tombstone that replicates); `None` when there
    /// was nothing to delete.
    pub fn delete(&mut self, key: &str, now_ms: u64) -> Option<Update> {
        self.entries.get(key)?.value.as_ref()?;
        Some(self.write(key, None, 0, now_ms))
    }

    /// A write by the leader of `term`. Refused when a newer term is known: this node is no
    /// longer the leader, whatever it believes.
    pub fn set_as_leader(
        &mut self,
        key: &str,
        value: Vec<u8>,
        term: u64,
        now_ms: u64,
    ) -> Result<Update, Fenced> {
        self.fence(term)?;
        Ok(self.write(key, Some(value), term, now_ms))
    }

    /// A delete by the leader of `term`, fenced like [`ClusterState::set_as_leader`].
    pub fn delete_as_leader(
        &mut self,
        key: &str,
        term: u64,
        now_ms: u64,
    ) -> Result<Option<Update>, Fenced> {
        self.fence(term)?;
        if self.get(key).is_none() {
            return Ok(None);
        }
        Ok(Some(self.write(key, None, term, now_ms)))
    }

    fn fence(&mut self, term: u64) -> Result<(), Fenced> {
        if term == 0 || term < self.max_term {
            return Err(Fenced {
                term,
                current: self.max_term,
            });
        }
        self.max_term = term;
        Ok(())
    }

    /// Merges a peer's update.
    pub fn apply(&mut self, update: Update) -> Applied {
        let v = &update.entry.version;
        // Keep our clock ahead of everything we have seen, so our next write orders after it.
        self.clock = self.clock.max(v.at);
        match self.entries.get(&update.key) {
            Some(cur) if cur.version >= *v => Applied::Stale,
            _ => {
                self.max_term = self.max_term.max(v.term);
                self.entries.insert(update.key, update.entry);
                self.changes += 1;
                Applied::Changed
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries.get(key)?.value.as_deref()
    }

    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// Live entries under `prefix`, in key order.
    pub fn prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        self.entries
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .filter_map(|(k, e)| Some((k.as_str(), e.value.as_deref()?)))
    }

    /// Live leader-owned entries under `prefix` written in the current term: what consumers of
    /// leader data (topology, certificates) read, so a deposed leader's writes are ignored.
    pub fn current_term<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        let term = self.max_term;
        self.entries
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .filter(move |(_, e)| term > 0 && e.version.term == term)
            .filter_map(|(k, e)| Some((k.as_str(), e.value.as_deref()?)))
    }

    /// Live entries under `prefix` written by a leader, of any term: the last good value of
    /// each key survives a leader change until the new leader rewrites or deletes it. A write
    /// of an older term never replaces a newer term's (versions order by term first), and a
    /// deposed leader cannot write once it has seen the newer term (`set_as_leader`).
    pub fn leader_entries<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        self.entries
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .filter(|(_, e)| e.version.term > 0)
            .filter_map(|(k, e)| Some((k.as_str(), e.value.as_deref()?)))
    }

    /// A counter that moves whenever the state changes.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    pub fn max_term(&self) -> u64 {
        self.max_term
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn digest(&self) -> Digest {
        Digest(
            self.entries
                .iter()
                .map(|(k, e)| (k.clone(), e.version.clone()))
                .collect(),
        )
    }

    /// The entries a peer with `theirs` lacks or has older versions of.
    pub fn newer_than(&self, theirs: &Digest) -> Vec<Update> {
        let theirs: BTreeMap<&str, &Version> =
            theirs.0.iter().map(|(k, v)| (k.as_str(), v)).collect();
        self.entries
            .iter()
            .filter(|(k, e)| theirs.get(k.as_str()).is_none_or(|v| **v < e.version))
            .map(|(k, e)| Update {
                key: k.clone(),
                entry: e.clone(),
            })
            .collect()
    }

    /// Drops tombstones older than `ttl_ms`. Returns how many were dropped.
    pub fn gc(&mut self, now_ms: u64, ttl_ms: u64) -> usize {
        let before = self.entries.len();
        let horizon = now_ms.saturating_sub(ttl_ms);
        self.entries
            .retain(|_, e| e.value.is_some() || e.version.at.physical_ms() >= horizon);
        let dropped = before - self.entries.len();
        self.changes += dropped as u64;
        dropped
    }

    /// Every entry (tombstones included) — for comparing replicas in tests and for snapshots.
    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }
}

#[cfg(test)]
mod tests;
