//! The queue across nodes in SQLite (one node, but the same interface).

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::queue::{action_from, outcome_columns, outcome_from, REQUEST_KEEP_SECS};
use crate::{QueueAction, QueueRequest, QueueSnapshot, StoreError};

pub(crate) fn put_snapshot(conn: &Connection, snapshot: &QueueSnapshot) -> Result<(), StoreError> {
    let entries = serde_json::to_string(&snapshot.entries)
        .map_err(|error| StoreError::Corrupt(format!("queue snapshot: {error}")))?;
    conn.execute(
        "INSERT INTO queue_snapshots (node, messages, deferred, entries, published_at)
         VALUES (?1, ?2, ?3, ?4, unixepoch())
         ON CONFLICT (node) DO UPDATE SET
            messages = excluded.messages, deferred = excluded.deferred,
            entries = excluded.entries, published_at = excluded.published_at",
        params![snapshot.node, snapshot.messages, snapshot.deferred, entries],
    )?;
    Ok(())
}

pub(crate) fn snapshots(conn: &Connection) -> Result<Vec<QueueSnapshot>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT node, messages, deferred, entries, published_at, unixepoch() - published_at
         FROM queue_snapshots ORDER BY node",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, i64>(2)?,
            row.get::<_, String>(3)?,
            row.get::<_, i64>(4)?,
            row.get::<_, i64>(5)?,
        ))
    })?;
    rows.map(|row| {
        let (node, messages, deferred, entries, published_at, age) = row?;
        let entries = serde_json::from_str(&entries)
            .map_err(|error| StoreError::Corrupt(format!("queue snapshot of {node}: {error}")))?;
        Ok(QueueSnapshot {
            node,
            messages,
            deferred,
            entries,
            published_at,
            age,
        })
    })
    .collect()
}

const REQUEST_COLUMNS: &str =
    "id, node, queue_id, action, requested_by, requested_at, done_at, ok, result";

fn request_row(row: &Row<'_>) -> rusqlite::Result<(QueueRequest, String)> {
    let action: String = row.get(3)?;
    Ok((
        QueueRequest {
            id: row.get(0)?,
            node: row.get(1)?,
            queue_id: row.get(2)?,
            action: QueueAction::Retry,
            requested_by: row.get(4)?,
            requested_at: row.get(5)?,
            done_at: row.get(6)?,
            outcome: outcome_from(row.get(7)?, row.get(8)?),
        },
        action,
    ))
}

fn checked(row: rusqlite::Result<(QueueRequest, String)>) -> Result<QueueRequest, StoreError> {
    let (request, action) = row?;
    Ok(QueueRequest {
        action: action_from(&action)?,
        ..request
    })
}

pub(crate) fn insert_request(
    conn: &Connection,
    node: &str,
    queue_id: &str,
    action: QueueAction,
    requested_by: &str,
) -> Result<QueueRequest, StoreError> {
    let row = conn.query_row(
        &format!(
            "INSERT INTO queue_requests (node, queue_id, action, requested_by, requested_at)
             VALUES (?1, ?2, ?3, ?4, unixepoch()) RETURNING {REQUEST_COLUMNS}"
        ),
        params![node, queue_id, action.as_str(), requested_by],
        request_row,
    );
    checked(row)
}

pub(crate) fn waiting_requests(
    conn: &Connection,
    node: &str,
) -> Result<Vec<QueueRequest>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {REQUEST_COLUMNS} FROM queue_requests
         WHERE node = ?1 AND done_at IS NULL ORDER BY id"
    ))?;
    let rows = stmt.query_map([node], request_row)?;
    rows.map(checked).collect()
}

pub(crate) fn request(conn: &Connection, id: i64) -> Result<Option<QueueRequest>, StoreError> {
    let row = conn
        .query_row(
            &format!("SELECT {REQUEST_COLUMNS} FROM queue_requests WHERE id = ?1"),
            [id],
            request_row,
        )
        .optional();
    match row {
        Ok(Some(row)) => checked(Ok(row)).map(Some),
        Ok(None) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Record the outcome (only once: a request done already stays as it
/// was); requests done long ago are dropped.
pub(crate) fn finish_request(
    conn: &Connection,
    id: i64,
    outcome: &Result<String, String>,
) -> Result<(), StoreError> {
    let (ok, text) = outcome_columns(outcome);
    conn.execute(
        "UPDATE queue_requests SET done_at = unixepoch(), ok = ?2, result = ?3
         WHERE id = ?1 AND done_at IS NULL",
        params![id, ok, text],
    )?;
    conn.execute(
        "DELETE FROM queue_requests WHERE done_at < unixepoch() - ?1",
        [REQUEST_KEEP_SECS],
    )?;
    Ok(())
}
