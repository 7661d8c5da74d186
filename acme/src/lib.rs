//! ACME issuance for edgemesh: an account, orders with HTTP-01 challenges published through
//! a [`ChallengeStore`] (the node puts them in the replicated cluster state, so any node can
//! answer the validator) or DNS-01 records through a [`DnsSolver`], renewal information and
//! the renewal schedule.
//!
//! The I/O with the CA goes through instant-acme; what decides *when* (renewal windows,
//! back-off) is plain code in [`renewal`], driven by a clock, and tested with simulated time.

mod client;
pub mod issue;
pub mod renewal;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::{cert_id, Acme, RenewalWindow};
pub use issue::{
    issue, open_account, resume, AcmeError, ChallengeStore, DirectoryConfig, DnsSolver, Issued,
    NoDns, OrderSpec,
};
pub use renewal::{renew_at, Due, Failure, Schedule, Validity};
