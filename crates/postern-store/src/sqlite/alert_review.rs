//! Reviewing kept alerts in SQLite (list, count, acknowledge), on the
//! events connection beside their recording.

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Row};

use super::{write_on, SqliteStore};
use crate::alerts::{Acknowledged, AlertFilter, AlertKind, AlertReview, KeptAlert};
use crate::StoreError;

const COLUMNS: &str = "id, kind, subject, host, detail, at, node, acknowledged_at, acknowledged_by";

fn kept(row: &Row<'_>) -> rusqlite::Result<KeptAlert> {
    let kind: String = row.get(1)?;
    Ok(KeptAlert {
        id: row.get(0)?,
        alert: crate::Alert {
            kind: AlertKind::parse(&kind).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    1,
                    rusqlite::types::Type::Text,
                    format!("unknown alert kind {kind:?}").into(),
                )
            })?,
            subject: row.get(2)?,
            host: row.get(3)?,
            detail: row.get(4)?,
            at: row.get(5)?,
        },
        node: row.get(6)?,
        acknowledged_at: row.get(7)?,
        acknowledged_by: row.get(8)?,
    })
}

impl AlertReview for SqliteStore {
    fn kept_alerts(&self, filter: &AlertFilter) -> Result<Vec<KeptAlert>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM alerts WHERE 1 = 1");
        let mut values: Vec<Value> = Vec::new();
        if let Some(kind) = filter.kind {
            values.push(kind.as_str().to_string().into());
            sql.push_str(&format!(" AND kind = ?{}", values.len()));
        }
        match filter.acknowledged {
            Some(true) => sql.push_str(" AND acknowledged_at IS NOT NULL"),
            Some(false) => sql.push_str(" AND acknowledged_at IS NULL"),
            None => {}
        }
        values.push(i64::try_from(filter.limit).unwrap_or(i64::MAX).into());
        sql.push_str(&format!(
            " ORDER BY at DESC, id DESC LIMIT ?{}",
            values.len()
        ));
        let conn = self.events();
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params_from_iter(values.iter()), kept)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn kept_alert(&self, id: i64) -> Result<Option<KeptAlert>, StoreError> {
        let conn = self.events();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM alerts WHERE id = ?1"))?;
        let mut rows = stmt.query_map([id], kept)?;
        Ok(rows.next().transpose()?)
    }

    fn unacknowledged_alert_count(&self) -> Result<u64, StoreError> {
        let conn = self.events();
        let count: i64 = conn.query_row(
            "SELECT COUNT(*) FROM alerts WHERE acknowledged_at IS NULL",
            [],
            |row| row.get(0),
        )?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    fn acknowledge_alerts(
        &self,
        ids: &[i64],
        by: &str,
        at: i64,
    ) -> Result<Acknowledged, StoreError> {
        let mut conn = self.events();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut outcome = Acknowledged::default();
        {
            let mut exists = tx.prepare_cached("SELECT 1 FROM alerts WHERE id = ?1")?;
            let mut ack = tx.prepare_cached(
                "UPDATE alerts SET acknowledged_at = ?2, acknowledged_by = ?3
                 WHERE id = ?1 AND acknowledged_at IS NULL",
            )?;
            for &id in ids {
                if !exists.exists([id])? {
                    outcome.unknown.push(id);
                    continue;
                }
                outcome.count += ack.execute(params![id, at, by])?;
            }
        }
        if outcome.unknown.is_empty() {
            tx.commit()?;
        } else {
            // Dropping the transaction rolls it back: nothing acknowledged.
            outcome.count = 0;
        }
        Ok(outcome)
    }

    fn acknowledge_alerts_through(
        &self,
        through: i64,
        by: &str,
        at: i64,
    ) -> Result<usize, StoreError> {
        let mut conn = self.events();
        write_on(&mut conn, |tx| {
            Ok(tx.execute(
                "UPDATE alerts SET acknowledged_at = ?2, acknowledged_by = ?3
                 WHERE id <= ?1 AND acknowledged_at IS NULL",
                params![through, at, by],
            )?)
        })
    }
}
