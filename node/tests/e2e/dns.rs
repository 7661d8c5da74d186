//! DNS pools against a real DNS server: dnsmasq on loopback serving SRV and A records.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{self, Node};

/// dnsmasq answering only the records given, with a 1 s TTL; killed on drop.
struct Dnsmasq {
    child: Child,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dnsmasq {
    fn start(port: u16, records: &[String]) -> Dnsmasq {
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--local-ttl=1",
            "--pid-file=",
            &format!("--port={port}"),
        ])
        .args(records)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .expect("dnsmasq (scripts/test.sh installs dnsmasq-base)");
        std::thread::sleep(Duration::from_millis(300));
        Dnsmasq { child }
    }
}

const TEMPLATE: &str = r#"
[node]
data_dir = "{data}"
admin_addr = "127.0.0.1:{admin}"
watch_config = false
drain_timeout_secs = 1

[dns]
servers = ["127.0.0.1:{dns}"]

[[listeners]]
name = "web"
addr = "127.0.0.1:{http}"
kind = "http"

[[routes]]
hosts = ["web.test"]
pool = "web"
tls = false

[[routes]]
hosts = ["api.test"]
pool = "api"
tls = false

[[routes]]
hosts = ["ghost.test"]
pool = "ghost"
tls = false

[pools.web]
dns = { srv = "_web._tcp.mesh.test" }

[pools.api]
dns = { name = "api.mesh.test", port = {api_port} }

[pools.ghost]
dns = { srv = "_nope._tcp.mesh.test" }
"#;

async fn answered(node: &Node, host: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..12 {
        if let Ok((200, body)) =
            harness::http_request_host(&node.addr("http").to_string(), "GET", "/", Some(host)).await
        {
            seen.insert(
                body.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    seen
}

async fn wait_answered(node: &Node, host: &str, want: &[&str], within: Duration) -> Duration {
    let start = Instant::now();
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    loop {
        let seen = answered(node, host).await;
        if seen == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{host}: answered by {seen:?}, want {want:?}\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn srv(name: &str, target: &str, port: u16) -> String {
    format!("--srv-host={name},{target},{port}")
}

fn a(name: &str, ip: &str) -> String {
    format!("--host-record={name},{ip}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_pools_follow_srv_and_a_records_and_keep_the_last_answer() {
    let (b1, b2, b3, api) = (
        harness::backend("one").await,
        harness::backend("two").await,
        harness::backend("three").await,
        harness::backend("api").await,
    );
    let port = |b: &harness::Backend| b.addr.port();
    let dns_port = harness::free_port();
    let records = |web: &[&harness::Backend]| {
        let mut r: Vec<String> = web
            .iter()
            .enumerate()
            .map(|(i, b)| srv("_web._tcp.mesh.test", &format!("w{i}.mesh.test"), port(b)))
            .collect();
        for i in 0..web.len() {
            r.push(a(&format!("w{i}.mesh.test"), "127.0.0.1"));
        }
        r.push(a("api.mesh.test", "127.0.0.1"));
        r
    };
    let mut server = Dnsmasq::start(dns_port, &records(&[&b1, &b2]));
    let node = harness::node(
        TEMPLATE,
        &[
            ("dns", dns_port.to_string()),
            ("api_port", api.addr.port().to_string()),
        ],
    )
    .await;
    wait_answered(&node, "web.test", &["one", "two"], Duration::from_secs(10)).await;
    wait_answered(&node, "api.test", &["api"], Duration::from_secs(5)).await;
    // A name that does not exist: the pool keeps its (empty) endpoints and says why.
    let (status, _) = harness::http_request_host(
        &node.addr("http").to_string(),
        "GET",
        "/",
        Some("ghost.test"),
    )
    .await
    .unwrap();
    assert_eq!(status, 503);

    // The records change: the pool follows within the 1 s TTL and a re-resolution.
    drop(server);
    server = Dnsmasq::start(dns_port, &records(&[&b2, &b3]));
    let took = wait_answered(
        &node,
        "web.test",
        &["two", "three"],
        Duration::from_secs(10),
    )
    .await;
    eprintln!("SRV change followed in {took:?}");

    // The server dies: lookups fail, the pools keep their last good answer.
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(20);
    let out = loop {
        let (code, out, err) = harness::run(
            env!("CARGO_BIN_EXE_meshctl"),
            &["--addr", &node.admin(), "topology"],
        );
        assert_eq!(code, 0, "{out}{err}");
        let web_line = out
            .lines()
            .find(|l| l.trim_start().starts_with("web "))
            .unwrap_or_default();
        if web_line.contains("failed") && !web_line.contains(" 0 failed") {
            break out;
        }
        assert!(Instant::now() < deadline, "no failed lookup shown:\n{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(out.contains("_nope._tcp.mesh.test"), "{out}");
    assert_eq!(
        answered(&node, "web.test").await,
        ["three", "two"].iter().map(|s| s.to_string()).collect()
    );
    assert_eq!(answered(&node, "api.test").await.len(), 1);
}
