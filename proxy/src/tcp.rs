//! Raw TCP relaying: one client connection, one upstream connection, bytes moved both ways
//! (inside the kernel on Linux, `splice.rs`) with half-close preserved (a FIN from one side is
//! passed on while the other direction keeps flowing). There is no idle timeout unless the
//! listener configures one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::access_log::{Record, TcpRecord};
use crate::pool::now_ms;
use crate::proxy_protocol;
use crate::server::{tune, Shared};

pub struct TcpConn {
    pub listener: Arc<str>,
    pub client: TcpStream,
    /// The client's address (from PROXY protocol when the listener accepts it).
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub idle_timeout: Option<Duration>,
}

pub async fn serve(shared: Arc<Shared>, conn: TcpConn) {
    let log = shared.access_log.load_full().filter(|l| l.sampled());
    let (time, started) = (SystemTime::now(), Instant::now());
    let (listener, peer) = (conn.listener.clone(), conn.peer);
    let session = relay(&shared, conn).await;
    if let Some(log) = log {
        log.write(Record::Tcp(&TcpRecord {
            time,
            client: peer,
            listener,
            upstream: session.upstream,
            bytes_in: session.bytes_in,
            bytes_out: session.bytes_out,
            total_time: started.elapsed(),
            error: session.error,
        }));
    }
}

/// How a TCP session went, for the access log.
#[derive(Default)]
struct Session {
    upstream: Option<SocketAddr>,
    bytes_in: u64,
    bytes_out: u64,
    error: Option<String>,
}

impl Session {
    fn failed(error: &str) -> Session {
        Session {
            error: Some(error.into()),
            ..Session::default()
        }
    }
}

async fn relay(shared: &Shared, conn: TcpConn) -> Session {
    let TcpConn {
        listener,
        client,
        peer,
        local,
        idle_timeout,
    } = conn;
    let (pool, send_pp) = {
        let table = shared.table.load();
        let Some(route) = table.tcp.get(&*listener) else {
            warn!(%listener, %peer, "no TCP route for listener; closing");
            return Session::failed("no route");
        };
        (
            table.pools.get(route.pool.as_str()).cloned(),
            route.send_proxy_protocol,
        )
    };
    let Some(pool) = pool.filter(|p| !p.is_empty()) else {
        warn!(%listener, %peer, "no running tasks for the listener's service; closing");
        return Session::failed("no running tasks");
    };

    let mut exclude = None;
    let mut upstream = None;
    for _ in 0..2 {
        let Some(ep) = pool.pick(now_ms(), exclude) else {
            break;
        };
        match tokio::time::timeout(shared.settings.connect_timeout, TcpStream::connect(ep.addr))
            .await
        {
            Ok(Ok(s)) => {
                ep.mark_success();
                upstream = Some((s, ep));
                break;
            }
            Ok(Err(e)) => {
                warn!(pool = %pool.name, endpoint = %ep.addr, error = %e, "upstream connect failed; endpoint ejected")
            }
            Err(_) => {
                warn!(pool = %pool.name, endpoint = %ep.addr, "upstream connect timed out; endpoint ejected")
            }
        }
        ep.eject(now_ms());
        pool.metrics.ejections.inc();
        pool.metrics.errors.inc();
        exclude = Some(ep.addr);
    }
    let Some((mut up, ep)) = upstream else {
        return Session::failed("upstream unreachable");
    };
    let mut session = Session {
        upstream: Some(ep.addr),
        ..Session::default()
    };
    let _in_flight = ep.begin();
    tune(socket2::SockRef::from(&up));
    if send_pp {
        if let Err(e) = up.write_all(&proxy_protocol::encode_v2(peer, local)).await {
            warn!(endpoint = %ep.addr, error = %e, "writing PROXY header failed");
            session.error = Some(format!("writing PROXY header: {e}"));
            return session;
        }
    }

    let activity = AtomicU64::new(now_ms());
    let (to_up, to_client) = (AtomicU64::new(0), AtomicU64::new(0));
    let copy = copy_both_ways(shared, client, up, [&to_up, &to_client], &activity);
    let result = match idle_timeout {
        None => Some(copy.await),
        Some(idle) => {
            tokio::select! {
                r = copy => Some(r),
                _ = idle_expired(&activity, idle) => None,
            }
        }
    };
    let (to_up, to_client) = (to_up.into_inner(), to_client.into_inner());
    match result {
        None => {
            debug!(%listener, %peer, "TCP stream idle; closing");
            session.error = Some("idle timeout".into());
        }
        Some(Ok(())) => {
            debug!(%listener, %peer, endpoint = %ep.addr, to_up, to_client, "TCP stream closed")
        }
        Some(Err(e)) => {
            debug!(%listener, %peer, endpoint = %ep.addr, error = %e, "TCP stream ended");
            session.error = Some(e.to_string());
        }
    }
    session.bytes_in = to_up;
    session.bytes_out = to_client;
    session
}

/// Relays until both directions ended; `totals` are the bytes read from the client and from
/// the upstream, kept outside the future so an idle timeout that drops it loses no count.
async fn copy_both_ways(
    shared: &Shared,
    client: TcpStream,
    up: TcpStream,
    totals: [&AtomicU64; 2],
    activity: &AtomicU64,
) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use crate::splice::{relay, Flow};
        let up_flow = Flow {
            counter: &shared.bytes_up,
            total: totals[0],
        };
        let down_flow = Flow {
            counter: &shared.bytes_down,
            total: totals[1],
        };
        relay(&client, &up, up_flow, down_flow, activity).await
    }
    #[cfg(not(target_os = "linux"))]
    copy_through_buffers(shared, client, up, totals, activity).await
}

/// Elsewhere than Linux: a read and a write of every byte through a 64 KiB buffer each way.
#[cfg_attr(target_os = "linux", allow(dead_code))]
async fn copy_through_buffers(
    shared: &Shared,
    client: TcpStream,
    up: TcpStream,
    totals: [&AtomicU64; 2],
    activity: &AtomicU64,
) -> std::io::Result<()> {
    use crate::body::Counted;
    let mut c = Counted::new(client, shared.bytes_up.clone(), activity, totals[0]);
    let mut u = Counted::new(up, shared.bytes_down.clone(), activity, totals[1]);
    tokio::io::copy_bidirectional_with_sizes(&mut c, &mut u, 64 * 1024, 64 * 1024)
        .await
        .map(|_| ())
}

async fn idle_expired(activity: &AtomicU64, idle: Duration) {
    let idle_ms = idle.as_millis() as u64;
    loop {
        let last = activity.load(Ordering::Relaxed);
        let deadline = last + idle_ms;
        let now = now_ms();
        if now >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(deadline - now)).await;
    }
}
