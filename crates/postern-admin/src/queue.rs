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
