//! The TLS-RPT tables in SQLite. Claims and deliveries are on the main
//! connection (`synchronous=FULL`): a claim lost in a power cut would send
//! a report twice, a lost delivery row would forget a retry.

use rusqlite::{params, OptionalExtension, Row};

use super::{write_on, SqliteStore};
use crate::tlsrpt::{DeliveryStatus, DeliveryUpdate, ReportClaim, ReportDelivery, TlsRptStore};
use crate::{StoreError, TrackingEvent};

const DELIVERY_COLUMNS: &str = "id, domain, day, destination, node, status, detail, queue_id, \
                                attempts, created_at, updated_at, next_attempt";

fn delivery(row: &Row<'_>, with_body: bool) -> rusqlite::Result<ReportDelivery> {
    let status: String = row.get(5)?;
    Ok(ReportDelivery {
        id: row.get(0)?,
        domain: row.get(1)?,
        day: row.get(2)?,
        destination: row.get(3)?,
        node: row.get(4)?,
        status: DeliveryStatus::parse(&status).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                5,
                rusqlite::types::Type::Text,
                format!("unknown report delivery status {status:?}").into(),
            )
        })?,
        detail: row.get(6)?,
        queue_id: row.get(7)?,
        attempts: row.get(8)?,
        created_at: row.get(9)?,
        updated_at: row.get(10)?,
        next_attempt: row.get(11)?,
        body: if with_body { row.get(12)? } else { None },
    })
}

impl TlsRptStore for SqliteStore {
    fn attempt_events(&self, since: i64, until: i64) -> Result<Vec<TrackingEvent>, StoreError> {
        let conn = self.events();
        let mut stmt = conn.prepare_cached(
            "SELECT queue_id, message_id, at, kind, detail FROM events
             WHERE kind = 'delivery_attempt' AND at >= ?1 AND at < ?2
               AND queue_id NOT IN
                   (SELECT queue_id FROM tlsrpt_deliveries WHERE queue_id IS NOT NULL)
             ORDER BY at, id",
        )?;
        let rows = stmt.query_map(params![since, until], |row| {
            let detail: String = row.get(4)?;
            Ok(TrackingEvent {
                queue_id: row.get(0)?,
                message_id: row.get(1)?,
                at: row.get(2)?,
                kind: row.get(3)?,
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn claim_report(&self, claim: &ReportClaim) -> Result<bool, StoreError> {
        let mut conn = self.main();
        write_on(&mut conn, |tx| {
            let inserted = tx.execute(
                "INSERT INTO tlsrpt_reports
                     (domain, day, node, report_id, claimed_at, successful, failed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (domain, day) DO NOTHING",
                params![
                    claim.domain,
                    claim.day,
                    claim.node,
                    claim.report_id,
                    claim.claimed_at,
                    claim.successful,
                    claim.failed
                ],
            )?;
            Ok(inserted == 1)
        })
    }

    fn report_claims(&self, day: &str) -> Result<Vec<ReportClaim>, StoreError> {
        let conn = self.main();
        let mut stmt = conn.prepare_cached(
            "SELECT domain, day, node, report_id, claimed_at, successful, failed
             FROM tlsrpt_reports WHERE day = ?1 ORDER BY domain",
        )?;
        let rows = stmt.query_map([day], |row| {
            Ok(ReportClaim {
                domain: row.get(0)?,
                day: row.get(1)?,
                node: row.get(2)?,
                report_id: row.get(3)?,
                claimed_at: row.get(4)?,
                successful: row.get(5)?,
                failed: row.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn add_report_delivery(&self, d: &ReportDelivery) -> Result<i64, StoreError> {
        let mut conn = self.main();
        write_on(&mut conn, |tx| {
            let id: i64 = tx.query_row(
                "INSERT INTO tlsrpt_deliveries
                     (domain, day, destination, node, status, detail, queue_id, attempts,
                      created_at, updated_at, next_attempt, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 RETURNING id",
                params![
                    d.domain,
                    d.day,
                    d.destination,
                    d.node,
                    d.status.as_str(),
                    d.detail,
                    d.queue_id,
                    d.attempts,
                    d.created_at,
                    d.updated_at,
                    d.next_attempt,
                    d.body
                ],
                |row| row.get(0),
            )?;
            Ok(id)
        })
    }

    fn update_report_delivery(&self, id: i64, u: &DeliveryUpdate) -> Result<(), StoreError> {
        let mut conn = self.main();
        write_on(&mut conn, |tx| {
            tx.execute(
                "UPDATE tlsrpt_deliveries
                 SET status = ?2, detail = ?3, node = ?4, attempts = ?5, updated_at = ?6,
                     next_attempt = ?7,
                     body = CASE WHEN ?2 = 'retrying' THEN body ELSE NULL END
                 WHERE id = ?1",
                params![
                    id,
                    u.status.as_str(),
                    u.detail,
                    u.node,
                    u.attempts,
                    u.updated_at,
                    u.next_attempt
                ],
            )?;
            Ok(())
        })
    }

    fn report_deliveries(&self, day: &str) -> Result<Vec<ReportDelivery>, StoreError> {
        let conn = self.main();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM tlsrpt_deliveries WHERE day = ?1 ORDER BY domain, id"
        ))?;
        let rows = stmt.query_map([day], |row| delivery(row, false))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn take_due_report_deliveries(
        &self,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<ReportDelivery>, StoreError> {
        let mut conn = self.main();
        write_on(&mut conn, |tx| {
            // Cheap when nothing is due (the common case): one indexed read.
            let any: Option<i64> = tx
                .query_row(
                    "SELECT id FROM tlsrpt_deliveries
                     WHERE status = 'retrying' AND next_attempt <= ?1 LIMIT 1",
                    [now],
                    |row| row.get(0),
                )
                .optional()?;
            if any.is_none() {
                return Ok(Vec::new());
            }
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE tlsrpt_deliveries SET next_attempt = ?2
                 WHERE status = 'retrying' AND next_attempt <= ?1
                 RETURNING {DELIVERY_COLUMNS}, body"
            ))?;
            let rows = stmt.query_map(params![now, lease_until], |row| delivery(row, true))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn prune_reports(&self, day: &str) -> Result<usize, StoreError> {
        let mut conn = self.main();
        write_on(&mut conn, |tx| {
            let claims = tx.execute("DELETE FROM tlsrpt_reports WHERE day < ?1", [day])?;
            let deliveries = tx.execute(
                "DELETE FROM tlsrpt_deliveries WHERE day < ?1 AND status <> 'retrying'",
                [day],
            )?;
            Ok(claims + deliveries)
        })
    }
}
