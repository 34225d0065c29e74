//! The TLS-RPT tables in PostgreSQL, on the main connection. The claim is
//! one `INSERT ... ON CONFLICT DO NOTHING`: of two nodes racing, exactly
//! one inserts; taking due retries is one `UPDATE ... RETURNING`, which a
//! second node running it at once re-evaluates after the first committed
//! (so it finds the lease moved and takes nothing).

use tokio_postgres::Row;

use super::{wait, PgStore};
use crate::tlsrpt::{DeliveryStatus, DeliveryUpdate, ReportClaim, ReportDelivery, TlsRptStore};
use crate::{StoreError, TrackingEvent};

const DELIVERY_COLUMNS: &str = "id, domain, day, destination, node, status, detail, queue_id, \
                                attempts, created_at, updated_at, next_attempt";

fn delivery(row: &Row, with_body: bool) -> Result<ReportDelivery, StoreError> {
    let status: String = row.get(5);
    Ok(ReportDelivery {
        id: row.get(0),
        domain: row.get(1),
        day: row.get(2),
        destination: row.get(3),
        node: row.get(4),
        status: DeliveryStatus::parse(&status).ok_or_else(|| {
            StoreError::Corrupt(format!("unknown report delivery status {status:?}"))
        })?,
        detail: row.get(6),
        queue_id: row.get(7),
        attempts: row.get(8),
        created_at: row.get(9),
        updated_at: row.get(10),
        next_attempt: row.get(11),
        body: if with_body { row.get(12) } else { None },
    })
}

impl TlsRptStore for PgStore {
    fn attempt_events(&self, since: i64, until: i64) -> Result<Vec<TrackingEvent>, StoreError> {
        self.with(&self.events, |client| {
            let rows = wait(client.query(
                "SELECT queue_id, message_id, at, kind, detail FROM events
                 WHERE kind = 'delivery_attempt' AND at >= $1 AND at < $2
                   AND queue_id NOT IN
                       (SELECT queue_id FROM tlsrpt_deliveries WHERE queue_id IS NOT NULL)
                 ORDER BY at, id",
                &[&since, &until],
            ))?;
            Ok(rows
                .iter()
                .map(|row| {
                    let detail: String = row.get(4);
                    TrackingEvent {
                        queue_id: row.get(0),
                        message_id: row.get(1),
                        at: row.get(2),
                        kind: row.get(3),
                        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                    }
                })
                .collect())
        })
    }

    fn claim_report(&self, claim: &ReportClaim) -> Result<bool, StoreError> {
        self.check_writable()?;
        self.with(&self.main, |client| {
            let inserted = wait(client.execute(
                "INSERT INTO tlsrpt_reports
                     (domain, day, node, report_id, claimed_at, successful, failed)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (domain, day) DO NOTHING",
                &[
                    &claim.domain,
                    &claim.day,
                    &claim.node,
                    &claim.report_id,
                    &claim.claimed_at,
                    &claim.successful,
                    &claim.failed,
                ],
            ))?;
            Ok(inserted == 1)
        })
    }

    fn report_claims(&self, day: &str) -> Result<Vec<ReportClaim>, StoreError> {
        self.with(&self.main, |client| {
            let rows = wait(client.query(
                "SELECT domain, day, node, report_id, claimed_at, successful, failed
                 FROM tlsrpt_reports WHERE day = $1 ORDER BY domain",
                &[&day],
            ))?;
            Ok(rows
                .iter()
                .map(|row| ReportClaim {
                    domain: row.get(0),
                    day: row.get(1),
                    node: row.get(2),
                    report_id: row.get(3),
                    claimed_at: row.get(4),
                    successful: row.get(5),
                    failed: row.get(6),
                })
                .collect())
        })
    }

    fn add_report_delivery(&self, d: &ReportDelivery) -> Result<i64, StoreError> {
        self.check_writable()?;
        self.with(&self.main, |client| {
            let row = wait(client.query_one(
                "INSERT INTO tlsrpt_deliveries
                     (domain, day, destination, node, status, detail, queue_id, attempts,
                      created_at, updated_at, next_attempt, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 RETURNING id",
                &[
                    &d.domain,
                    &d.day,
                    &d.destination,
                    &d.node,
                    &d.status.as_str(),
                    &d.detail,
                    &d.queue_id,
                    &d.attempts,
                    &d.created_at,
                    &d.updated_at,
                    &d.next_attempt,
                    &d.body,
                ],
            ))?;
            Ok(row.get(0))
        })
    }

    fn update_report_delivery(&self, id: i64, u: &DeliveryUpdate) -> Result<(), StoreError> {
        self.check_writable()?;
        self.with(&self.main, |client| {
            wait(client.execute(
                "UPDATE tlsrpt_deliveries
                 SET status = $2, detail = $3, node = $4, attempts = $5, updated_at = $6,
                     next_attempt = $7,
                     body = CASE WHEN $2 = 'retrying' THEN body ELSE NULL END
                 WHERE id = $1",
                &[
                    &id,
                    &u.status.as_str(),
                    &u.detail,
                    &u.node,
                    &u.attempts,
                    &u.updated_at,
                    &u.next_attempt,
                ],
            ))?;
            Ok(())
        })
    }

    fn report_deliveries(&self, day: &str) -> Result<Vec<ReportDelivery>, StoreError> {
        self.with(&self.main, |client| {
            let rows = wait(client.query(
                &format!(
                    "SELECT {DELIVERY_COLUMNS} FROM tlsrpt_deliveries WHERE day = $1 \
                     ORDER BY domain, id"
                ),
                &[&day],
            ))?;
            rows.iter().map(|row| delivery(row, false)).collect()
        })
    }

    fn take_due_report_deliveries(
        &self,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<ReportDelivery>, StoreError> {
        self.check_writable()?;
        self.with(&self.main, |client| {
            let rows = wait(client.query(
                &format!(
                    "UPDATE tlsrpt_deliveries SET next_attempt = $2
                     WHERE status = 'retrying' AND next_attempt <= $1
                     RETURNING {DELIVERY_COLUMNS}, body"
                ),
                &[&now, &lease_until],
            ))?;
            rows.iter().map(|row| delivery(row, true)).collect()
        })
    }

    fn prune_reports(&self, day: &str) -> Result<usize, StoreError> {
        self.check_writable()?;
        self.with(&self.main, |client| {
            let claims =
                wait(client.execute("DELETE FROM tlsrpt_reports WHERE day < $1", &[&day]))?;
            let deliveries = wait(client.execute(
                "DELETE FROM tlsrpt_deliveries WHERE day < $1 AND status <> 'retrying'",
                &[&day],
            ))?;
            Ok(usize::try_from(claims + deliveries).unwrap_or(usize::MAX))
        })
    }
}
