//! Membership (SWIM via foca), encrypted transport, replicated cluster state and leader election. Built in the gossip issue; skeleton for now.
