//! Opening the SQLite file and migrating its schema.
//!
//! The file holds private keys: its directory is created 0700 and the file
//! 0600 (SQLite gives its `-wal` and `-shm` files the database file's mode).
//! Every connection uses WAL, so the CLI can write while the gateway reads,
//! and a busy timeout, so short write transactions of other processes are
//! waited for instead of failing. Migrations are numbered by
//! `PRAGMA user_version` and run in one `BEGIN IMMEDIATE` transaction, so
//! two processes opening a new file at once apply them exactly once.

use std::fs::{DirBuilder, OpenOptions};
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::StoreError;

/// How long a statement waits for another process's write lock.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `PRAGMA application_id` of a Postern store ("PSTR").
const APPLICATION_ID: i64 = 0x5053_5452;

/// Migrations, in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: settings, certificates, tracking events.
    "
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY NOT NULL,
        value INTEGER NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('generation', 1);

    CREATE TABLE settings (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        document   TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );

    CREATE TABLE certificates (
        name       TEXT PRIMARY KEY NOT NULL,
        chain_pem  TEXT NOT NULL,
        key_pem    TEXT,
        created_at INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX certificates_name_nocase ON certificates (name COLLATE NOCASE);

    CREATE TABLE events (
        id         INTEGER PRIMARY KEY,
        queue_id   TEXT NOT NULL,
        message_id TEXT,
        at         INTEGER NOT NULL,
        kind       TEXT NOT NULL,
        detail     TEXT NOT NULL
    );
    CREATE INDEX events_queue_id ON events (queue_id);
    CREATE INDEX events_message_id ON events (message_id);
    CREATE INDEX events_at ON events (at);
    ",
    // 2: admin UI / API credentials (hashes only).
    "
    CREATE TABLE admin_credentials (
        kind       TEXT NOT NULL CHECK (kind IN ('password', 'token')),
        name       TEXT NOT NULL,
        hash       TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (kind, name)
    );
    CREATE UNIQUE INDEX admin_credentials_hash ON admin_credentials (hash);
    ",
    // 3: the recording node of tracking events; the node registry.
    "
    ALTER TABLE events ADD COLUMN node TEXT;

    CREATE TABLE nodes (
        name               TEXT PRIMARY KEY NOT NULL,
        hostname           TEXT NOT NULL,
        version            TEXT NOT NULL,
        started_at         INTEGER NOT NULL,
        last_seen          INTEGER NOT NULL,
        applied_generation INTEGER NOT NULL,
        fingerprints       TEXT NOT NULL,
        queue_messages     INTEGER NOT NULL,
        queue_deferred     INTEGER NOT NULL
    );
    ",
    "
    -- mtasts: the MTA-STS policy cache, one row per recipient domain.
    CREATE TABLE mta_sts_policies (
        domain     TEXT PRIMARY KEY NOT NULL,
        id         TEXT NOT NULL,
        mode       TEXT NOT NULL,
        max_age    INTEGER NOT NULL,
        mx         TEXT NOT NULL,
        policy     TEXT NOT NULL,
        fetched_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    ",
    "-- requiretls: DKIM keys (`postern dkim`), named <selector>._domainkey.<domain>.
    CREATE TABLE dkim_keys (
        name            TEXT PRIMARY KEY NOT NULL,
        domain          TEXT NOT NULL,
        selector        TEXT NOT NULL,
        key_type        TEXT NOT NULL,
        private_key_pem TEXT NOT NULL,
        dns_record      TEXT NOT NULL,
        created_at      INTEGER NOT NULL
    );
    ",
    "
    -- sessions: admin sessions (id hashes only) and login attempts, shared by every node.
    CREATE TABLE admin_sessions (
        id_hash          TEXT PRIMARY KEY NOT NULL,
        password_version TEXT NOT NULL,
        created_at       INTEGER NOT NULL,
        last_seen        INTEGER NOT NULL
    );
    CREATE INDEX admin_sessions_last_seen ON admin_sessions (last_seen);

    CREATE TABLE login_attempts (
        id     INTEGER PRIMARY KEY,
        client TEXT NOT NULL,
        at     INTEGER NOT NULL
    );
    CREATE INDEX login_attempts_client ON login_attempts (client, at);
    CREATE INDEX login_attempts_at ON login_attempts (at);
    ",
    "
    -- queue: every node's published queue snapshot; retry/delete requests carried out by the owning node
    CREATE TABLE queue_snapshots (
        node         TEXT PRIMARY KEY NOT NULL,
        messages     INTEGER NOT NULL,
        deferred     INTEGER NOT NULL,
        entries      TEXT NOT NULL,
        published_at INTEGER NOT NULL
    );
    CREATE TABLE queue_requests (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        node         TEXT NOT NULL,
        queue_id     TEXT NOT NULL,
        action       TEXT NOT NULL CHECK (action IN ('retry', 'delete')),
        requested_by TEXT NOT NULL,
        requested_at INTEGER NOT NULL,
        done_at      INTEGER,
        ok           INTEGER,
        result       TEXT
    );
    CREATE INDEX queue_requests_waiting ON queue_requests (node, id) WHERE done_at IS NULL;
    ",
    "
    -- learned: evidence for learned TLS levels; would-be verdicts of monitor rules; alerts
    CREATE TABLE tls_observations (
        domain     TEXT NOT NULL,
        host       TEXT NOT NULL,
        level      TEXT NOT NULL CHECK (level IN ('none', 'tls', 'verified')),
        deliveries INTEGER NOT NULL,
        first_seen INTEGER NOT NULL,
        last_seen  INTEGER NOT NULL,
        PRIMARY KEY (domain, host, level)
    );
    CREATE TABLE monitor_verdicts (
        id          INTEGER PRIMARY KEY,
        source      TEXT NOT NULL,
        domain      TEXT NOT NULL,
        host        TEXT NOT NULL,
        at          INTEGER NOT NULL,
        requirement TEXT NOT NULL,
        would_fail  INTEGER NOT NULL,
        reason      TEXT NOT NULL
    );
    CREATE INDEX monitor_verdicts_at ON monitor_verdicts (at);
    CREATE INDEX monitor_verdicts_domain ON monitor_verdicts (domain, at);
    CREATE TABLE alerts (
        id      INTEGER PRIMARY KEY,
        kind    TEXT NOT NULL,
        subject TEXT NOT NULL,
        host    TEXT NOT NULL,
        detail  TEXT NOT NULL,
        at      INTEGER NOT NULL
    );
    CREATE INDEX alerts_at ON alerts (at);
    ",
    "
    -- tlsrpt: TLS-RPT reports: one claim per (domain, UTC day), one row per destination sent to
    CREATE TABLE tlsrpt_reports (
        domain     TEXT NOT NULL,
        day        TEXT NOT NULL,
        node       TEXT NOT NULL,
        report_id  TEXT NOT NULL,
        claimed_at INTEGER NOT NULL,
        successful INTEGER NOT NULL,
        failed     INTEGER NOT NULL,
        PRIMARY KEY (domain, day)
    );
    CREATE TABLE tlsrpt_deliveries (
        id           INTEGER PRIMARY KEY,
        domain       TEXT NOT NULL,
        day          TEXT NOT NULL,
        destination  TEXT NOT NULL,
        node         TEXT NOT NULL,
        status       TEXT NOT NULL CHECK (status IN ('queued', 'sent', 'retrying', 'failed')),
        detail       TEXT NOT NULL,
        queue_id     TEXT,
        attempts     INTEGER NOT NULL,
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL,
        next_attempt INTEGER,
        body         BLOB
    );
    CREATE INDEX tlsrpt_deliveries_day ON tlsrpt_deliveries (day, domain);
    CREATE INDEX tlsrpt_deliveries_due ON tlsrpt_deliveries (next_attempt) WHERE status = 'retrying';
    CREATE INDEX tlsrpt_deliveries_queue_id ON tlsrpt_deliveries (queue_id) WHERE queue_id IS NOT NULL;
    ",
    "
    -- adminui: alert acknowledgement and the raising node
    ALTER TABLE alerts ADD COLUMN node TEXT NOT NULL DEFAULT '';
    ALTER TABLE alerts ADD COLUMN acknowledged_at INTEGER;
    ALTER TABLE alerts ADD COLUMN acknowledged_by TEXT;
    CREATE INDEX alerts_unacknowledged ON alerts (id) WHERE acknowledged_at IS NULL;
    ",
    "
    -- alerts: the cluster-wide rate limit of alert destinations (webhook, each address)
    CREATE TABLE alert_claims (
        kind        TEXT NOT NULL,
        subject     TEXT NOT NULL,
        scope       TEXT NOT NULL,
        destination TEXT NOT NULL,
        claimed_at  INTEGER NOT NULL,
        PRIMARY KEY (kind, subject, scope, destination)
    );
    CREATE INDEX alert_claims_at ON alert_claims (claimed_at);
    ",
];

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How a connection commits.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Durability {
    /// `synchronous=FULL`: every commit is on disk when it returns
    /// (settings, certificates).
    Full,
    /// `synchronous=NORMAL`: consistent after a crash, but the last commits
    /// may be lost on power failure (tracking events, many per message).
    Normal,
}

/// Create the directory (0700) and the file (0600) when missing, and
/// tighten a file that others can read.
pub(crate) fn prepare_file(path: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() && !parent.exists() {
            let mut builder = DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(parent).map_err(|source| StoreError::Io {
                path: parent.display().to_string(),
                source,
            })?;
        }
    }
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io)?;
        }
    }
    Ok(())
}

/// Open one connection and configure it.
pub(crate) fn connect(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    // No SQLITE_OPEN_URI: the path is a file name, never a URI.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Switching a new file to WAL needs an exclusive lock; SQLite does not
    // always call the busy handler for it, so retry here.
    let mode: String =
        retry_busy(|| conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt(format!(
            "{}: cannot switch to WAL journal mode (got \"{mode}\")",
            path.display()
        )));
    }
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "trusted_schema", "OFF")?;
    Ok(conn)
}

/// Open an existing store without changing it (for `postern check`): no
/// file is created, nothing is migrated, and a schema other than this
/// build's is reported instead of upgraded.
pub(crate) fn connect_read_only(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let conn = if Path::new(&wal).exists() {
        // Someone has it open (or it was not closed cleanly): read through
        // its WAL like any reader.
        Connection::open_with_flags(path, flags)?
    } else {
        // Nobody has it open: a reader of a WAL database would create the
        // -wal and -shm files, so read the file as it is instead.
        Connection::open_with_flags(immutable_uri(path), flags | OpenFlags::SQLITE_OPEN_URI)?
    };
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "trusted_schema", "OFF")?;
    check_application_id(&conn)?;
    let version = user_version(&conn)?;
    if version != SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "{}: schema version {version}, this Postern's is {SCHEMA_VERSION}; \
             `postern run` upgrades it",
            path.display()
        )));
    }
    Ok(conn)
}

/// `file:` URI opening `path` read-only and immutable, the path
/// percent-encoded so `?`, `#` and `%` in it stay part of the name.
fn immutable_uri(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?mode=ro&immutable=1");
    uri
}

/// Bring the schema up to [`SCHEMA_VERSION`].
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    check_application_id(conn)?;
    if user_version(conn)? == SCHEMA_VERSION {
        return Ok(());
    }
    retry_busy(|| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read again under the write lock: another process may have
        // migrated meanwhile.
        check_application_id(&tx)?;
        let version = user_version(&tx)?;
        let start = usize::try_from(version).unwrap_or(0);
        for migration in MIGRATIONS.iter().skip(start) {
            tx.execute_batch(migration)?;
        }
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok::<(), StoreError>(())
    })
}

/// The file's schema version; refuses one newer than this build.
fn user_version(conn: &Connection) -> Result<i64, StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::UnsupportedSchema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(version)
}

/// Refuse a SQLite file that belongs to some other program.
fn check_application_id(conn: &Connection) -> Result<(), StoreError> {
    let id: i64 = conn.query_row("PRAGMA application_id", [], |row| row.get(0))?;
    if id != 0 && id != APPLICATION_ID {
        return Err(StoreError::Corrupt(format!(
            "not a Postern store (application_id {id:#x})"
        )));
    }
    Ok(())
}

/// Run `op` again while it fails with [`StoreError::Busy`], up to
/// [`BUSY_TIMEOUT`].
fn retry_busy<T, E>(mut op: impl FnMut() -> Result<T, E>) -> Result<T, StoreError>
where
    StoreError: From<E>,
{
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match op().map_err(StoreError::from) {
            Err(StoreError::Busy(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result,
        }
    }
}
