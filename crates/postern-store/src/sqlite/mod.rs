//! [`SqliteStore`]: the embedded store, one SQLite file.
//!
//! Two connections: one for settings and certificates with
//! `synchronous=FULL` (a saved setting survives a power cut), one for
//! tracking events with `synchronous=NORMAL` (several per message; the
//! spool, not this table, is what must never lose mail). Each sits behind
//! its own mutex, so recording events does not hold up the gateway's
//! generation poll. A write transaction is `BEGIN IMMEDIATE`: SQLite's one
//! writer lock is the installation-wide write lock.

mod alert_claims;
mod alert_review;
mod events;
mod learned;
mod meta;
mod mta_sts;
mod nodes;
mod queue;
pub(crate) mod schema;
mod tlsrpt;
mod tx;

pub(crate) use tx::ROW_COUNTED;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use crate::backend::{Backend, TxBody};

use crate::{
    EventQuery, MtaStsRecord, NodeStatus, QueueAction, QueueRequest, QueueSnapshot, StoreError,
    TrackingEvent,
};
use schema::{Durability, BUSY_TIMEOUT};
use tx::SqliteTx;

/// The embedded store.
pub struct SqliteStore {
    path: PathBuf,
    /// Recorded in tracking events.
    node_name: String,
    /// Settings, certificates, meta.
    main: Mutex<Connection>,
    /// Tracking events.
    events: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Open the store at `path`, creating the directory (0700), the file
    /// (0600) and the schema when missing. Tracking events it records
    /// carry `node_name`.
    pub fn open(path: &Path, node_name: &str) -> Result<SqliteStore, StoreError> {
        schema::prepare_file(path)?;
        let mut main = schema::connect(path, Durability::Full)?;
        schema::migrate(&mut main)?;
        let events = schema::connect(path, Durability::Normal)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            node_name: node_name.to_string(),
            main: Mutex::new(main),
            events: Mutex::new(events),
        })
    }

    /// Open an existing store read-only: nothing is created, migrated or
    /// written (`postern check`). Writes through it fail.
    pub fn open_read_only(path: &Path, node_name: &str) -> Result<SqliteStore, StoreError> {
        Ok(SqliteStore {
            path: path.to_path_buf(),
            node_name: node_name.to_string(),
            main: Mutex::new(schema::connect_read_only(path)?),
            events: Mutex::new(schema::connect_read_only(path)?),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn main(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held rolled back its transaction when
        // the `Transaction` dropped; the connection itself is still fine.
        self.main
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn events(&self) -> MutexGuard<'_, Connection> {
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn write_on<T>(
    conn: &mut Connection,
    op: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let value = op(&tx)?;
    tx.commit()?;
    Ok(value)
}

impl Backend for SqliteStore {
    fn read(&self, body: TxBody<'_>) -> Result<(), StoreError> {
        let conn = self.main();
        // Each read is one statement or a few unrelated ones; WAL gives
        // each statement a consistent snapshot.
        body(&mut SqliteTx(&conn))
    }

    fn write(&self, wait: Duration, body: TxBody<'_>) -> Result<(), StoreError> {
        let mut conn = self.main();
        if wait != BUSY_TIMEOUT {
            conn.busy_timeout(wait)?;
        }
        let result = write_on(&mut conn, |tx| body(&mut SqliteTx(tx)));
        if wait != BUSY_TIMEOUT {
            conn.busy_timeout(BUSY_TIMEOUT)?;
        }
        result
    }

    fn generation(&self) -> Result<i64, StoreError> {
        meta::generation(&self.main())
    }

    fn insert_events(&self, batch: &[TrackingEvent]) -> Result<(), StoreError> {
        let mut conn = self.events();
        write_on(&mut conn, |tx| {
            batch
                .iter()
                .try_for_each(|event| events::insert(tx, &self.node_name, event))
        })
    }

    fn events_for(
        &self,
        queue_id: &str,
        message_ids: [&str; 2],
    ) -> Result<Vec<TrackingEvent>, StoreError> {
        events::for_message(&self.events(), queue_id, message_ids)
    }

    fn recent_events(&self, limit: usize) -> Result<Vec<TrackingEvent>, StoreError> {
        events::recent(&self.events(), limit)
    }

    fn search_events(&self, query: &EventQuery) -> Result<Vec<TrackingEvent>, StoreError> {
        events::search(&self.events(), query)
    }

    fn prune_events(&self, before: i64) -> Result<usize, StoreError> {
        events::prune(&self.events(), before)
    }

    fn put_node(&self, node: &NodeStatus) -> Result<(), StoreError> {
        // On the events connection: the registry is refreshed often and
        // need not survive a power cut.
        nodes::put(&self.events(), node)
    }

    fn nodes(&self) -> Result<Vec<NodeStatus>, StoreError> {
        nodes::list(&self.events())
    }

    // On the events connection too: a cache, refetched if a power cut
    // loses the last write.
    fn put_mta_sts(&self, record: &MtaStsRecord) -> Result<(), StoreError> {
        mta_sts::put(&self.events(), record)
    }

    fn mta_sts(&self, domain: &str) -> Result<Option<MtaStsRecord>, StoreError> {
        mta_sts::get(&self.events(), domain)
    }

    fn mta_sts_list(&self) -> Result<Vec<MtaStsRecord>, StoreError> {
        mta_sts::list(&self.events())
    }

    fn put_queue_snapshot(&self, snapshot: &QueueSnapshot) -> Result<(), StoreError> {
        queue::put_snapshot(&self.events(), snapshot)
    }

    fn queue_snapshots(&self) -> Result<Vec<QueueSnapshot>, StoreError> {
        queue::snapshots(&self.events())
    }

    fn insert_queue_request(
        &self,
        node: &str,
        queue_id: &str,
        action: QueueAction,
    ) -> Result<QueueRequest, StoreError> {
        queue::insert_request(&self.events(), node, queue_id, action, &self.node_name)
    }

    fn waiting_queue_requests(&self, node: &str) -> Result<Vec<QueueRequest>, StoreError> {
        queue::waiting_requests(&self.events(), node)
    }

    fn queue_request(&self, id: i64) -> Result<Option<QueueRequest>, StoreError> {
        queue::request(&self.events(), id)
    }

    fn finish_queue_request(
        &self,
        id: i64,
        outcome: &Result<String, String>,
    ) -> Result<(), StoreError> {
        queue::finish_request(&self.events(), id, outcome)
    }

    fn learned(&self) -> &dyn crate::LearnedStore {
        self
    }

    fn alerts(&self) -> &dyn crate::AlertStore {
        self
    }

    fn tlsrpt(&self) -> &dyn crate::TlsRptStore {
        self
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
