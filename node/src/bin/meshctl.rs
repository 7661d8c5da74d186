//! `meshctl`: what an edgemesh node knows, from its admin API.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use edgemesh_node::acme::OrderStatus;
use edgemesh_node::drain::{DrainStatus, Phase};
use edgemesh_node::entrypoint::RecordReport;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

#[path = "meshctl/config.rs"]
mod config;

#[derive(Parser)]
#[command(
    name = "meshctl",
    version,
    about = "Inspect and steer an edgemesh node"
)]
struct Cli {
    /// Admin API address of the node.
    #[arg(
        long,
        env = "MESHCTL_ADDR",
        default_value = "127.0.0.1:9901",
        global = true
    )]
    addr: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Listeners, routes, pools with each endpoint's health, certificates with days left.
    Status {
        /// Print the node's JSON status as it is.
        #[arg(long)]
        json: bool,
    },
    /// Ask the node to re-read its configuration file.
    Reload,
    /// Take the node out of service: marked draining, the leader drops it from the DNS
    /// entrypoint; it keeps serving what still arrives. SIGTERM then exits at once.
    Drain {
        /// Return a drained node to service.
        #[arg(long)]
        undo: bool,
    },
    /// The mesh as this node sees it: members with their addresses, incarnation and age.
    Members {
        /// Print the node's JSON as it is.
        #[arg(long)]
        json: bool,
    },
    /// Publish a pool's endpoints to every node (on the acting leader's admin API).
    Pool {
        #[command(subcommand)]
        action: PoolAction,
    },
    /// The mesh's leader as this node sees it: leader, term, this node's role, the voters.
    Leader,
    /// The cluster-wide configuration (listeners, routes, pools, tls, limits) that every node
    /// runs: get, apply FILE, history, rollback VERSION, status.
    Config {
        #[command(subcommand)]
        action: config::ConfigAction,
    },
    /// Print a new random cluster key (base64) for EDGEMESH_CLUSTER_KEY or a key file.
    Keygen,
    /// Certificates this node serves: names, issuer, expiry, which nodes hold each, and the
    /// leader's last ACME attempt, next renewal and last error.
    Certs {
        /// Print the node's JSON status as it is.
        #[arg(long)]
        json: bool,
    },
    /// The DNS entrypoint: each record set, the addresses it should hold (live, non-draining
    /// members), what it holds, the last write and the last error, as the leader reported.
    Dns {
        /// Print the node's JSON as it is.
        #[arg(long)]
        json: bool,
    },
    /// ECS topology: the leader's last poll (errors, API calls per minute), what each ECS pool
    /// selects, and every service's tasks and endpoints.
    Topology {
        /// Print the node's JSON as it is.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PoolAction {
    /// Replace the endpoints of a configured pool, cluster-wide: `ip:port` or `ip:port=weight`.
    Set {
        name: String,
        endpoints: Vec<String>,
    },
}

#[derive(Deserialize)]
struct Status {
    version: String,
    mesh: Option<Mesh>,
    config: ConfigState,
    listeners: Vec<Listener>,
    routes: Vec<Route>,
    tcp_routes: Vec<TcpRoute>,
    pools: Vec<Pool>,
    certificates: Vec<Cert>,
    active_connections: u64,
    draining: bool,
    ecs: Option<PollStatus>,
    /// Certificate (first name) -> the leader's order status.
    #[serde(default)]
    acme_orders: std::collections::BTreeMap<String, OrderStatus>,
    /// Node -> certificate (first name) -> notAfter of what that node serves.
    #[serde(default)]
    acme_held: std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>>,
    /// The leader's entrypoint report.
    #[serde(default)]
    entrypoint: Option<Vec<RecordReport>>,
    #[serde(default)]
    drain: Option<DrainStatus>,
}

/// The leader's last ECS poll (node's `ecs::PollStatus`).
#[derive(Deserialize)]
struct PollStatus {
    leader: String,
    cluster: String,
    at_ms: u64,
    last_ok_ms: u64,
    error: Option<String>,
    services: u32,
    tasks: u32,
    endpoints: u32,
    calls_last_minute: u32,
    polls_ok: u64,
    polls_failed: u64,
    problems: Vec<String>,
    next_poll_ms: u64,
}

#[derive(Deserialize)]
struct Topology {
    status: Option<PollStatus>,
    services: std::collections::BTreeMap<String, ServiceTopology>,
    pools: Vec<EcsPool>,
    #[serde(default)]
    dns: std::collections::BTreeMap<String, DnsPool>,
    #[serde(default)]
    label_routes: Vec<LabelRoute>,
    #[serde(default)]
    label_conflicts: Vec<String>,
}

#[derive(Deserialize)]
struct LabelRoute {
    hosts: Vec<String>,
    path_prefix: String,
    pool: String,
}

#[derive(Deserialize)]
struct DnsPool {
    target: String,
    endpoints: Vec<String>,
    error: Option<String>,
    lookups_ok: u64,
    lookups_failed: u64,
}

#[derive(Deserialize)]
struct ServiceTopology {
    tasks: u32,
    endpoints: Vec<EcsEndpoint>,
}

#[derive(Deserialize)]
struct EcsEndpoint {
    container: String,
    container_port: u16,
    addr: String,
    task: String,
}

#[derive(Deserialize)]
struct EcsPool {
    pool: String,
    service: String,
    container: Option<String>,
    port: Option<u16>,
    endpoints: usize,
    error: Option<String>,
}

fn ago(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if ms == 0 {
        return "never".into();
    }
    if ms > now {
        return format!("in {:.1} s", (ms - now) as f64 / 1000.0);
    }
    format!("{:.1} s ago", (now - ms) as f64 / 1000.0)
}

/// Unix seconds as `YYYY-MM-DD HH:MM UTC`.
fn utc(secs: i64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(secs) else {
        return secs.to_string();
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

fn print_dns(s: &Status) {
    let Some(records) = &s.entrypoint else {
        println!(
            "no entrypoint report: [entrypoint] is not configured, or no leader has written yet"
        );
        return;
    };
    if let Some(r) = records.first() {
        println!("reported by leader {}", r.leader);
    }
    table(
        &[
            "NAME",
            "TYPE",
            "ZONE",
            "TTL",
            "SHOULD-HOLD",
            "HOLDS",
            "LAST-WRITE",
            "WRITES",
            "LAST-ERROR",
        ],
        records
            .iter()
            .map(|r| {
                let st = &r.status;
                let list = |set: &std::collections::BTreeSet<std::net::IpAddr>| {
                    set.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let holds = st.current.as_ref().map_or("unknown".into(), list);
                vec![
                    r.name.clone(),
                    r.rtype.clone(),
                    r.zone.clone(),
                    r.ttl.to_string(),
                    list(&st.desired),
                    if st.current.as_ref() == Some(&st.desired) {
                        format!("{holds} (in sync)")
                    } else {
                        holds
                    },
                    st.last_write_ms.map_or("never".into(), ago),
                    format!("{} ok, {} failed", st.writes_ok, st.writes_failed),
                    st.last_error
                        .as_ref()
                        .map_or("-".into(), |e| format!("{e} ({} in a row)", st.failures)),
                ]
            })
            .collect(),
    );
}

fn print_certs(s: &Status) {
    let nodes = s.acme_held.len();
    let rows = s
        .certificates
        .iter()
        .map(|c| {
            let first = c.names.first().cloned().unwrap_or_default();
            let acme = c.source == "acme";
            // Nodes serving this certificate or a newer one.
            let holders: Vec<&str> = s
                .acme_held
                .iter()
                .filter(|(_, h)| h.get(&first).is_some_and(|na| *na >= c.not_after))
                .map(|(n, _)| n.as_str())
                .collect();
            let o = s.acme_orders.get(&first);
            let or = |v: Option<i64>| v.map_or("-".to_string(), utc);
            vec![
                c.names.join(","),
                if c.issuer.is_empty() {
                    "-".into()
                } else {
                    c.issuer.clone()
                },
                utc(c.not_after),
                c.days_left.to_string(),
                c.source.clone(),
                if acme {
                    format!("{}/{} {}", holders.len(), nodes, holders.join(","))
                } else {
                    "-".into()
                },
                or(o.and_then(|o| o.last_attempt)),
                o.and_then(|o| o.next.map(|n| format!("{} ({})", utc(n), o.next_by)))
                    .unwrap_or_else(|| "-".into()),
                o.and_then(|o| o.last_error.clone())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &[
            "NAMES",
            "ISSUER",
            "NOT-AFTER",
            "DAYS-LEFT",
            "SOURCE",
            "HELD-BY",
            "LAST-ATTEMPT",
            "NEXT",
            "LAST-ERROR",
        ],
        rows,
    );
    // Orders with no certificate served yet (first issuance failing).
    for (host, o) in &s.acme_orders {
        if !s.certificates.iter().any(|c| c.names.first() == Some(host)) {
            println!(
                "{host}: no certificate yet; last attempt {}, last success {}, next {}: {}",
                o.last_attempt.map_or("never".into(), utc),
                o.last_success.map_or("never".into(), utc),
                o.next.map_or("-".into(), utc),
                o.last_error.as_deref().unwrap_or("-")
            );
        }
    }
}

fn print_poll(p: &PollStatus) {
    println!(
        "ecs: cluster {} polled by {} {}; last good poll {}; next {}",
        p.cluster,
        p.leader,
        ago(p.at_ms),
        ago(p.last_ok_ms),
        ago(p.next_poll_ms)
    );
    println!(
        "ecs: {} services, {} tasks, {} endpoints; {} API calls in the last minute; polls {} ok, {} failed",
        p.services, p.tasks, p.endpoints, p.calls_last_minute, p.polls_ok, p.polls_failed
    );
    if let Some(e) = &p.error {
        println!("ecs: LAST POLL FAILED, routing by the last good topology: {e}");
    }
    for problem in &p.problems {
        println!("ecs: {problem}");
    }
}

fn print_topology(t: &Topology) {
    if t.status.is_none() && t.pools.is_empty() && t.services.is_empty() {
        println!("ecs: not configured");
    } else {
        print_ecs(t);
    }
    if !t.dns.is_empty() {
        println!();
        let rows = t
            .dns
            .iter()
            .map(|(pool, d)| {
                vec![
                    pool.clone(),
                    d.target.clone(),
                    d.endpoints.join(" "),
                    format!("{} ok, {} failed", d.lookups_ok, d.lookups_failed),
                    d.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        table(
            &["DNS POOL", "TARGET", "ENDPOINTS", "LOOKUPS", "LAST ERROR"],
            rows,
        );
    }
}

fn print_ecs(t: &Topology) {
    match &t.status {
        Some(p) => print_poll(p),
        None => println!("ecs: no poll yet"),
    }
    println!();
    let rows = t
        .pools
        .iter()
        .map(|p| {
            let select = match (&p.container, p.port) {
                (Some(c), Some(port)) => format!("{c}:{port}"),
                (Some(c), None) => c.clone(),
                (None, Some(port)) => format!(":{port}"),
                (None, None) => "-".into(),
            };
            vec![
                p.pool.clone(),
                p.service.clone(),
                select,
                p.endpoints.to_string(),
                p.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["POOL", "SERVICE", "SELECT", "ENDPOINTS", "NOTE"], rows);
    println!();
    let mut rows = Vec::new();
    for (name, s) in &t.services {
        if s.endpoints.is_empty() {
            rows.push(vec![
                name.clone(),
                s.tasks.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for e in &s.endpoints {
            rows.push(vec![
                name.clone(),
                s.tasks.to_string(),
                e.task.clone(),
                format!("{}:{}", e.container, e.container_port),
                e.addr.clone(),
            ]);
        }
    }
    table(&["SERVICE", "TASKS", "TASK", "CONTAINER", "ENDPOINT"], rows);
    if !t.label_routes.is_empty() || !t.label_conflicts.is_empty() {
        println!();
        let rows = t
            .label_routes
            .iter()
            .map(|r| vec![r.hosts.join(","), r.path_prefix.clone(), r.pool.clone()])
            .collect();
        table(&["LABEL ROUTE HOSTS", "PATH", "POOL"], rows);
        for c in &t.label_conflicts {
            println!("ecs: {c}");
        }
    }
}

#[derive(Deserialize)]
struct ConfigState {
    file: String,
    generation: u64,
    last_reload: Option<Reload>,
}

#[derive(Deserialize)]
struct Reload {
    ok: bool,
    trigger: String,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Listener {
    name: String,
    bound: String,
    kind: serde_json::Value,
    accept_proxy_protocol: bool,
}

#[derive(Deserialize)]
struct Route {
    hosts: Vec<String>,
    path_prefix: String,
    pool: String,
    redirect_https: bool,
}

#[derive(Deserialize)]
struct TcpRoute {
    listener: String,
    pool: String,
    send_proxy_protocol: bool,
}

#[derive(Deserialize)]
struct Pool {
    name: String,
    balance: String,
    #[serde(default)]
    failing_open: bool,
    endpoints: Vec<Endpoint>,
}

#[derive(Deserialize)]
struct Endpoint {
    addr: String,
    weight: u32,
    healthy: bool,
    ejected_for_ms: u64,
    #[serde(default)]
    check: Option<String>,
    in_flight: u64,
    requests: u64,
    failures: u64,
}

#[derive(Deserialize)]
struct Cert {
    names: Vec<String>,
    days_left: i64,
    not_after: i64,
    source: String,
    #[serde(default)]
    issuer: String,
    default: bool,
}

#[derive(Deserialize)]
struct Mesh {
    me: Member,
    election: Election,
    down: Vec<String>,
    sync_rounds_ok: u64,
    sync_rounds_failed: u64,
    members: Vec<Member>,
    packets_sent: u64,
    packets_received: u64,
    packets_rejected_auth: u64,
    packets_rejected_decode: u64,
}

#[derive(Deserialize)]
struct Election {
    role: Option<String>,
    leader_since_secs: Option<u64>,
    term: u64,
    leader: Option<String>,
    acting: bool,
    voters: Vec<String>,
}

#[derive(Deserialize)]
struct Member {
    id: String,
    meta: Option<Meta>,
    gossip: String,
    public: Option<String>,
    incarnation: u64,
    age_secs: u64,
}

#[derive(Deserialize)]
struct Meta {
    version: String,
    draining: bool,
}

fn print_members(m: &Mesh) {
    println!(
        "{} members (this node: {}); packets sent {} received {} rejected {} (auth) {} (decode)\n",
        m.members.len() + 1,
        m.me.id,
        m.packets_sent,
        m.packets_received,
        m.packets_rejected_auth,
        m.packets_rejected_decode
    );
    let row = |x: &Member, state: &str| {
        let (version, state) = match &x.meta {
            Some(meta) if meta.draining => (meta.version.clone(), format!("{state}, draining")),
            Some(meta) => (meta.version.clone(), state.to_string()),
            None => ("?".into(), state.to_string()),
        };
        vec![
            x.id.clone(),
            x.gossip.clone(),
            x.public.clone().unwrap_or_else(|| "-".into()),
            state,
            version,
            x.incarnation.to_string(),
            format!("{}s", x.age_secs),
        ]
    };
    let role = |id: &str| match &m.election.leader {
        Some(l) if l == id => ", leader",
        _ => "",
    };
    let mut rows = vec![row(&m.me, &format!("alive (self){}", role(&m.me.id)))];
    rows.extend(
        m.members
            .iter()
            .map(|x| row(x, &format!("alive{}", role(&x.id)))),
    );
    table(
        &[
            "ID",
            "GOSSIP",
            "PUBLIC",
            "STATE",
            "VERSION",
            "INCARNATION",
            "AGE",
        ],
        rows,
    );
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(run(&cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshctl: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<ExitCode, String> {
    match &cli.command {
        Command::Status { json } => show_status(&cli.addr, *json, None, print_status).await,
        Command::Drain { undo } => {
            let path = if *undo { "/drain/undo" } else { "/drain" };
            let (code, body) = request(&cli.addr, "POST", path).await?;
            print!("{body}");
            Ok(if code == 200 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Dns { json } => show_status(&cli.addr, *json, Some("entrypoint"), print_dns).await,
        Command::Certs { json } => show_status(&cli.addr, *json, None, print_certs).await,
        Command::Topology { json } => {
            let body = request(&cli.addr, "GET", "/topology").await?.1;
            if *json {
                println!("{body}");
                return Ok(ExitCode::SUCCESS);
            }
            let t: Topology = serde_json::from_str(&body)
                .map_err(|e| format!("unexpected topology answer from {}: {e}", cli.addr))?;
            print_topology(&t);
            Ok(ExitCode::SUCCESS)
        }
        Command::Members { json } => {
            let (code, body) = request(&cli.addr, "GET", "/members").await?;
            if code != 200 || *json {
                print!("{body}");
                return Ok(if code == 200 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            let m: Mesh = serde_json::from_str(&body)
                .map_err(|e| format!("unexpected members answer from {}: {e}", cli.addr))?;
            print_members(&m);
            Ok(ExitCode::SUCCESS)
        }
        Command::Pool {
            action: PoolAction::Set { name, endpoints },
        } => {
            let body = serde_json::to_string(endpoints).expect("strings encode");
            let (code, text) =
                request_with(&cli.addr, "PUT", &format!("/pools/{name}"), body).await?;
            print!("{text}");
            Ok(if code == 200 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Leader => {
            let (code, body) = request(&cli.addr, "GET", "/members").await?;
            if code != 200 {
                print!("{body}");
                return Ok(ExitCode::FAILURE);
            }
            let m: Mesh = serde_json::from_str(&body)
                .map_err(|e| format!("unexpected members answer from {}: {e}", cli.addr))?;
            let e = &m.election;
            match &e.leader {
                Some(l) => println!(
                    "leader {l}, term {}{}, since {}s",
                    e.term,
                    if e.acting { " (this node, acting)" } else { "" },
                    e.leader_since_secs.unwrap_or(0)
                ),
                None => println!("no leader known (term {})", e.term),
            }
            println!(
                "this node: {} ({})",
                m.me.id,
                e.role.as_deref().unwrap_or("?")
            );
            println!(
                "voters: {}",
                if e.voters.is_empty() {
                    "none yet (waiting for gossip.bootstrap_expect members)".to_string()
                } else {
                    e.voters.join(", ")
                }
            );
            Ok(if e.leader.is_some() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Config { action } => config::run(&cli.addr, action).await,
        Command::Keygen => {
            println!("{}", edgemesh_gossip::ClusterKey::generate().to_base64());
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload => {
            let (code, body) = request(&cli.addr, "POST", "/reload").await?;
            print!("{body}");
            Ok(if code == 200 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// GET /status, then print it as JSON (`json_key`: only that member) or with `print`.
async fn show_status(
    addr: &str,
    json: bool,
    json_key: Option<&str>,
    print: fn(&Status),
) -> Result<ExitCode, String> {
    let body = request(addr, "GET", "/status").await?.1;
    if json {
        match json_key {
            None => println!("{body}"),
            Some(k) => {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                println!("{}", v[k]);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let status: Status =
        serde_json::from_str(&body).map_err(|e| format!("unexpected status from {addr}: {e}"))?;
    print(&status);
    Ok(ExitCode::SUCCESS)
}

async fn request(addr: &str, method: &str, path: &str) -> Result<(u16, String), String> {
    request_with(addr, method, path, String::new()).await
}

async fn request_with(
    addr: &str,
    method: &str,
    path: &str,
    body: String,
) -> Result<(u16, String), String> {
    request_for(addr, method, path, body, 5).await
}

/// A request to the admin API, given `secs` to answer.
async fn request_for(
    addr: &str,
    method: &str,
    path: &str,
    body: String,
    secs: u64,
) -> Result<(u16, String), String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("bad admin address {addr:?}: {e}"))?;
    let unreachable = |e: &dyn std::fmt::Display| {
        format!(
            "cannot reach the edgemesh admin API at {addr}: {e} (is the node running? use --addr)"
        )
    };
    let resp = tokio::time::timeout(Duration::from_secs(secs), client.request(req))
        .await
        .map_err(|_| unreachable(&"timed out"))?
        .map_err(|e| unreachable(&error_chain(&e)))?;
    let code = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(&e))?
        .to_bytes();
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s = format!("{s}: {c}");
        cur = c.source();
    }
    s
}

/// Prints rows as columns padded to the widest cell.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("  {}", s.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    println!();
}

fn print_status(s: &Status) {
    println!(
        "edgemesh {}  config {} (generation {})  connections {}{}",
        s.version,
        s.config.file,
        s.config.generation,
        s.active_connections,
        if s.draining { "  DRAINING" } else { "" }
    );
    match &s.mesh {
        Some(m) => println!(
            "mesh: {} members alive, {} down; leader {} (term {}); sync rounds {} ok, {} failed",
            m.members.len() + 1,
            m.down.len(),
            m.election.leader.as_deref().unwrap_or("none"),
            m.election.term,
            m.sync_rounds_ok,
            m.sync_rounds_failed
        ),
        None => println!("mesh: none (single node)"),
    }
    if let Some(d) = s.drain.as_ref().filter(|d| d.phase != Phase::Serving) {
        let at = |v: Option<u64>| v.map_or("-".to_string(), ago);
        println!(
            "drain: {} (since {}; out of DNS {}; closing {}; deadline {})",
            format!("{:?}", d.phase).to_uppercase(),
            at(d.since),
            at(d.out_of_dns_at),
            at(d.closing_at),
            at(d.deadline)
        );
    }
    if let Some(p) = &s.ecs {
        print_poll(p);
    }
    for (host, o) in &s.acme_orders {
        if let Some(e) = &o.last_error {
            println!(
                "acme: {host}: last order FAILED ({} in a row{}): {e}",
                o.failures,
                if o.rate_limited { ", rate limited" } else { "" }
            );
        }
    }
    if let Some(r) = &s.config.last_reload {
        match (&r.ok, &r.error) {
            (true, _) => println!("last reload ({}): ok", r.trigger),
            (false, e) => println!(
                "last reload ({}): REJECTED, previous config still serving: {}",
                r.trigger,
                e.as_deref().unwrap_or("?")
            ),
        }
    }
    println!("\nLISTENERS");
    table(
        &["NAME", "ADDRESS", "KIND", "PROXY-PROTOCOL"],
        s.listeners
            .iter()
            .map(|l| {
                vec![
                    l.name.clone(),
                    l.bound.clone(),
                    l.kind["type"].as_str().unwrap_or("?").into(),
                    if l.accept_proxy_protocol {
                        "accept"
                    } else {
                        "-"
                    }
                    .into(),
                ]
            })
            .collect(),
    );
    println!("ROUTES");
    let mut rows: Vec<Vec<String>> = s
        .routes
        .iter()
        .map(|r| {
            vec![
                r.hosts.join(","),
                r.path_prefix.clone(),
                r.pool.clone(),
                if r.redirect_https { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    rows.extend(s.tcp_routes.iter().map(|t| {
        vec![
            format!("tcp:{}", t.listener),
            "-".into(),
            t.pool.clone(),
            if t.send_proxy_protocol {
                "proxy-protocol"
            } else {
                "-"
            }
            .into(),
        ]
    }));
    table(&["HOSTS", "PATH", "POOL", "HTTPS-REDIRECT"], rows);
    println!("POOLS");
    let mut rows = Vec::new();
    for p in &s.pools {
        if p.endpoints.is_empty() {
            rows.push(vec![
                p.name.clone(),
                p.balance.clone(),
                "(no running tasks)".into(),
            ]);
        }
        for e in &p.endpoints {
            // Passive ejection, then the active check's verdict and reason.
            let mut health = if e.ejected_for_ms > 0 {
                format!("ejected {}s", e.ejected_for_ms.div_ceil(1000))
            } else if e.healthy || e.check.is_some() {
                String::new()
            } else {
                "unhealthy".into()
            };
            if let Some(c) = &e.check {
                if !health.is_empty() {
                    health.push_str("; ");
                }
                health.push_str(c);
            }
            if health.is_empty() {
                health = "healthy".into();
            }
            if p.failing_open {
                health.push_str(" [pool failing open]");
            }
            rows.push(vec![
                p.name.clone(),
                p.balance.clone(),
                e.addr.clone(),
                e.weight.to_string(),
                health,
                e.in_flight.to_string(),
                e.requests.to_string(),
                e.failures.to_string(),
            ]);
        }
    }
    table(
        &[
            "POOL",
            "BALANCE",
            "ENDPOINT",
            "WEIGHT",
            "HEALTH",
            "IN-FLIGHT",
            "REQUESTS",
            "FAILURES",
        ],
        rows,
    );
    println!("CERTIFICATES");
    table(
        &["NAMES", "DAYS-LEFT", "SOURCE", "DEFAULT"],
        s.certificates
            .iter()
            .map(|c| {
                vec![
                    c.names.join(","),
                    c.days_left.to_string(),
                    c.source.clone(),
                    if c.default { "yes" } else { "" }.into(),
                ]
            })
            .collect(),
    );
}
