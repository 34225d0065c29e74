//! [`Transaction`] over one PostgreSQL connection (inside `BEGIN` for
//! writes, autocommit for single reads).

use tokio_postgres::{Client, Row};

use super::{wait, CHANNEL};
use crate::backend::{CredentialKind, Transaction};
use crate::{ApiToken, CertificateRecord, DkimKeyRecord, StoreError, TrackingEvent};

pub(crate) struct PgTx<'a> {
    client: &'a Client,
}

impl<'a> PgTx<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Self { client }
    }
}

const CERT_COLUMNS: &str = "name, chain_pem, key_pem, created_at";

fn certificate(row: &Row) -> CertificateRecord {
    CertificateRecord {
        name: row.get(0),
        chain_pem: row.get(1),
        key_pem: row.get(2),
        created_at: row.get(3),
    }
}

const DKIM_COLUMNS: &str =
    "name, domain, selector, key_type, private_key_pem, dns_record, created_at";

fn dkim(row: &Row) -> DkimKeyRecord {
    DkimKeyRecord {
        name: row.get(0),
        domain: row.get(1),
        selector: row.get(2),
        key_type: row.get(3),
        private_key_pem: row.get(4),
        dns_record: row.get(5),
        created_at: row.get(6),
    }
}

fn token(row: &Row) -> ApiToken {
    ApiToken {
        name: row.get(0),
        created_at: row.get(1),
    }
}

impl Transaction for PgTx<'_> {
    fn settings_document(&mut self) -> Result<Option<String>, StoreError> {
        let row = wait(
            self.client
                .query_opt("SELECT document FROM settings WHERE id = 1", &[]),
        )?;
        Ok(row.map(|r| r.get(0)))
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
        Ok(rows.iter().map(certificate).collect())
    }

    fn certificate(&mut self, name: &str) -> Result<Option<CertificateRecord>, StoreError> {
        let row = wait(self.client.query_opt(
            &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE name = $1"),
            &[&name],
        ))?;
        Ok(row.as_ref().map(certificate))
    }

    fn certificate_name_nocase(&mut self, name: &str) -> Result<Option<String>, StoreError> {
        // ASCII case only, as SQLite's NOCASE (and the unique index).
        let row = wait(self.client.query_opt(
            "SELECT name FROM certificates
             WHERE translate(name, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')
                 = translate($1, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')",
            &[&name],
        ))?;
        Ok(row.map(|r| r.get(0)))
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
        Ok(rows.iter().map(dkim).collect())
    }

    fn dkim_key(&mut self, name: &str) -> Result<Option<DkimKeyRecord>, StoreError> {
        let row = wait(self.client.query_opt(
            &format!("SELECT {DKIM_COLUMNS} FROM dkim_keys WHERE name = $1"),
            &[&name],
        ))?;
        Ok(row.as_ref().map(dkim))
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
        row.map(|r| r.get(0))
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
        Ok(row.map(|r| r.get(0)))
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
        Ok(row.map(|r| r.get(0)))
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
        Ok(row.as_ref().map(token))
    }

    fn tokens(&mut self) -> Result<Vec<ApiToken>, StoreError> {
        let rows = wait(self.client.query(
            "SELECT name, created_at FROM admin_credentials WHERE kind = $1
             ORDER BY name COLLATE \"C\"",
            &[&CredentialKind::Token.as_str()],
        ))?;
        Ok(rows.iter().map(token).collect())
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
                Ok((*table, row.get(0)))
            })
            .collect()
    }
}
