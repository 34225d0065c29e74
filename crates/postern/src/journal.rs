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

/// The journal file of a node's data directory.
pub fn path_in(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("tracking.journal")
}

/// The journaled events of one message, oldest first, found as
/// [`Store::events_for`] finds them (queue id, or Message-ID with or
/// without angle brackets, and the other events of its queue ids): what
/// `postern trace` shows while the store is unreachable. No file: none.
pub fn events_for(path: &std::path::Path, id: &str) -> std::io::Result<Vec<TrackingEvent>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let bare = id.trim().trim_start_matches('<').trim_end_matches('>');
    let forms = [bare.to_string(), format!("<{bare}>")];
    // Unreadable lines (cut short by a crash) are skipped, as replay does.
    let events: Vec<TrackingEvent> = text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let queue_ids: std::collections::HashSet<&str> = events
        .iter()
        .filter(|e| {
            e.queue_id == id.trim()
                || e.message_id
                    .as_deref()
                    .is_some_and(|m| forms.iter().any(|f| f == m))
        })
        .map(|e| e.queue_id.as_str())
        .collect();
    let mut found: Vec<TrackingEvent> = events
        .iter()
        .filter(|e| queue_ids.contains(e.queue_id.as_str()))
        .cloned()
        .collect();
    found.sort_by_key(|e| e.at);
    Ok(found)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(queue_id: &str) -> TrackingEvent {
        let received = postern_store::event::Received {
            sender: "a@b.test".into(),
            recipients: vec!["c@d.test".into()],
            ..Default::default()
        };
        TrackingEvent::new(queue_id, None, 1, &postern_store::Event::Received(received))
    }

    #[test]
    fn trace_finds_journaled_events_by_queue_id_and_message_id() {
        let dir = std::env::temp_dir().join(format!("postern-journal-find-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = path_in(&dir);
        assert!(
            events_for(&path, "Q1").unwrap().is_empty(),
            "no file: no events"
        );
        let mut received = event("Q1");
        received.message_id = Some("<m1@test>".to_string());
        let mut delivered = event("Q1");
        delivered.kind = "delivered".to_string();
        delivered.at = 2;
        let mut journal = Journal::new(path.clone());
        journal.append(&[received, event("Q2"), delivered]).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"cut short")
            .unwrap();
        for id in ["Q1", "m1@test", "<m1@test>"] {
            let kinds: Vec<String> = events_for(&path, id)
                .unwrap()
                .into_iter()
                .map(|e| format!("{} {}", e.queue_id, e.kind))
                .collect();
            assert_eq!(kinds, ["Q1 received", "Q1 delivered"], "{id}");
        }
        assert!(events_for(&path, "Q3").unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn journaled_events_reach_the_store_in_order_after_a_restart() {
        let dir = std::env::temp_dir().join(format!("postern-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tracking.journal");
        let _ = std::fs::remove_file(&path);
        let mut journal = Journal::new(path.clone());
        assert!(!journal.pending());
        journal.append(&[event("Q1"), event("Q2")]).unwrap();
        journal.append(&[event("Q3")]).unwrap();
        // A line cut short by a crash while appending.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"queue_id\":\"Q4\",\"mess").unwrap();
        drop(journal);

        // Another process (a restart) finds it pending.
        let mut journal = Journal::new(path.clone());
        assert!(journal.pending());
        let location = postern_store::StoreLocation::Sqlite(dir.join("store.db"));
        let store = postern_store::open(&location, "gw1").unwrap();
        assert_eq!(journal.replay(store.as_ref()).unwrap(), 3);
        assert!(!journal.pending());
        assert!(!path.exists());
        let ids: Vec<String> = store
            .recent_events(10)
            .unwrap()
            .into_iter()
            .rev()
            .map(|e| e.queue_id)
            .collect();
        assert_eq!(ids, ["Q1", "Q2", "Q3"]);
        // The typed event comes back as it was journaled.
        let back = store.recent_events(1).unwrap().remove(0);
        let Some(postern_store::Event::Received(r)) = back.parse() else {
            panic!("journaled event not parsed: {back:?}");
        };
        assert_eq!(r.recipients, ["c@d.test"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
