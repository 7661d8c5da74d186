//! `meshctl config`: the cluster-wide configuration (get, apply, history, rollback, status).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Subcommand;
use edgemesh_node::cluster_config::{Applied, ConfigVersion, SourceOutcome, SourceSeen};
use serde::Deserialize;

use super::{request, request_for, table, utc};

#[derive(Subcommand)]
pub enum ConfigAction {
    /// Print the live document.
    Get,
    /// Validate FILE on this node, show its diff against the live version, then publish it
    /// to every node (after a prompt, or at once with --yes).
    Apply {
        file: PathBuf,
        /// Publish without asking.
        #[arg(long, short)]
        yes: bool,
    },
    /// The versions kept, newest first: who, through which node, when, from where.
    History,
    /// Publish an earlier version's document again, as a new version.
    Rollback {
        version: u64,
        /// Publish without asking.
        #[arg(long, short)]
        yes: bool,
    },
    /// The live version and what each node runs (or why it refused the live one).
    Status {
        /// Print the node's JSON as it is.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Deserialize)]
struct Live {
    live: Option<ConfigVersion>,
}

#[derive(Deserialize)]
struct Status {
    /// What became of the S3 object, with `[cluster_config] s3`.
    #[serde(default)]
    source: Option<SourceSeen>,
    live: Option<LiveSummary>,
    nodes: std::collections::BTreeMap<String, Applied>,
    members: Vec<String>,
}

#[derive(Deserialize)]
struct LiveSummary {
    version: u64,
    hash: String,
    source: String,
    node: String,
    author: String,
    at: u64,
}

fn author() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}

fn ok_or(code: u16, body: &str) -> Result<(), String> {
    if code == 200 {
        Ok(())
    } else {
        Err(body.trim_end().to_string())
    }
}

async fn live(addr: &str) -> Result<Option<ConfigVersion>, String> {
    let (code, body) = request(addr, "GET", "/config").await?;
    ok_or(code, &body)?;
    let l: Live = serde_json::from_str(&body)
        .map_err(|e| format!("unexpected /config answer from {addr}: {e}"))?;
    Ok(l.live)
}

/// A unified diff of the live document (or nothing) and `new`; `None` when they are equal.
fn diff(live: Option<&ConfigVersion>, new: &str, new_name: &str) -> Option<String> {
    let old = live.map_or("", |v| v.doc.as_str());
    if old == new {
        return None;
    }
    let old_name = live.map_or("(no cluster configuration yet)".to_string(), |v| {
        format!(
            "live v{} ({}, by {} via {})",
            v.version, v.source, v.author, v.node
        )
    });
    Some(
        similar::TextDiff::from_lines(old, new)
            .unified_diff()
            .context_radius(3)
            .header(&old_name, new_name)
            .to_string(),
    )
}

fn confirm(question: &str, yes: bool) -> Result<bool, String> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(
            "standard input is not a terminal: pass --yes to publish without asking".into(),
        );
    }
    print!("{question} [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| format!("reading the answer: {e}"))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

pub async fn run(addr: &str, action: &ConfigAction) -> Result<ExitCode, String> {
    match action {
        ConfigAction::Get => match live(addr).await? {
            Some(v) => {
                print!("{}", v.doc);
                eprintln!(
                    "# version {} ({}, by {} via {}, {}), sha256 {}",
                    v.version,
                    v.source,
                    v.author,
                    v.node,
                    utc(v.at as i64),
                    v.hash
                );
                Ok(ExitCode::SUCCESS)
            }
            None => Err(
                "no cluster configuration yet: every node runs its own file's routes (`meshctl config apply FILE`)"
                    .into(),
            ),
        },
        ConfigAction::Apply { file, yes } => {
            let doc = std::fs::read_to_string(file)
                .map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
            let name = file.display().to_string();
            let current = live(addr).await?;
            let check = serde_json::json!({ "doc": doc, "source": name }).to_string();
            let (code, body) = request_for(addr, "POST", "/config/check", check, 5).await?;
            if code != 200 {
                eprint!("{body}");
                eprintln!("nothing was published");
                return Ok(ExitCode::FAILURE);
            }
            let Some(d) = diff(current.as_ref(), &doc, &name) else {
                println!(
                    "no change: {name} is the live version {}",
                    current.map_or(0, |v| v.version)
                );
                return Ok(ExitCode::SUCCESS);
            };
            print!("{d}");
            let next = current.as_ref().map_or(1, |v| v.version + 1);
            if !confirm(&format!("Publish as version {next} to every node?"), *yes)? {
                println!("nothing was published");
                return Ok(ExitCode::FAILURE);
            }
            let change = serde_json::json!({
                "doc": doc, "source": name, "author": author(),
                "replaces": current.as_ref().map(|v| v.version),
            });
            publish(addr, "/config", change).await
        }
        ConfigAction::Rollback { version, yes } => {
            let current = live(addr).await?;
            let (code, body) = request(addr, "GET", "/config/history").await?;
            ok_or(code, &body)?;
            let history: Vec<ConfigVersion> = serde_json::from_str(&body)
                .map_err(|e| format!("unexpected /config/history answer from {addr}: {e}"))?;
            let Some(old) = history.iter().find(|v| v.version == *version) else {
                return Err(format!(
                    "version {version} is not kept; kept: {}",
                    history
                        .iter()
                        .map(|v| v.version.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            };
            let Some(d) = diff(current.as_ref(), &old.doc, &format!("v{version}")) else {
                println!("no change: version {version} has the live document");
                return Ok(ExitCode::SUCCESS);
            };
            print!("{d}");
            let next = current.as_ref().map_or(1, |v| v.version + 1);
            if !confirm(
                &format!("Publish version {version}'s document as version {next}?"),
                *yes,
            )? {
                println!("nothing was published");
                return Ok(ExitCode::FAILURE);
            }
            let change = serde_json::json!({
                "rollback_to": version, "author": author(),
                "replaces": current.as_ref().map(|v| v.version),
            });
            publish(addr, "/config/rollback", change).await
        }
        ConfigAction::History => {
            let (code, body) = request(addr, "GET", "/config/history").await?;
            ok_or(code, &body)?;
            let history: Vec<ConfigVersion> = serde_json::from_str(&body)
                .map_err(|e| format!("unexpected /config/history answer from {addr}: {e}"))?;
            if history.is_empty() {
                println!("no cluster configuration yet");
                return Ok(ExitCode::SUCCESS);
            }
            table(
                &["VERSION", "AT", "AUTHOR", "VIA", "SOURCE", "SHA256"],
                history
                    .iter()
                    .map(|v| {
                        vec![
                            v.version.to_string(),
                            utc(v.at as i64),
                            v.author.clone(),
                            v.node.clone(),
                            v.source.clone(),
                            v.hash[..12.min(v.hash.len())].to_string(),
                        ]
                    })
                    .collect(),
            );
            Ok(ExitCode::SUCCESS)
        }
        ConfigAction::Status { json } => {
            let (code, body) = request(addr, "GET", "/config/status").await?;
            ok_or(code, &body)?;
            if *json {
                println!("{body}");
                return Ok(ExitCode::SUCCESS);
            }
            let s: Status = serde_json::from_str(&body)
                .map_err(|e| format!("unexpected /config/status answer from {addr}: {e}"))?;
            print_status(&s);
            Ok(if refusals(&s).is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// Posts a change, then waits (up to 10 s) for every member to run it or refuse it.
async fn publish(addr: &str, path: &str, change: serde_json::Value) -> Result<ExitCode, String> {
    let (code, body) = request_for(addr, "POST", path, change.to_string(), 15).await?;
    if code != 200 {
        eprint!("{body}");
        eprintln!("nothing was published");
        return Ok(ExitCode::FAILURE);
    }
    let version = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["version"].as_u64())
        .ok_or_else(|| format!("unexpected answer from {addr}: {body}"))?;
    println!("published version {version}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = request(addr, "GET", "/config/status").await?;
        let s: Status = serde_json::from_str(&body)
            .map_err(|e| format!("unexpected /config/status answer from {addr}: {e}"))?;
        let settled = s.members.iter().all(|m| {
            s.nodes.get(m).is_some_and(|a| {
                a.version >= Some(version) || a.rejected.as_ref().is_some_and(|r| r.0 >= version)
            })
        });
        if settled || Instant::now() >= deadline {
            print_status(&s);
            let refused = refusals(&s);
            if !settled {
                println!(
                    "not every node reported within 10 s: `meshctl config status` shows the rest"
                );
            }
            return Ok(if refused.is_empty() && settled {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Nodes that refused the live version.
fn refusals(s: &Status) -> Vec<&str> {
    let live = s.live.as_ref().map(|l| l.version);
    s.nodes
        .iter()
        .filter(|(_, a)| a.rejected.as_ref().map(|r| r.0) == live && live.is_some())
        .map(|(n, _)| n.as_str())
        .collect()
}

fn print_status(s: &Status) {
    match &s.live {
        Some(l) => println!(
            "live: version {} (sha256 {}, {}, by {} via {}, {})",
            l.version,
            &l.hash[..12.min(l.hash.len())],
            l.source,
            l.author,
            l.node,
            utc(l.at as i64)
        ),
        None => println!("live: none (every node runs its own file's routes)"),
    }
    if let Some(src) = &s.source {
        let what = match &src.outcome {
            None => "not read yet".to_string(),
            Some(SourceOutcome::Published(v)) => format!("published as version {v}"),
            Some(SourceOutcome::AlreadyLive) => "already live".into(),
            Some(SourceOutcome::Refused(e)) => format!("REFUSED: {e}"),
        };
        println!(
            "source: {} ETag {}: {what} ({})",
            src.url,
            src.etag.as_deref().unwrap_or("-"),
            utc(src.at as i64)
        );
        if let Some(e) = &src.read_error {
            println!("source: LAST READ FAILED: {e}");
        }
    }
    let mut names: Vec<&String> = s.members.iter().collect();
    for n in s.nodes.keys() {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    table(
        &["NODE", "RUNS", "STATE"],
        names
            .into_iter()
            .map(|n| {
                let member = s.members.contains(n);
                let (runs, state) = match s.nodes.get(n) {
                    None => ("-".to_string(), "not reported".to_string()),
                    Some(a) => {
                        let runs = a.version.map_or("own file".into(), |v| format!("v{v}"));
                        let state = match (&a.rejected, &s.live) {
                            (Some((v, e)), _) => format!("REFUSED v{v}: {e}"),
                            (None, Some(l)) if a.version == Some(l.version) => "ok".into(),
                            (None, Some(_)) => "behind".into(),
                            (None, None) => "ok".into(),
                        };
                        (runs, state)
                    }
                };
                let state = if member {
                    state
                } else {
                    format!("{state} (not a member now)")
                };
                vec![n.clone(), runs, state]
            })
            .collect(),
    );
}
