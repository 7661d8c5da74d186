//! Who votes in leader elections, and how that set follows hosts that come and go.
//!
//! The set lives in the replicated state under [`VOTERS_KEY`]:
//! - **Bootstrap.** Until it exists, nobody stands for election. Once a node sees
//!   `bootstrap_expect` members alive (itself included), has the lowest id among them, and that
//!   view has not changed for a second, it writes them as the first set. Seeds converge in well
//!   under a second, so the nodes that bootstrap see the same members. The remaining risk is the
//!   one Consul's `bootstrap_expect` has: two groups that cannot see each other at first boot
//!   (a partition during the very first start) could each write a set; the merge then keeps one,
//!   but until it does each group could elect a leader. Start a new cluster on a healthy network.
//! - **Changes.** Only the acting leader changes the set, one member per step, as a term-stamped
//!   write: it adds a member that is alive and not yet voting, or removes one that has been down
//!   longer than `reap_after`. One member at a time keeps every majority of the old set and of
//!   the new one overlapping (Raft's single-server change), and a minority side of a partition,
//!   having no acting leader, never shrinks the set to make itself a majority.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::state::ClusterState;

pub const VOTERS_KEY: &str = "cluster/voters";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoterChange {
    /// The first set (written as a node's own entry: there is no leader yet).
    Bootstrap(BTreeSet<String>),
    /// A new set written by the acting leader.
    Update(BTreeSet<String>),
}

pub fn read(state: &ClusterState) -> Option<BTreeSet<String>> {
    let bytes = state.get(VOTERS_KEY)?;
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .ok()
        .map(|(v, _)| v)
}

pub fn encode(voters: &BTreeSet<String>) -> Vec<u8> {
    bincode::serde::encode_to_vec(voters, bincode::config::standard())
        .expect("a set of strings encodes")
}

/// What (if anything) this node should write now.
///
/// `alive`: members seen alive, this node included. `down_for`: how long each member that is
/// down now has been down.
pub fn plan(
    me: &str,
    voters: Option<&BTreeSet<String>>,
    alive: &BTreeSet<String>,
    down_for: &BTreeMap<String, Duration>,
    acting: bool,
    bootstrap_expect: usize,
    reap_after: Duration,
) -> Option<VoterChange> {
    match voters {
        None => (alive.len() >= bootstrap_expect.max(1)
            && alive.first().map(String::as_str) == Some(me))
        .then(|| VoterChange::Bootstrap(alive.clone())),
        Some(_) if !acting => None,
        Some(v) => {
            if let Some(new) = alive.iter().find(|m| !v.contains(*m)) {
                let mut next = v.clone();
                next.insert(new.clone());
                return Some(VoterChange::Update(next));
            }
            let gone = v
                .iter()
                .find(|m| *m != me && down_for.get(*m).is_some_and(|d| *d >= reap_after))?;
            let mut next = v.clone();
            next.remove(gone);
            Some(VoterChange::Update(next))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    const REAP: Duration = Duration::from_secs(600);

    #[test]
    fn bootstrap_waits_for_the_expected_count_and_the_lowest_id_writes() {
        let none = BTreeMap::new();
        assert_eq!(
            plan("a", None, &set(&["a", "b"]), &none, false, 3, REAP),
            None
        );
        assert_eq!(
            plan("a", None, &set(&["a", "b", "c"]), &none, false, 3, REAP),
            Some(VoterChange::Bootstrap(set(&["a", "b", "c"])))
        );
        assert_eq!(
            plan("b", None, &set(&["a", "b", "c"]), &none, false, 3, REAP),
            None
        );
    }

    #[test]
    fn only_the_acting_leader_changes_the_set_one_member_at_a_time() {
        let v = set(&["a", "b", "c"]);
        let alive = set(&["a", "b", "c", "d", "e"]);
        let none = BTreeMap::new();
        assert_eq!(plan("a", Some(&v), &alive, &none, false, 3, REAP), None);
        assert_eq!(
            plan("a", Some(&v), &alive, &none, true, 3, REAP),
            Some(VoterChange::Update(set(&["a", "b", "c", "d"])))
        );
        // Down, but not for long enough: kept.
        let alive = set(&["a", "b"]);
        let mut down = BTreeMap::new();
        down.insert("c".to_string(), Duration::from_secs(60));
        assert_eq!(plan("a", Some(&v), &alive, &down, true, 3, REAP), None);
        down.insert("c".to_string(), REAP);
        assert_eq!(
            plan("a", Some(&v), &alive, &down, true, 3, REAP),
            Some(VoterChange::Update(set(&["a", "b"])))
        );
    }
}
