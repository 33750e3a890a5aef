use std::collections::HashMap;

// Dynamic SQL here is assembled from constant fragments and `?`
// placeholders only; every value is bound.
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use wf_common::db::{Listing, Param, Select};
use wf_common::permissions::Scope;

use super::{RoleRef, Store, conflict_on_unique, flag, like_pattern, placeholders};
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    pub email: String,
    pub full_name: String,
    pub password_hash: String,
    pub is_active: bool,
    pub is_superuser: bool,
    /// Bumped whenever existing tokens must stop working (password change,
    /// disabling); access tokens carry the version they were issued at.
    pub token_version: i64,
    pub last_login_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

const USER_COLUMNS: &str = "id, username, email, full_name, password_hash, is_active, \
    is_superuser, token_version, last_login_at, created_at, updated_at";

fn user_from_row(row: &AnyRow) -> sqlx::Result<UserRecord> {
    Ok(UserRecord {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        email: row.try_get("email")?,
        full_name: row.try_get("full_name")?,
        password_hash: row.try_get("password_hash")?,
        is_active: flag(row.try_get("is_active")?),
        is_superuser: flag(row.try_get("is_superuser")?),
        token_version: row.try_get("token_version")?,
        last_login_at: row.try_get("last_login_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub struct NewUser {
    pub id: String,
    pub username: String,
    pub email: String,
    pub full_name: String,
    pub password_hash: String,
    pub is_superuser: bool,
    pub created_at: i64,
}

/// Fields of a user that an administrator may change; `None` keeps the value.
#[derive(Default)]
pub struct UserUpdate {
    pub email: Option<String>,
    pub full_name: Option<String>,
    pub is_superuser: Option<bool>,
}

#[derive(Default)]
pub struct UserFilter {
    /// Matches username, e-mail or full name.
    pub search: Option<String>,
    pub is_active: Option<bool>,
    pub limit: i64,
    pub offset: i64,
}

impl Store {
    pub async fn count_users(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.db.pool)
            .await?
            .try_get("n")?)
    }

    pub async fn insert_user(&self, user: &NewUser, role_ids: &[String]) -> Result<()> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query(
            "INSERT INTO users (id, username, email, full_name, password_hash, is_active, \
             is_superuser, token_version, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, 1, ?, 0, ?, ?)",
        )
        .bind(&user.id)
        .bind(&user.username)
        .bind(&user.email)
        .bind(&user.full_name)
        .bind(&user.password_hash)
        .bind(i64::from(user.is_superuser))
        .bind(user.created_at)
        .bind(user.created_at)
        .execute(&mut *tx)
        .await
        .map_err(conflict_on_unique(
            "a user with that username or e-mail already exists",
        ))?;
        for role_id in role_ids {
            sqlx::query("INSERT INTO user_roles (user_id, role_id) VALUES (?, ?)")
                .bind(&user.id)
                .bind(role_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_user(&self, id: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE id = ?"
        )))
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    /// Finds a user by username or e-mail (both stored lower-case).
    pub async fn find_user_by_login(&self, login: &str) -> Result<Option<UserRecord>> {
        let login = login.trim().to_ascii_lowercase();
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username = ? OR email = ?"
        )))
        .bind(&login)
        .bind(&login)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    pub async fn list_users(&self, filter: &UserFilter) -> Result<(Vec<UserRecord>, i64)> {
        let mut listing = Listing::new();
        // Usernames and e-mails are stored lower-case; the collation may be
        // case-sensitive (MySQL utf8mb4_bin), so compare lower-case throughout.
        if let Some(search) = filter.search.as_deref() {
            let pattern = Param::Text(like_pattern(&search.to_lowercase()));
            listing.filter(
                "(username LIKE ? ESCAPE '!' OR email LIKE ? ESCAPE '!' \
                 OR LOWER(full_name) LIKE ? ESCAPE '!')",
                [pattern.clone(), pattern.clone(), pattern],
            );
        }
        if let Some(active) = filter.is_active {
            listing.filter("is_active = ?", [Param::Int(i64::from(active))]);
        }
        let order = "created_at, username";
        let (users, total) = listing
            .page(
                &self.db,
                Select {
                    columns: USER_COLUMNS,
                    table: "users",
                    order,
                },
                filter.limit,
                filter.offset,
                user_from_row,
            )
            .await?;
        Ok((users, total))
    }

    /// Applies `update`; false when the user does not exist.
    pub async fn update_user(&self, id: &str, update: &UserUpdate, now: i64) -> Result<bool> {
        let result = sqlx::query(
            "UPDATE users SET email = COALESCE(?, email), full_name = COALESCE(?, full_name), \
             is_superuser = COALESCE(?, is_superuser), updated_at = ? WHERE id = ?",
        )
        .bind(update.email.clone())
        .bind(update.full_name.clone())
        .bind(update.is_superuser.map(i64::from))
        .bind(now)
        .bind(id)
        .execute(&self.db.pool)
        .await
        .map_err(conflict_on_unique("a user with that e-mail already exists"))?;
        Ok(result.rows_affected() > 0)
    }

    /// Enables or disables an account. Disabling also invalidates every token
    /// issued to it so far.
    pub async fn set_user_active(&self, id: &str, active: bool, now: i64) -> Result<bool> {
        let sql = if active {
            "UPDATE users SET is_active = 1, updated_at = ? WHERE id = ?"
        } else {
            "UPDATE users SET is_active = 0, token_version = token_version + 1, updated_at = ? \
             WHERE id = ?"
        };
        let result = sqlx::query(sql)
            .bind(now)
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Sets a new password hash and invalidates every token issued so far.
    pub async fn set_password(&self, id: &str, hash: &str, now: i64) -> Result<bool> {
        let result = sqlx::query(
            "UPDATE users SET password_hash = ?, token_version = token_version + 1, updated_at = ? \
             WHERE id = ?",
        )
        .bind(hash)
        .bind(now)
        .bind(id)
        .execute(&self.db.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    pub async fn record_login(&self, id: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE users SET last_login_at = ? WHERE id = ?")
            .bind(now)
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    pub async fn delete_user(&self, id: &str) -> Result<bool> {
        let result = sqlx::query("DELETE FROM users WHERE id = ?")
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// How many active superusers other than `except_id` exist.
    pub async fn count_other_active_superusers(&self, except_id: &str) -> Result<i64> {
        Ok(sqlx::query(
            "SELECT COUNT(*) AS n FROM users WHERE is_superuser = 1 AND is_active = 1 AND id <> ?",
        )
        .bind(except_id)
        .fetch_one(&self.db.pool)
        .await?
        .try_get("n")?)
    }

    /// The roles of each of `user_ids`.
    pub async fn roles_of_users(
        &self,
        user_ids: &[String],
    ) -> Result<HashMap<String, Vec<RoleRef>>> {
        let mut out: HashMap<String, Vec<RoleRef>> = HashMap::new();
        if user_ids.is_empty() {
            return Ok(out);
        }
        let sql = format!(
            "SELECT ur.user_id, r.id, r.name FROM user_roles ur JOIN roles r ON r.id = ur.role_id \
             WHERE ur.user_id IN ({}) ORDER BY r.name",
            placeholders(user_ids.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for id in user_ids {
            q = q.bind(id);
        }
        for row in q.fetch_all(&self.db.pool).await? {
            out.entry(row.try_get("user_id")?)
                .or_default()
                .push(RoleRef {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                });
        }
        Ok(out)
    }

    /// Replaces a user's roles.
    pub async fn set_user_roles(&self, user_id: &str, role_ids: &[String]) -> Result<()> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query("DELETE FROM user_roles WHERE user_id = ?")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        for role_id in role_ids {
            sqlx::query("INSERT INTO user_roles (user_id, role_id) VALUES (?, ?)")
                .bind(user_id)
                .bind(role_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The permission codes a user holds through their roles.
    /// Each permission a user holds through their roles, with the widest
    /// scope among the roles carrying it.
    pub async fn permissions_of_user(&self, user_id: &str) -> Result<Vec<(String, Scope)>> {
        let rows = sqlx::query(
            "SELECT rp.permission_code AS code, \
             COUNT(CASE WHEN r.scope = 'fleet' THEN 1 END) AS fleet FROM user_roles ur \
             JOIN role_permissions rp ON rp.role_id = ur.role_id \
             JOIN roles r ON r.id = ur.role_id \
             WHERE ur.user_id = ? GROUP BY rp.permission_code ORDER BY rp.permission_code",
        )
        .bind(user_id)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let fleet: i64 = r.try_get("fleet")?;
                Ok((
                    r.try_get("code")?,
                    if fleet > 0 { Scope::Fleet } else { Scope::Own },
                ))
            })
            .collect::<sqlx::Result<_>>()?)
    }
}
