//! The edgemesh node: configuration, the daemon around the data path, the admin API and the
//! operator CLI's client side. The only crate that knows about the process and AWS.

pub mod acme;
pub mod admin;
pub mod aws;
pub mod certs;
pub mod cluster_config;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod dns;
pub mod drain;
pub mod ecs;
pub mod entrypoint;
pub mod local_ca;
pub mod logging;
pub mod projection;
pub mod route53;
pub mod s3;

/// Wall-clock Unix milliseconds (0 before 1970), the unit of the node's replicated
/// timestamps and status fields.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
