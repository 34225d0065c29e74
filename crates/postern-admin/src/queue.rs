//! The narrow interface to the running gateway's queue.
//!
//! The admin server never touches the spool's files itself: it reads
//! through [`QueueControl::list`] / [`QueueControl::get`] and changes the
//! queue through [`QueueControl::retry`] / [`QueueControl::delete`], which
//! the gateway implements with its queue runner (so a retry is scheduled at
//! once and a delete waits for an attempt in flight).

use std::future::Future;
use std::pin::Pin;

use postern_spool::{QueueId, QueuedEnvelope};

/// A boxed future, for the async methods of an object-safe trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a queue operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueError {
    /// No queued message with that id.
    NotFound,
    /// Anything else, as text for the administrator.
    Failed(String),
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueError::NotFound => f.write_str("no such queued message"),
            QueueError::Failed(text) => f.write_str(text),
        }
    }
}

/// The queue as the admin server sees it.
pub trait QueueControl: Send + Sync {
    /// Every queued message without its body, oldest first. Blocking
    /// (called from `spawn_blocking`).
    fn list(&self) -> Result<Vec<QueuedEnvelope>, QueueError>;

    /// One queued message without its body. Blocking.
    fn get(&self, id: &QueueId) -> Result<QueuedEnvelope, QueueError>;

    /// Make the message's deferred recipients due now.
    fn retry(&self, id: QueueId) -> BoxFuture<'_, Result<(), QueueError>>;

    /// Remove the message from the queue without a bounce.
    fn delete(&self, id: QueueId) -> BoxFuture<'_, Result<(), QueueError>>;
}

/// How a queued message travels in a node's published queue snapshot
/// (`postern_store::QueueSnapshot::entries`): everything the listing
/// shows, nothing of the body.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotEntry {
    id: QueueId,
    envelope: postern_spool::Envelope,
    recipients: Vec<postern_spool::RecipientState>,
    size: u64,
}

/// One message as a snapshot entry.
pub fn snapshot_entry(queued: &QueuedEnvelope) -> serde_json::Value {
    let entry = SnapshotEntry {
        id: queued.id.clone(),
        envelope: queued.envelope.clone(),
        recipients: queued.recipients.clone(),
        size: queued.size,
    };
    serde_json::to_value(entry).unwrap_or(serde_json::Value::Null)
}

/// A snapshot entry read back; `None` when it is not one (a node of
/// another version may publish more fields, which are ignored).
pub fn from_snapshot_entry(value: &serde_json::Value) -> Option<QueuedEnvelope> {
    let entry: SnapshotEntry = serde_json::from_value(value.clone()).ok()?;
    Some(QueuedEnvelope {
        id: entry.id,
        envelope: entry.envelope,
        recipients: entry.recipients,
        size: entry.size,
    })
}
