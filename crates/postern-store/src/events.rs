//! Message tracking: one row per event of a message's life (SPEC §2
//! `postern trace`, §6 per-attempt records, §9 TLS-RPT input).
//!
//! Events are appended, never changed. The `detail` column holds a JSON
//! object whose shape depends on the kind (TLS version, cipher, host, reply,
//! ...); the store does not interpret it.

use rusqlite::{params, Connection, Row};
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// The kinds of tracking events the gateway records.
pub mod event_kind {
    pub const RECEIVED: &str = "received";
    pub const REJECTED: &str = "rejected";
    pub const QUEUED: &str = "queued";
    pub const DELIVERY_ATTEMPT: &str = "delivery_attempt";
    pub const DELIVERED: &str = "delivered";
    pub const DEFERRED: &str = "deferred";
    pub const BOUNCED: &str = "bounced";
}

/// One event of one message.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrackingEvent {
    pub queue_id: String,
    /// The Message-ID header value as received, when known.
    pub message_id: Option<String>,
    /// Unix seconds.
    pub at: i64,
    /// One of [`event_kind`].
    pub kind: String,
    pub detail: serde_json::Value,
}

const COLUMNS: &str = "queue_id, message_id, at, kind, detail";

fn from_row(row: &Row<'_>) -> rusqlite::Result<TrackingEvent> {
    let detail: String = row.get(4)?;
    let detail = serde_json::from_str(&detail).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(error))
    })?;
    Ok(TrackingEvent {
        queue_id: row.get(0)?,
        message_id: row.get(1)?,
        at: row.get(2)?,
        kind: row.get(3)?,
        detail,
    })
}

pub(crate) fn insert(conn: &Connection, event: &TrackingEvent) -> Result<(), StoreError> {
    let detail = serde_json::to_string(&event.detail)
        .map_err(|error| StoreError::Corrupt(format!("event detail: {error}")))?;
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT INTO events ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"
    ))?;
    stmt.execute(params![
        event.queue_id,
        event.message_id,
        event.at,
        event.kind,
        detail
    ])?;
    Ok(())
}

/// The Message-ID as given and in its other form (with or without `<>`).
fn message_id_forms(id: &str) -> (String, String) {
    let id = id.trim();
    match id.strip_prefix('<').and_then(|s| s.strip_suffix('>')) {
        Some(bare) => (id.to_string(), bare.to_string()),
        None => (id.to_string(), format!("<{id}>")),
    }
}

pub(crate) fn for_message(
    conn: &Connection,
    id_or_message_id: &str,
) -> Result<Vec<TrackingEvent>, StoreError> {
    let (given, other) = message_id_forms(id_or_message_id);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM events
         WHERE queue_id = ?1
            OR message_id IN (?1, ?2)
            OR queue_id IN (SELECT queue_id FROM events WHERE message_id IN (?1, ?2))
         ORDER BY at, id"
    ))?;
    let rows = stmt.query_map(params![given, other], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn recent(conn: &Connection, limit: usize) -> Result<Vec<TrackingEvent>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM events ORDER BY at DESC, id DESC LIMIT ?1"
    ))?;
    let rows = stmt.query_map([limit], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn prune(conn: &Connection, before: i64) -> Result<usize, StoreError> {
    Ok(conn.execute("DELETE FROM events WHERE at < ?1", [before])?)
}
