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
}
