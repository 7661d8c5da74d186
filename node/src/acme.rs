//! ACME in the mesh: the acting leader orders certificates for the route hosts, publishes the
//! HTTP-01 tokens into the cluster state (every node answers them) or the DNS-01 records into
//! Route53, and publishes each certificate under `cert/<host>` and its order status under
//! `acme/status/<host>`. Every node serves what the state holds and keeps a copy
//! in its data directory (key files mode 0600), so it serves at once after a restart.
//!
//! Keep the last good state: a failed order leaves the current certificate in place, is
//! logged and retried with back-off; a certificate is replaced only by a newer one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgemesh_acme::{
    cert_id, issue, open_account, resume, Acme, ChallengeStore, DirectoryConfig, DnsSolver, Due,
    Failure, NoDns, OrderSpec, Schedule, Validity,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::ecs::model::{decode, encode};

use crate::ecs::Publisher;

pub const CERT_PREFIX: &str = "cert/";
pub const TOKEN_PREFIX: &str = "acme/token/";
pub const ACCOUNT_KEY: &str = "acme/account";
/// An order about to be finalized: its URL and key, so the next leader can resume it.
pub const PENDING_PREFIX: &str = "acme/pending/";
/// The last order per certificate, written by the leader ([`OrderStatus`]).
pub const STATUS_PREFIX: &str = "acme/status/";
/// What each node serves, written by that node: `held/<node id>` ([`Held`]).
pub const HELD_PREFIX: &str = "held/";

/// A certificate's order history as the leader last wrote it (Unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderStatus {
    pub names: Vec<String>,
    pub last_attempt: Option<i64>,
    pub last_success: Option<i64>,
    pub last_error: Option<String>,
    pub rate_limited: bool,
    /// Failures in a row.
    pub failures: u32,
    /// When it renews (or retries), and by what: "ari" (the CA's window), "lifetime",
    /// "back-off", "retry-after".
    pub next: Option<i64>,
    pub next_by: String,
}

/// The ACME certificates one node serves: first name -> notAfter.
pub type Held = BTreeMap<String, i64>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    order_url: String,
    key_pem: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AcmeSettings {
    pub directory: String,
    pub contact: Vec<String>,
    pub root_pem: Option<PathBuf>,
    pub propagation: Duration,
    pub renew_fraction: f64,
    /// Renew once a certificate is this old, if that comes first.
    pub renew_after: Option<Duration>,
    /// Certificates holding several names; hosts not listed get one each.
    pub certificates: Vec<Vec<String>>,
    /// DNS-01 for every name (wildcards use it regardless).
    pub dns01: bool,
    pub profile: Option<String>,
    /// External Account Binding: key id and raw HMAC key.
    pub eab: Option<(String, Vec<u8>)>,
    /// The DNS-01 solver's Route53 hosted zone id and API region.
    pub route53: Option<(String, Option<String>)>,
}

/// The certificates to hold: the configured name sets, then one per TLS host none covers
/// (wildcard hosts only with a DNS-01 solver, the one challenge that validates them).
pub fn certificate_sets(settings: &AcmeSettings, tls_hosts: &[String]) -> Vec<Vec<String>> {
    let mut sets = settings.certificates.clone();
    for h in tls_hosts {
        let validatable = !h.starts_with('*') || settings.route53.is_some();
        if validatable && h != "*" && !sets.iter().any(|s| s.contains(h)) {
            sets.push(vec![h.clone()]);
        }
    }
    sets
}

/// A certificate as the leader publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    pub names: Vec<String>,
    pub chain_pem: String,
    pub key_pem: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// HTTP-01 answers in the cluster state.
struct StateChallenges {
    publisher: Arc<dyn Publisher>,
    propagation: Duration,
    host: String,
}

impl ChallengeStore for StateChallenges {
    async fn put(&self, token: &str, key_authorization: &str) -> Result<(), String> {
        self.publisher.publish(
            &format!("{TOKEN_PREFIX}{token}"),
            key_authorization.as_bytes().to_vec(),
        )?;
        // Broadcasts reach every node in well under a second (BENCHMARKS.md); give them
        // this long before the CA's validator may ask any of them.
        tokio::time::sleep(self.propagation).await;
        Ok(())
    }

    async fn remove(&self, token: &str) {
        let _ = self.publisher.delete(&format!("{TOKEN_PREFIX}{token}"));
    }

    async fn before_finalize(&self, order_url: &str, key_pem: &str) -> Result<(), String> {
        let pending = Pending {
            order_url: order_url.to_string(),
            key_pem: key_pem.to_string(),
        };
        self.publisher
            .publish(&format!("{PENDING_PREFIX}{}", self.host), encode(&pending))
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What the loop asks the daemon for every turn.
pub trait AcmeHost: Publisher {
    /// The settings and the certificates to hold (each a list of names, the first naming it),
    /// from the running configuration.
    fn plan(
        &self,
    ) -> impl std::future::Future<Output = Option<(AcmeSettings, Vec<Vec<String>>)>> + Send;
    /// What this node itself holds (from its disk after a restart, or the state): after a
    /// whole-cluster restart the state is empty, and these must not be ordered again.
    fn local_cert(&self, host: &str) -> Option<CertRecord>;
    fn local_account(&self) -> Option<String>;
    /// An order for `host` is placed (metrics).
    fn order_started(&self, host: &str);
    /// The outcome of an order for `host` (metrics).
    fn order_done(&self, host: &str, outcome: Result<(), &edgemesh_acme::AcmeError>);
}

/// The DNS-01 solver the settings name: Route53, given time to reach the CA's resolvers after
/// INSYNC, or none.
enum Dns {
    None,
    Route53(crate::route53::Route53, Duration),
}

impl DnsSolver for Dns {
    async fn present(&self, name: &str, value: &str) -> Result<(), String> {
        match self {
            Dns::None => NoDns.present(name, value).await,
            Dns::Route53(r, settle) => {
                r.present(name, value).await?;
                tokio::time::sleep(*settle).await;
                Ok(())
            }
        }
    }

    async fn cleanup(&self, name: &str, value: &str) {
        if let Dns::Route53(r, _) = self {
            r.cleanup(name, value).await;
        }
    }
}

fn validity(c: &CertRecord) -> Validity {
    Validity {
        not_before: c.not_before,
        not_after: c.not_after,
    }
}

/// Orders and renews while this node is the acting leader, forever.
pub async fn run<H: AcmeHost + 'static>(host: Arc<H>) {
    let mut account: Option<(DirectoryConfig, Acme)> = None;
    let mut dns: (Option<(String, Option<String>)>, Arc<Dns>) = (None, Arc::new(Dns::None));
    let mut schedules: BTreeMap<String, Schedule> = BTreeMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some((settings, hosts)) = host.plan().await else {
            continue;
        };
        if !host.acting() {
            continue;
        }
        let cfg = DirectoryConfig {
            url: settings.directory.clone(),
            contact: settings.contact.clone(),
            root_pem: settings.root_pem.clone(),
            eab: settings.eab.clone(),
        };
        let same_ca = |a: &DirectoryConfig| a.url == cfg.url && a.root_pem == cfg.root_pem;
        if account.as_ref().is_none_or(|(a, _)| !same_ca(a)) {
            let stored = host
                .get(ACCOUNT_KEY)
                .and_then(|b| String::from_utf8(b).ok())
                .or_else(|| host.local_account());
            match open_account(&cfg, stored.as_deref()).await {
                Ok((acct, creds)) => {
                    if stored.as_deref() != Some(creds.as_str()) {
                        let _ = host.publish(ACCOUNT_KEY, creds.into_bytes());
                    }
                    account = Some((cfg.clone(), acct));
                }
                Err(e) => {
                    warn!(error = %e, directory = %cfg.url, "ACME account unavailable");
                    continue;
                }
            }
        }
        if dns.0 != settings.route53 {
            let solver = match &settings.route53 {
                None => Dns::None,
                Some((zone, region)) => Dns::Route53(
                    crate::route53::Route53::new(zone, region.as_deref()).await,
                    settings.propagation,
                ),
            };
            dns = (settings.route53.clone(), Arc::new(solver));
        }
        let (_, acct) = account.as_ref().expect("opened above");
        for set in hosts {
            if !host.acting() {
                break;
            }
            let name = set[0].clone();
            let schedule = schedules
                .entry(name.clone())
                .or_insert_with(|| Schedule::new(fastrand::f64()));
            let key = format!("{CERT_PREFIX}{name}");
            let in_state = host.get(&key).and_then(|b| decode::<CertRecord>(&b));
            let current = match (in_state, host.local_cert(&name)) {
                (Some(s), Some(l)) if l.not_after > s.not_after => Some(l),
                (Some(s), _) => Some(s),
                (None, Some(l)) => {
                    // A restarted cluster: share what this node kept instead of ordering.
                    if host.publish(&key, encode(&l)).is_ok() {
                        info!(host = %name, "certificate from this node's disk shared again");
                    }
                    Some(l)
                }
                (None, None) => None,
            };
            let now = unix_now();
            if let Some(c) = &current {
                if schedule.wants_window(now, validity(c)) {
                    let window = match acct.renewal_window(&c.chain_pem).await {
                        Ok(w) => w.map(|w| ((w.start, w.end), w.check_after.as_secs())),
                        Err(e) => {
                            warn!(host = %name, error = %e, "renewal information unavailable; the lifetime rule applies");
                            None
                        }
                    };
                    schedule.set_window(now, validity(c), window);
                }
            }
            let fraction = settings.renew_fraction;
            let max_age = settings.renew_after.map(|d| d.as_secs());
            let status_key = format!("{STATUS_PREFIX}{name}");
            let mut status = host
                .get(&status_key)
                .and_then(|b| decode::<OrderStatus>(&b))
                .unwrap_or_default();
            let before = status.clone();
            status.names = set.clone();
            let due = schedule.due(now, current.as_ref().map(validity), fraction, max_age);
            if let Due::At(at) = due {
                // Renewal point or end of back-off, for `meshctl certs`.
                if status.failures == 0 {
                    status.next = Some(at);
                    status.next_by = if schedule.has_window() {
                        "ari"
                    } else {
                        "lifetime"
                    }
                    .into();
                }
                if status != before {
                    let _ = host.publish(&status_key, encode(&status));
                }
                continue;
            }
            let store = StateChallenges {
                publisher: host.clone(),
                propagation: settings.propagation,
                host: name.clone(),
            };
            let pending_key = format!("{PENDING_PREFIX}{name}");
            // A previous leader may have died after asking the CA to issue: finish its order
            // rather than placing another (the certificate is issued once).
            let resumed = match host.get(&pending_key).and_then(|b| decode::<Pending>(&b)) {
                None => Ok(None),
                Some(p) => match resume(
                    acct,
                    &p.order_url,
                    &p.key_pem,
                    &set,
                    Duration::from_secs(60),
                )
                .await
                {
                    Ok(Some(i)) => {
                        info!(host = %name, order = %p.order_url, "resumed the previous leader's order");
                        Ok(Some(i))
                    }
                    Ok(None) => Ok(None),
                    // The CA may have issued on it: a new order now could issue a second
                    // certificate, so this round fails and the next one asks again, up to
                    // MAX_RESUME_FAILURES rounds.
                    Err(e) if resume_again(&e, status.failures) => {
                        warn!(host = %name, error = %e, "previous order not resumable yet; asking again after the back-off");
                        Err(e)
                    }
                    Err(e) => {
                        warn!(host = %name, error = %e, "previous leader's order not resumable; ordering anew");
                        Ok(None)
                    }
                },
            };
            let result = match resumed {
                Ok(Some(i)) => Ok(i),
                Err(e) => Err(e),
                Ok(None) => {
                    let spec = OrderSpec {
                        names: set.clone(),
                        dns01: settings.dns01,
                        profile: settings.profile.clone(),
                        replaces: current.as_ref().and_then(|c| cert_id(&c.chain_pem)),
                    };
                    info!(host = %name, renewal = current.is_some(), "ACME order starts");
                    host.order_started(&name);
                    issue(acct, &spec, &store, &*dns.1, Duration::from_secs(60)).await
                }
            };
            status.last_attempt = Some(unix_now());
            match result {
                Ok(i) => {
                    let record = CertRecord {
                        names: set.clone(),
                        chain_pem: i.chain_pem,
                        key_pem: i.key_pem,
                        not_before: i.validity.not_before,
                        not_after: i.validity.not_after,
                    };
                    match host.publish(&key, encode(&record)) {
                        Ok(()) => {
                            info!(host = %name, not_after = record.not_after, "certificate issued and shared")
                        }
                        Err(e) => {
                            warn!(host = %name, error = %e, "certificate issued but not published (leadership lost)")
                        }
                    }
                    // Done with it: a later leader must not resume this order.
                    let _ = host.delete(&pending_key);
                    host.order_done(&name, Ok(()));
                    schedule.succeeded();
                    status.last_success = status.last_attempt;
                    status.last_error = None;
                    status.rate_limited = false;
                    status.failures = 0;
                    status.next = None;
                    status.next_by = String::new();
                }
                Err(e) => {
                    host.order_done(&name, Err(&e));
                    let wait = schedule.failed(
                        unix_now(),
                        Failure {
                            rate_limited: e.rate_limited,
                            retry_after: e.retry_after.map(|d| d.as_secs()),
                        },
                    );
                    warn!(host = %name, step = e.step, rate_limited = e.rate_limited, error = %e.message,
                        retry_in_secs = wait, "ACME order failed; the current certificate stays");
                    status.last_error = Some(e.to_string());
                    status.rate_limited = e.rate_limited;
                    status.failures = schedule.failures();
                    status.next = Some(unix_now() + wait);
                    status.next_by = if e.retry_after.is_some() {
                        "retry-after"
                    } else {
                        "back-off"
                    }
                    .into();
                }
            }
            let _ = host.publish(&status_key, encode(&status));
        }
    }
}

/// Failed rounds on a recorded order before a new one is placed instead.
const MAX_RESUME_FAILURES: u32 = 3;

/// Whether a recorded order that failed to resume is asked again (the round fails) rather
/// than replaced by a new order: when the failure says nothing about the order itself (a
/// transient error) or came after the CA accepted it (finalize, certificate), for a few
/// rounds. A missing or refused order is replaced at once.
fn resume_again(e: &edgemesh_acme::AcmeError, failures: u32) -> bool {
    (e.transient || matches!(e.step, "finalize" | "certificate")) && failures < MAX_RESUME_FAILURES
}

/// Writes `record` as `dir/<host>.crt` and `dir/<host>.key` (0600), atomically.
pub fn persist(dir: &Path, host: &str, record: &CertRecord) -> std::io::Result<()> {
    // The key first: a chain on disk always has its key beside it.
    write_private(dir, &format!("{host}.key"), &record.key_pem, 0o600)?;
    write_private(dir, &format!("{host}.crt"), &record.chain_pem, 0o644)
}

/// Writes the ACME account credentials as `dir/account.json` (0600), atomically.
pub fn persist_account(dir: &Path, json: &str) -> std::io::Result<()> {
    write_private(dir, "account.json", json, 0o600)
}

fn write_private(dir: &Path, name: &str, body: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(body.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))
}

/// The certificates kept in `dir` (cold start before the mesh answers).
pub fn load_dir(dir: &Path) -> Vec<(String, CertRecord)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let path = e.path();
        let Some(host) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".crt"))
            .filter(|n| !n.starts_with('.'))
        else {
            continue;
        };
        let (Ok(chain_pem), Ok(key_pem)) = (
            std::fs::read_to_string(&path),
            std::fs::read_to_string(dir.join(format!("{host}.key"))),
        ) else {
            continue;
        };
        let Some(v) = Validity::of_pem(&chain_pem) else {
            warn!(file = %path.display(), "stored certificate does not parse; ignored");
            continue;
        };
        out.push((
            host.to_string(),
            CertRecord {
                names: vec![host.to_string()],
                chain_pem,
                key_pem,
                not_before: v.not_before,
                not_after: v.not_after,
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_order_is_asked_again_unless_it_is_gone() {
        let e = |step: &'static str, transient: bool| edgemesh_acme::AcmeError {
            step,
            message: "x".into(),
            rate_limited: false,
            transient,
            retry_after: None,
        };
        // The CA may have issued on it: ask again, for a few rounds.
        assert!(resume_again(&e("certificate", false), 0));
        assert!(resume_again(&e("finalize", false), 2));
        assert!(resume_again(&e("resume order", true), 0));
        assert!(!resume_again(&e("certificate", false), MAX_RESUME_FAILURES));
        // The order is gone or refused, or the stored key is bad: order anew now.
        assert!(!resume_again(&e("resume order", false), 0));
        assert!(!resume_again(&e("stored key", false), 0));
    }

    #[test]
    fn name_sets_first_then_one_certificate_per_remaining_host() {
        let settings = AcmeSettings {
            directory: "https://ca.test/dir".into(),
            contact: vec![],
            root_pem: None,
            propagation: Duration::from_secs(1),
            renew_fraction: 2.0 / 3.0,
            renew_after: None,
            certificates: vec![vec!["shop.test".into(), "www.shop.test".into()]],
            dns01: false,
            profile: None,
            eab: None,
            route53: None,
        };
        let hosts: Vec<String> = ["www.shop.test", "api.test", "*.apps.test"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            certificate_sets(&settings, &hosts),
            vec![
                vec!["shop.test".to_string(), "www.shop.test".to_string()],
                vec!["api.test".to_string()],
            ]
        );
        // With a DNS-01 solver, the wildcard host gets its certificate too.
        let dns = AcmeSettings {
            route53: Some(("Z1".into(), None)),
            ..settings
        };
        assert_eq!(
            certificate_sets(&dns, &hosts).last().unwrap(),
            &vec!["*.apps.test".to_string()]
        );
    }
}
