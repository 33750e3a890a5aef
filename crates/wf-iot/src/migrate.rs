//! `wf-iot migrate up|down|status`: each service's database, forward and back.

use anyhow::Context;
use wf_common::db::{Db, Migrations};

use crate::config::PlatformConfig;

#[derive(clap::Subcommand)]
pub enum Action {
    /// Apply every pending migration (creating MySQL databases when missing).
    Up {
        #[arg(long, value_enum, default_value_t = Service::All)]
        service: Service,
    },
    /// Revert the newest migrations.
    Down {
        #[arg(long, value_enum)]
        service: Service,
        /// How many migrations to revert.
        #[arg(long, default_value_t = 1)]
        steps: usize,
    },
    /// List migrations and whether each is applied.
    Status {
        #[arg(long, value_enum, default_value_t = Service::All)]
        service: Service,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    All,
    Auth,
    Device,
    Firmware,
}

/// The services that own a database: name, URL, migrations.
fn databases(
    config: &PlatformConfig,
    wanted: Service,
) -> Vec<(&'static str, String, &'static Migrations)> {
    let all = [
        (
            Service::Auth,
            "auth",
            config.auth.database_url.clone(),
            &auth_service::store::MIGRATIONS,
        ),
        (
            Service::Device,
            "device",
            config.device.database_url.clone(),
            &device_service::store::MIGRATIONS,
        ),
        (
            Service::Firmware,
            "firmware",
            config.firmware.database_url.clone(),
            &firmware_service::store::MIGRATIONS,
        ),
    ];
    all.into_iter()
        .filter(|(s, ..)| wanted == Service::All || *s == wanted)
        .map(|(_, name, url, m)| (name, url, m))
        .collect()
}

async fn open(url: &str) -> anyhow::Result<Db> {
    Db::create_database_if_missing(url).await?;
    Ok(Db::connect(url, 2).await?)
}

pub async fn run(config: &PlatformConfig, action: Action) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    match action {
        Action::Up { service } => {
            for (name, url, migrations) in databases(config, service) {
                let db = open(&url)
                    .await
                    .with_context(|| format!("opening the {name} database"))?;
                db.migrate_up(migrations)
                    .await
                    .with_context(|| format!("migrating {name}"))?;
                let applied = db
                    .status(migrations)
                    .await?
                    .iter()
                    .filter(|m| m.applied)
                    .count();
                println!("{name}: up to date ({applied} migrations applied)");
            }
        }
        Action::Down { service, steps } => {
            anyhow::ensure!(
                service != Service::All,
                "name one service to revert, e.g. --service auth"
            );
            for (name, url, migrations) in databases(config, service) {
                let db = open(&url)
                    .await
                    .with_context(|| format!("opening the {name} database"))?;
                let reverted = db.migrate_down(migrations, steps).await?;
                if reverted.is_empty() {
                    println!("{name}: nothing to revert");
                }
                for version in reverted {
                    println!("{name}: reverted {version}");
                }
            }
        }
        Action::Status { service } => {
            for (name, url, migrations) in databases(config, service) {
                let db = open(&url)
                    .await
                    .with_context(|| format!("opening the {name} database"))?;
                println!("{name} ({})", wf_common::config::redact_url(&url));
                for m in db.status(migrations).await? {
                    let state = if m.applied { "applied" } else { "pending" };
                    println!("  {:>14}  {state:<8} {}", m.version, m.description);
                }
            }
        }
    }
    Ok(())
}
