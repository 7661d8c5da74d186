//! Fault scenarios in network namespaces, with real `edgemesh` processes and moto. Each
//! prints and appends its row to the chaos report (see `edgemesh_chaos_tests::report`).
//! Skipped, saying why, where namespaces cannot be made (not root).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_ecs::types::NetworkMode;
use aws_sdk_route53::types::RrType;
use edgemesh_acme::testing::Pebble;
use edgemesh_chaos_tests::aws::{aws_env, Aws, FaultProxy, FAIL_500, PASS, THROTTLE};
use edgemesh_chaos_tests::load::{HttpLoad, TcpStream};
use edgemesh_chaos_tests::tasks::{Follower, Kind, Service};
use edgemesh_chaos_tests::{
    available, pool_endpoints, report, wait_for, Host, Lab, NsRuntime, Row,
};

/// Whether this machine can build labs, holding the lock that runs one scenario at a time:
/// ten debug-build members on two cores already fill the machine, and a second lab beside it
/// would distort the timings a scenario reports (and could starve a member into a false
/// failure detection).
fn lab_or_skip() -> Option<std::sync::MutexGuard<'static, ()>> {
    static ONE: Mutex<()> = Mutex::new(());
    if let Err(why) = available() {
        // CI runs as root: there a lab that cannot be built is a failure, not a skip.
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        assert!(!root, "running as root, yet no lab can be built: {why}");
        eprintln!("SKIPPED: network namespaces unavailable here ({why})");
        return None;
    }
    Some(ONE.lock().unwrap_or_else(|e| e.into_inner()))
}

/// After a partition heals, the record and every member's view are whole within this.
const HEAL_BOUND: Duration = Duration::from_secs(15);

/// The workspace's `edgemesh` and `meshctl`, built once for this run.
fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = std::process::Command::new(cargo)
            .current_dir(&root)
            .args(["build", "-q", "-p", "edgemesh-node", "--bins"])
            .status()
            .unwrap();
        assert!(st.success(), "building edgemesh");
    });
    root.join("target/debug").join(name)
}

/// A member's config: `zone` adds the DNS entrypoint; `pools` is the TOML of its routes and
/// pools (see [`static_pool`], [`ECS_POOLS`]).
fn node_config(
    lab: &Lab,
    h: &Host,
    key: &str,
    seed: &Host,
    zone: Option<&str>,
    pools: &str,
) -> PathBuf {
    let entrypoint = zone.map_or(String::new(), |zone| {
        format!(
            "[entrypoint]\ndebounce_ms = 300\ncheck_secs = 2\n\n[[entrypoint.records]]\nhosted_zone_id = \"{zone}\"\nname = \"mesh.edge.test\"\nttl = 5\n"
        )
    });
    let toml = format!(
        r#"
[node]
data_dir = "{data}"
admin_addr = "127.0.0.1:9901"
watch_config = false
drain_timeout_secs = 5

[gossip]
bind = "{ip}:7946"
sync_port = 7947
sync_interval_secs = 1
node_id = "{name}"
seeds = ["{seed}:7946"]
key_file = "{key}"
public_ip = "{ip}"
expected_cluster_size = 6
bootstrap_expect = 3
reap_after_secs = 600

[[listeners]]
name = "web"
addr = "{ip}:8080"
kind = "http"

{pools}
{entrypoint}
"#,
        data = lab.path().join(format!("data-{}", h.name)).display(),
        ip = h.ip,
        name = h.name,
        seed = seed.ip,
    );
    let path = lab.path().join(format!("{}.toml", h.name));
    std::fs::write(&path, toml).unwrap();
    path
}

/// Every host to one pool of fixed endpoints (`ip:port`, may be empty).
fn static_pool(endpoints: &[&str]) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[[routes]]\nhosts = [\"*\"]\npool = \"app\"\ntls = false\n\n[pools.app]\nendpoints = [{}]\n",
        list.join(", ")
    )
}

/// The ECS services as pools: `web.test` to the web tasks (HTTP, port 8000) and a TCP
/// listener on 9000 to the echo tasks (port 9000); the leader polls ECS every second.
const ECS_POOLS: &str = r#"
[ecs]
cluster = "edge"
poll_interval_secs = 1

[[listeners]]
name = "echo"
addr = "0.0.0.0:9000"
kind = "tcp"
pool = "echo"

[[routes]]
hosts = ["web.test"]
pool = "web"
tls = false

[pools.web]
ecs = { service = "web" }

[pools.echo]
ecs = { service = "echo" }
"#;

/// A cluster key file from `meshctl keygen`.
fn key_file(lab: &Lab, name: &str) -> String {
    let out = std::process::Command::new(bin("meshctl"))
        .arg("keygen")
        .output()
        .unwrap();
    let path = lab.path().join(name);
    std::fs::write(&path, &out.stdout).unwrap();
    path.display().to_string()
}

/// Starts `edgemesh --config cfg` in `host` as process `label`.
fn spawn_edgemesh(lab: &mut Lab, host: &Host, label: &str, cfg: &Path, env: &[(&str, String)]) {
    let edgemesh = bin("edgemesh").display().to_string();
    lab.spawn(
        host,
        label,
        &edgemesh,
        &["--config", &cfg.display().to_string()],
        env,
    );
}

/// Members in `hosts` (each process named after its host), seeded with `seed`; see
/// [`node_config`].
fn start_members(
    lab: &mut Lab,
    hosts: &[Host],
    seed: &Host,
    key: &str,
    zone: Option<&str>,
    pools: &str,
    env: &[(&str, String)],
) {
    for h in hosts {
        let cfg = node_config(lab, h, key, seed, zone, pools);
        spawn_edgemesh(lab, h, &h.name, &cfg, env);
    }
}

/// Python's http.server in `host` on port 8000: its `ip:port`.
fn start_backend(lab: &mut Lab, host: &Host) -> String {
    let ip = host.ip.to_string();
    lab.spawn(
        host,
        "backend",
        "python3",
        &["-m", "http.server", "8000", "--bind", &ip],
        &[],
    );
    format!("{ip}:8000")
}

/// Whether every one of `nodes` sees all the others as members.
fn sees_all(lab: &Lab, nodes: &[Host]) -> bool {
    nodes.iter().all(|h| {
        status(lab, h)["mesh"]["members"]
            .as_array()
            .map_or(0, Vec::len)
            == nodes.len() - 1
    })
}

/// moto (with edgemesh's ECS patches) in `aws` on port 5000, and a hosted zone `edge.test`:
/// its id, and the AWS fixture on `rt` (a runtime inside some lab host).
fn start_moto(lab: &mut Lab, aws: &Host, rt: &NsRuntime) -> (String, Arc<Aws>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/moto_ecs.py");
    lab.spawn(
        aws,
        "moto",
        "python3",
        &[script, "5000", "--host", &aws.ip.to_string()],
        &[],
    );
    let addr = SocketAddr::new(aws.ip.into(), 5000);
    wait_for("moto", Duration::from_secs(30), || {
        rt.run(async move { tokio::net::TcpStream::connect(addr).await.ok().map(drop) })
    });
    let host = aws.ip.to_string();
    let fixture = Arc::new(rt.run(async move { Aws::new(addr, &host).await }));
    let f = fixture.clone();
    let zone = rt.run(async move { f.hosted_zone("edge.test.").await });
    (zone, fixture)
}

/// The A record `mesh.edge.test` as moto holds it.
fn a_record(rt: &NsRuntime, aws: &Arc<Aws>, zone: &str) -> BTreeSet<String> {
    let (aws, zone) = (aws.clone(), zone.to_string());
    rt.run(async move { aws.record(&zone, "mesh.edge.test.", RrType::A).await })
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn status(lab: &Lab, h: &Host) -> serde_json::Value {
    let (_, body) = lab.http(h, "GET", "http://127.0.0.1:9901/status", None);
    serde_json::from_str(&body).unwrap_or_default()
}

#[test]
fn partition_minority_never_writes_dns_and_an_intruder_never_joins() {
    let Some(_one_at_a_time) = lab_or_skip() else {
        return;
    };
    let partition_secs = env_secs("CHAOS_PARTITION_SECS", 60);
    let mut lab = Lab::new("pt");
    let aws = lab.host("aws", 200);
    let client = lab.host("client", 250);
    let nodes: Vec<Host> = (1..=5).map(|i| lab.host(&format!("n{i}"), i)).collect();
    let client_rt = lab.runtime(&client);
    let (zone, fixture) = start_moto(&mut lab, &aws, &client_rt);
    let key = key_file(&lab, "cluster.key");
    let env = aws_env(SocketAddr::new(aws.ip.into(), 5000));
    let pools = static_pool(&[]);
    start_members(&mut lab, &nodes, &nodes[0], &key, Some(&zone), &pools, &env);
    // An intruder on the same network, seeded with a member's address, with another key.
    let intruder = lab.host("intruder", 66);
    let other_key = key_file(&lab, "other.key");
    let one = [intruder.clone()];
    start_members(
        &mut lab,
        &one,
        &nodes[0],
        &other_key,
        Some(&zone),
        &pools,
        &env,
    );

    let all: BTreeSet<String> = nodes.iter().map(|h| h.ip.to_string()).collect();
    let (_, took) = wait_for("the record holds all five", Duration::from_secs(60), || {
        (a_record(&client_rt, &fixture, &zone) == all).then_some(())
    });
    eprintln!("record holds all five after {took:?}");
    wait_for("five voters", Duration::from_secs(30), || {
        let s = status(&lab, &nodes[0]);
        (s["mesh"]["election"]["voters"]
            .as_array()
            .map_or(0, Vec::len)
            == 5)
            .then_some(())
    });

    // The intruder: never a member anywhere, its packets refused by authentication.
    let mut rejected = 0.0;
    for h in &nodes {
        let s = status(&lab, h);
        let members: Vec<&str> = s["mesh"]["members"]
            .as_array()
            .map(|m| m.iter().filter_map(|x| x["id"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            !members.contains(&"intruder"),
            "{} lists the intruder",
            h.name
        );
        assert_eq!(members.len(), 4, "{}: {members:?}", h.name);
        rejected += s["mesh"]["packets_rejected_auth"].as_f64().unwrap_or(0.0);
    }
    let si = status(&lab, &intruder);
    let intruder_members = si["mesh"]["members"].as_array().map_or(0, Vec::len);
    assert_eq!(
        intruder_members, 0,
        "the intruder sees members: {}",
        si["mesh"]
    );
    assert!(
        rejected > 0.0,
        "no packet was refused: did the intruder send any?"
    );
    assert_eq!(
        a_record(&client_rt, &fixture, &zone),
        all,
        "the intruder is not in DNS"
    );
    report(&Row {
        scenario: "8. intruder with the wrong cluster key".into(),
        invariant: "never a member, nothing injected".into(),
        result: "pass".into(),
        figures: format!(
            "{rejected} packets refused by 5 members; intruder sees {intruder_members} members"
        ),
    });

    // 3/2 partition; AWS stays reachable from both sides.
    let (major, minor) = nodes.split_at(3);
    let writes = |h: &Host| metric_at(&lab, h, "edgemesh_dns_writes_total");
    let minority_writes_before: Vec<f64> = minor.iter().map(writes).collect();
    let cut = Instant::now();
    lab.partition(
        &major.iter().collect::<Vec<_>>(),
        &minor.iter().collect::<Vec<_>>(),
    );
    let majority: BTreeSet<String> = major.iter().map(|h| h.ip.to_string()).collect();
    let (_, dropped) = wait_for(
        "the majority drops the minority from DNS",
        Duration::from_secs(30),
        || (a_record(&client_rt, &fixture, &zone) == majority).then_some(()),
    );
    let mut minority_acted = false;
    while cut.elapsed() < Duration::from_secs(partition_secs) {
        for h in minor {
            minority_acted |= status(&lab, h)["mesh"]["election"]["acting"] == true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let minority_writes_after: Vec<f64> = minor.iter().map(writes).collect();
    assert!(!minority_acted, "a minority node acted as leader");
    assert_eq!(
        minority_writes_before, minority_writes_after,
        "the minority wrote DNS"
    );
    assert_eq!(
        a_record(&client_rt, &fixture, &zone),
        majority,
        "record during the partition"
    );
    let healed = Instant::now();
    lab.heal();
    let (_, converged) = wait_for("the record holds all five again", HEAL_BOUND, || {
        (a_record(&client_rt, &fixture, &zone) == all).then_some(())
    });
    let views = || -> Vec<String> {
        nodes
            .iter()
            .map(|h| {
                let s = status(&lab, h);
                let ids: Vec<&str> = s["mesh"]["members"]
                    .as_array()
                    .map(|m| m.iter().filter_map(|x| x["id"].as_str()).collect())
                    .unwrap_or_default();
                format!("{}: {ids:?} down {}", h.name, s["mesh"]["down"])
            })
            .collect()
    };
    while healed.elapsed() < HEAL_BOUND && !sees_all(&lab, &nodes) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        healed.elapsed() < HEAL_BOUND,
        "views {HEAL_BOUND:?} after healing: {:#?}",
        views()
    );
    let members_back = healed.elapsed();
    report(&Row {
        scenario: format!("4. 3/2 partition for {partition_secs} s (DNS)"),
        invariant: "minority never leads nor writes DNS; converges after healing".into(),
        result: "pass".into(),
        figures: format!(
            "majority dropped the minority from DNS in {:.1} s; minority DNS writes during the cut: 0; after healing: record whole in {:.1} s, every member sees all others in {:.1} s",
            dropped.as_secs_f64(),
            converged.as_secs_f64(),
            members_back.as_secs_f64()
        ),
    });
}

#[test]
fn loss_keeps_every_member_alive_and_a_frozen_node_rejoins() {
    let Some(_one_at_a_time) = lab_or_skip() else {
        return;
    };
    let loss_secs = env_secs("CHAOS_LOSS_SECS", 60);
    let mut lab = Lab::new("ls");
    let backend = lab.host("backend", 100);
    let client = lab.host("client", 250);
    let nodes: Vec<Host> = (1..=5).map(|i| lab.host(&format!("n{i}"), i)).collect();
    let upstream = start_backend(&mut lab, &backend);
    let key = key_file(&lab, "cluster.key");
    let pools = static_pool(&[&upstream]);
    // Suspicions and their answers logged, for the failure message.
    let gossip_debug = [("EDGEMESH_LOG", "info,edgemesh_gossip=debug".to_string())];
    start_members(
        &mut lab,
        &nodes,
        &nodes[0],
        &key,
        None,
        &pools,
        &gossip_debug,
    );
    wait_for("five members", Duration::from_secs(60), || {
        sees_all(&lab, &nodes).then_some(())
    });
    let mut last = (0, String::new());
    let ready = Instant::now();
    while last.0 != 200 {
        last = lab.http(
            &client,
            "GET",
            &format!("http://{}:8080/", nodes[0].ip),
            None,
        );
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "no answer through the mesh: {last:?}\nbackend: {}\nn1: {}",
            lab.log("backend"),
            lab.log("n1")
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // 20% loss on every member: nobody is declared down, requests keep flowing.
    for h in &nodes {
        lab.loss(h, 20);
    }
    let client_rt = lab.runtime(&client);
    let targets = nodes
        .iter()
        .map(|h| SocketAddr::new(h.ip.into(), 8080))
        .collect::<Vec<_>>();
    let (downs, load) = traffic_while(&lab, &client_rt, &nodes, &targets, loss_secs);
    let (told, answered) = suspicions(&lab, &nodes);

    // The whole host stalls (as when a VM is paused), still under 20% loss: every member
    // stopped at once for 1 s, ten times. A suspicion pending when the stall began must not
    // expire as the members resume, before its subject can answer.
    let downs_logged = |lab: &Lab| {
        nodes
            .iter()
            .map(|h| lab.log(&h.name).matches("member down").count())
            .sum::<usize>()
    };
    let before = downs_logged(&lab);
    for _ in 0..10 {
        for h in &nodes {
            lab.signal(&h.name, "STOP");
        }
        std::thread::sleep(Duration::from_secs(1));
        for h in &nodes {
            lab.signal(&h.name, "CONT");
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let after_stalls = downs_logged(&lab) - before;
    let stalls_seen = nodes
        .iter()
        .filter(|h| lab.log(&h.name).contains("stalled; suspicions extended"))
        .count();
    lab.heal();
    let (ok, failed, bytes, _) = load;
    assert!(
        downs.is_empty(),
        "members declared down under 20% loss: {downs:?} ({told} suspicion notices, {answered} answers)\n{}",
        membership_lines(&lab, &nodes)
    );
    assert!(ok > 0, "no request got through");
    report(&Row {
        scenario: format!("5. 20% random loss on every member for {loss_secs} s"),
        invariant: "no live member declared down; traffic keeps flowing".into(),
        result: "pass".into(),
        figures: format!(
            "members declared down: 0 ({told} suspicion notices sent, {answered} answered); {ok} requests answered ({bytes} body bytes), {failed} failed (8 keep-alive clients, 5 s limit per request); no 5 s without answers"
        ),
    });

    assert_eq!(
        after_stalls,
        0,
        "members declared down around host-wide stalls under 20% loss\n{}",
        membership_lines(&lab, &nodes)
    );
    assert_eq!(stalls_seen, 5, "every member saw its stalls");
    report(&Row {
        scenario:
            "7. every member stopped at once for 1 s (a host-wide stall), 10 times under 20% loss"
                .into(),
        invariant: "no live member declared down; each member measures its stalls".into(),
        result: "pass".into(),
        figures: format!(
            "members declared down: 0; {stalls_seen} of 5 members logged their stalls"
        ),
    });

    // Freeze one member past its suspicion timeout, then let it run again.
    let frozen = nodes[4].clone();
    lab.signal(&frozen.name, "STOP");
    let declared = declared_down(&lab, &nodes, &frozen);
    std::thread::sleep(Duration::from_secs(5));
    lab.signal(&frozen.name, "CONT");
    let (_, rejoined) = wait_for("the frozen member back everywhere", HEAL_BOUND, || {
        sees_all(&lab, &nodes).then_some(())
    });
    report(&Row {
        scenario: "7. frozen member (SIGSTOP past suspicion, then SIGCONT)".into(),
        invariant: "declared down, then rejoins without action".into(),
        result: "pass".into(),
        figures: format!(
            "declared down by all in {:.1} s; back in every view {:.2} s after SIGCONT (bound {HEAL_BOUND:?})",
            declared.as_secs_f64(),
            rejoined.as_secs_f64()
        ),
    });

    // A member's link down past suspicion, then up again.
    let cut = nodes[3].clone();
    lab.link(&cut, false);
    let declared = declared_down(&lab, &nodes, &cut);
    std::thread::sleep(Duration::from_secs(5));
    lab.link(&cut, true);
    let (_, rejoined) = wait_for("the cut member back everywhere", HEAL_BOUND, || {
        sees_all(&lab, &nodes).then_some(())
    });
    report(&Row {
        scenario: "7. member's link set down (ip link) past suspicion, then up".into(),
        invariant: "declared down, then rejoins without action".into(),
        result: "pass".into(),
        figures: format!(
            "declared down by all in {:.1} s; back in every view {:.1} s after the link came up (bound {HEAL_BOUND:?})",
            declared.as_secs_f64(),
            rejoined.as_secs_f64()
        ),
    });

    // Every member's link limited to 1 Mbit/s (tc tbf) under the same load.
    for h in &nodes {
        lab.rate_limit(h, "1mbit");
    }
    let slow_secs = env_secs("CHAOS_SLOW_SECS", 20);
    let (downs, (ok, failed, bytes, _)) =
        traffic_while(&lab, &client_rt, &nodes, &targets, slow_secs);
    lab.heal();
    assert!(
        downs.is_empty(),
        "members declared down at 1 Mbit/s: {downs:?}"
    );
    report(&Row {
        scenario: format!("5. every member's link at 1 Mbit/s (tc tbf) for {slow_secs} s"),
        invariant: "no live member declared dead; traffic keeps flowing".into(),
        result: "pass".into(),
        figures: format!(
            "members declared down: 0; {ok} requests answered ({bytes} body bytes), {failed} failed; no 5 s without answers"
        ),
    });
}

/// Waits until every member but `who` lists `who` as down (30 s at most); how long it took.
fn declared_down(lab: &Lab, nodes: &[Host], who: &Host) -> Duration {
    wait_for(
        &format!("{} declared down by the others", who.name),
        Duration::from_secs(30),
        || {
            nodes
                .iter()
                .filter(|h| h.name != who.name)
                .all(|h| {
                    status(lab, h)["mesh"]["down"]
                        .as_array()
                        .is_some_and(|d| d.iter().any(|x| x == who.name.as_str()))
                })
                .then_some(())
        },
    )
    .1
}

/// Every member's last log lines about membership changes and suspicions, for a failure
/// message.
fn membership_lines(lab: &Lab, nodes: &[Host]) -> String {
    let mut out = String::new();
    for h in nodes {
        let log = lab.log(&h.name);
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                ["member", "suspect", "stalled"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .collect();
        for line in &lines[lines.len().saturating_sub(60)..] {
            out.push_str(&format!("{}: {line}\n", h.name));
        }
    }
    out
}

/// Suspicion notices the members sent (one per suspect per probe period while a suspicion
/// lasts) and the answers suspects sent back, from their debug logs.
fn suspicions(lab: &Lab, nodes: &[Host]) -> (usize, usize) {
    nodes.iter().fold((0, 0), |(told, answered), h| {
        let log = lab.log(&h.name);
        (
            told + log.matches("holding suspect; telling it").count(),
            answered + log.matches("suspected; answering the accuser").count(),
        )
    })
}

/// Runs the counting load against `targets` for `secs`, polling every member's view each
/// second: the members any of them declared down, and the load's (ok, failed, bytes, secs).
/// Panics when 5 s pass without an answered request.
fn traffic_while(
    lab: &Lab,
    rt: &NsRuntime,
    nodes: &[Host],
    targets: &[SocketAddr],
    secs: u64,
) -> (BTreeSet<String>, (u64, u64, u64, f64)) {
    let load = HttpLoad::start(rt, "any.test", targets.to_vec(), 8);
    let start = Instant::now();
    let mut downs = BTreeSet::new();
    let (mut last_ok, mut last_progress) = (0, Instant::now());
    while start.elapsed() < Duration::from_secs(secs) {
        for h in nodes {
            if let Some(d) = status(lab, h)["mesh"]["down"].as_array() {
                downs.extend(d.iter().filter_map(|x| x.as_str().map(str::to_string)));
            }
        }
        if load.ok() > last_ok {
            (last_ok, last_progress) = (load.ok(), Instant::now());
        }
        assert!(
            last_progress.elapsed() < Duration::from_secs(5),
            "no request answered for 5 s: {:#?}",
            load.errors()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    (downs, load.finish(rt))
}

/// The pool `name`'s endpoints as member `h` routes them.
fn pool(lab: &Lab, h: &Host, name: &str) -> BTreeSet<String> {
    pool_endpoints(&status(lab, h), name)
}

fn routed_everywhere(lab: &Lab, nodes: &[Host], name: &str, want: &BTreeSet<String>) -> bool {
    nodes.iter().all(|h| pool(lab, h, name) == *want)
}

fn acting_leader(lab: &Lab, nodes: &[Host]) -> Option<Host> {
    nodes
        .iter()
        .find(|h| status(lab, h)["mesh"]["election"]["acting"] == true)
        .cloned()
}

/// A scenario's length: `name` from the environment, else `default`, ten times longer with
/// `CHAOS_SOAK=1` (the soak variant, not run in CI).
fn env_secs(name: &str, default: u64) -> u64 {
    let soak = std::env::var("CHAOS_SOAK").is_ok_and(|v| v == "1");
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if soak { default * 10 } else { default })
}

/// Keeps the load's targets equal to what `mesh.edge.test` holds (port 8080), re-read every
/// 200 ms like a client honouring a short TTL; records when each address left the record.
fn follow_record(
    rt: &NsRuntime,
    aws: Arc<Aws>,
    zone: String,
    targets: Arc<Mutex<Vec<SocketAddr>>>,
) -> Arc<Mutex<BTreeMap<String, Instant>>> {
    let left = Arc::new(Mutex::new(BTreeMap::new()));
    let out = left.clone();
    rt.spawn(async move {
        let mut last = BTreeSet::new();
        // Until the load that owns the targets is gone.
        while Arc::strong_count(&targets) > 1 {
            let now = aws.record(&zone, "mesh.edge.test.", RrType::A).await;
            if !now.is_empty() {
                for gone in last.difference(&now) {
                    left.lock().unwrap().insert(gone.clone(), Instant::now());
                }
                *targets.lock().unwrap() = now
                    .iter()
                    .filter_map(|ip| format!("{ip}:8080").parse().ok())
                    .collect();
                last = now;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    out
}

/// Scenarios 1, 2, 9 and 6 in one lab: five members route ECS services (moto) whose tasks
/// run in the lab; members reach AWS through a fault proxy; a client in its own namespace
/// follows the DNS record and counts every request and byte.
#[test]
fn ecs_deploys_tcp_stream_failover_aws_faults_and_drain() {
    let Some(_one_at_a_time) = lab_or_skip() else {
        return;
    };
    let changes = env_secs("CHAOS_TOPOLOGY_CHANGES", 100) as usize;
    let fault_secs = env_secs("CHAOS_AWS_FAULT_SECS", 120);
    let mut lab = Lab::new("ec");
    let aws_host = lab.host("aws", 200);
    let client = lab.host("client", 250);
    let tasks = lab.host("tasks", 150);
    let nodes: Vec<Host> = (1..=5).map(|i| lab.host(&format!("n{i}"), i)).collect();
    let client_rt = lab.runtime(&client);
    let (zone, dns) = start_moto(&mut lab, &aws_host, &client_rt);
    let moto = SocketAddr::new(aws_host.ip.into(), 5000);

    // ECS: a cluster, a task subnet 10.77.1.0/24, web (3 tasks) and echo (1 task), awsvpc.
    let tasks_rt = lab.runtime(&tasks);
    let aws = Arc::new(tasks_rt.run(Aws::new(moto, "10.77.0.150")));
    let (subnet, sg) = tasks_rt.run({
        let aws = aws.clone();
        async move {
            let (subnets, sg) = aws
                .network("10.77.0.0/16", &["10.77.0.0/24", "10.77.1.0/24"])
                .await;
            aws.instance(&subnets[0], "10.77.0.150").await;
            let web = aws
                .task_def("web", NetworkMode::Awsvpc, &[("web", 8000)])
                .await;
            let echo = aws
                .task_def("echo", NetworkMode::Awsvpc, &[("echo", 9000)])
                .await;
            aws.service("web", &web, 3, Some((&subnets[1], &sg))).await;
            aws.service("echo", &echo, 1, Some((&subnets[1], &sg)))
                .await;
            (subnets[1].clone(), sg)
        }
    });
    let follower = Follower::start(
        &tasks_rt,
        aws.clone(),
        tasks.ns.clone(),
        lab.iface(&tasks),
        vec![
            Service {
                name: "web".into(),
                container: "web".into(),
                port: 8000,
                kind: Kind::Http,
            },
            Service {
                name: "echo".into(),
                container: "echo".into(),
                port: 9000,
                kind: Kind::Echo,
            },
        ],
        Duration::from_secs(3),
    );
    let aws_rt = lab.runtime(&aws_host);
    let proxy = aws_rt.run(FaultProxy::start_on(
        SocketAddr::new(aws_host.ip.into(), 5001),
        moto,
    ));

    let key = key_file(&lab, "cluster.key");
    let env = aws_env(proxy.addr);
    start_members(
        &mut lab,
        &nodes,
        &nodes[0],
        &key,
        Some(&zone),
        ECS_POOLS,
        &env,
    );
    let web_tasks = |aws: &Arc<Aws>| {
        let aws = aws.clone();
        tasks_rt.run(async move { aws.endpoints("web", "web", 8000).await })
    };
    let web_now: BTreeSet<String> = web_tasks(&aws).values().map(|a| a.to_string()).collect();
    wait_for(
        "every member routes the web tasks",
        Duration::from_secs(60),
        || routed_everywhere(&lab, &nodes, "web", &web_now).then_some(()),
    );

    // 1. Rolling deployments (every task replaced) under load that follows the record.
    let load = HttpLoad::start(&client_rt, "web.test", Vec::new(), 8);
    follow_record(&client_rt, dns.clone(), zone.clone(), load.targets());
    wait_for("the record holds all five", Duration::from_secs(60), || {
        (load.targets().lock().unwrap().len() == 5).then_some(())
    });
    wait_for("load flowing", Duration::from_secs(20), || {
        (load.ok() > 100).then_some(())
    });
    let deploys = 3;
    let mut converge = Vec::new();
    let mut before = web_now.clone();
    for rev in 0..deploys {
        tasks_rt.run({
            let aws = aws.clone();
            async move {
                let td = aws
                    .task_def("web", NetworkMode::Awsvpc, &[("web", 8000)])
                    .await;
                aws.deploy("web", &td).await;
            }
        });
        let now: BTreeSet<String> = web_tasks(&aws).values().map(|a| a.to_string()).collect();
        assert!(
            now.len() == 3 && now.is_disjoint(&before),
            "deployment {rev} replaced every task: {before:?} -> {now:?}"
        );
        before = now.clone();
        let (_, took) = wait_for(
            "every member routes the new revision",
            Duration::from_secs(30),
            || routed_everywhere(&lab, &nodes, "web", &now).then_some(()),
        );
        converge.push(took.as_secs_f64());
        // Let the old tasks finish their shutdown under load before the next deployment.
        std::thread::sleep(Duration::from_secs(4));
    }
    let errors = load.errors();
    let (ok, failed, bytes, secs) = load.finish(&client_rt);
    assert_eq!(failed, 0, "failed requests during deployments: {errors:#?}");
    report(&Row {
        scenario: format!("1. {deploys} rolling ECS deployments (3 tasks replaced each)"),
        invariant: "zero failed requests".into(),
        result: "pass".into(),
        figures: format!(
            "{ok} requests, {failed} failed, {bytes} body bytes in {secs:.0} s (8 keep-alive clients following DNS); new tasks routed by all 5 members in {} s",
            converge
                .iter()
                .map(|s| format!("{s:.1}"))
                .collect::<Vec<_>>()
                .join(" / ")
        ),
    });

    // 2. A long-lived TCP stream through a member that does not lead, while the echo
    // service's tasks change `changes` times and the leader is killed halfway.
    let leader = acting_leader(&lab, &nodes).expect("a leader");
    let entry = nodes
        .iter()
        .find(|h| h.name != leader.name)
        .unwrap()
        .clone();
    let echo_first = pool(&lab, &entry, "echo");
    assert_eq!(echo_first.len(), 1, "one echo task: {echo_first:?}");
    let stream = TcpStream::start(&client_rt, SocketAddr::new(entry.ip.into(), 9000), 1 << 20);
    wait_for("the stream flowing", Duration::from_secs(10), || {
        (stream.progress().1 > 0).then_some(())
    });
    let mut alive = nodes.clone();
    let mut extra: Option<String> = None;
    let mut failover = None;
    let started = Instant::now();
    for change in 0..changes {
        if change == changes / 2 {
            let l = acting_leader(&lab, &alive).expect("a leader");
            lab.signal(&l.name, "KILL");
            alive.retain(|h| h.name != l.name);
            failover = Some(l.name.clone());
        }
        let id = tasks_rt.run({
            let (aws, extra, subnet, sg) = (aws.clone(), extra.take(), subnet.clone(), sg.clone());
            async move {
                match extra {
                    Some(id) => {
                        aws.stop_task(&id).await;
                        None
                    }
                    None => {
                        let td = aws
                            .task_def("echo", NetworkMode::Awsvpc, &[("echo", 9000)])
                            .await;
                        Some(aws.run_task("echo", &td, &subnet, &sg).await)
                    }
                }
            }
        });
        let want = if id.is_some() { 2 } else { 1 };
        extra = id;
        wait_for(
            &format!("topology change {change} at {}", entry.name),
            Duration::from_secs(20),
            || (pool(&lab, &entry, "echo").len() == want).then_some(()),
        );
        assert!(
            !stream.is_finished(),
            "the stream ended at change {change}: {:?}",
            stream.progress()
        );
    }
    let took = started.elapsed();
    let moved = stream.finish(&client_rt);
    assert_eq!(moved.fault, None, "stream: {moved:?}");
    assert_eq!(moved.sent_fnv, moved.received_fnv);
    report(&Row {
        scenario: format!("2. long-lived TCP stream through {changes} topology changes and a leader kill -9"),
        invariant: "the stream survives; every byte comes back".into(),
        result: "pass".into(),
        figures: format!(
            "{} bytes sent, {} echoed and compared byte by byte (FNV-1a {:016x} both ways), 0 lost, in {:.0} s; changes seen by the entry member {:.1} s apart on average; leader {} killed at change {}",
            moved.sent,
            moved.received,
            moved.sent_fnv,
            moved.secs,
            took.as_secs_f64() / changes as f64,
            failover.unwrap_or_default(),
            changes / 2
        ),
    });

    // 9. AWS throttling and server errors for minutes: every member keeps routing the last
    // good topology and no request fails; afterwards a change is followed again.
    let web_last: BTreeSet<String> = web_tasks(&aws).values().map(|a| a.to_string()).collect();
    wait_for(
        "the record holds the four survivors",
        Duration::from_secs(30),
        || (a_record(&client_rt, &dns, &zone).len() == alive.len()).then_some(()),
    );
    let load = HttpLoad::start(&client_rt, "web.test", Vec::new(), 8);
    follow_record(&client_rt, dns.clone(), zone.clone(), load.targets());
    let fault_start = Instant::now();
    let mut checks = 0;
    while fault_start.elapsed() < Duration::from_secs(fault_secs) {
        // Alternate 20 s of throttling with 10 s of 500s.
        let phase = fault_start.elapsed().as_secs() % 30;
        proxy.set(if phase < 20 { THROTTLE } else { FAIL_500 });
        for h in &alive {
            assert_eq!(pool(&lab, h, "web"), web_last, "{} lost its routes", h.name);
        }
        checks += 1;
        std::thread::sleep(Duration::from_secs(2));
    }
    let injected = proxy.faults.load(std::sync::atomic::Ordering::Relaxed);
    proxy.set(PASS);
    let errors = load.errors();
    let (ok, failed, _, secs) = load.finish(&client_rt);
    assert_eq!(failed, 0, "failed requests while AWS failed: {errors:#?}");
    assert!(injected > 0, "no fault was injected");
    tasks_rt.run({
        let aws = aws.clone();
        async move { aws.scale("web", 4).await }
    });
    let web4: BTreeSet<String> = web_tasks(&aws).values().map(|a| a.to_string()).collect();
    // The poller backs off up to 60 s (jittered) while AWS fails, so the first poll after
    // recovery may be that far away.
    let (_, recovered) = wait_for(
        "a scale-up after AWS recovers",
        Duration::from_secs(75),
        || routed_everywhere(&lab, &alive, "web", &web4).then_some(()),
    );
    report(&Row {
        scenario: format!("9. AWS throttling and 500s for {fault_secs} s"),
        invariant: "routing keeps the last good topology".into(),
        result: "pass".into(),
        figures: format!(
            "{injected} AWS calls failed by the proxy; routes unchanged on {} members in {checks} checks; {ok} requests, {failed} failed in {secs:.0} s; a scale-up after recovery routed everywhere in {:.1} s (poll back-off cap 60 s)",
            alive.len(),
            recovered.as_secs_f64()
        ),
    });

    // 6. SIGTERM drain of a member under load that follows DNS.
    let load = HttpLoad::start(&client_rt, "web.test", Vec::new(), 8);
    let left = follow_record(&client_rt, dns.clone(), zone.clone(), load.targets());
    wait_for("load on the survivors", Duration::from_secs(20), || {
        (load.targets().lock().unwrap().len() == alive.len() && load.ok() > 200).then_some(())
    });
    let leader = acting_leader(&lab, &alive).expect("a leader");
    let drained = alive
        .iter()
        .find(|h| h.name != leader.name)
        .unwrap()
        .clone();
    let refused = probe_until_refused(&client_rt, SocketAddr::new(drained.ip.into(), 8080));
    let term = Instant::now();
    lab.signal(&drained.name, "TERM");
    let (stopped_accepting, _) = wait_for(
        "the drained member refuses",
        Duration::from_secs(30),
        || *refused.lock().unwrap(),
    );
    std::thread::sleep(Duration::from_secs(1));
    let errors = load.errors();
    let (ok, failed, _, _) = load.finish(&client_rt);
    let out_of_dns = left
        .lock()
        .unwrap()
        .get(&drained.ip.to_string())
        .copied()
        .expect("the drained member left the record");
    assert_eq!(failed, 0, "failed requests during the drain: {errors:#?}");
    assert!(
        out_of_dns < stopped_accepting,
        "left DNS {:?} after SIGTERM but stopped accepting at {:?}",
        out_of_dns - term,
        stopped_accepting - term
    );
    report(&Row {
        scenario: "6. SIGTERM drain of a member under load".into(),
        invariant: "zero failed requests; it leaves DNS before it stops accepting".into(),
        result: "pass".into(),
        figures: format!(
            "out of DNS {:.1} s after SIGTERM, stopped accepting at {:.1} s; {ok} requests, {failed} failed",
            (out_of_dns - term).as_secs_f64(),
            (stopped_accepting - term).as_secs_f64()
        ),
    });
    follower.stop(&tasks_rt);
}

/// Connects to `addr` every 100 ms; the cell holds the moment a connection was first refused.
fn probe_until_refused(rt: &NsRuntime, addr: SocketAddr) -> Arc<Mutex<Option<Instant>>> {
    let cell = Arc::new(Mutex::new(None));
    let out = cell.clone();
    rt.spawn(async move {
        loop {
            let refused = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            .map_or(true, |r| r.is_err());
            if refused {
                *cell.lock().unwrap() = Some(Instant::now());
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    out
}

/// Routes `www.edge.test` over HTTPS (8443) to `backend`, with a certificate from the ACME
/// CA when `acme` (the `[acme]` section) is given.
fn acme_pools(backend: &str, acme: &str) -> String {
    format!(
        "[[listeners]]\nname = \"websecure\"\naddr = \"0.0.0.0:8443\"\nkind = \"https\"\n\n[[routes]]\nhosts = [\"www.edge.test\"]\npool = \"app\"\n\n[pools.app]\nendpoints = [\"{backend}\"]\n\n{acme}\n"
    )
}

fn metric_at(lab: &Lab, h: &Host, name: &str) -> f64 {
    let (_, m) = lab.http(h, "GET", "http://127.0.0.1:9901/metrics", None);
    metric(&m, name)
}

/// The ACME certificate `h` serves for `www.edge.test` (its not-after), if a TLS client
/// that trusts only the CA's root (`root`) accepts it.
fn served_acme(lab: &Lab, client: &Host, h: &Host, root: &str) -> Option<i64> {
    let resolve = format!("www.edge.test:8443:{}", h.ip);
    let out = lab.exec(
        client,
        "curl",
        &[
            "-s",
            "-m",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            root,
            "--resolve",
            &resolve,
            "https://www.edge.test:8443/",
        ],
    );
    if String::from_utf8_lossy(&out.stdout).trim() != "200" {
        return None;
    }
    status(lab, h)["certificates"]
        .as_array()?
        .iter()
        .find(|c| {
            c["source"] == "acme"
                && c["names"]
                    .as_array()
                    .is_some_and(|n| n.iter().any(|x| x == "www.edge.test"))
        })?["not_after"]
        .as_i64()
}

/// Scenario 3 and the ACME half of 4: pebble in the lab; the leader is killed with
/// `kill -9` during the first order; then a 3/2 partition while renewals are due.
#[test]
fn acme_leader_killed_mid_order_and_a_partitioned_minority_never_orders() {
    let Some(_one_at_a_time) = lab_or_skip() else {
        return;
    };
    let partition_secs = env_secs("CHAOS_ACME_PARTITION_SECS", 40);
    let mut lab = Lab::new("ac");
    let ca = lab.host("ca", 210);
    let backend = lab.host("backend", 100);
    let client = lab.host("client", 250);
    let nodes: Vec<Host> = (1..=5).map(|i| lab.host(&format!("n{i}"), i)).collect();
    let upstream = start_backend(&mut lab, &backend);
    // pebble validates HTTP-01 on port 8080 of whatever its DNS answers for the name, and
    // sleeps up to 3 s before each validation, so an order is open for a while.
    let ca_rt = lab.runtime(&ca);
    let ca_ip = ca.ip;
    let pebble = ca_rt.run(async move {
        Pebble::start_on(
            ca_ip.into(),
            8080,
            &[("PEBBLE_VA_NOSLEEP", "0"), ("PEBBLE_VA_SLEEPTIME", "3")],
            serde_json::json!({}),
            None,
        )
    });
    let root = lab.path().join("issuer.pem").display().to_string();
    let mgmt = format!("https://{}/roots/0", pebble.management);
    let out = lab.exec(
        &client,
        "curl",
        &[
            "-s",
            "--cacert",
            &pebble.root.display().to_string(),
            "-o",
            &root,
            &mgmt,
        ],
    );
    assert!(out.status.success(), "pebble's root from {mgmt}");

    let key = key_file(&lab, "cluster.key");
    let plain = acme_pools(&upstream, "");
    start_members(&mut lab, &nodes, &nodes[0], &key, None, &plain, &[]);
    let (leader, _) = wait_for("a leader of five", Duration::from_secs(60), || {
        let l = acting_leader(&lab, &nodes)?;
        (status(&lab, &l)["mesh"]["members"].as_array()?.len() == 4).then_some(l)
    });
    // The validation goes to a member that will survive.
    let validator = nodes
        .iter()
        .find(|h| h.name != leader.name)
        .unwrap()
        .clone();
    let add_a =
        serde_json::json!({"host": "www.edge.test.", "addresses": [validator.ip.to_string()]});
    let (code, _) = lab.http(
        &client,
        "POST",
        &format!("http://{}/add-a", pebble.challenge_management),
        Some(&add_a.to_string()),
    );
    assert_eq!(code, 200, "challtestsrv add-a");

    // Turn ACME on everywhere; kill the leader as soon as it has started the order.
    let acme = |renew: &str| {
        format!(
            "[acme]\ndirectory = \"{}\"\nroot_pem = \"{}\"\npropagation_ms = 100\n{renew}",
            pebble.directory,
            pebble.root.display()
        )
    };
    let reload_all = |lab: &Lab, nodes: &[Host], acme: &str| {
        for h in nodes {
            node_config(lab, h, &key, &nodes[0], None, &acme_pools(&upstream, acme));
            let (code, body) = lab.http(h, "POST", "http://127.0.0.1:9901/reload", None);
            assert_eq!(code, 200, "reload {}: {body}", h.name);
        }
    };
    reload_all(&lab, &nodes, &acme(""));
    wait_for(
        "the leader starts an order",
        Duration::from_secs(30),
        || (metric_at(&lab, &leader, "edgemesh_acme_orders_started_total") >= 1.0).then_some(()),
    );
    let issued_before_kill = pebble.issued();
    lab.signal(&leader.name, "KILL");
    let alive: Vec<Host> = nodes
        .iter()
        .filter(|h| h.name != leader.name)
        .cloned()
        .collect();
    let (_, served) = wait_for(
        "every surviving member serves the CA's certificate",
        Duration::from_secs(90),
        || {
            alive
                .iter()
                .all(|h| served_acme(&lab, &client, h, &root).is_some())
                .then_some(())
        },
    );
    let issued = pebble.issued();
    assert_eq!(
        issued, 1,
        "certificates issued: {issued} (before the kill: {issued_before_kill})"
    );
    let next = acting_leader(&lab, &alive).expect("a new leader");
    // Counters, summed as whole numbers (a float sum of nothing but zeros prints "-0").
    let orders: u64 = alive
        .iter()
        .map(|h| metric_at(&lab, h, "edgemesh_acme_orders_started_total") as u64)
        .sum();
    let failed_orders: u64 = alive
        .iter()
        .map(|h| metric_at(&lab, h, "edgemesh_acme_orders_total{result=\"failed\"}") as u64)
        .sum();
    report(&Row {
        scenario: "3. leader kill -9 during an ACME order (pebble, HTTP-01)".into(),
        invariant: "exactly one certificate issued; every node serves it".into(),
        result: "pass".into(),
        figures: format!(
            "issued {issued} (pebble's log; {issued_before_kill} when {} was killed); the survivors started {orders} order(s), {failed_orders} failed, {} leading; all 4 survivors served it, verified against pebble's root, {:.1} s after the kill (bound 90 s)",
            leader.name,
            next.name,
            served.as_secs_f64()
        ),
    });

    // The killed member comes back (its data directory kept); then a 3/2 partition while
    // renewals fall due every 15 s: the minority never orders, the majority renews; after
    // healing every member serves the same certificate.
    let cfg = lab.path().join(format!("{}.toml", leader.name));
    let label = format!("{}-again", leader.name);
    spawn_edgemesh(&mut lab, &leader, &label, &cfg, &[]);
    wait_for("five members again", Duration::from_secs(60), || {
        sees_all(&lab, &nodes).then_some(())
    });
    let alive = nodes.clone();
    reload_all(&lab, &alive, &acme("renew_after_secs = 15\n"));
    let (major, minor) = alive.split_at(3);
    let major: Vec<Host> = major.to_vec();
    let minor: Vec<Host> = minor.to_vec();
    let started = |hs: &[Host]| -> f64 {
        hs.iter()
            .map(|h| metric_at(&lab, h, "edgemesh_acme_orders_started_total"))
            .sum()
    };
    let minority_before = started(&minor);
    let issued_before = pebble.issued();
    lab.partition(
        &major.iter().chain(std::iter::once(&ca)).collect::<Vec<_>>(),
        &minor.iter().collect::<Vec<_>>(),
    );
    let cut = Instant::now();
    // A leader cut off on the minority side may act until its quorum lease (1 s) runs out;
    // from then on no minority member may act.
    std::thread::sleep(Duration::from_secs(2));
    let mut minority_acted = false;
    while cut.elapsed() < Duration::from_secs(partition_secs) {
        minority_acted |= minor
            .iter()
            .any(|h| status(&lab, h)["mesh"]["election"]["acting"] == true);
        std::thread::sleep(Duration::from_millis(500));
    }
    let minority_orders = started(&minor) - minority_before;
    let issued_during = pebble.issued() - issued_before;
    lab.heal();
    assert!(
        !minority_acted,
        "a minority member acted as leader after its lease ran out"
    );
    assert_eq!(minority_orders, 0.0, "the minority started orders");
    assert!(
        issued_during >= 1,
        "the majority renewed nothing in {partition_secs} s"
    );
    let (_, converged) = wait_for(
        "every member serves the same certificate",
        Duration::from_secs(30),
        || {
            let served: BTreeSet<Option<i64>> = alive
                .iter()
                .map(|h| served_acme(&lab, &client, h, &root))
                .collect();
            (served.len() == 1 && !served.contains(&None)).then_some(())
        },
    );
    report(&Row {
        scenario: format!("4. 3/2 partition for {partition_secs} s with renewals due (ACME)"),
        invariant: "the minority never orders; all converge after healing".into(),
        result: "pass".into(),
        figures: format!(
            "minority (2 of 5) never led and started 0 orders; the majority renewed {issued_during} time(s); after healing all 5 served one certificate in {:.1} s",
            converged.as_secs_f64()
        ),
    });
}
