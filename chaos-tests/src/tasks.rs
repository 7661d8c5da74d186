//! Backends for ECS tasks: a follower reads the emulator's running tasks and, in the lab
//! host that plays the task subnet, adds each task's address and serves it (HTTP answering
//! the task id, or a TCP echo). A task that leaves RUNNING keeps serving for `grace` (the
//! application's shutdown after SIGTERM within the task's stopTimeout), then stops accepting
//! and finishes its connections, as a well-behaved service does.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use crate::aws::Aws;
use crate::NsRuntime;

/// What a task serves.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// HTTP/1.1: every request answered 200 with the task id.
    Http,
    /// Every connection echoed back.
    Echo,
}

/// Serves `kind` on `addr` until the returned sender fires (or is dropped), then stops
/// accepting and lets open connections finish.
pub async fn serve(id: String, addr: SocketAddr, kind: Kind) -> oneshot::Sender<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("task {id} on {addr}: {e}"));
    let (tx, mut rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let body = Bytes::from(format!("{id}\n"));
        loop {
            let (conn, _) = tokio::select! {
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                _ = &mut rx => break,
            };
            match kind {
                Kind::Http => {
                    let body = body.clone();
                    let svc = service_fn(move |_req| {
                        let body = body.clone();
                        async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(body))) }
                    });
                    let c = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(conn), svc);
                    let c = graceful.watch(c);
                    tokio::spawn(c);
                }
                Kind::Echo => {
                    tokio::spawn(async move {
                        let (mut r, mut w) = conn.into_split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                }
            }
        }
        drop(listener);
        // Open keep-alive connections are closed once idle; requests in flight finish.
        let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    });
    tx
}

/// One ECS service to follow: tasks of `service` serve `kind` on `port` of their address.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub container: String,
    pub port: u16,
    pub kind: Kind,
}

pub struct Follower {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    /// Follows `services` every 200 ms; task addresses are added to namespace `ns` (device
    /// `iface`). Runs on `rt`, which must be that namespace's runtime.
    pub fn start(
        rt: &NsRuntime,
        aws: Arc<Aws>,
        ns: String,
        iface: String,
        services: Vec<Service>,
        grace: Duration,
    ) -> Follower {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let task = rt.spawn(async move {
            let mut live: BTreeMap<String, oneshot::Sender<()>> = BTreeMap::new();
            let mut leaving: Vec<(Instant, oneshot::Sender<()>)> = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                let mut running = BTreeMap::new();
                for s in &services {
                    for (id, addr) in aws.endpoints(&s.name, &s.container, s.port).await {
                        running.insert(id, (addr, s.kind));
                    }
                }
                for (id, (addr, kind)) in &running {
                    if !live.contains_key(id) {
                        let cidr = format!("{}/16", addr.ip());
                        let _ = tokio::process::Command::new("ip")
                            .args(["-n", &ns, "addr", "add", &cidr, "dev", &iface])
                            .output()
                            .await;
                        live.insert(id.clone(), serve(id.clone(), *addr, *kind).await);
                    }
                }
                let gone: Vec<String> = live
                    .keys()
                    .filter(|id| !running.contains_key(*id))
                    .cloned()
                    .collect();
                for id in gone {
                    leaving.push((Instant::now() + grace, live.remove(&id).unwrap()));
                }
                leaving.retain(|(at, _)| *at > Instant::now());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Follower { stop, task }
    }

    pub fn stop(self, rt: &NsRuntime) {
        self.stop.store(true, Ordering::Relaxed);
        let task = self.task;
        rt.run(async move {
            let _ = task.await;
        });
    }
}
