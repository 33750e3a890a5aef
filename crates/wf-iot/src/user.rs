//! `wf-iot user create` and `wf-iot user reset-password`: accounts made and
//! recovered from the command line, for the first admin of a distributed
//! deployment or when the administrator's password is lost.

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
    /// Set a new password for an account (by username or e-mail), ending
    /// its sessions: the way back in when the password is lost.
    ResetPassword {
        /// The account's username or e-mail.
        login: String,
        /// The new password; read from WF_IOT_USER_PASSWORD when not given,
        /// and generated (and printed) when neither is set.
        #[arg(long, env = "WF_IOT_USER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
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
        Action::ResetPassword { login, password } => {
            let user = state
                .store
                .find_user_by_login(&login.trim().to_ascii_lowercase())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .ok_or_else(|| {
                    anyhow::anyhow!("no account with the username or e-mail {login:?}")
                })?;
            let generated = password.is_none().then(wf_common::random::password);
            let password = password.or_else(|| generated.clone()).unwrap_or_default();
            let new = auth_service::domain::NewPassword::parse(password)
                .map_err(|e| anyhow::anyhow!("the new password: {e}"))?;
            let hash = state
                .hasher
                .hash(new.expose().to_string())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let now = wf_common::now_millis();
            let store = &state.store;
            async {
                store.set_password(&user.id, &hash, now).await?;
                store.revoke_user_tokens(&user.id, now).await?;
                store
                    .insert_audit(
                        auth_service::store::AuditEntry {
                            action: "user.password_reset",
                            target: Some(user.id.clone()),
                            outcome: "success",
                            details: Some(serde_json::json!({ "via": "command line" })),
                            ..Default::default()
                        },
                        now,
                    )
                    .await
            }
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "new password set for {}; its sessions are ended",
                user.username
            );
            if let Some(p) = generated {
                println!("password: {p}");
            }
        }
    }
    Ok(())
}
