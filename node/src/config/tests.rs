use super::*;

const GOOD: &str = r#"
[node]
data_dir = "/tmp/x"
admin_addr = "127.0.0.1:9999"

[[listeners]]
name = "web"
addr = "127.0.0.1:8080"
kind = "http"

[[listeners]]
name = "websecure"
addr = "127.0.0.1:8443"
kind = "https"

[[listeners]]
name = "sftp"
addr = "127.0.0.1:2222"
kind = "tcp"
pool = "files"
send_proxy_protocol = true
idle_timeout_secs = 600

[[routes]]
hosts = ["API.example.com", "*.apps.example.com"]
path_prefix = "/v1"
pool = "api"

[[routes]]
hosts = ["*"]
pool = "api"
tls = false

[pools.api]
balance = "least_requests"
endpoints = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 3 }]

[pools.files]
endpoints = []
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse_str(src: &str) -> Result<Config, ConfigError> {
    parse(Path::new("edge.toml"), src, &no_env)
}

#[test]
fn parses_a_full_config() {
    let c = parse_str(GOOD).unwrap();
    assert_eq!(c.admin_addr, "127.0.0.1:9999".parse().unwrap());
    assert_eq!(c.listeners.len(), 3);
    assert_eq!(c.table.https_port, Some(8443));
    assert_eq!(
        c.tls_hosts,
        vec!["api.example.com".to_string(), "*.apps.example.com".into()]
    );
    let api = c.table.pools.iter().find(|p| p.name == "api").unwrap();
    assert_eq!(api.balance, Balance::LeastRequests);
    assert_eq!(api.endpoints[1].weight, 3);
    assert_eq!(c.table.tcp_routes[0].pool, "files");
    assert!(c.table.tcp_routes[0].send_proxy_protocol);
    assert_eq!(
        c.listeners[2].kind,
        ListenerKind::Tcp {
            idle_timeout_ms: Some(600_000)
        }
    );
    // tls = false disables the redirect.
    assert!(!c.table.routes[1].redirect_https && c.table.routes[0].redirect_https);
    assert!(
        c.limits.session_resumption,
        "resumption is on unless turned off"
    );
    let off = parse_str(&format!("{GOOD}\n[tls]\nsession_resumption = false\n")).unwrap();
    assert!(!off.limits.session_resumption);
    let e = error_of(&format!("{GOOD}\n[tls]\nsession_resumption = \"no\"\n"));
    assert!(e.to_string().contains("session_resumption"), "{e}");
}

fn error_of(src: &str) -> ConfigError {
    parse_str(src).unwrap_err()
}

#[test]
fn unknown_pool_names_line_and_key() {
    let src = GOOD.replace("tls = false\n", "tls = false\npool2 = 1\n");
    let e = error_of(&src);
    assert_eq!(e.key.as_deref(), Some("routes[1].pool2"), "{e}");
    assert!(e.message.contains("pool2"), "{e}");

    let src = GOOD.replacen("pool = \"api\"\n", "pool = \"nope\"\n", 1);
    let e = error_of(&src);
    assert_eq!(e.key.as_deref(), Some("routes[0].pool"));
    assert_eq!(e.line, Some(27));
    assert_eq!(
        e.to_string(),
        "edge.toml:27: routes[0].pool: pool \"nope\" is not defined under [pools]"
    );
}

#[test]
fn type_errors_point_at_the_key() {
    let e = error_of(&GOOD.replace("idle_timeout_secs = 600", "idle_timeout_secs = \"ten\""));
    assert_eq!(
        e.key.as_deref(),
        Some("listeners[2].idle_timeout_secs"),
        "{e}"
    );
    assert_eq!(e.line, Some(22));
    let e = error_of("[node]\nadmin_addr = \n");
    assert_eq!(e.line, Some(2), "{e}");
}

#[test]
fn semantic_errors() {
    let cases: &[(&str, &str, &str)] = &[
        ("127.0.0.1:9002", "127.0.0.1", "pools.api.endpoints[1]"),
        ("weight = 3", "weight = 0", "pools.api.endpoints[1]"),
        (
            "path_prefix = \"/v1\"",
            "path_prefix = \"v1\"",
            "routes[0].path_prefix",
        ),
        (
            "\"*.apps.example.com\"",
            "\"a.*.example.com\"",
            "routes[0].hosts[1]",
        ),
        (
            "\"*.apps.example.com\"",
            "\"host:80\"",
            "routes[0].hosts[1]",
        ),
        (
            "addr = \"127.0.0.1:8443\"",
            "addr = \"127.0.0.1:8080\"",
            "listeners[1].addr",
        ),
        (
            "name = \"websecure\"",
            "name = \"web\"",
            "listeners[1].name",
        ),
        ("pool = \"files\"", "pool = \"gone\"", "listeners[2].pool"),
        (
            "admin_addr = \"127.0.0.1:9999\"",
            "admin_addr = \"localhost\"",
            "node.admin_addr",
        ),
    ];
    for (from, to, key) in cases {
        let src = GOOD.replacen(from, to, 1);
        assert_ne!(src, GOOD, "{from} not found");
        let e = error_of(&src);
        assert_eq!(e.key.as_deref(), Some(*key), "{from} -> {to}: {e}");
        assert!(e.line.is_some(), "{e}");
    }
    let src = GOOD.replace("kind = \"http\"", "kind = \"http\"\npool = \"api\"");
    assert_eq!(error_of(&src).key.as_deref(), Some("listeners[0].pool"));
    let src = GOOD.replace("pool = \"files\"\n", "");
    assert_eq!(error_of(&src).key.as_deref(), Some("listeners[2].kind"));
}

#[test]
fn environment_overrides_and_their_errors() {
    let env = |k: &str| match k {
        "EDGEMESH_ADMIN_ADDR" => Some("127.0.0.1:7000".to_string()),
        "EDGEMESH_DATA_DIR" => Some("/data".to_string()),
        "EDGEMESH_DRAIN_TIMEOUT_SECS" => Some("45".to_string()),
        _ => None,
    };
    let c = parse(Path::new("e.toml"), GOOD, &env).unwrap();
    assert_eq!(c.admin_addr.port(), 7000);
    assert_eq!(c.data_dir, PathBuf::from("/data"));
    assert_eq!(c.drain_timeout, Duration::from_secs(45));
    let bad = |k: &str| (k == "EDGEMESH_DRAIN_TIMEOUT_SECS").then(|| "soon".to_string());
    let e = parse(Path::new("e.toml"), GOOD, &bad).unwrap_err();
    assert_eq!(
        e.key.as_deref(),
        Some("environment EDGEMESH_DRAIN_TIMEOUT_SECS")
    );
}

#[test]
fn missing_file_and_missing_cert_files() {
    let e = load(Path::new("/nonexistent/edge.toml"), &no_env).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/edge.toml: cannot read"),
        "{e}"
    );
    let src = format!("{GOOD}\n[[tls.certificates]]\ncert = \"nope.pem\"\nkey = \"nope.key\"\n");
    let e = error_of(&src);
    assert_eq!(e.key.as_deref(), Some("tls.certificates[0].cert"), "{e}");
}

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn gossip_src(extra: &str) -> String {
    format!("{GOOD}\n[gossip]\nbind = \"127.0.0.1:7946\"\nnode_id = \"edge-1\"\nseeds = [\"10.0.0.2:7946\", \"10.0.0.3:7946\"]\n{extra}")
}

#[test]
fn gossip_section_with_key_from_environment_or_file() {
    let env = |k: &str| match k {
        "EDGEMESH_CLUSTER_KEY" => Some(format!("{KEY},{KEY}")),
        "EDGEMESH_PUBLIC_IP" => Some("203.0.113.10".to_string()),
        _ => None,
    };
    let c = parse(
        Path::new("e.toml"),
        &gossip_src("probe_period_ms = 800\n"),
        &env,
    )
    .unwrap();
    let g = c.gossip.unwrap();
    assert_eq!(g.node_id, "edge-1");
    assert_eq!(
        g.advertise,
        Advertise::Addr("127.0.0.1:7946".parse().unwrap())
    );
    assert_eq!(g.seeds.len(), 2);
    assert_eq!(g.keys.len(), 2, "rotation: two keys");
    assert_eq!(
        g.public_ip,
        PublicIp::Fixed("203.0.113.10".parse().unwrap())
    );
    assert_eq!(g.probe_period, Duration::from_millis(800));
    assert!(
        parse_str(GOOD).unwrap().gossip.is_none(),
        "no section, single node"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.key"), format!("{KEY}\n")).unwrap();
    let path = dir.path().join("e.toml");
    let c = parse(&path, &gossip_src("key_file = \"cluster.key\"\n"), &no_env).unwrap();
    let g = c.gossip.unwrap();
    assert_eq!(g.keys, vec![KEY.to_string()]);
    assert_eq!(g.public_ip, PublicIp::Unset);
    // "imds": learned at start from the instance metadata service.
    let src = gossip_src("key_file = \"cluster.key\"\npublic_ip = \"imds\"\n");
    let g = parse(&path, &src, &no_env).unwrap().gossip.unwrap();
    assert_eq!(g.public_ip, PublicIp::Imds);
    // advertise = "imds": the private address at start, the bind port.
    let src = gossip_src("key_file = \"cluster.key\"\nadvertise = \"imds\"\n")
        .replace("127.0.0.1:7946", "0.0.0.0:7950");
    let g = parse(&path, &src, &no_env).unwrap().gossip.unwrap();
    assert_eq!(g.advertise, Advertise::Imds { port: 7950 });
    assert_eq!(g.sync_port, 7951);
}

#[test]
fn configuration_from_the_environment_wins_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edgemesh.toml");
    std::fs::write(&file, GOOD).unwrap();
    let from_file = load_source(&file, &no_env).unwrap();
    assert_eq!(from_file.listeners.len(), 3);

    let only_web = GOOD
        .split("[[listeners]]\nname = \"websecure\"")
        .next()
        .unwrap()
        .to_string()
        + "[[routes]]\nhosts = [\"*\"]\npool = \"api\"\n[pools.api]\nendpoints = []\n";
    let env = |k: &str| (k == CONFIG_ENV).then(|| only_web.clone());
    let c = load_source(&file, &env).unwrap();
    assert_eq!(c.listeners.len(), 1, "the variable, not the file");
    assert_eq!(c.file, config_env_path());
    // Nothing at the path is needed.
    let c = load_source(&dir.path().join("absent.toml"), &env).unwrap();
    assert_eq!(c.listeners.len(), 1);

    // Errors name the variable and the line within it.
    let bad = only_web.replace("127.0.0.1:8080", "127.0.0.1");
    let env = |k: &str| (k == CONFIG_ENV).then(|| bad.clone());
    let e = load_source(&file, &env).unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("environment EDGEMESH_CONFIG_TOML:"),
        "{text}"
    );
    assert_eq!(e.key.as_deref(), Some("listeners[0].addr"), "{text}");
}

#[test]
fn gossip_errors_name_the_key_or_variable() {
    let e = error_of(&gossip_src(""));
    assert_eq!(e.key.as_deref(), Some("gossip"), "{e}");
    assert!(e.message.contains("meshctl keygen"), "{e}");

    let bad_env = |k: &str| (k == "EDGEMESH_CLUSTER_KEY").then(|| "c2hvcnQ=".to_string());
    let e = parse(Path::new("e.toml"), &gossip_src(""), &bad_env).unwrap_err();
    assert_eq!(
        e.key.as_deref(),
        Some("environment EDGEMESH_CLUSTER_KEY"),
        "{e}"
    );
    assert!(e.message.contains("32 bytes"), "{e}");

    let key = |k: &str| (k == "EDGEMESH_CLUSTER_KEY").then(|| KEY.to_string());
    let cases: &[(&str, &str)] = &[
        (
            "probe_period_ms = 100\nprobe_rtt_ms = 200\n",
            "gossip.probe_rtt_ms",
        ),
        ("key_file = \"/nonexistent/key\"\n", "gossip"),
        ("indirect_probes = 0\n", "gossip.indirect_probes"),
        ("lease_ms = 2000\n", "gossip.lease_ms"),
        ("bootstrap_expect = 0\n", "gossip.bootstrap_expect"),
    ];
    for (extra, expected) in cases {
        let src = gossip_src(extra);
        match parse(Path::new("e.toml"), &src, &key) {
            Err(e) => assert_eq!(e.key.as_deref(), Some(*expected), "{extra}: {e}"),
            Ok(_) if extra.starts_with("key_file") => {} // the environment key wins
            Ok(_) => panic!("{extra} accepted"),
        }
    }
    let src = gossip_src("").replace("10.0.0.3:7946", "10.0.0.3");
    let e = parse(Path::new("e.toml"), &src, &key).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("gossip.seeds[1]"));
    let src = gossip_src("").replace("127.0.0.1:7946", "0.0.0.0:7946");
    let e = parse(Path::new("e.toml"), &src, &key).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("gossip.bind"));
    assert!(e.message.contains("gossip.advertise"), "{e}");
    let e = parse(
        Path::new("e.toml"),
        &gossip_src("key_file = \"/nonexistent/key\"\n"),
        &no_env,
    )
    .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("gossip.key_file"), "{e}");
}

#[test]
fn ecs_pools_and_settings() {
    let src = GOOD.replace(
        "[pools.files]\nendpoints = []",
        "[pools.files]\necs = { service = \"sftp\", container = \"sftpd\", port = 22 }\n\n[ecs]\ncluster = \"edge\"\nregion = \"eu-west-1\"",
    );
    let c = parse_str(&src).unwrap();
    let ecs = c.ecs.unwrap();
    assert_eq!(
        (ecs.cluster.as_str(), ecs.region.as_deref()),
        ("edge", Some("eu-west-1"))
    );
    assert_eq!(ecs.poll_interval, Duration::from_secs(10));
    let t = &c.ecs_targets["files"];
    assert_eq!(
        (t.service.as_str(), t.container.as_deref(), t.port),
        ("sftp", Some("sftpd"), Some(22))
    );
    // The environment names the cluster and region, as on an ECS host.
    let env = |k: &str| match k {
        "AWS_CLUSTER_NAME" => Some("prod".to_string()),
        "AWS_REGION" => Some("us-east-2".to_string()),
        _ => None,
    };
    let c = parse(Path::new("edge.toml"), &src, &env).unwrap();
    let ecs = c.ecs.unwrap();
    assert_eq!(
        (ecs.cluster.as_str(), ecs.region.as_deref()),
        ("prod", Some("us-east-2"))
    );
    // Without ECS pools or [ecs], no poller.
    assert!(parse_str(GOOD).unwrap().ecs.is_none());
}

#[test]
fn ecs_errors_name_the_key() {
    let target = GOOD.replace(
        "[pools.files]\nendpoints = []",
        "[pools.files]\necs = { service = \"sftp\" }",
    );
    let e = error_of(&target).to_string();
    assert!(
        e.contains("pools.files.ecs") && e.contains("AWS_CLUSTER_NAME"),
        "{e}"
    );
    let both = GOOD.replace(
        "[pools.files]\nendpoints = []",
        "[pools.files]\nendpoints = [\"127.0.0.1:1\"]\necs = { service = \"sftp\" }\n[ecs]\ncluster = \"c\"",
    );
    let e = error_of(&both).to_string();
    assert!(
        e.contains("pools.files.ecs") && e.contains("not both"),
        "{e}"
    );
    let interval = GOOD.replace(
        "[pools.files]\nendpoints = []",
        "[pools.files]\nendpoints = []\n[ecs]\ncluster = \"c\"\npoll_interval_secs = 0",
    );
    let e = error_of(&interval).to_string();
    assert!(e.contains("ecs.poll_interval_secs"), "{e}");
    let typo = GOOD.replace(
        "[pools.files]\nendpoints = []",
        "[pools.files]\necs = { servce = \"sftp\" }",
    );
    let e = error_of(&typo);
    assert!(e.to_string().contains("servce"), "{e}");
    assert!(e.line.is_some(), "{e}");
}

#[test]
fn dns_pools_and_their_errors() {
    let src = GOOD.replace(
        "[pools.files]\nendpoints = []",
        "[pools.files]\ndns = { srv = \"_sftp._tcp.internal\" }\n[pools.other]\ndns = { name = \"other.internal\", port = 8080 }\n[dns]\nservers = [\"10.0.0.2:53\"]",
    );
    let c = parse_str(&src).unwrap();
    assert_eq!(
        c.dns_targets["files"],
        crate::dns::DnsTarget::Srv("_sftp._tcp.internal".into())
    );
    assert_eq!(
        c.dns_targets["other"],
        crate::dns::DnsTarget::Host {
            name: "other.internal".into(),
            port: 8080
        }
    );
    assert_eq!(c.dns_servers, vec!["10.0.0.2:53".parse().unwrap()]);
    for (bad, key) in [
        ("dns = { name = \"x.internal\" }", "pools.files.dns"),
        ("dns = { srv = \"_a._tcp.x\", port = 1 }", "pools.files.dns"),
        (
            "dns = { srv = \"_a._tcp.x\" }\nendpoints = [\"127.0.0.1:1\"]",
            "pools.files.dns",
        ),
    ] {
        let src = GOOD.replace(
            "[pools.files]\nendpoints = []",
            &format!("[pools.files]\n{bad}"),
        );
        let e = error_of(&src);
        assert_eq!(e.key.as_deref(), Some(key), "{bad}: {e}");
    }
    let src = GOOD.replace(
        "[pools.files]\nendpoints = []",
        "[pools.files]\nendpoints = []\n[dns]\nservers = [\"resolver\"]",
    );
    assert_eq!(error_of(&src).key.as_deref(), Some("dns.servers[0]"));
}

#[test]
fn acme_section_and_its_errors() {
    let with = |acme: &str| {
        GOOD.replace(
            "[pools.files]\nendpoints = []",
            &format!("[pools.files]\nendpoints = []\n[acme]\n{acme}"),
        )
    };
    let c = parse_str(&with("directory = \"https://ca.test/dir\"\ncontact = [\"mailto:a@b.test\"]\nroot_pem = \"roots/ca.pem\"")).unwrap();
    let a = c.acme.unwrap();
    assert_eq!(a.directory, "https://ca.test/dir");
    assert_eq!(
        a.root_pem.unwrap(),
        Path::new("roots/ca.pem"),
        "relative to the config file"
    );
    assert!((a.renew_fraction - 2.0 / 3.0).abs() < 1e-9);
    for (bad, key) in [
        ("directory = \"ca.test\"", "acme.directory"),
        (
            "directory = \"https://ca.test\"\ncontact = [\"a@b.test\"]",
            "acme.contact[0]",
        ),
        (
            "directory = \"https://ca.test\"\nrenew_fraction = 1.5",
            "acme.renew_fraction",
        ),
        (
            "directory = \"https://ca.test\"\nchallenge = \"tls-alpn-01\"",
            "acme.challenge",
        ),
        // DNS-01 and wildcards need the Route53 solver.
        (
            "directory = \"https://ca.test\"\nchallenge = \"dns-01\"",
            "acme.challenge",
        ),
        (
            "directory = \"https://ca.test\"\ncertificates = [[\"*.example.com\"]]",
            "acme.certificates",
        ),
        (
            "directory = \"https://ca.test\"\n[acme.route53]\nhosted_zone_id = \" \"",
            "acme.route53.hosted_zone_id",
        ),
        (
            "directory = \"https://ca.test\"\nprofile = \"\"",
            "acme.profile",
        ),
        (
            "directory = \"https://ca.test\"\neab_kid = \"kid\"",
            "acme.eab_hmac_key_env",
        ),
        (
            "directory = \"https://ca.test\"\neab_hmac_key_env = \"EAB\"",
            "acme.eab_kid",
        ),
        // The variable is not set.
        (
            "directory = \"https://ca.test\"\neab_kid = \"kid\"\neab_hmac_key_env = \"EAB\"",
            "acme.eab_hmac_key_env",
        ),
    ] {
        assert_eq!(error_of(&with(bad)).key.as_deref(), Some(key), "{bad}");
    }
}

#[test]
fn acme_dns01_profile_and_external_account_binding() {
    let src = GOOD.replace(
        "[pools.files]\nendpoints = []",
        "[pools.files]\nendpoints = []\n[acme]\ndirectory = \"https://ca.test/dir\"\n\
         challenge = \"dns-01\"\nprofile = \"shortlived\"\ncertificates = [[\"*.Example.com\", \"example.com\"]]\n\
         eab_kid = \"kid-1\"\neab_hmac_key_env = \"EAB_KEY\"\n\
         [acme.route53]\nhosted_zone_id = \"/hostedzone/Z0123\"\n",
    );
    let env = |k: &str| (k == "EAB_KEY").then(|| "a2V5LWJ5dGVz".to_string());
    let a = parse(Path::new("edge.toml"), &src, &env)
        .unwrap()
        .acme
        .unwrap();
    assert!(a.dns01);
    assert_eq!(a.profile.as_deref(), Some("shortlived"));
    assert_eq!(a.eab, Some(("kid-1".to_string(), b"key-bytes".to_vec())));
    assert_eq!(a.route53, Some(("Z0123".to_string(), None)));
    assert_eq!(
        a.certificates,
        vec![vec!["*.example.com".to_string(), "example.com".into()]]
    );
    // A key that is not base64url is named with its variable.
    let bad = |k: &str| (k == "EAB_KEY").then(|| "not base64!".to_string());
    let e = parse(Path::new("edge.toml"), &src, &bad).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("acme.eab_hmac_key_env"));
    assert!(e.to_string().contains("EAB_KEY"), "{e}");
}

#[test]
fn entrypoint_section_and_its_errors() {
    let with = |e: &str| {
        GOOD.replace(
            "[pools.files]\nendpoints = []",
            &format!("[pools.files]\nendpoints = []\n{e}"),
        )
    };
    let c = parse_str(&with(
        "[entrypoint]\ncheck_secs = 5\n[[entrypoint.records]]\nhosted_zone_id = \"/hostedzone/Z1\"\nname = \"Edge.Example.com\"\n",
    ))
    .unwrap();
    let e = c.entrypoint.unwrap();
    assert_eq!(e.records[0].zone, "Z1");
    assert_eq!(e.records[0].name, "edge.example.com");
    assert_eq!(e.records[0].ttl, 60);
    assert_eq!(e.timings.check_ms, 5_000);
    let record = |extra: &str| {
        with(&format!(
            "[entrypoint]\n[[entrypoint.records]]\nhosted_zone_id = \"Z1\"\n{extra}"
        ))
    };
    for (src, key) in [
        (with("[entrypoint]\nrecords = []"), "entrypoint.records"),
        (record("name = \"*.example.com\""), "entrypoint.records[0].name"),
        (record("name = \"a b\""), "entrypoint.records[0].name"),
        (
            record("name = \"edge.example.com\"\nttl = 0"),
            "entrypoint.records[0].ttl",
        ),
        (
            with("[entrypoint]\ncheck_secs = 0\n[[entrypoint.records]]\nhosted_zone_id = \"Z1\"\nname = \"e.example.com\""),
            "entrypoint.check_secs",
        ),
        (
            with("[entrypoint]\n[[entrypoint.records]]\nhosted_zone_id = \"\"\nname = \"e.example.com\""),
            "entrypoint.records[0].hosted_zone_id",
        ),
    ] {
        assert_eq!(error_of(&src).key.as_deref(), Some(key), "{src}");
    }
}

#[test]
fn drain_budget_fits_ecs_stop_timeout() {
    let src = GOOD.replace(
        "admin_addr = \"127.0.0.1:9999\"",
        "admin_addr = \"127.0.0.1:9999\"\ndrain_timeout_secs = 121",
    );
    assert_eq!(
        error_of(&src).key.as_deref(),
        Some("node.drain_timeout_secs")
    );
    let src = GOOD.replace(
        "admin_addr = \"127.0.0.1:9999\"",
        "admin_addr = \"127.0.0.1:9999\"\ndrain_timeout_secs = 120\ndrain_grace_secs = 2",
    );
    let c = parse_str(&src).unwrap();
    assert_eq!(c.drain_timeout, Duration::from_secs(120));
    assert_eq!(c.drain_grace, Duration::from_secs(2));
}

#[test]
fn limits_defaults_values_and_range_errors() {
    let d = edgemesh_proxy::ProxySettings::default();
    assert_eq!(parse_str(GOOD).unwrap().limits, d);
    let c = parse_str(&format!(
        "{GOOD}\n[limits]\nheader_read_timeout_secs = 5\nmax_header_bytes = 16384\nmax_headers = 50\nmax_connections = 2\nh2_max_concurrent_streams = 8\nupstream_connect_timeout_ms = 300\nupstream_response_timeout_secs = 2\n"
    ))
    .unwrap();
    let l = &c.limits;
    assert_eq!(l.header_read_timeout, Duration::from_secs(5));
    assert_eq!(
        (l.max_header_bytes, l.max_headers, l.max_connections),
        (16384, 50, 2)
    );
    assert_eq!(l.h2_max_concurrent_streams, 8);
    assert_eq!(l.connect_timeout, Duration::from_millis(300));
    assert_eq!(l.response_timeout, Duration::from_secs(2));
    // Out of range: the key and its line are named.
    let src = format!("{GOOD}\n[limits]\nmax_header_bytes = 1024\n");
    let e = error_of(&src);
    let line = src
        .lines()
        .position(|l| l.starts_with("max_header_bytes"))
        .unwrap()
        + 1;
    assert_eq!(e.key.as_deref(), Some("limits.max_header_bytes"), "{e}");
    assert_eq!(e.line, Some(line), "{e}");
    assert!(e.message.contains("between 8192 and 1048576"), "{e}");
    let e = error_of(&format!("{GOOD}\n[limits]\nmax_connections = 0\n"));
    assert_eq!(e.key.as_deref(), Some("limits.max_connections"), "{e}");
    let e = error_of(&format!("{GOOD}\n[limits]\nmax_body = 1\n"));
    assert!(e.to_string().contains("max_body"), "{e}");
}

/// The line of the first line of `src` starting with `prefix`, 1-based.
fn line_starting(src: &str, prefix: &str) -> usize {
    src.lines().position(|l| l.starts_with(prefix)).unwrap() + 1
}

#[test]
fn health_checks_route_limits_and_access_log() {
    let src = format!(
        "{GOOD}\n[pools.api.health_check]\ntype = \"http\"\npath = \"/health\"\nexpect_status = \"204\"\ninterval_ms = 1000\ntimeout_ms = 500\n\n\
         [pools.files.health_check]\ntype = \"tcp\"\n\n\
         [[routes]]\nhosts = [\"limited.example.com\"]\npool = \"api\"\nhsts_max_age_secs = 600\nhsts_preload = true\nmax_body_bytes = 1024\ntimeout_secs = 7\n\n\
         [access_log]\nformat = \"combined\"\nsample = 0.25\n"
    );
    let c = parse_str(&src).unwrap();
    let api = c.table.pools.iter().find(|p| p.name == "api").unwrap();
    let check = api.health_check.as_ref().unwrap();
    assert_eq!(
        check.kind,
        edgemesh_proxy::CheckKind::Http {
            path: "/health".into(),
            host: None,
            expect: (204, 204)
        }
    );
    assert_eq!(
        (
            check.interval_ms,
            check.timeout_ms,
            check.healthy_threshold,
            check.unhealthy_threshold
        ),
        (1000, 500, 2, 3)
    );
    let files = c.table.pools.iter().find(|p| p.name == "files").unwrap();
    let tcp = files.health_check.as_ref().unwrap();
    assert_eq!(
        (&tcp.kind, tcp.interval_ms, tcp.timeout_ms),
        (&edgemesh_proxy::CheckKind::Tcp, 5000, 2000)
    );
    let r = c.table.routes.last().unwrap();
    assert_eq!(
        r.hsts,
        Some(edgemesh_proxy::Hsts {
            max_age_secs: 600,
            include_subdomains: false,
            preload: true
        })
    );
    assert_eq!((r.max_body_bytes, r.timeout_ms), (Some(1024), Some(7000)));
    let log = c.access_log.unwrap();
    assert_eq!(
        (log.format, log.path, log.sample),
        (edgemesh_proxy::LogFormat::Combined, None, 0.25)
    );
    assert!(parse_str(GOOD).unwrap().access_log.is_none());

    // Each bad value names its key and line.
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "[pools.api.health_check]\ntype = \"http\"\nexpect_status = \"600\"\n",
            "pools.api.health_check.expect_status",
            "expect_status",
            "within 100-599",
        ),
        (
            "[pools.api.health_check]\ntype = \"http\"\ninterval_ms = 1000\ntimeout_ms = 2000\n",
            "pools.api.health_check.timeout_ms",
            "timeout_ms",
            "between 10 and 1000",
        ),
        (
            "[pools.api.health_check]\ntype = \"tcp\"\npath = \"/x\"\n",
            "pools.api.health_check.path",
            "path",
            "type = \"http\" only",
        ),
        (
            "[pools.api.health_check]\ntype = \"http\"\npath = \"health\"\n",
            "pools.api.health_check.path",
            "path",
            "starting with '/'",
        ),
        (
            "[[routes]]\nhosts = [\"p.example.com\"]\npool = \"api\"\ntls = false\nhsts_max_age_secs = 60\n",
            "routes[2].hsts_max_age_secs",
            "hsts_max_age_secs",
            "tls = false",
        ),
        (
            "[[routes]]\nhosts = [\"p.example.com\"]\npool = \"api\"\nhsts_include_subdomains = true\n",
            "routes[2].hsts_include_subdomains",
            "hsts_include_subdomains",
            "needs hsts_max_age_secs",
        ),
        (
            "[[routes]]\nhosts = [\"p.example.com\"]\npool = \"api\"\ntimeout_secs = 0\n",
            "routes[2].timeout_secs",
            "timeout_secs",
            "between 1 and 86400",
        ),
        (
            "[access_log]\nsample = 1.5\n",
            "access_log.sample",
            "sample",
            "at most 1",
        ),
        (
            "[access_log]\npath = \"/nonexistent-dir/a.log\"\n",
            "access_log.path",
            "path",
            "/nonexistent-dir does not exist",
        ),
    ];
    for (extra, key, line_prefix, message) in cases {
        let src = format!("{GOOD}\n{extra}");
        let e = error_of(&src);
        assert_eq!(e.key.as_deref(), Some(*key), "{e}");
        // The key's own line (the last one starting with that name: GOOD may use it too).
        let line = src.lines().count()
            - src
                .lines()
                .rev()
                .position(|l| l.starts_with(line_prefix))
                .unwrap();
        assert_eq!(e.line, Some(line), "{e}");
        assert!(e.message.contains(message), "{e}");
    }
    // An unknown format is refused by the parser, with its line.
    let src = format!("{GOOD}\n[access_log]\nformat = \"xml\"\n");
    let e = error_of(&src);
    assert_eq!(e.line, Some(line_starting(&src, "format")), "{e}");
    assert!(e.message.contains("json"), "{e}");
}

fn with_doc(doc: &str) -> Result<Config, ConfigError> {
    let d = ClusterDoc {
        name: Path::new("routes.toml"),
        src: doc,
    };
    parse_with(Path::new("edge.toml"), GOOD, Some(d), &no_env)
}

#[test]
fn a_cluster_document_replaces_the_sections_it_holds_and_no_others() {
    let doc = "[[routes]]\nhosts = [\"new.example.com\"]\npool = \"web\"\n\n[pools.web]\nendpoints = [\"127.0.0.1:7000\"]\n\n[pools.files]\nendpoints = []\n";
    let c = with_doc(doc).unwrap();
    assert_eq!(c.table.routes.len(), 1);
    assert_eq!(c.table.routes[0].hosts, vec!["new.example.com".to_string()]);
    assert_eq!(c.table.pools.len(), 2);
    assert_eq!(c.tls_hosts, vec!["new.example.com".to_string()]);
    assert_eq!(c.shadowed, vec!["routes", "pools"]);
    // No `listeners` in the document: each node keeps its own.
    assert_eq!(c.listeners.len(), 3);
    assert_eq!(c.admin_addr, "127.0.0.1:9999".parse().unwrap());
}

#[test]
fn cluster_document_errors_name_the_document_or_the_file() {
    // The file's routes refer to a pool the document dropped: the file's line and key.
    let e = with_doc("[pools.web]\nendpoints = []\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "edge.toml:27: routes[0].pool: pool \"api\" is not defined under [pools]"
    );
    // Errors in the document name it, with its own lines.
    let e = with_doc("\n[[routes]]\nhosts = [\"a.example.com\"]\npool = \"nope\"\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "routes.toml:4: routes[0].pool: pool \"nope\" is not defined under [pools]"
    );
    let e = with_doc("[[routes]]\nhosts = \"a\"\n").unwrap_err();
    assert_eq!(
        (e.file.as_path(), e.line),
        (Path::new("routes.toml"), Some(2)),
        "{e}"
    );
    let e = with_doc("[pools.x]\nendpoints = [\n").unwrap_err();
    assert_eq!(e.file, Path::new("routes.toml"), "{e}");
    // Node-local sections stay in each node's file.
    for (section, line) in [("gossip", 3), ("node", 3), ("acme", 3)] {
        let e = with_doc(&format!("[pools.x]\nendpoints = []\n[{section}]\nx = 1\n")).unwrap_err();
        assert_eq!(e.line, Some(line), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("[{section}] is node-local")),
            "{e}"
        );
    }
}

#[test]
fn cluster_config_object_source_and_its_errors() {
    let src = format!(
        "{GOOD}\n[cluster_config]\ns3 = \"s3://edge-config/prod/routes.toml\"\nregion = \"eu-west-1\"\n"
    );
    let s = parse_str(&src).unwrap().config_source.unwrap();
    assert_eq!(
        (
            s.bucket.as_str(),
            s.key.as_str(),
            s.poll,
            s.region.as_deref()
        ),
        (
            "edge-config",
            "prod/routes.toml",
            Duration::from_secs(10),
            Some("eu-west-1")
        )
    );
    assert!(parse_str(GOOD).unwrap().config_source.is_none());
    // The environment wins; an empty value (a stack without an object) leaves the file's.
    let env = |k: &str| (k == "EDGEMESH_CONFIG_S3").then(|| "other-bucket/routes.toml".to_string());
    let c = parse(Path::new("edge.toml"), &src, &env).unwrap();
    assert_eq!(
        c.config_source.unwrap().url(),
        "s3://other-bucket/routes.toml"
    );
    let empty = |k: &str| (k == "EDGEMESH_CONFIG_S3").then(String::new);
    assert!(parse(Path::new("edge.toml"), GOOD, &empty)
        .unwrap()
        .config_source
        .is_none());

    // Errors name the key and its line, or the variable.
    let lines = GOOD.lines().count();
    let e = error_of(&format!(
        "{GOOD}\n[cluster_config]\ns3 = \"s3://Edge/routes.toml\"\n"
    ));
    assert_eq!(e.key.as_deref(), Some("cluster_config.s3"), "{e}");
    assert_eq!(e.line, Some(lines + 3), "{e}");
    assert!(e.to_string().contains("\"Edge\""), "{e}");
    let e = error_of(&format!(
        "{GOOD}\n[cluster_config]\ns3 = \"s3://edge/routes.toml\"\npoll_secs = 0\n"
    ));
    assert_eq!(e.key.as_deref(), Some("cluster_config.poll_secs"), "{e}");
    let bad_env = |k: &str| (k == "EDGEMESH_CONFIG_S3").then(|| "s3://bucket-only".to_string());
    let e = parse(Path::new("edge.toml"), GOOD, &bad_env).unwrap_err();
    assert!(
        e.to_string().contains("environment EDGEMESH_CONFIG_S3"),
        "{e}"
    );
    // It is node-local: a cluster document holding it is refused.
    let e = parse_with(
        Path::new("edge.toml"),
        GOOD,
        Some(ClusterDoc {
            name: Path::new("routes.toml"),
            src: "[cluster_config]\ns3 = \"s3://edge/routes.toml\"\n",
        }),
        &no_env,
    )
    .unwrap_err();
    assert!(
        e.to_string().starts_with("routes.toml:1: cluster_config"),
        "{e}"
    );
}
