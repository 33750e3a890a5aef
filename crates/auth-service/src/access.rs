//! Who may manage whom: the rules that keep `user:manage` and `role:manage`
//! from granting more than their holder has.
//!
//! - Nobody grants a permission they do not hold, through a role given to a
//!   user (create, role change) or a permission given to a role; nor a
//!   permission on the whole fleet (a role of scope `fleet`) that they hold
//!   only on their own devices.
//! - Nobody manages an account holding privileges beyond their own: every
//!   permission of the target must be one the caller holds; only holders of
//!   the `admin` role (or superusers) touch an account with the `admin`
//!   role; only superusers touch a superuser. The same check guards update,
//!   role change, password reset, enable, disable and delete.
//! - Nobody changes their own roles, nor the permissions of a role they hold.
//! - Built-in roles change only by a superuser.
//!
//! Superusers pass every check but the one on their own roles. Each refusal
//! is logged and counted in `wf_auth_access_refused_total{rule}`.

use wf_common::permissions::Scope;

use crate::error::{Error, Result};
use crate::state::{AppState, Identity};
use crate::store::{RoleRecord, UserRecord};

/// The built-in role holding every permission.
pub const ADMIN_ROLE: &str = "admin";

fn refuse(caller: &Identity, rule: &'static str, message: String) -> Error {
    metrics::counter!("wf_auth_access_refused_total", "rule" => rule).increment(1);
    tracing::warn!(caller = %caller.user.username, rule, "refused: {message}");
    Error::Forbidden(message)
}

impl Identity {
    /// A superuser or a holder of the `admin` role.
    pub fn is_admin(&self) -> bool {
        self.user.is_superuser || self.roles.iter().any(|r| r.name == ADMIN_ROLE)
    }

    /// Refuses when any of `codes` is a permission the caller does not hold
    /// with at least the scope it comes with.
    pub fn guard_holds_all<'a>(
        &self,
        codes: impl IntoIterator<Item = (&'a String, Scope)>,
        rule: &'static str,
        what: &str,
    ) -> Result<()> {
        if self.user.is_superuser {
            return Ok(());
        }
        let mut missing: Vec<String> = codes
            .into_iter()
            .filter(|(c, scope)| self.permissions.get(*c).is_none_or(|held| held < scope))
            .map(|(c, scope)| match scope {
                Scope::Fleet if self.permissions.contains_key(c) => {
                    format!("{c} (on the whole fleet)")
                }
                _ => c.clone(),
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        missing.dedup();
        Err(refuse(
            self,
            rule,
            format!("{what} permissions you do not hold: {}", missing.join(", ")),
        ))
    }

    /// Refuses granting `roles` (to a new or existing account) beyond the
    /// caller's own privileges.
    pub fn guard_grant_roles(&self, roles: &[RoleRecord]) -> Result<()> {
        if roles.iter().any(|r| r.name == ADMIN_ROLE) && !self.is_admin() {
            return Err(refuse(
                self,
                "grant_admin",
                "only an admin can grant the admin role".into(),
            ));
        }
        self.guard_holds_all(
            roles
                .iter()
                .flat_map(|r| r.permissions.iter().map(move |p| (p, r.scope))),
            "grant_permission",
            "these roles carry",
        )
    }

    /// Refuses a change to the caller's own roles.
    pub fn guard_not_self(&self, target_id: &str) -> Result<()> {
        if self.user.id == target_id {
            return Err(refuse(
                self,
                "own_roles",
                "you cannot change your own roles".into(),
            ));
        }
        Ok(())
    }

    /// Refuses changing a role: built-in ones need a superuser, a role the
    /// caller holds cannot be changed by them, and its permissions must all
    /// be the caller's.
    pub fn guard_manage_role(&self, role: &RoleRecord) -> Result<()> {
        if self.user.is_superuser {
            return Ok(());
        }
        if role.is_system {
            return Err(refuse(
                self,
                "builtin_role",
                format!(
                    "only a superuser can change the built-in role {:?}",
                    role.name
                ),
            ));
        }
        if self.roles.iter().any(|r| r.id == role.id) {
            return Err(refuse(
                self,
                "own_role",
                format!("you cannot change the role {:?}, which you hold", role.name),
            ));
        }
        self.guard_holds_all(
            role.permissions.iter().map(|p| (p, role.scope)),
            "manage_role",
            "this role carries",
        )
    }
}

impl AppState {
    /// Refuses when `caller` may not manage the account `target`.
    pub async fn guard_manage_user(&self, caller: &Identity, target: &UserRecord) -> Result<()> {
        if caller.user.is_superuser {
            return Ok(());
        }
        if target.is_superuser {
            return Err(refuse(
                caller,
                "manage_superuser",
                "only a superuser can manage a superuser's account".into(),
            ));
        }
        let roles = self
            .store
            .roles_of_users(std::slice::from_ref(&target.id))
            .await?
            .remove(&target.id)
            .unwrap_or_default();
        if roles.iter().any(|r| r.name == ADMIN_ROLE) && !caller.is_admin() {
            return Err(refuse(
                caller,
                "manage_admin",
                "only an admin can manage an admin's account".into(),
            ));
        }
        let permissions = self.store.permissions_of_user(&target.id).await?;
        caller.guard_holds_all(
            permissions.iter().map(|(p, scope)| (p, *scope)),
            "manage_user",
            "this account holds",
        )
    }

    /// Loads a user the caller may manage: 404 when there is none, 403 when
    /// it holds more than the caller.
    pub async fn user_to_manage(&self, caller: &Identity, id: &str) -> Result<UserRecord> {
        let target = self
            .store
            .get_user(id)
            .await?
            .ok_or_else(|| Error::no_such("user", id))?;
        self.guard_manage_user(caller, &target).await?;
        Ok(target)
    }
}
