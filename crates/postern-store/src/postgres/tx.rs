//! [`Transaction`] over one PostgreSQL connection (inside `BEGIN` for
//! writes, autocommit for single reads).

use tokio_postgres::{Client, Row};

use super::row::get;
use super::{wait, CHANNEL};
use crate::backend::{CredentialKind, Transaction};
use crate::{AdminSession, ApiToken, CertificateRecord, DkimKeyRecord, StoreError, TrackingEvent};

pub(crate) struct PgTx<'a> {
    client: &'a Client,
}

impl<'a> PgTx<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Self { client }
    }
}

const CERT_COLUMNS: &str = "name, chain_pem, key_pem, created_at";

fn certificate(row: &Row) -> Result<CertificateRecord, StoreError> {
    Ok(CertificateRecord {
        name: get(row, 0)?,
        chain_pem: get(row, 1)?,
        key_pem: get(row, 2)?,
        created_at: get(row, 3)?,
    })
}

const DKIM_COLUMNS: &str =
    "name, domain, selector, key_type, private_key_pem, dns_record, created_at";

fn dkim(row: &Row) -> Result<DkimKeyRecord, StoreError> {
    Ok(DkimKeyRecord {
        name: get(row, 0)?,
        domain: get(row, 1)?,
        selector: get(row, 2)?,
        key_type: get(row, 3)?,
        private_key_pem: get(row, 4)?,
        dns_record: get(row, 5)?,
        created_at: get(row, 6)?,
    })
}

fn token(row: &Row) -> Result<ApiToken, StoreError> {
    Ok(ApiToken {
        name: get(row, 0)?,
        created_at: get(row, 1)?,
    })
}

const SESSION_COLUMNS: &str = "id_hash, password_version, created_at, last_seen";

fn session(row: &Row) -> Result<AdminSession, StoreError> {
    Ok(AdminSession {
        id_hash: get(row, 0)?,
        password_version: get(row, 1)?,
        created_at: get(row, 2)?,
        last_seen: get(row, 3)?,
    })
}

/// The first column of an optional row.
fn first<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    row: Option<Row>,
) -> Result<Option<T>, StoreError> {
    row.map(|r| get(&r, 0)).transpose()
}

fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl Transaction for PgTx<'_> {
    fn settings_document(&mut self) -> Result<Option<String>, StoreError> {
        let row = wait(
            self.client
                .query_opt("SELECT document FROM settings WHERE id = 1", &[]),
        )?;
        first(row)
    }

    fn save_settings_document(&mut self, document: &str, at: i64) -> Result<(), StoreError> {
        wait(self.client.execute(
            "INSERT INTO settings (id, document, updated_at) VALUES (1, $1, $2)
             ON CONFLICT (id) DO UPDATE SET document = excluded.document,
                                            updated_at = excluded.updated_at",
            &[&document, &at],
        ))?;
        Ok(())
    }

    fn certificates(&mut self) -> Result<Vec<CertificateRecord>, StoreError> {
        // COLLATE "C": the same byte order as SQLite's.
        let rows = wait(self.client.query(
            &format!("SELECT {CERT_COLUMNS} FROM certificates ORDER BY name COLLATE \"C\""),
            &[],
        ))?;
        rows.iter().map(certificate).collect()
    }

    fn certificate(&mut self, name: &str) -> Result<Option<CertificateRecord>, StoreError> {
        let row = wait(self.client.query_opt(
            &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE name = $1"),
            &[&name],
        ))?;
        row.as_ref().map(certificate).transpose()
    }

    fn certificate_name_nocase(&mut self, name: &str) -> Result<Option<String>, StoreError> {
        // ASCII case only, as SQLite's NOCASE (and the unique index).
        let row = wait(self.client.query_opt(
            "SELECT name FROM certificates
             WHERE translate(name, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')
                 = translate($1, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')",
            &[&name],
        ))?;
        first(row)
    }

    fn insert_certificate(&mut self, record: &CertificateRecord) -> Result<(), StoreError> {
        wait(self.client.execute(
            &format!("INSERT INTO certificates ({CERT_COLUMNS}) VALUES ($1, $2, $3, $4)"),
            &[
                &record.name,
                &record.chain_pem,
                &record.key_pem,
                &record.created_at,
            ],
        ))?;
        Ok(())
    }

    fn delete_certificate(&mut self, name: &str) -> Result<bool, StoreError> {
        Ok(wait(
            self.client
                .execute("DELETE FROM certificates WHERE name = $1", &[&name]),
        )? == 1)
    }

    fn dkim_keys(&mut self) -> Result<Vec<DkimKeyRecord>, StoreError> {
        let rows = wait(self.client.query(
            &format!("SELECT {DKIM_COLUMNS} FROM dkim_keys ORDER BY name COLLATE \"C\""),
            &[],
        ))?;
        rows.iter().map(dkim).collect()
    }

    fn dkim_key(&mut self, name: &str) -> Result<Option<DkimKeyRecord>, StoreError> {
        let row = wait(self.client.query_opt(
            &format!("SELECT {DKIM_COLUMNS} FROM dkim_keys WHERE name = $1"),
            &[&name],
        ))?;
        row.as_ref().map(dkim).transpose()
    }

    fn insert_dkim_key(&mut self, r: &DkimKeyRecord) -> Result<(), StoreError> {
        wait(self.client.execute(
            &format!("INSERT INTO dkim_keys ({DKIM_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"),
            &[
                &r.name,
                &r.domain,
                &r.selector,
                &r.key_type,
                &r.private_key_pem,
                &r.dns_record,
                &r.created_at,
            ],
        ))?;
        Ok(())
    }

    fn delete_dkim_key(&mut self, name: &str) -> Result<bool, StoreError> {
        Ok(wait(
            self.client
                .execute("DELETE FROM dkim_keys WHERE name = $1", &[&name]),
        )? == 1)
    }

    fn generation(&mut self) -> Result<i64, StoreError> {
        let row = wait(
            self.client
                .query_opt("SELECT value FROM meta WHERE key = 'generation'", &[]),
        )?;
        first(row)?
            .ok_or_else(|| StoreError::Corrupt("the generation counter is missing".to_string()))
    }

    fn bump_generation(&mut self) -> Result<(), StoreError> {
        // The notification is sent when (and only if) the transaction commits.
        let row = wait(self.client.query_opt(
            &format!(
                "WITH bumped AS (
                     UPDATE meta SET value = value + 1 WHERE key = 'generation' RETURNING value
                 )
                 SELECT pg_notify('{CHANNEL}', value::text) FROM bumped"
            ),
            &[],
        ))?;
        if row.is_none() {
            return Err(StoreError::Corrupt(
                "the generation counter is missing".to_string(),
            ));
        }
        Ok(())
    }

    fn flag(&mut self, key: &str) -> Result<Option<i64>, StoreError> {
        let row = wait(
            self.client
                .query_opt("SELECT value FROM meta WHERE key = $1", &[&key]),
        )?;
        first(row)
    }

    fn set_flag(&mut self, key: &str, value: i64) -> Result<(), StoreError> {
        wait(self.client.execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&key, &value],
        ))?;
        Ok(())
    }

    fn credential(
        &mut self,
        kind: CredentialKind,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        let row = wait(self.client.query_opt(
            "SELECT hash FROM admin_credentials WHERE kind = $1 AND name = $2",
            &[&kind.as_str(), &name],
        ))?;
        first(row)
    }

    fn put_credential(
        &mut self,
        kind: CredentialKind,
        name: &str,
        hash: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        wait(self.client.execute(
            "INSERT INTO admin_credentials (kind, name, hash, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (kind, name) DO UPDATE SET hash = excluded.hash,
                                                    created_at = excluded.created_at",
            &[&kind.as_str(), &name, &hash, &at],
        ))?;
        Ok(())
    }

    fn delete_credential(&mut self, kind: CredentialKind, name: &str) -> Result<bool, StoreError> {
        Ok(wait(self.client.execute(
            "DELETE FROM admin_credentials WHERE kind = $1 AND name = $2",
            &[&kind.as_str(), &name],
        ))? > 0)
    }

    fn token_by_hash(&mut self, hash: &str) -> Result<Option<ApiToken>, StoreError> {
        let row = wait(self.client.query_opt(
            "SELECT name, created_at FROM admin_credentials WHERE kind = $1 AND hash = $2",
            &[&CredentialKind::Token.as_str(), &hash],
        ))?;
        row.as_ref().map(token).transpose()
    }

    fn tokens(&mut self) -> Result<Vec<ApiToken>, StoreError> {
        let rows = wait(self.client.query(
            "SELECT name, created_at FROM admin_credentials WHERE kind = $1
             ORDER BY name COLLATE \"C\"",
            &[&CredentialKind::Token.as_str()],
        ))?;
        rows.iter().map(token).collect()
    }

    fn bump_credentials(&mut self) -> Result<(), StoreError> {
        // Notified on commit like a generation change: nodes refresh their
        // local copy of the credentials.
        wait(self.client.execute(
            &format!(
                "WITH bumped AS (
                     INSERT INTO meta (key, value) VALUES ($1, 1)
                     ON CONFLICT (key) DO UPDATE SET value = meta.value + 1
                     RETURNING value
                 )
                 SELECT pg_notify('{CHANNEL}', 'credentials ' || value::text) FROM bumped"
            ),
            &[&crate::sessions::CREDENTIALS_VERSION],
        ))?;
        Ok(())
    }

    fn session(&mut self, id_hash: &str) -> Result<Option<AdminSession>, StoreError> {
        let row = wait(self.client.query_opt(
            &format!("SELECT {SESSION_COLUMNS} FROM admin_sessions WHERE id_hash = $1"),
            &[&id_hash],
        ))?;
        row.as_ref().map(session).transpose()
    }

    fn sessions(&mut self) -> Result<Vec<AdminSession>, StoreError> {
        let rows = wait(self.client.query(
            &format!("SELECT {SESSION_COLUMNS} FROM admin_sessions ORDER BY id_hash COLLATE \"C\""),
            &[],
        ))?;
        rows.iter().map(session).collect()
    }

    fn insert_session(&mut self, new: &AdminSession) -> Result<(), StoreError> {
        wait(self.client.execute(
            &format!("INSERT INTO admin_sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4)"),
            &[
                &new.id_hash,
                &new.password_version,
                &new.created_at,
                &new.last_seen,
            ],
        ))?;
        Ok(())
    }

    fn touch_session(&mut self, id_hash: &str, at: i64) -> Result<bool, StoreError> {
        Ok(wait(self.client.execute(
            "UPDATE admin_sessions SET last_seen = greatest(last_seen, $2) WHERE id_hash = $1",
            &[&id_hash, &at],
        ))? == 1)
    }

    fn delete_session(&mut self, id_hash: &str) -> Result<bool, StoreError> {
        Ok(wait(
            self.client
                .execute("DELETE FROM admin_sessions WHERE id_hash = $1", &[&id_hash]),
        )? == 1)
    }

    fn delete_dead_sessions(
        &mut self,
        seen_before: i64,
        created_before: i64,
    ) -> Result<usize, StoreError> {
        Ok(count(wait(self.client.execute(
            "DELETE FROM admin_sessions WHERE last_seen <= $1 OR created_at <= $2",
            &[&seen_before, &created_before],
        ))?))
    }

    fn keep_recent_sessions(&mut self, keep: usize) -> Result<usize, StoreError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        Ok(count(wait(self.client.execute(
            "DELETE FROM admin_sessions WHERE id_hash NOT IN
                 (SELECT id_hash FROM admin_sessions
                  ORDER BY last_seen DESC, created_at DESC, id_hash COLLATE \"C\" LIMIT $1)",
            &[&keep],
        ))?))
    }

    fn delete_sessions_except(&mut self, password_version: &str) -> Result<usize, StoreError> {
        Ok(count(wait(self.client.execute(
            "DELETE FROM admin_sessions WHERE password_version <> $1",
            &[&password_version],
        ))?))
    }

    fn login_attempts(&mut self, client: Option<&str>, since: i64) -> Result<Vec<i64>, StoreError> {
        let rows = wait(self.client.query(
            "SELECT at FROM login_attempts
             WHERE at > $1 AND ($2::text IS NULL OR client = $2)
             ORDER BY at, id",
            &[&since, &client],
        ))?;
        rows.iter().map(|row| get(row, 0)).collect()
    }

    fn insert_login_attempt(&mut self, client: &str, at: i64) -> Result<i64, StoreError> {
        let row = wait(self.client.query_one(
            "INSERT INTO login_attempts (client, at) VALUES ($1, $2) RETURNING id",
            &[&client, &at],
        ))?;
        get(&row, 0)
    }

    fn delete_login_attempts(&mut self, client: &str) -> Result<usize, StoreError> {
        Ok(count(wait(self.client.execute(
            "DELETE FROM login_attempts WHERE client = $1",
            &[&client],
        ))?))
    }

    fn prune_login_attempts(&mut self, before: i64) -> Result<usize, StoreError> {
        Ok(count(wait(self.client.execute(
            "DELETE FROM login_attempts WHERE at <= $1",
            &[&before],
        ))?))
    }

    fn events_after(
        &mut self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, TrackingEvent)>, StoreError> {
        super::events::after(self.client, after, limit)
    }

    fn copy_events(&mut self, node: &str, batch: &[TrackingEvent]) -> Result<(), StoreError> {
        super::events::insert(self.client, node, batch)
    }

    fn row_counts(&mut self) -> Result<Vec<(&'static str, i64)>, StoreError> {
        crate::sqlite::ROW_COUNTED
            .iter()
            .map(|table| {
                let row = wait(
                    self.client
                        .query_one(&format!("SELECT count(*) FROM {table}"), &[]),
                )?;
                Ok((*table, get(&row, 0)?))
            })
            .collect()
    }
}
