//! Credentials of the admin web UI and JSON API: the admin password and the
//! API tokens (SPEC §2 `postern admin passwd`, `postern admin token create`).
//!
//! Only hashes are stored, never a password or a token: the password as an
//! argon2id PHC string, a token as a hash of its (high-entropy) value. The
//! store does not compute or check hashes; `postern-admin` does. A token is
//! found by its hash, so the hash column is unique.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Longest API token name, in characters.
pub const MAX_TOKEN_NAME_CHARS: usize = 64;

const PASSWORD: &str = "password";
const TOKEN: &str = "token";
/// The name of the one password row.
const ADMIN: &str = "admin";

/// An API token as the store keeps it: its name and when it was made. The
/// hash stays inside the store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiToken {
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// Check an API token name: 1 to [`MAX_TOKEN_NAME_CHARS`] characters, no
/// control characters, no surrounding blanks.
pub fn validate_token_name(name: &str) -> Result<(), StoreError> {
    let bad = |why: &str| Err(StoreError::BadName(format!("token name {name:?}: {why}")));
    if name.is_empty() {
        return Err(StoreError::BadName(
            "token name must not be empty".to_string(),
        ));
    }
    if name.chars().count() > MAX_TOKEN_NAME_CHARS {
        return bad(&format!("longer than {MAX_TOKEN_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return bad("must not contain control characters");
    }
    if name.trim() != name {
        return bad("must not begin or end with blanks");
    }
    Ok(())
}

fn check_hash(hash: &str) -> Result<(), StoreError> {
    if hash.is_empty() || hash.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(StoreError::BadName(
            "a credential hash must be one non-empty word".to_string(),
        ));
    }
    Ok(())
}

pub(crate) fn password_hash(conn: &Connection) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT hash FROM admin_credentials WHERE kind = ?1 AND name = ?2",
            [PASSWORD, ADMIN],
            |row| row.get(0),
        )
        .optional()?)
}

/// Replace the password hash; call inside a write transaction.
pub(crate) fn set_password_hash(conn: &Connection, hash: &str) -> Result<(), StoreError> {
    check_hash(hash)?;
    conn.execute(
        "INSERT INTO admin_credentials (kind, name, hash, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (kind, name) DO UPDATE SET hash = excluded.hash,
                                                created_at = excluded.created_at",
        params![PASSWORD, ADMIN, hash, crate::now()],
    )?;
    Ok(())
}

/// Insert a token; call inside a write transaction.
pub(crate) fn add_token(conn: &Connection, name: &str, hash: &str) -> Result<(), StoreError> {
    validate_token_name(name)?;
    check_hash(hash)?;
    let existing: Option<String> = conn
        .query_row(
            "SELECT name FROM admin_credentials WHERE kind = ?1 AND name = ?2",
            [TOKEN, name],
            |row| row.get(0),
        )
        .optional()?;
    if existing.is_some() {
        return Err(StoreError::DuplicateToken(name.to_string()));
    }
    conn.execute(
        "INSERT INTO admin_credentials (kind, name, hash, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![TOKEN, name, hash, crate::now()],
    )?;
    Ok(())
}

fn token_from_row(row: &Row<'_>) -> rusqlite::Result<ApiToken> {
    Ok(ApiToken {
        name: row.get(0)?,
        created_at: row.get(1)?,
    })
}

pub(crate) fn token_by_hash(conn: &Connection, hash: &str) -> Result<Option<ApiToken>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, created_at FROM admin_credentials WHERE kind = ?1 AND hash = ?2",
    )?;
    Ok(stmt.query_row([TOKEN, hash], token_from_row).optional()?)
}

pub(crate) fn tokens(conn: &Connection) -> Result<Vec<ApiToken>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, created_at FROM admin_credentials WHERE kind = ?1 ORDER BY name",
    )?;
    let rows = stmt.query_map([TOKEN], token_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn delete_token(conn: &Connection, name: &str) -> Result<(), StoreError> {
    let deleted = conn.execute(
        "DELETE FROM admin_credentials WHERE kind = ?1 AND name = ?2",
        [TOKEN, name],
    )?;
    if deleted == 0 {
        return Err(StoreError::UnknownToken(name.to_string()));
    }
    Ok(())
}
