//! The cluster-wide configuration: `meshctl config apply` on one node of three, every node
//! validating and applying it, per-node refusals, rollback, and concurrent changes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{self, Node};

const TEMPLATE: &str = concat!(
    mesh_member_toml!(),
    r#"
[[listeners]]
name = "web"
addr = "127.0.0.1:{http}"
kind = "http"

[[routes]]
hosts = ["app.test"]
pool = "one"
tls = false

[pools.one]
endpoints = ["{one}"]
"#
);

/// Routes app.test to `pool`; with `cert`, also serves a certificate from files beside each
/// node's configuration.
fn doc(pool: &str, one: SocketAddr, two: SocketAddr, cert: bool) -> String {
    let tls = if cert {
        "[[tls.certificates]]\ncert = \"extra.pem\"\nkey = \"extra.key\"\n\n"
    } else {
        ""
    };
    format!(
        "{tls}[[routes]]\nhosts = [\"app.test\"]\npool = \"{pool}\"\ntls = false\n\n[pools.one]\nendpoints = [\"{one}\"]\n\n[pools.two]\nendpoints = [\"{two}\"]\n"
    )
}

/// The backend that answers app.test on `node` (its body's first word), on a new connection.
pub async fn serves(node: &Node) -> String {
    match harness::http_request_host(&node.addr("http").to_string(), "GET", "/", Some("app.test"))
        .await
    {
        Ok((200, body)) => body.split(' ').next().unwrap_or_default().to_string(),
        Ok((code, body)) => format!("HTTP {code}: {body}"),
        Err(e) => format!("error: {e}"),
    }
}

async fn wait_all_serve(nodes: &[(String, Node)], backend: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let mut all = true;
        for (_, n) in nodes {
            all &= serves(n).await == backend;
        }
        if all {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "not every node serves {backend}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn meshctl(node: &Node, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--addr".to_string(), node.admin()];
    all.extend(args.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    harness::run(env!("CARGO_BIN_EXE_meshctl"), &refs)
}

/// A POST with a JSON body to the admin API: (status, body).
async fn post_json(admin: &str, path: &str, body: &serde_json::Value) -> (u16, String) {
    let body = body.to_string();
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    (code, body)
}

pub async fn config_status(node: &Node) -> serde_json::Value {
    let (code, body) = harness::http_get(&node.admin(), "/config/status")
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Requests app.test on one keep-alive connection until `stop`: (answers, failures, the
/// backends seen in order of first appearance).
fn keep_alive_client(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>, Vec<String>)> {
    tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let (mut answers, mut failures, mut seen) = (0u64, Vec::new(), Vec::<String>::new());
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = send.ready().await {
                failures.push(format!("connection: {e}"));
                break;
            }
            let req = hyper::Request::get("/")
                .header("host", "app.test")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            match send.send_request(req).await {
                Ok(resp) if resp.status() == 200 => {
                    use http_body_util::BodyExt;
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    let who = String::from_utf8_lossy(&body)
                        .split(' ')
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    if !seen.contains(&who) {
                        seen.push(who);
                    }
                    answers += 1;
                }
                Ok(resp) => failures.push(format!("HTTP {}", resp.status())),
                Err(e) => {
                    failures.push(format!("request: {e}"));
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (answers, failures, seen)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_once_validated_everywhere_refused_per_node_rolled_back_and_cas() {
    let one = harness::backend("one").await;
    let two = harness::backend("two").await;
    let dir = tempfile::tempdir().unwrap();
    let key = harness::cluster_key(dir.path());
    let mut vars = vec![
        ("keyfile", key.display().to_string()),
        ("one", one.addr.to_string()),
        ("seeds", String::new()),
        ("id", String::new()),
    ];
    let mut nodes: Vec<(String, Node)> = Vec::new();
    for i in 0..3 {
        vars[3].1 = format!("c{i}");
        let n = harness::node(TEMPLATE, &vars).await;
        if i == 0 {
            vars[2].1 = format!("\"127.0.0.1:{}\"", n.port("gossip"));
        }
        nodes.push((format!("c{i}"), n));
    }
    let leader = crate::acme::wait_a_leader(&nodes).await;
    let (via_id, via) = nodes.iter().find(|(id, _)| *id != leader).unwrap();
    eprintln!("leader {leader}; applying through {via_id}");
    // Before any cluster version: each node runs its own file.
    wait_all_serve(&nodes, "one", Duration::from_secs(5)).await;
    let (code, _, err) = meshctl(via, &["config", "get"]);
    assert_eq!(code, 1);
    assert!(err.contains("no cluster configuration yet"), "{err}");

    // A client on a keep-alive connection to the last node for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let client = keep_alive_client(nodes[2].1.addr("http"), stop.clone());

    // Version 1, through a node that does not lead.
    let v1 = dir.path().join("routes.toml");
    std::fs::write(&v1, doc("two", one.addr, two.addr, false)).unwrap();
    let start = Instant::now();
    let (code, out, err) = tokio::task::block_in_place(|| {
        meshctl(via, &["config", "apply", v1.to_str().unwrap(), "--yes"])
    });
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("+pool = \"two\""), "the diff is shown: {out}");
    assert!(out.contains("published version 1"), "{out}");
    for (id, _) in &nodes {
        assert!(
            out.lines()
                .any(|l| l.contains(id.as_str()) && l.contains("v1") && l.ends_with("ok")),
            "{id} runs v1: {out}"
        );
    }
    let converged = start.elapsed() + wait_all_serve(&nodes, "two", Duration::from_secs(10)).await;
    eprintln!("version 1 served by all 3 nodes {converged:?} after `meshctl config apply` started");
    let (code, got, _) = meshctl(&nodes[0].1, &["config", "get"]);
    assert_eq!(code, 0);
    assert_eq!(
        got,
        std::fs::read_to_string(&v1).unwrap(),
        "any node gives the live document"
    );
    let (code, same, _) = meshctl(via, &["config", "apply", v1.to_str().unwrap(), "--yes"]);
    assert_eq!(code, 0);
    assert!(same.contains("no change"), "{same}");

    // Invalid documents: refused on the node asked, naming file, line and key; nothing moves.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, doc("missing", one.addr, two.addr, false)).unwrap();
    let (code, out, err) = meshctl(via, &["config", "apply", bad.to_str().unwrap(), "--yes"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("bad.toml:3: routes[0].pool: pool \"missing\" is not defined"),
        "{err}"
    );
    assert!(err.contains("nothing was published"), "{err}");
    let local = dir.path().join("local.toml");
    std::fs::write(
        &local,
        "[pools.x]\nendpoints = []\n\n[gossip]\nbind = \"0.0.0.0:1\"\n",
    )
    .unwrap();
    let (code, _, err) = meshctl(via, &["config", "apply", local.to_str().unwrap(), "--yes"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("local.toml:4: gossip: [gossip] is node-local"),
        "{err}"
    );
    for (id, n) in &nodes {
        let s = config_status(n).await;
        assert_eq!(s["live"]["version"], 1, "{id}: {s}");
        assert_eq!(serves(n).await, "two", "{id}");
    }

    // Valid where the certificate files exist (c0, c1), refused where they do not (c2).
    let cert = rcgen::generate_simple_self_signed(vec!["extra.test".to_string()]).unwrap();
    for (_, n) in &nodes[..2] {
        std::fs::write(n.dir.path().join("extra.pem"), cert.cert.pem()).unwrap();
        std::fs::write(
            n.dir.path().join("extra.key"),
            cert.key_pair.serialize_pem(),
        )
        .unwrap();
    }
    let v2 = dir.path().join("with-cert.toml");
    std::fs::write(&v2, doc("one", one.addr, two.addr, true)).unwrap();
    let (code, out, err) = tokio::task::block_in_place(|| {
        meshctl(
            &nodes[0].1,
            &["config", "apply", v2.to_str().unwrap(), "--yes"],
        )
    });
    assert_eq!(
        code, 1,
        "a refusal somewhere fails the command: {out}\n{err}"
    );
    assert!(out.contains("published version 2"), "{out}");
    let refused = out
        .lines()
        .find(|l| l.trim_start().starts_with("c2"))
        .unwrap_or_default();
    assert!(
        refused.contains("v1")
            && refused.contains("REFUSED v2")
            && refused.contains("tls.certificates[0].cert"),
        "{out}"
    );
    for (_, n) in &nodes[..2] {
        assert_eq!(serves(n).await, "one");
    }
    assert_eq!(
        serves(&nodes[2].1).await,
        "two",
        "c2 keeps its last good version"
    );
    let (code, out, _) = meshctl(&nodes[1].1, &["config", "status"]);
    assert_eq!(
        code, 1,
        "status fails while a node refuses the live version"
    );
    assert!(out.contains("live: version 2"), "{out}");
    assert!(out.contains("REFUSED v2"), "{out}");

    // Rollback to version 1: a new version 3 with version 1's document, fine everywhere.
    let (code, out, err) =
        tokio::task::block_in_place(|| meshctl(via, &["config", "rollback", "1", "--yes"]));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("published version 3"), "{out}");
    wait_all_serve(&nodes, "two", Duration::from_secs(10)).await;
    let (_, history, _) = meshctl(via, &["config", "history"]);
    assert!(history.contains("rollback to v1"), "{history}");
    for v in ["1 ", "2 ", "3 "] {
        assert!(
            history.lines().any(|l| l.trim_start().starts_with(v)),
            "{history}"
        );
    }

    // Two changes that both replace version 3, through two nodes at once: one wins.
    let change = |pool: &str| {
        serde_json::json!({
            "doc": doc(pool, one.addr, two.addr, false),
            "source": format!("{pool}.toml"),
            "author": "test",
            "replaces": 3,
        })
    };
    let (admin0, admin1) = (nodes[0].1.admin(), nodes[1].1.admin());
    let (to_one, to_two) = (change("one"), change("two"));
    let (a, b) = tokio::join!(
        post_json(&admin0, "/config", &to_one),
        post_json(&admin1, "/config", &to_two),
    );
    let mut codes = [a.0, b.0];
    codes.sort();
    assert_eq!(codes, [200, 409], "{a:?} {b:?}");
    let lost = if a.0 == 409 { &a.1 } else { &b.1 };
    assert!(
        lost.contains("conflict: version 4") && lost.contains("replaces version 3"),
        "{lost}"
    );
    let winner = if a.0 == 200 { "one" } else { "two" };
    wait_all_serve(&nodes, winner, Duration::from_secs(10)).await;
    // A change naming no version over a live one is a conflict too.
    let mut first = change("one");
    first["replaces"] = serde_json::Value::Null;
    let (code, body) = post_json(&nodes[2].1.admin(), "/config", &first).await;
    assert_eq!(code, 409, "{body}");

    // The client's connection lived through every change.
    stop.store(true, Ordering::Relaxed);
    let (answers, failures, seen) = client.await.unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(answers > 100, "{answers}");
    assert!(
        seen.starts_with(&["one".to_string(), "two".to_string()]),
        "{seen:?}"
    );
    eprintln!("keep-alive client: {answers} answers, 0 failed, one connection, saw {seen:?}");

    // A restarted node serves the cluster version it kept at once, before the mesh answers.
    nodes[1].1.restart().await;
    assert_eq!(serves(&nodes[1].1).await, winner);
    assert!(nodes[1]
        .1
        .log()
        .contains("starting with the cluster configuration kept on disk"));

    // The whole cluster restarts: the replicated state is gone, the leader shares the
    // version it kept, and it is live again (history starts over from it).
    for (_, n) in &mut nodes {
        let _ = n.child.kill();
        let _ = n.child.wait();
    }
    for (_, n) in &mut nodes {
        n.restart().await;
    }
    crate::acme::wait_a_leader(&nodes).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = config_status(&nodes[2].1).await;
        if s["live"]["version"] == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "version 4 not live again: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_all_serve(&nodes, winner, Duration::from_secs(5)).await;
}
