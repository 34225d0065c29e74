//! Tracking events and the node registry in PostgreSQL.

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::row::get;
use super::wait;
use crate::events::{like_anywhere, node_of, with_node};
use crate::{EventQuery, NodeStatus, StoreError, TrackingEvent};

const COLUMNS: &str = "queue_id, message_id, at, kind, detail";

fn from_row(row: &Row) -> Result<TrackingEvent, StoreError> {
    let detail: String = get(row, 4)?;
    let detail = serde_json::from_str(&detail)
        .map_err(|error| StoreError::Corrupt(format!("event detail: {error}")))?;
    Ok(TrackingEvent {
        queue_id: get(row, 0)?,
        message_id: get(row, 1)?,
        at: get(row, 2)?,
        kind: get(row, 3)?,
        detail,
    })
}

fn from_rows(rows: &[Row]) -> Result<Vec<TrackingEvent>, StoreError> {
    rows.iter().map(from_row).collect()
}

/// One statement for the whole batch (arrays unnested): one round trip.
/// Events whose detail names no node are stamped with `node`.
pub(crate) fn insert(
    client: &Client,
    node: &str,
    batch: &[TrackingEvent],
) -> Result<(), StoreError> {
    let mut queue_ids = Vec::with_capacity(batch.len());
    let mut message_ids = Vec::with_capacity(batch.len());
    let mut ats = Vec::with_capacity(batch.len());
    let mut kinds = Vec::with_capacity(batch.len());
    let mut details = Vec::with_capacity(batch.len());
    let mut nodes = Vec::with_capacity(batch.len());
    for event in batch {
        let stamped = with_node(&event.detail, node);
        nodes.push(node_of(&stamped).unwrap_or(node).to_string());
        queue_ids.push(event.queue_id.as_str());
        message_ids.push(event.message_id.as_deref());
        ats.push(event.at);
        kinds.push(event.kind.as_str());
        details.push(
            serde_json::to_string(&stamped)
                .map_err(|error| StoreError::Corrupt(format!("event detail: {error}")))?,
        );
    }
    wait(client.execute(
        &format!(
            "INSERT INTO events ({COLUMNS}, node)
             SELECT q, m, a, k, d, o
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[])
                  WITH ORDINALITY AS t(q, m, a, k, d, o, n)
             ORDER BY n"
        ),
        &[&queue_ids, &message_ids, &ats, &kinds, &details, &nodes],
    ))?;
    Ok(())
}

pub(crate) fn for_message(
    client: &Client,
    queue_id: &str,
    [given, other]: [&str; 2],
) -> Result<Vec<TrackingEvent>, StoreError> {
    let rows = wait(client.query(
        &format!(
            "SELECT {COLUMNS} FROM events
             WHERE queue_id = $1
                OR message_id IN ($2, $3)
                OR queue_id IN (SELECT queue_id FROM events WHERE message_id IN ($2, $3))
             ORDER BY at, id"
        ),
        &[&queue_id, &given, &other],
    ))?;
    from_rows(&rows)
}

pub(crate) fn recent(client: &Client, limit: usize) -> Result<Vec<TrackingEvent>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = wait(client.query(
        &format!("SELECT {COLUMNS} FROM events ORDER BY at DESC, id DESC LIMIT $1"),
        &[&limit],
    ))?;
    from_rows(&rows)
}

pub(crate) fn search(
    client: &Client,
    query: &EventQuery,
) -> Result<Vec<TrackingEvent>, StoreError> {
    let mut sql = format!("SELECT {COLUMNS} FROM events WHERE TRUE");
    let mut values: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut bind = |sql: &mut String, fragment: &str, value: Box<dyn ToSql + Sync + Send>| {
        values.push(value);
        sql.push_str(&fragment.replace('?', &format!("${}", values.len())));
    };
    if let Some(text) = query
        .text
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let (given, other) = crate::events::message_id_forms(text);
        bind(&mut sql, " AND (queue_id = ?", Box::new(given.clone()));
        bind(&mut sql, " OR message_id = ?", Box::new(given));
        bind(&mut sql, " OR message_id = ?", Box::new(other));
        let pattern = like_anywhere(text);
        // ILIKE: case-insensitive like SQLite's LIKE.
        bind(
            &mut sql,
            " OR message_id ILIKE ? ESCAPE '\\'",
            Box::new(pattern.clone()),
        );
        bind(
            &mut sql,
            " OR detail ILIKE ? ESCAPE '\\')",
            Box::new(pattern),
        );
    }
    if let Some(since) = query.since {
        bind(&mut sql, " AND at >= ?", Box::new(since));
    }
    if let Some(until) = query.until {
        bind(&mut sql, " AND at <= ?", Box::new(until));
    }
    if !query.kinds.is_empty() {
        bind(
            &mut sql,
            " AND kind = ANY(?)",
            Box::new(query.kinds.clone()),
        );
    }
    let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
    bind(
        &mut sql,
        " ORDER BY at DESC, id DESC LIMIT ?",
        Box::new(limit),
    );
    let params: Vec<&(dyn ToSql + Sync)> = values
        .iter()
        .map(|v| v.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = wait(client.query(&sql, &params))?;
    from_rows(&rows)
}

/// Rows deleted per statement, as in SQLite: short transactions.
const PRUNE_CHUNK: i64 = 5000;

pub(crate) fn prune(client: &Client, before: i64) -> Result<usize, StoreError> {
    let mut total = 0;
    loop {
        let deleted = wait(client.execute(
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < $1 LIMIT $2)",
            &[&before, &PRUNE_CHUNK],
        ))?;
        total += usize::try_from(deleted).unwrap_or(usize::MAX);
        if deleted < PRUNE_CHUNK as u64 {
            return Ok(total);
        }
    }
}

/// The store's clock, so nodes with skewed clocks agree on "last seen".
const NOW: &str = "CAST(extract(epoch FROM now()) AS BIGINT)";

pub(crate) fn put_node(client: &Client, node: &NodeStatus) -> Result<(), StoreError> {
    let fingerprints = serde_json::to_string(&node.fingerprints)
        .map_err(|error| StoreError::Corrupt(format!("node fingerprints: {error}")))?;
    wait(client.execute(
        &format!(
            "INSERT INTO nodes (name, hostname, version, started_at, last_seen,
                                applied_generation, fingerprints, queue_messages, queue_deferred)
             VALUES ($1, $2, $3, $4, {NOW}, $5, $6, $7, $8)
             ON CONFLICT (name) DO UPDATE SET
                hostname = excluded.hostname, version = excluded.version,
                started_at = excluded.started_at, last_seen = excluded.last_seen,
                applied_generation = excluded.applied_generation,
                fingerprints = excluded.fingerprints, queue_messages = excluded.queue_messages,
                queue_deferred = excluded.queue_deferred"
        ),
        &[
            &node.name,
            &node.hostname,
            &node.version,
            &node.started_at,
            &node.applied_generation,
            &fingerprints,
            &node.queue_messages,
            &node.queue_deferred,
        ],
    ))?;
    Ok(())
}

pub(crate) fn nodes(client: &Client) -> Result<Vec<NodeStatus>, StoreError> {
    let rows = wait(client.query(
        &format!(
            "SELECT name, hostname, version, started_at, last_seen, {NOW} - last_seen,
                    applied_generation, fingerprints, queue_messages, queue_deferred
             FROM nodes ORDER BY name COLLATE \"C\""
        ),
        &[],
    ))?;
    rows.iter()
        .map(|row| {
            let fingerprints: String = get(row, 7)?;
            Ok(NodeStatus {
                name: get(row, 0)?,
                hostname: get(row, 1)?,
                version: get(row, 2)?,
                started_at: get(row, 3)?,
                last_seen: get(row, 4)?,
                seen_ago: get(row, 5)?,
                applied_generation: get(row, 6)?,
                fingerprints: serde_json::from_str(&fingerprints)
                    .map_err(|error| StoreError::Corrupt(format!("node fingerprints: {error}")))?,
                queue_messages: get(row, 8)?,
                queue_deferred: get(row, 9)?,
            })
        })
        .collect()
}

/// Events with a row id above `after`, by id (copying a store).
pub(crate) fn after(
    client: &Client,
    after: i64,
    limit: usize,
) -> Result<Vec<(i64, TrackingEvent)>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = wait(client.query(
        &format!("SELECT {COLUMNS}, id FROM events WHERE id > $1 ORDER BY id LIMIT $2"),
        &[&after, &limit],
    ))?;
    rows.iter()
        .map(|row| Ok((get(row, 5)?, from_row(row)?)))
        .collect()
}
