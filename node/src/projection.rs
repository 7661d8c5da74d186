//! The proxy's pools as a projection of the replicated state.
//!
//! The acting leader publishes a pool's endpoints under `pool/<name>` (today through the admin
//! API and `meshctl pool set`; the ECS poller will write the same keys). Every node overlays the
//! entries of the current term on the pools of its configuration, and swaps its proxy table
//! when they change. A pool without an entry keeps its configured endpoints.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use edgemesh_gossip::ClusterState;
use edgemesh_proxy::{EndpointSpec, TableSpec};

pub const POOL_PREFIX: &str = "pool/";

pub fn encode(endpoints: &[(SocketAddr, u32)]) -> Vec<u8> {
    bincode::serde::encode_to_vec(endpoints, bincode::config::standard()).expect("addresses encode")
}

fn decode(bytes: &[u8]) -> Option<Vec<(SocketAddr, u32)>> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .ok()
        .map(|(v, _)| v)
}

/// Pool name -> endpoints, from the leader entries of the current term.
pub fn published(state: &ClusterState) -> BTreeMap<String, Vec<EndpointSpec>> {
    state
        .current_term(POOL_PREFIX)
        .filter_map(|(key, value)| {
            let name = key.strip_prefix(POOL_PREFIX)?.to_string();
            let endpoints = decode(value)?
                .into_iter()
                .map(|(addr, weight)| EndpointSpec { addr, weight })
                .collect();
            Some((name, endpoints))
        })
        .collect()
}

/// The configured table with published pools overlaid.
pub fn project(config: &TableSpec, published: &BTreeMap<String, Vec<EndpointSpec>>) -> TableSpec {
    let mut table = config.clone();
    for pool in &mut table.pools {
        if let Some(endpoints) = published.get(&pool.name) {
            pool.endpoints = endpoints.clone();
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgemesh_proxy::{Balance, PoolSpec};

    #[test]
    fn current_term_entries_override_configured_pools() {
        let config = TableSpec {
            pools: vec![PoolSpec {
                name: "web".into(),
                endpoints: vec![EndpointSpec {
                    addr: "10.0.0.1:80".parse().unwrap(),
                    weight: 1,
                }],
                balance: Balance::RoundRobin,
            }],
            ..TableSpec::default()
        };
        let mut state = ClusterState::new("leader");
        let fresh: SocketAddr = "10.0.0.9:8080".parse().unwrap();
        state
            .set_as_leader("pool/web", encode(&[(fresh, 2)]), 1, 1)
            .unwrap();
        // A pool the configuration does not have is ignored; so is garbage.
        state
            .set_as_leader("pool/ghost", encode(&[(fresh, 1)]), 1, 1)
            .unwrap();
        state
            .set_as_leader("pool/bad", b"\xff".to_vec(), 1, 1)
            .unwrap();
        let table = project(&config, &published(&state));
        assert_eq!(table.pools.len(), 1);
        assert_eq!(
            table.pools[0].endpoints,
            vec![EndpointSpec {
                addr: fresh,
                weight: 2
            }]
        );

        // A newer term without an entry for web: the old term's entry no longer counts.
        state.set_as_leader("other", vec![], 2, 2).unwrap();
        assert_eq!(project(&config, &published(&state)), config);
    }
}
