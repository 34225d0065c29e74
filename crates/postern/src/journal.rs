//! Tracking events kept on local disk while the store cannot take them (a
//! cluster's PostgreSQL down, SPEC §9), written to the store when it is
//! back — also after a restart, since the file stays until then.
//!
//! One JSON event per line, appended and fsync'd. Replay writes the events
//! in order and then removes the file; a crash between the two writes them
//! twice rather than never.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use postern_store::{Store, StoreError, TrackingEvent};

/// Events written to the store per transaction when replaying.
const REPLAY_CHUNK: usize = 1024;

pub struct Journal {
    path: PathBuf,
    /// The file holds events not yet in the store.
    pending: bool,
}

impl Journal {
    pub fn new(path: PathBuf) -> Journal {
        let pending = std::fs::metadata(&path).is_ok_and(|m| m.len() > 0);
        Journal { path, pending }
    }

    pub fn pending(&self) -> bool {
        self.pending
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Append `events`, durably.
    pub fn append(&mut self, events: &[TrackingEvent]) -> std::io::Result<()> {
        let mut text = String::new();
        for event in events {
            text.push_str(&serde_json::to_string(event).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&self.path)?;
        file.write_all(text.as_bytes())?;
        file.sync_data()?;
        self.pending = true;
        Ok(())
    }

    /// Write every journaled event to the store, oldest first, then remove
    /// the file. Returns how many were written.
    pub fn replay(&mut self, store: &dyn Store) -> Result<usize, StoreError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.pending = false;
                return Ok(0);
            }
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.path.display().to_string(),
                    source,
                })
            }
        };
        let mut events = Vec::new();
        for (number, line) in text.lines().enumerate() {
            match serde_json::from_str::<TrackingEvent>(line) {
                Ok(event) => events.push(event),
                // A line cut short by a crash while appending.
                Err(e) => tracing::warn!(
                    "{} line {}: unreadable tracking event skipped: {e}",
                    self.path.display(),
                    number + 1
                ),
            }
        }
        for chunk in events.chunks(REPLAY_CHUNK) {
            store.record_events(chunk)?;
        }
        std::fs::remove_file(&self.path).map_err(|source| StoreError::Io {
            path: self.path.display().to_string(),
            source,
        })?;
        self.pending = false;
        Ok(events.len())
    }
}
