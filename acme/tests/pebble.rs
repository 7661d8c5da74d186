//! Issuance against Let's Encrypt's test CA: `pebble` and `pebble-challtestsrv` (Debian
//! package `pebble`) on loopback. The challenge server's DNS answers every name with
//! 127.0.0.1, so pebble's HTTP-01 validation reaches the challenge server this test runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use edgemesh_acme::testing::Pebble;
use edgemesh_acme::{issue, open_account, resume, ChallengeStore};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// HTTP-01 answers served from memory on `addr`, as every edgemesh node serves them.
#[derive(Clone, Default)]
struct Tokens(Arc<Mutex<HashMap<String, String>>>);

impl ChallengeStore for Tokens {
    async fn put(&self, token: &str, key_authorization: &str) -> Result<(), String> {
        self.0
            .lock()
            .unwrap()
            .insert(token.to_string(), key_authorization.to_string());
        Ok(())
    }

    async fn remove(&self, token: &str) {
        self.0.lock().unwrap().remove(token);
    }
}

/// Records the order about to be finalized, as the node does in the cluster state.
#[derive(Clone, Default)]
struct Recording {
    tokens: Tokens,
    pending: Arc<Mutex<Option<(String, String)>>>,
}

impl ChallengeStore for Recording {
    async fn put(&self, token: &str, key_authorization: &str) -> Result<(), String> {
        self.tokens.put(token, key_authorization).await
    }
    async fn remove(&self, token: &str) {
        self.tokens.remove(token).await
    }
    async fn before_finalize(&self, url: &str, key_pem: &str) -> Result<(), String> {
        *self.pending.lock().unwrap() = Some((url.to_string(), key_pem.to_string()));
        Ok(())
    }
}

/// Says it published but did not: validations fail.
struct Forgetful;

impl ChallengeStore for Forgetful {
    async fn put(&self, _: &str, _: &str) -> Result<(), String> {
        Ok(())
    }
    async fn remove(&self, _: &str) {}
}

async fn serve_tokens(tokens: Tokens) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tokens = tokens.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let answer = req
                        .uri()
                        .path()
                        .strip_prefix("/.well-known/acme-challenge/")
                        .and_then(|t| tokens.0.lock().unwrap().get(t).cloned());
                    async move {
                        let (status, body) = match answer {
                            Some(a) => (200, a),
                            None => (404, String::new()),
                        };
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    port
}

fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_with_http01_reuses_the_account_and_cleans_up_tokens() {
    let tokens = Tokens::default();
    let port = serve_tokens(tokens.clone()).await;
    // A third of the nonces rejected: survived by instant-acme's retries and new orders.
    let pebble = Pebble::start(port, &[("PEBBLE_WFE_NONCEREJECT", "33")]);
    let (account, creds) = open_account(&pebble.config(), None).await.unwrap();
    let issued = issue(
        &account,
        &names(&["shop.edge.test", "www.shop.edge.test"]),
        &tokens,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(
        tokens.0.lock().unwrap().is_empty(),
        "tokens removed after the order"
    );
    let (_, pem) = x509_parser::pem::parse_x509_pem(issued.chain_pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| format!("{n}"))
        .collect();
    assert!(
        sans.iter().any(|n| n.contains("www.shop.edge.test")),
        "{sans:?}"
    );
    assert!(issued.validity.not_after > issued.validity.not_before);
    assert!(issued.key_pem.contains("PRIVATE KEY"));
    assert!(
        issued.chain_pem.matches("BEGIN CERTIFICATE").count() >= 2,
        "leaf and intermediate"
    );

    // The stored credentials open the same account: no second registration.
    let (again, same) = open_account(&pebble.config(), Some(&creds)).await.unwrap();
    assert_eq!(again.id(), account.id());
    assert_eq!(same, creds);
    issue(
        &again,
        &names(&["api.edge.test"]),
        &tokens,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_validation_is_an_error_naming_the_step() {
    let port = serve_tokens(Tokens::default()).await;
    let pebble = Pebble::start(port, &[]);
    let (account, _) = open_account(&pebble.config(), None).await.unwrap();
    let e = issue(
        &account,
        &names(&["missing.edge.test"]),
        &Forgetful,
        Duration::from_secs(30),
    )
    .await
    .unwrap_err();
    assert_eq!(e.step, "validation", "{e}");
    assert!(!e.rate_limited);
    // Bad stored credentials are refused with the reason, not a panic.
    let e = open_account(&pebble.config(), Some("{not json"))
        .await
        .err()
        .unwrap();
    assert_eq!(e.step, "stored account", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_order_is_resumed_for_its_certificate_not_ordered_again() {
    let store = Recording::default();
    let port = serve_tokens(store.tokens.clone()).await;
    let pebble = Pebble::start(port, &[]);
    let (account, _) = open_account(&pebble.config(), None).await.unwrap();
    let names = names(&["resume.edge.test"]);
    let issued = issue(&account, &names, &store, Duration::from_secs(30))
        .await
        .unwrap();
    let (url, key) = store.pending.lock().unwrap().clone().expect("recorded");
    // Another node picks the order up: the same certificate, the same key, no new order.
    let again = resume(&account, &url, &key, &names, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("a valid order gives its certificate");
    assert_eq!(again.chain_pem, issued.chain_pem);
    assert_eq!(again.key_pem, issued.key_pem);
    assert_eq!(pebble.issued(), 1, "the CA issued once");
}
