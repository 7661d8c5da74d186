//! A lab of Linux network namespaces for fault tests: hosts joined by a bridge that lives in
//! a namespace of its own, with addresses (10.77.0.0/24) that exist only inside the lab.
//! Real processes run in the hosts (`ip netns exec`); faults come from the kernel (nftables
//! rules in a host's namespace) and from signals. Everything is removed on drop, also when a
//! test fails. Needs root (CI runs as root), iproute2 and nftables.
//!
//! Rust code of a test runs inside a host too: [`Lab::runtime`] gives a tokio runtime whose
//! threads have entered the host's namespace, so the load client ([`load`]), the task
//! backends ([`tasks`]) and the AWS fault proxy ([`aws::FaultProxy`]) open their sockets there.

pub mod aws;
pub mod load;
pub mod tasks;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// One host: a network namespace with one address on the lab's bridge.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
}

pub struct Lab {
    tag: String,
    switch: String,
    hosts: Vec<Host>,
    children: Vec<(String, Child)>,
    pub dir: tempfile::TempDir,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) -> Output {
    run(Command::new("ip").args(args))
}

/// Whether this machine can build a lab (root, `ip netns`, `nft`), probed once per process
/// (tests probing side by side with one probe name raced: one of them was skipped).
pub fn available() -> Result<(), String> {
    static PROBED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    PROBED.get_or_init(probe).clone()
}

fn probe() -> Result<(), String> {
    let probe = format!("emprobe{}", std::process::id() % 100_000);
    let made = Command::new("ip")
        .args(["netns", "add", &probe])
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if !made.status.success() {
        return Err(format!(
            "ip netns add: {}",
            String::from_utf8_lossy(&made.stderr).trim()
        ));
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).output();
    Command::new("nft")
        .arg("--version")
        .output()
        .map_err(|e| format!("nft: {e}"))?;
    Ok(())
}

impl Lab {
    /// A new lab; `tag` (a few letters) names its namespaces with this process's id.
    pub fn new(tag: &str) -> Lab {
        let tag = format!("{tag}{}", std::process::id() % 10_000);
        let switch = format!("em-{tag}-sw");
        ip(&["netns", "add", &switch]);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        ip(&["-n", &switch, "link", "set", "lo", "up"]);
        Lab {
            tag,
            switch,
            hosts: Vec::new(),
            children: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Adds a host at 10.77.0.`last` on the bridge (prefix /16: further addresses of the lab,
    /// such as ECS task addresses in 10.77.1.0/24, are on the same link).
    pub fn host(&mut self, name: &str, last: u8) -> Host {
        let ns = format!("em-{}-{name}", self.tag);
        let (outer, inner) = (
            format!("o{}{last}", self.tag),
            format!("i{}{last}", self.tag),
        );
        ip(&["netns", "add", &ns]);
        ip(&[
            "-n",
            &self.switch,
            "link",
            "add",
            &outer,
            "type",
            "veth",
            "peer",
            "name",
            &inner,
            "netns",
            &ns,
        ]);
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &outer,
            "master",
            "br0",
            "up",
        ]);
        let addr = format!("10.77.0.{last}/16");
        ip(&["-n", &ns, "addr", "add", &addr, "dev", &inner]);
        ip(&["-n", &ns, "link", "set", &inner, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let host = Host {
            name: name.to_string(),
            ns,
            ip: Ipv4Addr::new(10, 77, 0, last),
        };
        self.hosts.push(host.clone());
        host
    }

    /// Starts `program args` in `host`, output to `<dir>/<label>.log`; killed on drop.
    pub fn spawn(
        &mut self,
        host: &Host,
        label: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) {
        let log = std::fs::File::create(self.log_path(label)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &host.ns, program])
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        self.children.push((label.to_string(), child));
    }

    pub fn log_path(&self, label: &str) -> PathBuf {
        self.dir.path().join(format!("{label}.log"))
    }

    pub fn log(&self, label: &str) -> String {
        std::fs::read_to_string(self.log_path(label)).unwrap_or_default()
    }

    /// Sends `signal` (KILL, STOP, CONT, TERM) to the process started as `label`.
    pub fn signal(&mut self, label: &str, signal: &str) {
        let (_, child) = self
            .children
            .iter_mut()
            .find(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("no process {label}"));
        // `ip netns exec` execs the program: the child's pid is the program's.
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status();
        if signal == "KILL" {
            let _ = child.wait();
        }
    }

    /// Runs `program args` in `host` and returns its output.
    pub fn exec(&self, host: &Host, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &host.ns, program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"))
    }

    /// An HTTP request from inside `host` (curl): (status, body); status 0 when it failed.
    pub fn http(&self, host: &Host, method: &str, url: &str, body: Option<&str>) -> (u16, String) {
        let mut args = vec!["-s", "-m", "5", "-X", method, "-w", "\n%{http_code}", url];
        if let Some(b) = body {
            args.extend(["--data-binary", b]);
        }
        let out = self.exec(host, "curl", &args);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// Cuts `a` off from `b` both ways (nftables in every host of both sides); the hosts
    /// outside both sides still reach everyone.
    pub fn partition(&self, a: &[&Host], b: &[&Host]) {
        for (side, other) in [(a, b), (b, a)] {
            let ips: Vec<String> = other.iter().map(|h| h.ip.to_string()).collect();
            let set = ips.join(", ");
            for h in side {
                let rules = format!(
                    "table inet emchaos {{\n chain in {{ type filter hook input priority 0; ip saddr {{ {set} }} drop\n }}\n chain out {{ type filter hook output priority 0; ip daddr {{ {set} }} drop\n }}\n}}\n"
                );
                self.nft(h, &rules);
            }
        }
    }

    /// Drops `percent`% of the packets arriving at `host`, at random. Applied to every host,
    /// each datagram between two hosts is lost with that probability once (the loss model
    /// of the gossip simulation), not twice (once leaving, once arriving).
    pub fn loss(&self, host: &Host, percent: u8) {
        let rules = format!(
            "table inet emchaos {{\n chain in {{ type filter hook input priority 0; iifname != \"lo\" numgen random mod 100 < {percent} drop\n }}\n}}\n"
        );
        self.nft(host, &rules);
    }

    /// Removes every fault rule and rate limit.
    pub fn heal(&self) {
        for h in &self.hosts {
            let _ = self.exec(h, "nft", &["delete", "table", "inet", "emchaos"]);
            let _ = self.exec(h, "tc", &["qdisc", "del", "dev", &self.iface(h), "root"]);
        }
    }

    /// Sets `host`'s link to the bridge down or up (its address stays).
    pub fn link(&self, host: &Host, up: bool) {
        let state = if up { "up" } else { "down" };
        let out = self.exec(host, "ip", &["link", "set", &self.iface(host), state]);
        assert!(out.status.success(), "link {state} in {}", host.name);
    }

    /// Limits what `host` sends to `rate` (tc's token bucket filter, e.g. "1mbit").
    pub fn rate_limit(&self, host: &Host, rate: &str) {
        let out = self.exec(
            host,
            "tc",
            &[
                "qdisc",
                "replace",
                "dev",
                &self.iface(host),
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "32kbit",
                "latency",
                "400ms",
            ],
        );
        assert!(
            out.status.success(),
            "tbf in {}: {}",
            host.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn nft(&self, host: &Host, rules: &str) {
        let _ = self.exec(host, "nft", &["delete", "table", "inet", "emchaos"]);
        let path = self.dir.path().join(format!("{}.nft", host.name));
        std::fs::write(&path, rules).unwrap();
        let out = self.exec(host, "nft", &["-f", &path.display().to_string()]);
        assert!(
            out.status.success(),
            "nft in {}: {}",
            host.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A tokio runtime whose threads live in `host`'s network namespace. Run work on it with
    /// [`NsRuntime::run`] or `spawn`: a future polled by `block_on` itself would run on the
    /// caller's thread, outside the namespace.
    pub fn runtime(&self, host: &Host) -> NsRuntime {
        let path = format!("/var/run/netns/{}", host.ns);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || enter(&path))
            .build()
            .unwrap();
        NsRuntime { rt }
    }

    /// Adds `ip`/16 to `host` (for example an ECS task's address).
    pub fn add_addr(&self, host: &Host, ip: std::net::IpAddr) {
        let iface = self.iface(host);
        let addr = format!("{ip}/16");
        let out = self.exec(host, "ip", &["addr", "add", &addr, "dev", &iface]);
        assert!(
            out.status.success() || String::from_utf8_lossy(&out.stderr).contains("exists"),
            "ip addr add {addr} in {}: {}",
            host.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The name of `host`'s link to the bridge, inside its namespace.
    pub fn iface(&self, host: &Host) -> String {
        format!("i{}{}", self.tag, host.ip.octets()[3])
    }
}

/// Moves the calling thread into the network namespace at `path` (`setns(2)`).
fn enter(path: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: setns on a valid namespace fd; it affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// See [`Lab::runtime`].
pub struct NsRuntime {
    rt: tokio::runtime::Runtime,
}

impl NsRuntime {
    /// Runs `f` on a thread of the namespace and waits for it.
    pub fn run<F>(&self, f: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.block_on(self.rt.spawn(f)).expect("task panicked")
    }

    /// Starts `f` in the namespace and returns at once.
    pub fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.spawn(f)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.switch])
            .output();
    }
}

/// Polls `f` every 200 ms until it returns `Some`, or panics naming `what` after `within`.
pub fn wait_for<T>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, start.elapsed());
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The endpoints (`ip:port`) of pool `name` in a node's `/status` JSON.
pub fn pool_endpoints(
    status: &serde_json::Value,
    name: &str,
) -> std::collections::BTreeSet<String> {
    status["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == name)
        .flat_map(|p| p["endpoints"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["addr"].as_str().map(str::to_string))
        .collect()
}

/// One row of CHAOS.md.
pub struct Row {
    pub scenario: String,
    pub invariant: String,
    pub result: String,
    pub figures: String,
}

/// Appends `row` to the report this run writes (`CHAOS_REPORT`, default
/// `target/chaos-report.md`) and prints it.
pub fn report(row: &Row) {
    let line = format!(
        "| {} | {} | {} | {} |\n",
        row.scenario, row.invariant, row.result, row.figures
    );
    print!("CHAOS {line}");
    let path = std::env::var("CHAOS_REPORT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/chaos-report.md").to_string()
    });
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}
