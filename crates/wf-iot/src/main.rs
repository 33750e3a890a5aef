//! `wf-iot`: the platform's command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use wf_iot::config::{PlatformConfig, Role};
use wf_iot::{bench, migrate, serve, simulate, user};

/// mimalloc instead of the C library's allocator: a request through the
/// gateway allocates at every hop, and glibc's malloc spends a tenth of the
/// CPU time on it under load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Read from the working directory when no `--config` is given, so that a
/// moved port or any other setting sticks from one start to the next.
const DEFAULT_CONFIG_FILE: &str = "wf-iot.toml";

#[derive(Parser)]
#[command(name = "wf-iot", version, about = "An IoT device-management platform")]
struct Cli {
    /// A TOML configuration file (environment variables WF_IOT_... override
    /// it). Without it, ./wf-iot.toml is read when there is one.
    #[arg(long, global = true, env = "WF_IOT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform: every service in one process, or one service alone.
    Serve {
        #[arg(value_enum, default_value_t = serve::Target::All)]
        service: serve::Target,
        #[command(flatten)]
        ports: serve::PortFlags,
    },
    /// Apply, revert or list database migrations.
    Migrate {
        #[command(subcommand)]
        action: migrate::Action,
    },
    /// Manage user accounts directly in the database.
    User {
        #[command(subcommand)]
        action: user::Action,
    },
    /// Print the effective configuration of a service (secrets masked), or
    /// with --check only whether it is usable; exits with 2 listing every
    /// problem when it is not.
    Config {
        /// The service whose configuration is shown: `all` (the default),
        /// or one run alone, as `wf-iot serve` takes it.
        #[arg(long, value_enum, default_value_t = serve::Target::All)]
        service: serve::Target,
        /// Print only whether the configuration is usable.
        #[arg(long)]
        check: bool,
    },
    /// Run simulated devices against a running platform.
    Simulate(simulate::SimulateArgs),
    /// Measure throughput on this machine.
    #[command(subcommand)]
    Bench(bench::Bench),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let file = cli.config.clone().or_else(|| {
        let local = PathBuf::from(DEFAULT_CONFIG_FILE);
        local.is_file().then_some(local)
    });
    let role = match &cli.command {
        Command::Serve { service, .. } | Command::Config { service, .. } => {
            Some(Role::Serve(*service))
        }
        Command::Migrate { .. } | Command::User { .. } => Some(Role::Admin),
        Command::Simulate(_) | Command::Bench(_) => None,
    };
    let loaded = PlatformConfig::load(file.as_deref()).and_then(|mut config| {
        if let Command::Serve { ports, .. } = &cli.command {
            ports.apply(&mut config);
        }
        match role {
            Some(role) => config.complete(role),
            None => Ok(config),
        }
    });
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Command::Config { service, check } = cli.command {
        if check {
            println!(
                "the configuration of `wf-iot serve {}` is usable",
                service_name(service)
            );
            return std::process::ExitCode::SUCCESS;
        }
        return match config.to_toml() {
            Ok(text) => {
                print!("{text}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    wf_common::telemetry::init_logging(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { service, .. } => {
                if let Some(file) = &file {
                    tracing::info!(file = %file.display(), "configuration read");
                }
                serve::run(config, service).await
            }
            Command::Migrate { action } => migrate::run(&config, action).await,
            Command::User { action } => user::run(config, action).await,
            Command::Simulate(args) => simulate::run(args).await,
            Command::Bench(bench) => bench::run(bench).await,
            Command::Config { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A target as `wf-iot serve` takes it on the command line.
fn service_name(target: serve::Target) -> String {
    use clap::ValueEnum;
    target
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}
