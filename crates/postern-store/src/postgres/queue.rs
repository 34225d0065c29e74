//! The queue across nodes in PostgreSQL.

use tokio_postgres::{Client, Row};

use super::wait;
use crate::queue::{action_from, outcome_columns, outcome_from, REQUEST_KEEP_SECS};
use crate::{QueueAction, QueueRequest, QueueSnapshot, StoreError};

const NOW: &str = "CAST(extract(epoch FROM now()) AS BIGINT)";

/// The `NOTIFY` channel a new request signals on (payload: the owner).
pub(crate) const QUEUE_CHANNEL: &str = "postern_queue";

pub(crate) fn put_snapshot(client: &Client, snapshot: &QueueSnapshot) -> Result<(), StoreError> {
    let entries = serde_json::to_string(&snapshot.entries)
        .map_err(|error| StoreError::Corrupt(format!("queue snapshot: {error}")))?;
    wait(client.execute(
        &format!(
            "INSERT INTO queue_snapshots (node, messages, deferred, entries, published_at)
             VALUES ($1, $2, $3, $4, {NOW})
             ON CONFLICT (node) DO UPDATE SET
                messages = excluded.messages, deferred = excluded.deferred,
                entries = excluded.entries, published_at = excluded.published_at"
        ),
        &[
            &snapshot.node,
            &snapshot.messages,
            &snapshot.deferred,
            &entries,
        ],
    ))?;
    Ok(())
}

pub(crate) fn snapshots(client: &Client) -> Result<Vec<QueueSnapshot>, StoreError> {
    let rows = wait(client.query(
        &format!(
            "SELECT node, messages, deferred, entries, published_at, {NOW} - published_at
             FROM queue_snapshots ORDER BY node COLLATE \"C\""
        ),
        &[],
    ))?;
    rows.iter()
        .map(|row| {
            let node: String = row.get(0);
            let entries: String = row.get(3);
            let entries = serde_json::from_str(&entries).map_err(|error| {
                StoreError::Corrupt(format!("queue snapshot of {node}: {error}"))
            })?;
            Ok(QueueSnapshot {
                node,
                messages: row.get(1),
                deferred: row.get(2),
                entries,
                published_at: row.get(4),
                age: row.get(5),
            })
        })
        .collect()
}

const REQUEST_COLUMNS: &str =
    "id, node, queue_id, action, requested_by, requested_at, done_at, ok, result";

fn request_from(row: &Row) -> Result<QueueRequest, StoreError> {
    let action: String = row.get(3);
    Ok(QueueRequest {
        id: row.get(0),
        node: row.get(1),
        queue_id: row.get(2),
        action: action_from(&action)?,
        requested_by: row.get(4),
        requested_at: row.get(5),
        done_at: row.get(6),
        outcome: outcome_from(row.get(7), row.get(8)),
    })
}

/// Insert the request and wake the owner (`NOTIFY`, sent at commit).
pub(crate) fn insert_request(
    client: &Client,
    node: &str,
    queue_id: &str,
    action: QueueAction,
    requested_by: &str,
) -> Result<QueueRequest, StoreError> {
    let row = wait(client.query_one(
        &format!(
            "WITH added AS (
                 INSERT INTO queue_requests (node, queue_id, action, requested_by, requested_at)
                 VALUES ($1, $2, $3, $4, {NOW}) RETURNING {REQUEST_COLUMNS}
             ), hint AS (SELECT pg_notify('{QUEUE_CHANNEL}', $1))
             SELECT added.* FROM added, hint"
        ),
        &[&node, &queue_id, &action.as_str(), &requested_by],
    ))?;
    request_from(&row)
}

pub(crate) fn waiting_requests(
    client: &Client,
    node: &str,
) -> Result<Vec<QueueRequest>, StoreError> {
    let rows = wait(client.query(
        &format!(
            "SELECT {REQUEST_COLUMNS} FROM queue_requests
             WHERE node = $1 AND done_at IS NULL ORDER BY id"
        ),
        &[&node],
    ))?;
    rows.iter().map(request_from).collect()
}

pub(crate) fn request(client: &Client, id: i64) -> Result<Option<QueueRequest>, StoreError> {
    let row = wait(client.query_opt(
        &format!("SELECT {REQUEST_COLUMNS} FROM queue_requests WHERE id = $1"),
        &[&id],
    ))?;
    row.as_ref().map(request_from).transpose()
}

/// Record the outcome once; requests done long ago are dropped.
pub(crate) fn finish_request(
    client: &Client,
    id: i64,
    outcome: &Result<String, String>,
) -> Result<(), StoreError> {
    let (ok, text) = outcome_columns(outcome);
    wait(client.execute(
        &format!(
            "UPDATE queue_requests SET done_at = {NOW}, ok = $2, result = $3
             WHERE id = $1 AND done_at IS NULL"
        ),
        &[&id, &ok, &text],
    ))?;
    wait(client.execute(
        &format!("DELETE FROM queue_requests WHERE done_at < {NOW} - $1"),
        &[&REQUEST_KEEP_SECS],
    ))?;
    Ok(())
}
