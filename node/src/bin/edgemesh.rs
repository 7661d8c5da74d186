//! `edgemesh`: the edge daemon.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use edgemesh_node::daemon::{Daemon, StartError};
use edgemesh_node::{config, demo, logging};

/// mimalloc serves the data path's short-lived allocations (request heads, futures, body
/// frames) from per-thread free lists; glibc's malloc took its slow path once more than a
/// handful were in flight (BENCHMARKS.md). Built with `no_thp`: with transparent huge pages
/// its arenas cost 28 MiB of resident memory idle instead of 15, and 32 KiB per idle
/// keep-alive connection instead of 21. Entered through its plain functions where the
/// alignment allows (`edgemesh_proxy::Mimalloc`).
#[global_allocator]
static ALLOC: edgemesh_proxy::Mimalloc = edgemesh_proxy::Mimalloc;

#[derive(Parser)]
#[command(name = "edgemesh", version, about = "Edge proxy mesh for ECS services")]
struct Cli {
    /// Configuration file (TOML).
    #[arg(
        long,
        short,
        env = "EDGEMESH_CONFIG",
        default_value = "/etc/edgemesh/edgemesh.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration and exit: 0 if valid, 2 if not. Without FILE, what the daemon
    /// would load: EDGEMESH_CONFIG_TOML when set, else --config.
    CheckConfig { file: Option<PathBuf> },
    /// Exit 0 if the node on this host answers its admin API's /healthz, 1 if not (a container
    /// health check that needs no shell or curl).
    Health {
        /// Admin API address; default: EDGEMESH_ADMIN_ADDR, else the configuration's.
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        #[arg(long, default_value_t = 3)]
        timeout_secs: u64,
    },
    /// Run a node on loopback with built-in backends; prints what to try.
    Demo {
        #[arg(long, default_value = ".edgemesh-demo")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
        #[arg(long, default_value_t = 8443)]
        https_port: u16,
        #[arg(long, default_value_t = 9000)]
        tcp_port: u16,
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
        /// Nodes in the demo mesh (1: a single node, no gossip).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
        nodes: u16,
        #[arg(long, default_value_t = 7946)]
        gossip_port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::CheckConfig { file }) => return check_config(file.as_deref(), &cli.config),
        Some(Command::Health { addr, timeout_secs }) => {
            return health(*addr, &cli.config, Duration::from_secs(*timeout_secs))
        }
        _ => {}
    }
    logging::init();
    // Control work only (admin API, signals, reloads); connections run on the proxy's
    // per-CPU workers.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgemesh: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Some(Command::Demo {
                data_dir,
                http_port,
                https_port,
                tcp_port,
                admin_port,
                nodes,
                gossip_port,
            }) => {
                let data_dir = std::path::absolute(&data_dir).unwrap_or(data_dir);
                demo::run(demo::DemoOptions {
                    data_dir,
                    http_port,
                    https_port,
                    tcp_port,
                    admin_port,
                    nodes: nodes as usize,
                    gossip_port,
                })
                .await
            }
            _ => {
                let (daemon, admin) = Daemon::start(&cli.config).await?;
                daemon.run(admin).await.map_err(StartError::from)
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(StartError::Config(e)) => {
            eprintln!("edgemesh: invalid configuration: {e}");
            ExitCode::from(2)
        }
        Err(StartError::Other(e)) => {
            eprintln!("edgemesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: Option<&Path>, daemon_file: &Path) -> ExitCode {
    let env = |k: &str| std::env::var(k).ok();
    let loaded = match file {
        Some(f) => config::load(f, &env),
        None => config::load_source(daemon_file, &env),
    };
    match loaded {
        Ok(c) => {
            println!(
                "{}: configuration is valid ({} listeners, {} routes, {} pools)",
                c.file.display(),
                c.listeners.len(),
                c.table.routes.len(),
                c.table.pools.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

fn health(addr: Option<SocketAddr>, daemon_file: &Path, timeout: Duration) -> ExitCode {
    let env = |k: &str| std::env::var(k).ok();
    let addr = match addr {
        Some(a) => a,
        // The configuration applies EDGEMESH_ADMIN_ADDR; a configuration that does not load
        // leaves the default.
        None => match config::load_source(daemon_file, &env) {
            Ok(c) => c.admin_addr,
            Err(_) => match env("EDGEMESH_ADMIN_ADDR").and_then(|a| a.parse().ok()) {
                Some(a) => a,
                None => config::DEFAULT_ADMIN_ADDR
                    .parse()
                    .expect("default admin address"),
            },
        },
    };
    match healthz(addr, timeout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgemesh: http://{addr}/healthz: {e}");
            ExitCode::FAILURE
        }
    }
}

fn healthz(addr: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: edgemesh\r\nConnection: close\r\n\r\n")?;
    let mut head = Vec::new();
    s.take(4096).read_to_end(&mut head)?;
    let status = String::from_utf8_lossy(&head);
    let line = status.lines().next().unwrap_or("");
    if line.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("answered {line:?}")))
    }
}
