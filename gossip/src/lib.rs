//! The gossip mesh: membership, encrypted transport, replicated cluster state and leader
//! election. Cores are sans-IO (fed events and a clock, returning what to send) so they can be
//! tested with simulated time, loss and partitions; the node crate drives them with tokio.
//!
//! Built so far, each tested on its own: the wire envelope, the cluster keyring, the replicated
//! state, SWIM membership over foca and the leader election core (PreVote, quorum lease);
//! membership and election by seeded simulations of up to 50 nodes with loss, partitions,
//! crashes and restarts. Still to come (gossip issue): state broadcasts on foca, the UDP and
//! QUIC drivers, the voter set's life cycle, and the wiring into `edgemesh` and `meshctl`.

pub mod attest;
pub mod broadcast;
pub mod driver;
pub mod election;
pub mod envelope;
pub mod keyring;
pub mod membership;
pub mod state;
pub mod sync;

pub use driver::{MemberStatus, Mesh, MeshConfig, MeshStatus, NodeMeta};
pub use election::{Election, ElectionConfig, ElectionMsg, Role};
pub use envelope::EnvelopeError;
pub use keyring::{ClusterKey, KeyError, Keyring, OpenError};
pub use state::{Applied, ClusterState, Digest, Entry, Fenced, Hlc, NodeId, Update, Version};
