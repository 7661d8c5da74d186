//! The gossip mesh: membership, encrypted transport, replicated cluster state and leader
//! election. Cores are sans-IO (fed events and a clock, returning what to send) so they can be
//! tested with simulated time, loss and partitions; the node crate drives them with tokio.
//!
//! Built so far: the wire envelope, the cluster keyring and the replicated state. Still to
//! come (gossip issue): SWIM membership via foca, the UDP and QUIC drivers, leader election.

pub mod envelope;
pub mod keyring;
pub mod state;

pub use envelope::EnvelopeError;
pub use keyring::{ClusterKey, KeyError, Keyring, OpenError};
pub use state::{Applied, ClusterState, Digest, Entry, Fenced, Hlc, NodeId, Update, Version};
