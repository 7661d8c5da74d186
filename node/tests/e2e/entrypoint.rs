//! The DNS entrypoint against Route53 (moto): five nodes with distinct public addresses; the
//! record holds all of them, a hand edit is repaired, a `kill -9`ed member leaves it, the
//! next leader keeps it right after the leader is killed, and Route53 errors (a fault proxy)
//! leave the last good record in place.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};

use crate::ecs::{aws_env, Aws, FaultProxy, Moto, FAIL_500, PASS};
use crate::harness::{self, Node};

const TEMPLATE: &str = concat!(
    mesh_member_toml!(),
    r#"public_ip = "{public}"
reap_after_secs = 600

[[listeners]]
name = "web"
addr = "127.0.0.1:{http}"
kind = "http"

[[routes]]
hosts = ["*"]
pool = "app"
tls = false

[pools.app]
endpoints = ["{backend}"]

[entrypoint]
debounce_ms = 300
check_secs = 2

[[entrypoint.records]]
hosted_zone_id = "{zone}"
name = "mesh.edge.test"
ttl = 5
"#
);

async fn a_record(aws: &Aws, zone: &str) -> BTreeSet<String> {
    record(aws, zone, RrType::A).await
}

async fn record(aws: &Aws, zone: &str, rtype: RrType) -> BTreeSet<String> {
    aws.record(zone, "mesh.edge.test.", rtype).await
}

/// The template's variables: cluster key in `dir`, the backend, the hosted zone; seeds, id
/// and public address empty.
fn variables(
    dir: &std::path::Path,
    backend: &harness::Backend,
    zone: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("keyfile", harness::cluster_key(dir).display().to_string()),
        ("backend", backend.addr.to_string()),
        ("zone", zone.to_string()),
        ("seeds", String::new()),
        ("id", String::new()),
        ("public", String::new()),
    ]
}

/// Members `(id, public address)` on `template`, the first seeding the rest; returns them
/// and the variables with the first as seed.
async fn start_mesh(
    template: &str,
    vars: &[(&'static str, String)],
    members: &[(String, String)],
    env: &[(&str, String)],
) -> (Vec<(String, Node)>, Vec<(&'static str, String)>) {
    let mut vars = vars.to_vec();
    let mut nodes = Vec::new();
    for (i, (id, public)) in members.iter().enumerate() {
        vars[4].1 = id.clone();
        vars[5].1 = public.clone();
        let n = harness::node_env(template, &vars, env).await;
        if i == 0 {
            vars[3].1 = format!("\"127.0.0.1:{}\"", n.port("gossip"));
        }
        nodes.push((id.clone(), n));
    }
    (nodes, vars)
}

fn set(ips: &[&str]) -> BTreeSet<String> {
    ips.iter().map(|s| s.to_string()).collect()
}

async fn wait_record(
    aws: &Aws,
    zone: &str,
    want: &BTreeSet<String>,
    within: Duration,
    what: &str,
) -> Duration {
    let start = Instant::now();
    loop {
        let got = a_record(aws, zone).await;
        if &got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{what}: record {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn acting_leader(nodes: &[(String, Node)]) -> Option<String> {
    for (id, n) in nodes {
        if n.status().await["mesh"]["election"]["acting"] == true {
            return Some(id.clone());
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_follows_the_live_members() {
    let moto = Moto::start().await;
    let aws = Aws::new(moto.addr, "127.0.0.8").await;
    let zone = aws.hosted_zone("edge.test.").await;
    // The nodes reach Route53 through a fault proxy.
    let faults = FaultProxy::start(moto.addr).await;
    let backend = harness::backend("app").await;
    let dir = tempfile::tempdir().unwrap();
    let env = aws_env(faults.addr);
    let members: Vec<(String, String)> = (0..5)
        .map(|i| (format!("e{i}"), format!("192.0.2.{}", 10 + i)))
        .collect();
    let (mut nodes, vars) = start_mesh(
        TEMPLATE,
        &variables(dir.path(), &backend, &zone),
        &members,
        &env,
    )
    .await;
    let all = set(&[
        "192.0.2.10",
        "192.0.2.11",
        "192.0.2.12",
        "192.0.2.13",
        "192.0.2.14",
    ]);
    let took = wait_record(&aws, &zone, &all, Duration::from_secs(40), "five members").await;
    eprintln!("record holds all five members {took:?} after the last start");
    // Every member votes before members are killed (the leader adds one per step).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = nodes[0].1.status().await;
        if s["mesh"]["election"]["voters"]
            .as_array()
            .map_or(0, Vec::len)
            == 5
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "voters never reached 5: {}",
            s["mesh"]["election"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A hand edit is repaired by the next read-back (every 2 s here).
    let edit = ResourceRecordSet::builder()
        .name("mesh.edge.test.")
        .r#type(RrType::A)
        .ttl(5)
        .resource_records(
            ResourceRecord::builder()
                .value("198.51.100.1")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    aws.route53
        .change_resource_record_sets()
        .hosted_zone_id(&zone)
        .change_batch(
            ChangeBatch::builder()
                .changes(
                    Change::builder()
                        .action(ChangeAction::Upsert)
                        .resource_record_set(edit)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let took = wait_record(
        &aws,
        &zone,
        &all,
        Duration::from_secs(15),
        "hand edit repaired",
    )
    .await;
    eprintln!("hand edit repaired after {took:?}");

    // kill -9 a member that does not lead: it leaves the record.
    let leader = acting_leader(&nodes).await.expect("a leader");
    let i = nodes.iter().position(|(id, _)| *id != leader).unwrap();
    let (gone, n) = nodes.remove(i);
    let mut n = n;
    let gone_ip = format!("192.0.2.{}", 10 + gone[1..].parse::<u8>().unwrap());
    n.child.kill().unwrap();
    let _ = n.child.wait();
    let mut left = all.clone();
    left.remove(&gone_ip);
    let took = wait_record(
        &aws,
        &zone,
        &left,
        Duration::from_secs(20),
        "killed member dropped",
    )
    .await;
    eprintln!("kill -9 of {gone}: dropped from the record after {took:?}");

    // Kill the leader: the next one (3 of 5 voters alive) keeps the record right.
    let leader = acting_leader(&nodes).await.expect("a leader");
    let i = nodes.iter().position(|(id, _)| *id == leader).unwrap();
    let (_, mut n) = nodes.remove(i);
    let leader_ip = format!("192.0.2.{}", 10 + leader[1..].parse::<u8>().unwrap());
    n.child.kill().unwrap();
    let _ = n.child.wait();
    left.remove(&leader_ip);
    let took = wait_record(
        &aws,
        &zone,
        &left,
        Duration::from_secs(30),
        "leader dropped by the next leader",
    )
    .await;
    eprintln!("leader {leader} killed: the next leader dropped it after {took:?}");

    // Route53 failing: the first killed member comes back, but the record keeps its last
    // good value and the error is reported; once Route53 answers again it is corrected.
    faults.set(FAIL_500);
    let back = harness::node_env(
        TEMPLATE,
        &{
            let mut v = vars.clone();
            // The same node back (same id and address), seeded by a live member.
            v[3].1 = format!("\"127.0.0.1:{}\"", nodes[0].1.port("gossip"));
            v[4].1 = gone.clone();
            v[5].1 = gone_ip.clone();
            v
        },
        &env,
    )
    .await;
    nodes.push((gone.clone(), back));
    let deadline = Instant::now() + Duration::from_secs(30);
    let error = loop {
        let s = nodes[0].1.status().await;
        let a = s["entrypoint"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["rtype"] == "A").cloned())
            .unwrap_or_default();
        let wants_back = a["status"]["desired"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == gone_ip.as_str()));
        if let (Some(e), true) = (a["status"]["last_error"].as_str(), wants_back) {
            break e.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no Route53 error reported: {}\n{}",
            s["entrypoint"],
            nodes.last().unwrap().1.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("Route53 failing: {error}");
    assert!(error.contains("HTTP 500"), "{error}");
    assert_eq!(
        a_record(&aws, &zone).await,
        left,
        "the last good record stays"
    );
    let (code, out, _) = harness::run(
        env!("CARGO_BIN_EXE_meshctl"),
        &["--addr", &nodes[0].1.admin(), "dns"],
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("mesh.edge.test") && out.contains("in a row"),
        "{out}"
    );
    faults.set(PASS);
    left.insert(gone_ip.clone());
    let took = wait_record(
        &aws,
        &zone,
        &left,
        Duration::from_secs(30),
        "corrected after the fault",
    )
    .await;
    eprintln!("record corrected {took:?} after Route53 recovered");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, out, _) = harness::run(
            env!("CARGO_BIN_EXE_meshctl"),
            &["--addr", &nodes[0].1.admin(), "dns"],
        );
        assert_eq!(code, 0);
        if out.contains("(in sync)") && !out.contains("in a row") {
            break;
        }
        assert!(Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// [`TEMPLATE`] with a 20 s drain budget and a one-second grace.
fn drain_template() -> String {
    TEMPLATE.replace(
        "drain_timeout_secs = 1\n",
        "drain_timeout_secs = 20\ndrain_grace_secs = 1\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_dns_before_it_stops_accepting_with_no_failed_request() {
    let moto = Moto::start().await;
    let aws = Aws::new(moto.addr, "127.0.0.7").await;
    let zone = aws.hosted_zone("edge.test.").await;
    let template = drain_template().replace("ttl = 5", "ttl = 1");
    let backend = harness::backend("app").await;
    let dir = tempfile::tempdir().unwrap();
    let env = aws_env(moto.addr);
    // Three IPv4 members and one IPv6 member (its own AAAA record).
    let mut members: Vec<(String, String)> = (0..3)
        .map(|i| (format!("d{i}"), format!("192.0.2.{}", 20 + i)))
        .collect();
    members.push(("d3".into(), "2001:db8::23".into()));
    let (mut nodes, _) = start_mesh(
        &template,
        &variables(dir.path(), &backend, &zone),
        &members,
        &env,
    )
    .await;
    let all = set(&["192.0.2.20", "192.0.2.21", "192.0.2.22"]);
    wait_record(&aws, &zone, &all, Duration::from_secs(40), "three members").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while record(&aws, &zone, RrType::Aaaa).await != set(&["2001:db8::23"]) {
        assert!(
            Instant::now() < deadline,
            "no AAAA record for the IPv6 member"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // `meshctl drain` takes a node out of DNS while it keeps serving; `--undo` brings it back.
    let leader = loop {
        if let Some(l) = acting_leader(&nodes).await {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let others: Vec<usize> = (0..3).filter(|&i| nodes[i].0 != leader).collect();
    let (id, n) = &nodes[others[0]];
    let ip = format!("192.0.2.{}", 20 + id[1..].parse::<u8>().unwrap());
    let (code, out, _) = harness::run(
        env!("CARGO_BIN_EXE_meshctl"),
        &["--addr", &n.admin(), "drain"],
    );
    assert_eq!(code, 0, "{out}");
    let mut without = all.clone();
    without.remove(&ip);
    wait_record(
        &aws,
        &zone,
        &without,
        Duration::from_secs(15),
        "drained node out of DNS",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while n.status().await["drain"]["phase"] != "drained" {
        assert!(Instant::now() < deadline, "{}", n.status().await["drain"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = harness::http_get(&n.addr("http").to_string(), "/")
        .await
        .unwrap();
    assert_eq!(status, 200, "a drained node still serves");
    let (code, out, _) = harness::run(
        env!("CARGO_BIN_EXE_meshctl"),
        &["--addr", &n.admin(), "drain", "--undo"],
    );
    assert_eq!(code, 0, "{out}");
    wait_record(
        &aws,
        &zone,
        &all,
        Duration::from_secs(15),
        "undone node back in DNS",
    )
    .await;

    // A client that follows the record (re-read every 200 ms), under continuous load.
    let addr_of: std::collections::HashMap<String, std::net::SocketAddr> = nodes
        .iter()
        .map(|(id, n)| {
            (
                format!("192.0.2.{}", 20 + id[1..].parse::<u8>().unwrap()),
                n.addr("http"),
            )
        })
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, aws, zone, addr_of) = (
            stop.clone(),
            Aws::new(moto.addr, "127.0.0.7").await,
            zone.clone(),
            addr_of.clone(),
        );
        tokio::spawn(async move {
            let (mut ok, mut failed, mut i) = (0usize, Vec::new(), 0usize);
            let mut ips: Vec<String> = Vec::new();
            let mut resolved = Instant::now() - Duration::from_secs(1);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if resolved.elapsed() >= Duration::from_millis(200) {
                    ips = a_record(&aws, &zone).await.into_iter().collect();
                    resolved = Instant::now();
                }
                i += 1;
                let ip = &ips[i % ips.len()];
                match harness::http_get(&addr_of[ip].to_string(), "/").await {
                    Ok((200, _)) => ok += 1,
                    other => failed.push(format!("{ip}: {other:?}")),
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    // SIGTERM the drained-and-undone node: it leaves DNS, lingers TTL + grace, then stops.
    let t0 = Instant::now();
    let i = others[0];
    nodes[i].1.signal("TERM");
    let mut without = all.clone();
    without.remove(&ip);
    let out_of_dns = wait_record(
        &aws,
        &zone,
        &without,
        Duration::from_secs(15),
        "terminated node out of DNS",
    )
    .await;
    let status = nodes[i].1.wait_exit(Duration::from_secs(25));
    let exited = t0.elapsed();
    assert!(status.success(), "{status:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    eprintln!(
        "SIGTERM: out of DNS after {out_of_dns:?}, exited after {exited:?}; {ok} requests, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok > 100, "{ok}");
    // The order, from the node's own log: out of DNS, then closing, then leaving.
    let log = nodes[i].1.log();
    let pos = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("no {what:?} in\n{log}"))
    };
    assert!(pos("drain requested") < pos("drain: no new connections"));
    assert!(pos("drain: no new connections") < pos("drain: left the mesh"));
    // It kept accepting for the record's TTL (1 s) plus the grace (1 s) after leaving DNS.
    assert!(
        exited >= out_of_dns + Duration::from_millis(1_800),
        "stopped too early: out of DNS {out_of_dns:?}, exited {exited:?}\n{}",
        log.lines()
            .filter(|l| l.contains("drain"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        exited < Duration::from_secs(20),
        "within the 20 s budget: {exited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_address_from_the_instance_metadata_service() {
    let moto = Moto::start().await;
    let backend = harness::backend("app").await;
    let dir = tempfile::tempdir().unwrap();
    let mut vars = variables(dir.path(), &backend, "Z1");
    vars[4].1 = "imds0".into();
    vars[5].1 = "imds".into();
    let mut env = aws_env(moto.addr);
    env.push((
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        format!("http://{}/", moto.addr),
    ));
    // The gossip address too, as the deployment's task definition has it: bound on every
    // address, advertised at the instance's private one.
    let bound = "bind = \"127.0.0.1:{gossip}\"";
    let template = TEMPLATE.replace(bound, "bind = \"0.0.0.0:{gossip}\"\nadvertise = \"imds\"");
    assert_ne!(template, TEMPLATE);
    let mut n = harness::node_env(&template, &vars, &env).await;
    let s = n.status().await;
    // moto's instance metadata answers public-ipv4 with 198.51.100.1, local-ipv4 with
    // 127.0.0.1.
    assert_eq!(
        s["mesh"]["me"]["public"], "198.51.100.1",
        "{}",
        s["mesh"]["me"]
    );
    assert_eq!(s["mesh"]["me"]["meta"]["public"], "198.51.100.1");
    assert_eq!(
        s["mesh"]["me"]["gossip"],
        format!("127.0.0.1:{}", n.port("gossip")),
        "{}",
        s["mesh"]["me"]
    );

    // No metadata service: the node refuses to start, naming the setting.
    n.child.kill().unwrap();
    let _ = n.child.wait();
    let dead = format!("http://127.0.0.1:{}/", harness::free_port());
    let config = n.dir.path().join("edgemesh.toml");
    let with_advertise = std::fs::read_to_string(&config).unwrap();
    let gossip = format!(
        "bind = \"0.0.0.0:{}\"\nadvertise = \"imds\"",
        n.port("gossip")
    );
    let without = with_advertise.replace(
        &gossip,
        &format!("bind = \"127.0.0.1:{}\"", n.port("gossip")),
    );
    assert_ne!(without, with_advertise);
    for (text, setting) in [
        (&with_advertise, "gossip.advertise = \"imds\""),
        (&without, "gossip.public_ip = \"imds\""),
    ] {
        std::fs::write(&config, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgemesh"))
            .arg("--config")
            .arg(&config)
            .envs(aws_env(moto.addr))
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &dead)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(setting) && stderr.contains("metadata service"),
            "{stderr}"
        );
    }
}
