//! The PostgreSQL schema, versioned in `postern_schema` and migrated under
//! an advisory lock: nodes starting together on an empty database create
//! it exactly once, and one that finds a newer schema reads but never
//! writes (it says which version it would need).

use tokio_postgres::Client;

use super::wait;
use crate::StoreError;

/// Advisory lock key held while migrating ("PSTM").
const MIGRATE_LOCK: i64 = 0x5053_544d;

/// Migrations, in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: everything the SQLite store has at its version 3.
    "
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value BIGINT NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('generation', 1);

    CREATE TABLE settings (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        document   TEXT NOT NULL,
        updated_at BIGINT NOT NULL
    );

    CREATE TABLE certificates (
        name       TEXT PRIMARY KEY,
        chain_pem  TEXT NOT NULL,
        key_pem    TEXT,
        created_at BIGINT NOT NULL
    );
    -- ASCII case only, as SQLite's NOCASE.
    CREATE UNIQUE INDEX certificates_name_nocase ON certificates
        (translate(name, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'));

    CREATE TABLE events (
        id         BIGSERIAL PRIMARY KEY,
        queue_id   TEXT NOT NULL,
        message_id TEXT,
        at         BIGINT NOT NULL,
        kind       TEXT NOT NULL,
        detail     TEXT NOT NULL,
        node       TEXT
    );
    CREATE INDEX events_queue_id ON events (queue_id);
    CREATE INDEX events_message_id ON events (message_id);
    CREATE INDEX events_at ON events (at);

    CREATE TABLE admin_credentials (
        kind       TEXT NOT NULL CHECK (kind IN ('password', 'token')),
        name       TEXT NOT NULL,
        hash       TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (kind, name)
    );
    CREATE UNIQUE INDEX admin_credentials_hash ON admin_credentials (hash);

    CREATE TABLE nodes (
        name               TEXT PRIMARY KEY,
        hostname           TEXT NOT NULL,
        version            TEXT NOT NULL,
        started_at         BIGINT NOT NULL,
        last_seen          BIGINT NOT NULL,
        applied_generation BIGINT NOT NULL,
        fingerprints       TEXT NOT NULL,
        queue_messages     BIGINT NOT NULL,
        queue_deferred     BIGINT NOT NULL
    );
    ",
    "
    -- mtasts: the MTA-STS policy cache, one row per recipient domain.
    CREATE TABLE mta_sts_policies (
        domain     TEXT PRIMARY KEY,
        id         TEXT NOT NULL,
        mode       TEXT NOT NULL,
        max_age    BIGINT NOT NULL,
        mx         TEXT NOT NULL,
        policy     TEXT NOT NULL,
        fetched_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    ",
    "-- requiretls: DKIM keys (`postern dkim`), named <selector>._domainkey.<domain>.
    CREATE TABLE dkim_keys (
        name            TEXT PRIMARY KEY,
        domain          TEXT NOT NULL,
        selector        TEXT NOT NULL,
        key_type        TEXT NOT NULL,
        private_key_pem TEXT NOT NULL,
        dns_record      TEXT NOT NULL,
        created_at      BIGINT NOT NULL
    );
    ",
    "
    -- sessions: admin sessions (id hashes only) and login attempts, shared by every node.
    CREATE TABLE admin_sessions (
        id_hash          TEXT PRIMARY KEY,
        password_version TEXT NOT NULL,
        created_at       BIGINT NOT NULL,
        last_seen        BIGINT NOT NULL
    );
    CREATE INDEX admin_sessions_last_seen ON admin_sessions (last_seen);

    CREATE TABLE login_attempts (
        id     BIGSERIAL PRIMARY KEY,
        client TEXT NOT NULL,
        at     BIGINT NOT NULL
    );
    CREATE INDEX login_attempts_client ON login_attempts (client, at);
    CREATE INDEX login_attempts_at ON login_attempts (at);
    ",
    "
    -- queue: every node's published queue snapshot; retry/delete requests carried out by the owning node
    CREATE TABLE queue_snapshots (
        node         TEXT PRIMARY KEY,
        messages     BIGINT NOT NULL,
        deferred     BIGINT NOT NULL,
        entries      TEXT NOT NULL,
        published_at BIGINT NOT NULL
    );
    CREATE TABLE queue_requests (
        id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        node         TEXT NOT NULL,
        queue_id     TEXT NOT NULL,
        action       TEXT NOT NULL CHECK (action IN ('retry', 'delete')),
        requested_by TEXT NOT NULL,
        requested_at BIGINT NOT NULL,
        done_at      BIGINT,
        ok           BOOLEAN,
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
        deliveries BIGINT NOT NULL,
        first_seen BIGINT NOT NULL,
        last_seen  BIGINT NOT NULL,
        PRIMARY KEY (domain, host, level)
    );
    CREATE TABLE monitor_verdicts (
        id          BIGSERIAL PRIMARY KEY,
        source      TEXT NOT NULL,
        domain      TEXT NOT NULL,
        host        TEXT NOT NULL,
        at          BIGINT NOT NULL,
        requirement TEXT NOT NULL,
        would_fail  BOOLEAN NOT NULL,
        reason      TEXT NOT NULL
    );
    CREATE INDEX monitor_verdicts_at ON monitor_verdicts (at);
    CREATE INDEX monitor_verdicts_domain ON monitor_verdicts (domain, at);
    CREATE TABLE alerts (
        id      BIGSERIAL PRIMARY KEY,
        kind    TEXT NOT NULL,
        subject TEXT NOT NULL,
        host    TEXT NOT NULL,
        detail  TEXT NOT NULL,
        at      BIGINT NOT NULL
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
        claimed_at BIGINT NOT NULL,
        successful BIGINT NOT NULL,
        failed     BIGINT NOT NULL,
        PRIMARY KEY (domain, day)
    );
    CREATE TABLE tlsrpt_deliveries (
        id           BIGSERIAL PRIMARY KEY,
        domain       TEXT NOT NULL,
        day          TEXT NOT NULL,
        destination  TEXT NOT NULL,
        node         TEXT NOT NULL,
        status       TEXT NOT NULL CHECK (status IN ('queued', 'sent', 'retrying', 'failed')),
        detail       TEXT NOT NULL,
        queue_id     TEXT,
        attempts     BIGINT NOT NULL,
        created_at   BIGINT NOT NULL,
        updated_at   BIGINT NOT NULL,
        next_attempt BIGINT,
        body         BYTEA
    );
    CREATE INDEX tlsrpt_deliveries_day ON tlsrpt_deliveries (day, domain);
    CREATE INDEX tlsrpt_deliveries_due ON tlsrpt_deliveries (next_attempt) WHERE status = 'retrying';
    CREATE INDEX tlsrpt_deliveries_queue_id ON tlsrpt_deliveries (queue_id) WHERE queue_id IS NOT NULL;
    ",
    "
    -- adminui: alert acknowledgement and the raising node
    ALTER TABLE alerts ADD COLUMN node TEXT NOT NULL DEFAULT '';
    ALTER TABLE alerts ADD COLUMN acknowledged_at BIGINT;
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
        claimed_at  BIGINT NOT NULL,
        PRIMARY KEY (kind, subject, scope, destination)
    );
    CREATE INDEX alert_claims_at ON alert_claims (claimed_at);
    ",
];

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Bring the schema up to [`SCHEMA_VERSION`]. Returns the version found
/// when it is newer than this build (the store is then read-only).
pub(crate) fn migrate(client: &Client) -> Result<Option<i64>, StoreError> {
    wait(client.batch_execute(&format!(
        "BEGIN; SELECT pg_advisory_xact_lock({MIGRATE_LOCK});
         CREATE TABLE IF NOT EXISTS postern_schema (
             only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
             version  BIGINT NOT NULL
         );"
    )))?;
    let result = (|| {
        let row = wait(client.query_opt("SELECT version FROM postern_schema", &[]))?;
        let version: i64 = row
            .map(|r| super::row::get(&r, 0))
            .transpose()?
            .unwrap_or(0);
        if version > SCHEMA_VERSION {
            return Ok(Some(version));
        }
        let start = usize::try_from(version).unwrap_or(0);
        for migration in MIGRATIONS.iter().skip(start) {
            wait(client.batch_execute(migration))?;
        }
        wait(client.execute(
            "INSERT INTO postern_schema (only_row, version) VALUES (TRUE, $1)
             ON CONFLICT (only_row) DO UPDATE SET version = excluded.version",
            &[&SCHEMA_VERSION],
        ))?;
        Ok(None)
    })();
    match result {
        Ok(newer) => {
            wait(client.batch_execute("COMMIT"))?;
            if let Some(found) = newer {
                tracing::error!(
                    "the store has schema version {found}; this Postern knows up to \
                     {SCHEMA_VERSION}: it will read but not write until it is upgraded"
                );
            }
            Ok(newer)
        }
        Err(error) => {
            let _ = wait(client.batch_execute("ROLLBACK"));
            Err(error)
        }
    }
}
