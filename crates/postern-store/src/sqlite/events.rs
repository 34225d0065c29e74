//! Tracking events in SQLite.

use rusqlite::{params, Connection, Row};

use crate::events::{like_anywhere, node_of, with_node};
use crate::{EventQuery, StoreError, TrackingEvent};

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

pub(crate) fn insert(
    conn: &Connection,
    node: &str,
    event: &TrackingEvent,
) -> Result<(), StoreError> {
    let stamped = with_node(&event.detail, node);
    let node = node_of(&stamped).unwrap_or(node);
    let detail = serde_json::to_string(&stamped)
        .map_err(|error| StoreError::Corrupt(format!("event detail: {error}")))?;
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT INTO events ({COLUMNS}, node) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
    ))?;
    stmt.execute(params![
        event.queue_id,
        event.message_id,
        event.at,
        event.kind,
        detail,
        node
    ])?;
    Ok(())
}

pub(crate) fn for_message(
    conn: &Connection,
    queue_id: &str,
    [given, other]: [&str; 2],
) -> Result<Vec<TrackingEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM events
         WHERE queue_id = ?1
            OR message_id IN (?2, ?3)
            OR queue_id IN (SELECT queue_id FROM events WHERE message_id IN (?2, ?3))
         ORDER BY at, id"
    ))?;
    let rows = stmt.query_map(params![queue_id, given, other], from_row)?;
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
        let (given, other) = crate::events::message_id_forms(text);
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

/// Events with a row id above `after`, by id (copying a store).
pub(crate) fn after(
    conn: &Connection,
    after: i64,
    limit: usize,
) -> Result<Vec<(i64, TrackingEvent)>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS}, id FROM events WHERE id > ?1 ORDER BY id LIMIT ?2"
    ))?;
    let rows = stmt.query_map([after, limit], |row| Ok((row.get(5)?, from_row(row)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
