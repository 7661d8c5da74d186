//! `edgemesh`: the edge daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgemesh_node::daemon::{Daemon, StartError};
use edgemesh_node::{config, demo, logging};

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
    /// Validate a configuration file and exit: 0 if valid, 2 if not.
    CheckConfig { file: PathBuf },
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
    if let Some(Command::CheckConfig { file }) = &cli.command {
        return check_config(file);
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

fn check_config(file: &std::path::Path) -> ExitCode {
    let env = |k: &str| std::env::var(k).ok();
    match config::load(file, &env) {
        Ok(c) => {
            println!(
                "{}: configuration is valid ({} listeners, {} routes, {} pools)",
                file.display(),
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
