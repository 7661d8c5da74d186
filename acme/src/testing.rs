//! A pebble (Let's Encrypt's test CA) on loopback for tests, here and in the node's
//! end-to-end suite (feature `testing`). Its challenge server's DNS answers every name with
//! 127.0.0.1, so HTTP-01 validations reach `http_port` on loopback.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::DirectoryConfig;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// pebble and its challenge test server (for DNS); killed on drop.
pub struct Pebble {
    children: Vec<Child>,
    pub directory: String,
    /// pebble's own HTTPS CA (PEM), to trust its directory and management API.
    pub root: std::path::PathBuf,
    pub management: std::net::SocketAddr,
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

/// A CA and a leaf for pebble's own HTTPS (localhost, 127.0.0.1): PEM files in `dir`.
fn pebble_tls(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "edgemesh test: pebble's TLS CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
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
        let dir = tempfile::tempdir().unwrap();
        pebble_tls(dir.path());
        let (acme, mgmt, tls, dns, chall_mgmt) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{acme}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
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
                &format!("127.0.0.1:{chall_mgmt}"),
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
            directory: format!("https://127.0.0.1:{acme}/dir"),
            root: dir.path().join("ca.pem"),
            management: std::net::SocketAddr::from(([127, 0, 0, 1], mgmt)),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", acme)).is_err() {
            assert!(Instant::now() < deadline, "pebble did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    /// Certificates pebble has issued so far (from its log).
    pub fn issued(&self) -> usize {
        std::fs::read_to_string(self._dir.path().join("pebble.log"))
            .unwrap_or_default()
            .matches("Issued certificate serial")
            .count()
    }

    pub fn config(&self) -> DirectoryConfig {
        DirectoryConfig {
            url: self.directory.clone(),
            contact: vec!["mailto:ops@edge.test".into()],
            root_pem: Some(self.root.clone()),
        }
    }
}
