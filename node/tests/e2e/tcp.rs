//! Raw TCP data path: long-lived streams across hot swaps, half-close, PROXY protocol v2.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{self, echo_backend, Fnv};
use crate::{setup, BASE};

/// A checksummed stream keeps flowing while the pool and routes are replaced 50 times (its
/// endpoint removed from the pool half of the time); new connections follow each swap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_stream_survives_50_pool_and_route_swaps() {
    let s = setup(BASE).await;
    let (other, other_conns) = echo_backend().await;
    let first = s.vars.iter().find(|(k, _)| *k == "echo").unwrap().1.clone();

    let mut stream = TcpStream::connect(s.node.addr("tcp")).await.unwrap();
    // One echo before the swaps: the proxy has accepted the stream and connected it to the
    // first endpoint (a connect returns once the kernel has queued it, which can be after
    // the first swap; the stream then went to the other endpoint and counted there).
    stream.write_all(b"ready").await.unwrap();
    let mut ready = [0u8; 5];
    stream.read_exact(&mut ready).await.unwrap();
    assert_eq!(&ready, b"ready");
    assert_eq!(other_conns.load(Ordering::Relaxed), 0);
    let (mut r, mut w) = stream.into_split();
    const TOTAL: u64 = 64 << 20;
    let writer = tokio::spawn(async move {
        let mut h = Fnv::new();
        for c in harness::pattern_chunks(TOTAL) {
            h.write(&c);
            w.write_all(&c).await.unwrap();
            // Spread the stream over the whole swap sequence.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Half-close: our FIN goes through, the echo of the tail still comes back.
        w.shutdown().await.unwrap();
        h.0
    });
    let reader = tokio::spawn(async move {
        let (mut n, mut h, mut buf) = (0u64, Fnv::new(), vec![0u8; 64 * 1024]);
        loop {
            let k = r.read(&mut buf).await.unwrap();
            if k == 0 {
                break;
            }
            n += k as u64;
            h.write(&buf[..k]);
        }
        (n, h.0)
    });

    for i in 0..50 {
        let to_other = i % 2 == 0;
        let endpoint = if to_other {
            other.to_string()
        } else {
            first.clone()
        };
        let mut vars = s.vars.clone();
        vars.retain(|(k, _)| *k != "echo");
        vars.push(("echo", endpoint));
        // Routes change too: every other swap adds a route.
        let extra = if i % 4 < 2 {
            "\n[[routes]]\nhosts = [\"extra.test\"]\npool = \"a\"\ntls = false\n"
        } else {
            ""
        };
        s.node.write_config(&format!("{BASE}{extra}"), &vars);
        let (code, body) = s.node.reload().await;
        assert_eq!(code, 200, "swap {i}: {body}");
        // A new connection goes to the pool's current endpoint.
        let before = other_conns.load(Ordering::Relaxed);
        let mut probe = TcpStream::connect(s.node.addr("tcp")).await.unwrap();
        probe.write_all(b"probe").await.unwrap();
        let mut got = [0u8; 5];
        probe.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"probe");
        drop(probe);
        let after = other_conns.load(Ordering::Relaxed);
        assert_eq!(after - before, to_other as usize, "swap {i}");
    }

    let sent = writer.await.unwrap();
    let (n, received) = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("stream did not finish")
        .unwrap();
    assert_eq!(n, TOTAL);
    assert_eq!(received, sent);
    let status = s.node.status().await;
    assert_eq!(status["config"]["generation"], 51);
}

/// A backend that expects a PROXY v2 header and answers with the client address it carries.
async fn proxy_protocol_backend() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 16];
                s.read_exact(&mut head).await.unwrap();
                let len = u16::from_be_bytes([head[14], head[15]]) as usize;
                let mut rest = vec![0u8; len];
                s.read_exact(&mut rest).await.unwrap();
                let all = [&head[..], &rest[..]].concat();
                let h = ppp::v2::Header::try_from(&all[..]).unwrap();
                let src = match h.addresses {
                    ppp::v2::Addresses::IPv4(a) => {
                        format!("{}:{}", a.source_address, a.source_port)
                    }
                    other => format!("{other:?}"),
                };
                s.write_all(src.as_bytes()).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v2_in_and_out() {
    let pp = proxy_protocol_backend().await;
    let template = format!(
        "{BASE}\n[[listeners]]\nname = \"nlb\"\naddr = \"127.0.0.1:{{tcp2}}\"\nkind = \"tcp\"\npool = \"pp\"\naccept_proxy_protocol = true\nsend_proxy_protocol = true\n\n[pools.pp]\nendpoints = [\"{pp}\"]\n"
    );
    let s = setup(&template).await;
    let client: std::net::SocketAddr = "203.0.113.9:4242".parse().unwrap();
    let header = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (client, s.node.addr("tcp2")),
    )
    .build()
    .unwrap();
    let out = harness::raw_exchange(s.node.addr("tcp2"), &header, Duration::from_secs(5)).await;
    assert_eq!(out, "203.0.113.9:4242");

    // Without the header the listener refuses to guess: the connection is closed unanswered.
    let out = harness::raw_exchange(
        s.node.addr("tcp2"),
        b"SSH-2.0-client-without-proxy-header\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(out, "");
    // Nothing of it reached the backend's side either, and the listener still works.
    let out = harness::raw_exchange(s.node.addr("tcp2"), &header, Duration::from_secs(5)).await;
    assert_eq!(out, "203.0.113.9:4242");
}
