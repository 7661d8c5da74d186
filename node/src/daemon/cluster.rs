//! The daemon's side of the cluster-wide configuration ([`crate::cluster_config`]): commit
//! changes as leader, forward them as a proposal otherwise, apply each new live version (or
//! refuse it and keep the last good one), and report what runs here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::{unix_now, Daemon, ReloadOutcome, ResultLabel};
use crate::cluster_config::{
    self as cc, Applied, ConfigVersion, ObjectSource, ObjectStep, Outcome, Proposal, SourceOutcome,
    SourceSeen, Step, APPLIED_PREFIX, OUTCOME_PREFIX, PROPOSAL_PREFIX, SOURCE_KEY, VERSION_PREFIX,
};
use crate::config::{self, ClusterDoc};
use crate::ecs::model::{decode, encode};
use crate::ecs::Publisher;

/// What this node knows of the cluster configuration besides the state.
#[derive(Debug, Default)]
pub(super) struct Local {
    /// The version running here.
    pub applied: Option<ConfigVersion>,
    /// The last live version looked at, applied or refused: (version, hash).
    pub considered: Option<(u64, String)>,
    pub rejected: Option<(u64, String)>,
}

/// Why a change was not committed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The document does not validate on the node asked (HTTP 422).
    #[error("{0}")]
    Invalid(String),
    /// Another change landed since the version this one replaces (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// No acting leader answered (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
    /// No such version in the history (HTTP 404).
    #[error("{0}")]
    NotFound(String),
}

/// The file a node keeps its running cluster version in, for a cold start.
fn persisted(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster-config.json")
}

/// The cluster version this node ran before it stopped, if any.
pub(super) fn load_persisted(data_dir: &Path) -> Option<ConfigVersion> {
    let text = std::fs::read_to_string(persisted(data_dir)).ok()?;
    match serde_json::from_str(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            warn!(file = %persisted(data_dir).display(), error = %e, "kept cluster configuration unreadable; ignored");
            None
        }
    }
}

fn persist(data_dir: &Path, v: &ConfigVersion) -> std::io::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let tmp = data_dir.join("cluster-config.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(v).expect("plain data"))?;
    std::fs::rename(tmp, persisted(data_dir))
}

/// The node's configuration, with `v`'s routing sections when given; errors in those name
/// the version (`cluster config v4 (routes.toml):3: routes[0].pool: ...`).
pub(super) fn load_version(
    path: &Path,
    v: Option<&ConfigVersion>,
) -> Result<config::Config, config::ConfigError> {
    let name = v.map(|v| PathBuf::from(format!("cluster config v{} ({})", v.version, v.source)));
    let doc = v
        .zip(name.as_deref())
        .map(|(v, name)| ClusterDoc { name, src: &v.doc });
    config::load_with(path, doc, &super::env)
}

impl Daemon {
    fn versions(&self) -> Vec<ConfigVersion> {
        let state = self.cluster_state.lock().expect("state lock");
        state
            .leader_entries(VERSION_PREFIX)
            .filter_map(|(_, b)| decode::<ConfigVersion>(b))
            .collect()
    }

    /// The live version in the replicated state: the last key (keys sort by version), so
    /// only its document is decoded.
    pub fn live_config(&self) -> Option<ConfigVersion> {
        let state = self.cluster_state.lock().expect("state lock");
        let (_, bytes) = state.leader_entries(VERSION_PREFIX).last()?;
        decode(bytes)
    }

    /// The versions kept, newest first.
    pub fn config_history(&self) -> Vec<ConfigVersion> {
        let mut v = self.versions();
        v.sort_by_key(|v| std::cmp::Reverse(v.version));
        v
    }

    /// Live version, what every node reports running, and the members that have not reported.
    pub fn config_status_json(&self) -> serde_json::Value {
        let live = self.live_config();
        let nodes: std::collections::BTreeMap<String, Applied> = {
            let state = self.cluster_state.lock().expect("state lock");
            state
                .prefix(APPLIED_PREFIX)
                .filter_map(|(k, b)| {
                    Some((k[APPLIED_PREFIX.len()..].to_string(), decode::<Applied>(b)?))
                })
                .collect()
        };
        let mut members: Vec<String> = match self.mesh_status() {
            Some(m) => std::iter::once(&m.me)
                .chain(&m.members)
                .map(|s| s.id.clone())
                .collect(),
            None => vec!["local".into()],
        };
        members.sort();
        let source = self.get(SOURCE_KEY).and_then(|b| decode::<SourceSeen>(&b));
        serde_json::json!({
            "source": source,
            "live": live.map(|v| serde_json::json!({
                "version": v.version, "hash": v.hash, "source": v.source,
                "node": v.node, "author": v.author, "at": v.at,
            })),
            "nodes": nodes,
            "members": members,
        })
    }

    /// Validates `doc` with this node's file, as `edgemesh check-config` would: the hash of
    /// the document, or the error naming `name`, the line and the key.
    pub async fn check_config(&self, name: &str, doc: &str) -> Result<String, String> {
        if doc.len() > cc::MAX_DOC_BYTES {
            return Err(format!(
                "{name}: {} bytes; a cluster configuration holds at most {} bytes",
                doc.len(),
                cc::MAX_DOC_BYTES
            ));
        }
        let path = self.current.lock().await.0.file.clone();
        let d = ClusterDoc {
            name: Path::new(name),
            src: doc,
        };
        config::load_with(&path, Some(d), &super::env)
            .map(|_| cc::sha256_hex(doc))
            .map_err(|e| e.to_string())
    }

    /// Publishes a new version: validated here, then committed by the acting leader (this
    /// node, or the leader through a proposal in the state). Returns the version committed.
    pub async fn change_config(&self, mut p: Proposal) -> Result<u64, ChangeError> {
        self.check_config(&p.source, &p.doc)
            .await
            .map_err(ChangeError::Invalid)?;
        let me = crate::entrypoint::EntrypointHost::node_id(self);
        p.node = me.clone();
        p.id = fastrand::u64(1..);
        if self.acting() {
            return self.commit(&p).map_err(|e| match e {
                CommitError::Conflict(c) => ChangeError::Conflict(c),
                CommitError::Write(w) => ChangeError::Unavailable(w),
            });
        }
        let id = p.id;
        self.write_own(&format!("{PROPOSAL_PREFIX}{me}"), encode(&p));
        let deadline = Instant::now() + Duration::from_secs(10);
        let key = format!("{OUTCOME_PREFIX}{me}");
        loop {
            let outcome = self.get(&key).and_then(|b| decode::<Outcome>(&b));
            if let Some(o) = outcome.filter(|o| o.id == id) {
                return o.result.map_err(ChangeError::Conflict);
            }
            if Instant::now() >= deadline {
                return Err(ChangeError::Unavailable(
                    "no acting leader committed the change within 10 s (is there a majority? `meshctl leader`); nothing was changed"
                        .into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Publishes the document of a kept version again, as a new version.
    pub async fn rollback_config(
        &self,
        to: u64,
        author: String,
        replaces: Option<u64>,
    ) -> Result<u64, ChangeError> {
        let old = self
            .config_history()
            .into_iter()
            .find(|v| v.version == to)
            .ok_or_else(|| {
                ChangeError::NotFound(format!(
                    "version {to} is not kept (the last {} are; `meshctl config history`)",
                    cc::KEEP
                ))
            })?;
        self.change_config(Proposal {
            id: 0,
            doc: old.doc,
            source: format!("rollback to v{to}"),
            node: String::new(),
            author,
            replaces,
        })
        .await
    }

    /// As the acting leader: the next version, written with the expired ones removed.
    fn commit(&self, p: &Proposal) -> Result<u64, CommitError> {
        let versions = self.versions();
        let live = cc::live(versions.iter().cloned());
        let v = cc::commit(live.as_ref(), p, unix_now())
            .map_err(|c| CommitError::Conflict(c.to_string()))?;
        self.publish(&v.key(), encode(&v))
            .map_err(CommitError::Write)?;
        info!(version = v.version, source = %v.source, author = %v.author, via = %v.node, hash = %&v.hash[..12], "cluster configuration committed");
        for old in cc::expired(versions.iter().map(|v| v.version), v.version) {
            let _ = self.delete(&cc::version_key(old));
        }
        Ok(v.version)
    }

    /// Writes one of this node's own entries (`<prefix><node id>` by convention).
    pub(super) fn write_own(&self, key: &str, value: Vec<u8>) {
        match self.mesh.lock().expect("mesh lock").as_ref() {
            Some(m) => m.publish_own(key, value),
            None => {
                self.cluster_state
                    .lock()
                    .expect("state lock")
                    .set(key, value, crate::unix_ms());
            }
        }
    }

    fn report_applied(&self, local: &Local) {
        let me = crate::entrypoint::EntrypointHost::node_id(self);
        let report = Applied {
            version: local.applied.as_ref().map(|v| v.version),
            hash: local.applied.as_ref().map(|v| v.hash.clone()),
            rejected: local.rejected.clone(),
            at: unix_now(),
        };
        self.write_own(&format!("{APPLIED_PREFIX}{me}"), encode(&report));
    }

    /// Every projection tick: as leader, answer proposals (and re-share the version this node
    /// runs after a whole-cluster restart); on every node, apply a new live version.
    pub(super) async fn follow_cluster_config(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let acting = self.acting();
        // Nothing to do while neither the state nor this node's leadership moved (a new
        // leader answers what is pending).
        let changes = self.cluster_state.lock().expect("state lock").changes();
        let seen = (changes << 1) | u64::from(acting);
        if self.cluster_seen.swap(seen, Relaxed) == seen {
            return;
        }
        if acting {
            self.answer_proposals();
        }
        let live = self.live_config();
        let applied_here = self.cluster.lock().expect("cluster lock").applied.clone();
        if let (None, Some(mine), true) = (&live, &applied_here, acting) {
            // A restarted cluster: the state is empty, this node kept what it ran.
            if self.publish(&mine.key(), encode(mine)).is_ok() {
                info!(
                    version = mine.version,
                    "cluster configuration from this node's disk shared again"
                );
            }
            return;
        }
        let step = {
            let local = self.cluster.lock().expect("cluster lock");
            cc::next_step(
                live.as_ref().map(|v| (v.version, v.hash.as_str())),
                local.considered.as_ref().map(|(v, h)| (*v, h.as_str())),
            )
        };
        if let (Step::Apply(_), Some(v)) = (step, live) {
            self.apply_cluster(v).await;
        }
    }

    fn answer_proposals(&self) {
        let proposals: Vec<(String, Proposal)> = {
            let state = self.cluster_state.lock().expect("state lock");
            state
                .prefix(PROPOSAL_PREFIX)
                .filter_map(|(k, b)| {
                    Some((
                        k[PROPOSAL_PREFIX.len()..].to_string(),
                        decode::<Proposal>(b)?,
                    ))
                })
                .collect()
        };
        for (node, p) in proposals {
            let key = format!("{OUTCOME_PREFIX}{node}");
            if self
                .get(&key)
                .and_then(|b| decode::<Outcome>(&b))
                .is_some_and(|o| o.id == p.id)
            {
                continue;
            }
            let result = match self.commit(&p) {
                Ok(v) => Ok(v),
                Err(CommitError::Conflict(c)) => Err(c),
                // Not leading any more: the next leader answers.
                Err(CommitError::Write(_)) => return,
            };
            let _ = self.publish(&key, encode(&Outcome { id: p.id, result }));
        }
    }

    /// Validates and applies `v` here; a refusal keeps the running configuration.
    async fn apply_cluster(&self, v: ConfigVersion) {
        let mut current = self.current.lock().await;
        let result = self.apply(&current.0, Some(&v)).await;
        let trigger = format!("cluster config v{}", v.version);
        let mut local = self.cluster.lock().expect("cluster lock");
        local.considered = Some((v.version, v.hash.clone()));
        match result {
            Ok(config) => {
                info!(
                    version = v.version,
                    hash = %&v.hash[..12],
                    shadowed = ?config.shadowed,
                    "cluster configuration applied"
                );
                if let Err(e) = persist(&config.data_dir, &v) {
                    warn!(error = %e, "cannot keep the cluster configuration on disk; a restart starts from the node's file until the mesh answers");
                }
                current.0 = config;
                local.applied = Some(v);
                local.rejected = None;
                self.config_applied(&trigger, None);
            }
            Err(e) => {
                error!(version = v.version, error = %e, "cluster configuration refused here; the previous one keeps serving");
                local.rejected = Some((v.version, e.clone()));
                self.config_applied(&trigger, Some(e));
            }
        }
        self.report_applied(&local);
    }

    /// Counts and records a configuration change (or its refusal) for `/status`.
    pub(super) fn config_applied(&self, trigger: &str, error: Option<String>) {
        let outcome = ReloadOutcome {
            ok: error.is_none(),
            at: unix_now(),
            trigger: trigger.into(),
            error,
        };
        let result = if outcome.ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
        let mut st = self.state.lock().expect("state lock");
        if outcome.ok {
            st.generation += 1;
            st.loaded_at = outcome.at;
        }
        st.last_reload = Some(outcome);
    }

    /// After a reload of the node's file: a refused version is tried again (the file may now
    /// have what it lacked), and the report is refreshed.
    pub(super) fn retry_refused(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut local = self.cluster.lock().expect("cluster lock");
        if local.rejected.is_some() {
            local.considered = None;
            self.cluster_seen.store(u64::MAX, Relaxed);
        }
    }

    /// The start-up report, once the mesh runs.
    pub(super) fn report_start(&self) {
        let local = self.cluster.lock().expect("cluster lock");
        self.report_applied(&local);
    }
}

impl Daemon {
    /// Polls the S3 object of `[cluster_config] s3` while this node is the acting leader,
    /// and publishes it as a new version when it changed and validates.
    pub(super) async fn run_config_source(self: std::sync::Arc<Self>) {
        let mut reader: Option<(Option<String>, crate::s3::S3Reader)> = None;
        // Due times count in the ticks' scheduled instants, not in when the work after a tick
        // ran, so a read every `poll` happens every `poll`, not every other tick.
        let mut last: Option<(String, tokio::time::Instant)> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = tick.tick().await;
            let Some(src) = self.current.lock().await.0.config_source.clone() else {
                continue;
            };
            // A node that starts leading reads at once; a new URL is read at once. After a
            // whole-cluster restart the version kept on disk is shared again first, so that
            // the object is compared with it.
            if !self.acting() {
                last = None;
                continue;
            }
            let kept = self.cluster.lock().expect("cluster lock").applied.is_some();
            let shared = {
                let state = self.cluster_state.lock().expect("state lock");
                let any = state.leader_entries(VERSION_PREFIX).next().is_some();
                any
            };
            if kept && !shared {
                continue;
            }
            let url = src.url();
            if last
                .as_ref()
                .is_some_and(|(u, at)| *u == url && now.duration_since(*at) < src.poll)
            {
                continue;
            }
            last = Some((url, now));
            if reader.as_ref().is_none_or(|(r, _)| *r != src.region) {
                let r = crate::s3::S3Reader::new(src.region.as_deref()).await;
                reader = Some((src.region.clone(), r));
            }
            let (_, r) = reader.as_ref().expect("set above");
            let result = self.read_config_source(&src, r).await;
            self.config_source_reads
                .get_or_create(&ResultLabel { result })
                .inc();
        }
    }

    /// One read of the object; the result label for the metrics.
    async fn read_config_source(
        &self,
        src: &ObjectSource,
        reader: &crate::s3::S3Reader,
    ) -> &'static str {
        let url = src.url();
        let seen = self.get(SOURCE_KEY).and_then(|b| decode::<SourceSeen>(&b));
        let known = cc::known_etag(seen.as_ref(), &url).map(str::to_string);
        // Written only when something but the time changed.
        let record = |etag: Option<String>, outcome, read_error| {
            let mut now = SourceSeen {
                url: url.clone(),
                etag,
                outcome,
                read_error,
                at: seen.as_ref().map_or(0, |s| s.at),
            };
            if seen.as_ref() != Some(&now) {
                now.at = unix_now();
                let _ = self.publish(SOURCE_KEY, encode(&now));
            }
        };
        let kept = seen.as_ref().filter(|s| s.url == url);
        let read = reader
            .read(&src.bucket, &src.key, known.as_deref(), cc::MAX_DOC_BYTES)
            .await;
        let (etag, body) = match read {
            Ok(crate::s3::Read::Unchanged) => return "unchanged",
            Ok(crate::s3::Read::Object { etag, body }) => (etag, body),
            Err(e) => {
                warn!(source = %url, error = %e, "cannot read the cluster configuration object; the live configuration stays");
                record(
                    kept.and_then(|s| s.etag.clone()),
                    kept.and_then(|s| s.outcome.clone()),
                    Some(e),
                );
                return "error";
            }
        };
        let validated = match String::from_utf8(body) {
            Ok(doc) => self.check_config(&url, &doc).await.map(|h| (h, doc)),
            Err(_) => Err(format!("{url}: not UTF-8 text")),
        };
        let live = self.live_config();
        let step = cc::on_object(
            seen.as_ref(),
            &url,
            &etag,
            validated
                .as_ref()
                .map(|(h, _)| h.as_str())
                .map_err(String::as_str),
            live.as_ref().map(|v| v.hash.as_str()),
        );
        let (outcome, label) = match (step, validated) {
            (ObjectStep::Unchanged, _) => return "unchanged",
            (ObjectStep::Record(o), _) => {
                if let SourceOutcome::Refused(e) = &o {
                    error!(source = %url, etag = %etag, error = %e, "cluster configuration object refused; the live configuration stays");
                    (o, "refused")
                } else {
                    (o, "live")
                }
            }
            // Validated above, and this node leads: committed here, as change_config would
            // after validating it a second time.
            (ObjectStep::Publish, Ok((_, doc))) => {
                let proposal = Proposal {
                    id: fastrand::u64(1..),
                    doc,
                    source: format!("{url} (ETag {etag})"),
                    node: crate::entrypoint::EntrypointHost::node_id(self),
                    author: "s3 source".into(),
                    replaces: live.map(|v| v.version),
                };
                match self.commit(&proposal) {
                    Ok(v) => (SourceOutcome::Published(v), "published"),
                    Err(CommitError::Conflict(e) | CommitError::Write(e)) => {
                        // A change landed in between, or the lead was lost: read again next time.
                        warn!(source = %url, error = %e, "cluster configuration object not published; trying again at the next read");
                        return "error";
                    }
                }
            }
            // on_object publishes only a valid object; were it not, it is refused.
            (ObjectStep::Publish, Err(e)) => (SourceOutcome::Refused(e), "refused"),
        };
        record(Some(etag), Some(outcome), None);
        label
    }
}

enum CommitError {
    Conflict(String),
    Write(String),
}
