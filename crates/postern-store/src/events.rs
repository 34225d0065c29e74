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

/// A search over tracking events (the admin UI's message tracking and
/// dashboard). Every condition given must hold; results are newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// A queue id, a Message-ID (with or without `<>`), or any text found
    /// in the Message-ID or the event's detail (ASCII case-insensitive):
    /// a sender or recipient address, a client address, a host name.
    pub text: Option<String>,
    /// Only events at or after this time (unix seconds).
    pub since: Option<i64>,
    /// Only events at or before this time (unix seconds).
    pub until: Option<i64>,
    /// Only these kinds ([`event_kind`]); empty means every kind.
    pub kinds: Vec<String>,
    /// At most this many events.
    pub limit: usize,
}

/// `text` as a LIKE pattern matching it anywhere, with `\` as escape.
fn like_anywhere(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

pub(crate) fn search(
    conn: &Connection,
    query: &EventQuery,
) -> Result<Vec<TrackingEvent>, StoreError> {
    let mut sql = format!("SELECT {COLUMNS} FROM events WHERE 1 = 1");
    let mut values: Vec<rusqlite::types::Value> = Vec::new();
    let mut bind = |sql: &mut String, fragment: &str, value: rusqlite::types::Value| {
        values.push(value);
        sql.push_str(&fragment.replace('?', &format!("?{}", values.len())));
    };
    if let Some(text) = query
        .text
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let (given, other) = message_id_forms(text);
        bind(&mut sql, " AND (queue_id = ?", given.clone().into());
        bind(&mut sql, " OR message_id = ?", given.into());
        bind(&mut sql, " OR message_id = ?", other.into());
        let pattern = like_anywhere(text);
        bind(
            &mut sql,
            " OR message_id LIKE ? ESCAPE '\\'",
            pattern.clone().into(),
        );
        bind(&mut sql, " OR detail LIKE ? ESCAPE '\\')", pattern.into());
    }
    if let Some(since) = query.since {
        bind(&mut sql, " AND at >= ?", since.into());
    }
    if let Some(until) = query.until {
        bind(&mut sql, " AND at <= ?", until.into());
    }
    if !query.kinds.is_empty() {
        sql.push_str(" AND kind IN (");
        for (i, kind) in query.kinds.iter().enumerate() {
            let sep = if i == 0 { "?" } else { ", ?" };
            bind(&mut sql, sep, kind.clone().into());
        }
        sql.push(')');
    }
    let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
    bind(&mut sql, " ORDER BY at DESC, id DESC LIMIT ?", limit.into());
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(values.iter()), from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Rows deleted per statement: each is its own short write transaction, so
/// a large first prune never holds up the tracking writer for long.
const PRUNE_CHUNK: i64 = 5000;

pub(crate) fn prune(conn: &Connection, before: i64) -> Result<usize, StoreError> {
    let mut total = 0;
    loop {
        let deleted = conn.execute(
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ?1 LIMIT ?2)",
            [before, PRUNE_CHUNK],
        )?;
        total += deleted;
        if deleted < PRUNE_CHUNK as usize {
            return Ok(total);
        }
    }
}
