//! The gossip mesh: membership, encrypted transport, replicated cluster state and leader
//! election. Cores are sans-IO (fed events and a clock, returning what to send) so they can be
//! tested with simulated time, loss and partitions; the node crate drives them with tokio.
//!
//! Built so far: the wire envelope, the cluster keyring, the replicated state and the leader
//! election core (with PreVote and a quorum lease), each tested on its own; the election by a
//! seeded simulation of up to 50 nodes with loss, partitions, crashes and restarts. Still to
//! come (gossip issue): SWIM membership via foca, the UDP and QUIC drivers that carry these
//! messages, the voter set's life cycle, and the wiring into `edgemesh` and `meshctl`.

pub mod election;
pub mod envelope;
pub mod keyring;
pub mod state;

pub use election::{Election, ElectionConfig, ElectionMsg, Role};
pub use envelope::EnvelopeError;
pub use keyring::{ClusterKey, KeyError, Keyring, OpenError};
pub use state::{Applied, ClusterState, Digest, Entry, Fenced, Hlc, NodeId, Update, Version};
