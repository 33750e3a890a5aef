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
    pub internal: InternalConfig,
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

/// How the services reach one another.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct InternalConfig {
    /// The secret every gRPC call between services carries
    /// (`WF_IOT_INTERNAL__TOKEN`, at least 16 printable characters). Services
    /// run apart need the same value on each; the all-in-one platform makes
    /// one of its own when it is empty.
    #[serde(serialize_with = "wf_common::config::redact_opt")]
    pub token: Option<SecretString>,
    /// All-in-one only: bind the services' own HTTP and gRPC listeners to
    /// the `host` of their sections. By default they listen on 127.0.0.1
    /// only, and the gRPC ports are free ports chosen at start; the
    /// api-gateway (console and API) and the MQTT listeners are public
    /// either way.
    pub expose_services: bool,
}

impl InternalConfig {
    /// The configured token, if any.
    pub fn token(&self) -> anyhow::Result<Option<wf_common::grpc::InternalToken>> {
        match self
            .token
            .as_ref()
            .map(|t| t.expose_secret().trim().to_string())
        {
            Some(t) if !t.is_empty() => wf_common::grpc::InternalToken::parse(&t)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("internal.token (WF_IOT_INTERNAL__TOKEN): {e}")),
            _ => Ok(None),
        }
    }

    /// The configured token, which a service running on its own needs.
    pub fn required_token(&self) -> anyhow::Result<wf_common::grpc::InternalToken> {
        self.token()?.ok_or_else(|| {
            anyhow::anyhow!(
                "a service running on its own needs internal.token (WF_IOT_INTERNAL__TOKEN): \
                 the same secret of at least {} characters on every service, for example \
                 the output of `openssl rand -hex 32`",
                wf_common::grpc::InternalToken::MIN_LEN
            )
        })
    }
}

impl Default for PlatformConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            admin_password: None,
            log: LogConfig::default(),
            events: EventsConfig::default(),
            internal: InternalConfig::default(),
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
#[allow(clippy::unwrap_used, clippy::result_large_err)]
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
            jail.set_env("WF_IOT_INTERNAL__TOKEN", "internal-s3cret-token");
            let config = PlatformConfig::load(Some(&file)).unwrap();
            assert_eq!(config.auth.http_port, 9101);
            assert_eq!(config.auth.access_token_ttl_secs, 120);
            assert_eq!(config.auth.database_url, "sqlite:///srv/wf/auth.db");
            assert_eq!(config.admin_password().as_deref(), Some("s3cret-pass"));
            let printed = config.to_toml().unwrap();
            assert!(!printed.contains("s3cret-pass"));
            assert_eq!(
                config.internal.required_token().unwrap().expose(),
                "internal-s3cret-token"
            );
            assert!(!printed.contains("internal-s3cret-token"));
            assert!(printed.contains("http_port = 9101"));
            Ok(())
        });
    }

    #[test]
    fn a_service_alone_needs_a_usable_internal_token() {
        let mut internal = InternalConfig::default();
        let err = internal.required_token().unwrap_err().to_string();
        assert!(err.contains("WF_IOT_INTERNAL__TOKEN"), "{err}");
        internal.token = Some("short".to_string().into());
        let err = internal.required_token().unwrap_err().to_string();
        assert!(err.contains("at least 16"), "{err}");
        internal.token = Some("has a space in the middle".to_string().into());
        assert!(internal.required_token().is_err());
    }

    #[test]
    fn missing_file_is_an_error() {
        assert!(PlatformConfig::load(Some(Path::new("/nonexistent/wf-iot.toml"))).is_err());
    }
}
