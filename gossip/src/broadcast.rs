//! State updates riding on SWIM traffic: foca disseminates each one a bounded number of times
//! (`max_transmissions`), piggybacked on probes and gossip.
//!
//! A received update is passed on only when it changed this node's state, so dissemination
//! stops once everyone has it. A node's own writes are already applied when they are handed
//! to foca, and are always passed on.

use std::sync::{Arc, Mutex};

use foca::{BroadcastHandler, Invalidates};

use crate::envelope::{self, EnvelopeError};
use crate::membership::NodeIdentity;
use crate::state::{Applied, ClusterState, Update, Version};

pub const KIND_STATE: u8 = 2;
/// A broadcast item must fit in one datagram with room for SWIM's own payload.
pub const MAX_ITEM: usize = 1024;

/// Identifies an update in foca's dissemination backlog: a newer version of a key replaces
/// an older one not yet fully sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateKey {
    key: String,
    version: Version,
}

impl Invalidates for UpdateKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.key == other.key && self.version >= other.version
    }
}

pub struct StateBroadcasts {
    state: Arc<Mutex<ClusterState>>,
}

impl StateBroadcasts {
    pub fn new(state: Arc<Mutex<ClusterState>>) -> StateBroadcasts {
        StateBroadcasts { state }
    }
}

/// Encodes an update as a broadcast item.
pub fn encode(update: &Update) -> Result<Vec<u8>, EnvelopeError> {
    envelope::encode(KIND_STATE, update, MAX_ITEM)
}

impl BroadcastHandler<NodeIdentity> for StateBroadcasts {
    type Key = UpdateKey;
    type Error = EnvelopeError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&NodeIdentity>,
    ) -> Result<Option<UpdateKey>, EnvelopeError> {
        let update: Update = envelope::decode(data, KIND_STATE, MAX_ITEM)?;
        let key = UpdateKey {
            key: update.key.clone(),
            version: update.entry.version.clone(),
        };
        if sender.is_none() {
            return Ok(Some(key));
        }
        let applied = self.state.lock().expect("state lock").apply(update);
        Ok((applied == Applied::Changed).then_some(key))
    }
}
