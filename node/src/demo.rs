//! `edgemesh demo`: a working node on loopback with built-in backends, no AWS, no root.
//! Two HTTP backends that say which of them answered, a TCP echo backend, a TLS route with a
//! local-CA certificate, a plain route and a TCP route. The config is written to the data
//! directory, so an operator can edit it and watch the node reload it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::daemon::{Daemon, StartError};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub data_dir: PathBuf,
    pub http_port: u16,
    pub https_port: u16,
    pub tcp_port: u16,
    pub admin_port: u16,
    /// Mesh size: node 1 runs in this process, the others as child processes.
    pub nodes: usize,
    /// Gossip port of node 1; node k uses `gossip_port + 2(k-1)`, its sync port the next one.
    pub gossip_port: u16,
}

impl DemoOptions {
    /// Ports of node `k` (0-based): consecutive per node.
    fn ports(&self, k: u16) -> (u16, u16, u16, u16, u16) {
        (
            self.http_port + k,
            self.https_port + k,
            self.tcp_port + k,
            self.admin_port + k,
            self.gossip_port + 2 * k,
        )
    }
}

/// An HTTP backend that answers every request with its own name and address.
pub async fn http_backend(name: &'static str) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = format!(
                            "hello from {name} ({addr}): {} {}\n",
                            req.method(),
                            req.uri().path()
                        );
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// A TCP backend that echoes what it receives and closes when the client does.
pub async fn echo_backend() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

fn demo_config(o: &DemoOptions, k: u16, web: [SocketAddr; 2], echo: SocketAddr) -> String {
    let (http, https, tcp, admin, gossip) = o.ports(k);
    let seeds = if k == 0 {
        String::new()
    } else {
        format!("\"127.0.0.1:{}\"", o.gossip_port)
    };
    let mesh = if o.nodes > 1 {
        format!(
            r#"
# The mesh: SWIM over UDP, sealed with the cluster key; shortened timings for the demo.
[gossip]
bind = "127.0.0.1:{gossip}"
sync_port = {sync}
node_id = "demo-{id}"
seeds = [{seeds}]
key_file = "cluster.key"
probe_period_ms = 500
probe_rtt_ms = 250
suspect_to_down_ms = 2000
expected_cluster_size = {n}
bootstrap_expect = {n}
"#,
            sync = gossip + 1,
            id = k + 1,
            n = o.nodes,
        )
    } else {
        String::new()
    };
    format!(
        r#"# Written by `edgemesh demo`. Edit it: the node reloads on save.
[node]
data_dir = "{data}"
admin_addr = "127.0.0.1:{admin}"
drain_timeout_secs = 5

[[listeners]]
name = "web"
addr = "127.0.0.1:{http}"
kind = "http"

[[listeners]]
name = "websecure"
addr = "127.0.0.1:{https}"
kind = "https"

[[listeners]]
name = "echo"
addr = "127.0.0.1:{tcp}"
kind = "tcp"
pool = "echo"

# HTTPS with a certificate from the local CA; plain HTTP redirects here.
[[routes]]
hosts = ["demo.localhost"]
pool = "web"

# Any other host, plain HTTP only.
[[routes]]
hosts = ["*"]
pool = "web"
tls = false

# A route whose service has no running task: answers 503 naming it.
[[routes]]
hosts = ["empty.localhost"]
pool = "empty"
tls = false

[pools.web]
endpoints = ["{w0}", "{w1}"]

[pools.echo]
endpoints = ["{echo}"]

[pools.empty]
endpoints = []
{mesh}"#,
        data = o.data_dir.display(),
        w0 = web[0],
        w1 = web[1],
    )
}

pub async fn run(o: DemoOptions) -> Result<(), StartError> {
    // Checked before any config is written: a second demo must not rewrite the files that a
    // running one watches.
    for k in 0..o.nodes as u16 {
        let admin = o.ports(k).3;
        if std::net::TcpListener::bind(("127.0.0.1", admin)).is_err() {
            return Err(anyhow::anyhow!(
                "port {admin} is taken: is another edgemesh demo running? (use --admin-port and the other --*-port flags)"
            )
            .into());
        }
    }
    std::fs::create_dir_all(&o.data_dir)
        .with_context(|| format!("creating {}", o.data_dir.display()))?;
    if o.nodes > 1 {
        let key = o.data_dir.join("cluster.key");
        if !key.exists() {
            let text = format!("{}\n", edgemesh_gossip::ClusterKey::generate().to_base64());
            crate::local_ca::write_file(&key, text.as_bytes(), 0o600)?;
        }
    }
    let web = [
        http_backend("backend-1").await?,
        http_backend("backend-2").await?,
    ];
    let echo = echo_backend().await?;
    let config = |k: u16| {
        let name = if k == 0 {
            "demo.toml".to_string()
        } else {
            format!("demo-{}.toml", k + 1)
        };
        o.data_dir.join(name)
    };
    for k in 0..o.nodes as u16 {
        std::fs::write(config(k), demo_config(&o, k, web, echo))
            .with_context(|| format!("writing {}", config(k).display()))?;
    }
    // Node 1 first: it creates the local CA the others then share.
    let (daemon, admin) = Daemon::start(&config(0)).await?;
    let mut children = Vec::new();
    for k in 1..o.nodes as u16 {
        let log = o.data_dir.join(format!("demo-{}.log", k + 1));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = std::process::Command::new(std::env::current_exe().context("own binary")?)
            .arg("--config")
            .arg(config(k))
            .stdout(out.try_clone().context("log file")?)
            .stderr(out)
            .spawn()
            .context("starting a demo node")?;
        children.push((k, child));
    }
    print_guide(&o, &config(0), &daemon, &children);
    let result = daemon.run(admin).await;
    for (_, child) in &mut children {
        // SIGTERM: they drain and leave the mesh like any node.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    result?;
    Ok(())
}

fn print_guide(
    o: &DemoOptions,
    config: &Path,
    d: &Daemon,
    children: &[(u16, std::process::Child)],
) {
    let ca = o.data_dir.join("ca").join("ca.pem");
    let (h, s, t) = (o.http_port, o.https_port, o.tcp_port);
    println!(
        r#"
edgemesh demo is running (config: {config})

  HTTPS, HTTP/1.1 and HTTP/2, certificate from the local CA:
    curl --cacert {ca} --resolve demo.localhost:{s}:127.0.0.1 https://demo.localhost:{s}/
    curl --http2 --cacert {ca} --resolve demo.localhost:{s}:127.0.0.1 https://demo.localhost:{s}/
  Plain HTTP for that host redirects (308) to HTTPS:
    curl -i --resolve demo.localhost:{h}:127.0.0.1 http://demo.localhost:{h}/
  Round-robin over two backends (run it twice):
    curl http://127.0.0.1:{h}/hello
  A service with no running task:
    curl -i --resolve empty.localhost:{h}:127.0.0.1 http://empty.localhost:{h}/
  Raw TCP (echo):
    echo hello | curl -s --max-time 1 telnet://127.0.0.1:{t}
  What the node knows:
    cargo run -q -p edgemesh-node --bin meshctl -- --addr {admin} status
    curl http://{admin}/metrics

Edit {config} and save: the node reloads it in place. Ctrl-C drains and stops.
"#,
        config = config.display(),
        ca = ca.display(),
        admin = d.admin_addr,
    );
    if children.is_empty() {
        return;
    }
    println!(
        "The mesh: {} nodes on loopback, gossip sealed with {}/cluster.key",
        o.nodes,
        o.data_dir.display()
    );
    for (k, child) in children {
        let (http, https, _, admin, gossip) = o.ports(*k);
        println!(
            "  node demo-{}: pid {}, HTTP {http}, HTTPS {https}, admin 127.0.0.1:{admin}, gossip {gossip}, log {}",
            k + 1,
            child.id(),
            o.data_dir.join(format!("demo-{}.log", k + 1)).display()
        );
    }
    let (_, last) = children.last().expect("not empty");
    println!(
        r#"  Who is in the mesh (and what each node published about itself):
    cargo run -q -p edgemesh-node --bin meshctl -- --addr {admin} members
  The leader (the one that will run ACME and DNS), its term and the voters:
    cargo run -q -p edgemesh-node --bin meshctl -- --addr {admin} leader
  Kill a node without warning and watch the others notice (a few seconds):
    kill -9 {pid}; sleep 4; cargo run -q -p edgemesh-node --bin meshctl -- --addr {admin} members
"#,
        admin = d.admin_addr,
        pid = last.id(),
    );
}
