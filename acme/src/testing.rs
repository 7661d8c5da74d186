//! A pebble (Let's Encrypt's test CA) on loopback for tests, here and in the node's
//! end-to-end suite (feature `testing`). Its challenge server's DNS answers every name with
//! 127.0.0.1, so HTTP-01 validations reach `http_port` on loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::DirectoryConfig;

/// A loopback port free for both TCP and UDP, for a test process to bind soon.
///
/// Taken below Linux's ephemeral range (32768-60999), from a counter this process starts at
/// its own offset: a port the kernel hands out (an outgoing connection, `bind(0)`) never
/// lands on it between this probe and the bind, nor does another test's pick. Probing with
/// `bind(0)` did: a node's UDP gossip port was once taken by then.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() % 60) * 200,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

/// pebble and its challenge test server (for DNS); killed on drop.
pub struct Pebble {
    children: Vec<Child>,
    pub directory: String,
    /// pebble's own HTTPS CA (PEM), to trust its directory and management API.
    pub root: std::path::PathBuf,
    pub management: std::net::SocketAddr,
    /// pebble-challtestsrv's management API (`/set-txt`, `/clear-txt`): the DNS pebble
    /// validates DNS-01 against.
    pub challenge_management: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A CA and a leaf for pebble's own HTTPS (localhost, `ip`): PEM files in `dir`.
fn pebble_tls(dir: &Path, ip: IpAddr) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "edgemesh test: pebble's TLS CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), ip.to_string()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

impl Pebble {
    /// `http_port`: where pebble validates HTTP-01; `env`: pebble's fault switches.
    pub fn start(http_port: u16, env: &[(&str, &str)]) -> Pebble {
        Pebble::start_with(http_port, env, serde_json::json!({}))
    }

    /// As [`Pebble::start`], with `extra` merged into pebble's configuration (for example
    /// `externalAccountBindingRequired` and `externalAccountMACKeys`).
    pub fn start_with(http_port: u16, env: &[(&str, &str)], extra: serde_json::Value) -> Pebble {
        Pebble::start_on(Ipv4Addr::LOCALHOST.into(), http_port, env, extra, None)
    }

    /// As [`Pebble::start_with`], listening on `ip` (which must be an address of the calling
    /// thread's network namespace; the processes start in it), with the challenge server's
    /// DNS answering every name with `default_ipv4` (None: 127.0.0.1) for HTTP-01.
    pub fn start_on(
        ip: IpAddr,
        http_port: u16,
        env: &[(&str, &str)],
        extra: serde_json::Value,
        default_ipv4: Option<Ipv4Addr>,
    ) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        pebble_tls(dir.path(), ip);
        let (acme, mgmt, tls, dns, chall_mgmt) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let mut config = serde_json::json!({ "pebble": {
            "listenAddress": SocketAddr::new(ip, acme),
            "managementListenAddress": SocketAddr::new(ip, mgmt),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if let (Some(p), Some(extra)) = (config["pebble"].as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                p.insert(k.clone(), v.clone());
            }
        }
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let chall = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &SocketAddr::new(ip, chall_mgmt).to_string(),
                "-defaultIPv4",
                &default_ipv4.unwrap_or(Ipv4Addr::LOCALHOST).to_string(),
                "-defaultIPv6",
                "",
            ])
            .stdout(log("challtestsrv.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (Debian package pebble; scripts/test.sh installs it)");
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let pebble = cmd.spawn().expect("pebble");
        let p = Pebble {
            children: vec![chall, pebble],
            directory: format!("https://{}/dir", SocketAddr::new(ip, acme)),
            root: dir.path().join("ca.pem"),
            management: SocketAddr::new(ip, mgmt),
            challenge_management: SocketAddr::new(ip, chall_mgmt),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        // Every port a test uses: the directory, pebble's management API (roots) and the
        // challenge server's (TXT records). pebble opens them one after another.
        while [acme, mgmt, chall_mgmt]
            .iter()
            .any(|p| std::net::TcpStream::connect((ip, *p)).is_err())
        {
            assert!(Instant::now() < deadline, "pebble did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    /// Certificates pebble has issued so far (from its log).
    pub fn issued(&self) -> usize {
        self.log().matches("Issued certificate serial").count()
    }

    /// What pebble has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("pebble.log")).unwrap_or_default()
    }

    pub fn config(&self) -> DirectoryConfig {
        DirectoryConfig {
            url: self.directory.clone(),
            contact: vec!["mailto:ops@edge.test".into()],
            root_pem: Some(self.root.clone()),
            eab: None,
        }
    }
}

/// Sets (`value` Some) or clears a TXT record in pebble-challtestsrv's DNS, through its
/// management API (plain HTTP on loopback). `name` without the trailing dot.
pub fn challtestsrv_txt(management: std::net::SocketAddr, name: &str, value: Option<&str>) {
    use std::io::{Read, Write};
    let (path, body) = match value {
        Some(v) => (
            "/set-txt",
            serde_json::json!({ "host": format!("{name}."), "value": v }),
        ),
        None => (
            "/clear-txt",
            serde_json::json!({ "host": format!("{name}.") }),
        ),
    };
    let body = body.to_string();
    let mut s = std::net::TcpStream::connect(management).expect("challtestsrv management");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut rsp = String::new();
    let _ = s.read_to_string(&mut rsp);
    assert!(
        rsp.starts_with("HTTP/1.1 200"),
        "challtestsrv {path}: {rsp}"
    );
}
