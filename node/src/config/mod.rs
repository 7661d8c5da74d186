//! The node's configuration file: parsed, validated, then immutable.
//!
//! Every error names the file, the line and the key (`edgemesh.toml:14: routes[1].pool: ...`)
//! so `edgemesh check-config` reads like `nginx -t`. Validation never touches the network;
//! it does read certificate files named by the config.

mod source;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgemesh_proxy::route::normalize_host;
use edgemesh_proxy::{
    Balance, EndpointSpec, ListenerKind, ListenerSpec, PoolSpec, RouteSpec, TableSpec, TcpRouteSpec,
};
use serde::Deserialize;

use source::KeyIndex;

/// A configuration error located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// Dotted key path (`routes[1].pool`), or the environment variable that was wrong.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if let Some(k) = &self.key {
            write!(f, ": {k}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------- raw file format

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    node: RawNode,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    listeners: Vec<RawListener>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    pools: BTreeMap<String, RawPool>,
    gossip: Option<RawGossip>,
    ecs: Option<RawEcs>,
    dns: Option<RawDns>,
    acme: Option<RawAcme>,
    entrypoint: Option<RawEntrypoint>,
    access_log: Option<RawAccessLog>,
    cluster_config: Option<RawClusterConfig>,
}

/// Where the cluster-wide configuration may also come from (node-local).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClusterConfig {
    /// `s3://bucket/key`, read by the acting leader and published when it changes and
    /// validates; `EDGEMESH_CONFIG_S3` wins.
    s3: Option<String>,
    /// Seconds between reads (default 10).
    poll_secs: Option<u64>,
    /// The bucket's region; `AWS_REGION` or the SDK's chain otherwise.
    region: Option<String>,
}

/// The sections a cluster-wide document may hold; everything else stays in each node's file.
pub const CLUSTER_SECTIONS: [&str; 5] = ["listeners", "routes", "pools", "tls", "limits"];

/// A cluster-wide configuration document: the routing sections only.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawClusterDoc {
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    listeners: Vec<RawListener>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    pools: BTreeMap<String, RawPool>,
}

/// A cluster-wide document to run in place of the routing sections of a node's file.
#[derive(Debug, Clone, Copy)]
pub struct ClusterDoc<'a> {
    /// How errors name it: the operator's file (`routes.toml`) or the version
    /// (`cluster config v4`).
    pub name: &'a Path,
    pub src: &'a str,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLog {
    #[serde(default)]
    format: RawLogFormat,
    /// `stdout` (default) or a file, appended to.
    path: Option<String>,
    /// Fraction of requests logged, in (0, 1].
    sample: Option<f64>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawLogFormat {
    #[default]
    Json,
    Combined,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    #[serde(rename = "type")]
    kind: RawCheckKind,
    path: Option<String>,
    host: Option<String>,
    /// `"200-399"` (default) or one status, `"204"`.
    expect_status: Option<String>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    healthy_threshold: Option<u32>,
    unhealthy_threshold: Option<u32>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum RawCheckKind {
    Http,
    Tcp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntrypoint {
    /// Record sets the acting leader keeps equal to the live, non-draining members' public
    /// addresses (A for IPv4, AAAA for IPv6).
    records: Vec<RawEntrypointRecord>,
    /// A membership change is written once the view has been stable this long.
    debounce_ms: Option<u64>,
    /// The records are read back this often, and repaired if they differ.
    check_secs: Option<u64>,
    /// Route53's API region (default us-east-1).
    region: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntrypointRecord {
    hosted_zone_id: String,
    name: String,
    ttl: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcme {
    /// The CA's directory URL (Let's Encrypt: https://acme-v02.api.letsencrypt.org/directory).
    directory: String,
    #[serde(default)]
    contact: Vec<String>,
    /// A PEM root to trust for the CA's own HTTPS (test CAs).
    root_pem: Option<PathBuf>,
    /// How long a published HTTP-01 token is given to reach every node.
    propagation_ms: Option<u64>,
    /// Renew at this fraction of the lifetime (when the CA suggests no window).
    renew_fraction: Option<f64>,
    /// Renew once a certificate is this old, whatever its lifetime (tests, short-lived CAs).
    renew_after_secs: Option<u64>,
    /// Certificates with several names (`[["example.com", "www.example.com"]]`).
    #[serde(default)]
    certificates: Vec<Vec<String>>,
    /// `http-01` (default) or `dns-01` for every name; wildcards always use `dns-01`.
    challenge: Option<String>,
    /// The CA's certificate profile (Let's Encrypt: `classic`, `tlsserver`, `shortlived`).
    profile: Option<String>,
    /// External Account Binding: the key id, and the environment variable holding the
    /// base64url HMAC key.
    eab_kid: Option<String>,
    eab_hmac_key_env: Option<String>,
    /// The DNS-01 solver: TXT records in this Route53 hosted zone.
    route53: Option<RawAcmeRoute53>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcmeRoute53 {
    hosted_zone_id: String,
    region: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    /// Name servers (IP:port) for DNS pools; default: the system's (/etc/resolv.conf).
    #[serde(default)]
    servers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDnsTarget {
    srv: Option<String>,
    name: Option<String>,
    port: Option<u16>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEcs {
    /// `AWS_CLUSTER_NAME` wins.
    cluster: Option<String>,
    /// `AWS_REGION` wins; else the SDK's chain (profile, instance metadata).
    region: Option<String>,
    poll_interval_secs: Option<u64>,
    /// Routes from docker labels (`edgemesh.http.host`, ...); the configuration wins.
    #[serde(default)]
    labels: bool,
    /// Timeout of one attempt of an AWS API call.
    call_timeout_ms: Option<u64>,
    /// IP address the TCP listeners of `edgemesh.tcp.port` labels bind on (default 0.0.0.0).
    label_tcp_ip: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEcsTarget {
    service: String,
    container: Option<String>,
    port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGossip {
    bind: String,
    /// Address peers reach us on; defaults to `bind` (required when `bind` is unspecified).
    advertise: Option<String>,
    node_id: Option<String>,
    #[serde(default)]
    seeds: Vec<String>,
    /// Find seeds among the tasks of this ECS service (the edgemesh DAEMON service).
    ecs_seed_service: Option<String>,
    /// File with the base64 cluster key(s), one per line; the first sends.
    key_file: Option<PathBuf>,
    public_ip: Option<String>,
    probe_period_ms: Option<u64>,
    probe_rtt_ms: Option<u64>,
    indirect_probes: Option<usize>,
    suspect_to_down_ms: Option<u64>,
    max_packet_size: Option<usize>,
    expected_cluster_size: Option<u32>,
    /// UDP port of the QUIC sync endpoint (default: the gossip port + 1).
    sync_port: Option<u16>,
    sync_interval_secs: Option<u64>,
    bootstrap_expect: Option<usize>,
    heartbeat_ms: Option<u64>,
    lease_ms: Option<u64>,
    election_timeout_ms: Option<u64>,
    settle_ms: Option<u64>,
    reap_after_secs: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNode {
    data_dir: Option<PathBuf>,
    admin_addr: Option<String>,
    drain_timeout_secs: Option<u64>,
    /// Serving after the DNS entrypoint dropped a draining node, on top of the record's TTL.
    drain_grace_secs: Option<u64>,
    watch_config: Option<bool>,
}

/// Client and upstream limits of the data path (all listeners); read at start only.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    header_read_timeout_secs: Option<u64>,
    max_header_bytes: Option<usize>,
    max_headers: Option<usize>,
    max_connections: Option<usize>,
    h2_max_concurrent_streams: Option<u32>,
    upstream_connect_timeout_ms: Option<u64>,
    upstream_response_timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    /// Issue certificates for route hosts from a CA kept in the data directory.
    local_ca: Option<bool>,
    default_cert: Option<String>,
    /// Let clients resume TLS sessions (abbreviated handshakes); read at start only.
    session_resumption: Option<bool>,
    #[serde(default)]
    certificates: Vec<RawCertFiles>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertFiles {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: String,
    addr: String,
    kind: RawListenerKind,
    #[serde(default)]
    accept_proxy_protocol: bool,
    pool: Option<String>,
    #[serde(default)]
    send_proxy_protocol: bool,
    idle_timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawListenerKind {
    Http,
    Https,
    Tcp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    hosts: Vec<String>,
    #[serde(default = "slash")]
    path_prefix: String,
    pool: String,
    #[serde(default = "yes")]
    redirect_https: bool,
    #[serde(default = "yes")]
    tls: bool,
    /// `Strict-Transport-Security: max-age=...` on this route's HTTPS responses.
    hsts_max_age_secs: Option<u64>,
    #[serde(default)]
    hsts_include_subdomains: bool,
    #[serde(default)]
    hsts_preload: bool,
    /// Largest request body (413 beyond); default unlimited.
    max_body_bytes: Option<u64>,
    /// The whole exchange, request head to last response byte; default none.
    timeout_secs: Option<u64>,
}

fn slash() -> String {
    "/".into()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    #[serde(default)]
    balance: RawBalance,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
    /// Endpoints from an ECS service's running tasks instead of a fixed list.
    ecs: Option<RawEcsTarget>,
    /// Endpoints from DNS (SRV, or A/AAAA plus a port) instead of a fixed list.
    dns: Option<RawDnsTarget>,
    health_check: Option<RawHealthCheck>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawBalance {
    #[default]
    RoundRobin,
    LeastRequests,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawEndpoint {
    Addr(String),
    Weighted { addr: String, weight: u32 },
}

// ---------------------------------------------------------------- validated config

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub file: PathBuf,
    pub data_dir: PathBuf,
    pub admin_addr: SocketAddr,
    pub drain_timeout: Duration,
    pub drain_grace: Duration,
    pub watch_config: bool,
    pub local_ca: bool,
    pub default_cert: Option<String>,
    /// The data path's limits and timeouts (`[limits]`, and `tls.session_resumption`).
    pub limits: edgemesh_proxy::ProxySettings,
    pub access_log: Option<edgemesh_proxy::AccessLogSpec>,
    pub cert_files: Vec<(PathBuf, PathBuf)>,
    pub listeners: Vec<ListenerSpec>,
    pub table: TableSpec,
    /// Hosts that get a certificate from the local CA (routes with `tls = true`).
    pub tls_hosts: Vec<String>,
    /// Mesh settings; `None` runs a single node.
    pub gossip: Option<GossipConfig>,
    /// ECS polling, when a pool names an ECS service or `[ecs]` is present.
    pub ecs: Option<crate::ecs::EcsSettings>,
    /// Pool name -> the ECS service it routes to.
    pub ecs_targets: BTreeMap<String, crate::ecs::model::EcsTarget>,
    /// Pool name -> the DNS name it resolves.
    pub dns_targets: BTreeMap<String, crate::dns::DnsTarget>,
    /// Name servers for DNS pools (empty: the system's).
    pub dns_servers: Vec<SocketAddr>,
    /// ACME issuance for the route hosts, when `[acme]` is present.
    pub acme: Option<crate::acme::AcmeSettings>,
    /// The DNS entrypoint records, when `[entrypoint]` is present.
    pub entrypoint: Option<crate::entrypoint::EntrypointSettings>,
    /// Routing sections of the node's file that a cluster document replaced.
    pub shadowed: Vec<&'static str>,
    /// An S3 object the acting leader publishes as the cluster configuration.
    pub config_source: Option<crate::cluster_config::ObjectSource>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GossipConfig {
    /// Empty only with `Advertise::Imds` and no host name: the address, once known.
    pub node_id: String,
    pub bind: SocketAddr,
    pub advertise: Advertise,
    pub seeds: Vec<SocketAddr>,
    /// Seeds from the tasks of this ECS service (needs the `[ecs]` cluster).
    pub ecs_seed_service: Option<String>,
    pub public_ip: PublicIp,
    /// Base64 keys, first one sending; validated at load.
    pub keys: Vec<String>,
    pub probe_period: Duration,
    pub probe_rtt: Duration,
    pub indirect_probes: usize,
    pub suspect_to_down: Duration,
    pub max_packet_size: usize,
    pub expected_cluster_size: u32,
    pub sync_port: u16,
    pub sync_interval: Duration,
    pub bootstrap_expect: usize,
    pub heartbeat: Duration,
    pub lease: Duration,
    pub election_timeout: Duration,
    pub settle: Duration,
    pub reap_after: Duration,
}

/// The gossip address peers reach this node on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advertise {
    Addr(SocketAddr),
    /// `advertise = "imds"`: this EC2 instance's private IPv4 (IMDSv2, asked at start) with
    /// the bind port, for hosts whose address no file can know (an ECS DAEMON task).
    Imds {
        port: u16,
    },
}

impl Advertise {
    pub fn port(&self) -> u16 {
        match self {
            Advertise::Addr(a) => a.port(),
            Advertise::Imds { port } => *port,
        }
    }
}

/// Where a member's public address (the one the DNS entrypoint names) comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicIp {
    /// None: the member is left out of the entrypoint.
    Unset,
    Fixed(std::net::IpAddr),
    /// `public_ip = "imds"`: asked of the EC2 instance metadata service (IMDSv2) at start.
    Imds,
}

pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9901";
/// ECS's largest task `stopTimeout`: the drain must fit in it.
const MAX_DRAIN_SECS: u64 = 120;

/// The variable whose value, when set, is the whole configuration (TOML) and wins over the
/// file: for containers configured by their task definition alone.
pub const CONFIG_ENV: &str = "EDGEMESH_CONFIG_TOML";

/// The daemon's configuration: [`CONFIG_ENV`] when set, else the file at `path`. Errors in
/// the variable's text name it (`environment EDGEMESH_CONFIG_TOML:3: key: ...`); a file there
/// is neither read nor watched.
pub fn load_source(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    load_with(path, None, env)
}

/// [`load_source`] with the routing sections taken from `doc` instead of the node's file.
pub fn load_with(
    path: &Path,
    doc: Option<ClusterDoc>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    match env(CONFIG_ENV) {
        Some(src) => parse_with(&config_env_path(), &src, doc, env),
        None => {
            let src = read(path)?;
            parse_with(path, &src, doc, env)
        }
    }
}

/// An error at `key` of the file indexed by `index`.
fn at(file: &Path, index: &KeyIndex, key: &str, message: String) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        line: index.line_of(key),
        key: Some(key.to_string()),
        message,
    }
}

/// A TOML syntax or type error, at its line and the key there.
fn located(file: &Path, index: &KeyIndex, e: toml::de::Error) -> ConfigError {
    let line = e.span().map(|s| index.line_of_offset(s.start));
    ConfigError {
        file: file.to_path_buf(),
        line,
        key: line.and_then(|l| index.key_at_line(l)).map(str::to_string),
        message: e.message().trim().to_string(),
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: None,
        message: format!("cannot read: {e}"),
    })
}

/// Checks that `doc` holds only [`CLUSTER_SECTIONS`] and parses as TOML, naming the line
/// of the first key that does not belong. Returns the sections it holds too.
fn cluster_doc(doc: ClusterDoc) -> Result<(RawClusterDoc, KeyIndex, Vec<String>), ConfigError> {
    let index = KeyIndex::new(doc.src);
    let loc = |e| located(doc.name, &index, e);
    let table: toml::Table = toml::from_str(doc.src).map_err(loc)?;
    if let Some(k) = table
        .keys()
        .find(|k| !CLUSTER_SECTIONS.contains(&k.as_str()))
    {
        return Err(at(
            doc.name,
            &index,
            k,
            format!(
                "[{k}] is node-local and stays in each node's file; a cluster configuration holds {}",
                CLUSTER_SECTIONS.join(", ")
            ),
        ));
    }
    // Parsed again from the text, not from `table`, so type errors keep their line.
    let raw = toml::from_str(doc.src).map_err(loc)?;
    Ok((raw, index, table.keys().cloned().collect()))
}

/// The top-level section a key path belongs to (`routes[1].pool` -> `routes`).
fn section(key: &str) -> &str {
    key.split(['.', '[']).next().unwrap_or(key)
}

/// What stands for the file when the configuration comes from [`CONFIG_ENV`].
pub fn config_env_path() -> PathBuf {
    PathBuf::from(format!("environment {CONFIG_ENV}"))
}

/// Reads, parses and validates a configuration file, then applies `EDGEMESH_*` overrides
/// from `env`.
pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    parse(path, &read(path)?, env)
}

pub fn parse(
    path: &Path,
    src: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    parse_with(path, src, None, env)
}

/// Parses a node's file; with `doc`, its routing sections ([`CLUSTER_SECTIONS`]) come from
/// the cluster document, and errors in them name the document and its lines.
pub fn parse_with(
    path: &Path,
    src: &str,
    doc: Option<ClusterDoc>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let index = KeyIndex::new(src);
    let (doc_raw, doc_meta) = match doc.map(cluster_doc).transpose()? {
        Some((raw, index, held)) => (Some(raw), Some((index, held))),
        None => (None, None),
    };
    let err = |key: &str, message: String| match (&doc_meta, doc) {
        (Some((doc_index, held)), Some(d)) if held.iter().any(|h| h == section(key)) => {
            at(d.name, doc_index, key, message)
        }
        _ => at(path, &index, key, message),
    };
    let mut raw: RawConfig = toml::from_str(src).map_err(|e| located(path, &index, e))?;
    // The sections the document holds replace the file's; the others stay the file's (a
    // document without `listeners` leaves every node its own addresses).
    let mut shadowed = Vec::new();
    if let (Some(d), Some((_, held))) = (doc_raw, &doc_meta) {
        let holds = |s: &str| held.iter().any(|h| h == s);
        shadowed = CLUSTER_SECTIONS
            .into_iter()
            .filter(|s| holds(s) && index.has_section(s))
            .collect();
        if holds("listeners") {
            raw.listeners = d.listeners;
        }
        if holds("routes") {
            raw.routes = d.routes;
        }
        if holds("pools") {
            raw.pools = d.pools;
        }
        if holds("tls") {
            raw.tls = d.tls;
        }
        if holds("limits") {
            raw.limits = d.limits;
        }
    }
    let env_err = |var: &str, message: String| ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: Some(format!("environment {var}")),
        message,
    };

    // node
    let admin_raw = env("EDGEMESH_ADMIN_ADDR")
        .map(|v| (v, true))
        .or_else(|| raw.node.admin_addr.clone().map(|v| (v, false)))
        .unwrap_or_else(|| (DEFAULT_ADMIN_ADDR.into(), false));
    let admin_addr: SocketAddr = admin_raw.0.parse().map_err(|_| {
        let msg = format!("{:?} is not an IP:port address", admin_raw.0);
        if admin_raw.1 {
            env_err("EDGEMESH_ADMIN_ADDR", msg)
        } else {
            err("node.admin_addr", msg)
        }
    })?;
    let data_dir = env("EDGEMESH_DATA_DIR")
        .map(PathBuf::from)
        .or(raw.node.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("/var/lib/edgemesh"));
    let drain_secs = match env("EDGEMESH_DRAIN_TIMEOUT_SECS") {
        Some(v) => v.parse::<u64>().map_err(|_| {
            env_err(
                "EDGEMESH_DRAIN_TIMEOUT_SECS",
                format!("{v:?} is not a number of seconds"),
            )
        })?,
        None => raw.node.drain_timeout_secs.unwrap_or(30),
    };
    if drain_secs > MAX_DRAIN_SECS {
        return Err(err(
            "node.drain_timeout_secs",
            format!(
                "{drain_secs} is more than {MAX_DRAIN_SECS} seconds (ECS's largest stopTimeout)"
            ),
        ));
    }

    // pools
    let mut pools = Vec::new();
    let mut ecs_targets = BTreeMap::new();
    let mut dns_targets = BTreeMap::new();
    for (name, p) in &raw.pools {
        if let Some(d) = &p.dns {
            let key = format!("pools.{name}.dns");
            if !p.endpoints.is_empty() || p.ecs.is_some() {
                return Err(err(
                    &key,
                    "a pool takes one of `endpoints`, `ecs` or `dns`".into(),
                ));
            }
            let target = match (&d.srv, &d.name, d.port) {
                (Some(srv), None, None) if !srv.trim().is_empty() => {
                    crate::dns::DnsTarget::Srv(srv.trim().to_string())
                }
                (None, Some(n), Some(port)) if !n.trim().is_empty() && port > 0 => {
                    crate::dns::DnsTarget::Host {
                        name: n.trim().to_string(),
                        port,
                    }
                }
                _ => {
                    return Err(err(
                        &key,
                        "needs `srv = \"_svc._tcp.name\"`, or `name` and a non-zero `port`".into(),
                    ))
                }
            };
            dns_targets.insert(name.clone(), target);
        }
        if let Some(t) = &p.ecs {
            if !p.endpoints.is_empty() {
                return Err(err(
                    &format!("pools.{name}.ecs"),
                    "a pool takes `endpoints` or `ecs`, not both".into(),
                ));
            }
            if t.service.trim().is_empty() {
                return Err(err(
                    &format!("pools.{name}.ecs.service"),
                    "must not be empty".into(),
                ));
            }
            ecs_targets.insert(
                name.clone(),
                crate::ecs::model::EcsTarget {
                    service: t.service.trim().to_string(),
                    container: t.container.clone(),
                    port: t.port,
                },
            );
        }
        let mut endpoints = Vec::new();
        for (i, e) in p.endpoints.iter().enumerate() {
            let key = format!("pools.{name}.endpoints[{i}]");
            let (addr, weight) = match e {
                RawEndpoint::Addr(a) => (a, 1),
                RawEndpoint::Weighted { addr, weight } => (addr, *weight),
            };
            let addr: SocketAddr = addr
                .parse()
                .map_err(|_| err(&key, format!("{addr:?} is not an IP:port address")))?;
            if !(1..=1000).contains(&weight) {
                return Err(err(&key, format!("weight {weight} is outside 1..=1000")));
            }
            endpoints.push(EndpointSpec { addr, weight });
        }
        let health_check = match &p.health_check {
            None => None,
            Some(h) => Some(health_check(
                h,
                &format!("pools.{name}.health_check"),
                &err,
            )?),
        };
        pools.push(PoolSpec {
            name: name.clone(),
            endpoints,
            balance: match p.balance {
                RawBalance::RoundRobin => Balance::RoundRobin,
                RawBalance::LeastRequests => Balance::LeastRequests,
            },
            health_check,
        });
    }

    // routes
    let mut routes = Vec::new();
    let mut tls_hosts: Vec<String> = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        if r.hosts.is_empty() {
            return Err(err(
                &format!("routes[{i}].hosts"),
                "needs at least one host".into(),
            ));
        }
        let mut hosts = Vec::new();
        for (j, h) in r.hosts.iter().enumerate() {
            let h = check_host(h).map_err(|m| err(&format!("routes[{i}].hosts[{j}]"), m))?;
            if r.tls && h != "*" && !tls_hosts.contains(&h) {
                tls_hosts.push(h.clone());
            }
            hosts.push(h);
        }
        if !r.path_prefix.starts_with('/') {
            return Err(err(
                &format!("routes[{i}].path_prefix"),
                format!("{:?} must start with '/'", r.path_prefix),
            ));
        }
        if !raw.pools.contains_key(&r.pool) {
            return Err(err(
                &format!("routes[{i}].pool"),
                format!("pool {:?} is not defined under [pools]", r.pool),
            ));
        }
        let key = |k: &str| format!("routes[{i}].{k}");
        let hsts = match r.hsts_max_age_secs {
            None => {
                for (k, set) in [
                    ("hsts_include_subdomains", r.hsts_include_subdomains),
                    ("hsts_preload", r.hsts_preload),
                ] {
                    if set {
                        return Err(err(&key(k), "needs hsts_max_age_secs".into()));
                    }
                }
                None
            }
            Some(_) if !r.tls => {
                return Err(err(
                    &key("hsts_max_age_secs"),
                    "HSTS is sent over HTTPS only: this route has tls = false".into(),
                ))
            }
            Some(age) => Some(edgemesh_proxy::Hsts {
                max_age_secs: in_range(age, (0, 63_072_000), &key("hsts_max_age_secs"), &err)?,
                include_subdomains: r.hsts_include_subdomains,
                preload: r.hsts_preload,
            }),
        };
        routes.push(RouteSpec {
            hosts,
            path_prefix: r.path_prefix.clone(),
            pool: r.pool.clone(),
            redirect_https: r.redirect_https && r.tls,
            hsts,
            max_body_bytes: r
                .max_body_bytes
                .map(|b| in_range(b, (1, u64::MAX), &key("max_body_bytes"), &err))
                .transpose()?,
            timeout_ms: r
                .timeout_secs
                .map(|t| in_range(t, (1, 86_400), &key("timeout_secs"), &err).map(|t| t * 1000))
                .transpose()?,
        });
    }

    // listeners
    let mut listeners = Vec::new();
    let mut tcp_routes = Vec::new();
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    let mut https_port = None;
    for (i, l) in raw.listeners.iter().enumerate() {
        let key = |k: &str| format!("listeners[{i}].{k}");
        if l.name.is_empty() || !names.insert(l.name.clone()) {
            return Err(err(
                &key("name"),
                format!("{:?} is empty or used twice", l.name),
            ));
        }
        let addr: SocketAddr = l.addr.parse().map_err(|_| {
            err(
                &key("addr"),
                format!("{:?} is not an IP:port address", l.addr),
            )
        })?;
        if addr.port() != 0 && !addrs.insert(addr) {
            return Err(err(
                &key("addr"),
                format!("{addr} is used by another listener"),
            ));
        }
        let kind = match l.kind {
            RawListenerKind::Http | RawListenerKind::Https => {
                for (k, set) in [
                    ("pool", l.pool.is_some()),
                    ("send_proxy_protocol", l.send_proxy_protocol),
                    ("idle_timeout_secs", l.idle_timeout_secs.is_some()),
                ] {
                    if set {
                        return Err(err(&key(k), "applies to tcp listeners only".into()));
                    }
                }
                if l.kind == RawListenerKind::Https {
                    https_port.get_or_insert(addr.port());
                    ListenerKind::Https
                } else {
                    ListenerKind::Http
                }
            }
            RawListenerKind::Tcp => {
                let Some(pool) = &l.pool else {
                    return Err(err(&key("kind"), "a tcp listener needs `pool`".into()));
                };
                if !raw.pools.contains_key(pool) {
                    return Err(err(
                        &key("pool"),
                        format!("pool {pool:?} is not defined under [pools]"),
                    ));
                }
                tcp_routes.push(TcpRouteSpec {
                    listener: l.name.clone(),
                    pool: pool.clone(),
                    send_proxy_protocol: l.send_proxy_protocol,
                });
                ListenerKind::Tcp {
                    idle_timeout_ms: l.idle_timeout_secs.filter(|&s| s > 0).map(|s| s * 1000),
                }
            }
        };
        listeners.push(ListenerSpec {
            name: l.name.clone(),
            addr,
            kind,
            accept_proxy_protocol: l.accept_proxy_protocol,
        });
    }

    // tls
    let mut cert_files = Vec::new();
    for (i, c) in raw.tls.certificates.iter().enumerate() {
        let base = path.parent().unwrap_or(Path::new("."));
        for (k, p) in [("cert", &c.cert), ("key", &c.key)] {
            if !base.join(p).is_file() {
                return Err(err(
                    &format!("tls.certificates[{i}].{k}"),
                    format!("{} is not a readable file", p.display()),
                ));
            }
        }
        cert_files.push((base.join(&c.cert), base.join(&c.key)));
    }
    if let Some(d) = &raw.tls.default_cert {
        let d = check_host(d).map_err(|m| err("tls.default_cert", m))?;
        if !tls_hosts.contains(&d) && cert_files.is_empty() {
            return Err(err(
                "tls.default_cert",
                format!("{d:?} is not a host of any route with tls = true"),
            ));
        }
    }

    let gossip = match &raw.gossip {
        None => None,
        Some(g) => Some(gossip_config(g, path, &err, &env_err, env)?),
    };

    let ecs = ecs_settings(&raw, &ecs_targets, &err, env)?;
    let acme = match &raw.acme {
        None => None,
        Some(a) => Some(acme_settings(a, path, &err, env)?),
    };
    let entrypoint = match &raw.entrypoint {
        None => None,
        Some(e) => Some(entrypoint_settings(e, &err)?),
    };
    let dns_servers = raw
        .dns
        .as_ref()
        .map(|d| d.servers.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse().map_err(|_| {
                err(
                    &format!("dns.servers[{i}]"),
                    format!("{s:?} is not an IP:port address"),
                )
            })
        })
        .collect::<Result<Vec<SocketAddr>, _>>()?;
    Ok(Config {
        file: path.to_path_buf(),
        data_dir,
        admin_addr,
        drain_timeout: Duration::from_secs(drain_secs),
        drain_grace: Duration::from_secs(raw.node.drain_grace_secs.unwrap_or(5)),
        watch_config: raw.node.watch_config.unwrap_or(true),
        local_ca: raw.tls.local_ca.unwrap_or(true),
        default_cert: raw.tls.default_cert.map(|d| d.to_ascii_lowercase()),
        limits: limits(
            &raw.limits,
            raw.tls.session_resumption.unwrap_or(true),
            &err,
        )?,
        access_log: match &raw.access_log {
            None => None,
            Some(a) => Some(access_log(a, path, &err)?),
        },
        cert_files,
        listeners,
        table: TableSpec {
            routes,
            pools,
            tcp_routes,
            https_port,
        },
        tls_hosts,
        gossip,
        ecs,
        ecs_targets,
        dns_targets,
        dns_servers,
        acme,
        entrypoint,
        shadowed,
        config_source: config_source(raw.cluster_config.as_ref(), &err, &env_err, env)?,
    })
}

/// A polling interval in seconds (default 10, 1..=3600) at `key`.
fn poll_every(
    secs: Option<u64>,
    key: &str,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Duration, ConfigError> {
    let secs = secs.unwrap_or(10);
    if !(1..=3600).contains(&secs) {
        return Err(err(key, format!("{secs} is outside 1..=3600")));
    }
    Ok(Duration::from_secs(secs))
}

fn config_source(
    c: Option<&RawClusterConfig>,
    err: &dyn Fn(&str, String) -> ConfigError,
    env_err: &dyn Fn(&str, String) -> ConfigError,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<crate::cluster_config::ObjectSource>, ConfigError> {
    let url = match env("EDGEMESH_CONFIG_S3").filter(|v| !v.trim().is_empty()) {
        Some(v) => Some(
            crate::cluster_config::parse_s3_url(&v)
                .map_err(|m| env_err("EDGEMESH_CONFIG_S3", m))?,
        ),
        None => match c.and_then(|c| c.s3.as_deref()) {
            Some(v) => Some(
                crate::cluster_config::parse_s3_url(v).map_err(|m| err("cluster_config.s3", m))?,
            ),
            None => None,
        },
    };
    let Some((bucket, key)) = url else {
        return Ok(None);
    };
    Ok(Some(crate::cluster_config::ObjectSource {
        bucket,
        key,
        poll: poll_every(c.and_then(|c| c.poll_secs), "cluster_config.poll_secs", err)?,
        region: c.and_then(|c| c.region.clone()),
    }))
}

fn ecs_settings(
    raw: &RawConfig,
    targets: &BTreeMap<String, crate::ecs::model::EcsTarget>,
    err: &dyn Fn(&str, String) -> ConfigError,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<crate::ecs::EcsSettings>, ConfigError> {
    let seeds_from_ecs = raw
        .gossip
        .as_ref()
        .is_some_and(|g| g.ecs_seed_service.is_some());
    if raw.ecs.is_none() && targets.is_empty() && !seeds_from_ecs {
        return Ok(None);
    }
    let e = raw.ecs.as_ref();
    let cluster = env("AWS_CLUSTER_NAME")
        .filter(|c| !c.trim().is_empty())
        .or_else(|| e.and_then(|e| e.cluster.clone()))
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty());
    let Some(cluster) = cluster else {
        let key = match targets.keys().next() {
            Some(pool) if e.is_none() => format!("pools.{pool}.ecs"),
            None if e.is_none() => "gossip.ecs_seed_service".to_string(),
            _ => "ecs.cluster".to_string(),
        };
        return Err(err(
            &key,
            "no ECS cluster: set [ecs] cluster or AWS_CLUSTER_NAME".into(),
        ));
    };
    let poll_interval = poll_every(
        e.and_then(|e| e.poll_interval_secs),
        "ecs.poll_interval_secs",
        err,
    )?;
    Ok(Some(crate::ecs::EcsSettings {
        cluster,
        region: env("AWS_REGION").or_else(|| e.and_then(|e| e.region.clone())),
        poll_interval,
        labels: e.is_some_and(|e| e.labels),
        label_tcp_ip: match e.and_then(|e| e.label_tcp_ip.as_ref()) {
            None => std::net::Ipv4Addr::UNSPECIFIED.into(),
            Some(ip) => ip
                .parse()
                .map_err(|_| err("ecs.label_tcp_ip", format!("{ip:?} is not an IP address")))?,
        },
        call_timeout: Duration::from_millis(
            e.and_then(|e| e.call_timeout_ms)
                .unwrap_or(10_000)
                .clamp(100, 120_000),
        ),
    }))
}

/// A hosted zone id as Route53's API takes it: `Z...`, without the `/hostedzone/` prefix
/// its answers carry; empty when only blanks were given.
fn hosted_zone_id(raw: &str) -> String {
    raw.trim().trim_start_matches("/hostedzone/").to_string()
}

fn entrypoint_settings(
    e: &RawEntrypoint,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<crate::entrypoint::EntrypointSettings, ConfigError> {
    if e.records.is_empty() {
        return Err(err("entrypoint.records", "names no record".into()));
    }
    let mut records = Vec::new();
    for (i, r) in e.records.iter().enumerate() {
        let zone = hosted_zone_id(&r.hosted_zone_id);
        if zone.is_empty() {
            return Err(err(
                &format!("entrypoint.records[{i}].hosted_zone_id"),
                "is empty".into(),
            ));
        }
        let name = check_host(&r.name)
            .ok()
            .filter(|n| !n.starts_with('*'))
            .ok_or_else(|| {
                err(
                    &format!("entrypoint.records[{i}].name"),
                    format!("{:?} is not a DNS name", r.name),
                )
            })?;
        let ttl = r.ttl.unwrap_or(60);
        if !(1..=86_400).contains(&ttl) {
            return Err(err(
                &format!("entrypoint.records[{i}].ttl"),
                format!("{ttl} is outside 1..=86400 seconds"),
            ));
        }
        records.push(crate::entrypoint::RecordSpec { zone, name, ttl });
    }
    let check_secs = e.check_secs.unwrap_or(60);
    if check_secs == 0 {
        return Err(err("entrypoint.check_secs", "must be at least 1".into()));
    }
    Ok(crate::entrypoint::EntrypointSettings {
        records,
        timings: crate::entrypoint::Timings {
            debounce_ms: e.debounce_ms.unwrap_or(1_000),
            check_ms: check_secs * 1000,
            ..Default::default()
        },
        region: e.region.clone(),
    })
}

fn acme_settings(
    a: &RawAcme,
    path: &Path,
    err: &dyn Fn(&str, String) -> ConfigError,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<crate::acme::AcmeSettings, ConfigError> {
    if !(a.directory.starts_with("https://") || a.directory.starts_with("http://")) {
        return Err(err(
            "acme.directory",
            format!("{:?} is not an http(s) URL", a.directory),
        ));
    }
    for (i, c) in a.contact.iter().enumerate() {
        if !c.starts_with("mailto:") {
            return Err(err(
                &format!("acme.contact[{i}]"),
                format!("{c:?} must be a mailto: URI"),
            ));
        }
    }
    let fraction = a.renew_fraction.unwrap_or(2.0 / 3.0);
    if !(0.05..=0.95).contains(&fraction) {
        return Err(err(
            "acme.renew_fraction",
            format!("{fraction} is outside 0.05..=0.95"),
        ));
    }
    for (i, set) in a.certificates.iter().enumerate() {
        if set.is_empty() || set.iter().any(|n| n.trim().is_empty()) {
            return Err(err(
                &format!("acme.certificates[{i}]"),
                "needs at least one name, none empty".into(),
            ));
        }
    }
    let certificates: Vec<Vec<String>> = a
        .certificates
        .iter()
        .map(|set| set.iter().map(|n| n.trim().to_ascii_lowercase()).collect())
        .collect();
    let dns01 = match a.challenge.as_deref() {
        None | Some("http-01") => false,
        Some("dns-01") => true,
        Some(other) => {
            return Err(err(
                "acme.challenge",
                format!("{other:?} is not \"http-01\" or \"dns-01\""),
            ))
        }
    };
    let route53 = match &a.route53 {
        None => None,
        Some(r) => match hosted_zone_id(&r.hosted_zone_id) {
            zone if zone.is_empty() => {
                return Err(err("acme.route53.hosted_zone_id", "is empty".into()))
            }
            zone => Some((zone, r.region.clone())),
        },
    };
    if route53.is_none() {
        if dns01 {
            return Err(err(
                "acme.challenge",
                "\"dns-01\" needs a DNS solver: add [acme.route53] hosted_zone_id".into(),
            ));
        }
        if let Some(w) = certificates.iter().flatten().find(|n| n.starts_with("*.")) {
            return Err(err(
                "acme.certificates",
                format!("{w:?} is a wildcard, which only DNS-01 validates: add [acme.route53] hosted_zone_id"),
            ));
        }
    }
    if a.profile.as_deref().is_some_and(|p| p.trim().is_empty()) {
        return Err(err("acme.profile", "is empty".into()));
    }
    let eab = match (&a.eab_kid, &a.eab_hmac_key_env) {
        (None, None) => None,
        (Some(kid), Some(var)) => {
            use base64::Engine;
            let value = env(var).ok_or_else(|| {
                err(
                    "acme.eab_hmac_key_env",
                    format!("environment variable {var} is not set"),
                )
            })?;
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(value.trim().trim_end_matches('='))
                .map_err(|e| {
                    err(
                        "acme.eab_hmac_key_env",
                        format!("{var} is not base64url: {e}"),
                    )
                })?;
            Some((kid.clone(), key))
        }
        (Some(_), None) => {
            return Err(err(
                "acme.eab_hmac_key_env",
                "eab_kid is set; name the environment variable holding its HMAC key".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(err(
                "acme.eab_kid",
                "eab_hmac_key_env is set; the key id is needed too".into(),
            ))
        }
    };
    Ok(crate::acme::AcmeSettings {
        directory: a.directory.clone(),
        contact: a.contact.clone(),
        root_pem: a
            .root_pem
            .as_ref()
            .map(|p| path.parent().unwrap_or(Path::new(".")).join(p)),
        propagation: Duration::from_millis(a.propagation_ms.unwrap_or(2_000)),
        renew_fraction: fraction,
        renew_after: a.renew_after_secs.map(Duration::from_secs),
        certificates,
        dns01,
        profile: a.profile.as_ref().map(|p| p.trim().to_string()),
        eab,
        route53,
    })
}

fn gossip_config(
    g: &RawGossip,
    path: &Path,
    err: &dyn Fn(&str, String) -> ConfigError,
    env_err: &dyn Fn(&str, String) -> ConfigError,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<GossipConfig, ConfigError> {
    let addr = |key: &str, v: &str| -> Result<SocketAddr, ConfigError> {
        v.parse()
            .map_err(|_| err(key, format!("{v:?} is not an IP:port address")))
    };
    let bind = addr("gossip.bind", &g.bind)?;
    let advertise = match &g.advertise {
        Some(a) if a.trim() == "imds" => Advertise::Imds { port: bind.port() },
        Some(a) => Advertise::Addr(addr("gossip.advertise", a)?),
        None if bind.ip().is_unspecified() => {
            return Err(err(
                "gossip.bind",
                format!("{bind} is unspecified: set gossip.advertise to the address peers reach (or \"imds\" on EC2)"),
            ))
        }
        None => Advertise::Addr(bind),
    };

    let seeds = g
        .seeds
        .iter()
        .enumerate()
        .map(|(i, s)| addr(&format!("gossip.seeds[{i}]"), s))
        .collect::<Result<Vec<_>, _>>()?;
    let public = env("EDGEMESH_PUBLIC_IP")
        .map(|v| (v, true))
        .or(g.public_ip.clone().map(|v| (v, false)));
    let public_ip = match public {
        None => PublicIp::Unset,
        Some((v, _)) if v.trim() == "imds" => PublicIp::Imds,
        Some((v, from_env)) => PublicIp::Fixed(v.parse().map_err(|_| {
            let msg =
                format!("{v:?} is not an IP address (or \"imds\": ask EC2's metadata service)");
            if from_env {
                env_err("EDGEMESH_PUBLIC_IP", msg)
            } else {
                err("gossip.public_ip", msg)
            }
        })?),
    };
    // Keys: the environment wins over the key file; several keys (rotation) are separated by
    // commas or lines, the first one sends.
    let (text, source) = match (env("EDGEMESH_CLUSTER_KEY"), &g.key_file) {
        (Some(v), _) => (v, None),
        (None, Some(f)) => {
            let file = path.parent().unwrap_or(Path::new(".")).join(f);
            let text = std::fs::read_to_string(&file).map_err(|e| {
                err("gossip.key_file", format!("cannot read {}: {e}", file.display()))
            })?;
            (text, Some(()))
        }
        (None, None) => {
            return Err(err(
                "gossip",
                "no cluster key: set EDGEMESH_CLUSTER_KEY or gossip.key_file (meshctl keygen makes one)".into(),
            ))
        }
    };
    let keys: Vec<String> = text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect();
    if keys.is_empty() {
        let msg = "holds no key".to_string();
        return Err(match source {
            Some(()) => err("gossip.key_file", msg),
            None => env_err("EDGEMESH_CLUSTER_KEY", msg),
        });
    }
    for (i, k) in keys.iter().enumerate() {
        if let Err(e) = edgemesh_gossip::ClusterKey::from_base64(k) {
            let msg = format!("key {}: {e}", i + 1);
            return Err(match source {
                Some(()) => err("gossip.key_file", msg),
                None => env_err("EDGEMESH_CLUSTER_KEY", msg),
            });
        }
    }
    let node_id = match &g.node_id {
        Some(id) if !id.trim().is_empty() => id.trim().to_string(),
        Some(_) => return Err(err("gossip.node_id", "must not be empty".into())),
        None => std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| match advertise {
                Advertise::Addr(a) => a.to_string(),
                // Learned with the address at start.
                Advertise::Imds { .. } => String::new(),
            }),
    };
    let size = g.expected_cluster_size.unwrap_or(16).max(1);
    let lan = edgemesh_gossip::membership::MembershipConfig::lan(size);
    let ms = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_millis);
    let out = GossipConfig {
        node_id,
        bind,
        advertise,
        seeds,
        ecs_seed_service: g
            .ecs_seed_service
            .as_ref()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
        public_ip,
        keys,
        probe_period: ms(g.probe_period_ms, lan.probe_period),
        probe_rtt: ms(g.probe_rtt_ms, lan.probe_rtt),
        indirect_probes: g.indirect_probes.unwrap_or(lan.indirect_probes),
        suspect_to_down: ms(g.suspect_to_down_ms, lan.suspect_to_down),
        max_packet_size: g.max_packet_size.unwrap_or(lan.max_packet_size),
        expected_cluster_size: size,
        sync_port: match g.sync_port {
            Some(p) => p,
            None => advertise.port().checked_add(1).ok_or_else(|| {
                err(
                    "gossip.sync_port",
                    "the gossip port is 65535: set sync_port".into(),
                )
            })?,
        },
        sync_interval: Duration::from_secs(g.sync_interval_secs.unwrap_or(30).max(1)),
        bootstrap_expect: g.bootstrap_expect.unwrap_or(3),
        heartbeat: Duration::from_millis(g.heartbeat_ms.unwrap_or(200)),
        lease: Duration::from_millis(g.lease_ms.unwrap_or(1_000)),
        election_timeout: Duration::from_millis(g.election_timeout_ms.unwrap_or(1_500)),
        settle: Duration::from_millis(g.settle_ms.unwrap_or(500)),
        reap_after: Duration::from_secs(g.reap_after_secs.unwrap_or(600)),
    };
    if out.bootstrap_expect == 0 {
        return Err(err("gossip.bootstrap_expect", "must be at least 1".into()));
    }
    // The safety of the leader lease rests on this ordering (see the gossip crate's election).
    if !(out.heartbeat < out.lease && out.lease < out.election_timeout) {
        return Err(err(
            "gossip.lease_ms",
            "need heartbeat_ms < lease_ms < election_timeout_ms".into(),
        ));
    }
    if out.sync_port == advertise.port() {
        return Err(err(
            "gossip.sync_port",
            "must differ from the gossip port".into(),
        ));
    }
    if out.probe_rtt >= out.probe_period {
        return Err(err(
            "gossip.probe_rtt_ms",
            "must be shorter than gossip.probe_period_ms".into(),
        ));
    }
    if !(1..=16).contains(&out.indirect_probes) {
        return Err(err(
            "gossip.indirect_probes",
            "must be between 1 and 16".into(),
        ));
    }
    if !(512..=65_000).contains(&out.max_packet_size) {
        return Err(err(
            "gossip.max_packet_size",
            "must be between 512 and 65000".into(),
        ));
    }
    Ok(out)
}

/// `[limits]` with its defaults, each value checked against a sane range.
fn limits(
    l: &RawLimits,
    session_resumption: bool,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<edgemesh_proxy::ProxySettings, ConfigError> {
    let d = edgemesh_proxy::ProxySettings::default();
    fn within<T: PartialOrd + std::fmt::Display + Copy>(
        v: Option<T>,
        default: T,
        (lo, hi): (T, T),
        key: &str,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<T, ConfigError> {
        match v {
            None => Ok(default),
            Some(v) if v >= lo && v <= hi => Ok(v),
            Some(v) => Err(err(
                &format!("limits.{key}"),
                format!("{v} is out of range: must be between {lo} and {hi}"),
            )),
        }
    }
    let secs = |v, d: Duration, key, range| {
        within(v, d.as_secs(), range, key, err).map(Duration::from_secs)
    };
    Ok(edgemesh_proxy::ProxySettings {
        header_read_timeout: secs(
            l.header_read_timeout_secs,
            d.header_read_timeout,
            "header_read_timeout_secs",
            (1, 3600),
        )?,
        // hyper's read buffer cannot be smaller than 8 KiB.
        max_header_bytes: within(
            l.max_header_bytes,
            d.max_header_bytes,
            (8192, 1 << 20),
            "max_header_bytes",
            err,
        )?,
        max_headers: within(l.max_headers, d.max_headers, (8, 1000), "max_headers", err)?,
        max_connections: within(
            l.max_connections,
            d.max_connections,
            (1, 1_000_000),
            "max_connections",
            err,
        )?,
        h2_max_concurrent_streams: within(
            l.h2_max_concurrent_streams,
            d.h2_max_concurrent_streams,
            (1, 10_000),
            "h2_max_concurrent_streams",
            err,
        )?,
        connect_timeout: within(
            l.upstream_connect_timeout_ms,
            d.connect_timeout.as_millis() as u64,
            (1, 60_000),
            "upstream_connect_timeout_ms",
            err,
        )
        .map(Duration::from_millis)?,
        response_timeout: secs(
            l.upstream_response_timeout_secs,
            d.response_timeout,
            "upstream_response_timeout_secs",
            (1, 3600),
        )?,
        session_resumption,
        ..d
    })
}

/// `v` when within `lo..=hi`, else an error naming `key`.
fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    v: T,
    (lo, hi): (T, T),
    key: &str,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<T, ConfigError> {
    if v >= lo && v <= hi {
        Ok(v)
    } else {
        Err(err(
            key,
            format!("{v} is out of range: must be between {lo} and {hi}"),
        ))
    }
}

fn access_log(
    a: &RawAccessLog,
    path: &Path,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<edgemesh_proxy::AccessLogSpec, ConfigError> {
    let sample = a.sample.unwrap_or(1.0);
    if !(sample > 0.0 && sample <= 1.0) {
        return Err(err(
            "access_log.sample",
            format!("{sample} is out of range: must be above 0 and at most 1"),
        ));
    }
    let file = match a.path.as_deref().map(str::trim) {
        None | Some("stdout") => None,
        Some("") => return Err(err("access_log.path", "is empty".into())),
        Some(p) => {
            let p = path.parent().unwrap_or(Path::new(".")).join(p);
            let dir = p.parent().unwrap_or(Path::new("."));
            if !dir.is_dir() {
                return Err(err(
                    "access_log.path",
                    format!("directory {} does not exist", dir.display()),
                ));
            }
            Some(p)
        }
    };
    Ok(edgemesh_proxy::AccessLogSpec {
        format: match a.format {
            RawLogFormat::Json => edgemesh_proxy::LogFormat::Json,
            RawLogFormat::Combined => edgemesh_proxy::LogFormat::Combined,
        },
        path: file,
        sample,
    })
}

fn health_check(
    h: &RawHealthCheck,
    key: &str,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<edgemesh_proxy::HealthCheckSpec, ConfigError> {
    use edgemesh_proxy::CheckKind;
    let k = |name: &str| format!("{key}.{name}");
    let kind = match h.kind {
        RawCheckKind::Tcp => {
            for (name, set) in [
                ("path", h.path.is_some()),
                ("host", h.host.is_some()),
                ("expect_status", h.expect_status.is_some()),
            ] {
                if set {
                    return Err(err(&k(name), "applies to type = \"http\" only".into()));
                }
            }
            CheckKind::Tcp
        }
        RawCheckKind::Http => {
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
                return Err(err(
                    &k("path"),
                    format!("{path:?} is not a path starting with '/'"),
                ));
            }
            if let Some(host) = &h.host {
                check_host(host)
                    .ok()
                    .filter(|h| !h.contains('*'))
                    .ok_or_else(|| err(&k("host"), format!("{host:?} is not a host name")))?;
            }
            let raw = h.expect_status.as_deref().unwrap_or("200-399");
            let status = |s: &str| {
                s.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|s| (100..=599).contains(s))
            };
            let expect = match raw.split_once('-') {
                None => status(raw).map(|s| (s, s)),
                Some((a, b)) => status(a).zip(status(b)).filter(|(a, b)| a <= b),
            }
            .ok_or_else(|| {
                err(
                    &k("expect_status"),
                    format!(
                        "{raw:?} is not a status (\"200\") or a range (\"200-399\") within 100-599"
                    ),
                )
            })?;
            CheckKind::Http {
                path,
                host: h.host.clone(),
                expect,
            }
        }
    };
    let interval_ms = in_range(
        h.interval_ms.unwrap_or(5_000),
        (100, 3_600_000),
        &k("interval_ms"),
        err,
    )?;
    let timeout_ms = in_range(
        h.timeout_ms.unwrap_or(2_000),
        (10, interval_ms),
        &k("timeout_ms"),
        err,
    )?;
    Ok(edgemesh_proxy::HealthCheckSpec {
        kind,
        interval_ms,
        timeout_ms,
        healthy_threshold: in_range(
            h.healthy_threshold.unwrap_or(2),
            (1, 100),
            &k("healthy_threshold"),
            err,
        )?,
        unhealthy_threshold: in_range(
            h.unhealthy_threshold.unwrap_or(3),
            (1, 100),
            &k("unhealthy_threshold"),
            err,
        )?,
    })
}

/// A route host: an exact name, `*.suffix`, or `*`.
/// A route host as the configuration takes it (`name`, `*.suffix` or `*`), lower-cased.
pub(crate) fn check_host(h: &str) -> Result<String, String> {
    if h == "*" {
        return Ok(h.into());
    }
    let name = h.strip_prefix("*.").unwrap_or(h);
    match normalize_host(name) {
        Some(n) if n == name.to_ascii_lowercase() && !n.contains('*') => Ok(h.to_ascii_lowercase()),
        _ => Err(format!(
            "{h:?} is not a host name (use a name, *.suffix or *; no port)"
        )),
    }
}

#[cfg(test)]
mod tests;
