//! The cluster-wide configuration: routing sections ([`crate::config::CLUSTER_SECTIONS`]) as
//! a versioned document in the replicated state, applied by every node.
//!
//! Plain data and decisions, no I/O: the daemon reads and writes the entries.
//! - `config/v/<version>`: each version (document, author, hash, time), written by the
//!   acting leader only; the highest is live. The last [`KEEP`] are kept for rollback.
//! - `config/proposal/<node>`: a change asked for through a node that does not lead (its own
//!   entry); the leader commits or refuses it and answers in `config/outcome/<node>`.
//! - `config/applied/<node>`: what each node runs, or why it refused the live version.
//! - `config/source`: with an object source (`[cluster_config] s3`), what became of the
//!   object the acting leader read last (published, already live, refused), so a leader that
//!   takes over neither reads nor publishes an object again.
//!
//! A change names the version it replaces (compare-and-set): when another change landed in
//! between, it is refused with a conflict instead of silently undoing that one.

use serde::{Deserialize, Serialize};

pub const VERSION_PREFIX: &str = "config/v/";
pub const PROPOSAL_PREFIX: &str = "config/proposal/";
pub const OUTCOME_PREFIX: &str = "config/outcome/";
pub const APPLIED_PREFIX: &str = "config/applied/";
pub const SOURCE_KEY: &str = "config/source";

/// Versions kept for `meshctl config history` and rollback.
pub const KEEP: u64 = 20;

/// Largest document accepted (it travels in the replicated state).
pub const MAX_DOC_BYTES: usize = 256 * 1024;

/// One version of the cluster configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigVersion {
    pub version: u64,
    pub doc: String,
    /// Where it came from: the operator's file name, `s3://bucket/key`, `rollback to v3`.
    pub source: String,
    /// The node the change came through, and who asked (`user@host` from meshctl).
    pub node: String,
    pub author: String,
    /// SHA-256 of the document, hex.
    pub hash: String,
    /// Unix seconds.
    pub at: u64,
}

impl ConfigVersion {
    pub fn key(&self) -> String {
        version_key(self.version)
    }
}

pub fn version_key(version: u64) -> String {
    // Zero-padded so that key order is version order.
    format!("{VERSION_PREFIX}{version:020}")
}

/// A change asked for: a new document replacing `replaces` (`None`: there is no version yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Unique per proposal, so the proposer knows which outcome is its own.
    pub id: u64,
    pub doc: String,
    pub source: String,
    pub node: String,
    pub author: String,
    pub replaces: Option<u64>,
}

/// The leader's answer to a proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub id: u64,
    pub result: Result<u64, String>,
}

/// What a node runs: the version it applied last (`None`: its own file's routing sections),
/// and the newer version it refused, with the reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub version: Option<u64>,
    pub hash: Option<String>,
    pub rejected: Option<(u64, String)>,
    /// Unix seconds of the last change of this record.
    pub at: u64,
}

pub fn sha256_hex(doc: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, doc.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The live version: the highest of `versions`.
pub fn live(versions: impl IntoIterator<Item = ConfigVersion>) -> Option<ConfigVersion> {
    versions.into_iter().max_by_key(|v| v.version)
}

/// A commit refused because the proposal replaces another version than the live one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub live: Option<(u64, String, u64)>,
    pub replaces: Option<u64>,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let named = match self.replaces {
            Some(v) => format!("version {v}"),
            None => "no version (a first configuration)".into(),
        };
        match &self.live {
            Some((v, author, at)) => write!(
                f,
                "conflict: version {v} (by {author}, unix time {at}) is live, and this change replaces {named}; \
                 re-run to see the diff against version {v}"
            ),
            None => write!(
                f,
                "conflict: there is no live version yet, and this change replaces {named}"
            ),
        }
    }
}

/// What the leader commits for `p` when `current` is live: the next version, or a conflict.
/// A document identical to the live one is committed too (an explicit re-apply), but the
/// caller usually stops earlier, after its diff showed no change.
pub fn commit(
    current: Option<&ConfigVersion>,
    p: &Proposal,
    now: u64,
) -> Result<ConfigVersion, Conflict> {
    let live = current.map(|c| c.version);
    if p.replaces != live {
        return Err(Conflict {
            live: current.map(|c| (c.version, format!("{} via {}", c.author, c.node), c.at)),
            replaces: p.replaces,
        });
    }
    Ok(ConfigVersion {
        version: live.unwrap_or(0) + 1,
        hash: sha256_hex(&p.doc),
        doc: p.doc.clone(),
        source: p.source.clone(),
        node: p.node.clone(),
        author: p.author.clone(),
        at: now,
    })
}

/// Versions to delete once `live` is committed: all but the last [`KEEP`].
pub fn expired(kept: impl IntoIterator<Item = u64>, live: u64) -> Vec<u64> {
    kept.into_iter().filter(|&v| v + KEEP <= live).collect()
}

/// What a node does with the live version it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing new.
    Nothing,
    /// Validate and apply this version.
    Apply(u64),
}

/// Decides whether `live` (version, hash) is new to a node that last considered
/// `considered` (applied or refused). A refused version is not retried until another one is
/// live; a version with the same number but another document (two leaders in a split brain,
/// the newer term winning) is.
pub fn next_step(live: Option<(u64, &str)>, considered: Option<(u64, &str)>) -> Step {
    match (live, considered) {
        (None, _) => Step::Nothing,
        (Some((v, h)), Some((cv, ch))) if v == cv && h == ch => Step::Nothing,
        (Some((v, _)), _) => Step::Apply(v),
    }
}

/// An S3 object the acting leader polls for the document (`[cluster_config] s3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSource {
    pub bucket: String,
    pub key: String,
    pub poll: std::time::Duration,
    /// The bucket's region; else the SDK's chain (`AWS_REGION`, instance metadata).
    pub region: Option<String>,
}

impl ObjectSource {
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

/// `s3://bucket/key` (or `bucket/key`) -> (bucket, key), with S3's bucket name rules.
pub fn parse_s3_url(s: &str) -> Result<(String, String), String> {
    let rest = s.trim().strip_prefix("s3://").unwrap_or(s.trim());
    let Some((bucket, key)) = rest.split_once('/').filter(|(_, k)| !k.is_empty()) else {
        return Err(format!("{s:?} is not s3://bucket/key"));
    };
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let valid = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && edge(bucket.chars().next())
        && edge(bucket.chars().last());
    if !valid {
        return Err(format!(
            "{bucket:?} in {s:?} is not an S3 bucket name (3-63 of a-z, 0-9, '-', '.')"
        ));
    }
    Ok((bucket.to_string(), key.to_string()))
}

/// What became of the object source's last object (`config/source`, the leader's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSeen {
    pub url: String,
    /// The last object handled, by its ETag.
    pub etag: Option<String>,
    pub outcome: Option<SourceOutcome>,
    /// The last read failed (AWS error, too large); cleared by the next good read.
    pub read_error: Option<String>,
    /// Unix seconds of the last change of this record.
    pub at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceOutcome {
    /// Committed as this version.
    Published(u64),
    /// The live version already holds this document.
    AlreadyLive,
    /// Did not validate; the live version stays.
    Refused(String),
}

/// The ETag to read the object past (`If-None-Match`): the last one handled at `url`, so an
/// object is read, validated and published once, and a refused one is not read again until
/// it changes.
pub fn known_etag<'a>(seen: Option<&'a SourceSeen>, url: &str) -> Option<&'a str> {
    seen.filter(|s| s.url == url)
        .and_then(|s| s.etag.as_deref())
}

/// What the leader does with an object read at `url` with `etag`, once validated (`Ok(hash)`
/// or the error); `live_hash` is the live version's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectStep {
    /// Handled before (a store that ignores `If-None-Match`).
    Unchanged,
    Record(SourceOutcome),
    /// Commit it over the live version, then record [`SourceOutcome::Published`].
    Publish,
}

pub fn on_object(
    seen: Option<&SourceSeen>,
    url: &str,
    etag: &str,
    validated: Result<&str, &str>,
    live_hash: Option<&str>,
) -> ObjectStep {
    if known_etag(seen, url) == Some(etag) {
        return ObjectStep::Unchanged;
    }
    match validated {
        Err(e) => ObjectStep::Record(SourceOutcome::Refused(e.to_string())),
        Ok(h) if live_hash == Some(h) => ObjectStep::Record(SourceOutcome::AlreadyLive),
        Ok(_) => ObjectStep::Publish,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_and_object_decisions() {
        assert_eq!(
            parse_s3_url("s3://edge-config/prod/routes.toml"),
            Ok(("edge-config".into(), "prod/routes.toml".into()))
        );
        assert_eq!(
            parse_s3_url("edge-config/routes.toml"),
            Ok(("edge-config".into(), "routes.toml".into()))
        );
        for bad in [
            "s3://bucket",
            "s3://bucket/",
            "s3://Bucket/k",
            "s3://-b-/k",
            "s3://ab/k",
        ] {
            let e = parse_s3_url(bad).unwrap_err();
            assert!(
                e.contains(bad.trim_start_matches("s3://").split('/').next().unwrap()),
                "{e}"
            );
        }

        let url = "s3://b/k";
        // First read: publish a valid object, record a refused or an already-live one.
        assert_eq!(
            on_object(None, url, "\"e1\"", Ok("h1"), Some("h0")),
            ObjectStep::Publish
        );
        assert_eq!(
            on_object(None, url, "\"e1\"", Ok("h1"), None),
            ObjectStep::Publish
        );
        assert_eq!(
            on_object(None, url, "\"e1\"", Ok("h0"), Some("h0")),
            ObjectStep::Record(SourceOutcome::AlreadyLive)
        );
        assert_eq!(
            on_object(None, url, "\"e1\"", Err("routes.toml:3: bad"), Some("h0")),
            ObjectStep::Record(SourceOutcome::Refused("routes.toml:3: bad".into()))
        );
        // The object handled last is not handled again, whatever became of it; another
        // object, or the same ETag at another URL, is.
        let seen = SourceSeen {
            url: url.into(),
            etag: Some("\"e1\"".into()),
            outcome: Some(SourceOutcome::Refused("bad".into())),
            read_error: None,
            at: 0,
        };
        assert_eq!(known_etag(Some(&seen), url), Some("\"e1\""));
        assert_eq!(known_etag(Some(&seen), "s3://b/other"), None);
        assert_eq!(
            on_object(Some(&seen), url, "\"e1\"", Ok("h1"), Some("h0")),
            ObjectStep::Unchanged
        );
        assert_eq!(
            on_object(Some(&seen), url, "\"e2\"", Ok("h1"), Some("h0")),
            ObjectStep::Publish
        );
        assert_eq!(
            on_object(Some(&seen), "s3://b/other", "\"e1\"", Ok("h1"), Some("h0")),
            ObjectStep::Publish
        );
    }

    fn proposal(replaces: Option<u64>, doc: &str) -> Proposal {
        Proposal {
            id: 7,
            doc: doc.into(),
            source: "routes.toml".into(),
            node: "n1".into(),
            author: "ops@host".into(),
            replaces,
        }
    }

    #[test]
    fn commits_the_next_version_only_over_the_version_it_names() {
        let first = commit(None, &proposal(None, "[pools]\n"), 100).unwrap();
        assert_eq!(first.version, 1);
        assert_eq!(first.hash, sha256_hex("[pools]\n"));
        assert_eq!(first.hash.len(), 64);
        let second = commit(Some(&first), &proposal(Some(1), "x"), 101).unwrap();
        assert_eq!((second.version, second.at), (2, 101));
        // Two operators read version 2; the first wins, the second is told who won.
        let third = commit(Some(&second), &proposal(Some(2), "a"), 102).unwrap();
        let late = commit(Some(&third), &proposal(Some(2), "b"), 103).unwrap_err();
        let msg = late.to_string();
        assert!(
            msg.contains("version 3") && msg.contains("replaces version 2"),
            "{msg}"
        );
        assert!(msg.contains("ops@host via n1"), "{msg}");
        // A first configuration cannot be pushed over an existing one, nor a change over none.
        assert!(commit(Some(&third), &proposal(None, "c"), 104).is_err());
        let none = commit(None, &proposal(Some(3), "c"), 104).unwrap_err();
        assert!(none.to_string().contains("no live version"), "{none}");
    }

    #[test]
    fn live_is_the_highest_version_and_history_keeps_the_last_ones() {
        let v = |n| ConfigVersion {
            version: n,
            doc: String::new(),
            source: String::new(),
            node: String::new(),
            author: String::new(),
            hash: String::new(),
            at: 0,
        };
        assert_eq!(live([v(3), v(9), v(4)]).unwrap().version, 9);
        assert!(live(Vec::new()).is_none());
        assert_eq!(expired(1..=21, 21), vec![1]);
        assert!(expired(1..=20, 20).is_empty());
        assert!(version_key(9) < version_key(10), "keys sort by version");
    }

    #[test]
    fn a_node_applies_each_new_version_once_and_retries_only_a_changed_one() {
        assert_eq!(next_step(None, None), Step::Nothing);
        assert_eq!(next_step(Some((1, "a")), None), Step::Apply(1));
        assert_eq!(next_step(Some((1, "a")), Some((1, "a"))), Step::Nothing);
        // Refused version 2 (considered), still live: not retried every tick.
        assert_eq!(next_step(Some((2, "b")), Some((2, "b"))), Step::Nothing);
        assert_eq!(next_step(Some((3, "c")), Some((2, "b"))), Step::Apply(3));
        // Same number, another document (split brain healed, the newer term won).
        assert_eq!(next_step(Some((3, "d")), Some((3, "c"))), Step::Apply(3));
        // A rollback is a new, higher version.
        assert_eq!(next_step(Some((4, "a")), Some((3, "c"))), Step::Apply(4));
    }
}
