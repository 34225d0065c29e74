//! The certificate table: named PEM chains, with a private key or without
//! one (a CA / trust anchor).
//!
//! Names become file names in exports and appear in settings, so they are
//! checked here: no path separators, no control characters, no surrounding
//! blanks, and not `system` (which `tls.outbound.trusted_ca` reserves for
//! the public web PKI roots). Two names that differ only in ASCII case are
//! refused as duplicates; lookups use the exact name.

use std::fmt;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Longest certificate name, in characters.
pub const MAX_CERTIFICATE_NAME_CHARS: usize = 100;

/// One entry of the certificate table.
///
/// `Debug` never prints the private key; `Serialize` does, so do not send
/// a record as is to anyone who must not see the key.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct CertificateRecord {
    pub name: String,
    /// The certificate first, then its intermediates, PEM.
    pub chain_pem: String,
    /// PEM private key; `None` for a CA / trust anchor.
    pub key_pem: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
}

impl CertificateRecord {
    /// True for an entry that can be presented to peers.
    pub fn has_private_key(&self) -> bool {
        self.key_pem.is_some()
    }
}

impl fmt::Debug for CertificateRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateRecord")
            .field("name", &self.name)
            .field(
                "chain_pem",
                &format_args!("<{} bytes>", self.chain_pem.len()),
            )
            .field(
                "key_pem",
                &self.key_pem.as_ref().map(|_| format_args!("<redacted>")),
            )
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// Check a certificate name before it is stored.
pub fn validate_certificate_name(name: &str) -> Result<(), StoreError> {
    let bad = |why: &str| {
        Err(StoreError::BadName(format!(
            "certificate name {name:?}: {why}"
        )))
    };
    if name.is_empty() {
        return Err(StoreError::BadName(
            "certificate name must not be empty".to_string(),
        ));
    }
    if name.chars().count() > MAX_CERTIFICATE_NAME_CHARS {
        return bad(&format!(
            "longer than {MAX_CERTIFICATE_NAME_CHARS} characters"
        ));
    }
    // Control, bidirectional and invisible characters: one rule for every
    // name an administrator reads (postern-tls).
    if let Err(why) = postern_tls::check_name_chars(name) {
        return bad(&why);
    }
    if name.contains(['/', '\\']) {
        return bad("must not contain '/' or '\\'");
    }
    if name.trim() != name {
        return bad("must not begin or end with blanks");
    }
    if name == "." || name == ".." {
        return bad("is not a usable name");
    }
    if name.eq_ignore_ascii_case("system") {
        return bad(
            "\"system\" is reserved for the public web PKI roots in tls.outbound.trusted_ca",
        );
    }
    Ok(())
}

/// Check a record before it is stored: its name and that its PEM text holds
/// what it claims. Parsing the certificates is the TLS layer's job; this
/// only catches swapped or empty files.
pub(crate) fn validate_record(record: &CertificateRecord) -> Result<(), StoreError> {
    validate_certificate_name(&record.name)?;
    if !record.chain_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(StoreError::BadCertificate(format!(
            "certificate \"{}\": the chain holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            record.name
        )));
    }
    if record.chain_pem.contains("PRIVATE KEY-----") {
        return Err(StoreError::BadCertificate(format!(
            "certificate \"{}\": the chain must not contain a private key; pass it as the key",
            record.name
        )));
    }
    if let Some(key) = &record.key_pem {
        if !(key.contains("-----BEGIN") && key.contains("PRIVATE KEY-----")) {
            return Err(StoreError::BadCertificate(format!(
                "certificate \"{}\": the key holds no PEM private key",
                record.name
            )));
        }
    }
    Ok(())
}

const COLUMNS: &str = "name, chain_pem, key_pem, created_at";

fn from_row(row: &Row<'_>) -> rusqlite::Result<CertificateRecord> {
    Ok(CertificateRecord {
        name: row.get(0)?,
        chain_pem: row.get(1)?,
        key_pem: row.get(2)?,
        created_at: row.get(3)?,
    })
}

pub(crate) fn list(conn: &Connection) -> Result<Vec<CertificateRecord>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {COLUMNS} FROM certificates ORDER BY name"))?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn get(conn: &Connection, name: &str) -> Result<Option<CertificateRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM certificates WHERE name = ?1"
    ))?;
    Ok(stmt.query_row([name], from_row).optional()?)
}

/// Insert after [`validate_record`]; call inside a write transaction.
pub(crate) fn insert(conn: &Connection, record: &CertificateRecord) -> Result<(), StoreError> {
    let existing: Option<String> = conn
        .query_row(
            "SELECT name FROM certificates WHERE name = ?1 COLLATE NOCASE",
            [&record.name],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(existing) = existing {
        return Err(StoreError::Duplicate(existing));
    }
    conn.execute(
        &format!("INSERT INTO certificates ({COLUMNS}) VALUES (?1, ?2, ?3, ?4)"),
        params![
            record.name,
            record.chain_pem,
            record.key_pem,
            record.created_at
        ],
    )?;
    Ok(())
}

/// Delete by exact name; false when there was none.
pub(crate) fn delete(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(conn.execute("DELETE FROM certificates WHERE name = ?1", [name])? == 1)
}
