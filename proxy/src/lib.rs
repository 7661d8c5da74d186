//! The edgemesh data path: HTTP/1.1 and HTTP/2 reverse proxy, raw TCP proxy and TLS
//! termination, all driven by a routing snapshot and a certificate store that are swapped in
//! memory. Nothing here knows about gossip, AWS or configuration files: the node builds a
//! [`TableSpec`] and hands it to [`Proxy::apply`].
//!
//! Guarantees: an update (routes, pools, certificates, listeners) never closes an existing
//! connection or fails an in-flight request; a removed endpoint keeps its open TCP streams
//! until one side closes.

mod access_log;
mod alloc;
mod body;
mod first_bytes;
mod h2_idle;
mod health;
mod http;
pub mod metrics;
pub mod pool;
mod proxy_protocol;
pub mod route;
mod server;
#[cfg(target_os = "linux")]
mod splice;
mod table;
mod tcp;
pub mod tls;
mod upstream;
mod workers;

pub use access_log::{AccessLogSpec, LogFormat};
pub use alloc::Mimalloc;
pub use health::{CheckKind, HealthCheckSpec};
pub use metrics::Metrics;
pub use pool::{Balance, EndpointSpec, EndpointStatus, PoolSpec, PoolStatus};
pub use route::{Hsts, RouteSpec};
pub use server::{ListenerKind, ListenerSpec, ListenerStatus, Proxy, ProxySettings, ProxyStatus};
pub use table::{TableSpec, TcpRouteSpec};
pub use tls::{CertEntry, CertStatus, CertStore};
pub use workers::Workers;
