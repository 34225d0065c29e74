//! [`SqliteStore`]: the embedded store, one SQLite file.
//!
//! Two connections: one for settings and certificates with
//! `synchronous=FULL` (a saved setting survives a power cut), one for
//! tracking events with `synchronous=NORMAL` (several per message; the
//! spool, not this table, is what must never lose mail). Each sits behind
//! its own mutex, so recording events does not hold up the gateway's
//! generation poll.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use postern_config::Settings;
use rusqlite::{Connection, TransactionBehavior};

use crate::schema::{self, Durability, BUSY_TIMEOUT};
use crate::{
    admin, certificates, events, meta, settings, ApiToken, CertificateRecord, EventQuery, Store,
    StoreError, TrackingEvent,
};

/// How long [`Store::ensure_default_certificate`] waits for another process
/// that is generating the key (RSA-4096 can take several seconds).
const DEFAULT_CERT_TIMEOUT: Duration = Duration::from_secs(120);

/// The embedded store.
pub struct SqliteStore {
    path: PathBuf,
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
    /// (0600) and the schema when missing.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        schema::prepare_file(path)?;
        let mut main = schema::connect(path, Durability::Full)?;
        schema::migrate(&mut main)?;
        let events = schema::connect(path, Durability::Normal)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            main: Mutex::new(main),
            events: Mutex::new(events),
        })
    }

    /// Open an existing store read-only: nothing is created, migrated or
    /// written (`postern check`). Writes through it fail.
    pub fn open_read_only(path: &Path) -> Result<SqliteStore, StoreError> {
        Ok(SqliteStore {
            path: path.to_path_buf(),
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

    /// Run `op` in a `BEGIN IMMEDIATE` transaction on the main connection;
    /// commit when it returns `Ok`, roll back otherwise.
    fn write<T>(
        &self,
        op: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.main();
        write_on(&mut conn, op)
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

/// Validate `new` against the table and save it; inside a write transaction.
fn check_and_save(conn: &Connection, new: &Settings) -> Result<(), StoreError> {
    settings::check(new, |name| certificates::get(conn, name))?;
    settings::save(conn, new)?;
    meta::bump_generation(conn)
}

fn ensure_default(
    conn: &Connection,
    name: &str,
    make: &mut dyn FnMut() -> Result<CertificateRecord, String>,
) -> Result<bool, StoreError> {
    let flag = meta::generated_flag(name);
    if meta::flag(conn, &flag)?.is_some() {
        return Ok(false);
    }
    if certificates::get(conn, name)?.is_some() {
        // Imported under that name before first use: keep it.
        meta::set_flag(conn, &flag, crate::now())?;
        return Ok(false);
    }
    let mut record = make().map_err(StoreError::DefaultCertificate)?;
    record.name = name.to_string();
    if record.key_pem.is_none() {
        return Err(StoreError::DefaultCertificate(
            "the generated certificate has no private key".to_string(),
        ));
    }
    certificates::validate_record(&record)?;
    certificates::insert(conn, &record)?;
    meta::set_flag(conn, &flag, crate::now())?;
    meta::bump_generation(conn)?;
    Ok(true)
}

impl Store for SqliteStore {
    fn settings(&self) -> Result<Settings, StoreError> {
        settings::load(&self.main())
    }

    fn put_settings(&self, new: &Settings) -> Result<(), StoreError> {
        self.write(|conn| check_and_save(conn, new))
    }

    fn update_settings(
        &self,
        change: &mut dyn FnMut(&Settings) -> Result<Settings, StoreError>,
    ) -> Result<Settings, StoreError> {
        self.write(|conn| {
            let new = change(&settings::load(conn)?)?;
            check_and_save(conn, &new)?;
            Ok(new)
        })
    }

    fn generation(&self) -> Result<i64, StoreError> {
        meta::generation(&self.main())
    }

    fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        certificates::list(&self.main())
    }

    fn certificate(&self, name: &str) -> Result<Option<CertificateRecord>, StoreError> {
        certificates::get(&self.main(), name)
    }

    fn add_certificate(&self, record: &CertificateRecord) -> Result<(), StoreError> {
        certificates::validate_record(record)?;
        self.write(|conn| {
            certificates::insert(conn, record)?;
            meta::bump_generation(conn)
        })
    }

    fn delete_certificate(&self, name: &str) -> Result<(), StoreError> {
        self.write(|conn| {
            let current = settings::load(conn)?;
            if let Some(key) = settings::key_using(&current, name) {
                return Err(StoreError::InUse {
                    name: name.to_string(),
                    key: key.to_string(),
                });
            }
            if !certificates::delete(conn, name)? {
                return Err(StoreError::NotFound(name.to_string()));
            }
            meta::bump_generation(conn)
        })
    }

    fn ensure_default_certificate(
        &self,
        name: &str,
        make: &mut dyn FnMut() -> Result<CertificateRecord, String>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.main();
        // Fast path without the write lock: every start after the first.
        if meta::flag(&conn, &meta::generated_flag(name))?.is_some() {
            return Ok(false);
        }
        // Another process may hold the write lock while it generates.
        conn.busy_timeout(DEFAULT_CERT_TIMEOUT)?;
        let result = write_on(&mut conn, |tx| ensure_default(tx, name, make));
        conn.busy_timeout(BUSY_TIMEOUT)?;
        result
    }

    fn record_event(&self, event: &TrackingEvent) -> Result<(), StoreError> {
        events::insert(&self.events(), event)
    }

    fn record_events(&self, batch: &[TrackingEvent]) -> Result<(), StoreError> {
        let mut conn = self.events();
        write_on(&mut conn, |tx| {
            batch.iter().try_for_each(|event| events::insert(tx, event))
        })
    }

    fn events_for(&self, id_or_message_id: &str) -> Result<Vec<TrackingEvent>, StoreError> {
        events::for_message(&self.events(), id_or_message_id)
    }

    fn recent_events(&self, limit: usize) -> Result<Vec<TrackingEvent>, StoreError> {
        events::recent(&self.events(), limit)
    }

    fn prune_events(&self, before: i64) -> Result<usize, StoreError> {
        events::prune(&self.events(), before)
    }

    fn search_events(&self, query: &EventQuery) -> Result<Vec<TrackingEvent>, StoreError> {
        events::search(&self.events(), query)
    }

    fn admin_password_hash(&self) -> Result<Option<String>, StoreError> {
        admin::password_hash(&self.main())
    }

    fn set_admin_password_hash(&self, hash: &str) -> Result<(), StoreError> {
        self.write(|conn| admin::set_password_hash(conn, hash))
    }

    fn init_admin_password_hash(&self, hash: &str) -> Result<bool, StoreError> {
        self.write(|conn| {
            if admin::password_hash(conn)?.is_some() {
                return Ok(false);
            }
            admin::set_password_hash(conn, hash)?;
            Ok(true)
        })
    }

    fn add_api_token(&self, name: &str, token_hash: &str) -> Result<(), StoreError> {
        self.write(|conn| admin::add_token(conn, name, token_hash))
    }

    fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>, StoreError> {
        admin::token_by_hash(&self.main(), token_hash)
    }

    fn api_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        admin::tokens(&self.main())
    }

    fn delete_api_token(&self, name: &str) -> Result<(), StoreError> {
        self.write(|conn| admin::delete_token(conn, name))
    }
}
