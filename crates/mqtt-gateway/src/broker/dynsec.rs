//! Mosquitto's dynamic-security plugin, driven over its topic API: JSON
//! commands published on `$CONTROL/dynamic-security/v1`, answered on
//! `$CONTROL/dynamic-security/v1/response`.
//!
//! Every device gets a dynsec client (username and client id = the device
//! id, password = its secret) and a role of its own granting
//! `publishClientSend`, `publishClientReceive`, `subscribePattern` and
//! `unsubscribePattern` on `devices/{id}/#` only. `subscribePattern` rather
//! than `subscribeLiteral`: a literal ACL matches only the identical filter,
//! so `devices/{id}/#` would refuse `devices/{id}/commands`; the pattern
//! form admits every filter inside `devices/{id}/#` and nothing outside it
//! (`devices/+/...` and `#` do not fall inside it). Device ids cannot hold
//! `/ + # $`, so the ACL topic is literal up to its `#`.
//!
//! Clients and roles the gateway creates carry [`MANAGED`] as their
//! `textname`; anything else the broker knows (its admin, operators'
//! accounts) is never changed or deleted, even when a device id collides
//! with its name.
//!
//! Things Mosquitto 2.0 does that this module is shaped around:
//! - answers are published to every subscriber of the response topic, so
//!   each command carries `correlationData` unique to this gateway process;
//! - changing a client (`modifyClient`) disconnects its live sessions, which
//!   is what a changed secret should do;
//! - adding a role to a client disconnects that client's sessions too, the
//!   gateway's own among them when it grants itself [`GATEWAY_ROLE`]: that
//!   happens once, and the gateway reconnects;
//! - failures come back as an `error` string per command.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, QoS};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::domain::DeviceId;
use crate::domain::topic::DEVICES_ROOT;
use crate::error::{Error, Result};

/// Where commands go.
pub const COMMAND_TOPIC: &str = "$CONTROL/dynamic-security/v1";
/// Where Mosquitto answers them.
pub const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";
/// The `textname` of the clients and roles the gateway manages.
pub const MANAGED: &str = "wf-iot device";
/// The role that lets the gateway's admin client publish to devices.
pub const GATEWAY_ROLE: &str = "wf-iot/gateway";
const GATEWAY_ROLE_TEXT: &str = "wf-iot gateway";

/// The role holding one device's ACLs.
pub fn device_role(device: &DeviceId) -> String {
    format!("wf-iot/device/{device}")
}

fn acl(acltype: &str, topic: &str) -> Value {
    json!({"acltype": acltype, "topic": topic, "priority": 0, "allow": true})
}

/// Everything under the device's own prefix, nothing else.
fn device_acls(device: &DeviceId) -> Vec<Value> {
    let own = format!("{DEVICES_ROOT}/{device}/#");
    [
        "publishClientSend",
        "publishClientReceive",
        "subscribePattern",
        "unsubscribePattern",
    ]
    .iter()
    .map(|t| acl(t, &own))
    .collect()
}

/// Commands and OTA offers to any device, and the devices' messages in.
fn gateway_acls() -> Vec<Value> {
    let all = format!("{DEVICES_ROOT}/#");
    [
        "publishClientSend",
        "publishClientReceive",
        "subscribePattern",
    ]
    .iter()
    .map(|t| acl(t, &all))
    .collect()
}

pub fn get_client(username: &str) -> Value {
    json!({"command": "getClient", "username": username})
}

pub fn get_role(rolename: &str) -> Value {
    json!({"command": "getRole", "rolename": rolename})
}

/// `createRole`, or `modifyRole` (which replaces the ACLs) when it exists.
fn put_role(rolename: &str, textname: &str, acls: Vec<Value>, exists: bool) -> Value {
    json!({
        "command": if exists { "modifyRole" } else { "createRole" },
        "rolename": rolename,
        "textname": textname,
        "acls": acls,
    })
}

/// `createClient`, or `modifyClient` when it exists: username and client id
/// are the device id, and its only role is its own.
fn put_device_client(device: &DeviceId, secret: &str, exists: bool) -> Value {
    json!({
        "command": if exists { "modifyClient" } else { "createClient" },
        "username": device.as_str(),
        "clientid": device.as_str(),
        "password": secret,
        "textname": MANAGED,
        "roles": [{"rolename": device_role(device), "priority": 0}],
    })
}

fn delete_client(username: &str) -> Value {
    json!({"command": "deleteClient", "username": username})
}

fn delete_role(rolename: &str) -> Value {
    json!({"command": "deleteRole", "rolename": rolename})
}

fn add_client_role(username: &str, rolename: &str) -> Value {
    json!({"command": "addClientRole", "username": username, "rolename": rolename, "priority": 0})
}

/// Mosquitto's answer to one command.
#[derive(Debug, Clone, Deserialize)]
pub struct Reply {
    pub command: String,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub data: Option<Value>,
    #[serde(default, rename = "correlationData")]
    pub correlation: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ClientInfo {
    #[serde(default)]
    pub textname: Option<String>,
    #[serde(default)]
    pub roles: Vec<RoleRef>,
}

#[derive(Debug, Deserialize)]
pub struct RoleRef {
    pub rolename: String,
}

#[derive(Debug, Deserialize)]
pub struct RoleInfo {
    #[serde(default)]
    pub textname: Option<String>,
    #[serde(default)]
    pub acls: Vec<Value>,
}

impl RoleInfo {
    /// Whether every ACL in `wanted` is granted (type, topic, allow).
    fn grants(&self, wanted: &[Value]) -> bool {
        let key = |a: &Value| {
            (
                a["acltype"].as_str().map(str::to_string),
                a["topic"].as_str().map(str::to_string),
                a["allow"].as_bool(),
            )
        };
        wanted
            .iter()
            .all(|w| self.acls.iter().any(|have| key(have) == key(w)))
    }
}

impl Reply {
    /// The client a `getClient` found.
    pub fn client(&self) -> Option<ClientInfo> {
        self.found("client")
    }

    /// The role a `getRole` found.
    pub fn role(&self) -> Option<RoleInfo> {
        self.found("role")
    }

    fn found<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        if self.error.is_some() {
            return None;
        }
        serde_json::from_value(self.data.as_ref()?.get(key)?.clone()).ok()
    }
}

/// `Ok` when no command failed; otherwise the first refusal.
fn all_succeeded(replies: &[Reply], device: &str) -> Result<()> {
    match replies
        .iter()
        .find_map(|r| r.error.as_ref().map(|e| (r, e)))
    {
        None => Ok(()),
        Some((reply, error)) => Err(crate::error::broker_refused(format!(
            "Mosquitto refused {} for {device:?}: {error}",
            reply.command
        ))),
    }
}

/// What provisioning the gateway's own access came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioned {
    /// The admin client holds [`GATEWAY_ROLE`].
    Ready,
    /// The role was just granted; Mosquitto drops the admin's connections
    /// to apply it, so the gateway is about to reconnect.
    RoleGranted,
}

/// Requests and their answers over the gateway's MQTT connection.
pub struct Dynsec {
    client: AsyncClient,
    /// Unique to this process: answers are seen by every admin connection.
    prefix: String,
    next: AtomicU64,
    pending: Mutex<HashMap<String, tokio::sync::oneshot::Sender<Vec<Reply>>>>,
    /// One credential change at a time from this gateway, so a get and the
    /// change that depends on it are not interleaved with another.
    changes: tokio::sync::Mutex<()>,
    timeout: Duration,
}

impl Dynsec {
    pub fn new(client: AsyncClient, client_id: &str, timeout: Duration) -> Self {
        let nonce: String = wf_common::random::bytes::<6>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            client,
            prefix: format!("{client_id}:{nonce}"),
            next: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            changes: tokio::sync::Mutex::new(()),
            timeout,
        }
    }

    /// Sends `commands` in one message and waits for their answers, in the
    /// order of the commands.
    pub async fn request(&self, mut commands: Vec<Value>) -> Result<Vec<Reply>> {
        let key = format!(
            "{}:{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        for (i, command) in commands.iter_mut().enumerate() {
            command["correlationData"] = json!(format!("{key}:{i}"));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(key.clone(), tx);
        }
        let answered = self.send_and_wait(&commands, rx).await;
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&key);
        }
        let replies = answered?;
        if replies.len() != commands.len() {
            return Err(crate::error::broker_refused(format!(
                "Mosquitto answered {} of {} dynamic-security commands",
                replies.len(),
                commands.len()
            )));
        }
        Ok(replies)
    }

    async fn send_and_wait(
        &self,
        commands: &[Value],
        rx: tokio::sync::oneshot::Receiver<Vec<Reply>>,
    ) -> Result<Vec<Reply>> {
        self.send(commands).await?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(replies)) => Ok(replies),
            Ok(Err(_)) => Err(Error::Unavailable(
                "the connection to Mosquitto was lost before it answered".into(),
            )),
            Err(_) => Err(Error::Unavailable(format!(
                "Mosquitto did not answer the dynamic-security request within {} s",
                self.timeout.as_secs()
            ))),
        }
    }

    async fn send(&self, commands: &[Value]) -> Result<()> {
        let body = serde_json::to_vec(&json!({ "commands": commands }))
            .map_err(|e| Error::Internal(e.into()))?;
        tokio::time::timeout(
            self.timeout,
            self.client
                .publish(COMMAND_TOPIC, QoS::AtLeastOnce, false, body),
        )
        .await
        .map_err(|_| Error::Unavailable("the connection to Mosquitto is saturated".into()))?
        .map_err(|e| Error::Unavailable(format!("the connection to Mosquitto is closed: {e}")))
    }

    /// A message on the response topic: handed to the request it answers.
    /// Answers to other gateways' requests are ignored.
    pub fn on_response(&self, payload: &[u8]) {
        #[derive(Deserialize)]
        struct Body {
            responses: Vec<Reply>,
        }
        let Ok(body) = serde_json::from_slice::<Body>(payload) else {
            tracing::debug!("unreadable dynamic-security response ignored");
            return;
        };
        let Some(key) = body
            .responses
            .first()
            .and_then(|r| r.correlation.as_deref())
            .and_then(|c| c.rsplit_once(':'))
            .map(|(key, _)| key.to_string())
        else {
            return;
        };
        let waiter = self
            .pending
            .lock()
            .ok()
            .and_then(|mut pending| pending.remove(&key));
        if let Some(tx) = waiter {
            let _ = tx.send(body.responses);
        }
    }

    /// The connection dropped: waiting requests fail now rather than time
    /// out (their answers, if any, went to a connection that is gone).
    pub fn connection_lost(&self) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.clear();
        }
    }

    /// Creates the device's client and role, or updates them (new secret,
    /// ACLs and client id reasserted). Mosquitto disconnects sessions that
    /// used the old secret.
    pub async fn put_device(&self, device: &DeviceId, secret: &str) -> Result<()> {
        let _one_at_a_time = self.changes.lock().await;
        let role = device_role(device);
        let found = self
            .request(vec![get_client(device.as_str()), get_role(&role)])
            .await?;
        let client = found[0].client();
        if let Some(other) = client
            .as_ref()
            .filter(|c| c.textname.as_deref() != Some(MANAGED))
        {
            tracing::warn!(device_id = %device, textname = ?other.textname, "a Mosquitto client that wf-iot does not manage has this device's name");
            return Err(crate::error::precondition(format!(
                "Mosquitto already has a client named {:?} that wf-iot does not manage; \
                 rename or remove it there before this device can connect",
                device.as_str()
            )));
        }
        let role_exists = found[1].role().is_some();
        let replies = self
            .request(vec![
                put_role(&role, MANAGED, device_acls(device), role_exists),
                put_device_client(device, secret, client.is_some()),
            ])
            .await?;
        all_succeeded(&replies, device.as_str())
    }

    /// Deletes the device's client (disconnecting it) and its role. What
    /// wf-iot does not manage is left alone.
    pub async fn remove_device(&self, device: &DeviceId) -> Result<()> {
        let _one_at_a_time = self.changes.lock().await;
        let role = device_role(device);
        let found = self
            .request(vec![get_client(device.as_str()), get_role(&role)])
            .await?;
        let mut commands = Vec::new();
        match found[0].client() {
            Some(c) if c.textname.as_deref() == Some(MANAGED) => {
                commands.push(delete_client(device.as_str()));
            }
            Some(_) => {
                tracing::warn!(device_id = %device, "a Mosquitto client that wf-iot does not manage has this device's name; left in place");
            }
            None => {}
        }
        if found[1]
            .role()
            .is_some_and(|r| r.textname.as_deref() == Some(MANAGED))
        {
            commands.push(delete_role(&role));
        }
        if commands.is_empty() {
            return Ok(());
        }
        let replies = self.request(commands).await?;
        all_succeeded(&replies, device.as_str())
    }

    /// Makes sure the gateway's admin client may publish to devices:
    /// [`GATEWAY_ROLE`] exists with its ACLs and the admin holds it.
    pub async fn provision_gateway(&self, admin: &str) -> Result<Provisioned> {
        let found = self
            .request(vec![get_client(admin), get_role(GATEWAY_ROLE)])
            .await?;
        let client = found[0].client().ok_or_else(|| {
            crate::error::broker_refused(format!(
                "the dynamic-security plugin does not know the admin client {admin:?}: {}",
                found[0].error.as_deref().unwrap_or("no such client")
            ))
        })?;
        let wanted = gateway_acls();
        let role = found[1].role();
        if !role.as_ref().is_some_and(|r| r.grants(&wanted)) {
            let replies = self
                .request(vec![put_role(
                    GATEWAY_ROLE,
                    GATEWAY_ROLE_TEXT,
                    wanted,
                    role.is_some(),
                )])
                .await?;
            all_succeeded(&replies, GATEWAY_ROLE)?;
        }
        if client.roles.iter().any(|r| r.rolename == GATEWAY_ROLE) {
            return Ok(Provisioned::Ready);
        }
        // Mosquitto drops the admin's connections (this one too) to apply
        // the new role, so the answer may never arrive: send and move on.
        let mut grant = add_client_role(admin, GATEWAY_ROLE);
        grant["correlationData"] = json!(format!("{}:grant", self.prefix));
        self.send(&[grant]).await?;
        Ok(Provisioned::RoleGranted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d1() -> DeviceId {
        DeviceId::parse("d1").unwrap()
    }

    #[test]
    fn a_device_role_grants_its_own_prefix_only() {
        let acls = device_acls(&d1());
        assert_eq!(acls.len(), 4);
        for acl in &acls {
            assert_eq!(acl["topic"], "devices/d1/#");
            assert_eq!(acl["allow"], true);
        }
        let types: Vec<_> = acls
            .iter()
            .map(|a| a["acltype"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "publishClientSend",
                "publishClientReceive",
                "subscribePattern",
                "unsubscribePattern"
            ]
        );
    }

    #[test]
    fn device_clients_pin_the_client_id_and_carry_the_marker() {
        let create = put_device_client(&d1(), "s3cret", false);
        assert_eq!(create["command"], "createClient");
        assert_eq!(create["username"], "d1");
        assert_eq!(create["clientid"], "d1");
        assert_eq!(create["password"], "s3cret");
        assert_eq!(create["textname"], MANAGED);
        assert_eq!(create["roles"][0]["rolename"], "wf-iot/device/d1");
        assert_eq!(
            put_device_client(&d1(), "x", true)["command"],
            "modifyClient"
        );
        assert_eq!(
            put_role("r", MANAGED, vec![], true)["command"],
            "modifyRole"
        );
    }

    #[test]
    fn replies_expose_what_was_found_and_what_failed() {
        let body: Value = serde_json::from_str(
            r#"{"responses":[
                {"command":"getClient","data":{"client":{"username":"d1","clientid":"d1","textname":"wf-iot device","roles":[{"rolename":"wf-iot/device/d1"}],"groups":[]}},"correlationData":"g:1:0"},
                {"command":"getRole","error":"Role not found","correlationData":"g:1:1"}
            ]}"#,
        )
        .unwrap();
        let replies: Vec<Reply> = serde_json::from_value(body["responses"].clone()).unwrap();
        let client = replies[0].client().unwrap();
        assert_eq!(client.textname.as_deref(), Some(MANAGED));
        assert_eq!(client.roles[0].rolename, "wf-iot/device/d1");
        assert!(replies[1].role().is_none());
        let err = all_succeeded(&replies, "d1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Mosquitto refused getRole for \"d1\": Role not found"
        );
        assert!(all_succeeded(&replies[..1], "d1").is_ok());
    }

    #[test]
    fn a_role_grants_when_every_wanted_acl_is_there() {
        let wanted = gateway_acls();
        let mut role = RoleInfo {
            textname: None,
            acls: wanted.clone(),
        };
        assert!(role.grants(&wanted));
        role.acls.pop();
        assert!(!role.grants(&wanted));
        role.acls = wanted
            .iter()
            .map(|a| {
                let mut a = a.clone();
                a["allow"] = json!(false);
                a
            })
            .collect();
        assert!(!role.grants(&wanted));
    }

    #[tokio::test]
    async fn answers_reach_the_request_they_belong_to() {
        let (client, _eventloop) =
            AsyncClient::new(rumqttc::MqttOptions::new("gw/test", "127.0.0.1", 9), 8);
        let dynsec = Dynsec::new(client, "gw/test", Duration::from_secs(5));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let key = format!("{}:7", dynsec.prefix);
        dynsec.pending.lock().unwrap().insert(key.clone(), tx);
        // Another gateway's answer is ignored.
        dynsec.on_response(
            br#"{"responses":[{"command":"getClient","correlationData":"other:1:0"}]}"#,
        );
        let ours = format!(
            r#"{{"responses":[{{"command":"createClient","correlationData":"{key}:0"}}]}}"#
        );
        dynsec.on_response(ours.as_bytes());
        let replies = rx.await.unwrap();
        assert_eq!(replies[0].command, "createClient");
        assert!(dynsec.pending.lock().unwrap().is_empty());
    }
}
