//! The platform's configuration: one section per service plus what they
//! share. Defaults, then the `--config` TOML file, then `WF_IOT_...`
//! environment variables.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use wf_common::telemetry::LogConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PlatformConfig {
    /// Where the embedded databases, keys and files live.
    pub data_dir: PathBuf,
    /// The first admin's password (`WF_IOT_ADMIN_PASSWORD`); generated and
    /// printed once when unset.
    #[serde(serialize_with = "wf_common::config::redact_opt")]
    pub admin_password: Option<SecretString>,
    pub log: LogConfig,
    pub events: EventsConfig,
    pub auth: auth_service::Config,
    pub device: device_service::Config,
    pub mqtt_gateway: mqtt_gateway::Config,
    pub firmware: firmware_service::Config,
    pub gateway: api_gateway::Config,
}

/// Where services exchange events.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EventsConfig {
    /// `redis://host:6379` for Redis Streams (required when services run
    /// apart); empty for the in-process bus of the all-in-one mode.
    #[serde(serialize_with = "wf_common::config::redact_db_url")]
    pub redis_url: String,
    pub redis: wf_common::events::RedisBusConfig,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            admin_password: None,
            log: LogConfig::default(),
            events: EventsConfig::default(),
            auth: auth_service::Config::default(),
            device: device_service::Config::default(),
            mqtt_gateway: mqtt_gateway::Config::default(),
            firmware: firmware_service::Config::default(),
            gateway: api_gateway::Config::default(),
        }
    }
}

impl PlatformConfig {
    /// Loads the layered configuration and fills locations derived from the
    /// data directory.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut config: Self = wf_common::config::load(file)?;
        config.auth = config.auth.with_data_dir(&config.data_dir);
        config.device = config.device.with_data_dir(&config.data_dir);
        config.firmware = config.firmware.with_data_dir(&config.data_dir);
        Ok(config)
    }

    pub fn admin_password(&self) -> Option<String> {
        self.admin_password
            .as_ref()
            .map(|p| p.expose_secret().to_string())
            .filter(|p| !p.is_empty())
    }

    /// The effective configuration as TOML, secrets masked.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wf-iot.toml");
        std::fs::write(
            &file,
            "data_dir = \"/srv/wf\"\n[auth]\nhttp_port = 9101\naccess_token_ttl_secs = 60\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("WF_IOT_AUTH__ACCESS_TOKEN_TTL_SECS", "120");
            jail.set_env("WF_IOT_ADMIN_PASSWORD", "s3cret-pass");
            let config = PlatformConfig::load(Some(&file)).unwrap();
            assert_eq!(config.auth.http_port, 9101);
            assert_eq!(config.auth.access_token_ttl_secs, 120);
            assert_eq!(config.auth.database_url, "sqlite:///srv/wf/auth.db");
            assert_eq!(config.admin_password().as_deref(), Some("s3cret-pass"));
            let printed = config.to_toml().unwrap();
            assert!(!printed.contains("s3cret-pass"));
            assert!(printed.contains("http_port = 9101"));
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_an_error() {
        assert!(PlatformConfig::load(Some(Path::new("/nonexistent/wf-iot.toml"))).is_err());
    }
}
