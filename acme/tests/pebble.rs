//! Issuance against Let's Encrypt's test CA: `pebble` and `pebble-challtestsrv` (Debian
//! package `pebble`) on loopback. The challenge server's DNS answers every name with
//! 127.0.0.1, so pebble's HTTP-01 validation reaches the challenge server this test runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use edgemesh_acme::testing::{challtestsrv_txt, Pebble};
use edgemesh_acme::{
    cert_id, issue, open_account, resume, ChallengeStore, DnsSolver, NoDns, OrderSpec,
};
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

/// The subject alternative names of the first certificate in `chain_pem`, as x509-parser
/// prints them (`DNSName(a.test)`).
fn sans(chain_pem: &str) -> Vec<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| format!("{n}"))
        .collect()
}

fn spec(n: &[&str]) -> OrderSpec {
    OrderSpec {
        names: names(n),
        ..OrderSpec::default()
    }
}

/// DNS-01 answers put into the DNS pebble validates against (pebble-challtestsrv), keeping
/// every value of a name as Route53 does; records what it was asked.
#[derive(Clone)]
struct ChallDns {
    management: std::net::SocketAddr,
    records: Arc<Mutex<HashMap<String, Vec<String>>>>,
    presented: Arc<Mutex<Vec<(String, String)>>>,
}

impl ChallDns {
    fn new(pebble: &Pebble) -> ChallDns {
        ChallDns {
            management: pebble.challenge_management,
            records: Arc::default(),
            presented: Arc::default(),
        }
    }

    fn sync(&self, name: &str) {
        let values = self.records.lock().unwrap().get(name).cloned();
        challtestsrv_txt(self.management, name, None);
        for v in values.unwrap_or_default() {
            challtestsrv_txt(self.management, name, Some(&v));
        }
    }
}

impl DnsSolver for ChallDns {
    async fn present(&self, name: &str, value: &str) -> Result<(), String> {
        self.records
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .push(value.to_string());
        self.presented
            .lock()
            .unwrap()
            .push((name.to_string(), value.to_string()));
        self.sync(name);
        Ok(())
    }

    async fn cleanup(&self, name: &str, value: &str) {
        if let Some(v) = self.records.lock().unwrap().get_mut(name) {
            v.retain(|x| x != value);
        }
        self.sync(name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_with_http01_reuses_the_account_and_cleans_up_tokens() {
    let tokens = Tokens::default();
    let port = serve_tokens(tokens.clone()).await;
    // A third of the nonces rejected: survived by instant-acme's retries, and by the
    // attempts of open_account and issue (a new order each).
    let pebble = Pebble::start(port, &[("PEBBLE_WFE_NONCEREJECT", "33")]);
    let (account, creds) = open_account(&pebble.config(), None).await.unwrap();
    let issued = issue(
        &account,
        &spec(&["shop.edge.test", "www.shop.edge.test"]),
        &tokens,
        &NoDns,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(
        tokens.0.lock().unwrap().is_empty(),
        "tokens removed after the order"
    );
    let sans = sans(&issued.chain_pem);
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
        &spec(&["api.edge.test"]),
        &tokens,
        &NoDns,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
}

/// A rejected nonce means the CA did not act: opening the account asks again, a bounded
/// number of times, and then says it was the nonce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_the_account_tries_again_after_rejected_nonces_then_gives_up() {
    let pebble = Pebble::start(0, &[("PEBBLE_WFE_NONCEREJECT", "100")]);
    let e = open_account(&pebble.config(), None)
        .await
        .err()
        .expect("every nonce is rejected");
    assert_eq!(e.step, "new account", "{e}");
    assert!(e.transient && e.message.contains("badNonce"), "{e}");
    // 5 attempts, each of which instant-acme sends 3 times with the nonce the last
    // rejection carried.
    let asked = pebble.log().matches("POST /sign-me-up").count();
    assert_eq!(asked, 5 * 3, "account requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_validation_is_an_error_naming_the_step() {
    let port = serve_tokens(Tokens::default()).await;
    let pebble = Pebble::start(port, &[]);
    let (account, _) = open_account(&pebble.config(), None).await.unwrap();
    let e = issue(
        &account,
        &spec(&["missing.edge.test"]),
        &Forgetful,
        &NoDns,
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
    let order = OrderSpec {
        names: names.clone(),
        ..OrderSpec::default()
    };
    let issued = issue(&account, &order, &store, &NoDns, Duration::from_secs(30))
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

/// With many nonces rejected, requests fail after the CA was asked to issue (finalize,
/// fetching the chain). Those must never start a new order: the certificate would be issued
/// twice (Let's Encrypt allows 5 duplicates a week). Whatever fails, the recorded order is
/// resumed, and the CA issues exactly one certificate per certificate obtained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_after_finalize_resume_the_order_and_never_issue_twice() {
    let store = Recording::default();
    let port = serve_tokens(store.tokens.clone()).await;
    // 45% of nonces rejected: after instant-acme's 3 tries, 9% of requests fail.
    let pebble = Pebble::start(port, &[("PEBBLE_WFE_NONCEREJECT", "45")]);
    let (account, _) = loop {
        if let Ok(a) = open_account(&pebble.config(), None).await {
            break a;
        }
    };
    let (mut obtained, mut failed_after_finalize, mut resumed) = (0, 0, 0);
    for i in 0..6 {
        let names = names(&[&format!("dup{i}.edge.test")]);
        let order = OrderSpec {
            names: names.clone(),
            ..OrderSpec::default()
        };
        *store.pending.lock().unwrap() = None;
        let mut tries = 0;
        let chain = loop {
            tries += 1;
            assert!(tries < 20, "no certificate for {names:?} in 20 tries");
            let recorded = store.pending.lock().unwrap().clone();
            if let Some((url, key)) = recorded {
                // What the next leader does with the recorded order.
                match resume(&account, &url, &key, &names, Duration::from_secs(30)).await {
                    Ok(Some(i)) => {
                        resumed += 1;
                        break i.chain_pem;
                    }
                    // Recorded but never finalized, and no longer ready: order anew.
                    Ok(None) => *store.pending.lock().unwrap() = None,
                    Err(e) => {
                        assert!(!e.transient || e.step == "resume order", "{e}");
                        continue;
                    }
                }
            }
            match issue(&account, &order, &store, &NoDns, Duration::from_secs(30)).await {
                Ok(i) => break i.chain_pem,
                // The order recorded before finalize (kept even when a later attempt
                // failed earlier on a new order) is resumed on the next turn.
                Err(e) => {
                    if e.step == "certificate" {
                        failed_after_finalize += 1;
                        assert!(
                            !e.transient,
                            "a failure after finalize must not invite a new order: {e}"
                        );
                    }
                }
            }
        };
        assert_eq!(sans(&chain), vec![format!("DNSName({})", names[0])]);
        obtained += 1;
        assert_eq!(
            pebble.issued(),
            obtained,
            "the CA issued more certificates than were obtained"
        );
    }
    eprintln!(
        "{obtained} certificates, {failed_after_finalize} orders failed after finalize, {resumed} resumed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_issues_a_wildcard_and_its_base_domain_then_removes_the_records() {
    let pebble = Pebble::start(edgemesh_acme::testing::free_port(), &[]);
    let dns = ChallDns::new(&pebble);
    let (acme, _) = open_account(&pebble.config(), None).await.unwrap();
    // A wildcard is validated by DNS-01 without being asked (HTTP-01 would fail here: the
    // HTTP store forgets what it is given).
    let wildcard = issue(
        &acme,
        &spec(&["*.apps.edge.test"]),
        &Forgetful,
        &dns,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(wildcard.chain_pem.contains("BEGIN CERTIFICATE"));
    // With `dns01`, every name: the wildcard and its base share one TXT name, two values.
    // From a second account, so that each name is presented afresh: pebble may hand an
    // account its valid authorization for the wildcard again, even with PEBBLE_AUTHZREUSE=0
    // (1 time in 100: it creates a new one when `rand.Intn(100) > percent`).
    let both = OrderSpec {
        names: names(&["apps.edge.test", "*.apps.edge.test"]),
        dns01: true,
        ..OrderSpec::default()
    };
    let (second, _) = open_account(&pebble.config(), None).await.unwrap();
    let issued = issue(&second, &both, &Forgetful, &dns, Duration::from_secs(30))
        .await
        .unwrap();
    let sans = sans(&issued.chain_pem);
    assert_eq!(
        sans,
        vec!["DNSName(apps.edge.test)", "DNSName(*.apps.edge.test)"]
    );
    let presented = dns.presented.lock().unwrap().clone();
    assert_eq!(presented.len(), 3, "{presented:?}");
    assert!(presented
        .iter()
        .all(|(n, v)| n == "_acme-challenge.apps.edge.test" && v.len() == 43));
    assert_ne!(
        presented[1].1, presented[2].1,
        "one value per authorization"
    );
    assert!(
        dns.records.lock().unwrap().values().all(Vec::is_empty),
        "records removed after the orders"
    );

    // Without a DNS solver, a wildcard order fails naming the record it needed.
    let e = issue(
        &acme,
        &spec(&["*.other.edge.test"]),
        &Forgetful,
        &NoDns,
        Duration::from_secs(30),
    )
    .await
    .unwrap_err();
    assert_eq!(e.step, "publishing the DNS-01 record", "{e}");
    assert!(e.message.contains("_acme-challenge.other.edge.test"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_renewal_information_the_lifetime_rules_and_replaces_is_dropped() {
    let tokens = Tokens::default();
    let port = serve_tokens(tokens.clone()).await;
    let pebble = Pebble::start(port, &[]);
    let (acme, _) = open_account(&pebble.config(), None).await.unwrap();
    let first = issue(
        &acme,
        &spec(&["ari.edge.test"]),
        &tokens,
        &NoDns,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let id = cert_id(&first.chain_pem).expect("pebble's leaves carry an authority key id");
    let (aki, serial) = id.split_once('.').unwrap();
    assert!(
        !aki.is_empty() && !serial.is_empty() && !id.contains('='),
        "{id}"
    );
    // pebble 2.4's directory has no renewalInfo: no window, so the lifetime fraction rules.
    assert_eq!(acme.renewal_window(&first.chain_pem).await.unwrap(), None);
    // A renewal naming the certificate it replaces still orders (without `replaces`,
    // which a CA without renewal information does not take).
    let renewal = OrderSpec {
        replaces: Some(id),
        ..spec(&["ari.edge.test"])
    };
    let second = issue(&acme, &renewal, &tokens, &NoDns, Duration::from_secs(30))
        .await
        .unwrap();
    assert_ne!(second.chain_pem, first.chain_pem);
    assert_eq!(pebble.issued(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_the_ca_does_not_offer_is_refused_by_name_before_ordering() {
    let pebble = Pebble::start(edgemesh_acme::testing::free_port(), &[]);
    let (acme, _) = open_account(&pebble.config(), None).await.unwrap();
    assert!(acme.profiles().is_empty(), "pebble 2.4 offers no profiles");
    let order = OrderSpec {
        profile: Some("shortlived".into()),
        ..spec(&["short.edge.test"])
    };
    let e = issue(&acme, &order, &Forgetful, &NoDns, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(e.step, "profile");
    assert!(
        e.message.contains("\"shortlived\"") && e.message.contains("offers: none"),
        "{e}"
    );
    assert!(!e.transient && !e.rate_limited);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_account_binding_when_the_ca_requires_it() {
    use base64::Engine;
    let key = b"edgemesh test EAB key, 32 bytes!";
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
    let pebble = Pebble::start_with(
        edgemesh_acme::testing::free_port(),
        &[],
        serde_json::json!({
            "externalAccountBindingRequired": true,
            "externalAccountMACKeys": { "kid-edge": encoded },
        }),
    );
    let e = open_account(&pebble.config(), None).await.err().unwrap();
    assert_eq!(e.step, "new account");
    assert!(e.message.contains("externalAccountRequired"), "{e}");
    let mut cfg = pebble.config();
    cfg.eab = Some((
        "kid-edge".into(),
        b"a wrong key, same length, 32 b!!".to_vec(),
    ));
    assert!(
        open_account(&cfg, None).await.is_err(),
        "a wrong MAC key is refused"
    );
    cfg.eab = Some(("kid-edge".into(), key.to_vec()));
    let (acme, creds) = open_account(&cfg, None).await.unwrap();
    assert!(!acme.id().is_empty());
    // Once created, the stored credentials open it without the binding.
    let (again, _) = open_account(&pebble.config(), Some(&creds)).await.unwrap();
    assert_eq!(again.id(), acme.id());
}
