//! SQLite-only behaviour of the store, on real files: permissions, schema
//! versions, foreign files. Everything both backends must do is in
//! `conformance.rs`.

// A failed unwrap here is a failed test, which is what it should be.
#![allow(clippy::unwrap_used)]

use postern_store::{SqliteStore, Store, StoreError, TrackingEvent};
use serde_json::json;

fn event(queue_id: &str, message_id: Option<&str>, at: i64, kind: &str) -> TrackingEvent {
    TrackingEvent {
        queue_id: queue_id.to_string(),
        message_id: message_id.map(str::to_string),
        at,
        kind: kind.to_string(),
        detail: json!({ "at": at }),
    }
}

#[test]
fn file_and_directory_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").join("sub");
    let path = data.join("store.db");
    let store = SqliteStore::open(&path, "gw1").unwrap();
    store
        .record_event(&event("Q", None, 1, "received"))
        .unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&data.join("store.db-wal")), 0o600);
    drop(store);

    // A file left readable by others is tightened on open.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    SqliteStore::open(&path, "gw1").unwrap();
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn newer_schema_and_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    drop(SqliteStore::open(&path, "gw1").unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    assert!(matches!(
        SqliteStore::open(&path, "gw1"),
        Err(StoreError::UnsupportedSchema { found: 99, .. })
    ));

    let foreign = dir.path().join("other.db");
    {
        let conn = rusqlite::Connection::open(&foreign).unwrap();
        conn.pragma_update(None, "application_id", 1234).unwrap();
    }
    assert!(matches!(
        SqliteStore::open(&foreign, "gw1"),
        Err(StoreError::Corrupt(_))
    ));
}
