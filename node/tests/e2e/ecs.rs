//! ECS topology against a real AWS API emulator: `moto_server` (started by
//! `scripts/moto_ecs.py` with its ECS fidelity patches), reached by the real SDK through
//! `AWS_ENDPOINT_URL`, and real backends on the loopback addresses the fixture registered.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ecs::types::NetworkMode;

use crate::harness::{self, Node};
pub use edgemesh_chaos_tests::aws::{
    aws_env, awsvpc, Aws, FaultProxy, FAIL_500, HANG, PASS, THROTTLE,
};

/// `moto_server` with edgemesh's ECS patches; killed on drop.
pub struct Moto {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    pub async fn start() -> Moto {
        let dir = tempfile::tempdir().unwrap();
        let port = harness::free_port();
        let log = dir.path().join("requests.log");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/moto_ecs.py");
        let out = std::fs::File::create(dir.path().join("moto.out")).unwrap();
        let child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg("--log")
            .arg(&log)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 for moto_server (scripts/test.sh installs moto[server])");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not start: {}",
                std::fs::read_to_string(dir.path().join("moto.out")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Moto {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    /// Requests so far, in order: ("service Action", unix time).
    pub fn timeline(&self) -> Vec<(String, f64)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (call, at) = l.rsplit_once(' ')?;
                Some((call.to_string(), at.parse().ok()?))
            })
            .collect()
    }

    /// Requests so far, by "service Action".
    pub fn calls(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (call, _) in self.timeline() {
            *out.entry(call).or_default() += 1;
        }
        out
    }

    pub fn count(&self, call: &str) -> usize {
        self.calls().get(call).copied().unwrap_or(0)
    }

    /// Forgets the requests logged so far.
    pub fn clear(&self) {
        std::fs::write(&self.log, "").unwrap();
    }
}

/// Backends for tasks, started and stopped as ECS starts and stops the tasks.
#[derive(Default)]
pub struct Tasks {
    live: BTreeMap<String, (harness::Backend, tokio::task::AbortHandle)>,
}

impl Tasks {
    /// Starts a backend for every task in `endpoints` that has none; returns the new ids.
    pub async fn follow(&mut self, endpoints: &BTreeMap<String, SocketAddr>) -> Vec<String> {
        let mut new = Vec::new();
        for (id, addr) in endpoints {
            if !self.live.contains_key(id) {
                let name: &'static str = Box::leak(id.clone().into_boxed_str());
                self.live
                    .insert(id.clone(), harness::backend_at(name, *addr).await);
                new.push(id.clone());
            }
        }
        new
    }

    /// Stops the backends of tasks no longer in `endpoints` (after the drain a deregistration
    /// delay would give them); returns their ids.
    pub fn reap(&mut self, endpoints: &BTreeMap<String, SocketAddr>) -> Vec<String> {
        let gone: Vec<String> = self
            .live
            .keys()
            .filter(|id| !endpoints.contains_key(*id))
            .cloned()
            .collect();
        for id in &gone {
            self.live.remove(id).unwrap().1.abort();
        }
        gone
    }
}

const TEMPLATE: &str = r#"
[node]
data_dir = "{data}"
admin_addr = "127.0.0.1:{admin}"
watch_config = false
drain_timeout_secs = 1

[ecs]
cluster = "edge"
poll_interval_secs = 1
labels = true
label_tcp_ip = "127.0.0.1"
call_timeout_ms = 500

[[listeners]]
name = "web"
addr = "127.0.0.1:{http}"
kind = "http"

[[listeners]]
name = "websecure"
addr = "127.0.0.1:{https}"
kind = "https"

[[routes]]
hosts = ["web.test"]
pool = "web"
tls = false

[[routes]]
hosts = ["api.test"]
pool = "api"
tls = false

[[routes]]
hosts = ["both.test"]
pool = "both"
tls = false

[pools.web]
ecs = { service = "web", container = "web", port = 8080 }

[pools.api]
ecs = { service = "api" }

# Ambiguous: the web tasks expose web:8080 and side:9000.
[pools.both]
ecs = { service = "web" }
"#;

/// The backends (task ids) that answered `host` in `n` requests.
async fn answered(node: &Node, host: &str, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        if let Ok((200, body)) =
            harness::http_request_host(&node.addr("http").to_string(), "GET", "/", Some(host)).await
        {
            let id = body
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            *seen.entry(id).or_default() += 1;
        }
    }
    seen
}

/// The endpoint addresses of the pool that routes `host`, from the node's status.
async fn pool_addrs(node: &Node, host: &str) -> BTreeSet<String> {
    let s = node.status().await;
    let Some(pool) = s["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| {
            r["hosts"]
                .as_array()
                .is_some_and(|h| h.iter().any(|x| x == host))
        })
        .and_then(|r| r["pool"].as_str().map(str::to_string))
    else {
        return BTreeSet::new();
    };
    edgemesh_chaos_tests::pool_endpoints(&s, &pool)
}

/// Waits until requests for `host` reach exactly the tasks in `want`; returns how long it took.
async fn wait_routes(
    node: &Node,
    host: &str,
    want: &BTreeMap<String, SocketAddr>,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    let want_addrs: BTreeSet<String> = want.values().map(|a| a.to_string()).collect();
    loop {
        // The table must hold exactly these endpoints (answers alone could come from a subset
        // while another endpoint sits ejected), and each of them must answer.
        let in_table = pool_addrs(node, host).await == want_addrs;
        let seen = answered(node, host, 3 * want.len().max(1) + 3).await;
        if in_table && seen.keys().eq(want.keys()) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{host}: answered by {:?}, want {:?}\n{}",
            seen.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Requests `host` continuously until stopped; counts answers that are not 200.
fn load(
    node: &Node,
    host: &'static str,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<(usize, usize)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let addr = node.addr("http").to_string();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        while !s.load(Ordering::Relaxed) {
            match harness::http_request_host(&addr, "GET", "/", Some(host)).await {
                Ok((200, _)) => ok += 1,
                other => {
                    eprintln!("failed request to {host}: {other:?}");
                    failed += 1
                }
            }
        }
        (ok, failed)
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_tasks_are_routed_and_followed_through_scaling_deploys_and_api_faults() {
    let moto = Moto::start().await;
    let aws = Aws::new(moto.addr, "127.0.0.2").await;
    let (subnet, sg) = aws.cluster().await;
    let web_td = aws
        .task_def("web", NetworkMode::Bridge, &[("web", 8080), ("side", 9000)])
        .await;
    let api_td = aws
        .task_def("api", NetworkMode::Awsvpc, &[("api", 7000)])
        .await;
    aws.service("web", &web_td, 2, None).await;
    aws.service("api", &api_td, 2, Some((&subnet, &sg))).await;
    // Routes from docker labels: one new host on plain HTTP only (and a TCP port); one that
    // the configuration already routes, beside a new one with TLS and a name that is none.
    let tcp_port = harness::free_port().to_string();
    for (name, host) in [
        ("shop", "shop.test"),
        ("clash", "web.test,Secure.test,bad_host!"),
    ] {
        let mut labels = vec![("edgemesh.http.host", host)];
        if name == "shop" {
            labels.push(("edgemesh.tcp.port", tcp_port.as_str()));
            labels.push(("edgemesh.http.tls", "false"));
        }
        let td = aws
            .task_def_full(name, NetworkMode::Awsvpc, &[("app", 7100)], 0, &labels)
            .await;
        aws.service(name, &td, 1, Some((&subnet, &sg))).await;
    }
    let mut label_tasks = Tasks::default();
    let shop = aws.endpoints("shop", "app", 7100).await;
    label_tasks.follow(&shop).await;
    label_tasks
        .follow(&aws.endpoints("clash", "app", 7100).await)
        .await;

    let mut web_tasks = Tasks::default();
    let mut api_tasks = Tasks::default();
    let mut web = aws.endpoints("web", "web", 8080).await;
    let api = aws.endpoints("api", "api", 7000).await;
    assert_eq!((web.len(), api.len()), (2, 2));
    assert!(
        api.values()
            .all(|a| a.ip().to_string().starts_with("127.0.1.")),
        "{api:?}"
    );
    web_tasks.follow(&web).await;
    api_tasks.follow(&api).await;

    let faults = FaultProxy::start(moto.addr).await;
    let node = harness::node_env(TEMPLATE, &[], &aws_env(faults.addr)).await;
    let took = wait_routes(&node, "web.test", &web, Duration::from_secs(15)).await;
    eprintln!("bridge service routed {took:?} after start");
    wait_routes(&node, "api.test", &api, Duration::from_secs(5)).await;
    wait_routes(&node, "shop.test", &shop, Duration::from_secs(5)).await;
    // ...and its TCP listener from `edgemesh.tcp.port`.
    let tcp: SocketAddr = format!("127.0.0.1:{tcp_port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let shop_id = shop.keys().next().unwrap().clone();
    loop {
        if tokio::net::TcpStream::connect(tcp).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "TCP label listener never bound\n{}",
                node.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let got = harness::raw_exchange(
            tcp,
            b"GET /over-tcp HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        if got.contains(&format!("{shop_id} GET /over-tcp")) {
            break;
        }
        assert!(Instant::now() < deadline, "TCP label listener: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The ambiguous pool is reported, not guessed; it stays empty (503).
    let (code, out, _) = harness::run(
        env!("CARGO_BIN_EXE_meshctl"),
        &["--addr", &node.admin(), "topology"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("several ports (side:9000, web:8080)"), "{out}");
    assert!(out.contains("ecs: cluster edge polled by local"), "{out}");
    assert!(
        out.contains("labels of service clash: web.test/ is already routed by the configuration"),
        "{out}"
    );
    assert!(
        out.contains("shop.test") && out.contains("ecs:shop"),
        "{out}"
    );
    assert!(
        out.contains("labels of service clash: \"bad_host!\" is not a host name"),
        "{out}"
    );
    // A label route host gets a certificate (the local CA here; ACME's when configured) and
    // plain HTTP redirects; `edgemesh.http.tls=false` gets neither.
    let clash_id = label_tasks
        .live
        .keys()
        .find(|id| *id != &shop_id)
        .unwrap()
        .clone();
    let (_, code, body) = harness::tls_get(
        node.addr("https"),
        "secure.test",
        &node.ca_pem(),
        false,
        "/",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with(&format!("{clash_id} GET /")), "{body}");
    let (code, _) = harness::http_request_host(
        &node.addr("http").to_string(),
        "GET",
        "/",
        Some("secure.test"),
    )
    .await
    .unwrap();
    assert_eq!(code, 308);
    assert!(
        harness::tls_connect(
            node.addr("https"),
            "shop.test",
            &node.ca_pem(),
            &[b"http/1.1"]
        )
        .await
        .is_err(),
        "no certificate for a tls=false label host"
    );
    let (status, _) = harness::http_request_host(
        &node.addr("http").to_string(),
        "GET",
        "/",
        Some("both.test"),
    )
    .await
    .unwrap();
    assert_eq!(status, 503);

    // Scale up, scale down and a rolling deploy under continuous load: every change is
    // followed within one poll period plus a second, and no request fails.
    let (stop, loader) = load(&node, "web.test");
    aws.scale("web", 3).await;
    web = aws.endpoints("web", "web", 8080).await;
    web_tasks.follow(&web).await;
    let took = wait_routes(&node, "web.test", &web, Duration::from_secs(2)).await;
    eprintln!("scale 2 -> 3 followed in {took:?}");

    aws.scale("web", 1).await;
    web = aws.endpoints("web", "web", 8080).await;
    let took = wait_routes(&node, "web.test", &web, Duration::from_secs(2)).await;
    eprintln!("scale 3 -> 1 followed in {took:?}");
    web_tasks.reap(&web);

    let web_v2 = aws
        .task_def("web", NetworkMode::Bridge, &[("web", 8080), ("side", 9000)])
        .await;
    assert!(web_v2.ends_with(":2"), "{web_v2}");
    aws.deploy("web", &web_v2).await;
    web = aws.endpoints("web", "web", 8080).await;
    assert_eq!(web_tasks.follow(&web).await.len(), 1, "one new task");
    let took = wait_routes(&node, "web.test", &web, Duration::from_secs(2)).await;
    eprintln!("deploy of revision 2 followed in {took:?}");
    assert_eq!(web_tasks.reap(&web).len(), 1, "the old task is gone");

    // API faults: throttling, then 500s. The last good topology keeps serving, the error
    // shows in meshctl status and the metrics, and polling backs off.
    for mode in [THROTTLE, FAIL_500, HANG] {
        faults.set(mode);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = node.status().await;
            if s["ecs"]["error"].is_string() {
                break;
            }
            assert!(Instant::now() < deadline, "no poll error shown: {s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (_, out, _) = harness::run(
            env!("CARGO_BIN_EXE_meshctl"),
            &["--addr", &node.admin(), "status"],
        );
        let expect = match mode {
            THROTTLE => "ThrottlingException",
            FAIL_500 => "ServerException",
            _ => "timed out",
        };
        assert!(
            out.contains("LAST POLL FAILED") && out.contains(expect),
            "{out}"
        );
        let seen = answered(&node, "web.test", 5).await;
        assert_eq!(
            seen.keys().collect::<Vec<_>>(),
            web.keys().collect::<Vec<_>>(),
            "{}",
            node.log()
                .lines()
                .filter(|l| l.contains("ECS") || l.contains("pools changed"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        faults.set(PASS);
        // Recovery is automatic: a change made meanwhile arrives after the back-off.
        aws.scale("web", 2).await;
        web = aws.endpoints("web", "web", 8080).await;
        web_tasks.follow(&web).await;
        wait_routes(&node, "web.test", &web, Duration::from_secs(30)).await;
        aws.scale("web", 1).await;
        web = aws.endpoints("web", "web", 8080).await;
        wait_routes(&node, "web.test", &web, Duration::from_secs(5)).await;
        web_tasks.reap(&web);
    }
    assert!(faults.faults.load(Ordering::Relaxed) > 0);

    // A service that really has no running task answers 503 (its pool is emptied on purpose).
    aws.scale("api", 0).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = harness::http_request_host(
            &node.addr("http").to_string(),
            "GET",
            "/",
            Some("api.test"),
        )
        .await
        .unwrap();
        if status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "api.test still answers {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = harness::http_get(&node.admin(), "/metrics")
        .await
        .unwrap()
        .1;
    let failed = metrics
        .lines()
        .find(|l| l.starts_with("edgemesh_ecs_polls_total{result=\"failed\"}"))
        .unwrap_or_else(|| panic!("no failed-poll counter:\n{metrics}"));
    assert!(!failed.ends_with(" 0"), "{failed}");
    assert!(
        metrics.contains("edgemesh_ecs_api_calls_total{call=\"ecs:ListTasks\",result=\"failed\"}")
    );

    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = loader.await.unwrap();
    eprintln!("continuous load on web.test: {ok} ok, {failed} failed");
    assert!(ok > 100, "{ok}");
    assert_eq!(failed, 0, "requests failed while tasks changed");

    // Cached task definitions and container instances: described once each, not per poll.
    let calls = moto.calls();
    eprintln!("emulator calls: {calls:?}");
    // (DescribeTaskDefinition, DescribeContainerInstances and DescribeInstances come from
    // the poller only; the fixture registers and lists.)
    assert_eq!(
        calls["ecs DescribeTaskDefinition"], 5,
        "one per revision: {calls:?}"
    );
    assert_eq!(calls["ecs DescribeContainerInstances"], 1, "{calls:?}");
    assert_eq!(calls["ec2 DescribeInstances"], 1, "{calls:?}");
}

/// The id of the node that acts as leader, or "".
async fn acting_leader(nodes: &[(String, Option<Node>)]) -> String {
    for n in nodes.iter().filter_map(|(_, n)| n.as_ref()) {
        let s = n.status().await;
        if s["mesh"]["election"]["acting"] == true {
            return s["mesh"]["me"]["id"].as_str().unwrap().to_string();
        }
    }
    String::new()
}

const MESH_TEMPLATE: &str = concat!(
    mesh_member_toml!(),
    r#"
[ecs]
cluster = "edge"
poll_interval_secs = 1

[[listeners]]
name = "web"
addr = "127.0.0.1:{http}"
kind = "http"

[[routes]]
hosts = ["web.test"]
pool = "web"
tls = false

[pools.web]
ecs = { service = "web" }
"#
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_one_poller_and_the_next_leader_resumes() {
    let moto = Moto::start().await;
    let aws = Aws::new(moto.addr, "127.0.0.3").await;
    aws.cluster().await;
    let td = aws
        .task_def("web", NetworkMode::Bridge, &[("web", 8080)])
        .await;
    aws.service("web", &td, 2, None).await;
    let mut web = aws.endpoints("web", "web", 8080).await;
    let mut tasks = Tasks::default();
    tasks.follow(&web).await;

    let dir = tempfile::tempdir().unwrap();
    let key = harness::cluster_key(dir.path());
    let env = aws_env(moto.addr);
    let mut nodes: Vec<(String, Option<Node>)> = Vec::new();
    let mut seed = String::new();
    for i in 0..5 {
        let id = format!("e{i}");
        let vars = [
            ("id", id.clone()),
            ("seeds", seed.clone()),
            ("keyfile", key.display().to_string()),
        ];
        let n = harness::node_env(MESH_TEMPLATE, &vars, &env).await;
        if i == 0 {
            seed = format!("\"127.0.0.1:{}\"", n.port("gossip"));
        }
        nodes.push((id, Some(n)));
    }
    for (_, n) in &nodes {
        wait_routes(
            n.as_ref().unwrap(),
            "web.test",
            &web,
            Duration::from_secs(30),
        )
        .await;
    }

    // One poller for the mesh: over 5 s the emulator sees one node's worth of ListTasks.
    moto.clear();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let polls = moto.count("ecs ListTasks");
    eprintln!("5 nodes, 5 s at a 1 s interval: {polls} ListTasks calls");
    assert!(
        (3..=7).contains(&polls),
        "one poller expected, saw {polls} ListTasks in 5 s"
    );
    let first = acting_leader(&nodes).await;
    assert!(!first.is_empty());
    for (_, n) in &nodes {
        let s = n.as_ref().unwrap().status().await;
        assert_eq!(
            s["ecs"]["leader"],
            first.as_str(),
            "every node shows the leader's poll"
        );
    }

    // Kill the leader: the others keep routing by the last snapshot, the next leader resumes
    // polling and follows a change.
    let i = nodes.iter().position(|(id, _)| *id == first).unwrap();
    let mut dead = nodes[i].1.take().unwrap();
    dead.child.kill().unwrap();
    let _ = dead.child.wait();
    let alive: Vec<&Node> = nodes.iter().filter_map(|(_, n)| n.as_ref()).collect();
    assert_eq!(
        answered(alive[0], "web.test", 4).await.len(),
        2,
        "last snapshot still routes"
    );
    aws.scale("web", 3).await;
    web = aws.endpoints("web", "web", 8080).await;
    tasks.follow(&web).await;
    for n in &alive {
        let took = wait_routes(n, "web.test", &web, Duration::from_secs(20)).await;
        eprintln!("after the leader's death, scale-up reached a node in {took:?}");
    }
    let next = acting_leader(&nodes).await;
    assert!(!next.is_empty() && next != first, "{next} after {first}");
}

const SEED_TEMPLATE: &str = r#"
[node]
data_dir = "{data}"
admin_addr = "127.0.0.1:{admin}"
watch_config = false
drain_timeout_secs = 1

[gossip]
bind = "{ip}:{g}"
sync_port = {s}
node_id = "{id}"
ecs_seed_service = "edgemesh"
key_file = "{keyfile}"
probe_period_ms = 200
probe_rtt_ms = 100
suspect_to_down_ms = 1000
bootstrap_expect = 3

[ecs]
cluster = "edge"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_find_their_seeds_among_their_own_ecs_service() {
    let moto = Moto::start().await;
    let aws = Aws::new(moto.addr, "127.0.0.11").await;
    aws.cluster().await;
    let vpc = aws.ec2.describe_subnets().send().await.unwrap();
    let hosts = vpc
        .subnets()
        .iter()
        .find(|s| s.cidr_block() == Some("127.0.0.0/24"))
        .unwrap()
        .subnet_id()
        .unwrap()
        .to_string();
    aws.instance(&hosts, "127.0.0.12").await;
    aws.instance(&hosts, "127.0.0.13").await;
    // The DAEMON service: host networking, the gossip port reserved on each instance, so
    // one task per instance.
    let (g, s) = (harness::free_port(), harness::free_port());
    let td = aws
        .task_def_ports("edgemesh", NetworkMode::Host, &[("edgemesh", g)], g)
        .await;
    aws.service("edgemesh", &td, 3, None).await;
    let dir = tempfile::tempdir().unwrap();
    let key = harness::cluster_key(dir.path());
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let vars = [
            ("ip", format!("127.0.0.1{i}")),
            ("g", g.to_string()),
            ("s", s.to_string()),
            ("id", format!("d{i}")),
            ("keyfile", key.display().to_string()),
        ];
        nodes.push(harness::node_env(SEED_TEMPLATE, &vars, &aws_env(moto.addr)).await);
    }
    let start = Instant::now();
    for n in &nodes {
        loop {
            let (_, body) = harness::http_get(&n.admin(), "/members").await.unwrap();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if v["members"].as_array().map_or(0, Vec::len) == 2 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{body}\n{}",
                n.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "3 nodes with no seed list joined through ECS in {:?}",
        start.elapsed()
    );
    assert!(nodes[0].log().contains("seeds from ECS"));
}

/// Not a test: the ECS scale figures for BENCHMARKS.md (`bench/ecs_scale.sh` runs it).
/// 1,000 services (one task definition family each) of 5 awsvpc tasks: the first poll of a
/// new leader, then steady polls, with every call counted by the emulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn ecs_scale_report() {
    const SERVICES: usize = 1_000;
    const TASKS_EACH: i32 = 5;
    let moto = Moto::start().await;
    let aws = Aws::new(moto.addr, "127.0.0.4").await;
    let (subnets, sg) = aws.network("127.8.0.0/16", &["127.8.0.0/16"]).await;
    let subnet = subnets[0].clone();
    let started = Instant::now();
    for chunk in (0..SERVICES).collect::<Vec<_>>().chunks(8) {
        let futs = chunk.iter().map(|i| {
            let (aws, subnet, sg) = (&aws, &subnet, &sg);
            async move {
                let name = format!("s{i:04}");
                let td = aws
                    .task_def(&name, NetworkMode::Awsvpc, &[("app", 8080)])
                    .await;
                let nc = awsvpc(subnet, sg);
                aws.ecs
                    .create_service()
                    .cluster("edge")
                    .service_name(&name)
                    .task_definition(td)
                    .desired_count(TASKS_EACH)
                    .client_token(edgemesh_chaos_tests::aws::client_token(&name))
                    .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
                    .network_configuration(nc)
                    .send()
                    .await
                    .unwrap();
            }
        });
        futures_util::future::join_all(futs).await;
    }
    eprintln!("fixture: {SERVICES} services in {:?}", started.elapsed());
    moto.clear();

    let template = r#"
[node]
data_dir = "{data}"
admin_addr = "127.0.0.1:{admin}"
watch_config = false

[ecs]
cluster = "edge"
poll_interval_secs = 5

[[listeners]]
name = "web"
addr = "127.0.0.1:{http}"
kind = "http"

[[routes]]
hosts = ["s0000.test"]
pool = "s0000"
tls = false

[pools.s0000]
ecs = { service = "s0000" }
"#;
    let node = harness::node_env(template, &[], &aws_env(moto.addr)).await;
    let polls_ok = |s: &serde_json::Value| s["ecs"]["polls_ok"].as_u64().unwrap_or(0);
    let wait_polls = |n: u64| {
        let node = &node;
        async move {
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                let s = node.status().await;
                if polls_ok(&s) >= n {
                    return (Instant::now(), s);
                }
                assert!(Instant::now() < deadline, "{s}\n{}", node.log());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let t0 = Instant::now();
    let (t1, s) = wait_polls(1).await;
    let first = moto.calls();
    let mut timeline = moto.timeline();
    assert_eq!(s["ecs"]["services"], SERVICES);
    assert_eq!(s["ecs"]["tasks"], SERVICES * TASKS_EACH as usize);
    assert_eq!(s["ecs"]["endpoints"], SERVICES * TASKS_EACH as usize);
    moto.clear();
    let (t2, _) = wait_polls(7).await;
    let steady = moto.calls();
    timeline.extend(moto.timeline());
    // The busiest second of shared-limit calls, over all the polls.
    let shared: Vec<f64> = timeline
        .iter()
        .filter(|(c, _)| c == "ecs DescribeTasks" || c == "ecs DescribeContainerInstances")
        .map(|(_, t)| *t)
        .collect();
    let busiest = shared
        .iter()
        .map(|t| {
            shared
                .iter()
                .filter(|u| **u >= *t && **u < *t + 1.0)
                .count()
        })
        .max()
        .unwrap_or(0);
    let get = |m: &BTreeMap<String, usize>, k: &str| m.get(k).copied().unwrap_or(0);
    println!("| poll | duration | ListTasks | DescribeTasks | DescribeTaskDefinition | DescribeContainerInstances |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| first (new leader, cold caches) | {:.1} s | {} | {} | {} | {} |",
        (t1 - t0).as_secs_f64(),
        get(&first, "ecs ListTasks"),
        get(&first, "ecs DescribeTasks"),
        get(&first, "ecs DescribeTaskDefinition"),
        get(&first, "ecs DescribeContainerInstances"),
    );
    println!(
        "| next 6 polls, per poll (5 s interval) | {:.1} s | {:.1} | {:.1} | {:.1} | {:.1} |",
        (t2 - t1).as_secs_f64() / 6.0,
        get(&steady, "ecs ListTasks") as f64 / 6.0,
        get(&steady, "ecs DescribeTasks") as f64 / 6.0,
        get(&steady, "ecs DescribeTaskDefinition") as f64 / 6.0,
        get(&steady, "ecs DescribeContainerInstances") as f64 / 6.0,
    );
    println!();
    println!("busiest second of DescribeTasks + DescribeContainerInstances (first and steady polls): {busiest} calls (ECS's shared limit: about 20)");
    assert!(busiest <= 20, "{busiest}");
}
