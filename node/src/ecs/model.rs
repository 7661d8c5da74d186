//! What the poller knows about ECS, reduced to what routing needs, and how a task's
//! endpoints are resolved for each network mode. Plain data: no SDK types, no I/O.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// A task as DescribeTasks reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    pub arn: String,
    /// `service:NAME` for tasks a service started.
    pub group: String,
    pub task_definition: String,
    pub container_instance: Option<String>,
    pub last_status: String,
    pub desired_status: String,
    /// HEALTHY, UNHEALTHY or UNKNOWN (no container health check).
    pub health: String,
    /// The ENI's private address (awsvpc).
    pub eni_ip: Option<IpAddr>,
    pub containers: Vec<ContainerInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: String,
    /// (container port, host port) for bridge and host mode.
    pub bindings: Vec<(u16, u16)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    Awsvpc,
    Bridge,
    Host,
}

/// A task definition revision (immutable, so cached by ARN for good).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDefInfo {
    pub network_mode: NetworkMode,
    /// Container name -> its container ports.
    pub ports: BTreeMap<String, Vec<u16>>,
    /// `edgemesh.*` docker labels, with `edgemesh.container` set to the container carrying
    /// them (unless the label names one itself).
    pub labels: BTreeMap<String, String>,
}

impl TaskDefInfo {
    /// The revision number of a task definition ARN (`...:task-definition/web:7` -> 7).
    pub fn revision(arn: &str) -> u64 {
        arn.rsplit(':')
            .next()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0)
    }
}

impl TaskInfo {
    pub fn service(&self) -> Option<&str> {
        self.group.strip_prefix("service:")
    }

    /// Routable: running, meant to run, not failing its health check.
    pub fn routable(&self) -> bool {
        self.last_status == "RUNNING"
            && self.desired_status == "RUNNING"
            && self.health != "UNHEALTHY"
    }

    /// The task's short id (the last part of its ARN).
    pub fn id(&self) -> &str {
        self.arn.rsplit('/').next().unwrap_or(&self.arn)
    }
}

/// One address a container port of a task is reachable on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EcsEndpoint {
    pub container: String,
    pub container_port: u16,
    pub addr: SocketAddr,
    pub task: String,
}

/// Why a task has no endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("task {0}: awsvpc task without an ENI address")]
    NoEni(String),
    #[error("task {0}: no container instance address")]
    NoInstance(String),
}

/// The endpoints of one task: every container port its definition maps, at the address the
/// network mode gives it. `instance_ip` is the container instance's EC2 private address
/// (bridge and host mode).
pub fn resolve(
    task: &TaskInfo,
    def: &TaskDefInfo,
    instance_ip: Option<IpAddr>,
) -> Result<Vec<EcsEndpoint>, ResolveError> {
    let endpoint = |container: &str, container_port: u16, addr: SocketAddr| EcsEndpoint {
        container: container.to_string(),
        container_port,
        addr,
        task: task.id().to_string(),
    };
    let mut out = Vec::new();
    match def.network_mode {
        NetworkMode::Awsvpc => {
            let ip = task
                .eni_ip
                .ok_or_else(|| ResolveError::NoEni(task.id().into()))?;
            for (name, ports) in &def.ports {
                for &p in ports {
                    out.push(endpoint(name, p, SocketAddr::new(ip, p)));
                }
            }
        }
        NetworkMode::Bridge | NetworkMode::Host => {
            let ip = instance_ip.ok_or_else(|| ResolveError::NoInstance(task.id().into()))?;
            for (name, ports) in &def.ports {
                let bound = task.containers.iter().find(|c| &c.name == name);
                for &p in ports {
                    // Bridge: the host port ECS bound (dynamic when the definition says 0).
                    // Host: the container port is the host port.
                    let host = bound
                        .and_then(|c| c.bindings.iter().find(|(cp, _)| *cp == p))
                        .map(|&(_, hp)| hp)
                        .or((def.network_mode == NetworkMode::Host).then_some(p));
                    if let Some(hp) = host.filter(|&hp| hp != 0) {
                        out.push(endpoint(name, p, SocketAddr::new(ip, hp)));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// What the leader publishes for one service: its routable tasks' endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceTopology {
    /// Tasks desired RUNNING (routable or not).
    pub tasks: u32,
    pub endpoints: Vec<EcsEndpoint>,
    /// The `edgemesh.*` docker labels of the newest task definition revision running.
    pub labels: BTreeMap<String, String>,
}

/// A route declared by docker labels, as Traefik's ECS provider reads them:
/// `edgemesh.http.host` (comma-separated), `edgemesh.http.path`, `edgemesh.http.port` (the
/// container port), `edgemesh.http.tls` (`false`: plain HTTP only, no certificate),
/// `edgemesh.tcp.port` (a TCP listener on the edge), `edgemesh.container`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRoute {
    pub hosts: Vec<String>,
    pub path_prefix: String,
    /// The hosts get a certificate (local CA or ACME) and plain HTTP redirects (default).
    pub tls: bool,
    /// The edge port of a TCP listener for this service.
    pub tcp_port: Option<u16>,
    pub target: EcsTarget,
}

impl ServiceTopology {
    pub fn label_route(&self, service: &str) -> Option<LabelRoute> {
        let label = |k: &str| self.labels.get(k).map(|v| v.trim());
        let hosts: Vec<String> = label("edgemesh.http.host")
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let tcp_port = label("edgemesh.tcp.port")
            .and_then(|p| p.parse().ok())
            .filter(|&p: &u16| p > 0);
        if hosts.is_empty() && tcp_port.is_none() {
            return None;
        }
        Some(LabelRoute {
            hosts,
            path_prefix: label("edgemesh.http.path").unwrap_or("/").to_string(),
            tls: !label("edgemesh.http.tls").is_some_and(|v| {
                ["false", "0", "no", "off"].contains(&v.to_ascii_lowercase().as_str())
            }),
            tcp_port,
            target: EcsTarget {
                service: service.to_string(),
                container: label("edgemesh.container").map(str::to_string),
                port: label("edgemesh.http.port").and_then(|p| p.parse().ok()),
            },
        })
    }
}

/// What a pool names as its ECS target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcsTarget {
    pub service: String,
    pub container: Option<String>,
    pub port: Option<u16>,
}

/// Why a pool's target does not pick one port per task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("service {service:?} exposes several ports ({choices}): set the pool's ecs container and port")]
    Ambiguous { service: String, choices: String },
}

impl EcsTarget {
    /// The addresses of this target in `topology`. A service with several container ports
    /// needs `container`/`port` to say which one.
    pub fn select(&self, topology: &ServiceTopology) -> Result<Vec<SocketAddr>, TargetError> {
        let matching: Vec<&EcsEndpoint> = topology
            .endpoints
            .iter()
            .filter(|e| self.container.as_ref().is_none_or(|c| *c == e.container))
            .filter(|e| self.port.is_none_or(|p| p == e.container_port))
            .collect();
        let mut pairs: Vec<(&str, u16)> = matching
            .iter()
            .map(|e| (e.container.as_str(), e.container_port))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        if pairs.len() > 1 {
            return Err(TargetError::Ambiguous {
                service: self.service.clone(),
                choices: pairs
                    .iter()
                    .map(|(c, p)| format!("{c}:{p}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let mut addrs: Vec<SocketAddr> = matching.iter().map(|e| e.addr).collect();
        addrs.sort_unstable();
        addrs.dedup();
        Ok(addrs)
    }
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("plain data encodes")
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .ok()
        .map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(eni: Option<&str>, containers: Vec<ContainerInfo>) -> TaskInfo {
        TaskInfo {
            arn: "arn:aws:ecs:us-east-1:1:task/edge/abc".into(),
            group: "service:web".into(),
            task_definition: "td:1".into(),
            container_instance: Some("ci".into()),
            last_status: "RUNNING".into(),
            desired_status: "RUNNING".into(),
            health: "UNKNOWN".into(),
            eni_ip: eni.map(|e| e.parse().unwrap()),
            containers,
        }
    }

    fn def(mode: NetworkMode, ports: &[(&str, &[u16])]) -> TaskDefInfo {
        TaskDefInfo {
            network_mode: mode,
            ports: ports
                .iter()
                .map(|(n, p)| (n.to_string(), p.to_vec()))
                .collect(),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn awsvpc_uses_the_eni_address_and_container_port() {
        let t = task(Some("10.1.2.3"), vec![]);
        let e = resolve(&t, &def(NetworkMode::Awsvpc, &[("web", &[8080])]), None).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].addr, "10.1.2.3:8080".parse().unwrap());
        assert_eq!(e[0].task, "abc");
        assert_eq!(
            resolve(
                &task(None, vec![]),
                &def(NetworkMode::Awsvpc, &[("web", &[80])]),
                None
            ),
            Err(ResolveError::NoEni("abc".into()))
        );
    }

    #[test]
    fn bridge_uses_the_instance_address_and_the_bound_host_port() {
        let t = task(
            None,
            vec![ContainerInfo {
                name: "web".into(),
                bindings: vec![(8080, 32768)],
            }],
        );
        let d = def(NetworkMode::Bridge, &[("web", &[8080, 9090])]);
        let e = resolve(&t, &d, Some("10.0.0.7".parse().unwrap())).unwrap();
        // 9090 has no binding yet: no endpoint rather than a wrong one.
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].addr, "10.0.0.7:32768".parse().unwrap());
        assert!(resolve(&t, &d, None).is_err());
    }

    #[test]
    fn host_mode_uses_the_container_port_on_the_instance() {
        let t = task(None, vec![]);
        let e = resolve(
            &t,
            &def(NetworkMode::Host, &[("web", &[8443])]),
            Some("10.0.0.8".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(e[0].addr, "10.0.0.8:8443".parse().unwrap());
    }

    #[test]
    fn unhealthy_stopping_and_foreign_tasks_are_not_routable() {
        let mut t = task(None, vec![]);
        assert!(t.routable());
        assert_eq!(t.service(), Some("web"));
        t.health = "UNHEALTHY".into();
        assert!(!t.routable());
        t.health = "HEALTHY".into();
        t.desired_status = "STOPPED".into();
        assert!(!t.routable());
        t.desired_status = "RUNNING".into();
        t.last_status = "DEACTIVATING".into();
        assert!(!t.routable());
        t.group = "family:web".into();
        assert_eq!(t.service(), None);
    }

    #[test]
    fn a_target_picks_one_port_or_says_which_are_possible() {
        let ep = |c: &str, p: u16, addr: &str| EcsEndpoint {
            container: c.into(),
            container_port: p,
            addr: addr.parse().unwrap(),
            task: "t".into(),
        };
        let topo = ServiceTopology {
            tasks: 2,
            endpoints: vec![
                ep("web", 8080, "10.0.0.1:32768"),
                ep("side", 9000, "10.0.0.1:32769"),
                ep("web", 8080, "10.0.0.2:32770"),
            ],
            labels: BTreeMap::new(),
        };
        let mut target = EcsTarget {
            service: "web".into(),
            container: None,
            port: None,
        };
        let err = target.select(&topo).unwrap_err().to_string();
        assert!(err.contains("side:9000, web:8080"), "{err}");
        target.container = Some("web".into());
        assert_eq!(target.select(&topo).unwrap().len(), 2);
        target.port = Some(1);
        assert!(target.select(&topo).unwrap().is_empty());
    }

    #[test]
    fn docker_labels_declare_a_route() {
        let mut topo = ServiceTopology::default();
        assert_eq!(topo.label_route("shop"), None);
        topo.labels = [
            (
                "edgemesh.http.host",
                "Shop.example.com, www.shop.example.com",
            ),
            ("edgemesh.http.path", "/api"),
            ("edgemesh.http.port", "8080"),
            ("edgemesh.container", "app"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let r = topo.label_route("shop").unwrap();
        assert_eq!(r.hosts, ["shop.example.com", "www.shop.example.com"]);
        assert_eq!(r.path_prefix, "/api");
        assert_eq!(r.target.container.as_deref(), Some("app"));
        assert_eq!(r.target.port, Some(8080));
        assert_eq!(r.tcp_port, None);
        topo.labels
            .insert("edgemesh.tcp.port".into(), "2222".into());
        assert_eq!(topo.label_route("shop").unwrap().tcp_port, Some(2222));
        topo.labels.remove("edgemesh.http.host");
        assert!(
            topo.label_route("shop").unwrap().hosts.is_empty(),
            "TCP only"
        );
        assert_eq!(
            TaskDefInfo::revision("arn:aws:ecs:r:1:task-definition/shop:12"),
            12
        );
    }
}
