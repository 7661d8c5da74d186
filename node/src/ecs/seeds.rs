//! Seeds from ECS: the container instance addresses of the other tasks of this node's own
//! (DAEMON) service, so an operator need not list seeds. Looked up while the node has not
//! joined anyone, at most every `every`; the gossip driver asks for seeds at each join attempt
//! and gets the last answer (plus the static seeds).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use super::api::{ApiError, EcsApi, DESCRIBE_BATCH};

/// The siblings' addresses of `service`: every RUNNING task's container instance address.
pub async fn sibling_addresses<A: EcsApi>(api: &A, service: &str) -> Result<Vec<IpAddr>, ApiError> {
    let arns = api.list_tasks(Some(service)).await?;
    let mut instances = BTreeSet::new();
    for batch in arns.chunks(DESCRIBE_BATCH) {
        for t in api.describe_tasks(batch).await? {
            if t.routable() {
                instances.extend(t.container_instance);
            }
        }
    }
    let instances: Vec<String> = instances.into_iter().collect();
    let mut ids = Vec::new();
    for batch in instances.chunks(DESCRIBE_BATCH) {
        ids.extend(api.describe_container_instances(batch).await?.into_values());
    }
    let mut ips = Vec::new();
    for batch in ids.chunks(DESCRIBE_BATCH) {
        ips.extend(api.instance_addresses(batch).await?.into_values());
    }
    ips.sort_unstable();
    ips.dedup();
    Ok(ips)
}

/// The seeds the gossip driver reads: static ones plus the last ECS answer.
#[derive(Clone, Default)]
pub struct SharedSeeds {
    pub fixed: Vec<SocketAddr>,
    pub found: Arc<Mutex<Vec<SocketAddr>>>,
}

impl edgemesh_gossip::SeedSource for SharedSeeds {
    fn seeds(&mut self) -> Vec<SocketAddr> {
        let mut all = self.fixed.clone();
        all.extend(self.found.lock().expect("seeds lock").iter().copied());
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// Looks the siblings up while `joined` says the node is alone; `me` is left out. Every
/// sibling listens on the same gossip port (one configuration for the DAEMON service).
pub async fn run<A: EcsApi>(
    api: A,
    service: String,
    me: SocketAddr,
    found: Arc<Mutex<Vec<SocketAddr>>>,
    joined: impl Fn() -> bool,
    every: Duration,
) {
    let mut backoff = super::poll::Backoff::new(every);
    loop {
        let delay = if joined() {
            every
        } else {
            match sibling_addresses(&api, &service).await {
                Ok(ips) => {
                    let seeds: Vec<SocketAddr> = ips
                        .into_iter()
                        .filter(|ip| *ip != me.ip())
                        .map(|ip| SocketAddr::new(ip, me.port()))
                        .collect();
                    info!(service = %service, seeds = ?seeds, "seeds from ECS");
                    *found.lock().expect("seeds lock") = seeds;
                    backoff.next(true, 0.0)
                }
                Err(e) => {
                    let d = backoff.next(false, fastrand::f64());
                    warn!(service = %service, call = e.call, error = %e.message, retry_in_ms = d.as_millis() as u64,
                        "seeds from ECS failed");
                    d
                }
            }
        };
        tokio::time::sleep(delay).await;
    }
}
