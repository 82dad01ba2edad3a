//! The `portico` command line: `run`, `check`, `--version`.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use portico::config::{self, Config};

/// mimalloc: measured about 5% more requests per second than glibc's
/// allocator on the small-request benchmark (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    // ring is the one crypto provider of the build; made the process default
    // so that libraries calling `ClientConfig::builder()` (the Redis client)
    // never have to guess. An error means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = match log_filter(cli.log_level.as_deref()) {
        Ok(f) => f,
        Err(message) => {
            eprintln!("{message}");
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

/// The log filter: `--log-level`, else `RUST_LOG`, else `info`. An invalid
/// value of either is an error, never silently replaced.
fn log_filter(flag: Option<&str>) -> Result<EnvFilter, String> {
    if let Some(level) = flag {
        return EnvFilter::try_new(level)
            .map_err(|e| format!("invalid --log-level `{level}`: {e}"));
    }
    match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(level) => EnvFilter::try_new(&level)
            .map_err(|e| format!("invalid {} `{level}`: {e}", EnvFilter::DEFAULT_ENV)),
        Err(std::env::VarError::NotPresent) => Ok(EnvFilter::new("info")),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!(
            "invalid {}: not valid UTF-8",
            EnvFilter::DEFAULT_ENV
        )),
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
    // Compiled without side effects: the access log is not opened.
    let gw = match portico::gateway::check(cfg, &file, workers) {
        Ok(gw) => gw,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    match summary(&mut io::stdout().lock(), &file, &gw) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`portico check | head`): the check itself passed.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cannot write the summary: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes what a checked config defines.
fn summary(out: &mut impl Write, file: &str, gw: &portico::gateway::Gateway) -> io::Result<()> {
    writeln!(out, "{file}: ok")?;
    writeln!(out, "listeners:")?;
    for l in gw.listeners.iter() {
        writeln!(out, "  {} on {}", l.name, l.address)?;
    }
    writeln!(out, "upstreams:")?;
    for (name, up) in &gw.upstreams {
        let eps: Vec<&str> = up.endpoints.iter().map(|e| &*e.address).collect();
        writeln!(
            out,
            "  {name}: {} ({:?}, {:?})",
            eps.join(", "),
            up.config.balance,
            up.config.protocol
        )?;
    }
    writeln!(out, "routes:")?;
    for r in gw.config.routes.iter() {
        let r = &r.value;
        let action = match (&r.upstream, &r.redirect, &r.respond) {
            (Some(u), _, _) => format!("proxy to {}", u.value),
            (_, Some(rd), _) => format!("redirect {} to {}", rd.status, rd.location),
            (_, _, Some(rs)) => format!("respond {}", rs.status),
            _ => "nothing".into(),
        };
        let mut guards = Vec::new();
        if let Some(ip) = &r.ip_rules {
            guards.push(format!(
                "ip rules ({} allow, {} deny)",
                ip.allow.len(),
                ip.deny.len()
            ));
        }
        if let Some(auth) = &r.auth {
            let names: Vec<&str> = auth
                .value
                .providers
                .iter()
                .map(|p| p.value.as_str())
                .collect();
            let anonymous = if auth.value.anonymous {
                ", anonymous"
            } else {
                ""
            };
            let mode = match auth.value.mode {
                portico::config::AuthMode::Any => "any",
                portico::config::AuthMode::All => "all",
            };
            guards.push(format!("auth {mode} of {}{anonymous}", names.join(", ")));
        }
        if r.authorize.is_some() {
            guards.push("authorize".into());
        }
        if !r.rate_limit.is_empty() {
            guards.push(format!("{} rate limit(s)", r.rate_limit.len()));
        }
        if guards.is_empty() {
            writeln!(out, "  {}: {}", r.name.value, action)?;
        } else {
            writeln!(
                out,
                "  {}: {} [{}]",
                r.name.value,
                action,
                guards.join("; ")
            )?;
        }
    }
    if !gw.config.consumers.is_empty() || !gw.config.auth_providers.is_empty() {
        let providers: Vec<&str> = gw
            .config
            .auth_providers
            .keys()
            .map(String::as_str)
            .collect();
        writeln!(
            out,
            "consumers: {}; auth providers: {}",
            gw.config.consumers.len(),
            providers.join(", ")
        )?;
    }
    out.flush()
}
