//! The gossip mesh: membership, encrypted transport, replicated cluster state and leader
//! election. Cores are sans-IO (fed events and a clock, returning what to send) so they can be
//! tested with simulated time, loss and partitions; the node crate drives them with tokio.
//!
//! Modules: `envelope` (wire format), `keyring` (sealing), `state` (replicated map), `broadcast`
//! (state updates on SWIM), `membership` (foca), `election` (terms, PreVote, quorum lease),
//! `voters` (who votes, and how that set changes), `attest` and `sync` (QUIC anti-entropy with
//! cluster-key authentication), and `driver` (the tokio task that runs them on one UDP socket).

pub mod attest;
pub mod broadcast;
pub mod driver;
pub mod election;
pub mod envelope;
pub mod keyring;
pub mod membership;
pub mod state;
pub mod sync;
#[cfg(test)]
mod testing;
pub mod voters;

pub use driver::{
    ElectionStatus, MemberStatus, Mesh, MeshConfig, MeshStatus, NodeMeta, NotLeader, SeedSource,
};
pub use election::{Election, ElectionConfig, ElectionMsg, Role};
pub use envelope::EnvelopeError;
pub use keyring::{ClusterKey, KeyError, Keyring, OpenError};
pub use state::{Applied, ClusterState, Digest, Entry, Fenced, Hlc, NodeId, Update, Version};
