//! The platform's configuration: one section per service plus what they
//! share. Defaults, then the `--config` TOML file, then `WF_IOT_...`
//! environment variables.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use wf_common::config::Problems;
use wf_common::telemetry::LogConfig;

use crate::serve::Target;

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

/// What a process does with its configuration, which decides how the
/// configuration is completed and what is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `wf-iot serve`: every service in one process, or one alone.
    Serve(Target),
    /// `wf-iot migrate` and `wf-iot user`: the databases and files only.
    Admin,
}

/// The issuer every section has until it is set.
const DEFAULT_ISSUER: &str = "wf-iot";

/// How many devices the all-in-one device-service keeps in memory.
const ALL_IN_ONE_DEVICE_CACHE: usize = 100_000;

/// Where a worker running alone serves `/healthz`, `/readyz` and
/// `/metrics` unless `firmware.worker.http_port` says otherwise.
pub const WORKER_HTTP_PORT: u16 = 8105;

impl PlatformConfig {
    /// Loads the layered configuration: defaults, the file, the
    /// environment. [`PlatformConfig::complete`] makes it usable.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        Ok(wf_common::config::load(file)?)
    }

    /// The one place a loaded configuration is completed and checked for
    /// what the process does: locations under the data directory, the
    /// issuer every section follows, the internal token, the all-in-one
    /// process's internal listeners, a service alone's Redis and worker
    /// port. Every problem found is reported at once, each naming its
    /// setting. Completing twice gives the same configuration (the
    /// all-in-one process makes a new internal token each time).
    pub fn complete(mut self, role: Role) -> anyhow::Result<Self> {
        self.fill(role);
        self.problems(role).into_result()?;
        Ok(self)
    }

    fn fill(&mut self, role: Role) {
        let data_dir = self.data_dir.clone();
        self.auth = std::mem::take(&mut self.auth).with_data_dir(&data_dir);
        self.device = std::mem::take(&mut self.device).with_data_dir(&data_dir);
        self.firmware = std::mem::take(&mut self.firmware).with_data_dir(&data_dir);
        // The issuer is set once, under [auth]; a section set apart keeps
        // its own (and is refused below if it differs).
        let issuer = self.auth.issuer.clone();
        for section in [
            &mut self.device.issuer,
            &mut self.firmware.issuer,
            &mut self.gateway.issuer,
        ] {
            if section.as_str() == DEFAULT_ISSUER {
                section.clone_from(&issuer);
            }
        }
        let Role::Serve(target) = role else {
            return;
        };
        let token = match (self.internal.token(), target) {
            (Ok(Some(token)), _) => Some(token),
            (Ok(None), Target::All) => Some(wf_common::grpc::InternalToken::generate()),
            _ => None,
        };
        if let Some(token) = token {
            self.auth.internal_token = token.clone();
            self.device.internal_token = token.clone();
            self.mqtt_gateway.internal_token = token.clone();
            self.firmware.internal_token = token;
        }
        if target == Target::All {
            keep_services_internal(self);
            // The broker runs in this process: no device is connected yet.
            self.device.reset_status_on_start = true;
            // One device-service writes the device database: it may keep
            // devices in memory. A capacity set in the configuration is
            // kept; 0 (the default, right for replicas) means the all-in-one
            // capacity here.
            if self.device.device_cache_capacity == 0 {
                self.device.device_cache_capacity = ALL_IN_ONE_DEVICE_CACHE;
            }
            return;
        }
        // Replicas share the permission answers they get through the bus's
        // Redis, unless told otherwise.
        let redis = &self.events.redis_url;
        for cache in [
            &mut self.device.permission_cache_redis_url,
            &mut self.firmware.permission_cache_redis_url,
        ] {
            if cache.trim().is_empty() {
                cache.clone_from(redis);
            }
        }
        // Alone, the worker answers its own health and readiness probes.
        if target == Target::Worker {
            self.firmware.worker.http_port =
                self.firmware.worker.http_port.or(Some(WORKER_HTTP_PORT));
        }
    }

    /// Every problem of the configuration for `role`.
    pub fn problems(&self, role: Role) -> Problems {
        let mut p = Problems::new();
        let Role::Serve(target) = role else {
            return p;
        };
        let serves = |t: Target| target == Target::All || target == t;
        if serves(Target::Auth) {
            p.section("auth", |p| self.auth.check(p));
        }
        if serves(Target::Device) {
            p.section("device", |p| self.device.check(p));
        }
        if serves(Target::MqttGateway) {
            p.section("mqtt_gateway", |p| self.mqtt_gateway.check(p));
        }
        if serves(Target::Firmware) || serves(Target::Worker) {
            p.section("firmware", |p| self.firmware.check(p));
        }
        if serves(Target::Gateway) {
            p.section("gateway", |p| self.gateway.check(p));
        }
        for (setting, issuer) in [
            ("device.issuer", &self.device.issuer),
            ("firmware.issuer", &self.firmware.issuer),
            ("gateway.issuer", &self.gateway.issuer),
        ] {
            if *issuer != self.auth.issuer {
                p.add_between(format_args!(
                    "{setting} {issuer:?} differs from auth.issuer {:?}: every token auth-service \
                     issues would be refused; set the issuer once, as auth.issuer \
                     (WF_IOT_AUTH__ISSUER), on every service",
                    self.auth.issuer
                ));
            }
        }
        p.distinct_ports(&self.listeners(target));
        if let Err(e) = self.internal.token() {
            p.add_between(e);
        }
        if target == Target::All {
            if self.device.command_max_wait_secs
                >= i64::try_from(self.gateway.upstream_timeout_secs).unwrap_or(i64::MAX)
            {
                p.add_between(format_args!(
                    "device.command_max_wait_secs ({}) must be shorter than \
                     gateway.upstream_timeout_secs ({}), or the api-gateway gives up on a \
                     ?wait=true command before device-service answers",
                    self.device.command_max_wait_secs, self.gateway.upstream_timeout_secs
                ));
            }
            return p;
        }
        if target != Target::Gateway && matches!(self.internal.token(), Ok(None)) {
            p.add_between(format_args!(
                "internal.token: a service running on its own needs it \
                 (WF_IOT_INTERNAL__TOKEN): the same secret of at least {} characters on every \
                 service, for example the output of `openssl rand -hex 32`",
                wf_common::grpc::InternalToken::MIN_LEN
            ));
        }
        p.require(
            !self.events.redis_url.trim().is_empty(),
            "events.redis_url",
            "a service running on its own needs the event bus \
             (WF_IOT_EVENTS__REDIS_URL=redis://127.0.0.1:6379)",
        );
        p
    }

    /// The ports `target` listens on, by setting (0: a free port, never
    /// in conflict).
    fn listeners(&self, target: Target) -> Vec<(&'static str, u16)> {
        let serves = |t: Target| target == Target::All || target == t;
        let mut ports = Vec::new();
        if serves(Target::Auth) {
            ports.push(("auth.http_port", self.auth.http_port));
            ports.push(("auth.grpc_port", self.auth.grpc_port));
        }
        if serves(Target::Device) {
            ports.push(("device.http_port", self.device.http_port));
            ports.push(("device.grpc_port", self.device.grpc_port));
        }
        if serves(Target::MqttGateway) {
            let gateway = &self.mqtt_gateway;
            if gateway.broker == mqtt_gateway::BrokerMode::Embedded {
                ports.push(("mqtt_gateway.mqtt_port", gateway.mqtt_port));
                if gateway.ws_enabled {
                    ports.push(("mqtt_gateway.ws_port", gateway.ws_port));
                }
            }
            ports.push(("mqtt_gateway.http_port", gateway.http_port));
            ports.push(("mqtt_gateway.grpc_port", gateway.grpc_port));
        }
        if serves(Target::Firmware) {
            ports.push(("firmware.http_port", self.firmware.http_port));
            ports.push(("firmware.grpc_port", self.firmware.grpc_port));
        }
        if serves(Target::Worker)
            && let Some(port) = self.firmware.worker.http_port
        {
            ports.push(("firmware.worker.http_port", port));
        }
        if serves(Target::Gateway) {
            ports.push(("gateway.http_port", self.gateway.http_port));
        }
        ports
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

/// In the all-in-one platform nothing outside the process needs the
/// services' own ports: unless `internal.expose_services` is set, their
/// HTTP and gRPC listeners left on the wildcard address listen on 127.0.0.1
/// only, and gRPC ports left at the distributed defaults (50051-50054,
/// inside the kernel's range of source ports) become free ports. The
/// api-gateway and the MQTT listeners stay where they are configured.
fn keep_services_internal(config: &mut PlatformConfig) {
    if config.internal.expose_services {
        return;
    }
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let internal = |host: &mut IpAddr| {
        if host.is_unspecified() {
            *host = loopback;
        }
    };
    internal(&mut config.auth.host);
    internal(&mut config.device.host);
    internal(&mut config.firmware.host);
    if config.mqtt_gateway.service_host.is_none() {
        let mut host = config.mqtt_gateway.host;
        internal(&mut host);
        config.mqtt_gateway.service_host = Some(host);
    }
    let ephemeral = |port: &mut u16, default: u16| {
        if *port == default {
            *port = 0;
        }
    };
    ephemeral(
        &mut config.auth.grpc_port,
        auth_service::Config::default().grpc_port,
    );
    ephemeral(
        &mut config.device.grpc_port,
        device_service::Config::default().grpc_port,
    );
    ephemeral(
        &mut config.mqtt_gateway.grpc_port,
        mqtt_gateway::Config::default().grpc_port,
    );
    ephemeral(
        &mut config.firmware.grpc_port,
        firmware_service::Config::default().grpc_port,
    );
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
            let config = PlatformConfig::load(Some(&file))
                .unwrap()
                .complete(Role::Admin)
                .unwrap();
            assert_eq!(config.auth.http_port, 9101);
            assert_eq!(config.auth.access_token_ttl_secs, 120);
            assert_eq!(config.auth.database_url, "sqlite:///srv/wf/auth.db");
            assert_eq!(config.admin_password().as_deref(), Some("s3cret-pass"));
            let printed = config.to_toml().unwrap();
            assert!(!printed.contains("s3cret-pass"));
            assert_eq!(
                config.internal.token().unwrap().unwrap().expose(),
                "internal-s3cret-token"
            );
            assert!(!printed.contains("internal-s3cret-token"));
            assert!(printed.contains("http_port = 9101"));
            Ok(())
        });
    }

    /// `wf-iot serve device` with every setting it needs.
    fn device_alone() -> PlatformConfig {
        let mut config = PlatformConfig::default();
        config.internal.token = Some("internal-s3cret-token".to_string().into());
        config.events.redis_url = "redis://127.0.0.1:6379".into();
        config
    }

    fn problems(config: &PlatformConfig, role: Role) -> Vec<String> {
        config.problems(role).iter().map(str::to_string).collect()
    }

    #[test]
    fn a_service_alone_needs_a_usable_internal_token_and_the_bus() {
        let alone = Role::Serve(Target::Device);
        assert_eq!(problems(&device_alone(), alone), Vec::<String>::new());
        let mut config = device_alone();
        config.internal.token = None;
        config.events.redis_url = String::new();
        let found = problems(&config, alone);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("WF_IOT_INTERNAL__TOKEN"), "{found:?}");
        assert!(found[1].starts_with("events.redis_url:"), "{found:?}");
        config.internal.token = Some("short".to_string().into());
        assert!(problems(&config, alone)[0].contains("at least 16"));
        // The api-gateway calls no service over gRPC.
        let mut gateway = device_alone();
        gateway.internal.token = None;
        assert!(problems(&gateway, Role::Serve(Target::Gateway)).is_empty());
        // The all-in-one process makes a token of its own.
        assert!(problems(&PlatformConfig::default(), Role::Serve(Target::All)).is_empty());
    }

    #[test]
    fn the_issuer_is_set_once_and_a_different_one_is_refused() {
        let mut config = device_alone();
        config.auth.issuer = "acme-iot".into();
        let completed = config
            .clone()
            .complete(Role::Serve(Target::Device))
            .unwrap();
        assert_eq!(completed.device.issuer, "acme-iot");
        assert_eq!(completed.firmware.issuer, "acme-iot");
        assert_eq!(completed.gateway.issuer, "acme-iot");
        config.gateway.issuer = "other".into();
        let err = config
            .complete(Role::Serve(Target::All))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gateway.issuer \"other\" differs from auth.issuer \"acme-iot\""),
            "{err}"
        );
    }

    #[test]
    fn the_all_in_one_process_refuses_a_port_two_services_share() {
        let mut config = PlatformConfig::default();
        config.gateway.http_port = 1883;
        config.device.command_max_wait_secs = 90;
        config.firmware.worker.batch_size = 0;
        let found = problems(&config, Role::Serve(Target::All));
        assert_eq!(
            found,
            [
                "firmware.worker.batch_size: must be at least 1, not 0",
                "mqtt_gateway.mqtt_port and gateway.http_port are both 1883: give each its own port",
                "device.command_max_wait_secs (90) must be shorter than \
                 gateway.upstream_timeout_secs (60), or the api-gateway gives up on a ?wait=true \
                 command before device-service answers",
            ]
        );
        // Services run apart each have their own machine, or their own ports.
        let mut apart = device_alone();
        apart.gateway.http_port = 8102;
        assert!(problems(&apart, Role::Serve(Target::Device)).is_empty());
        apart.device.grpc_port = 8102;
        assert_eq!(
            problems(&apart, Role::Serve(Target::Device)),
            ["device.http_port and device.grpc_port are both 8102: give each its own port"]
        );
        // The default configuration is right for every role.
        for target in [
            Target::Auth,
            Target::MqttGateway,
            Target::Firmware,
            Target::Worker,
        ] {
            assert!(
                problems(&device_alone(), Role::Serve(target)).is_empty(),
                "{target:?}"
            );
        }
    }

    #[test]
    fn completing_the_all_in_one_configuration_keeps_its_services_internal() {
        let mut config = PlatformConfig::default();
        config.device.host = "10.1.2.3".parse().unwrap();
        config.firmware.grpc_port = 6000;
        let config = config.complete(Role::Serve(Target::All)).unwrap();
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(config.auth.host, loopback);
        assert_eq!(config.firmware.host, loopback);
        assert_eq!(config.mqtt_gateway.service_host, Some(loopback));
        // A host chosen on purpose is kept, and the public listeners stay public.
        assert_eq!(config.device.host, "10.1.2.3".parse::<IpAddr>().unwrap());
        assert!(config.mqtt_gateway.host.is_unspecified());
        assert!(config.gateway.host.is_unspecified());
        // gRPC ports at the distributed defaults become free ports; a
        // configured one is kept.
        assert_eq!(config.auth.grpc_port, 0);
        assert_eq!(config.device.grpc_port, 0);
        assert_eq!(config.mqtt_gateway.grpc_port, 0);
        assert_eq!(config.firmware.grpc_port, 6000);
        // Every service carries the same internal token, and the device
        // service knows no device is connected at start.
        assert_eq!(
            config.device.internal_token.expose(),
            config.auth.internal_token.expose()
        );
        assert!(config.device.reset_status_on_start);

        let mut exposed = PlatformConfig::default();
        exposed.internal.expose_services = true;
        let exposed = exposed.complete(Role::Serve(Target::All)).unwrap();
        assert!(exposed.auth.host.is_unspecified());
        assert_eq!(exposed.auth.grpc_port, 50051);
        assert_eq!(exposed.mqtt_gateway.service_host, None);

        // Alone, a service keeps its address and shares the bus's Redis.
        let device = device_alone()
            .complete(Role::Serve(Target::Device))
            .unwrap();
        assert!(device.device.host.is_unspecified());
        assert_eq!(
            device.device.permission_cache_redis_url,
            "redis://127.0.0.1:6379"
        );
        assert!(!device.device.reset_status_on_start);
        let worker = device_alone()
            .complete(Role::Serve(Target::Worker))
            .unwrap();
        assert_eq!(worker.firmware.worker.http_port, Some(WORKER_HTTP_PORT));
    }

    #[test]
    fn missing_file_is_an_error() {
        assert!(PlatformConfig::load(Some(Path::new("/nonexistent/wf-iot.toml"))).is_err());
    }
}
