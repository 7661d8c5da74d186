//! HTTP data path: TLS (h1, h2), routing, forwarding headers, redirects, failures, WebSocket,
//! streaming.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::harness::{self, http_full, http_request_host, raw_exchange, run, tls_connect, tls_get};
use crate::{setup, BASE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_http1_and_http2_with_local_ca() {
    let s = setup(BASE).await;
    let https = s.node.addr("https");
    let ca = s.node.ca_pem();
    let (v, code, body) = tls_get(https, "app.test", &ca, false, "/one").await;
    assert_eq!((v, code), (hyper::Version::HTTP_11, 200));
    assert!(body.starts_with("a GET /one\n"), "{body}");
    assert!(body.contains("x-forwarded-proto: https"), "{body}");
    let (v, code, body) = tls_get(https, "app.test", &ca, true, "/b/two").await;
    assert_eq!((v, code), (hyper::Version::HTTP_2, 200));
    assert!(body.starts_with("b GET /b/two\n"), "{body}");
    // HTTP/2 carries the host in :authority; the HTTP/1.1 upstream still gets a Host header,
    // and X-Forwarded-Host from it.
    assert!(body.contains("\nhost: app.test\n"), "{body}");
    assert!(body.contains("\nx-forwarded-host: app.test\n"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http2_through_tls() {
    let s = setup(BASE).await;
    let port = s.node.port("https");
    let (code, out, err) = run(
        "curl",
        &[
            "-sS",
            "-i",
            "--http2",
            "--cacert",
            s.node.ca_pem().to_str().unwrap(),
            "--resolve",
            &format!("app.test:{port}:127.0.0.1"),
            &format!("https://app.test:{port}/curl"),
        ],
    );
    assert_eq!(code, 0, "curl failed: {err}");
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert!(out.contains("a GET /curl"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sni_fails_the_handshake() {
    let s = setup(BASE).await;
    let r = tls_connect(
        s.node.addr("https"),
        "nobody.test",
        &s.node.ca_pem(),
        &[b"h2"],
    )
    .await;
    assert!(
        r.is_err(),
        "handshake for a name without certificate succeeded"
    );
    // The listener is fine afterwards.
    let (_, code, _) = tls_get(
        s.node.addr("https"),
        "app.test",
        &s.node.ca_pem(),
        true,
        "/",
    )
    .await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_path_and_wildcard_routing() {
    let s = setup(BASE).await;
    let http = s.http();
    let get = |host: &'static str, path: &'static str| {
        let http = http.clone();
        async move {
            http_request_host(&http, "GET", path, Some(host))
                .await
                .unwrap()
        }
    };
    assert!(get("plain.test", "/x").await.1.starts_with("a GET /x"));
    assert!(get("x.wild.test", "/y").await.1.starts_with("b GET /y"));
    assert!(get("deep.x.wild.test", "/z")
        .await
        .1
        .starts_with("b GET /z"));
    assert!(get("PLAIN.test:80", "/case")
        .await
        .1
        .starts_with("a GET /case"));
    let (code, body) = get("unknown.test", "/").await;
    assert_eq!(code, 404);
    assert_eq!(body, "no route for host unknown.test\n");
    // wild.test itself is not covered by *.wild.test.
    assert_eq!(get("wild.test", "/").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_redirects_to_https_when_the_host_has_tls() {
    let s = setup(BASE).await;
    let (parts, _) = http_full(&s.http(), "GET", "/p/q?r=1", Some("app.test"), &[])
        .await
        .unwrap();
    assert_eq!(parts.status, 308);
    let port = s.node.port("https");
    assert_eq!(
        parts.headers["location"],
        format!("https://app.test:{port}/p/q?r=1").as_str()
    );
    // tls = false on the route: served over plain HTTP.
    let (code, _) = http_request_host(&s.http(), "GET", "/", Some("plain.test"))
        .await
        .unwrap();
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_and_hop_by_hop_headers() {
    let s = setup(BASE).await;
    let (parts, body) = http_full(
        &s.http(),
        "GET",
        "/h",
        Some("plain.test"),
        &[
            ("connection", "x-drop"),
            ("x-drop", "1"),
            ("proxy-connection", "keep-alive"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-kept", "yes"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(parts.status, 200);
    assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");
    assert!(!body.contains("6.6.6.6"), "{body}");
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    assert!(body.contains("x-forwarded-host: plain.test\n"), "{body}");
    assert!(body.contains("host: plain.test\n"), "{body}");
    assert!(body.contains("x-kept: yes\n"), "{body}");
    assert!(!body.contains("x-drop"), "{body}");
    assert!(!body.contains("proxy-connection"), "{body}");
    // The backend's own hop-by-hop response headers do not reach the client.
    assert_eq!(parts.headers["x-backend"], "a");
    assert!(!parts.headers.contains_key("keep-alive"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_pool_answers_503_naming_the_service() {
    let s = setup(BASE).await;
    let (code, body) = http_request_host(&s.http(), "GET", "/", Some("empty.test"))
        .await
        .unwrap();
    assert_eq!(code, 503);
    assert_eq!(body, "no running tasks for service empty\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_502_and_ejected_and_retried_elsewhere() {
    let s = setup(BASE).await;
    let (code, body) = http_request_host(&s.http(), "GET", "/", Some("dead.test"))
        .await
        .unwrap();
    assert_eq!(code, 502);
    assert_eq!(body, "upstream of service dead unreachable\n");
    let status = s.node.status().await;
    let dead = status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "dead")
        .unwrap();
    let ep = &dead["endpoints"][0];
    assert_eq!(ep["healthy"], false, "{ep}");
    assert!(ep["ejections"].as_u64().unwrap() >= 1, "{ep}");
    assert!(ep["ejected_for_ms"].as_u64().unwrap() > 0, "{ep}");

    // A pool with one refusing and one live endpoint: every idempotent request succeeds.
    for i in 0..10 {
        let (code, body) = http_request_host(&s.http(), "GET", &format!("/{i}"), Some("half.test"))
            .await
            .unwrap();
        assert_eq!(code, 200, "request {i}: {body}");
    }
    let (_, metrics) = harness::http_get(&s.node.admin(), "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("edgemesh_endpoint_ejections_total{pool=\"dead\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("edgemesh_http_requests_total{pool=\"half\",class=\"2xx\"} 10"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let s = setup(BASE).await;
    let tcp = TcpStream::connect(s.node.addr("http")).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://plain.test/chat", tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        let msg = format!("message {i}");
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg.clone()))
            .await
            .unwrap();
        let got = ws.next().await.unwrap().unwrap();
        assert_eq!(got.into_text().unwrap().as_str(), msg);
    }
    // The upgraded stream stays a live connection, so a drain waits for it.
    assert_eq!(s.node.status().await["active_connections"], 1);
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_gets_400_and_the_server_stays_up() {
    let s = setup(BASE).await;
    let out = raw_exchange(
        s.node.addr("http"),
        b"GARBAGE\x01 / HTTP/9.9\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    let out = raw_exchange(
        s.node.addr("http"),
        b"GET / HTTP/1.1\r\nHost: plain.test\r\nbad header line\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    // No Host at all in HTTP/1.0: rejected by the router.
    let out = raw_exchange(
        s.node.addr("http"),
        b"GET / HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.0 400"), "{out:?}");
    let (code, _) = http_request_host(&s.http(), "GET", "/", Some("plain.test"))
        .await
        .unwrap();
    assert_eq!(code, 200);
    let (_, metrics) = harness::http_get(&s.node.admin(), "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("edgemesh_malformed_requests_total 2"),
        "{metrics}"
    );
}

const GIB: u64 = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_and_download_stream_with_bounded_memory() {
    let s = setup(BASE).await;
    let mut expected = harness::Fnv::new();
    for c in harness::pattern_chunks(GIB) {
        expected.write(&c);
    }

    // Upload: the backend counts and hashes what arrives.
    let stream = TcpStream::connect(s.node.addr("http")).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let frames = harness::pattern_chunks(GIB).map(|c| Ok::<_, std::io::Error>(Frame::data(c)));
    let body = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)));
    let req = hyper::Request::post("/upload")
        .header("host", "plain.test")
        .body(body)
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&text),
        format!("bytes={GIB} fnv={:x}", expected.0)
    );

    // Download: we count and hash what arrives. The connection may still be finishing the
    // upload's exchange: wait until it takes the next request.
    send.ready().await.unwrap();
    let req = hyper::Request::get(format!("/download?{GIB}"))
        .header("host", "plain.test")
        .body(harness::pattern_body(0))
        .unwrap();
    let mut resp = send.send_request(req).await.unwrap().into_body();
    let (mut n, mut got) = (0u64, harness::Fnv::new());
    while let Some(f) = resp.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            n += d.len() as u64;
            got.write(&d);
        }
    }
    assert_eq!((n, got.0), (GIB, expected.0));

    // 2 GiB went through; the proxy never held more than a few buffers of it.
    let peak = s.node.peak_rss_kib();
    eprintln!("edgemesh peak RSS after 2 GiB streamed: {peak} KiB");
    assert!(peak < 96 * 1024, "peak RSS {peak} KiB");
}
