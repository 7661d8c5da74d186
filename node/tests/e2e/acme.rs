//! Leader-elected ACME against pebble: the HTTP-01 validation reaches a node that is not the
//! leader, and every node serves the certificate.

use std::path::Path;
use std::time::{Duration, Instant};

use edgemesh_acme::testing::Pebble;

use crate::harness::{self, Node};

const TEMPLATE: &str = concat!(
    mesh_member_toml!(),
    r#"
[[listeners]]
name = "web"
addr = "127.0.0.1:{http}"
kind = "http"

[[listeners]]
name = "websecure"
addr = "127.0.0.1:{https}"
kind = "https"

[[routes]]
hosts = ["shop.edge.test"]
pool = "shop"

{extra}

[pools.shop]
endpoints = ["{backend}"]
{acme}
"#
);

/// pebble's root for the certificates it issues, from its management API, written into
/// `dir`.
pub async fn issuer_root(pebble: &Pebble, dir: &Path) -> std::path::PathBuf {
    let (_, status, roots) = harness::tls_get(
        pebble.management,
        "localhost",
        &pebble.root,
        false,
        "/roots/0",
    )
    .await;
    assert_eq!(status, 200, "pebble's /roots/0");
    let path = dir.join("pebble-root.pem");
    std::fs::write(&path, roots).unwrap();
    path
}

/// Whether `node` serves `host` with a certificate that chains to `root`.
async fn serves(node: &Node, host: &str, root: &Path) -> bool {
    harness::tls_connect(node.addr("https"), host, root, &[b"http/1.1"])
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_orders_a_non_leader_answers_the_validation_and_every_node_serves() {
    let backend = harness::backend("shop").await;
    let dir = tempfile::tempdir().unwrap();
    let key = harness::cluster_key(dir.path());
    let mut vars = vec![
        ("keyfile", key.display().to_string()),
        ("backend", backend.addr.to_string()),
        ("acme", String::new()),
        ("seeds", String::new()),
        ("id", String::new()),
        ("extra", String::new()),
    ];
    let mut nodes: Vec<(String, Node)> = Vec::new();
    for i in 0..3 {
        vars[4].1 = format!("a{i}");
        let n = harness::node(TEMPLATE, &vars).await;
        if i == 0 {
            vars[3].1 = format!("\"127.0.0.1:{}\"", n.port("gossip"));
        }
        nodes.push((format!("a{i}"), n));
    }
    // Find the leader, then point pebble's HTTP-01 validation at another node.
    let leader = wait_a_leader(&nodes).await;
    let (validator_id, validated) = nodes.iter().find(|(id, _)| *id != leader).unwrap();
    // Validations go through a forwarder (the DNS record of a real mesh), so the test can
    // send them elsewhere when it kills the node they reach. It starts pointed at nothing:
    // the first validation fails. pebble also rejects 15% of nonces throughout.
    let nowhere: std::net::SocketAddr = format!("127.0.0.1:{}", harness::free_port())
        .parse()
        .unwrap();
    let (forward_port, target) = forwarder(nowhere).await;
    let pebble = Pebble::start(forward_port, &[("PEBBLE_WFE_NONCEREJECT", "15")]);
    eprintln!("leader {leader}; pebble validates through {validator_id}");
    let validated_dir = validated.dir.path().to_path_buf();

    let issuer_root = issuer_root(&pebble, dir.path()).await;

    let acme = format!(
        "[acme]\ndirectory = \"{}\"\ncontact = [\"mailto:ops@edge.test\"]\nroot_pem = \"{}\"\npropagation_ms = 1500\n",
        pebble.directory,
        pebble.root.display()
    );
    vars[2].1 = acme;
    let start = Instant::now();
    for (id, n) in &nodes {
        let mut v = vars.clone();
        v[4].1 = id.clone();
        if id == "a0" {
            v[3].1 = String::new();
        }
        n.write_config(TEMPLATE, &v);
        let (code, body) = n.reload().await;
        assert_eq!(code, 200, "{body}");
    }
    // The failed validation is reported on every node (the leader replicates its status),
    // with its back-off; then validations reach a node that is not the leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    let error = loop {
        let s = validated.status().await;
        if let Some(e) = s["acme_orders"]["shop.edge.test"]["last_error"].as_str() {
            assert_eq!(s["acme_orders"]["shop.edge.test"]["next_by"], "back-off");
            break e.to_string();
        }
        assert!(Instant::now() < deadline, "no failed order reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(error.contains("validation"), "{error}");
    *target.lock().unwrap() = validated.addr("http");
    for (id, n) in &nodes {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !serves(n, "shop.edge.test", &issuer_root).await {
            assert!(
                Instant::now() < deadline,
                "{id} does not serve pebble's certificate\n{}",
                n.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (_, status, body) =
            harness::tls_get(n.addr("https"), "shop.edge.test", &issuer_root, false, "/").await;
        assert_eq!(status, 200);
        assert!(body.starts_with("shop GET /"), "{body}");
        // Kept on disk for a cold start, the key readable by the owner only.
        let key = n.dir.path().join("data/acme/shop.edge.test.key");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
    eprintln!(
        "every node served pebble's certificate {:?} after ACME was configured",
        start.elapsed()
    );
    let count = |what: &str| -> usize {
        nodes
            .iter()
            .map(|(_, n)| n.log().matches(what).count())
            .sum()
    };
    assert_eq!(
        (
            count("ACME order starts"),
            count("ACME order failed; the current certificate stays")
        ),
        (2, 1),
        "one failed order, then one that issued"
    );
    // Every node holds it, as any node's `meshctl certs` shows.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out, _) = harness::run(
            env!("CARGO_BIN_EXE_meshctl"),
            &["--addr", &validated.admin(), "certs"],
        );
        let row = out
            .lines()
            .find(|l| l.trim_start().starts_with("shop.edge.test"))
            .unwrap_or_default()
            .to_string();
        if row.contains("3/3 a0,a1,a2") {
            assert!(row.contains("Pebble Intermediate"), "{row}");
            break;
        }
        assert!(Instant::now() < deadline, "not held by every node: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let validator_log = std::fs::read_to_string(validated_dir.join("edgemesh.log")).unwrap();
    assert!(
        !validator_log.contains("ACME order starts"),
        "only the leader orders"
    );

    // Restart every node: each serves the certificate from its disk at once, and nobody
    // orders again (the certificate in the cluster state is still valid).
    for (_, n) in &mut nodes {
        n.restart().await;
    }
    for (id, n) in &nodes {
        assert!(
            serves(n, "shop.edge.test", &issuer_root).await,
            "{id} does not serve the certificate right after its restart"
        );
    }
    wait_a_leader(&nodes).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let orders: usize = nodes
        .iter()
        .map(|(_, n)| n.log().matches("ACME order starts").count())
        .sum();
    assert_eq!(orders, 2, "a whole-cluster restart placed a new order");
    let accounts: usize = nodes
        .iter()
        .map(|(_, n)| n.log().matches("ACME account created").count())
        .sum();
    assert_eq!(accounts, 1, "the account is created once and reused");
    assert_eq!(pebble.issued(), 1);

    // A new host; the leader is killed as soon as its order starts. The next leader orders
    // (or resumes the recorded order), every surviving node serves the certificate, and the
    // CA issued it once.
    wait_a_leader(&nodes).await;
    vars[5].1 = "[[routes]]\nhosts = [\"api.edge.test\"]\npool = \"shop\"\n".into();
    for (id, n) in &nodes {
        let mut v = vars.clone();
        v[4].1 = id.clone();
        if id == "a0" {
            v[3].1 = String::new();
        }
        n.write_config(TEMPLATE, &v);
        let (code, body) = n.reload().await;
        assert_eq!(code, 200, "{body}");
    }
    // Whoever leads when the order starts (leadership may have moved since) is killed.
    let ordering = |n: &Node| {
        n.log()
            .lines()
            .any(|l| l.contains("ACME order starts") && l.contains("api.edge.test"))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let i = loop {
        if let Some(i) = nodes.iter().position(|(_, n)| ordering(n)) {
            break i;
        }
        assert!(Instant::now() < deadline, "no order for the new host");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let leader = nodes[i].0.clone();
    let (_, mut dead) = nodes.remove(i);
    dead.child.kill().unwrap();
    let _ = dead.child.wait();
    *target.lock().unwrap() = nodes[0].1.addr("http");
    eprintln!("killed leader {leader} mid-order");
    for (id, n) in &nodes {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !serves(n, "api.edge.test", &issuer_root).await {
            assert!(
                Instant::now() < deadline,
                "{id} never served api.edge.test\n{}",
                n.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let acme_lines = |log: String| {
        log.lines()
            .filter(|l| l.contains("ACME") || l.contains("order") || l.contains("leader"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        pebble.issued(),
        2,
        "api.edge.test issued exactly once\nkilled {leader}:\n{}\n{}",
        acme_lines(dead.log()),
        nodes
            .iter()
            .map(|(id, n)| format!("{id}:\n{}", acme_lines(n.log())))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A TCP forwarder to a switchable target; returns its port.
async fn forwarder(
    to: std::net::SocketAddr,
) -> (u16, std::sync::Arc<std::sync::Mutex<std::net::SocketAddr>>) {
    let target = std::sync::Arc::new(std::sync::Mutex::new(to));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = target.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let to = *t.lock().unwrap();
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    (port, target)
}

pub async fn wait_a_leader(nodes: &[(String, Node)]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (id, n) in nodes {
            if n.status().await["mesh"]["election"]["acting"] == true {
                return id.clone();
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const SINGLE: &str = r#"
[node]
data_dir = "{data}"
admin_addr = "127.0.0.1:{admin}"
watch_config = false
drain_timeout_secs = 1

[[listeners]]
name = "web"
addr = "127.0.0.1:{http}"
kind = "http"

[[listeners]]
name = "websecure"
addr = "127.0.0.1:{https}"
kind = "https"

[[routes]]
hosts = ["renew.edge.test"]
pool = "app"

[pools.app]
endpoints = ["{backend}"]
{acme}
"#;

/// The leaf certificate `node` serves for `host`, if the handshake succeeds.
async fn served_leaf(node: &Node, host: &str, root: &Path) -> Option<Vec<u8>> {
    let tls = harness::tls_connect(node.addr("https"), host, root, &[b"http/1.1"])
        .await
        .ok()?;
    Some(tls.get_ref().1.peer_certificates()?.first()?.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_certificate_is_renewed_once_while_https_traffic_flows() {
    let backend = harness::backend("app").await;
    let mut vars = vec![
        ("backend", backend.addr.to_string()),
        ("acme", String::new()),
    ];
    let node = harness::node(SINGLE, &vars).await;
    let pebble = Pebble::start(node.port("http"), &[]);
    let dir = tempfile::tempdir().unwrap();
    let root = issuer_root(&pebble, dir.path()).await;
    // Renew any certificate older than 8 s: a renewal is due soon after the first issue.
    vars[1].1 = format!(
        "[acme]\ndirectory = \"{}\"\nroot_pem = \"{}\"\npropagation_ms = 100\nrenew_after_secs = 8\n",
        pebble.directory,
        pebble.root.display()
    );
    node.write_config(SINGLE, &vars);
    assert_eq!(node.reload().await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(leaf) = served_leaf(&node, "renew.edge.test", &root).await {
            break leaf;
        }
        assert!(Instant::now() < deadline, "never issued\n{}", node.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // HTTPS requests without pause until the renewed certificate is served.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (addr, root2, s) = (node.addr("https"), root.clone(), stop.clone());
    let load = tokio::spawn(async move {
        let (mut ok, mut failed) = (0usize, 0usize);
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            match harness::tls_connect(addr, "renew.edge.test", &root2, &[b"http/1.1"]).await {
                Ok(_) => {
                    ok += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(e) => {
                    eprintln!("handshake failed: {e}");
                    failed += 1;
                }
            }
        }
        (ok, failed)
    });
    let issued_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let leaf = served_leaf(&node, "renew.edge.test", &root).await.unwrap();
        if leaf != first {
            eprintln!(
                "renewed certificate served {:?} after the first",
                issued_at.elapsed()
            );
            break;
        }
        assert!(Instant::now() < deadline, "never renewed\n{}", node.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    eprintln!("renewal under load: {ok} TLS handshakes, {failed} failed");
    assert!(ok > 50, "{ok}");
    assert_eq!(failed, 0);
    // Back to the normal schedule (2/3 of pebble's multi-year lifetime): nothing is due, so
    // no order follows; every order placed issued exactly one certificate.
    vars[1].1 = vars[1].1.replace("renew_after_secs = 8\n", "");
    node.write_config(SINGLE, &vars);
    assert_eq!(node.reload().await.0, 200);
    // Orders may fail and be retried on a loaded machine; what must hold is that every
    // certificate the CA issued was one this node asked for once, and that no order starts
    // once nothing is due.
    let count = |n: &Node, what: &str| n.log().matches(what).count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&node, "ACME order starts")
        > count(&node, "certificate issued and shared") + count(&node, "ACME order failed")
    {
        assert!(
            Instant::now() < deadline,
            "an order in flight never finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = count(&node, "ACME order starts");
    let placed = count(&node, "certificate issued and shared");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        count(&node, "ACME order starts"),
        started,
        "an order placed while nothing was due"
    );
    assert!(placed >= 2, "{placed}");
    assert_eq!(
        pebble.issued(),
        placed,
        "one certificate per successful order"
    );
    let (code, out, _) = harness::run(
        env!("CARGO_BIN_EXE_meshctl"),
        &["--addr", &node.admin(), "certs"],
    );
    assert_eq!(code, 0);
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("renew.edge.test"))
        .unwrap_or_else(|| panic!("{out}"));
    // Issuer, holders, the last attempt and the next renewal by the lifetime rule.
    assert!(
        row.contains("Pebble Intermediate")
            && row.contains("1/1 local")
            && row.contains("(lifetime)"),
        "{row}"
    );
    let metrics = harness::http_get(&node.admin(), "/metrics")
        .await
        .unwrap()
        .1;
    assert!(
        metrics.contains(&format!(
            "edgemesh_acme_orders_total{{result=\"issued\"}} {placed}"
        )) && metrics.contains(&format!("edgemesh_acme_orders_started_total {started}")),
        "{metrics}"
    );
    let days = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "edgemesh_certificate_days_left{name=\"renew.edge.test\",source=\"acme\"}",
            )
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    let days: i64 = days.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(days > 30, "pebble's certificates last years: {days}");
}
