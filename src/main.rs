//! The `baton` command.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use baton::config::{parse_duration, Config, ConfigError, DEFAULT_UDS_DIR};
use baton::instance::{run, RunOptions};
use baton_migrate::{watch_takeover, Role, UdsDir};
use clap::{Parser, Subcommand};
use tracing_subscriber::filter::{LevelFilter, ParseError, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Exit code for usage and configuration errors.
const USAGE: u8 = 2;

#[derive(Parser)]
#[command(name = "baton", version = baton::VERSION, about = "A sidecar proxy that hands its sockets to its successor on OpenKruise SidecarSet hot upgrade")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text", env = "BATON_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log level or filter (e.g. `debug`, `info,baton_migrate=debug`) [default: RUST_LOG, else info].
    #[arg(long, global = true, env = "BATON_LOG_LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configured listeners (takes over from a running instance when the Kruise env says so).
    Run {
        /// Configuration file (YAML or JSON); required, from this flag or BATON_CONFIG.
        #[arg(long, env = "BATON_CONFIG")]
        config: Option<PathBuf>,
        /// Directory shared by both sidecar slots [default: config handoff.uds_dir, else /var/run/baton].
        #[arg(long, env = "BATON_UDS_DIR")]
        uds_dir: Option<PathBuf>,
        /// Worker threads [default: one per CPU]. 1 runs everything on a single thread.
        #[arg(long, env = "BATON_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
        workers: Option<u16>,
    },
    /// postStart hook: wait until this slot's instance has taken over (exit 0), or failed (exit 1).
    Migrate {
        /// Configuration file, read only for handoff.uds_dir.
        #[arg(long, env = "BATON_CONFIG")]
        config: Option<PathBuf>,
        /// Directory shared by both sidecar slots [default: config handoff.uds_dir, else /var/run/baton].
        #[arg(long, env = "BATON_UDS_DIR")]
        uds_dir: Option<PathBuf>,
        /// Give up after this long (e.g. 500ms, 30s, 2m).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Print the phase of every baton instance running on the uds dir (exit 0 if one is serving, else 1).
    Status {
        /// Configuration file, read only for handoff.uds_dir.
        #[arg(long, env = "BATON_CONFIG")]
        config: Option<PathBuf>,
        /// Directory shared by both sidecar slots [default: config handoff.uds_dir, else /var/run/baton].
        #[arg(long, env = "BATON_UDS_DIR")]
        uds_dir: Option<PathBuf>,
    },
    /// Validate a configuration file and print a summary.
    Check {
        /// Configuration file (YAML or JSON); required, from this flag or BATON_CONFIG.
        #[arg(long, env = "BATON_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // `baton run` catches SIGTERM/SIGINT before anything else (even argument parsing) is done.
    let early_stop = std::env::args()
        .skip(1)
        .any(|a| a == "run")
        .then(baton::instance::catch_early_signals);
    let cli = Cli::parse();
    if let Err(e) = init_logging(cli.log_format, cli.log_level.as_deref()) {
        eprintln!("baton: --log-level: {e}");
        return ExitCode::from(USAGE);
    }
    match cli.command {
        Command::Check { config: None } => no_config("check"),
        Command::Run { config: None, .. } => no_config("run"),
        Command::Check { config: Some(config) } => match Config::load(&config) {
            Ok(c) => {
                println!("{}: valid", config.display());
                print!("{}", c.summary());
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        Command::Run {
            config: Some(config),
            uds_dir,
            workers,
        } => {
            let early_stop = early_stop.unwrap_or_else(baton::instance::catch_early_signals);
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return config_error(&e),
            };
            let role = match Role::from_env() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("baton: {e}");
                    return ExitCode::from(USAGE);
                }
            };
            let uds_dir = uds_dir.unwrap_or_else(|| config.handoff.uds_dir.clone());
            let failpoint = std::env::var("BATON_FAILPOINT").ok().filter(|s| !s.is_empty());
            let code = runtime(workers).block_on(run(RunOptions {
                config,
                uds_dir,
                role,
                failpoint,
                early_stop,
            }));
            ExitCode::from(code as u8)
        }
        Command::Migrate {
            config,
            uds_dir,
            timeout,
        } => match uds_dir_of(config, uds_dir) {
            Ok(dir) => migrate(&dir, timeout),
            Err(code) => code,
        },
        Command::Status { config, uds_dir } => match uds_dir_of(config, uds_dir) {
            Ok(dir) => status(&dir),
            Err(code) => code,
        },
    }
}

/// The uds dir: flag (or `BATON_UDS_DIR`), else the config's `handoff.uds_dir`, else the default.
fn uds_dir_of(config: Option<PathBuf>, uds_dir: Option<PathBuf>) -> Result<UdsDir, ExitCode> {
    let config_dir = match config.map(|p| Config::load(&p)) {
        Some(Ok(c)) => Some(c.handoff.uds_dir),
        Some(Err(e)) => return Err(config_error(&e)),
        None => None,
    };
    Ok(UdsDir::new(
        uds_dir.or(config_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_UDS_DIR)),
    ))
}

fn status(dir: &UdsDir) -> ExitCode {
    let instances = match dir.live_instances() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("baton status: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut docs: Vec<serde_json::Value> = instances
        .iter()
        .filter_map(|text| serde_json::from_str(text).ok())
        .collect();
    docs.sort_by_key(|d| d["generation"].as_u64().unwrap_or(0));
    if docs.is_empty() {
        println!("no baton instance is running on {}", dir.path().display());
        return ExitCode::FAILURE;
    }
    let mut serving = false;
    for d in &docs {
        let phase = d["phase"].as_str().unwrap_or("?");
        serving |= matches!(phase, "serving" | "handing-off");
        println!(
            "generation {:<3} phase {:<12} role {:<9} version {:<12} pid {}",
            d["generation"],
            phase,
            d["role"].as_str().unwrap_or("?"),
            d["version"].as_str().unwrap_or("?"),
            d["pid"]
        );
    }
    if serving {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `baton run` or `check` without a configuration file: says both ways to give one.
fn no_config(command: &str) -> ExitCode {
    eprintln!("baton {command}: no configuration file: pass --config FILE or set BATON_CONFIG=FILE");
    ExitCode::from(USAGE)
}

/// Why the Kruise env makes this a first start, in the env's own terms.
fn first_start_reason() -> String {
    if std::env::var_os("SIDECARSET_VERSION").is_none() {
        return "no SIDECARSET_VERSION: not under Kruise".into();
    }
    match std::env::var("SIDECARSET_VERSION_ALT") {
        Err(_) => "no SIDECARSET_VERSION_ALT".into(),
        Ok(alt) if alt.trim().is_empty() => "SIDECARSET_VERSION_ALT is empty".into(),
        Ok(alt) => format!(
            "SIDECARSET_VERSION_ALT={}: no instance in the other slot to take over from",
            alt.trim()
        ),
    }
}

fn migrate(dir: &UdsDir, timeout: Duration) -> ExitCode {
    let role = match Role::from_env() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("baton migrate: {e}");
            return ExitCode::from(USAGE);
        }
    };
    match role {
        Role::Idle => {
            println!("baton migrate: idle slot (SIDECARSET_VERSION is 0 or older than SIDECARSET_VERSION_ALT): nothing to migrate");
            return ExitCode::SUCCESS;
        }
        Role::Fresh => {
            println!(
                "baton migrate: first start ({}): nothing to migrate",
                first_start_reason()
            );
            return ExitCode::SUCCESS;
        }
        Role::Takeover => {}
    }
    let outcome = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(watch_takeover(dir, timeout)),
        Err(e) => Err(format!("cannot start the runtime: {e}")),
    };
    match outcome {
        Ok(p) if p.ok => {
            println!("baton migrate: {}: {}", p.phase, p.detail);
            ExitCode::SUCCESS
        }
        Ok(p) => {
            eprintln!("baton migrate: handoff failed: {}", p.detail);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("baton migrate: handoff failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("baton: {e}");
    ExitCode::from(USAGE)
}

fn runtime(workers: Option<u16>) -> tokio::runtime::Runtime {
    let built = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    };
    match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    }
}

/// The log filter: `--log-level` (or `BATON_LOG_LEVEL`), else `RUST_LOG` if it parses, else `info`. The syntax is a
/// level, `target=level` pairs, or both, comma-separated (e.g. `debug`, `info,baton_migrate=debug`).
fn init_logging(format: LogFormat, level: Option<&str>) -> Result<(), ParseError> {
    let filter: Targets = match level {
        Some(l) => l.parse()?,
        None => std::env::var("RUST_LOG")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO)),
    };
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(layer.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())))
            .init(),
        LogFormat::Json => registry
            .with(layer.json().flatten_event(true).with_current_span(false))
            .init(),
    }
    Ok(())
}
