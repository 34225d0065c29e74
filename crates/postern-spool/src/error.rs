//! Spool errors. Each says which file and what went wrong, and whose fault it
//! is: a local failure (`Io`, `Locked`), a damaged file (`Corrupt`), or a
//! caller mistake (`NotFound`, `InvalidEnvelope`, `StateMismatch`, `ReadOnly`).

use std::io;
use std::path::PathBuf;

use crate::QueueId;

#[derive(thiserror::Error, Debug)]
pub enum SpoolError {
    /// A local I/O failure (disk full, permissions, hardware). Nothing was
    /// committed; for `store`, answer the client with a 451.
    #[error("spool: cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A queue or state file failed verification. `recover` moves such files
    /// to `corrupt/`.
    #[error("damaged spool file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// No message with this id in `queue/`.
    #[error("no queued message {id}")]
    NotFound { id: QueueId },
    /// Another `Spool::open` holds the spool's lock (another gateway process,
    /// or a second open in this one).
    #[error("spool {path} is in use: lock file held by another process or handle")]
    Locked { path: PathBuf },
    /// The caller asked to store an envelope the spool refuses.
    #[error("refusing to store message: {reason}")]
    InvalidEnvelope { reason: String },
    /// `update_state` was given recipients that are not the envelope's.
    #[error("recipient state for {id} does not match its envelope: {reason}")]
    StateMismatch { id: QueueId, reason: String },
    /// A write operation on a spool opened with `Spool::open_read_only`.
    #[error("spool {path} was opened read-only")]
    ReadOnly { path: PathBuf },
}

impl SpoolError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SpoolError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
