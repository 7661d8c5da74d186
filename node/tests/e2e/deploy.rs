//! deploy/: the CloudFormation template's task role against the AWS calls the code makes, its
//! task definition's environment rendered with the parameters and validated by the binary's
//! own `check-config`, and the Dockerfile's final stage against what the binaries need.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

use crate::harness::run;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn template() -> Value {
    let path = repo().join("deploy/edgemesh.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn seq(v: &Value) -> Vec<&Value> {
    match v {
        Value::Sequence(s) => s.iter().collect(),
        Value::Null => Vec::new(),
        one => vec![one],
    }
}

/// Parameter values a stack would get: the defaults, the values an operator must give, and
/// the pseudo parameters.
fn stack_parameters(t: &Value, overrides: &[(&str, &str)]) -> BTreeMap<String, String> {
    let given: BTreeMap<&str, &str> = [
        ("ClusterName", "edge"),
        ("VpcId", "vpc-0123456789abcdef0"),
        (
            "Image",
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com/edgemesh:0.1.0",
        ),
        (
            "ClusterKeySecretArn",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:edgemesh/cluster-key-AbCdEf",
        ),
        ("HostedZoneId", "Z0123456789ABCDEFGHIJ"),
        ("RecordName", "edge.example.com"),
        ("ContactEmail", "ops@example.com"),
    ]
    .into_iter()
    .chain(overrides.iter().copied())
    .collect();
    let mut out = BTreeMap::new();
    let Value::Mapping(params) = &t["Parameters"] else {
        panic!("no Parameters")
    };
    for (name, p) in params {
        let name = name.as_str().unwrap();
        let value = match (given.get(name), &p["Default"]) {
            (Some(v), _) => v.to_string(),
            (None, Value::String(s)) => s.clone(),
            (None, Value::Number(n)) => n.to_string(),
            (None, other) => panic!(
                "parameter {name} has no default ({other:?}) and no test value: give it one here"
            ),
        };
        out.insert(name.to_string(), value);
    }
    for (k, v) in [
        ("AWS::StackName", "edgemesh"),
        ("AWS::Region", "eu-west-1"),
        ("AWS::AccountId", "123456789012"),
        ("AWS::Partition", "aws"),
    ] {
        out.insert(k.into(), v.into());
    }
    out
}

/// A value with `!Ref` and `!Sub` resolved against `params`; any other intrinsic fails the test
/// (extend this when the template needs one).
fn resolve(v: &Value, params: &BTreeMap<String, String>) -> String {
    let lookup = |name: &str| {
        params
            .get(name)
            .unwrap_or_else(|| panic!("!Ref/!Sub of unknown {name}"))
            .clone()
    };
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Tagged(t) if t.tag == "Ref" => lookup(t.value.as_str().unwrap()),
        Value::Tagged(t) if t.tag == "Sub" => {
            let mut text = t.value.as_str().expect("!Sub of a string").to_string();
            let mut out = String::new();
            while let Some(start) = text.find("${") {
                let end = text[start..].find('}').expect("closed ${") + start;
                out.push_str(&text[..start]);
                out.push_str(&lookup(&text[start + 2..end]));
                text = text[end + 1..].to_string();
            }
            out + &text
        }
        other => panic!("cannot resolve {other:?}"),
    }
}

fn container(t: &Value) -> &Value {
    let defs = seq(&t["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]);
    assert_eq!(defs.len(), 1, "one container");
    defs[0]
}

/// The container's environment and secrets as a stack with `params` would start it; the
/// cluster key secret holds a fresh key.
fn task_environment(t: &Value, params: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let c = container(t);
    let mut env = Vec::new();
    for e in seq(&c["Environment"]) {
        env.push((
            e["Name"].as_str().unwrap().to_string(),
            resolve(&e["Value"], params),
        ));
    }
    for s in seq(&c["Secrets"]) {
        let name = s["Name"].as_str().unwrap();
        assert_eq!(
            name, "EDGEMESH_CLUSTER_KEY",
            "a secret the test cannot fill"
        );
        assert_eq!(
            resolve(&s["ValueFrom"], params),
            params["ClusterKeySecretArn"]
        );
        let (code, key, err) = run(env!("CARGO_BIN_EXE_meshctl"), &["keygen"]);
        assert_eq!(code, 0, "{err}");
        env.push((name.to_string(), key.trim().to_string()));
    }
    env
}

fn check_config(env: &[(String, String)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edgemesh"))
        .arg("check-config")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn task_definition_environment_is_a_configuration_check_config_accepts() {
    let t = template();
    let params = stack_parameters(&t, &[]);
    let env = task_environment(&t, &params);
    let (code, out, err) = check_config(&env);
    assert_eq!(
        code, 0,
        "check-config refused the task definition's environment:\n{err}"
    );
    assert!(
        out.contains("environment EDGEMESH_CONFIG_TOML: configuration is valid"),
        "{out}"
    );

    // What it produces agrees with the rest of the template.
    let lookup = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let config = edgemesh_node::config::load_source(Path::new("/nonexistent"), &lookup).unwrap();
    let c = container(&t);
    let stop = resolve(&c["StopTimeout"], &params);
    assert_eq!(
        config.drain_timeout.as_secs().to_string(),
        stop,
        "the drain budget is the stopTimeout"
    );
    let mounts: Vec<String> = seq(&c["MountPoints"])
        .iter()
        .map(|m| resolve(&m["ContainerPath"], &params))
        .collect();
    assert!(
        mounts.contains(&config.data_dir.display().to_string()),
        "data_dir {:?} on a host volume: {mounts:?}",
        config.data_dir
    );
    let mapped = |proto: &str| -> BTreeSet<u16> {
        seq(&c["PortMappings"])
            .iter()
            .filter(|m| m["Protocol"].as_str() == Some(proto))
            .map(|m| resolve(&m["HostPort"], &params).parse().unwrap())
            .collect()
    };
    let listeners: BTreeSet<u16> = config.listeners.iter().map(|l| l.addr.port()).collect();
    assert_eq!(listeners, mapped("tcp"), "listeners and TCP port mappings");
    let g = config.gossip.as_ref().expect("a mesh");
    assert_eq!(
        g.advertise,
        edgemesh_node::config::Advertise::Imds {
            port: params["GossipPort"].parse().unwrap()
        }
    );
    let udp: BTreeSet<u16> = [g.advertise.port(), g.sync_port].into();
    assert_eq!(udp, mapped("udp"), "gossip and QUIC port mappings");
    let sg = &t["Resources"];
    let opened: BTreeSet<u16> = ["GossipIngress", "SyncIngress"]
        .iter()
        .map(|r| {
            let p = &sg[*r]["Properties"];
            assert_eq!(p["IpProtocol"].as_str(), Some("udp"));
            assert_eq!(
                p["SourceSecurityGroupId"], p["GroupId"],
                "{r}: between edge hosts only"
            );
            resolve(&p["FromPort"], &params).parse().unwrap()
        })
        .collect();
    assert_eq!(opened, udp, "security group and gossip/QUIC ports");
    assert_eq!(
        g.ecs_seed_service.as_deref(),
        Some(resolve(&sg["Service"]["Properties"]["ServiceName"], &params).as_str()),
        "seeds come from the DAEMON service's own tasks"
    );
    let records = &config.entrypoint.as_ref().expect("an entrypoint").records;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].name, params["RecordName"]);
    let acme = config.acme.as_ref().expect("ACME");
    assert_eq!(acme.directory, params["AcmeDirectory"]);
    assert_eq!(
        config.config_source, None,
        "no configuration object by default"
    );

    // With a configuration object, the node reads the one the task role may read.
    let with_object = stack_parameters(&t, &[("ConfigObject", "edge-config/prod/routes.toml")]);
    let env = task_environment(&t, &with_object);
    let lookup = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let config = edgemesh_node::config::load_source(Path::new("/nonexistent"), &lookup).unwrap();
    let source = config.config_source.expect("the object source");
    assert_eq!(source.url(), "s3://edge-config/prod/routes.toml");
    let grants = task_role_grants(&t);
    assert_eq!(
        grants["s3:GetObject"]
            .iter()
            .map(|r| resolve(r, &with_object))
            .collect::<Vec<_>>(),
        vec![format!("arn:aws:s3:::{}/{}", source.bucket, source.key)],
        "the task role reads that one object only"
    );

    // A bad value names the variable and the key.
    let params = stack_parameters(&t, &[("BootstrapExpect", "0")]);
    let (code, _, err) = check_config(&task_environment(&t, &params));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("environment EDGEMESH_CONFIG_TOML:")
            && err.contains("gossip.bootstrap_expect"),
        "{err}"
    );
}

/// The task role's actions, each with its statement's resources; a policy under `!If` counts
/// (the grants the role has with every option on).
fn task_role_grants(t: &Value) -> BTreeMap<String, Vec<Value>> {
    let mut grants = BTreeMap::new();
    for policy in seq(&t["Resources"]["TaskRole"]["Properties"]["Policies"]) {
        let policy = match policy {
            Value::Tagged(tag) if tag.tag == "If" => seq(&tag.value)[1],
            p => p,
        };
        for st in seq(&policy["PolicyDocument"]["Statement"]) {
            assert_eq!(st["Effect"].as_str(), Some("Allow"), "{st:?}");
            for a in seq(&st["Action"]) {
                let a = a.as_str().unwrap().to_string();
                let resources = seq(&st["Resource"]).into_iter().cloned().collect();
                assert!(
                    grants.insert(a.clone(), resources).is_none(),
                    "{a} granted twice"
                );
            }
        }
    }
    grants
}

/// `do_thing` -> `DoThing`.
fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The AWS SDK operations the node's source calls, as IAM actions: every struct field typed
/// `aws_sdk_<service>::Client`, then every `self.<field>.<operation>(` in that file. A client
/// used any other way fails the test, so the scan cannot miss a call silently.
fn sdk_operations_in_source() -> BTreeSet<String> {
    let mut files = vec![repo().join("node/src")];
    let mut ops = BTreeSet::new();
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if p.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text: String = std::fs::read_to_string(&p)
            .unwrap()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let mut fields = Vec::new();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("aws_sdk_") {
            let after = &rest[i + "aws_sdk_".len()..];
            let service: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            let tail = &after[service.len()..];
            if tail.starts_with("::Client") && !tail.starts_with("::Client::new(") {
                // `field:aws_sdk_x::Client` in a struct
                let before = &rest[..i];
                let field: String = before
                    .strip_suffix(':')
                    .unwrap_or_else(|| {
                        panic!("{p:?}: aws_sdk_{service}::Client used other than as a struct field")
                    })
                    .chars()
                    .rev()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect::<String>()
                    .chars()
                    .rev()
                    .collect();
                fields.push((field, service));
            }
            rest = tail;
        }
        for (field, service) in fields {
            let needle = format!("self.{field}.");
            for (i, _) in text.match_indices(&needle) {
                let op: String = text[i + needle.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                ops.insert(format!("{service}:{}", pascal(&op)));
            }
        }
    }
    ops
}

#[test]
fn task_role_grants_exactly_the_aws_calls_the_code_makes() {
    let code: BTreeSet<String> = edgemesh_node::aws::CALLS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let called = sdk_operations_in_source();
    assert_eq!(
        called, code,
        "the SDK operations in node/src and node::aws::CALLS differ"
    );

    let t = template();
    let grants = task_role_grants(&t);
    let granted: BTreeSet<String> = grants.keys().cloned().collect();
    assert_eq!(
        granted, code,
        "deploy/edgemesh.yaml's task role and node::aws::CALLS differ"
    );

    // Route53 writes are limited to the hosted zone; ECS calls that take a resource to the
    // cluster.
    let params = stack_parameters(&t, &[]);
    let resources = |action: &str| -> Vec<String> {
        grants[action].iter().map(|r| resolve(r, &params)).collect()
    };
    assert_eq!(
        resources("route53:ChangeResourceRecordSets"),
        vec!["arn:aws:route53:::hostedzone/Z0123456789ABCDEFGHIJ".to_string()]
    );
    assert_eq!(
        resources("ecs:DescribeTasks"),
        vec!["arn:aws:ecs:eu-west-1:123456789012:task/edge/*".to_string()]
    );
    for (action, res) in &grants {
        if res.iter().any(|r| r.as_str() == Some("*")) {
            assert!(
                [
                    "ecs:ListTasks", // limited by the ecs:cluster condition
                    "ecs:DescribeTaskDefinition",
                    "ec2:DescribeInstances"
                ]
                .contains(&action.as_str()),
                "{action} on every resource"
            );
        }
    }
}

#[test]
fn image_runs_both_binaries_without_a_shell() {
    let text = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    let stages: Vec<&str> = text.split("\nFROM ").skip(1).collect();
    assert!(stages.len() >= 2, "multi-stage");
    let last = stages.last().unwrap();
    assert!(last.starts_with("gcr.io/distroless/cc-debian12"), "{last}");
    assert!(
        !last.contains("\nRUN "),
        "the final stage runs nothing: it has no shell"
    );
    for bin in ["edgemesh", "meshctl"] {
        assert!(
            last.contains(&format!("/usr/local/bin/{bin}\n")),
            "{bin} copied in"
        );
    }
    assert!(last.contains("ENTRYPOINT [\"/usr/local/bin/edgemesh\"]"));
    // The task definition's health check is exec form, for the binary the image carries.
    let hc: Vec<String> = seq(&container(&template())["HealthCheck"]["Command"])
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(hc, ["CMD", "/usr/local/bin/edgemesh", "health"]);
    // distroless/cc carries glibc and libgcc_s, nothing else: the binaries need no more.
    for bin in [
        env!("CARGO_BIN_EXE_edgemesh"),
        env!("CARGO_BIN_EXE_meshctl"),
    ] {
        let (code, out, err) = run("ldd", &[bin]);
        assert_eq!(code, 0, "{err}");
        for line in out.lines() {
            let lib = line.split_whitespace().next().unwrap_or("");
            let lib = lib.rsplit('/').next().unwrap();
            assert!(
                [
                    "linux-vdso.so.1",
                    "libc.so.6",
                    "libm.so.6",
                    "libgcc_s.so.1",
                    "ld-linux-x86-64.so.2",
                    "libpthread.so.0",
                    "libdl.so.2",
                    "librt.so.1"
                ]
                .contains(&lib),
                "{bin} needs {lib}, which distroless/cc lacks"
            );
        }
    }
}
