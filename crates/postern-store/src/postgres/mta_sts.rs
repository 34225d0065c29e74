//! The MTA-STS policy cache in PostgreSQL.

use tokio_postgres::{Client, Row};

use super::row::get as column;
use super::wait;
use crate::mta_sts::{mx_from_json, mx_json, MtaStsRecord};
use crate::StoreError;

const COLUMNS: &str = "domain, id, mode, max_age, mx, policy, fetched_at, expires_at";

pub(crate) fn put(client: &Client, record: &MtaStsRecord) -> Result<(), StoreError> {
    wait(client.execute(
        &format!(
            "INSERT INTO mta_sts_policies ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (domain) DO UPDATE SET
                id = excluded.id, mode = excluded.mode, max_age = excluded.max_age,
                mx = excluded.mx, policy = excluded.policy,
                fetched_at = excluded.fetched_at, expires_at = excluded.expires_at"
        ),
        &[
            &record.domain,
            &record.id,
            &record.mode,
            &record.max_age,
            &mx_json(record)?,
            &record.policy,
            &record.fetched_at,
            &record.expires_at,
        ],
    ))?;
    Ok(())
}

fn from_row(row: &Row) -> Result<MtaStsRecord, StoreError> {
    let mx: String = column(row, 4)?;
    Ok(MtaStsRecord {
        domain: column(row, 0)?,
        id: column(row, 1)?,
        mode: column(row, 2)?,
        max_age: column(row, 3)?,
        mx: mx_from_json(&mx)?,
        policy: column(row, 5)?,
        fetched_at: column(row, 6)?,
        expires_at: column(row, 7)?,
    })
}

pub(crate) fn get(client: &Client, domain: &str) -> Result<Option<MtaStsRecord>, StoreError> {
    let rows = wait(client.query(
        &format!("SELECT {COLUMNS} FROM mta_sts_policies WHERE domain = $1"),
        &[&domain],
    ))?;
    rows.first().map(from_row).transpose()
}

pub(crate) fn list(client: &Client) -> Result<Vec<MtaStsRecord>, StoreError> {
    let rows = wait(client.query(
        &format!("SELECT {COLUMNS} FROM mta_sts_policies ORDER BY domain COLLATE \"C\""),
        &[],
    ))?;
    rows.iter().map(from_row).collect()
}
