//! [`Transaction`] over one SQLite connection (inside a transaction, or a
//! plain connection for single reads).

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::backend::{CredentialKind, Transaction};
use crate::sqlite::{events, meta};
use crate::{AdminSession, ApiToken, CertificateRecord, DkimKeyRecord, StoreError, TrackingEvent};

pub(crate) struct SqliteTx<'a>(pub(crate) &'a Connection);

const CERT_COLUMNS: &str = "name, chain_pem, key_pem, created_at";

fn certificate_from_row(row: &Row<'_>) -> rusqlite::Result<CertificateRecord> {
    Ok(CertificateRecord {
        name: row.get(0)?,
        chain_pem: row.get(1)?,
        key_pem: row.get(2)?,
        created_at: row.get(3)?,
    })
}

const DKIM_COLUMNS: &str =
    "name, domain, selector, key_type, private_key_pem, dns_record, created_at";

fn dkim_from_row(row: &Row<'_>) -> rusqlite::Result<DkimKeyRecord> {
    Ok(DkimKeyRecord {
        name: row.get(0)?,
        domain: row.get(1)?,
        selector: row.get(2)?,
        key_type: row.get(3)?,
        private_key_pem: row.get(4)?,
        dns_record: row.get(5)?,
        created_at: row.get(6)?,
    })
}

const SESSION_COLUMNS: &str = "id_hash, password_version, created_at, last_seen";

fn session_from_row(row: &Row<'_>) -> rusqlite::Result<AdminSession> {
    Ok(AdminSession {
        id_hash: row.get(0)?,
        password_version: row.get(1)?,
        created_at: row.get(2)?,
        last_seen: row.get(3)?,
    })
}

fn token_from_row(row: &Row<'_>) -> rusqlite::Result<ApiToken> {
    Ok(ApiToken {
        name: row.get(0)?,
        created_at: row.get(1)?,
    })
}

impl Transaction for SqliteTx<'_> {
    fn settings_document(&mut self) -> Result<Option<String>, StoreError> {
        Ok(self
            .0
            .query_row("SELECT document FROM settings WHERE id = 1", [], |row| {
                row.get(0)
            })
            .optional()?)
    }

    fn save_settings_document(&mut self, document: &str, at: i64) -> Result<(), StoreError> {
        self.0.execute(
            "INSERT INTO settings (id, document, updated_at) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET document = excluded.document,
                                            updated_at = excluded.updated_at",
            params![document, at],
        )?;
        Ok(())
    }

    fn certificates(&mut self) -> Result<Vec<CertificateRecord>, StoreError> {
        let mut stmt = self.0.prepare_cached(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates ORDER BY name"
        ))?;
        let rows = stmt.query_map([], certificate_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn certificate(&mut self, name: &str) -> Result<Option<CertificateRecord>, StoreError> {
        let mut stmt = self.0.prepare_cached(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates WHERE name = ?1"
        ))?;
        Ok(stmt.query_row([name], certificate_from_row).optional()?)
    }

    fn certificate_name_nocase(&mut self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .0
            .query_row(
                "SELECT name FROM certificates WHERE name = ?1 COLLATE NOCASE",
                [name],
                |row| row.get(0),
            )
            .optional()?)
    }

    fn insert_certificate(&mut self, record: &CertificateRecord) -> Result<(), StoreError> {
        self.0.execute(
            &format!("INSERT INTO certificates ({CERT_COLUMNS}) VALUES (?1, ?2, ?3, ?4)"),
            params![
                record.name,
                record.chain_pem,
                record.key_pem,
                record.created_at
            ],
        )?;
        Ok(())
    }

    fn delete_certificate(&mut self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .0
            .execute("DELETE FROM certificates WHERE name = ?1", [name])?
            == 1)
    }

    fn dkim_keys(&mut self) -> Result<Vec<DkimKeyRecord>, StoreError> {
        let mut stmt = self.0.prepare_cached(&format!(
            "SELECT {DKIM_COLUMNS} FROM dkim_keys ORDER BY name"
        ))?;
        let rows = stmt.query_map([], dkim_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn dkim_key(&mut self, name: &str) -> Result<Option<DkimKeyRecord>, StoreError> {
        let mut stmt = self.0.prepare_cached(&format!(
            "SELECT {DKIM_COLUMNS} FROM dkim_keys WHERE name = ?1"
        ))?;
        Ok(stmt.query_row([name], dkim_from_row).optional()?)
    }

    fn insert_dkim_key(&mut self, r: &DkimKeyRecord) -> Result<(), StoreError> {
        self.0.execute(
            &format!("INSERT INTO dkim_keys ({DKIM_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
            params![
                r.name,
                r.domain,
                r.selector,
                r.key_type,
                r.private_key_pem,
                r.dns_record,
                r.created_at
            ],
        )?;
        Ok(())
    }

    fn delete_dkim_key(&mut self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .0
            .execute("DELETE FROM dkim_keys WHERE name = ?1", [name])?
            == 1)
    }

    fn generation(&mut self) -> Result<i64, StoreError> {
        meta::generation(self.0)
    }

    fn bump_generation(&mut self) -> Result<(), StoreError> {
        meta::bump_generation(self.0)
    }

    fn flag(&mut self, key: &str) -> Result<Option<i64>, StoreError> {
        meta::flag(self.0, key)
    }

    fn set_flag(&mut self, key: &str, value: i64) -> Result<(), StoreError> {
        meta::set_flag(self.0, key, value)
    }

    fn credential(
        &mut self,
        kind: CredentialKind,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .0
            .query_row(
                "SELECT hash FROM admin_credentials WHERE kind = ?1 AND name = ?2",
                [kind.as_str(), name],
                |row| row.get(0),
            )
            .optional()?)
    }

    fn put_credential(
        &mut self,
        kind: CredentialKind,
        name: &str,
        hash: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        self.0.execute(
            "INSERT INTO admin_credentials (kind, name, hash, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (kind, name) DO UPDATE SET hash = excluded.hash,
                                                    created_at = excluded.created_at",
            params![kind.as_str(), name, hash, at],
        )?;
        Ok(())
    }

    fn delete_credential(&mut self, kind: CredentialKind, name: &str) -> Result<bool, StoreError> {
        Ok(self.0.execute(
            "DELETE FROM admin_credentials WHERE kind = ?1 AND name = ?2",
            [kind.as_str(), name],
        )? > 0)
    }

    fn token_by_hash(&mut self, hash: &str) -> Result<Option<ApiToken>, StoreError> {
        let mut stmt = self.0.prepare_cached(
            "SELECT name, created_at FROM admin_credentials WHERE kind = ?1 AND hash = ?2",
        )?;
        Ok(stmt
            .query_row([CredentialKind::Token.as_str(), hash], token_from_row)
            .optional()?)
    }

    fn tokens(&mut self) -> Result<Vec<ApiToken>, StoreError> {
        let mut stmt = self.0.prepare_cached(
            "SELECT name, created_at FROM admin_credentials WHERE kind = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map([CredentialKind::Token.as_str()], token_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn bump_credentials(&mut self) -> Result<(), StoreError> {
        meta::bump_counter(self.0, crate::sessions::CREDENTIALS_VERSION)
    }

    fn session(&mut self, id_hash: &str) -> Result<Option<AdminSession>, StoreError> {
        let mut stmt = self.0.prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM admin_sessions WHERE id_hash = ?1"
        ))?;
        Ok(stmt.query_row([id_hash], session_from_row).optional()?)
    }

    fn sessions(&mut self) -> Result<Vec<AdminSession>, StoreError> {
        let mut stmt = self.0.prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM admin_sessions ORDER BY id_hash"
        ))?;
        let rows = stmt.query_map([], session_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn insert_session(&mut self, session: &AdminSession) -> Result<(), StoreError> {
        self.0.execute(
            &format!("INSERT INTO admin_sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4)"),
            params![
                session.id_hash,
                session.password_version,
                session.created_at,
                session.last_seen
            ],
        )?;
        Ok(())
    }

    fn touch_session(&mut self, id_hash: &str, at: i64) -> Result<bool, StoreError> {
        Ok(self.0.execute(
            "UPDATE admin_sessions SET last_seen = max(last_seen, ?2) WHERE id_hash = ?1",
            params![id_hash, at],
        )? == 1)
    }

    fn delete_session(&mut self, id_hash: &str) -> Result<bool, StoreError> {
        Ok(self
            .0
            .execute("DELETE FROM admin_sessions WHERE id_hash = ?1", [id_hash])?
            == 1)
    }

    fn delete_dead_sessions(
        &mut self,
        seen_before: i64,
        created_before: i64,
    ) -> Result<usize, StoreError> {
        Ok(self.0.execute(
            "DELETE FROM admin_sessions WHERE last_seen <= ?1 OR created_at <= ?2",
            params![seen_before, created_before],
        )?)
    }

    fn keep_recent_sessions(&mut self, keep: usize) -> Result<usize, StoreError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        Ok(self.0.execute(
            "DELETE FROM admin_sessions WHERE id_hash NOT IN
                 (SELECT id_hash FROM admin_sessions
                  ORDER BY last_seen DESC, created_at DESC, id_hash LIMIT ?1)",
            [keep],
        )?)
    }

    fn delete_sessions_except(&mut self, password_version: &str) -> Result<usize, StoreError> {
        Ok(self.0.execute(
            "DELETE FROM admin_sessions WHERE password_version <> ?1",
            [password_version],
        )?)
    }

    fn login_attempts(&mut self, client: Option<&str>, since: i64) -> Result<Vec<i64>, StoreError> {
        let mut stmt = self.0.prepare_cached(
            "SELECT at FROM login_attempts WHERE at > ?1 AND (?2 IS NULL OR client = ?2)
             ORDER BY at, id",
        )?;
        let rows = stmt.query_map(params![since, client], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn insert_login_attempt(&mut self, client: &str, at: i64) -> Result<i64, StoreError> {
        self.0.execute(
            "INSERT INTO login_attempts (client, at) VALUES (?1, ?2)",
            params![client, at],
        )?;
        Ok(self.0.last_insert_rowid())
    }

    fn delete_login_attempts(&mut self, client: &str) -> Result<usize, StoreError> {
        Ok(self
            .0
            .execute("DELETE FROM login_attempts WHERE client = ?1", [client])?)
    }

    fn prune_login_attempts(&mut self, before: i64) -> Result<usize, StoreError> {
        Ok(self
            .0
            .execute("DELETE FROM login_attempts WHERE at <= ?1", [before])?)
    }

    fn events_after(
        &mut self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, TrackingEvent)>, StoreError> {
        events::after(self.0, after, limit)
    }

    fn copy_events(&mut self, node: &str, batch: &[TrackingEvent]) -> Result<(), StoreError> {
        batch
            .iter()
            .try_for_each(|event| events::insert(self.0, node, event))
    }

    fn row_counts(&mut self) -> Result<Vec<(&'static str, i64)>, StoreError> {
        ROW_COUNTED
            .iter()
            .map(|table| {
                let n: i64 =
                    self.0
                        .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
                            row.get(0)
                        })?;
                Ok((*table, n))
            })
            .collect()
    }
}

/// The tables [`Transaction::row_counts`] counts.
pub(crate) const ROW_COUNTED: &[&str] = &[
    "settings",
    "certificates",
    "admin_credentials",
    "events",
    "nodes",
    "dkim_keys",
];
