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
    let out = aws
        .route53
        .list_resource_record_sets()
        .hosted_zone_id(zone)
        .send()
        .await
        .unwrap();
    out.resource_record_sets()
        .iter()
        .filter(|r| r.name() == "mesh.edge.test." && *r.r#type() == RrType::A)
        .flat_map(|r| r.resource_records())
        .map(|v| v.value().to_string())
        .collect()
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
    let zone = aws
        .route53
        .create_hosted_zone()
        .name("edge.test.")
        .caller_reference("edgemesh-entrypoint")
        .send()
        .await
        .unwrap()
        .hosted_zone()
        .unwrap()
        .id()
        .trim_start_matches("/hostedzone/")
        .to_string();
    // The nodes reach Route53 through a fault proxy.
    let faults = FaultProxy::start(moto.addr).await;
    let backend = harness::backend("app").await;
    let dir = tempfile::tempdir().unwrap();
    let key = harness::cluster_key(dir.path());
    let mut vars = vec![
        ("keyfile", key.display().to_string()),
        ("backend", backend.addr.to_string()),
        ("zone", zone.clone()),
        ("seeds", String::new()),
        ("id", String::new()),
        ("public", String::new()),
    ];
    let env = aws_env(faults.addr);
    let mut nodes: Vec<(String, Node)> = Vec::new();
    for i in 0..5 {
        vars[4].1 = format!("e{i}");
        vars[5].1 = format!("192.0.2.{}", 10 + i);
        let n = harness::node_env(TEMPLATE, &vars, &env).await;
        if i == 0 {
            vars[3].1 = format!("\"127.0.0.1:{}\"", n.port("gossip"));
        }
        nodes.push((format!("e{i}"), n));
    }
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
