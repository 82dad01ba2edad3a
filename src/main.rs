//! The `portico` command line: `run`, `check`, `--version`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use portico::config::{self, Config};

/// Portico: an API gateway and reverse proxy.
#[derive(Parser)]
#[command(name = "portico", version, about)]
struct Cli {
    /// Log level or filter (`info`, `debug`, `portico=trace`); defaults to RUST_LOG, then `info`.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the gateway.
    Run {
        /// The config file.
        #[arg(short, long, default_value = "portico.yaml")]
        config: PathBuf,
    },
    /// Validates a config file and prints what it defines.
    Check {
        /// The config file.
        #[arg(short, long, default_value = "portico.yaml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match &cli.log_level {
        Some(l) => EnvFilter::try_new(l),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
    };
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("invalid log level: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    match cli.command {
        Command::Run { config } => {
            let Some(cfg) = load(&config) else {
                return ExitCode::FAILURE;
            };
            match portico::server::run(config, cfg) {
                0 => ExitCode::SUCCESS,
                _ => ExitCode::FAILURE,
            }
        }
        Command::Check { config } => check(&config),
    }
}

fn load(path: &Path) -> Option<Config> {
    match config::load_file(path) {
        Ok(cfg) => Some(cfg),
        Err(errors) => {
            eprintln!("{errors}");
            None
        }
    }
}

fn check(path: &Path) -> ExitCode {
    let Some(cfg) = load(path) else {
        return ExitCode::FAILURE;
    };
    let workers = portico::server::worker_count(&cfg);
    let file = path.display().to_string();
    let gw = match portico::gateway::compile(cfg, &file, workers, None) {
        Ok(gw) => gw,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    println!("{file}: ok");
    println!("listeners:");
    for l in gw.listeners.iter() {
        println!("  {} on {}", l.name, l.address);
    }
    println!("upstreams:");
    for (name, up) in &gw.upstreams {
        let eps: Vec<&str> = up.endpoints.iter().map(|e| &*e.address).collect();
        println!(
            "  {name}: {} ({:?}, {:?})",
            eps.join(", "),
            up.config.balance,
            up.config.protocol
        );
    }
    println!("routes:");
    for r in gw.config.routes.iter() {
        let r = &r.value;
        let action = match (&r.upstream, &r.redirect, &r.respond) {
            (Some(u), _, _) => format!("proxy to {}", u.value),
            (_, Some(rd), _) => format!("redirect {} to {}", rd.status, rd.location),
            (_, _, Some(rs)) => format!("respond {}", rs.status),
            _ => "nothing".into(),
        };
        println!("  {}: {}", r.name.value, action);
    }
    ExitCode::SUCCESS
}
