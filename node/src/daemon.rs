//! The single-node daemon: loads the config, feeds the data path, serves the admin API, and
//! reacts to SIGHUP / file changes (reload) and SIGTERM / SIGINT (drain, then exit).
//!
//! Keep the last good state: a config that fails to parse, validate, load its certificates or
//! bind its listeners is rejected whole, logged, counted, shown in `/status`, and the running
//! configuration keeps serving.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use edgemesh_proxy::{EndpointSpec, Metrics, Proxy, TableSpec, Workers};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::config::{self, Advertise, Config, ConfigError, GossipConfig, PublicIp};
use crate::projection;
use edgemesh_gossip::membership::{MembershipConfig, NodeIdentity};
use edgemesh_gossip::ClusterState;
use edgemesh_gossip::{
    ClusterKey, ElectionConfig, Keyring, Mesh, MeshConfig, MeshStatus, NodeMeta,
};

mod cluster;

pub use cluster::ChangeError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Exit status 2, like `nginx -t`.
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("pool {0:?} is not in the configuration")]
    UnknownPool(String),
    #[error("this node runs alone: no [gossip] section")]
    NoMesh,
    #[error("{0}")]
    NotLeader(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct ReloadOutcome {
    pub ok: bool,
    pub at: u64,
    pub trigger: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct ConfigState {
    file: PathBuf,
    /// Increments with every configuration applied, the first included.
    generation: u64,
    loaded_at: u64,
    last_reload: Option<ReloadOutcome>,
}

pub struct Daemon {
    proxy: Arc<Proxy>,
    /// The mesh, when `[gossip]` is configured; taken out to leave at shutdown.
    mesh: Mutex<Option<Mesh>>,
    /// The mesh's replicated state (a local one on a single node), which the proxy's pools
    /// are projected from.
    cluster_state: Arc<Mutex<ClusterState>>,
    ecs_metrics: crate::ecs::EcsMetrics,
    /// No other member seen: the ECS seed lookup runs while this holds.
    alone: Arc<std::sync::atomic::AtomicBool>,
    /// DNS-discovered pools (each node resolves for itself).
    dns: Mutex<BTreeMap<String, crate::dns::DnsPoolStatus>>,
    dns_endpoints: Mutex<BTreeMap<String, Vec<SocketAddr>>>,
    /// Bumped whenever `dns_endpoints` changes.
    dns_changes: std::sync::atomic::AtomicU64,
    /// What the last pool projection was computed from: (state changes, config generation,
    /// DNS changes); the 250 ms tick does nothing while none of them moved.
    projected: Mutex<Option<(u64, u64, u64)>>,
    /// The state's change counter at the last ACME projection.
    acme_projected: std::sync::atomic::AtomicU64,
    /// The published pools last applied to the proxy.
    published: Mutex<BTreeMap<String, Vec<EndpointSpec>>>,
    /// ACME answers and certificates last projected from the cluster state.
    acme_tokens: Mutex<std::collections::HashMap<String, String>>,
    acme_certs: Mutex<BTreeMap<String, crate::acme::CertRecord>>,
    /// ACME orders placed by this node, by result, and the last outcome per host.
    acme_orders: Family<ResultLabel, Counter>,
    acme_started: Counter,
    drain: Mutex<crate::drain::Drain>,
    dns_writes: Family<ResultLabel, Counter>,
    held_sent: std::sync::atomic::AtomicBool,
    cert_days_left: Family<CertLabel, prometheus_client::metrics::gauge::Gauge>,
    /// The ACME account credentials as last seen (state or disk).
    acme_account: Mutex<Option<String>>,
    /// Routes from ECS docker labels last applied, and the ones refused.
    labels: Mutex<projection::LabelTable>,
    gossip_packets: Family<ResultLabel, Counter>,
    gossip_members: Family<MemberLabel, prometheus_client::metrics::gauge::Gauge>,
    sync_rounds: Family<ResultLabel, Counter>,
    leader_changes: Counter,
    broadcast_backlog: prometheus_client::metrics::gauge::Gauge,
    current: tokio::sync::Mutex<(Config, u64)>,
    /// The cluster-wide configuration running here, and the state's change counter when it
    /// was last looked at.
    cluster: Mutex<cluster::Local>,
    cluster_seen: std::sync::atomic::AtomicU64,
    state: Mutex<ConfigState>,
    reloads: Family<ResultLabel, Counter>,
    /// Reads of the cluster configuration object, by result.
    config_source_reads: Family<ResultLabel, Counter>,
    registry: Registry,
    pub admin_addr: SocketAddr,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
/// `{result="..."}`: reloads, gossip packets, sync rounds, ACME orders.
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct CertLabel {
    /// The certificate's first name.
    name: String,
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct MemberLabel {
    state: &'static str,
}

async fn start_mesh(
    g: &GossipConfig,
    ecs: Option<&crate::ecs::EcsSettings>,
    alone: &Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Mesh> {
    let advertise = match g.advertise {
        Advertise::Addr(a) => a,
        Advertise::Imds { port } => SocketAddr::new(
            crate::aws::imds_private_ip()
                .await
                .map_err(|e| anyhow::anyhow!("gossip.advertise = \"imds\": {e}"))?,
            port,
        ),
    };
    let node_id = if g.node_id.is_empty() {
        advertise.to_string()
    } else {
        g.node_id.clone()
    };
    let seeds = crate::ecs::seeds::SharedSeeds {
        fixed: g.seeds.clone(),
        found: Default::default(),
    };
    if let (Some(service), Some(ecs)) = (&g.ecs_seed_service, ecs) {
        let api =
            crate::ecs::api::SdkApi::new(&ecs.cluster, ecs.region.as_deref(), ecs.call_timeout)
                .await;
        let alone = alone.clone();
        tokio::spawn(crate::ecs::seeds::run(
            api,
            service.clone(),
            advertise,
            seeds.found.clone(),
            move || !alone.load(std::sync::atomic::Ordering::Relaxed),
            Duration::from_secs(5),
        ));
    }
    let keys = g
        .keys
        .iter()
        .map(|k| ClusterKey::from_base64(k))
        .collect::<Result<Vec<_>, _>>()?;
    let membership = MembershipConfig {
        probe_period: g.probe_period,
        probe_rtt: g.probe_rtt,
        indirect_probes: g.indirect_probes,
        suspect_to_down: g.suspect_to_down,
        max_packet_size: g.max_packet_size,
        ..MembershipConfig::lan(g.expected_cluster_size)
    };
    let public_ip = match g.public_ip {
        PublicIp::Fixed(ip) => Some(ip),
        PublicIp::Imds => Some(
            crate::aws::imds_public_ip()
                .await
                .map_err(|e| anyhow::anyhow!("gossip.public_ip = \"imds\": {e}"))?,
        ),
        PublicIp::Unset => None,
    };
    // The start time: a restarted node outranks its previous self.
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64);
    let me = NodeIdentity {
        id: node_id,
        gossip: advertise,
        sync_port: g.sync_port,
        public: public_ip,
        incarnation: started,
        bump: 0,
    };
    let mesh = Mesh::start(MeshConfig {
        me,
        meta: NodeMeta {
            version: env!("CARGO_PKG_VERSION").into(),
            public: public_ip,
            started_at: started,
            draining: false,
        },
        bind: g.bind,
        sync_interval: g.sync_interval,
        election: ElectionConfig {
            heartbeat_ms: g.heartbeat.as_millis() as u64,
            election_timeout_min_ms: g.election_timeout.as_millis() as u64,
            lease_ms: g.lease.as_millis() as u64,
            settle_ms: g.settle.as_millis() as u64,
        },
        bootstrap_expect: g.bootstrap_expect,
        reap_after: g.reap_after,
        seeds: Box::new(seeds),
        keyring: Keyring::new(keys)?,
        membership,
    })
    .await
    .with_context(|| format!("gossip socket on {}", g.bind))?;
    Ok(mesh)
}

/// The drain budget and linger of `config`: linger = the longest entrypoint TTL plus the
/// grace period, or nothing when there is no entrypoint (no DNS answer to outlive).
fn drain_config(config: &Config) -> crate::drain::DrainConfig {
    let budget_ms = config.drain_timeout.as_millis() as u64;
    let linger_ms = config.entrypoint.as_ref().map_or(0, |e| {
        e.records
            .iter()
            .map(|r| u64::from(r.ttl) * 1000)
            .max()
            .unwrap_or(0)
            + config.drain_grace.as_millis() as u64
    });
    crate::drain::DrainConfig {
        budget_ms,
        linger_ms,
        leave_ms: (budget_ms / 10).min(1_000),
    }
}

/// Serving entries for the ACME certificates (ones that do not parse are skipped, logged).
fn acme_entries(
    certs: &BTreeMap<String, crate::acme::CertRecord>,
) -> Vec<edgemesh_proxy::CertEntry> {
    certs
        .iter()
        .filter_map(|(host, r)| {
            crate::certs::from_pem(r.chain_pem.as_bytes(), r.key_pem.as_bytes(), "acme".into())
                .map_err(
                    |e| warn!(host = %host, error = %format!("{e:#}"), "ACME certificate unusable"),
                )
                .ok()
        })
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn file_hash(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

impl Daemon {
    /// Loads `path`, binds the listeners and the admin API. Errors here end the process.
    pub async fn start(path: &Path) -> Result<(Arc<Daemon>, TcpListener), StartError> {
        let mut config = config::load_source(path, &env)?;
        // The cluster version this node ran last: serve its routes at once, as before.
        let mut cluster = cluster::Local::default();
        if let Some(v) = cluster::load_persisted(&config.data_dir) {
            match cluster::load_version(path, Some(&v)) {
                Ok(c) => {
                    info!(
                        version = v.version,
                        "starting with the cluster configuration kept on disk"
                    );
                    config = c;
                    cluster.considered = Some((v.version, v.hash.clone()));
                    cluster.applied = Some(v);
                }
                Err(e) => {
                    warn!(error = %e, "the cluster configuration kept on disk does not validate; starting from the node's file")
                }
            }
        }
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "edgemesh_config_reloads",
            "Configuration reloads, by result",
            reloads.clone(),
        );
        let config_source_reads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "edgemesh_config_source_reads",
            "Reads of the cluster configuration's S3 object by the acting leader, by result (unchanged, published, live, refused, error)",
            config_source_reads.clone(),
        );
        // The admin socket is exclusive, so binding it first stops a second daemon before its
        // listeners join the first one's ports (they use SO_REUSEPORT).
        let admin = TcpListener::bind(config.admin_addr)
            .await
            .with_context(|| format!("admin API on {}", config.admin_addr))?;
        let admin_addr = admin.local_addr().context("admin API address")?;
        let workers = match env("EDGEMESH_WORKERS") {
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| ConfigError {
                    file: path.to_path_buf(),
                    line: None,
                    key: Some("environment EDGEMESH_WORKERS".into()),
                    message: format!("{v:?} is not a positive number"),
                })?,
            None => Workers::default_count(),
        };
        let workers = Workers::start(workers).context("starting worker threads")?;
        let proxy = Arc::new(Proxy::new(
            metrics,
            Arc::new(Default::default()),
            config.limits.clone(),
            workers,
        ));
        proxy
            .set_access_log(config.access_log.as_ref(), false)
            .map_err(|e| ConfigError {
                file: config.file.clone(),
                line: None,
                key: Some("access_log.path".into()),
                message: format!("cannot open: {e}"),
            })?;
        let config_data_dir = config.data_dir.clone();
        // Cold start: the certificates this node kept serve before the mesh answers.
        let acme_certs: BTreeMap<String, crate::acme::CertRecord> =
            crate::acme::load_dir(&config.data_dir.join("acme"))
                .into_iter()
                .collect();
        let (certs, default) =
            crate::certs::build(&config, &config.tls_hosts, &acme_entries(&acme_certs))?;
        proxy.certs().replace(certs, default);
        proxy.apply(config.table.clone());
        proxy
            .set_listeners(&config.listeners)
            .await
            .context("binding listeners")?;
        let alone = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let mesh = match &config.gossip {
            Some(g) => Some(start_mesh(g, config.ecs.as_ref(), &alone).await?),
            None => None,
        };
        let gossip_packets = Family::<ResultLabel, Counter>::default();
        let gossip_members =
            Family::<MemberLabel, prometheus_client::metrics::gauge::Gauge>::default();
        registry.register(
            "edgemesh_gossip_packets",
            "Gossip datagrams, by result",
            gossip_packets.clone(),
        );
        let broadcast_backlog = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "edgemesh_gossip_broadcast_backlog",
            "State updates this node is still disseminating",
            broadcast_backlog.clone(),
        );
        let leader_changes = Counter::default();
        registry.register(
            "edgemesh_leader_changes",
            "Times this node saw the leader change",
            leader_changes.clone(),
        );
        let sync_rounds = Family::<ResultLabel, Counter>::default();
        registry.register(
            "edgemesh_sync_rounds",
            "Anti-entropy rounds over QUIC, by result",
            sync_rounds.clone(),
        );
        registry.register(
            "edgemesh_gossip_members",
            "Other members this node sees, by state",
            gossip_members.clone(),
        );
        let cluster_state = match &mesh {
            Some(m) => m.state(),
            // A single node is its own leader: its ECS poller writes here, in term 1.
            None => Arc::new(Mutex::new(ClusterState::new("local"))),
        };
        let ecs_metrics = crate::ecs::EcsMetrics::new(&mut registry);
        let acme_orders = Family::<ResultLabel, Counter>::default();
        registry.register(
            "edgemesh_acme_orders",
            "ACME orders this node placed as leader, by result (issued, failed, rate_limited)",
            acme_orders.clone(),
        );
        let dns_writes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "edgemesh_dns_writes",
            "Entrypoint record writes this node made as leader, by result (ok, failed)",
            dns_writes.clone(),
        );
        let acme_started = Counter::default();
        registry.register(
            "edgemesh_acme_orders_started",
            "ACME orders this node started as leader",
            acme_started.clone(),
        );
        let cert_days_left =
            Family::<CertLabel, prometheus_client::metrics::gauge::Gauge>::default();
        registry.register(
            "edgemesh_certificate_days_left",
            "Whole days until each served certificate expires (negative: expired)",
            cert_days_left.clone(),
        );
        let daemon = Arc::new(Daemon {
            proxy,
            cluster_state,
            ecs_metrics,
            alone,
            dns: Mutex::new(BTreeMap::new()),
            dns_endpoints: Mutex::new(BTreeMap::new()),
            dns_changes: Default::default(),
            projected: Mutex::new(None),
            acme_projected: std::sync::atomic::AtomicU64::new(u64::MAX),
            published: Mutex::new(BTreeMap::new()),
            labels: Mutex::new(projection::LabelTable::default()),
            acme_tokens: Mutex::new(Default::default()),
            acme_certs: Mutex::new(acme_certs),
            acme_orders,
            acme_started,
            drain: Mutex::new(crate::drain::Drain::new(drain_config(&config))),
            dns_writes,
            held_sent: Default::default(),
            cert_days_left,
            acme_account: Mutex::new(
                std::fs::read_to_string(config_data_dir.join("acme/account.json")).ok(),
            ),
            mesh: Mutex::new(mesh),
            gossip_packets,
            gossip_members,
            sync_rounds,
            leader_changes,
            broadcast_backlog,
            state: Mutex::new(ConfigState {
                file: path.to_path_buf(),
                generation: 1,
                loaded_at: unix_now(),
                last_reload: None,
            }),
            current: tokio::sync::Mutex::new((config, file_hash(path).unwrap_or(0))),
            cluster: Mutex::new(cluster),
            cluster_seen: std::sync::atomic::AtomicU64::new(u64::MAX),
            reloads,
            config_source_reads,
            registry,
            admin_addr,
        });
        Ok((daemon, admin))
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// Re-reads the config file and applies it, or keeps the running one and says why.
    pub async fn reload(&self, trigger: &str) -> Result<(), String> {
        let mut current = self.current.lock().await;
        let path = current.0.file.clone();
        let hash = file_hash(&path).unwrap_or(0);
        // The routing sections stay those of the cluster version running here, if any.
        let running = self.cluster.lock().expect("cluster lock").applied.clone();
        let result = self.apply(&current.0, running.as_ref()).await;
        let out = match result {
            Ok(config) => {
                info!(file = %path.display(), trigger, "configuration reloaded");
                if !config.shadowed.is_empty() && running.is_some() {
                    warn!(sections = ?config.shadowed, "these sections of the node's file are not used: the cluster configuration holds them");
                }
                *current = (config, hash);
                self.config_applied(trigger, None);
                Ok(())
            }
            Err(e) => {
                error!(trigger, error = %e, "configuration rejected; the previous one keeps serving");
                // Remember the hash so a bad file is not re-tried every poll.
                current.1 = hash;
                self.config_applied(trigger, Some(e.clone()));
                Err(e)
            }
        };
        drop(current);
        self.retry_refused();
        out
    }

    /// Loads the node's file (with `cluster`'s routing sections, if any) and applies it.
    async fn apply(
        &self,
        old: &Config,
        cluster: Option<&crate::cluster_config::ConfigVersion>,
    ) -> Result<Config, String> {
        let new = cluster::load_version(&old.file, cluster).map_err(|e| e.to_string())?;
        for (what, changed) in [
            ("node.admin_addr", new.admin_addr != old.admin_addr),
            ("node.data_dir", new.data_dir != old.data_dir),
            ("gossip", new.gossip != old.gossip),
        ] {
            if changed {
                warn!(
                    key = what,
                    "changes to this key take effect at the next restart"
                );
            }
        }
        let acme = acme_entries(&self.acme_certs.lock().expect("acme lock"));
        let (certs, default) = crate::certs::build(&new, &self.tls_hosts(&new), &acme)
            .map_err(|e| format!("{e:#}"))?;
        // Last of the checks that can fail without undoing anything. A reload also reopens
        // the log file, so logrotate's postrotate can be `kill -HUP` or `meshctl reload`.
        self.proxy
            .set_access_log(new.access_log.as_ref(), true)
            .map_err(|e| format!("access_log.path: cannot open: {e}"))?;
        let old_certs = self.proxy.certs().entries();
        let old_status = self.proxy.certs().status();
        let old_default = old_status.iter().position(|c| c.default);
        self.proxy.certs().replace(certs, default);
        self.proxy.apply(self.table_for(&new));
        if let Err(e) = self.proxy.set_listeners(&self.listeners_for(&new)).await {
            // Put everything back: the old listeners are still running.
            self.proxy.certs().replace(old_certs, old_default);
            self.proxy.apply(self.table_for(old));
            return Err(e.to_string());
        }
        Ok(new)
    }

    /// The configured table with the pools published in the mesh overlaid.
    /// The configured listeners plus those of docker labels.
    fn listeners_for(&self, config: &Config) -> Vec<edgemesh_proxy::ListenerSpec> {
        let mut all = config.listeners.clone();
        if config.ecs.as_ref().is_some_and(|e| e.labels) {
            all.extend(
                self.labels
                    .lock()
                    .expect("labels lock")
                    .listeners
                    .iter()
                    .cloned(),
            );
        }
        all
    }

    fn table_for(&self, config: &Config) -> TableSpec {
        let mut table = projection::project(
            &config.table,
            &self.published.lock().expect("published lock"),
        );
        if config.ecs.as_ref().is_some_and(|e| e.labels) {
            let labels = self.labels.lock().expect("labels lock");
            table.routes.extend(labels.routes.iter().cloned());
            table.pools.extend(labels.pools.iter().cloned());
            table.tcp_routes.extend(labels.tcp_routes.iter().cloned());
        }
        table
    }

    /// Applies pool changes published in the mesh, if any. Called every 250 ms.
    /// ACME tokens and certificates from the cluster state: tokens to the proxy, certificates
    /// to the certificate store and the data directory.
    async fn project_acme(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let (tokens, certs, account) = {
            let state = self.cluster_state.lock().expect("state lock");
            if self.acme_projected.swap(state.changes(), Relaxed) == state.changes() {
                return;
            }
            let account = state
                .leader_entries(crate::acme::ACCOUNT_KEY)
                .find(|(k, _)| *k == crate::acme::ACCOUNT_KEY)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
            let tokens: std::collections::HashMap<String, String> = state
                .leader_entries(crate::acme::TOKEN_PREFIX)
                .map(|(k, v)| {
                    (
                        k[crate::acme::TOKEN_PREFIX.len()..].to_string(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect();
            let certs: BTreeMap<String, crate::acme::CertRecord> = state
                .leader_entries(crate::acme::CERT_PREFIX)
                .filter_map(|(k, v)| {
                    Some((
                        k[crate::acme::CERT_PREFIX.len()..].to_string(),
                        crate::ecs::model::decode(v)?,
                    ))
                })
                .collect();
            (tokens, certs, account)
        };
        if let Some(json) = account {
            let changed = self.acme_account.lock().expect("acme lock").as_deref() != Some(&json);
            if changed {
                let dir = self.current.lock().await.0.data_dir.join("acme");
                if let Err(e) = crate::acme::persist_account(&dir, &json) {
                    warn!(error = %e, dir = %dir.display(), "ACME account not written to disk");
                }
                *self.acme_account.lock().expect("acme lock") = Some(json);
            }
        }
        if *self.acme_tokens.lock().expect("acme lock") != tokens {
            self.proxy.set_acme_tokens(tokens.clone());
            *self.acme_tokens.lock().expect("acme lock") = tokens;
        }
        // Only newer certificates replace what this node serves (a stale entry never wins).
        let mut changed = Vec::new();
        {
            let mut mine = self.acme_certs.lock().expect("acme lock");
            for (host, rec) in certs {
                if mine.get(&host).is_none_or(|m| m.not_after < rec.not_after) {
                    mine.insert(host.clone(), rec.clone());
                    changed.push((host, rec));
                }
            }
        }
        if changed.is_empty() {
            // What this node brought from its disk, once.
            if !self.held_sent.swap(true, Relaxed) {
                self.publish_held();
            }
            return;
        }
        self.held_sent.store(true, Relaxed);
        self.publish_held();
        let current = self.current.lock().await;
        let dir = current.0.data_dir.join("acme");
        for (host, rec) in &changed {
            if let Err(e) = crate::acme::persist(&dir, host, rec) {
                warn!(host = %host, error = %e, dir = %dir.display(), "certificate not written to disk");
            }
        }
        if self.rebuild_certs(&current.0) {
            info!(hosts = ?changed.iter().map(|(h, _)| h).collect::<Vec<_>>(), "ACME certificates now served");
        }
    }

    /// The hosts that get certificates: the configuration's TLS route hosts, then those of
    /// the docker label routes.
    fn tls_hosts(&self, config: &Config) -> Vec<String> {
        let mut hosts = config.tls_hosts.clone();
        if config.ecs.as_ref().is_some_and(|e| e.labels) {
            for h in &self.labels.lock().expect("labels lock").tls_hosts {
                if !hosts.contains(h) {
                    hosts.push(h.clone());
                }
            }
        }
        hosts
    }

    /// Rebuilds the served certificates from the files, ACME and the local CA; on failure
    /// the previous ones keep serving. True if rebuilt.
    fn rebuild_certs(&self, config: &Config) -> bool {
        let acme = acme_entries(&self.acme_certs.lock().expect("acme lock"));
        match crate::certs::build(config, &self.tls_hosts(config), &acme) {
            Ok((certs, default)) => {
                self.proxy.certs().replace(certs, default);
                true
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "certificates not rebuilt; the previous ones keep serving");
                false
            }
        }
    }

    /// Tells the mesh which ACME certificates this node serves (`held/<id>`).
    fn publish_held(&self) {
        let held: crate::acme::Held = self
            .acme_certs
            .lock()
            .expect("acme lock")
            .iter()
            .map(|(h, r)| (h.clone(), r.not_after))
            .collect();
        let me = crate::entrypoint::EntrypointHost::node_id(self);
        self.write_own(
            &format!("{}{me}", crate::acme::HELD_PREFIX),
            crate::ecs::model::encode(&held),
        );
    }

    async fn project_pools(&self) {
        if let Some(m) = self.mesh.lock().expect("mesh lock").as_ref() {
            self.alone
                .store(m.member_count() == 0, std::sync::atomic::Ordering::Relaxed);
        }
        let current = self.current.lock().await;
        let inputs = (
            self.cluster_state.lock().expect("state lock").changes(),
            self.state.lock().expect("state lock").generation,
            self.dns_changes.load(std::sync::atomic::Ordering::Relaxed),
        );
        if self
            .projected
            .lock()
            .expect("projected lock")
            .replace(inputs)
            == Some(inputs)
        {
            return;
        }
        let mut published = projection::published(
            &self.cluster_state.lock().expect("state lock"),
            &current.0.ecs_targets,
        );
        for (pool, addrs) in self.dns_endpoints.lock().expect("dns lock").iter() {
            if current.0.dns_targets.contains_key(pool) {
                published.entry(pool.clone()).or_insert_with(|| {
                    addrs
                        .iter()
                        .map(|&addr| EndpointSpec { addr, weight: 1 })
                        .collect()
                });
            }
        }
        let labels = match current.0.ecs.as_ref().filter(|e| e.labels) {
            Some(e) => projection::label_routes(
                &self.cluster_state.lock().expect("state lock"),
                &current.0.table,
                &current.0.listeners,
                e.label_tcp_ip,
            ),
            None => projection::LabelTable::default(),
        };
        let same_labels = *self.labels.lock().expect("labels lock") == labels;
        if *self.published.lock().expect("published lock") == published && same_labels {
            return;
        }
        if !same_labels {
            for c in &labels.conflicts {
                warn!(conflict = %c, "docker label route refused");
            }
            info!(
                routes = labels.routes.len(),
                tcp = labels.listeners.len(),
                "routes from docker labels changed"
            );
            let (listeners_changed, tls_changed) = {
                let old = self.labels.lock().expect("labels lock");
                (
                    old.listeners != labels.listeners,
                    old.tls_hosts != labels.tls_hosts,
                )
            };
            *self.labels.lock().expect("labels lock") = labels;
            if tls_changed {
                // New label hosts get their local CA certificate now, ACME's when issued.
                self.rebuild_certs(&current.0);
            }
            if listeners_changed {
                // Routes first (a new listener finds its pool), then the listeners.
                self.proxy.apply(self.table_for(&current.0));
                let all = self.listeners_for(&current.0);
                if let Err(e) = self.proxy.set_listeners(&all).await {
                    error!(error = %e, "TCP listeners from docker labels not bound; the others keep running");
                }
            }
        }
        info!(pools = ?published.keys().collect::<Vec<_>>(), "pools changed in the cluster state");
        *self.published.lock().expect("published lock") = published;
        self.proxy.apply(self.table_for(&current.0));
    }

    /// The ECS topology as this node holds it: the leader's last poll, every service, and
    /// what each ECS pool selects from it.
    pub async fn topology_json(&self) -> serde_json::Value {
        use crate::ecs::model::{decode, ServiceTopology};
        let targets = self.current.lock().await.0.ecs_targets.clone();
        let dns = self.dns_status();
        let state = self.cluster_state.lock().expect("state lock");
        let status = state
            .get(crate::ecs::STATUS_KEY)
            .and_then(decode::<crate::ecs::PollStatus>);
        let services: BTreeMap<String, ServiceTopology> = state
            .leader_entries(crate::ecs::SERVICE_PREFIX)
            .filter_map(|(k, v)| {
                Some((
                    k[crate::ecs::SERVICE_PREFIX.len()..].to_string(),
                    decode(v)?,
                ))
            })
            .collect();
        let pools: Vec<serde_json::Value> = targets
            .iter()
            .map(|(pool, t)| {
                let (endpoints, error) = match services.get(&t.service).map(|s| t.select(s)) {
                    None => (0, Some("not polled yet (or no such service)".to_string())),
                    Some(Ok(a)) if a.is_empty() => (0, Some("no running task: answers 503".into())),
                    Some(Ok(a)) => (a.len(), None),
                    Some(Err(e)) => (0, Some(e.to_string())),
                };
                serde_json::json!({
                    "pool": pool, "service": t.service, "container": t.container,
                    "port": t.port, "endpoints": endpoints, "error": error,
                })
            })
            .collect();
        let labels = self.labels.lock().expect("labels lock");
        let label_routes: Vec<serde_json::Value> = labels
            .routes
            .iter()
            .map(|r| serde_json::json!({"hosts": r.hosts, "path_prefix": r.path_prefix, "pool": r.pool}))
            .collect();
        serde_json::json!({
            "status": status, "services": services, "pools": pools, "dns": dns,
            "label_routes": label_routes, "label_conflicts": labels.conflicts,
        })
    }

    /// Resolves the configuration's DNS pools as their answers expire, forever.
    async fn run_dns(self: Arc<Self>) {
        let servers = self.current.lock().await.0.dns_servers.clone();
        let resolver = match crate::dns::resolver(&servers) {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "no DNS resolver: DNS pools keep their configured endpoints");
                return;
            }
        };
        let mut dns = crate::dns::DnsPools::default();
        loop {
            let targets = self.current.lock().await.0.dns_targets.clone();
            if !targets.is_empty() || !dns.status().is_empty() {
                if dns.tick(&resolver, &targets).await {
                    *self.dns_endpoints.lock().expect("dns lock") = dns.endpoints();
                    self.dns_changes
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                *self.dns.lock().expect("dns lock") = dns.status();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// DNS pools: target, endpoints, last error.
    pub fn dns_status(&self) -> serde_json::Value {
        serde_json::to_value(&*self.dns.lock().expect("dns lock")).unwrap_or_default()
    }

    /// The replicated state this node holds.
    pub fn cluster_state(&self) -> &Arc<Mutex<ClusterState>> {
        &self.cluster_state
    }

    /// Starts the ECS poller when configured (it polls only while this node is the leader).
    async fn start_ecs(self: &Arc<Self>) {
        let (settings, me) = {
            let c = self.current.lock().await;
            let me =
                c.0.gossip
                    .as_ref()
                    .map_or("local".to_string(), |g| g.node_id.clone());
            (c.0.ecs.clone(), me)
        };
        let Some(settings) = settings else {
            return;
        };
        let api = crate::ecs::api::SdkApi::new(
            &settings.cluster,
            settings.region.as_deref(),
            settings.call_timeout,
        )
        .await;
        info!(cluster = %settings.cluster, interval_secs = settings.poll_interval.as_secs(), "ECS provider on");
        let publisher: Arc<dyn crate::ecs::Publisher> = self.clone();
        tokio::spawn(crate::ecs::run(
            api,
            settings,
            me,
            publisher,
            self.ecs_metrics.clone(),
        ));
    }

    /// Publishes a pool's endpoints for the whole mesh. Only the acting leader may.
    pub async fn publish_pool(
        &self,
        name: &str,
        endpoints: &[(SocketAddr, u32)],
    ) -> Result<(), PublishError> {
        if !self
            .current
            .lock()
            .await
            .0
            .table
            .pools
            .iter()
            .any(|p| p.name == name)
        {
            return Err(PublishError::UnknownPool(name.to_string()));
        }
        let mesh = self.mesh.lock().expect("mesh lock");
        let mesh = mesh.as_ref().ok_or(PublishError::NoMesh)?;
        mesh.publish_as_leader(
            &format!("{}{name}", projection::POOL_PREFIX),
            projection::encode(endpoints),
        )
        .map_err(|e| PublishError::NotLeader(e.to_string()))
    }

    pub fn status_json(&self) -> serde_json::Value {
        let status = self.proxy.status();
        let mut v = serde_json::to_value(&status).unwrap_or_default();
        let now = unix_now() as i64;
        if let Some(certs) = v.get_mut("certificates").and_then(|c| c.as_array_mut()) {
            for c in certs {
                let not_after = c["not_after"].as_i64().unwrap_or(0);
                c["days_left"] = ((not_after - now) / 86_400).into();
            }
        }
        v["version"] = env!("CARGO_PKG_VERSION").into();
        v["drain"] = serde_json::to_value(self.drain.lock().expect("drain lock").status())
            .unwrap_or_default();
        {
            // Order status (the leader's) and which nodes hold which certificate (each node's).
            let state = self.cluster_state.lock().expect("state lock");
            let orders: BTreeMap<&str, crate::acme::OrderStatus> = state
                .leader_entries(crate::acme::STATUS_PREFIX)
                .filter_map(|(k, b)| {
                    Some((
                        &k[crate::acme::STATUS_PREFIX.len()..],
                        crate::ecs::model::decode(b)?,
                    ))
                })
                .collect();
            let held: BTreeMap<&str, crate::acme::Held> = state
                .prefix(crate::acme::HELD_PREFIX)
                .filter_map(|(k, b)| {
                    Some((
                        &k[crate::acme::HELD_PREFIX.len()..],
                        crate::ecs::model::decode(b)?,
                    ))
                })
                .collect();
            v["acme_orders"] = serde_json::to_value(orders).unwrap_or_default();
            v["entrypoint"] = crate::entrypoint::report(&state)
                .map_or(serde_json::Value::Null, |r| {
                    serde_json::to_value(r).unwrap_or_default()
                });
            v["acme_held"] = serde_json::to_value(held).unwrap_or_default();
        }
        v["ecs"] = self
            .cluster_state
            .lock()
            .expect("state lock")
            .get(crate::ecs::STATUS_KEY)
            .and_then(crate::ecs::model::decode::<crate::ecs::PollStatus>)
            .map_or(serde_json::Value::Null, |s| {
                serde_json::to_value(s).unwrap_or_default()
            });
        v["mesh"] = self.mesh_status().map_or(serde_json::Value::Null, |m| {
            serde_json::to_value(m).unwrap_or_default()
        });
        let state = self.state.lock().expect("state lock").clone();
        v["config"] = serde_json::to_value(state).unwrap_or_default();
        v
    }

    pub fn mesh_status(&self) -> Option<MeshStatus> {
        self.mesh
            .lock()
            .expect("mesh lock")
            .as_ref()
            .map(Mesh::status)
    }

    pub fn metrics_text(&self) -> String {
        if let Some(m) = self.mesh_status() {
            // The driver keeps its own atomics; bring the exported counters up to them.
            let catch_up = |family: &Family<ResultLabel, Counter>,
                            values: &[(&'static str, u64)]| {
                for &(result, now) in values {
                    let c = family.get_or_create(&ResultLabel { result });
                    c.inc_by(now.saturating_sub(c.get()));
                }
            };
            catch_up(
                &self.gossip_packets,
                &[
                    ("sent", m.packets_sent),
                    ("received", m.packets_received),
                    ("rejected_auth", m.packets_rejected_auth),
                    ("rejected_decode", m.packets_rejected_decode),
                ],
            );
            catch_up(
                &self.sync_rounds,
                &[("ok", m.sync_rounds_ok), ("failed", m.sync_rounds_failed)],
            );
            let members = |state: &'static str, n: usize| {
                self.gossip_members
                    .get_or_create(&MemberLabel { state })
                    .set(n as i64);
            };
            members("alive", m.members.len());
            self.broadcast_backlog.set(m.broadcast_backlog as i64);
            members("down", m.down.len());
            let c = &self.leader_changes;
            c.inc_by(m.election.leader_changes.saturating_sub(c.get()));
        }
        let now = unix_now() as i64;
        self.cert_days_left.clear();
        for c in self.proxy.certs().status() {
            let name = c.names.first().cloned().unwrap_or_default();
            self.cert_days_left
                .get_or_create(&CertLabel {
                    name,
                    source: c.source,
                })
                .set((c.not_after - now).div_euclid(86_400));
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            warn!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// Serves until SIGTERM or SIGINT, then drains within the configured timeout.
    pub async fn run(self: Arc<Self>, admin: TcpListener) -> Result<()> {
        let admin_task = tokio::spawn(crate::admin::serve(admin, self.clone()));
        self.report_start();
        self.start_ecs().await;
        let dns_task = tokio::spawn(self.clone().run_dns());
        let acme_task = tokio::spawn(crate::acme::run(self.clone()));
        let entrypoint_task = tokio::spawn(crate::entrypoint::run(self.clone()));
        let source_task = tokio::spawn(self.clone().run_config_source());
        let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut poll = tokio::time::interval(Duration::from_secs(1));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A change is applied once the file has stayed the same for one poll, so a file caught
        // half-written by an editor or `cp` is not reported as a broken config.
        let mut settling: Option<u64> = None;
        let mut projection = tokio::time::interval(Duration::from_millis(250));
        projection.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain_tick = tokio::time::interval(Duration::from_millis(100));
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The proxy's drain (stop accepting, finish in-flight work), once started.
        let mut closing: Option<tokio::task::JoinHandle<usize>> = None;
        loop {
            tokio::select! {
                _ = projection.tick() => {
                    self.follow_cluster_config().await;
                    self.project_pools().await;
                    self.project_acme().await;
                }
                _ = drain_tick.tick() => {
                    use crate::drain::Phase;
                    let phase = self.drain.lock().expect("drain lock").phase();
                    if phase == Phase::Serving {
                        continue;
                    }
                    let idle = closing.as_ref().is_some_and(|c| c.is_finished());
                    // Only a draining node waits for the entrypoint to drop it.
                    let waiting = matches!(phase, Phase::Draining | Phase::Drained);
                    let entrypoint = waiting && self.current.lock().await.0.entrypoint.is_some();
                    let out_of_dns = !entrypoint || self.out_of_dns();
                    let (steps, left_dns) = {
                        let mut d = self.drain.lock().expect("drain lock");
                        let before = d.status().out_of_dns_at;
                        let steps = d.tick(crate::unix_ms(), out_of_dns, idle);
                        (steps, before.is_none() && d.status().out_of_dns_at.is_some())
                    };
                    if left_dns {
                        info!(entrypoint, "drain: out of the DNS entrypoint; lingering for its TTL and the grace period");
                    }
                    if self.drain_steps(steps, &mut closing).await {
                        break;
                    }
                }
                _ = hup.recv() => { let _ = self.reload("SIGHUP").await; }
                _ = poll.tick() => {
                    let (watch, path, known) = {
                        let c = self.current.lock().await;
                        (c.0.watch_config, c.0.file.clone(), c.1)
                    };
                    match file_hash(&path) {
                        Some(h) if watch && h != known => {
                            if settling == Some(h) {
                                settling = None;
                                let _ = self.reload("file change").await;
                            } else {
                                settling = Some(h);
                            }
                        }
                        _ => settling = None,
                    }
                }
                _ = term.recv() => self.request_drain("SIGTERM", true).await,
                _ = int.recv() => self.request_drain("SIGINT", true).await,
            }
        }
        if let Some(c) = closing {
            match c.await {
                Ok(0) | Err(_) => info!("drained; exiting"),
                Ok(left) => warn!(
                    connections = left,
                    "drain deadline reached; closing remaining connections"
                ),
            }
        }
        admin_task.abort();
        dns_task.abort();
        acme_task.abort();
        entrypoint_task.abort();
        source_task.abort();
        Ok(())
    }
}

impl Daemon {
    /// Starts a drain: `exit` (SIGTERM, SIGINT) runs it to the end and exits; otherwise the
    /// node stays drained (out of DNS, still serving) until [`Daemon::undo_drain`].
    pub async fn request_drain(&self, why: &str, exit: bool) {
        let config = self.current.lock().await.0.clone();
        let steps = {
            let mut d = self.drain.lock().expect("drain lock");
            if d.phase() == crate::drain::Phase::Serving {
                *d = crate::drain::Drain::new(drain_config(&config));
            }
            d.request(crate::unix_ms(), exit)
        };
        info!(
            trigger = why,
            exit,
            budget_secs = config.drain_timeout.as_secs(),
            "drain requested"
        );
        self.drain_steps(steps, &mut None).await;
    }

    pub fn undo_drain(&self) -> Result<(), &'static str> {
        let steps = self.drain.lock().expect("drain lock").undo()?;
        for s in steps {
            if s == crate::drain::Step::Unannounce {
                if let Some(m) = self.mesh.lock().expect("mesh lock").as_ref() {
                    m.set_draining(false);
                }
                info!("drain undone: back in service");
            }
        }
        Ok(())
    }

    /// Whether the DNS entrypoint no longer names this node (true without a public address:
    /// nothing to wait for).
    fn out_of_dns(&self) -> bool {
        let Some(me) = self.mesh_status().and_then(|m| m.me.public_addr()) else {
            return true;
        };
        let report = crate::entrypoint::report(&self.cluster_state.lock().expect("state lock"));
        match report {
            None => false,
            Some(r) => r.iter().all(|rec| {
                rec.status
                    .current
                    .as_ref()
                    .is_some_and(|c| !c.contains(&me))
            }),
        }
    }

    /// Carries out drain steps; true once the node should exit.
    async fn drain_steps(
        &self,
        steps: Vec<crate::drain::Step>,
        closing: &mut Option<tokio::task::JoinHandle<usize>>,
    ) -> bool {
        use crate::drain::Step;
        for step in steps {
            match step {
                Step::Announce => {
                    if let Some(m) = self.mesh.lock().expect("mesh lock").as_ref() {
                        m.set_draining(true);
                    }
                    info!("drain: marked draining; the leader takes this node out of DNS");
                }
                Step::Unannounce => {
                    if let Some(m) = self.mesh.lock().expect("mesh lock").as_ref() {
                        m.set_draining(false);
                    }
                }
                Step::StopAccepting { finish_by } => {
                    let left = Duration::from_millis(finish_by.saturating_sub(crate::unix_ms()));
                    info!(
                        finish_within_ms = left.as_millis() as u64,
                        "drain: no new connections, finishing in-flight requests and streams"
                    );
                    let proxy = self.proxy.clone();
                    *closing = Some(tokio::spawn(async move { proxy.drain(left).await }));
                }
                Step::Leave => {
                    let mesh = self.mesh.lock().expect("mesh lock").take();
                    if let Some(mesh) = mesh {
                        mesh.leave().await;
                        info!("drain: left the mesh");
                    }
                }
                Step::Exit => return true,
            }
        }
        false
    }

    /// A leader write through the mesh, or on a single node (its own leader, term 1) into
    /// its local state.
    fn leader_write(
        &self,
        mesh: impl FnOnce(&Mesh) -> Result<(), edgemesh_gossip::NotLeader>,
        local: impl FnOnce(&mut ClusterState, u64) -> Result<(), edgemesh_gossip::Fenced>,
    ) -> Result<(), String> {
        match self.mesh.lock().expect("mesh lock").as_ref() {
            Some(m) => mesh(m).map_err(|e| e.to_string()),
            None => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                local(&mut self.cluster_state.lock().expect("state lock"), now)
                    .map_err(|e| e.to_string())
            }
        }
    }
}

impl crate::ecs::Publisher for Daemon {
    fn acting(&self) -> bool {
        self.mesh
            .lock()
            .expect("mesh lock")
            .as_ref()
            .is_none_or(Mesh::acting)
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.cluster_state
            .lock()
            .expect("state lock")
            .get(key)
            .map(<[u8]>::to_vec)
    }

    fn keys(&self, prefix: &str) -> Vec<String> {
        let state = self.cluster_state.lock().expect("state lock");
        state
            .leader_entries(prefix)
            .map(|(k, _)| k.to_string())
            .collect()
    }

    fn delete(&self, key: &str) -> Result<(), String> {
        self.leader_write(
            |mesh| mesh.delete_as_leader(key),
            |state, now| state.delete_as_leader(key, 1, now).map(drop),
        )
    }

    fn publish(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        // Exactly one of the two closures runs; each takes the value.
        let value = std::cell::Cell::new(value);
        self.leader_write(
            |mesh| mesh.publish_as_leader(key, value.take()),
            |state, now| state.set_as_leader(key, value.take(), 1, now).map(drop),
        )
    }
}

impl crate::entrypoint::EntrypointHost for Daemon {
    async fn entrypoint(&self) -> Option<crate::entrypoint::EntrypointSettings> {
        self.current.lock().await.0.entrypoint.clone()
    }

    fn serving_addresses(&self) -> std::collections::BTreeSet<std::net::IpAddr> {
        let Some(m) = self.mesh_status() else {
            return Default::default();
        };
        std::iter::once(&m.me)
            .chain(&m.members)
            .filter(|s| !s.draining())
            .filter_map(|s| s.public_addr())
            .collect()
    }

    fn node_id(&self) -> String {
        self.mesh
            .lock()
            .expect("mesh lock")
            .as_ref()
            .map_or("local".into(), |m| m.id().to_string())
    }

    fn dns_written(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.dns_writes.get_or_create(&ResultLabel { result }).inc();
    }
}

impl crate::acme::AcmeHost for Daemon {
    async fn plan(&self) -> Option<(crate::acme::AcmeSettings, Vec<Vec<String>>)> {
        let c = self.current.lock().await;
        let settings = c.0.acme.clone()?;
        let sets = crate::acme::certificate_sets(&settings, &self.tls_hosts(&c.0));
        Some((settings, sets))
    }

    fn local_cert(&self, host: &str) -> Option<crate::acme::CertRecord> {
        self.acme_certs
            .lock()
            .expect("acme lock")
            .get(host)
            .cloned()
    }

    fn local_account(&self) -> Option<String> {
        self.acme_account.lock().expect("acme lock").clone()
    }

    fn order_started(&self, _host: &str) {
        self.acme_started.inc();
    }

    fn order_done(&self, _host: &str, outcome: Result<(), &edgemesh_acme::AcmeError>) {
        let result = match outcome {
            Ok(()) => "issued",
            Err(e) if e.rate_limited => "rate_limited",
            Err(_) => "failed",
        };
        self.acme_orders
            .get_or_create(&ResultLabel { result })
            .inc();
    }
}
