//! The cluster configuration's S3 source against moto: the acting leader reads the object
//! by ETag, publishes a changed one once, and keeps the live version when an object does
//! not validate.

use std::time::{Duration, Instant};

use crate::cluster_config::{config_status as status, serves};
use crate::ecs::{aws_env, Moto};
use crate::harness::{self, Node};

const TEMPLATE: &str = r#"
[node]
data_dir = "{data}"
admin_addr = "127.0.0.1:{admin}"
watch_config = false
drain_timeout_secs = 1

[cluster_config]
s3 = "s3://edge-config/prod/routes.toml"
poll_secs = 1

[[listeners]]
name = "web"
addr = "127.0.0.1:{http}"
kind = "http"

[[routes]]
hosts = ["app.test"]
pool = "one"
tls = false

[pools.one]
endpoints = ["{one}"]
"#;

const BUCKET: &str = "edge-config";
const KEY: &str = "prod/routes.toml";

async fn s3(moto: &Moto) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::new(&edgemesh_chaos_tests::aws::sdk_config(moto.addr).await)
}

async fn put(client: &aws_sdk_s3::Client, doc: &str) -> String {
    let out = client
        .put_object()
        .bucket(BUCKET)
        .key(KEY)
        .body(doc.as_bytes().to_vec().into())
        .send()
        .await
        .unwrap();
    out.e_tag().unwrap().to_string()
}

fn doc(pool: &str, one: &harness::Backend, two: &harness::Backend) -> String {
    format!(
        "[[routes]]\nhosts = [\"app.test\"]\npool = \"{pool}\"\ntls = false\n\n[pools.one]\nendpoints = [\"{}\"]\n\n[pools.two]\nendpoints = [\"{}\"]\n",
        one.addr, two.addr
    )
}

/// Waits until the node routes app.test to `backend` (a committed version is applied at the
/// next projection tick).
async fn wait_serves(node: &Node, backend: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while serves(node).await != backend {
        assert!(
            Instant::now() < deadline,
            "app.test never served by {backend}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the node's `/config/status` satisfies `ok`; returns it.
async fn wait_status(
    node: &Node,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = status(node).await;
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s}\n{}", node.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GET requests for the object that reached moto.
fn reads(moto: &Moto) -> usize {
    moto.count(&format!("other /{BUCKET}/{KEY}"))
}

/// The node's `edgemesh_config_source_reads_total{result}`.
async fn read_metric(node: &Node, result: &str) -> u64 {
    let (_, body) = harness::http_get(&node.admin(), "/metrics").await.unwrap();
    let needle = format!("edgemesh_config_source_reads_total{{result=\"{result}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(needle.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_object_published_once_when_changed_and_refused_when_invalid() {
    let one = harness::backend("one").await;
    let two = harness::backend("two").await;
    let moto = Moto::start().await;
    let client = s3(&moto).await;
    client.create_bucket().bucket(BUCKET).send().await.unwrap();
    let e1 = put(&client, &doc("two", &one, &two)).await;

    let vars = [("one", one.addr.to_string())];
    let mut node = harness::node_env(TEMPLATE, &vars, &aws_env(moto.addr)).await;
    let url = format!("s3://{BUCKET}/{KEY}");

    // The object becomes version 1, and the node serves its routes.
    let s = wait_status(&node, "the object published", |s| s["live"]["version"] == 1).await;
    assert_eq!(
        s["live"]["source"].as_str().unwrap(),
        format!("{url} (ETag {e1})")
    );
    assert_eq!(s["live"]["author"], "s3 source");
    assert_eq!(s["source"]["outcome"]["Published"], 1, "{s}");
    wait_serves(&node, "two").await;

    // Unchanged: read again every second (a 304 each), never published again.
    let before = reads(&moto);
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let polled = reads(&moto) - before;
    assert!((2..=5).contains(&polled), "{polled} reads in 3.5 s");
    assert!(read_metric(&node, "unchanged").await >= 2);
    assert_eq!(read_metric(&node, "published").await, 1);
    assert_eq!(status(&node).await["live"]["version"], 1);

    // An invalid object: refused with file, line and key; version 1 keeps serving, and the
    // refused object is not read past its ETag again.
    let bad = put(&client, &doc("missing", &one, &two)).await;
    let s = wait_status(&node, "the invalid object refused", |s| {
        s["source"]["etag"] == bad.as_str()
    })
    .await;
    let refused = s["source"]["outcome"]["Refused"]
        .as_str()
        .unwrap_or_default();
    assert!(
        refused.contains(&format!(
            "{url}:3: routes[0].pool: pool \"missing\" is not defined"
        )),
        "{s}"
    );
    assert_eq!(s["live"]["version"], 1);
    assert!(node.log().contains("cluster configuration object refused"));
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(read_metric(&node, "refused").await, 1, "refused once");
    assert_eq!(status(&node).await["live"]["version"], 1);
    assert_eq!(serves(&node).await, "two");

    // A valid change: published once as version 2.
    let e3 = put(&client, &doc("one", &one, &two)).await;
    let put_at = Instant::now();
    let s = wait_status(&node, "the change published", |s| s["live"]["version"] == 2).await;
    eprintln!(
        "a changed object was live {:?} after PutObject (poll_secs = 1)",
        put_at.elapsed()
    );
    assert_eq!(
        s["live"]["source"].as_str().unwrap(),
        format!("{url} (ETag {e3})")
    );
    wait_serves(&node, "one").await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (code, history) = harness::http_get(&node.admin(), "/config/history")
        .await
        .unwrap();
    assert_eq!(code, 200);
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    let versions: Vec<u64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [2, 1], "each object published once: {history}");
    assert_eq!(read_metric(&node, "published").await, 2);

    // An unreadable object (deleted): the error is reported, the live version stays.
    client
        .delete_object()
        .bucket(BUCKET)
        .key(KEY)
        .send()
        .await
        .unwrap();
    let s = wait_status(&node, "the read error reported", |s| {
        s["source"]["read_error"].is_string()
    })
    .await;
    assert!(
        s["source"]["read_error"]
            .as_str()
            .unwrap()
            .contains("NoSuchKey"),
        "{s}"
    );
    assert_eq!(s["live"]["version"], 2);
    assert_eq!(serves(&node).await, "one");

    // The object back, as it was: after a restart (the node's state is new) the document
    // is the live one, so nothing is published.
    put(&client, &doc("one", &one, &two)).await;
    node.restart().await;
    let s = wait_status(&node, "the object found live after a restart", |s| {
        s["source"]["outcome"] == "AlreadyLive"
    })
    .await;
    assert_eq!(s["live"]["version"], 2, "{s}");
    assert_eq!(serves(&node).await, "one");
    let (_, out, _) = harness::run(
        env!("CARGO_BIN_EXE_meshctl"),
        &["--addr", &node.admin(), "config", "status"],
    );
    assert!(
        out.contains(&format!("source: {url}")) && out.contains("already live"),
        "{out}"
    );
}
