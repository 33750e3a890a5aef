//! `wf-iot serve`: every service in one process (the default), or one
//! service alone for the distributed deployment.

use std::sync::Arc;

use anyhow::Context;
use auth_service::AdminBootstrap;

use crate::config::PlatformConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// All services with embedded defaults.
    All,
    /// auth-service alone.
    Auth,
}

pub async fn run(config: PlatformConfig, target: Target) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let admin_password = config.admin_password();
    let auth = auth_service::Application::build(Arc::new(config.auth.clone())).await?;
    tracing::info!(
        http_port = auth.http_port(),
        grpc_port = auth.grpc_port(),
        "auth-service listening"
    );
    if target == Target::All {
        match auth.ensure_admin(admin_password).await? {
            AdminBootstrap::Existing => {}
            AdminBootstrap::Created {
                username,
                generated_password,
            } => print_admin_banner(&username, generated_password.as_deref(), auth.http_port()),
        }
    }
    auth.run_until_stopped(wf_common::shutdown::signal()).await
}

fn print_admin_banner(username: &str, generated: Option<&str>, http_port: u16) {
    println!();
    println!("  wf-iot created the first administrator account.");
    println!("    username: {username}");
    match generated {
        Some(password) => {
            println!("    password: {password}");
            println!("  This password is shown only once: keep it, then change it.");
        }
        None => println!("    password: the value of WF_IOT_ADMIN_PASSWORD"),
    }
    println!(
        "  Log in: curl -s -X POST http://localhost:{http_port}/api/v1/auth/login \
         -H 'content-type: application/json' -d '{{\"username\":\"{username}\",\"password\":\"...\"}}'"
    );
    println!();
}
