//! `wf-iot user create`: accounts made from the command line, for the first
//! admin of a distributed deployment or for recovery.

use std::sync::Arc;

use auth_service::CreateUser;

use crate::config::PlatformConfig;

#[derive(clap::Subcommand)]
pub enum Action {
    /// Create a user.
    Create {
        #[arg(long)]
        username: String,
        #[arg(long)]
        email: String,
        /// The password; read from WF_IOT_USER_PASSWORD when not given, and
        /// generated (and printed) when neither is set.
        #[arg(long, env = "WF_IOT_USER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[arg(long, default_value = "")]
        full_name: String,
        /// A superuser with the admin role.
        #[arg(long)]
        admin: bool,
        /// Role names (repeatable); defaults to viewer, or admin with --admin.
        #[arg(long = "role")]
        roles: Vec<String>,
    },
}

pub async fn run(config: PlatformConfig, action: Action) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let state = auth_service::open(Arc::new(config.auth.clone())).await?;
    match action {
        Action::Create {
            username,
            email,
            password,
            full_name,
            admin,
            mut roles,
        } => {
            if roles.is_empty() {
                roles.push(if admin { "admin" } else { "viewer" }.to_string());
            }
            let generated = password.is_none().then(wf_common::random::password);
            let password = password.or_else(|| generated.clone()).unwrap_or_default();
            let id = state
                .create_user(CreateUser {
                    username: username.clone(),
                    email,
                    full_name,
                    password,
                    is_superuser: admin,
                    roles,
                })
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("created user {username} ({id})");
            if let Some(p) = generated {
                println!("password: {p}");
            }
        }
    }
    Ok(())
}
