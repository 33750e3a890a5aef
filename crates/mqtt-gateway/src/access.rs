//! Who may connect, and to which topics: the rules the embedded broker's
//! hooks and the EMQX HTTP hooks share.

use crate::clients::DeviceAuthenticator;
use crate::domain::{DeviceId, may_publish, may_subscribe};
use crate::error::Error;

/// What a client presents in its CONNECT.
#[derive(Debug, Clone, Copy)]
pub struct ConnectRequest<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    /// The topic of its last will, when it set one.
    pub will_topic: Option<&'a str>,
}

/// Why a CONNECT is refused.
#[derive(Debug)]
pub enum Refusal {
    /// Missing or wrong credentials.
    BadCredentials,
    /// Valid-looking credentials used in a way a device may not.
    NotAuthorized(&'static str),
    /// The credentials could not be checked.
    Unavailable(Error),
}

impl Refusal {
    /// The `reason` label of the refused-connections metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadCredentials => "bad_credentials",
            Self::NotAuthorized(_) => "not_authorized",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// A device connects with its id as both client id and username, and its
/// secret as password. Tying the client id to the username keeps a device
/// from taking over another's session; the last will is vetted here
/// because the broker publishes it without a publish check.
pub async fn authorize_connect(
    authenticator: &dyn DeviceAuthenticator,
    req: ConnectRequest<'_>,
) -> Result<DeviceId, Refusal> {
    let device = DeviceId::parse(req.client_id)
        .map_err(|_| Refusal::NotAuthorized("the client id is not a device id"))?;
    let username = req.username.ok_or(Refusal::BadCredentials)?;
    if username != device.as_str() {
        return Err(Refusal::NotAuthorized(
            "the client id must equal the username",
        ));
    }
    if req.will_topic.is_some_and(|t| !may_publish(&device, t)) {
        return Err(Refusal::NotAuthorized(
            "the last will must be on one of the device's own topics",
        ));
    }
    let secret = req
        .password
        .filter(|p| !p.is_empty())
        .and_then(|p| std::str::from_utf8(p).ok())
        .ok_or(Refusal::BadCredentials)?;
    match authenticator.authenticate(device.as_str(), secret).await {
        Ok(true) => Ok(device),
        Ok(false) => Err(Refusal::BadCredentials),
        Err(e) => Err(Refusal::Unavailable(e)),
    }
}

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Publish,
    Subscribe,
}

/// Whether the connected client may `action` on `topic` (a filter for a
/// subscription): only a device, under its own `devices/{id}/`.
pub fn authorize_topic(
    client_id: &str,
    username: Option<&str>,
    topic: &str,
    action: Action,
) -> bool {
    let Ok(device) = DeviceId::parse(client_id) else {
        return false;
    };
    if username.is_some_and(|u| u != client_id) {
        return false;
    }
    match action {
        Action::Publish => may_publish(&device, topic),
        Action::Subscribe => may_subscribe(&device, topic),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    #[async_trait::async_trait]
    impl DeviceAuthenticator for Fixed {
        async fn authenticate(&self, device_id: &str, secret: &str) -> Result<bool, Error> {
            match device_id {
                "down" => Err(Error::Unavailable("device-service is down".into())),
                _ => Ok(device_id == "d1" && secret == "s1"),
            }
        }
    }

    fn req<'a>(client_id: &'a str, username: &'a str, password: &'a str) -> ConnectRequest<'a> {
        ConnectRequest {
            client_id,
            username: Some(username),
            password: Some(password.as_bytes()),
            will_topic: None,
        }
    }

    #[tokio::test]
    async fn devices_connect_with_their_id_twice_and_their_secret() {
        let device = authorize_connect(&Fixed, req("d1", "d1", "s1"))
            .await
            .unwrap();
        assert_eq!(device.as_str(), "d1");
        let refused = |r: Result<DeviceId, Refusal>| r.unwrap_err().reason();
        assert_eq!(
            refused(authorize_connect(&Fixed, req("d1", "d1", "s2")).await),
            "bad_credentials"
        );
        assert_eq!(
            refused(authorize_connect(&Fixed, req("d1", "d1", "")).await),
            "bad_credentials"
        );
        assert_eq!(
            refused(authorize_connect(&Fixed, req("d2", "d1", "s1")).await),
            "not_authorized"
        );
        assert_eq!(
            refused(authorize_connect(&Fixed, req("d/1", "d/1", "s1")).await),
            "not_authorized"
        );
        assert_eq!(
            refused(authorize_connect(&Fixed, req("down", "down", "x")).await),
            "unavailable"
        );
        let mut no_user = req("d1", "d1", "s1");
        no_user.username = None;
        assert_eq!(
            refused(authorize_connect(&Fixed, no_user).await),
            "bad_credentials"
        );
    }

    #[tokio::test]
    async fn the_last_will_stays_on_the_devices_own_topics() {
        let mut r = req("d1", "d1", "s1");
        r.will_topic = Some("devices/d1/status");
        assert!(authorize_connect(&Fixed, r).await.is_ok());
        r.will_topic = Some("devices/d2/status");
        assert_eq!(
            authorize_connect(&Fixed, r).await.unwrap_err().reason(),
            "not_authorized"
        );
    }

    #[test]
    fn topic_rules_need_a_device_acting_as_itself() {
        assert!(authorize_topic(
            "d1",
            Some("d1"),
            "devices/d1/telemetry",
            Action::Publish
        ));
        assert!(authorize_topic(
            "d1",
            None,
            "devices/d1/#",
            Action::Subscribe
        ));
        assert!(!authorize_topic(
            "d1",
            Some("d2"),
            "devices/d1/telemetry",
            Action::Publish
        ));
        assert!(!authorize_topic(
            "d1",
            Some("d1"),
            "devices/d2/telemetry",
            Action::Publish
        ));
        assert!(!authorize_topic(
            "d1",
            Some("d1"),
            "devices/+/telemetry",
            Action::Subscribe
        ));
        assert!(!authorize_topic("d1", Some("d1"), "#", Action::Subscribe));
    }
}
