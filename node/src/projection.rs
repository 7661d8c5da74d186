//! The proxy's pools as a projection of the replicated state.
//!
//! The acting leader publishes a pool's endpoints under `pool/<name>` (through the admin API
//! and `meshctl pool set`) and each ECS service's endpoints under `ecs/svc/<service>` (the
//! poller). Every node overlays them on the pools of its configuration, and swaps its proxy
//! table when they change. A pool without an entry keeps its configured endpoints; an entry
//! outlives the leader that wrote it (keep the last good state) until the next leader rewrites
//! it. `pool/` entries win over ECS for the same pool (an operator's override).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use edgemesh_gossip::ClusterState;
use edgemesh_proxy::{
    EndpointSpec, ListenerKind, ListenerSpec, PoolSpec, RouteSpec, TableSpec, TcpRouteSpec,
};

use crate::ecs::model::{self, EcsTarget, ServiceTopology};
use crate::ecs::SERVICE_PREFIX;

pub const POOL_PREFIX: &str = "pool/";

pub fn encode(endpoints: &[(SocketAddr, u32)]) -> Vec<u8> {
    bincode::serde::encode_to_vec(endpoints, bincode::config::standard()).expect("addresses encode")
}

fn decode(bytes: &[u8]) -> Option<Vec<(SocketAddr, u32)>> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .ok()
        .map(|(v, _)| v)
}

/// Pool name -> endpoints, from the leader's entries: ECS services for the pools that name
/// one (`targets`), then `pool/<name>` overrides. A target that does not pick one port per
/// task is skipped (its pool keeps what it has) and reported by the leader's status.
pub fn published(
    state: &ClusterState,
    targets: &BTreeMap<String, EcsTarget>,
) -> BTreeMap<String, Vec<EndpointSpec>> {
    let mut out = BTreeMap::new();
    for (pool, target) in targets {
        let key = format!("{SERVICE_PREFIX}{}", target.service);
        let Some(topo) = state
            .leader_entries(&key)
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| model::decode::<ServiceTopology>(v))
        else {
            continue;
        };
        if let Ok(addrs) = target.select(&topo) {
            let endpoints = addrs
                .into_iter()
                .map(|addr| EndpointSpec { addr, weight: 1 })
                .collect();
            out.insert(pool.clone(), endpoints);
        }
    }
    for (key, value) in state.leader_entries(POOL_PREFIX) {
        let (Some(name), Some(v)) = (key.strip_prefix(POOL_PREFIX), decode(value)) else {
            continue;
        };
        let endpoints = v
            .into_iter()
            .map(|(addr, weight)| EndpointSpec { addr, weight })
            .collect();
        out.insert(name.to_string(), endpoints);
    }
    out
}

/// Routes and pools declared by ECS docker labels, and why some were not taken.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelTable {
    pub routes: Vec<RouteSpec>,
    pub pools: Vec<PoolSpec>,
    /// TCP listeners (`edgemesh.tcp.port`) and their routes.
    pub listeners: Vec<ListenerSpec>,
    pub tcp_routes: Vec<TcpRouteSpec>,
    /// Hosts of the label routes that want TLS: they get certificates as the configuration's
    /// `tls = true` hosts do.
    pub tls_hosts: Vec<String>,
    pub conflicts: Vec<String>,
}

/// The routes the services' docker labels declare (pools named `ecs:<service>`). The
/// configuration wins: a label route whose host and path the configuration already routes is
/// left out and reported, as is a second service claiming a host and path.
pub fn label_routes(
    state: &ClusterState,
    config: &TableSpec,
    listeners: &[ListenerSpec],
    tcp_ip: IpAddr,
) -> LabelTable {
    let mut out = LabelTable::default();
    let mut ports: BTreeMap<u16, String> = listeners
        .iter()
        .map(|l| (l.addr.port(), format!("listener {}", l.name)))
        .collect();
    let mut taken: BTreeMap<(String, String), String> = BTreeMap::new();
    for r in &config.routes {
        for h in &r.hosts {
            taken.insert(
                (h.clone(), r.path_prefix.clone()),
                "the configuration".into(),
            );
        }
    }
    for (key, value) in state.leader_entries(SERVICE_PREFIX) {
        let service = &key[SERVICE_PREFIX.len()..];
        let Some(route) = model::decode::<ServiceTopology>(value)
            .and_then(|t| Some((t.label_route(service)?, t)))
        else {
            continue;
        };
        let (route, topo) = route;
        let addrs = match route.target.select(&topo) {
            Ok(a) => a,
            Err(e) => {
                out.conflicts
                    .push(format!("labels of service {service}: {e}"));
                continue;
            }
        };
        let pool = format!("ecs:{service}");
        let mut used = false;
        if let Some(port) = route.tcp_port {
            match ports.get(&port) {
                Some(owner) => out.conflicts.push(format!(
                    "labels of service {service}: TCP port {port} is already used by {owner}; ignored"
                )),
                None => {
                    ports.insert(port, format!("service {service}'s labels"));
                    out.listeners.push(ListenerSpec {
                        name: pool.clone(),
                        addr: SocketAddr::new(tcp_ip, port),
                        kind: ListenerKind::Tcp {
                            idle_timeout_ms: None,
                        },
                        accept_proxy_protocol: false,
                    });
                    out.tcp_routes.push(TcpRouteSpec {
                        listener: pool.clone(),
                        pool: pool.clone(),
                        send_proxy_protocol: false,
                    });
                    used = true;
                }
            }
        }
        let mut hosts = Vec::new();
        for h in &route.hosts {
            let h = match crate::config::check_host(h) {
                Ok(h) => h,
                Err(e) => {
                    out.conflicts
                        .push(format!("labels of service {service}: {e}; ignored"));
                    continue;
                }
            };
            match taken.get(&(h.clone(), route.path_prefix.clone())) {
                Some(owner) => out.conflicts.push(format!(
                    "labels of service {service}: {h}{} is already routed by {owner}; ignored",
                    route.path_prefix
                )),
                None => {
                    taken.insert(
                        (h.clone(), route.path_prefix.clone()),
                        format!("service {service}'s labels"),
                    );
                    if route.tls && h != "*" && !out.tls_hosts.contains(&h) {
                        out.tls_hosts.push(h.clone());
                    }
                    hosts.push(h);
                }
            }
        }
        if !hosts.is_empty() {
            out.routes.push(RouteSpec {
                hosts,
                path_prefix: route.path_prefix,
                pool: pool.clone(),
                redirect_https: route.tls,
                ..RouteSpec::default()
            });
            used = true;
        }
        if !used {
            continue;
        }
        out.pools.push(PoolSpec {
            name: pool,
            endpoints: addrs
                .into_iter()
                .map(|addr| EndpointSpec { addr, weight: 1 })
                .collect(),
            balance: edgemesh_proxy::Balance::RoundRobin,
            health_check: None,
        });
    }
    out
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
                health_check: None,
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
        let none = BTreeMap::new();
        let table = project(&config, &published(&state, &none));
        assert_eq!(table.pools.len(), 1);
        assert_eq!(
            table.pools[0].endpoints,
            vec![EndpointSpec {
                addr: fresh,
                weight: 2
            }]
        );

        // A newer leader that has not rewritten web yet: the last good entry still counts...
        state.set_as_leader("other", vec![], 2, 2).unwrap();
        assert_eq!(project(&config, &published(&state, &none)), table);
        // ...and an older term's late write cannot replace the newer term's.
        state.set_as_leader("pool/web", encode(&[]), 2, 3).unwrap();
        let mut late = ClusterState::new("deposed");
        let stale = late
            .set_as_leader("pool/web", encode(&[(fresh, 9)]), 1, 4)
            .unwrap();
        state.apply(stale);
        assert!(published(&state, &none)["web"].is_empty());
    }

    #[test]
    fn docker_labels_add_routes_the_configuration_does_not_have() {
        use crate::ecs::model::{encode as enc, EcsEndpoint};
        let labelled = |host: &str| ServiceTopology {
            tasks: 1,
            endpoints: vec![EcsEndpoint {
                container: "app".into(),
                container_port: 80,
                addr: "10.0.0.5:80".parse().unwrap(),
                task: "t".into(),
            }],
            labels: [("edgemesh.http.host".to_string(), host.to_string())].into(),
        };
        let config = TableSpec {
            routes: vec![RouteSpec {
                hosts: vec!["web.test".into()],
                path_prefix: "/".into(),
                pool: "web".into(),
                redirect_https: true,
                ..RouteSpec::default()
            }],
            ..TableSpec::default()
        };
        let mut state = ClusterState::new("leader");
        for (svc, host) in [("a", "shop.test"), ("b", "shop.test"), ("c", "web.test")] {
            state
                .set_as_leader(&format!("ecs/svc/{svc}"), enc(&labelled(host)), 1, 1)
                .unwrap();
        }
        let listeners = [ListenerSpec {
            name: "sftp".into(),
            addr: "0.0.0.0:2222".parse().unwrap(),
            kind: ListenerKind::Tcp {
                idle_timeout_ms: None,
            },
            accept_proxy_protocol: false,
        }];
        let mut tcp = labelled("");
        tcp.labels = [("edgemesh.tcp.port".to_string(), "2222".to_string())].into();
        state.set_as_leader("ecs/svc/d", enc(&tcp), 1, 1).unwrap();
        tcp.labels = [("edgemesh.tcp.port".to_string(), "2223".to_string())].into();
        state.set_as_leader("ecs/svc/e", enc(&tcp), 1, 1).unwrap();
        let ip = "127.0.0.1".parse().unwrap();
        let t = label_routes(&state, &config, &listeners, ip);
        assert_eq!(t.listeners.len(), 1, "{t:?}");
        assert_eq!(t.listeners[0].addr, "127.0.0.1:2223".parse().unwrap());
        assert_eq!(t.tcp_routes[0].pool, "ecs:e");
        assert_eq!(t.pools.len(), 2);
        assert_eq!(t.routes.len(), 1);
        assert_eq!(t.routes[0].hosts, ["shop.test"]);
        assert_eq!(t.routes[0].pool, "ecs:a");
        assert_eq!(t.pools[0].endpoints[0].addr, "10.0.0.5:80".parse().unwrap());
        assert_eq!(t.conflicts.len(), 3, "{:?}", t.conflicts);
        assert!(
            t.conflicts[0].contains("service b") && t.conflicts[0].contains("service a's labels")
        );
        assert!(
            t.conflicts[1].contains("service c") && t.conflicts[1].contains("the configuration")
        );
        assert_eq!(t.tls_hosts, ["shop.test"]);
        assert!(t.routes[0].redirect_https);

        // `edgemesh.http.tls=false`: no certificate, no redirect; a name that is no host name
        // is refused and reported.
        let mut plain = labelled("plain.test,not a host");
        plain
            .labels
            .insert("edgemesh.http.tls".into(), "false".into());
        state.set_as_leader("ecs/svc/f", enc(&plain), 1, 1).unwrap();
        let t = label_routes(&state, &config, &listeners, ip);
        let route = t.routes.iter().find(|r| r.pool == "ecs:f").unwrap();
        assert_eq!(route.hosts, ["plain.test"]);
        assert!(!route.redirect_https);
        assert_eq!(t.tls_hosts, ["shop.test"]);
        assert!(
            t.conflicts
                .iter()
                .any(|c| c.contains("service f") && c.contains("\"not a host\" is not a host name")),
            "{:?}",
            t.conflicts
        );
    }

    #[test]
    fn ecs_services_fill_the_pools_that_name_them() {
        use crate::ecs::model::{encode as enc, EcsEndpoint};
        let ep = |c: &str, port: u16, addr: &str| EcsEndpoint {
            container: c.into(),
            container_port: port,
            addr: addr.parse().unwrap(),
            task: "t".into(),
        };
        let mut state = ClusterState::new("leader");
        let topo = ServiceTopology {
            tasks: 2,
            endpoints: vec![
                ep("web", 80, "10.0.0.1:32768"),
                ep("web", 80, "10.0.0.2:32769"),
            ],
            labels: BTreeMap::new(),
        };
        state
            .set_as_leader("ecs/svc/web", enc(&topo), 1, 1)
            .unwrap();
        let two = ServiceTopology {
            tasks: 1,
            endpoints: vec![ep("a", 1, "10.0.0.3:1"), ep("b", 2, "10.0.0.3:2")],
            labels: BTreeMap::new(),
        };
        state.set_as_leader("ecs/svc/two", enc(&two), 1, 1).unwrap();
        let target = |service: &str| EcsTarget {
            service: service.into(),
            container: None,
            port: None,
        };
        let targets: BTreeMap<String, EcsTarget> = [
            ("front".to_string(), target("web")),
            ("ambiguous".to_string(), target("two")),
            ("unknown".to_string(), target("nope")),
        ]
        .into();
        let p = published(&state, &targets);
        assert_eq!(p["front"].len(), 2);
        assert!(!p.contains_key("ambiguous"), "ambiguous: left as it was");
        assert!(!p.contains_key("unknown"), "not polled yet: left as it was");
        // An operator's pool/ entry overrides the ECS one.
        let one: SocketAddr = "10.9.9.9:80".parse().unwrap();
        state
            .set_as_leader("pool/front", encode(&[(one, 1)]), 1, 2)
            .unwrap();
        assert_eq!(published(&state, &targets)["front"][0].addr, one);
    }
}
