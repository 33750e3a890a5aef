use std::collections::HashMap;

// Dynamic SQL here is assembled from constant fragments and `?`
// placeholders only; every value is bound.
use sqlx::{AssertSqlSafe, Row};

use wf_common::permissions::Scope;

use super::{Store, conflict_on_unique, flag, placeholders};
use crate::error::Result;

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct RoleRef {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct RoleRecord {
    pub id: String,
    pub name: String,
    pub description: String,
    pub is_system: bool,
    /// How far the role's permissions reach.
    pub scope: Scope,
    pub permissions: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Store {
    /// Every role with its permissions, by name.
    pub async fn list_roles(&self) -> Result<Vec<RoleRecord>> {
        self.roles_where("", &[]).await
    }

    pub async fn get_role(&self, id: &str) -> Result<Option<RoleRecord>> {
        Ok(self
            .roles_where("WHERE id = ?", &[id])
            .await?
            .into_iter()
            .next())
    }

    /// The roles among `ids` that exist.
    pub async fn roles_by_ids(&self, ids: &[String]) -> Result<Vec<RoleRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.roles_where(&format!("WHERE id IN ({})", placeholders(ids.len())), &refs)
            .await
    }

    /// The roles among `names` that exist.
    pub async fn roles_by_names(&self, names: &[String]) -> Result<Vec<RoleRecord>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        self.roles_where(
            &format!("WHERE name IN ({})", placeholders(names.len())),
            &refs,
        )
        .await
    }

    async fn roles_where(&self, clause: &str, args: &[&str]) -> Result<Vec<RoleRecord>> {
        let sql = format!(
            "SELECT id, name, description, is_system, scope, created_at, updated_at FROM roles {clause} ORDER BY name"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for a in args {
            q = q.bind(*a);
        }
        let rows = q.fetch_all(&self.db.pool).await?;
        let mut roles = rows
            .iter()
            .map(|row| {
                Ok(RoleRecord {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    description: row.try_get("description")?,
                    is_system: flag(row.try_get("is_system")?),
                    scope: Scope::parse(&row.try_get::<String, _>("scope")?)
                        .map_err(|e| sqlx::Error::Decode(e.into()))?,
                    permissions: Vec::new(),
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            })
            .collect::<sqlx::Result<Vec<_>>>()?;
        if roles.is_empty() {
            return Ok(roles);
        }
        let sql = format!(
            "SELECT role_id, permission_code FROM role_permissions WHERE role_id IN ({}) \
             ORDER BY permission_code",
            placeholders(roles.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for r in &roles {
            q = q.bind(r.id.clone());
        }
        let mut by_role: HashMap<String, Vec<String>> = HashMap::new();
        for row in q.fetch_all(&self.db.pool).await? {
            by_role
                .entry(row.try_get("role_id")?)
                .or_default()
                .push(row.try_get("permission_code")?);
        }
        for role in &mut roles {
            role.permissions = by_role.remove(&role.id).unwrap_or_default();
        }
        Ok(roles)
    }

    pub async fn insert_role(
        &self,
        id: &str,
        name: &str,
        description: &str,
        scope: Scope,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO roles (id, name, description, is_system, scope, created_at, updated_at) \
             VALUES (?, ?, ?, 0, ?, ?, ?)",
        )
        .bind(id)
        .bind(name)
        .bind(description)
        .bind(scope.as_str())
        .bind(now)
        .bind(now)
        .execute(&self.db.pool)
        .await
        .map_err(conflict_on_unique("a role with that name already exists"))?;
        Ok(())
    }

    pub async fn update_role(
        &self,
        id: &str,
        name: Option<&str>,
        description: Option<&str>,
        scope: Option<Scope>,
        now: i64,
    ) -> Result<bool> {
        let result = sqlx::query(
            "UPDATE roles SET name = COALESCE(?, name), description = COALESCE(?, description), \
             scope = COALESCE(?, scope), updated_at = ? WHERE id = ?",
        )
        .bind(name.map(str::to_string))
        .bind(description.map(str::to_string))
        .bind(scope.map(|s| s.as_str().to_string()))
        .bind(now)
        .bind(id)
        .execute(&self.db.pool)
        .await
        .map_err(conflict_on_unique("a role with that name already exists"))?;
        Ok(result.rows_affected() > 0)
    }

    pub async fn delete_role(&self, id: &str) -> Result<bool> {
        let result = sqlx::query("DELETE FROM roles WHERE id = ?")
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Replaces a role's permissions. Every code must exist.
    pub async fn set_role_permissions(&self, role_id: &str, codes: &[String]) -> Result<()> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query("DELETE FROM role_permissions WHERE role_id = ?")
            .bind(role_id)
            .execute(&mut *tx)
            .await?;
        for code in codes {
            sqlx::query("INSERT INTO role_permissions (role_id, permission_code) VALUES (?, ?)")
                .bind(role_id)
                .bind(code)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every permission code with its description.
    pub async fn list_permissions(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT code, description FROM permissions ORDER BY code")
            .fetch_all(&self.db.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| Ok((r.try_get("code")?, r.try_get("description")?)))
            .collect::<sqlx::Result<_>>()?)
    }
}
