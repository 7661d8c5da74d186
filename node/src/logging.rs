//! One log stream on stdout: human text by default (coloured on a terminal only), JSON
//! lines with `EDGEMESH_LOG_FORMAT=json`. Level filter from `EDGEMESH_LOG` (then `RUST_LOG`), default info.
//! Release builds compile trace-level events and spans out (the workspace's `tracing`
//! feature `release_max_level_debug`), so debug is the finest level they log.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = std::env::var("EDGEMESH_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("EDGEMESH_LOG={filter:?} is not a valid filter ({e}); using info");
        EnvFilter::new("info")
    });
    let json = std::env::var("EDGEMESH_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    // Colours only on a terminal: a log collector (docker, journald, CloudWatch) would keep
    // the escape codes as text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(std::io::stdout);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
