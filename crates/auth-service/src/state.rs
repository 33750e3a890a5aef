//! The service's shared state and the operations HTTP and gRPC both use:
//! authenticating tokens, logging in, rotating refresh tokens, creating users.

use std::collections::{HashMap, HashSet};
use std::ops::Deref;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};
use wf_common::jwt::{ACCESS_TOKEN_TYPE, AccessClaims, JwtVerifier, SigningKey};
use wf_common::permissions::Scope;
use wf_common::{now_millis, random};

use crate::Config;
use crate::domain::{Email, NewPassword, Permission, RoleName, Username};
use crate::error::{Error, Result};
use crate::passwords::Hasher;
use crate::store::{
    AuditEntry, NewUser, RefreshTokenRecord, RoleRecord, RoleRef, Store, UserRecord,
};
use crate::throttle::LoginThrottle;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Arc<Config>,
    pub store: Store,
    pub signer: SigningKey,
    pub verifier: JwtVerifier,
    pub hasher: Hasher,
    pub throttle: LoginThrottle,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Where a request came from, for throttling and the audit log.
pub use wf_common::audit::ClientInfo;

/// An authenticated caller with their current roles and permissions.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: UserRecord,
    pub roles: Vec<RoleRef>,
    /// Each permission held, with the widest scope of the roles carrying it.
    pub permissions: HashMap<String, Scope>,
    pub claims: AccessClaims,
}

impl Identity {
    pub fn can(&self, permission: Permission) -> bool {
        self.user.is_superuser || self.permissions.contains_key(permission.code())
    }

    pub fn require(&self, permission: Permission) -> Result<()> {
        if self.can(permission) {
            Ok(())
        } else {
            Err(wf_common::caller::forbidden(permission.code()))
        }
    }

    /// Passes when the caller holds any of `permissions`.
    pub fn require_any(&self, permissions: &[Permission]) -> Result<()> {
        if permissions.iter().any(|p| self.can(*p)) {
            Ok(())
        } else {
            let codes: Vec<&str> = permissions.iter().map(|p| p.code()).collect();
            Err(Error::Forbidden(format!(
                "this requires one of the permissions {}",
                codes.join(", ")
            )))
        }
    }

    /// The permission codes in effect: all of them for a superuser.
    pub fn effective_permissions(&self) -> Vec<String> {
        let mut codes: Vec<String> = if self.user.is_superuser {
            crate::domain::ALL_PERMISSIONS
                .iter()
                .map(|p| p.code().to_string())
                .chain(self.permissions.keys().cloned())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect()
        } else {
            self.permissions.keys().cloned().collect()
        };
        codes.sort();
        codes
    }
}

/// An access and refresh token pair, as login and refresh answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    pub refresh_expires_in: i64,
}

pub struct CreateUser {
    pub username: String,
    pub email: String,
    pub full_name: String,
    pub password: String,
    pub is_superuser: bool,
    /// Role names.
    pub roles: Vec<String>,
}

fn hash_refresh_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl AppState {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        signer: SigningKey,
        verifier: JwtVerifier,
    ) -> Result<Self> {
        let hasher = Hasher::new(&config.password_hashing, &config.password_hashing_limit)?;
        let throttle = LoginThrottle::new(config.login_throttle.clone());
        Ok(Self(Arc::new(Inner {
            config,
            store,
            signer,
            verifier,
            hasher,
            throttle,
        })))
    }

    /// Writes an audit entry; a failure to write is logged, never returned,
    /// so auditing cannot turn a good request into an error.
    pub async fn audit(&self, entry: AuditEntry) {
        let action = entry.action;
        if let Err(e) = self.store.insert_audit(entry, now_millis()).await {
            tracing::error!(error = %e, action, "writing the audit log failed");
        }
    }

    /// Verifies an access token and loads the caller as they are now: a
    /// disabled account, or a token from before a password change, is refused.
    pub async fn authenticate(&self, token: &str) -> Result<Identity> {
        let claims = self.verifier.verify(token).await?;
        let user =
            self.store.get_user(&claims.sub).await?.ok_or_else(|| {
                Error::Unauthenticated("the token's account no longer exists".into())
            })?;
        if !user.is_active {
            return Err(Error::Unauthenticated("the account is disabled".into()));
        }
        if claims.ver != user.token_version {
            return Err(Error::Unauthenticated(
                "the token was revoked; log in again".into(),
            ));
        }
        self.identity(user, claims).await
    }

    async fn identity(&self, user: UserRecord, claims: AccessClaims) -> Result<Identity> {
        let roles = self
            .store
            .roles_of_users(std::slice::from_ref(&user.id))
            .await?
            .remove(&user.id)
            .unwrap_or_default();
        let permissions = self
            .store
            .permissions_of_user(&user.id)
            .await?
            .into_iter()
            .collect();
        Ok(Identity {
            user,
            roles,
            permissions,
            claims,
        })
    }

    /// How far a user's `code` reaches, or `None` when they do not hold it
    /// (superusers hold every permission on the whole fleet).
    pub async fn has_permission(&self, user_id: &str, code: &str) -> Result<Option<Scope>> {
        let Some(user) = self.store.get_user(user_id).await? else {
            return Err(Error::NotFound("no user with that id".into()));
        };
        if !user.is_active {
            return Ok(None);
        }
        if user.is_superuser {
            return Ok(Some(Scope::Fleet));
        }
        Ok(self
            .store
            .permissions_of_user(user_id)
            .await?
            .into_iter()
            .find_map(|(c, scope)| (c == code).then_some(scope)))
    }

    /// Username-or-email and password in, tokens out. Attempts are
    /// throttled per (account, client) and per client before any hashing
    /// (a username and its e-mail count as one account), and audited.
    pub async fn login(
        &self,
        login: &str,
        password: String,
        client: &ClientInfo,
    ) -> Result<TokenPair> {
        let login = login.trim().to_ascii_lowercase();
        let audit = |action, outcome, actor: Option<&UserRecord>, details| AuditEntry {
            actor_id: actor.map(|u| u.id.clone()),
            actor_username: Some(actor.map_or_else(|| login.clone(), |u| u.username.clone())),
            action,
            target: None,
            outcome,
            client_ip: Some(client.ip.clone()),
            user_agent: client.user_agent.clone(),
            request_id: client.request_id.clone(),
            details,
        };
        if password.len() > NewPassword::MAX_LEN * 4 {
            return Err(Error::Validation("password is too long".into()));
        }
        let user = self.store.find_user_by_login(&login).await?;
        // Failures count per account, whichever name it was addressed by.
        let account = user
            .as_ref()
            .map_or_else(|| format!("login:{login}"), |u| format!("user:{}", u.id));
        let attempt = match self.throttle.begin(&account, &client.ip) {
            Ok(attempt) => attempt,
            Err(throttled) => {
                metrics::counter!("wf_auth_logins_throttled_total", "scope" => throttled.scope)
                    .increment(1);
                self.audit(audit(
                    "auth.login_throttled",
                    "denied",
                    None,
                    Some(serde_json::json!({ "limit": throttled.scope })),
                ))
                .await;
                return Err(crate::error::throttled(
                    throttled.retry_after.as_secs().max(1),
                ));
            }
        };
        let ok = match self
            .hasher
            .verify(password, user.as_ref().map(|u| u.password_hash.clone()))
            .await
        {
            Ok(ok) => ok,
            Err(e) => {
                // Not checked (too busy): not the client's failure.
                self.throttle.forgive(attempt);
                return Err(e);
            }
        };
        let user = match user {
            Some(user) if ok && user.is_active => user,
            Some(user) if ok => {
                self.throttle.forgive(attempt);
                self.audit(audit(
                    "auth.login_failed",
                    "denied",
                    Some(&user),
                    Some(serde_json::json!({"reason": "disabled"})),
                ))
                .await;
                return Err(Error::Unauthenticated("the account is disabled".into()));
            }
            user => {
                let reason = if user.is_some() {
                    "bad_password"
                } else {
                    "unknown_user"
                };
                self.audit(audit(
                    "auth.login_failed",
                    "failure",
                    user.as_ref(),
                    Some(serde_json::json!({ "reason": reason })),
                ))
                .await;
                return Err(Error::Unauthenticated(
                    "invalid username or password".into(),
                ));
            }
        };
        self.throttle.forgive(attempt);
        let now = now_millis();
        self.store.record_login(&user.id, now).await?;
        let tokens = self.issue_tokens(&user, None).await?;
        self.audit(audit("auth.login", "success", Some(&user), None))
            .await;
        Ok(tokens)
    }

    /// Signs an access token and stores a new refresh token, in `family`
    /// (a rotation) or a new family (a login).
    async fn issue_tokens(&self, user: &UserRecord, family: Option<String>) -> Result<TokenPair> {
        let now_ms = now_millis();
        let now = now_ms / 1000;
        let roles = self
            .store
            .roles_of_users(std::slice::from_ref(&user.id))
            .await?
            .remove(&user.id)
            .unwrap_or_default();
        let claims = AccessClaims {
            iss: self.config.issuer.clone(),
            sub: user.id.clone(),
            iat: now,
            exp: now + self.config.access_token_ttl_secs,
            jti: uuid::Uuid::now_v7().to_string(),
            typ: ACCESS_TOKEN_TYPE.into(),
            username: user.username.clone(),
            roles: roles.into_iter().map(|r| r.name).collect(),
            su: user.is_superuser,
            ver: user.token_version,
        };
        let access_token = self.signer.sign(&claims);
        let refresh_token = random::token();
        let record = RefreshTokenRecord {
            id: uuid::Uuid::now_v7().to_string(),
            family_id: family.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            user_id: user.id.clone(),
            expires_at: now_ms + self.config.refresh_token_ttl_secs * 1000,
            used_at: None,
            revoked_at: None,
        };
        self.store
            .insert_refresh_token(&record, &hash_refresh_token(&refresh_token), now_ms)
            .await?;
        Ok(TokenPair {
            access_token,
            refresh_token,
            token_type: "Bearer",
            expires_in: self.config.access_token_ttl_secs,
            refresh_expires_in: self.config.refresh_token_ttl_secs,
        })
    }

    /// Exchanges a refresh token for a new pair. A token is good once: using
    /// a spent one again means it leaked, so its whole family is revoked;
    /// except within `refresh_reuse_grace_secs` of its first use, when
    /// concurrent or retried refreshes (a client's parallel requests) each
    /// get a pair of their own in the same family.
    pub async fn refresh(&self, refresh_token: &str, client: &ClientInfo) -> Result<TokenPair> {
        let invalid = || Error::Unauthenticated("the refresh token is invalid or expired".into());
        let Some(record) = self
            .store
            .find_refresh_token(&hash_refresh_token(refresh_token))
            .await?
        else {
            return Err(invalid());
        };
        let now = now_millis();
        if record.revoked_at.is_some() || record.expires_at <= now {
            return Err(invalid());
        }
        let spent_now =
            record.used_at.is_none() && self.store.spend_refresh_token(&record.id, now).await?;
        if !spent_now && !self.within_reuse_grace(refresh_token, now).await? {
            let revoked = self
                .store
                .revoke_token_family(&record.family_id, now)
                .await?;
            self.audit(AuditEntry {
                actor_id: Some(record.user_id.clone()),
                action: "auth.refresh_reuse",
                outcome: "denied",
                client_ip: Some(client.ip.clone()),
                user_agent: client.user_agent.clone(),
                request_id: client.request_id.clone(),
                details: Some(
                    serde_json::json!({ "family_id": record.family_id, "revoked": revoked }),
                ),
                ..Default::default()
            })
            .await;
            tracing::warn!(user_id = %record.user_id, family = %record.family_id, "refresh token reused; family revoked");
            return Err(invalid());
        }
        let user = self
            .store
            .get_user(&record.user_id)
            .await?
            .ok_or_else(invalid)?;
        if !user.is_active {
            self.store
                .revoke_token_family(&record.family_id, now)
                .await?;
            return Err(Error::Unauthenticated("the account is disabled".into()));
        }
        self.issue_tokens(&user, Some(record.family_id)).await
    }

    /// Whether a spent refresh token was spent so recently, and its family
    /// is still live, that presenting it again is a concurrent refresh and
    /// not a theft.
    async fn within_reuse_grace(&self, refresh_token: &str, now: i64) -> Result<bool> {
        let grace_ms = self.config.refresh_reuse_grace_secs.saturating_mul(1000);
        // Without a window, any second use is a reuse: `now` was read before
        // a concurrent request spent the token, so the difference below may
        // be negative and would pass any bound.
        if grace_ms <= 0 {
            return Ok(false);
        }
        let Some(fresh) = self
            .store
            .find_refresh_token(&hash_refresh_token(refresh_token))
            .await?
        else {
            return Ok(false);
        };
        let within = fresh.revoked_at.is_none()
            && fresh
                .used_at
                .is_some_and(|used| now.saturating_sub(used) <= grace_ms);
        if within {
            metrics::counter!("wf_auth_refresh_grace_total").increment(1);
            tracing::debug!(family = %fresh.family_id, "refresh token presented again within the grace window");
        }
        Ok(within)
    }

    /// Revokes the refresh token's family. Unknown tokens are ignored, so
    /// logging out twice is harmless.
    pub async fn logout(
        &self,
        refresh_token: &str,
        caller: Option<&Identity>,
        client: &ClientInfo,
    ) -> Result<()> {
        let record = self
            .store
            .find_refresh_token(&hash_refresh_token(refresh_token))
            .await?;
        if let Some(record) = record {
            if caller.is_some_and(|c| c.user.id != record.user_id) {
                return Err(Error::Forbidden(
                    "that refresh token belongs to someone else".into(),
                ));
            }
            self.store
                .revoke_token_family(&record.family_id, now_millis())
                .await?;
            self.audit(AuditEntry {
                actor_id: Some(record.user_id),
                action: "auth.logout",
                outcome: "success",
                client_ip: Some(client.ip.clone()),
                user_agent: client.user_agent.clone(),
                request_id: client.request_id.clone(),
                ..Default::default()
            })
            .await;
        }
        Ok(())
    }

    /// Resolves role names to ids, refusing unknown names.
    pub async fn role_ids_by_name(&self, names: &[String]) -> Result<Vec<String>> {
        Ok(self
            .roles_by_name(names)
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect())
    }

    /// Resolves role names to roles with their permissions, refusing
    /// unknown names.
    pub async fn roles_by_name(&self, names: &[String]) -> Result<Vec<RoleRecord>> {
        let mut wanted: Vec<String> = names
            .iter()
            .map(|n| {
                RoleName::parse(n)
                    .map(RoleName::into_inner)
                    .map_err(Error::Validation)
            })
            .collect::<Result<_>>()?;
        wanted.sort();
        wanted.dedup();
        let found = self.store.roles_by_names(&wanted).await?;
        if let Some(missing) = wanted.iter().find(|n| !found.iter().any(|r| &r.name == *n)) {
            return Err(Error::Validation(format!("no role named {missing:?}")));
        }
        Ok(found)
    }

    /// Audits an action taken by an authenticated caller.
    pub async fn audit_action(
        &self,
        caller: &Identity,
        client: &ClientInfo,
        action: &'static str,
        target: Option<String>,
        details: Option<serde_json::Value>,
    ) {
        self.audit(AuditEntry {
            actor_id: Some(caller.user.id.clone()),
            actor_username: Some(caller.user.username.clone()),
            action,
            target,
            outcome: "success",
            client_ip: Some(client.ip.clone()),
            user_agent: client.user_agent.clone(),
            request_id: client.request_id.clone(),
            details,
        })
        .await;
    }

    /// Validates and creates a user; returns the new id.
    pub async fn create_user(&self, new: CreateUser) -> Result<String> {
        let username = Username::parse(&new.username).map_err(Error::Validation)?;
        let email = Email::parse(&new.email).map_err(Error::Validation)?;
        let password = NewPassword::parse(new.password).map_err(Error::Validation)?;
        let full_name = new.full_name.trim().to_string();
        if full_name.chars().count() > 200 {
            return Err(Error::Validation(
                "full name must be at most 200 characters".into(),
            ));
        }
        let role_ids = self.role_ids_by_name(&new.roles).await?;
        let password_hash = self.hasher.hash(password.expose().to_string()).await?;
        let id = uuid::Uuid::now_v7().to_string();
        self.store
            .insert_user(
                &NewUser {
                    id: id.clone(),
                    username: username.into_inner(),
                    email: email.into_inner(),
                    full_name,
                    password_hash,
                    is_superuser: new.is_superuser,
                    created_at: now_millis(),
                },
                &role_ids,
            )
            .await?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_are_stored_as_sha256_hex() {
        let h = hash_refresh_token("abc");
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
