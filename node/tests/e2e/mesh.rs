//! Several edgemesh processes forming a mesh over loopback UDP.

use std::time::{Duration, Instant};

use crate::harness::{self, run, Node};

const TEMPLATE: &str = mesh_member_toml!();

async fn member(id: &str, seeds: &str, keyfile: &std::path::Path) -> Node {
    harness::node(
        TEMPLATE,
        &[
            ("id", id.to_string()),
            ("seeds", seeds.to_string()),
            ("keyfile", keyfile.display().to_string()),
        ],
    )
    .await
}

async fn member_ids(n: &Node) -> Vec<String> {
    let (code, body) = harness::http_get(&n.admin(), "/members").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

struct Named {
    id: String,
    node: Node,
}

/// Waits until exactly one node acts as leader (other than `not`), every node names it, and
/// returns its id.
async fn wait_one_leader(nodes: &[Named], not: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut acting = Vec::new();
        let mut named = Vec::new();
        for n in nodes {
            let s = n.node.status().await;
            if s["mesh"]["election"]["acting"] == true {
                acting.push(n.id.clone());
            }
            named.push(s["mesh"]["election"]["leader"].as_str().map(str::to_string));
        }
        assert!(acting.len() <= 1, "two acting leaders: {acting:?}");
        if let [one] = acting.as_slice() {
            if Some(one.as_str()) != not && named.iter().all(|l| l.as_deref() == Some(one.as_str()))
            {
                return one.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no single acting leader: acting {acting:?}, named {named:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_views(nodes: &[&Node], expected: usize, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let mut ok = true;
        for n in nodes {
            ok &= member_ids(n).await.len() == expected;
        }
        if ok {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "views did not reach {expected} members within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_processes_elect_fail_over_detect_a_kill_and_refuse_a_stranger() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cluster.key");
    let wrong = dir.path().join("wrong.key");
    let meshctl = env!("CARGO_BIN_EXE_meshctl");
    for (path, _) in [(&key, 0), (&wrong, 1)] {
        let (code, out, _) = run(meshctl, &["keygen"]);
        assert_eq!(code, 0);
        std::fs::write(path, out).unwrap();
    }

    let first = member("m0", "", &key).await;
    let seed = format!("\"127.0.0.1:{}\"", first.port("gossip"));
    let mut nodes = vec![Named {
        id: "m0".into(),
        node: first,
    }];
    for i in 1..6 {
        let id = format!("m{i}");
        nodes.push(Named {
            node: member(&id, &seed, &key).await,
            id,
        });
    }
    let all: Vec<&Node> = nodes.iter().map(|n| &n.node).collect();
    let took = wait_views(&all, 5, Duration::from_secs(20)).await;
    eprintln!("6 processes converged in {took:?}");
    assert_eq!(
        member_ids(&nodes[2].node).await,
        ["m0", "m1", "m3", "m4", "m5"]
    );

    // One acting leader, known to everyone.
    let leader = wait_one_leader(&nodes, None).await;
    let (code, out, _) = run(meshctl, &["--addr", &nodes[0].node.admin(), "leader"]);
    assert_eq!(code, 0);
    assert!(out.starts_with(&format!("leader {leader}, term ")), "{out}");
    assert!(out.lines().next().unwrap().contains(", since "), "{out}");

    // kill -9 of the leader: the others elect a new one.
    let index = nodes.iter().position(|n| n.id == leader).unwrap();
    let mut dead = nodes.remove(index);
    dead.node.child.kill().unwrap();
    dead.node.child.wait().unwrap();
    let started = Instant::now();
    let next = wait_one_leader(&nodes, Some(&leader)).await;
    eprintln!(
        "after kill -9 of leader {leader}, {next} acts after {:?}",
        started.elapsed()
    );
    let survivors: Vec<&Node> = nodes.iter().map(|n| &n.node).collect();
    wait_views(&survivors, 4, Duration::from_secs(10)).await;

    // kill -9: no leave message, so the others must detect it.
    let mut killed = nodes.remove(3).node;
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let survivors: Vec<&Node> = nodes.iter().map(|n| &n.node).collect();
    let detected = wait_views(&survivors, 3, Duration::from_secs(10)).await;
    eprintln!("kill -9 seen by all 4 survivors after {detected:?}");

    // A node with another key: it talks to two seeds, nobody ever lists it.
    let nodes: Vec<Node> = nodes.into_iter().map(|n| n.node).collect();
    // It knows two live members (not necessarily the first seed, which may be dead by now).
    let seeds = format!(
        "\"127.0.0.1:{}\", \"127.0.0.1:{}\"",
        nodes[0].port("gossip"),
        nodes[1].port("gossip")
    );
    let stranger = member("intruder", &seeds, &wrong).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = nodes[0].status().await;
        if s["mesh"]["packets_rejected_auth"].as_u64().unwrap() > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no rejected packet counted on the stranger's seed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in &nodes {
        assert!(!member_ids(n).await.contains(&"intruder".to_string()));
    }
    assert!(member_ids(&stranger).await.is_empty());
    let (_, metrics) = harness::http_get(&nodes[0].admin(), "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("edgemesh_gossip_members{state=\"alive\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("edgemesh_gossip_members{state=\"down\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("edgemesh_leader_changes_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("edgemesh_gossip_packets_total{result=\"rejected_auth\"}"),
        "{metrics}"
    );

    // Every member's metadata reached m0 through the replicated state.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = harness::http_get(&nodes[0].admin(), "/members")
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let versions: Vec<&str> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["meta"]["version"].as_str())
            .collect();
        if versions.len() == 3 {
            assert!(versions.iter().all(|x| *x == env!("CARGO_PKG_VERSION")));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metadata did not reach m0: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, metrics) = harness::http_get(&nodes[0].admin(), "/metrics")
        .await
        .unwrap();
    let ok_rounds = metrics
        .lines()
        .find_map(|l| l.strip_prefix("edgemesh_sync_rounds_total{result=\"ok\"} "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(ok_rounds > 0, "no sync round on m0: {metrics}");
    let (code, out, err) = run(meshctl, &["--addr", &nodes[0].admin(), "status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("mesh: 4 members alive, 2 down; leader "),
        "{out}"
    );
    let (code, out, err) = run(meshctl, &["--addr", &nodes[0].admin(), "members"]);
    assert_eq!(code, 0, "{err}");
    let (_, body) = harness::http_get(&nodes[0].admin(), "/members")
        .await
        .unwrap();
    let me: serde_json::Value = serde_json::from_str(&body).unwrap();
    let me = me["me"]["id"].as_str().unwrap().to_string();
    assert!(
        out.starts_with(&format!("4 members (this node: {me})")),
        "{out}"
    );
    // Columns line up with their headers: a row has its version under VERSION.
    let header = out.lines().find(|l| l.contains("INCARNATION")).unwrap();
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{me} ")))
        .unwrap();
    let col = header.find("VERSION").expect("a VERSION column");
    assert!(
        row[col..].starts_with(env!("CARGO_PKG_VERSION")),
        "{header}\n{row}"
    );
    for n in &nodes[1..] {
        let (_, body) = harness::http_get(&n.admin(), "/members").await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let id = v["me"]["id"].as_str().unwrap().to_string();
        assert!(out.contains(&id), "{out}");
    }
}

const DYN: &str = r#"
[node]
data_dir = "{data}"
admin_addr = "127.0.0.1:{admin}"
watch_config = false
drain_timeout_secs = 1

[[listeners]]
name = "web"
addr = "127.0.0.1:{http}"
kind = "http"

[[routes]]
hosts = ["dyn.test"]
pool = "dyn"
tls = false

[pools.dyn]
endpoints = ["{a}"]

[gossip]
bind = "127.0.0.1:{gossip}"
sync_port = {sync}
node_id = "{id}"
seeds = [{seeds}]
key_file = "{keyfile}"
probe_period_ms = 200
probe_rtt_ms = 100
suspect_to_down_ms = 1000
bootstrap_expect = 3
"#;

/// The leader publishes a pool's endpoints; every node's proxy follows within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_published_by_the_leader_reach_every_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cluster.key");
    let meshctl = env!("CARGO_BIN_EXE_meshctl");
    std::fs::write(&key, run(meshctl, &["keygen"]).1).unwrap();
    let (a, b) = (harness::backend("a").await, harness::backend("b").await);
    let start = |id: &str, seeds: String| {
        let vars = vec![
            ("id", id.to_string()),
            ("seeds", seeds),
            ("keyfile", key.display().to_string()),
            ("a", a.addr.to_string()),
        ];
        async move { harness::node(DYN, &vars).await }
    };
    let first = start("p0", String::new()).await;
    let seed = format!("\"127.0.0.1:{}\"", first.port("gossip"));
    let mut nodes = vec![Named {
        id: "p0".into(),
        node: first,
    }];
    for id in ["p1", "p2"] {
        nodes.push(Named {
            node: start(id, seed.clone()).await,
            id: id.into(),
        });
    }
    let leader = wait_one_leader(&nodes, None).await;
    let leader_admin = nodes.iter().find(|n| n.id == leader).unwrap().node.admin();
    let follower_admin = nodes.iter().find(|n| n.id != leader).unwrap().node.admin();
    let served_by = |n: &Node| {
        let http = n.addr("http").to_string();
        async move {
            let (code, body) = harness::http_request_host(&http, "GET", "/", Some("dyn.test"))
                .await
                .unwrap();
            assert_eq!(code, 200, "{body}");
            body.split(' ').next().unwrap().to_string()
        }
    };
    for n in &nodes {
        assert_eq!(served_by(&n.node).await, "a");
    }

    // Only the acting leader publishes; the others say who does.
    let ep = b.addr.to_string();
    let (code, out, _) = run(
        meshctl,
        &["--addr", &follower_admin, "pool", "set", "dyn", &ep],
    );
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!("not the acting leader (leader: {leader})")),
        "{out}"
    );
    let (code, out, _) = run(
        meshctl,
        &["--addr", &leader_admin, "pool", "set", "nope", &ep],
    );
    assert_eq!(code, 1);
    assert!(
        out.contains("pool \"nope\" is not in the configuration"),
        "{out}"
    );
    let (code, out, _) = run(
        meshctl,
        &["--addr", &leader_admin, "pool", "set", "dyn", "b:80"],
    );
    assert_eq!(code, 1);
    assert!(out.contains("endpoint \"b:80\""), "{out}");

    let (code, out, err) = run(
        meshctl,
        &["--addr", &leader_admin, "pool", "set", "dyn", &ep],
    );
    assert_eq!(code, 0, "{out}{err}");
    let published = Instant::now();
    for n in &nodes {
        let deadline = Instant::now() + Duration::from_secs(5);
        while served_by(&n.node).await != "b" {
            assert!(Instant::now() < deadline, "{} still routes to a", n.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!(
        "published pool served by all 3 nodes after {:?}",
        published.elapsed()
    );
    let status = nodes[0].node.status().await;
    assert_eq!(status["pools"][0]["endpoints"][0]["addr"], ep.as_str());
}
