//! The MTA-STS policy cache in SQLite.

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::mta_sts::{mx_from_json, mx_json, MtaStsRecord};
use crate::StoreError;

const COLUMNS: &str = "domain, id, mode, max_age, mx, policy, fetched_at, expires_at";

pub(crate) fn put(conn: &Connection, record: &MtaStsRecord) -> Result<(), StoreError> {
    conn.execute(
        &format!(
            "INSERT INTO mta_sts_policies ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (domain) DO UPDATE SET
                id = excluded.id, mode = excluded.mode, max_age = excluded.max_age,
                mx = excluded.mx, policy = excluded.policy,
                fetched_at = excluded.fetched_at, expires_at = excluded.expires_at"
        ),
        params![
            record.domain,
            record.id,
            record.mode,
            record.max_age,
            mx_json(record)?,
            record.policy,
            record.fetched_at,
            record.expires_at
        ],
    )?;
    Ok(())
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<(MtaStsRecord, String)> {
    Ok((
        MtaStsRecord {
            domain: row.get(0)?,
            id: row.get(1)?,
            mode: row.get(2)?,
            max_age: row.get(3)?,
            mx: Vec::new(),
            policy: row.get(5)?,
            fetched_at: row.get(6)?,
            expires_at: row.get(7)?,
        },
        row.get(4)?,
    ))
}

fn with_mx((mut record, mx): (MtaStsRecord, String)) -> Result<MtaStsRecord, StoreError> {
    record.mx = mx_from_json(&mx)?;
    Ok(record)
}

pub(crate) fn get(conn: &Connection, domain: &str) -> Result<Option<MtaStsRecord>, StoreError> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM mta_sts_policies WHERE domain = ?1"
        ))?
        .query_row([domain], from_row)
        .optional()?;
    row.map(with_mx).transpose()
}

pub(crate) fn list(conn: &Connection) -> Result<Vec<MtaStsRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM mta_sts_policies ORDER BY domain"
    ))?;
    let rows = stmt.query_map([], from_row)?;
    rows.map(|row| with_mx(row?)).collect()
}
