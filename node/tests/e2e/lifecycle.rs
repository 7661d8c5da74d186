//! The process: config errors at start and on reload, hot reload by file change, graceful
//! shutdown, the admin API and meshctl.

use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{self, http_request_host, run};
use crate::{setup, BASE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_at_start_exits_2_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[node]\ndata_dir = \"/tmp\"\n\n[[routes]]\nhosts = [\"a.test\"]\npool = \"missing\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edgemesh"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "{}:6: routes[0].pool: pool \"missing\" is not defined under [pools]",
        path.display()
    );
    assert!(err.contains(&expected), "{err}");

    let (code, _, err) = run(
        env!("CARGO_BIN_EXE_edgemesh"),
        &["check-config", path.to_str().unwrap()],
    );
    assert_eq!(code, 2);
    assert!(err.contains(&expected), "{err}");

    std::fs::write(&path, "[node]\nadmin_addr = 12\n").unwrap();
    let (code, _, err) = run(
        env!("CARGO_BIN_EXE_edgemesh"),
        &["check-config", path.to_str().unwrap()],
    );
    assert_eq!(code, 2);
    assert!(err.contains(":2: node.admin_addr: invalid type"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_accepts_the_annotated_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/edgemesh.toml");
    let check = |key: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgemesh"));
        cmd.args(["check-config", example]);
        match key {
            Some(k) => cmd.env("EDGEMESH_CLUSTER_KEY", k),
            None => cmd.env_remove("EDGEMESH_CLUSTER_KEY"),
        };
        cmd.output().unwrap()
    };
    // The example's key file does not exist here; the environment's key wins over it.
    let key = edgemesh_gossip::ClusterKey::generate().to_base64();
    let out = check(Some(&key));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
    let out = check(None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("gossip.key_file: cannot read /etc/edgemesh/cluster.key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn wait_for(what: &str, f: impl AsyncFnMut() -> bool) {
    crate::harness::wait_for(Duration::from_secs(10), what, f).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reload_keeps_serving_then_a_good_file_change_applies() {
    let template = BASE.replace("watch_config = false", "watch_config = true");
    let s = setup(&template).await;
    let ok = |s: &crate::Setup| {
        let http = s.http();
        async move {
            http_request_host(&http, "GET", "/", Some("plain.test"))
                .await
                .map(|r| r.0)
        }
    };
    assert_eq!(ok(&s).await, Ok(200));

    // A syntax error, sent with SIGHUP.
    std::fs::write(&s.node.config, "[[routes]\nhosts = ").unwrap();
    s.node.signal("HUP");
    wait_for("rejected reload", async || {
        s.node.status().await["config"]["last_reload"]["ok"] == false
    })
    .await;
    let status = s.node.status().await;
    let err = status["config"]["last_reload"]["error"].as_str().unwrap();
    assert!(err.contains("edgemesh.toml:1"), "{err}");
    assert_eq!(status["config"]["generation"], 1);
    assert_eq!(ok(&s).await, Ok(200));
    assert_eq!(status["routes"].as_array().unwrap().len(), 7);

    // Valid TOML, invalid config: also rejected, also without effect.
    s.node.write_config(
        &template.replace("pool = \"empty\"", "pool = \"nope\""),
        &s.vars,
    );
    let (code, body) = s.node.reload().await;
    assert_eq!(code, 422);
    assert!(body.contains("routes[3].pool"), "{body}");
    assert_eq!(ok(&s).await, Ok(200));

    // A listener that cannot bind is rejected whole, too.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let with_busy = format!(
        "{template}\n[[listeners]]\nname = \"busy\"\naddr = \"127.0.0.1:{port}\"\nkind = \"http\"\n"
    );
    s.node.write_config(&with_busy, &s.vars);
    let (code, body) = s.node.reload().await;
    assert_eq!(code, 422);
    assert!(body.contains("listener busy on 127.0.0.1:"), "{body}");
    assert_eq!(ok(&s).await, Ok(200));

    // A good change is picked up from the file alone.
    let extra =
        format!("{template}\n[[routes]]\nhosts = [\"new.test\"]\npool = \"b\"\ntls = false\n");
    s.node.write_config(&extra, &s.vars);
    wait_for("file change applied", async || {
        http_request_host(&s.http(), "GET", "/", Some("new.test"))
            .await
            .is_ok_and(|r| r.0 == 200 && r.1.starts_with("b GET"))
    })
    .await;
    let status = s.node.status().await;
    assert_eq!(status["config"]["generation"], 2);
    assert_eq!(status["config"]["last_reload"]["trigger"], "file change");
    let (_, metrics) = harness::http_get(&s.node.admin(), "/metrics")
        .await
        .unwrap();
    // Three rejected files; the watcher may also have rejected one before our explicit reload.
    let failed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("edgemesh_config_reloads_total{result=\"failed\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((3..=6).contains(&failed), "{metrics}");
    assert!(
        metrics.contains("edgemesh_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_request_then_exits() {
    let mut s = setup(BASE).await;
    // The container health check: the binary asks the admin API, found from the
    // configuration or given.
    let edgemesh = env!("CARGO_BIN_EXE_edgemesh");
    let config = s.node.config.to_str().unwrap().to_string();
    let admin = s.node.admin();
    for args in [
        vec!["--config", config.as_str(), "health"],
        vec!["health", "--addr", admin.as_str()],
    ] {
        let (code, _, err) = run(edgemesh, &args);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    // A kept-alive client connection, idle after one exchange.
    let mut idle = tokio::net::TcpStream::connect(s.node.addr("http"))
        .await
        .unwrap();
    idle.write_all(b"GET /idle HTTP/1.1\r\nHost: plain.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("a GET /idle") {
        let mut buf = [0u8; 4096];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    let http = s.http();
    let slow =
        tokio::spawn(
            async move { http_request_host(&http, "GET", "/slow", Some("plain.test")).await },
        );
    // Let the request reach the backend.
    wait_for("request in flight", async || {
        s.a.requests.load(std::sync::atomic::Ordering::Relaxed) == 2
    })
    .await;
    s.node.signal("TERM");
    // New connections are refused while the slow request is still running.
    wait_for("listener closed", async || {
        tokio::net::TcpStream::connect(s.node.addr("http"))
            .await
            .is_err()
    })
    .await;
    // The idle connection is closed at once (no request of its own is cut), while the slow
    // request still runs.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(1), idle.read_to_end(&mut rest))
        .await
        .expect("the idle kept-alive connection is closed when the drain starts")
        .unwrap();
    assert!(!slow.is_finished());
    let (code, body) = slow.await.unwrap().unwrap();
    assert_eq!((code, body.as_str()), (200, "a slow done"));
    let status = s.node.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let log = s.node.log();
    assert!(
        log.contains("draining") && log.contains("drained; exiting"),
        "{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "a log written to a file carries no colour codes: {log:?}"
    );
    let (code, _, err) = run(edgemesh, &["health", "--addr", admin.as_str()]);
    assert_eq!(code, 1, "nothing answers: {err}");
    assert!(err.contains(&format!("http://{admin}/healthz")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshctl_status_json_matches_config_and_tables_print() {
    let s = setup(BASE).await;
    let meshctl = env!("CARGO_BIN_EXE_meshctl");
    let addr = s.node.admin();
    let (code, out, err) = run(meshctl, &["--addr", &addr, "status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut pools: Vec<&str> = v["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    pools.sort();
    assert_eq!(pools, ["a", "b", "dead", "echo", "empty", "half"]);
    let listeners: Vec<(&str, String)> = v["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap(),
                l["bound"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(listeners.contains(&("web", s.node.addr("http").to_string())));
    assert!(listeners.contains(&("websecure", s.node.addr("https").to_string())));
    assert_eq!(v["routes"][1]["path_prefix"], "/b/");
    assert_eq!(v["tcp_routes"][0]["pool"], "echo");
    let a = &v["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "a")
        .unwrap()["endpoints"][0];
    assert_eq!(a["addr"], s.a.addr.to_string());
    let cert = &v["certificates"][0];
    assert_eq!(cert["names"][0], "app.test");
    assert!(
        (88..=90).contains(&cert["days_left"].as_i64().unwrap()),
        "{cert}"
    );

    let (code, out, _) = run(meshctl, &["--addr", &addr, "status"]);
    assert_eq!(code, 0);
    for needle in [
        "LISTENERS",
        "POOLS",
        "(no running tasks)",
        &s.b.addr.to_string(),
        "app.test",
    ] {
        assert!(out.contains(needle), "missing {needle}:\n{out}");
    }

    let unused = format!("127.0.0.1:{}", harness::free_port());
    let (code, _, err) = run(meshctl, &["--addr", &unused, "status"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("cannot reach the edgemesh admin API at {unused}")),
        "{err}"
    );
}

#[test]
fn meshctl_keygen_prints_a_fresh_32_byte_key() {
    let meshctl = env!("CARGO_BIN_EXE_meshctl");
    let (code, first, _) = run(meshctl, &["keygen"]);
    assert_eq!(code, 0);
    let key = edgemesh_gossip::ClusterKey::from_base64(&first).unwrap();
    assert_eq!(key.as_bytes().len(), 32);
    let (_, second, _) = run(meshctl, &["keygen"]);
    assert_ne!(first, second);
}
