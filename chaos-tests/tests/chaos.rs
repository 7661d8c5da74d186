//! Fault scenarios in network namespaces, with real `edgemesh` processes and moto. Each
//! prints and appends its row to the chaos report (see `edgemesh_chaos_tests::report`).
//! Skipped, saying why, where namespaces cannot be made (not root).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use edgemesh_chaos_tests::{available, report, wait_for, Host, Lab, Row};

/// After a partition heals, the record and every member's view are whole within this.
const HEAL_BOUND: Duration = Duration::from_secs(15);

/// The workspace's `edgemesh` and `meshctl`, built once for this run.
fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = std::process::Command::new(cargo)
            .current_dir(&root)
            .args(["build", "-q", "-p", "edgemesh-node", "--bins"])
            .status()
            .unwrap();
        assert!(st.success(), "building edgemesh");
    });
    root.join("target/debug").join(name)
}

/// A member's config: `zone` adds the DNS entrypoint, `backend` (ip:port) the pool's
/// endpoint.
fn node_config(
    lab: &Lab,
    h: &Host,
    key: &str,
    seed: &Host,
    zone: Option<&str>,
    backend: Option<&str>,
) -> PathBuf {
    let endpoints = backend.map_or(String::new(), |b| format!("\"{b}\""));
    let entrypoint = zone.map_or(String::new(), |zone| {
        format!(
            "[entrypoint]\ndebounce_ms = 300\ncheck_secs = 2\n\n[[entrypoint.records]]\nhosted_zone_id = \"{zone}\"\nname = \"mesh.edge.test\"\nttl = 5\n"
        )
    });
    let toml = format!(
        r#"
[node]
data_dir = "{data}"
admin_addr = "127.0.0.1:9901"
watch_config = false
drain_timeout_secs = 5

[gossip]
bind = "{ip}:7946"
sync_port = 7947
sync_interval_secs = 1
node_id = "{name}"
seeds = ["{seed}:7946"]
key_file = "{key}"
public_ip = "{ip}"
expected_cluster_size = 6
bootstrap_expect = 3
reap_after_secs = 600

[[listeners]]
name = "web"
addr = "{ip}:8080"
kind = "http"

[[routes]]
hosts = ["*"]
pool = "app"
tls = false

[pools.app]
endpoints = [{endpoints}]

{entrypoint}
"#,
        data = lab.path().join(format!("data-{}", h.name)).display(),
        ip = h.ip,
        name = h.name,
        seed = seed.ip,
    );
    let path = lab.path().join(format!("{}.toml", h.name));
    std::fs::write(&path, toml).unwrap();
    path
}

/// A cluster key file from `meshctl keygen`.
fn key_file(lab: &Lab, name: &str) -> String {
    let out = std::process::Command::new(bin("meshctl"))
        .arg("keygen")
        .output()
        .unwrap();
    let path = lab.path().join(name);
    std::fs::write(&path, &out.stdout).unwrap();
    path.display().to_string()
}

/// Route53 on moto over plain HTTP from inside `client` (moto reads the service from the
/// credential scope; it checks no signature).
fn route53(
    lab: &Lab,
    client: &Host,
    aws: &Host,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> String {
    let url = format!("http://{}:5000/2013-04-01/{path}", aws.ip);
    let mut args = vec![
        "-s",
        "-m",
        "5",
        "-X",
        method,
        "-H",
        "Content-Type: application/xml",
        "-H",
        "Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/route53/aws4_request, SignedHeaders=host, Signature=0",
        &url,
    ];
    if let Some(b) = body {
        args.extend(["--data-binary", b]);
    }
    String::from_utf8_lossy(&lab.exec(client, "curl", &args).stdout).to_string()
}

/// The A record `mesh.edge.test` as moto holds it.
fn a_record(lab: &Lab, client: &Host, aws: &Host, zone: &str) -> BTreeSet<String> {
    let xml = route53(
        lab,
        client,
        aws,
        "GET",
        &format!("hostedzone/{zone}/rrset"),
        None,
    );
    let mut out = BTreeSet::new();
    for set in xml.split("<ResourceRecordSet>").skip(1) {
        if set.contains("<Name>mesh.edge.test.</Name>") && set.contains("<Type>A</Type>") {
            for v in set.split("<Value>").skip(1) {
                out.insert(v.split("</Value>").next().unwrap_or("").to_string());
            }
        }
    }
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn status(lab: &Lab, h: &Host) -> serde_json::Value {
    let (_, body) = lab.http(h, "GET", "http://127.0.0.1:9901/status", None);
    serde_json::from_str(&body).unwrap_or_default()
}

#[test]
fn partition_minority_never_writes_dns_and_an_intruder_never_joins() {
    if let Err(why) = available() {
        eprintln!("SKIPPED: network namespaces unavailable here ({why})");
        return;
    }
    let partition_secs: u64 = std::env::var("CHAOS_PARTITION_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let mut lab = Lab::new("pt");
    let aws = lab.host("aws", 200);
    let client = lab.host("client", 250);
    let nodes: Vec<Host> = (1..=5).map(|i| lab.host(&format!("n{i}"), i)).collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/moto_ecs.py");
    lab.spawn(
        &aws,
        "moto",
        "python3",
        &[script, "5000", "--host", &aws.ip.to_string()],
        &[],
    );
    let (zone, _) = wait_for("moto", Duration::from_secs(30), || {
        let xml = route53(
            &lab,
            &client,
            &aws,
            "POST",
            "hostedzone",
            Some("<?xml version=\"1.0\" encoding=\"UTF-8\"?><CreateHostedZoneRequest xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><Name>edge.test.</Name><CallerReference>chaos</CallerReference></CreateHostedZoneRequest>"),
        );
        let id = xml
            .split("<Id>/hostedzone/")
            .nth(1)?
            .split("</Id>")
            .next()?;
        Some(id.to_string())
    });
    let key = key_file(&lab, "cluster.key");
    let env = vec![
        ("AWS_ENDPOINT_URL", format!("http://{}:5000", aws.ip)),
        ("AWS_ACCESS_KEY_ID", "chaos".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "chaos".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ];
    let edgemesh = bin("edgemesh").display().to_string();
    for h in &nodes {
        let cfg = node_config(&lab, h, &key, &nodes[0], Some(&zone), None);
        lab.spawn(
            h,
            &h.name,
            &edgemesh,
            &["--config", &cfg.display().to_string()],
            &env,
        );
    }
    // An intruder on the same network, seeded with a member's address, with another key.
    let intruder = lab.host("intruder", 66);
    let other_key = key_file(&lab, "other.key");
    let cfg = node_config(&lab, &intruder, &other_key, &nodes[0], Some(&zone), None);
    lab.spawn(
        &intruder,
        "intruder",
        &edgemesh,
        &["--config", &cfg.display().to_string()],
        &env,
    );

    let all: BTreeSet<String> = nodes.iter().map(|h| h.ip.to_string()).collect();
    let (_, took) = wait_for("the record holds all five", Duration::from_secs(60), || {
        (a_record(&lab, &client, &aws, &zone) == all).then_some(())
    });
    eprintln!("record holds all five after {took:?}");
    wait_for("five voters", Duration::from_secs(30), || {
        let s = status(&lab, &nodes[0]);
        (s["mesh"]["election"]["voters"]
            .as_array()
            .map_or(0, Vec::len)
            == 5)
            .then_some(())
    });

    // The intruder: never a member anywhere, its packets refused by authentication.
    let mut rejected = 0.0;
    for h in &nodes {
        let s = status(&lab, h);
        let members: Vec<&str> = s["mesh"]["members"]
            .as_array()
            .map(|m| m.iter().filter_map(|x| x["id"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            !members.contains(&"intruder"),
            "{} lists the intruder",
            h.name
        );
        assert_eq!(members.len(), 4, "{}: {members:?}", h.name);
        rejected += s["mesh"]["packets_rejected_auth"].as_f64().unwrap_or(0.0);
    }
    let si = status(&lab, &intruder);
    let intruder_members = si["mesh"]["members"].as_array().map_or(0, Vec::len);
    assert_eq!(
        intruder_members, 0,
        "the intruder sees members: {}",
        si["mesh"]
    );
    assert!(
        rejected > 0.0,
        "no packet was refused: did the intruder send any?"
    );
    assert_eq!(
        a_record(&lab, &client, &aws, &zone),
        all,
        "the intruder is not in DNS"
    );
    report(&Row {
        scenario: "8. intruder with the wrong cluster key".into(),
        invariant: "never a member, nothing injected".into(),
        result: "pass".into(),
        figures: format!(
            "{rejected} packets refused by 5 members; intruder sees {intruder_members} members"
        ),
    });

    // 3/2 partition; AWS stays reachable from both sides.
    let (major, minor) = nodes.split_at(3);
    let writes = |h: &Host| {
        let (_, m) = lab.http(h, "GET", "http://127.0.0.1:9901/metrics", None);
        metric(&m, "edgemesh_dns_writes_total")
    };
    let minority_writes_before: Vec<f64> = minor.iter().map(writes).collect();
    let cut = Instant::now();
    lab.partition(
        &major.iter().collect::<Vec<_>>(),
        &minor.iter().collect::<Vec<_>>(),
    );
    let majority: BTreeSet<String> = major.iter().map(|h| h.ip.to_string()).collect();
    let (_, dropped) = wait_for(
        "the majority drops the minority from DNS",
        Duration::from_secs(30),
        || (a_record(&lab, &client, &aws, &zone) == majority).then_some(()),
    );
    let mut minority_acted = false;
    while cut.elapsed() < Duration::from_secs(partition_secs) {
        for h in minor {
            minority_acted |= status(&lab, h)["mesh"]["election"]["acting"] == true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let minority_writes_after: Vec<f64> = minor.iter().map(writes).collect();
    assert!(!minority_acted, "a minority node acted as leader");
    assert_eq!(
        minority_writes_before, minority_writes_after,
        "the minority wrote DNS"
    );
    assert_eq!(
        a_record(&lab, &client, &aws, &zone),
        majority,
        "record during the partition"
    );
    let healed = Instant::now();
    lab.heal();
    let (_, converged) = wait_for("the record holds all five again", HEAL_BOUND, || {
        (a_record(&lab, &client, &aws, &zone) == all).then_some(())
    });
    let views = || -> Vec<String> {
        nodes
            .iter()
            .map(|h| {
                let s = status(&lab, h);
                let ids: Vec<&str> = s["mesh"]["members"]
                    .as_array()
                    .map(|m| m.iter().filter_map(|x| x["id"].as_str()).collect())
                    .unwrap_or_default();
                format!("{}: {ids:?} down {}", h.name, s["mesh"]["down"])
            })
            .collect()
    };
    while healed.elapsed() < HEAL_BOUND
        && !nodes.iter().all(|h| {
            status(&lab, h)["mesh"]["members"]
                .as_array()
                .map_or(0, Vec::len)
                == 4
        })
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        healed.elapsed() < HEAL_BOUND,
        "views {HEAL_BOUND:?} after healing: {:#?}",
        views()
    );
    let members_back = healed.elapsed();
    report(&Row {
        scenario: format!("4. 3/2 partition for {partition_secs} s (DNS)"),
        invariant: "minority never leads nor writes DNS; converges after healing".into(),
        result: "pass".into(),
        figures: format!(
            "majority dropped the minority from DNS in {:.1} s; minority DNS writes during the cut: 0; after healing: record whole in {:.1} s, every member sees all others in {:.1} s",
            dropped.as_secs_f64(),
            converged.as_secs_f64(),
            members_back.as_secs_f64()
        ),
    });
}

#[test]
fn loss_keeps_every_member_alive_and_a_frozen_node_rejoins() {
    if let Err(why) = available() {
        eprintln!("SKIPPED: network namespaces unavailable here ({why})");
        return;
    }
    let loss_secs: u64 = std::env::var("CHAOS_LOSS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let mut lab = Lab::new("ls");
    let backend = lab.host("backend", 100);
    let client = lab.host("client", 250);
    let nodes: Vec<Host> = (1..=5).map(|i| lab.host(&format!("n{i}"), i)).collect();
    lab.spawn(
        &backend,
        "backend",
        "python3",
        &[
            "-m",
            "http.server",
            "8000",
            "--bind",
            &backend.ip.to_string(),
        ],
        &[],
    );
    let key = key_file(&lab, "cluster.key");
    let edgemesh = bin("edgemesh").display().to_string();
    let upstream = format!("{}:8000", backend.ip);
    for h in &nodes {
        let cfg = node_config(&lab, h, &key, &nodes[0], None, Some(&upstream));
        lab.spawn(
            h,
            &h.name,
            &edgemesh,
            &["--config", &cfg.display().to_string()],
            &[],
        );
    }
    let sees_all = |lab: &Lab| {
        nodes.iter().all(|h| {
            status(lab, h)["mesh"]["members"]
                .as_array()
                .map_or(0, Vec::len)
                == 4
        })
    };
    wait_for("five members", Duration::from_secs(60), || {
        sees_all(&lab).then_some(())
    });
    let mut last = (0, String::new());
    let ready = Instant::now();
    while last.0 != 200 {
        last = lab.http(
            &client,
            "GET",
            &format!("http://{}:8080/", nodes[0].ip),
            None,
        );
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "no answer through the mesh: {last:?}\nbackend: {}\nn1: {}",
            lab.log("backend"),
            lab.log("n1")
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // 20% loss in and out of every member: nobody is declared down, requests keep flowing.
    for h in &nodes {
        lab.loss(h, 20);
    }
    let start = Instant::now();
    let (mut ok, mut failed, mut downs) = (0u32, 0u32, BTreeSet::new());
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(loss_secs) {
        let target = &nodes[i % nodes.len()];
        i += 1;
        match lab
            .http(&client, "GET", &format!("http://{}:8080/", target.ip), None)
            .0
        {
            200 => ok += 1,
            _ => failed += 1,
        }
        if i % 10 == 0 {
            for h in &nodes {
                if let Some(d) = status(&lab, h)["mesh"]["down"].as_array() {
                    downs.extend(d.iter().filter_map(|x| x.as_str().map(str::to_string)));
                }
            }
        }
    }
    lab.heal();
    assert!(
        downs.is_empty(),
        "members declared down under 20% loss: {downs:?}"
    );
    assert!(ok > 0, "no request got through");
    report(&Row {
        scenario: format!("5. 20% random loss on every member for {loss_secs} s"),
        invariant: "no live member declared down; traffic keeps flowing".into(),
        result: "pass".into(),
        figures: format!(
            "members declared down: 0; {ok} requests answered, {failed} failed (curl, 5 s limit, no retry)"
        ),
    });

    // Freeze one member past its suspicion timeout, then let it run again.
    let frozen = nodes[4].clone();
    lab.signal(&frozen.name, "STOP");
    let (_, declared) = wait_for(
        "the frozen member declared down",
        Duration::from_secs(30),
        || {
            nodes[..4]
                .iter()
                .all(|h| {
                    status(&lab, h)["mesh"]["down"]
                        .as_array()
                        .is_some_and(|d| d.iter().any(|x| x == frozen.name.as_str()))
                })
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(5));
    lab.signal(&frozen.name, "CONT");
    let (_, rejoined) = wait_for("the frozen member back everywhere", HEAL_BOUND, || {
        sees_all(&lab).then_some(())
    });
    report(&Row {
        scenario: "7. frozen member (SIGSTOP past suspicion, then SIGCONT)".into(),
        invariant: "declared down, then rejoins without action".into(),
        result: "pass".into(),
        figures: format!(
            "declared down by all in {:.1} s; back in every view {:.2} s after SIGCONT (bound {HEAL_BOUND:?})",
            declared.as_secs_f64(),
            rejoined.as_secs_f64()
        ),
    });
}
