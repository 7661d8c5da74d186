//! End-to-end tests: the real `edgemesh` binary, real clients and backends over loopback.
//! One test binary for the whole suite (link time matters on 2 cores).

/// `[node]` and `[gossip]` of a mesh member with fast timings: `{id}`, `{seeds}` (quoted
/// addresses) and `{keyfile}` are each test's; the ports are the harness's. Tests append
/// their own sections with `concat!`.
macro_rules! mesh_member_toml {
    () => {
        r#"
[node]
data_dir = "{data}"
admin_addr = "127.0.0.1:{admin}"
watch_config = false
drain_timeout_secs = 1

[gossip]
bind = "127.0.0.1:{gossip}"
sync_port = {sync}
sync_interval_secs = 1
node_id = "{id}"
seeds = [{seeds}]
key_file = "{keyfile}"
probe_period_ms = 200
probe_rtt_ms = 100
suspect_to_down_ms = 1000
expected_cluster_size = 6
bootstrap_expect = 3
"#
    };
}

mod acme;
mod acme_dns;
mod cluster_config;
mod config_source;
mod deploy;
mod dns;
mod ecs;
mod entrypoint;
mod hardening;
mod harness;
mod http;
mod lifecycle;
mod limits;
mod mesh;
mod tcp;

/// The config most tests start from. `{a}`, `{b}`, `{dead}` and `{echo}` are backend
/// addresses chosen by each test.
pub const BASE: &str = r#"
[node]
data_dir = "{data}"
admin_addr = "127.0.0.1:{admin}"
drain_timeout_secs = 10
watch_config = false

[[listeners]]
name = "web"
addr = "127.0.0.1:{http}"
kind = "http"

[[listeners]]
name = "websecure"
addr = "127.0.0.1:{https}"
kind = "https"

[[listeners]]
name = "echo"
addr = "127.0.0.1:{tcp}"
kind = "tcp"
pool = "echo"

[[routes]]
hosts = ["app.test"]
pool = "a"

[[routes]]
hosts = ["app.test"]
path_prefix = "/b/"
pool = "b"

[[routes]]
hosts = ["*.wild.test"]
pool = "b"
tls = false

[[routes]]
hosts = ["empty.test"]
pool = "empty"
tls = false

[[routes]]
hosts = ["dead.test"]
pool = "dead"
tls = false

[[routes]]
hosts = ["half.test"]
pool = "half"
tls = false

[[routes]]
hosts = ["plain.test"]
pool = "a"
tls = false

[pools.a]
endpoints = ["{a}"]

[pools.b]
endpoints = ["{b}"]

[pools.empty]
endpoints = []

[pools.dead]
endpoints = ["{dead}"]

[pools.half]
endpoints = ["{dead}", "{a}"]

[pools.echo]
endpoints = ["{echo}"]
"#;

/// Starts backends `a`, `b`, an echo backend, picks a refusing `dead` address, and a node on
/// `template` (usually [`BASE`]).
pub async fn setup(template: &str) -> Setup {
    let a = harness::backend("a").await;
    let b = harness::backend("b").await;
    let (echo, echo_conns) = harness::echo_backend().await;
    let dead = format!("127.0.0.1:{}", harness::free_port());
    let vars = vec![
        ("a", a.addr.to_string()),
        ("b", b.addr.to_string()),
        ("echo", echo.to_string()),
        ("dead", dead.clone()),
    ];
    let node = harness::node(template, &vars).await;
    Setup {
        node,
        a,
        b,
        echo_conns,
        vars,
    }
}

pub struct Setup {
    pub node: harness::Node,
    pub a: harness::Backend,
    pub b: harness::Backend,
    pub echo_conns: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub vars: Vec<(&'static str, String)>,
}

impl Setup {
    pub fn http(&self) -> String {
        self.node.addr("http").to_string()
    }
}
