//! DNS-01 through the Route53 solver: the node writes the TXT record into Route53 (moto),
//! the test copies what moto holds into the DNS pebble validates against (its challenge
//! server), and a wildcard certificate is issued and served. The TXT value is read back
//! through the emulator, and gone from it after the order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgemesh_acme::testing::{challtestsrv_txt, Pebble};

use crate::ecs::{aws_env, Aws, Moto};
use crate::harness;

const TEMPLATE: &str = r#"
[node]
data_dir = "{data}"
admin_addr = "127.0.0.1:{admin}"
watch_config = false
drain_timeout_secs = 1

[[listeners]]
name = "web"
addr = "127.0.0.1:{http}"
kind = "http"

[[listeners]]
name = "websecure"
addr = "127.0.0.1:{https}"
kind = "https"

[[routes]]
hosts = ["*.apps.edge.test"]
pool = "apps"

[pools.apps]
endpoints = ["{backend}"]

[acme]
directory = "{directory}"
root_pem = "{root}"
propagation_ms = 1000

[acme.route53]
hosted_zone_id = "{zone}"
"#;

/// `_acme-challenge` TXT records in the zone, as moto holds them: name -> values.
async fn challenge_records(aws: &Aws, zone: &str) -> BTreeMap<String, BTreeSet<String>> {
    let out = aws
        .route53
        .list_resource_record_sets()
        .hosted_zone_id(zone)
        .send()
        .await
        .unwrap();
    let mut records = BTreeMap::new();
    for r in out.resource_record_sets() {
        if r.r#type().as_str() == "TXT" && r.name().starts_with("_acme-challenge.") {
            let values = r
                .resource_records()
                .iter()
                .map(|v| v.value().trim_matches('"').to_string())
                .collect();
            records.insert(r.name().trim_end_matches('.').to_string(), values);
        }
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_certificate_through_route53_dns01() {
    let moto = Moto::start().await;
    let aws = Aws::new(moto.addr, "127.0.0.9").await;
    let zone = aws.hosted_zone("edge.test.").await;
    let pebble = Pebble::start(harness::free_port(), &[("PEBBLE_AUTHZREUSE", "0")]);
    let dir = tempfile::tempdir().unwrap();
    let issuer_root = crate::acme::issuer_root(&pebble, dir.path()).await;

    // moto's zone -> pebble's DNS, every 100 ms; every value seen in moto is kept.
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let bridge = {
        let (aws, zone, seen, mgmt) = (
            Aws::new(moto.addr, "127.0.0.9").await,
            zone.clone(),
            seen.clone(),
            pebble.challenge_management,
        );
        tokio::spawn(async move {
            let mut mirrored: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            loop {
                let now = challenge_records(&aws, &zone).await;
                if now != mirrored {
                    for name in mirrored.keys().chain(now.keys()).collect::<BTreeSet<_>>() {
                        challtestsrv_txt(mgmt, name, None);
                        for v in now.get(name).into_iter().flatten() {
                            challtestsrv_txt(mgmt, name, Some(v));
                            let mut s = seen.lock().unwrap();
                            if !s.iter().any(|(n, x)| n == name && x == v) {
                                s.push((name.clone(), v.clone()));
                            }
                        }
                    }
                    mirrored = now;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let backend = harness::backend("apps").await;
    let mut vars = vec![
        ("backend", backend.addr.to_string()),
        ("directory", pebble.directory.clone()),
        ("root", pebble.root.display().to_string()),
        // First a hosted zone that does not exist: the order fails, naming it.
        ("zone", "ZNOSUCHZONE".to_string()),
    ];
    let node = harness::node_env(TEMPLATE, &vars, &aws_env(moto.addr)).await;
    let order_error = |s: &serde_json::Value| {
        s["acme_orders"]["*.apps.edge.test"]["last_error"]
            .as_str()
            .map(str::to_string)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let error = loop {
        if let Some(e) = order_error(&node.status().await) {
            break e;
        }
        assert!(Instant::now() < deadline, "no failed order\n{}", node.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        error.contains("ZNOSUCHZONE") && error.contains("DNS-01"),
        "{error}"
    );
    let (code, out, _) = harness::run(
        env!("CARGO_BIN_EXE_meshctl"),
        &["--addr", &node.admin(), "certs"],
    );
    assert_eq!(code, 0);
    // The local CA's certificate serves meanwhile; its row carries the order's error.
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("*.apps.edge.test"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("local-ca") && row.contains("NoSuchHostedZone") && row.contains("(back-off)"),
        "{row}"
    );

    // The right zone: issued through DNS-01, served for any name under the wildcard.
    vars[3].1 = zone.clone();
    node.write_config(TEMPLATE, &vars);
    assert_eq!(node.reload().await.0, 200);
    let start = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while harness::tls_connect(
        node.addr("https"),
        "shop.apps.edge.test",
        &issuer_root,
        &[b"http/1.1"],
    )
    .await
    .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "no wildcard certificate served\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "wildcard certificate served {:?} after the fix",
        start.elapsed()
    );
    let (_, status, body) = harness::tls_get(
        node.addr("https"),
        "api.apps.edge.test",
        &issuer_root,
        false,
        "/",
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.starts_with("apps GET /"), "{body}");

    // The value pebble validated was in Route53 (moto), at the base name, and is gone now.
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "no TXT record ever reached moto");
    assert!(
        seen.iter()
            .all(|(n, v)| n == "_acme-challenge.apps.edge.test" && v.len() == 43),
        "{seen:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !challenge_records(&aws, &zone).await.is_empty() {
        assert!(Instant::now() < deadline, "TXT record left in the zone");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = node.log();
    assert!(log.contains("DNS-01 TXT record in sync"), "{log}");
    let (_, out, _) = harness::run(
        env!("CARGO_BIN_EXE_meshctl"),
        &["--addr", &node.admin(), "certs"],
    );
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("*.apps.edge.test"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("Pebble Intermediate") && row.contains("1/1 local"),
        "{row}"
    );
    bridge.abort();
}
