//! The node registry in SQLite (one node, but the same interface).

use rusqlite::{params, Connection, Row};

use crate::{NodeStatus, StoreError};

pub(crate) fn put(conn: &Connection, node: &NodeStatus) -> Result<(), StoreError> {
    let fingerprints = serde_json::to_string(&node.fingerprints)
        .map_err(|error| StoreError::Corrupt(format!("node fingerprints: {error}")))?;
    conn.execute(
        "INSERT INTO nodes (name, hostname, version, started_at, last_seen, applied_generation,
                            fingerprints, queue_messages, queue_deferred)
         VALUES (?1, ?2, ?3, ?4, unixepoch(), ?5, ?6, ?7, ?8)
         ON CONFLICT (name) DO UPDATE SET
            hostname = excluded.hostname, version = excluded.version,
            started_at = excluded.started_at, last_seen = excluded.last_seen,
            applied_generation = excluded.applied_generation,
            fingerprints = excluded.fingerprints, queue_messages = excluded.queue_messages,
            queue_deferred = excluded.queue_deferred",
        params![
            node.name,
            node.hostname,
            node.version,
            node.started_at,
            node.applied_generation,
            fingerprints,
            node.queue_messages,
            node.queue_deferred
        ],
    )?;
    Ok(())
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<NodeStatus> {
    let fingerprints: String = row.get(7)?;
    let fingerprints = serde_json::from_str(&fingerprints).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, Box::new(error))
    })?;
    Ok(NodeStatus {
        name: row.get(0)?,
        hostname: row.get(1)?,
        version: row.get(2)?,
        started_at: row.get(3)?,
        last_seen: row.get(4)?,
        seen_ago: row.get(5)?,
        applied_generation: row.get(6)?,
        fingerprints,
        queue_messages: row.get(8)?,
        queue_deferred: row.get(9)?,
    })
}

pub(crate) fn list(conn: &Connection) -> Result<Vec<NodeStatus>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, hostname, version, started_at, last_seen, unixepoch() - last_seen,
                applied_generation, fingerprints, queue_messages, queue_deferred
         FROM nodes ORDER BY name",
    )?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}
