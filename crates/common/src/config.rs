//! Layered configuration: built-in defaults, then an optional TOML file, then
//! `WF_IOT_...` environment variables (`__` separates nested keys, so
//! `WF_IOT_AUTH__HTTP_PORT=9000` sets `auth.http_port`).

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};

/// The prefix of every environment variable wf-iot reads.
pub const ENV_PREFIX: &str = "WF_IOT_";

/// Loads `T` from its defaults, the TOML file (when given) and the environment.
// figment's error is large, and returned once, at start-up, to be shown.
#[allow(clippy::result_large_err)]
pub fn load<T>(file: Option<&Path>) -> Result<T, figment::Error>
where
    T: Default + Serialize + DeserializeOwned,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(file) = file {
        if !file.exists() {
            return Err(figment::Error::from(format!(
                "configuration file {} does not exist",
                file.display()
            )));
        }
        figment = figment.merge(Toml::file(file));
    }
    figment
        .merge(Env::prefixed(ENV_PREFIX).split("__"))
        .extract()
}

/// Serializes a secret as a fixed mask, so printing a configuration never
/// shows it. Use with `#[serde(serialize_with = "redact")]`.
pub fn redact<S: Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    if secret.expose_secret().is_empty() {
        s.serialize_str("")
    } else {
        s.serialize_str("********")
    }
}

/// [`redact`] for optional secrets.
pub fn redact_opt<S: Serializer>(secret: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(secret) => redact(secret, s),
        None => s.serialize_none(),
    }
}

/// Hides the password of a database URL (`mysql://user:pass@host/db`).
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:********{}",
                    &url[..scheme_end + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Serializes a database URL with its password hidden.
pub fn redact_db_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url))
}

/// What is wrong with a configuration, every problem at once, each naming
/// the setting (`device.command_max_wait_secs`) a person changes to fix it.
#[derive(Debug, Default)]
pub struct Problems {
    section: String,
    found: Vec<String>,
}

impl Problems {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks a section: the settings `check` names are prefixed with
    /// `name` (`device` makes `http_port` read `device.http_port`).
    pub fn section(&mut self, name: &str, check: impl FnOnce(&mut Self)) {
        let inner = self.setting(name);
        let outer = std::mem::replace(&mut self.section, inner);
        check(self);
        self.section = outer;
    }

    /// The full name of a setting of the section being checked.
    pub fn setting(&self, name: &str) -> String {
        if self.section.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.section)
        }
    }

    /// Records that `setting` is wrong, and why, unless `ok`.
    pub fn require(&mut self, ok: bool, setting: &str, why: impl std::fmt::Display) {
        if !ok {
            self.add(setting, why);
        }
    }

    /// Records that `setting` is wrong, and why.
    pub fn add(&mut self, setting: &str, why: impl std::fmt::Display) {
        let setting = self.setting(setting);
        self.found.push(format!("{setting}: {why}"));
    }

    /// Records a problem between settings, already named in `why`.
    pub fn add_between(&mut self, why: impl std::fmt::Display) {
        self.found.push(why.to_string());
    }

    /// A text that must not be empty (nor only spaces).
    pub fn not_empty(&mut self, setting: &str, value: &str) {
        self.require(!value.trim().is_empty(), setting, "must not be empty");
    }

    /// A value that must be at least 1.
    pub fn positive<N: PartialOrd + Default + std::fmt::Display>(
        &mut self,
        setting: &str,
        value: N,
    ) {
        if value <= N::default() {
            self.add(setting, format_args!("must be at least 1, not {value}"));
        }
    }

    /// The two listeners of a service, unless one picks a free port (0).
    pub fn distinct_ports(&mut self, ports: &[(&str, u16)]) {
        for (i, (a, pa)) in ports.iter().enumerate() {
            for (b, pb) in &ports[i + 1..] {
                if *pa != 0 && pa == pb {
                    let (a, b) = (self.setting(a), self.setting(b));
                    self.found
                        .push(format!("{a} and {b} are both {pa}: give each its own port"));
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.found.iter().map(String::as_str)
    }

    /// An error listing every problem, one per line, or `Ok` when none.
    pub fn into_result(self) -> anyhow::Result<()> {
        if self.found.is_empty() {
            return Ok(());
        }
        let count = self.found.len();
        let list: Vec<String> = self.found.iter().map(|p| format!("  - {p}")).collect();
        anyhow::bail!(
            "the configuration has {count} problem{}:\n{}",
            if count == 1 { "" } else { "s" },
            list.join("\n")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_hidden() {
        assert_eq!(
            redact_url("mysql://root:hunter2@db:3306/iot"),
            "mysql://root:********@db:3306/iot"
        );
        assert_eq!(redact_url("mysql://root@db/iot"), "mysql://root@db/iot");
        assert_eq!(redact_url("sqlite://data/a.db"), "sqlite://data/a.db");
    }

    #[test]
    fn problems_name_their_settings_and_are_listed_together() {
        let mut problems = Problems::new();
        problems.section("device", |p| {
            p.positive("command_max_wait_secs", 0_i64);
            p.positive("max_series_points", 5_i64);
            p.distinct_ports(&[("http_port", 8102), ("grpc_port", 8102)]);
            p.distinct_ports(&[("http_port", 0), ("grpc_port", 0)]);
            p.section("worker", |p| p.require(false, "name", "must not be empty"));
        });
        p_require_outside(&mut problems);
        let listed: Vec<&str> = problems.iter().collect();
        assert_eq!(
            listed,
            [
                "device.command_max_wait_secs: must be at least 1, not 0",
                "device.http_port and device.grpc_port are both 8102: give each its own port",
                "device.worker.name: must not be empty",
                "issuer: must not be empty",
            ]
        );
        let message = problems.into_result().unwrap_err().to_string();
        assert!(
            message.starts_with("the configuration has 4 problems:\n  - device."),
            "{message}"
        );
        assert!(Problems::new().into_result().is_ok());
    }

    fn p_require_outside(problems: &mut Problems) {
        problems.require(false, "issuer", "must not be empty");
        problems.require(true, "data_dir", "never shown");
    }
}
