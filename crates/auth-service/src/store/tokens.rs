use sqlx::Row;

use super::Store;
use crate::error::Result;

/// A stored refresh token. Only the SHA-256 of the token is kept.
#[derive(Debug, Clone)]
pub struct RefreshTokenRecord {
    pub id: String,
    /// Every token rotated from one login shares a family.
    pub family_id: String,
    pub user_id: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl Store {
    pub async fn insert_refresh_token(
        &self,
        record: &RefreshTokenRecord,
        token_hash: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expires_at, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&record.id)
        .bind(&record.family_id)
        .bind(&record.user_id)
        .bind(token_hash)
        .bind(record.expires_at)
        .bind(now)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    pub async fn find_refresh_token(&self, token_hash: &str) -> Result<Option<RefreshTokenRecord>> {
        let row = sqlx::query(
            "SELECT id, family_id, user_id, expires_at, used_at, revoked_at \
             FROM refresh_tokens WHERE token_hash = ?",
        )
        .bind(token_hash)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(RefreshTokenRecord {
            id: row.try_get("id")?,
            family_id: row.try_get("family_id")?,
            user_id: row.try_get("user_id")?,
            expires_at: row.try_get("expires_at")?,
            used_at: row.try_get("used_at")?,
            revoked_at: row.try_get("revoked_at")?,
        }))
    }

    /// Marks a token spent. False when it was already spent or revoked, so
    /// two concurrent refreshes with one token cannot both succeed.
    pub async fn spend_refresh_token(&self, id: &str, now: i64) -> Result<bool> {
        let result = sqlx::query(
            "UPDATE refresh_tokens SET used_at = ? \
             WHERE id = ? AND used_at IS NULL AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&self.db.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Revokes every token of a family; returns how many were still live.
    pub async fn revoke_token_family(&self, family_id: &str, now: i64) -> Result<u64> {
        let result = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = ? WHERE family_id = ? AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(family_id)
        .execute(&self.db.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// Revokes every refresh token of a user.
    pub async fn revoke_user_tokens(&self, user_id: &str, now: i64) -> Result<u64> {
        let result = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(user_id)
        .execute(&self.db.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// Deletes tokens that expired before `cutoff`.
    pub async fn purge_expired_refresh_tokens(&self, cutoff: i64) -> Result<u64> {
        let result = sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < ?")
            .bind(cutoff)
            .execute(&self.db.pool)
            .await?;
        Ok(result.rows_affected())
    }
}
