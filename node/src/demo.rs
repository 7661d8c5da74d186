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

fn demo_config(o: &DemoOptions, web: [SocketAddr; 2], echo: SocketAddr) -> String {
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
"#,
        data = o.data_dir.display(),
        admin = o.admin_port,
        http = o.http_port,
        https = o.https_port,
        tcp = o.tcp_port,
        w0 = web[0],
        w1 = web[1],
    )
}

pub async fn run(o: DemoOptions) -> Result<(), StartError> {
    // Checked before the config is written: a second demo must not rewrite the file that a
    // running one watches.
    if std::net::TcpListener::bind(("127.0.0.1", o.admin_port)).is_err() {
        return Err(anyhow::anyhow!(
            "port {} is taken: is another edgemesh demo running? (use --admin-port and the other --*-port flags)",
            o.admin_port
        )
        .into());
    }
    std::fs::create_dir_all(&o.data_dir)
        .with_context(|| format!("creating {}", o.data_dir.display()))?;
    let web = [
        http_backend("backend-1").await?,
        http_backend("backend-2").await?,
    ];
    let echo = echo_backend().await?;
    let path = o.data_dir.join("demo.toml");
    std::fs::write(&path, demo_config(&o, web, echo))
        .with_context(|| format!("writing {}", path.display()))?;
    let (daemon, admin) = Daemon::start(&path).await?;
    print_guide(&o, &path, &daemon);
    daemon.run(admin).await?;
    Ok(())
}

fn print_guide(o: &DemoOptions, config: &Path, d: &Daemon) {
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
}
