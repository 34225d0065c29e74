//! The queue across nodes (SPEC §9): every node publishes a bounded
//! snapshot of its own queue for the others to list, and takes the retry
//! and delete requests made for its messages on other nodes (it alone
//! writes its spool).

use serde::{Deserialize, Serialize};

/// At most this many messages (the oldest) are in a published snapshot;
/// the counts still cover the whole queue.
pub const SNAPSHOT_MAX_ENTRIES: usize = 5_000;

/// One node's queue as it last published it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// The publishing node's `node_name`.
    pub node: String,
    /// Messages in its spool (all of them, also beyond the entries).
    pub messages: i64,
    /// Deferred recipients among the entries.
    pub deferred: i64,
    /// The oldest messages, oldest first, at most
    /// [`SNAPSHOT_MAX_ENTRIES`]; the shape is the publisher's (the admin
    /// crate's queue entry), the store keeps it as it is.
    pub entries: Vec<serde_json::Value>,
    /// Unix seconds, by the store's clock (set by the store on write).
    pub published_at: i64,
    /// Seconds since `published_at`, by the store's clock (set on read).
    pub age: i64,
}

/// What another node asks the owner of a message to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueAction {
    /// Make its deferred recipients due now.
    Retry,
    /// Remove it from the queue without a bounce.
    Delete,
}

impl QueueAction {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueAction::Retry => "retry",
            QueueAction::Delete => "delete",
        }
    }

    pub fn parse(text: &str) -> Option<QueueAction> {
        match text {
            "retry" => Some(QueueAction::Retry),
            "delete" => Some(QueueAction::Delete),
            _ => None,
        }
    }
}

/// A retry or delete request for a message on `node`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRequest {
    pub id: i64,
    /// The node that owns the message and carries the request out.
    pub node: String,
    /// The queue id on that node.
    pub queue_id: String,
    pub action: QueueAction,
    /// The node where it was asked for.
    pub requested_by: String,
    /// Unix seconds, by the store's clock.
    pub requested_at: i64,
    /// When the owner carried it out; `None` while it waits.
    pub done_at: Option<i64>,
    /// The owner's outcome: `Ok(text)` or `Err(why)`; `None` while it waits.
    pub outcome: Option<Result<String, String>>,
}

/// Done requests are kept this long for the requester to read the outcome.
pub const REQUEST_KEEP_SECS: i64 = 24 * 3600;

/// (ok, text) of an outcome, for a table row.
pub(crate) fn outcome_columns(outcome: &Result<String, String>) -> (bool, &str) {
    match outcome {
        Ok(text) => (true, text.as_str()),
        Err(text) => (false, text.as_str()),
    }
}

/// An outcome from its table columns.
pub(crate) fn outcome_from(
    ok: Option<bool>,
    text: Option<String>,
) -> Option<Result<String, String>> {
    match ok? {
        true => Some(Ok(text.unwrap_or_default())),
        false => Some(Err(text.unwrap_or_default())),
    }
}

/// A request row's action column, checked.
pub(crate) fn action_from(text: &str) -> Result<QueueAction, crate::StoreError> {
    QueueAction::parse(text)
        .ok_or_else(|| crate::StoreError::Corrupt(format!("queue request action \"{text}\"")))
}
