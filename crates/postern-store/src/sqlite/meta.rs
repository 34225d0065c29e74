//! The `meta` table: the generation counter and one-time flags.
//!
//! The generation is a plain counter bumped inside every transaction that
//! changes settings or certificates. A counter in a table (rather than
//! SQLite's `data_version`) means the same thing to every process and to a
//! future PostgreSQL backend, and tracking events do not touch it.

use rusqlite::{params, Connection, OptionalExtension};

use crate::StoreError;

const GENERATION: &str = "generation";

pub(crate) fn generation(conn: &Connection) -> Result<i64, StoreError> {
    conn.query_row(
        "SELECT value FROM meta WHERE key = ?1",
        [GENERATION],
        |row| row.get(0),
    )
    .optional()?
    .ok_or_else(|| StoreError::Corrupt("the generation counter is missing".to_string()))
}

/// Bump the generation; call inside the transaction that changed something.
pub(crate) fn bump_generation(conn: &Connection) -> Result<(), StoreError> {
    let changed = conn.execute(
        "UPDATE meta SET value = value + 1 WHERE key = ?1",
        [GENERATION],
    )?;
    if changed != 1 {
        return Err(StoreError::Corrupt(
            "the generation counter is missing".to_string(),
        ));
    }
    Ok(())
}

/// The value of a flag, `None` while unset.
pub(crate) fn flag(conn: &Connection, key: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
            row.get(0)
        })
        .optional()?)
}

pub(crate) fn set_flag(conn: &Connection, key: &str, value: i64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// Add one to the counter `key` (created at 1 when missing).
pub(crate) fn bump_counter(conn: &Connection, key: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, 1)
         ON CONFLICT (key) DO UPDATE SET value = value + 1",
        [key],
    )?;
    Ok(())
}
