//! Reviewing kept alerts in PostgreSQL (list, count, acknowledge), on the
//! events connection beside their recording.

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{wait, PgStore};
use crate::alerts::{Acknowledged, AlertFilter, AlertKind, AlertReview, KeptAlert};
use crate::StoreError;

const COLUMNS: &str = "id, kind, subject, host, detail, at, node, acknowledged_at, acknowledged_by";

fn kept(row: &Row) -> Result<KeptAlert, StoreError> {
    let kind: String = row.get(1);
    Ok(KeptAlert {
        id: row.get(0),
        alert: crate::Alert {
            kind: AlertKind::parse(&kind)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown alert kind {kind:?}")))?,
            subject: row.get(2),
            host: row.get(3),
            detail: row.get(4),
            at: row.get(5),
        },
        node: row.get(6),
        acknowledged_at: row.get(7),
        acknowledged_by: row.get(8),
    })
}

impl AlertReview for PgStore {
    fn kept_alerts(&self, filter: &AlertFilter) -> Result<Vec<KeptAlert>, StoreError> {
        let kind = filter.kind.map(|k| k.as_str().to_string());
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        let mut sql = format!("SELECT {COLUMNS} FROM alerts WHERE 1 = 1");
        let mut values: Vec<&(dyn ToSql + Sync)> = Vec::new();
        if let Some(kind) = &kind {
            values.push(kind);
            sql.push_str(&format!(" AND kind = ${}", values.len()));
        }
        match filter.acknowledged {
            Some(true) => sql.push_str(" AND acknowledged_at IS NOT NULL"),
            Some(false) => sql.push_str(" AND acknowledged_at IS NULL"),
            None => {}
        }
        values.push(&limit);
        sql.push_str(&format!(
            " ORDER BY at DESC, id DESC LIMIT ${}",
            values.len()
        ));
        self.with(&self.events, |client| {
            wait(client.query(&sql, &values))?
                .iter()
                .map(kept)
                .collect()
        })
    }

    fn kept_alert(&self, id: i64) -> Result<Option<KeptAlert>, StoreError> {
        self.with(&self.events, |client| {
            wait(client.query_opt(
                &format!("SELECT {COLUMNS} FROM alerts WHERE id = $1"),
                &[&id],
            ))?
            .as_ref()
            .map(kept)
            .transpose()
        })
    }

    fn unacknowledged_alert_count(&self) -> Result<u64, StoreError> {
        self.with(&self.events, |client| {
            let row = wait(client.query_one(
                "SELECT COUNT(*) FROM alerts WHERE acknowledged_at IS NULL",
                &[],
            ))?;
            let count: i64 = row.get(0);
            Ok(u64::try_from(count).unwrap_or_default())
        })
    }

    fn acknowledge_alerts(
        &self,
        ids: &[i64],
        by: &str,
        at: i64,
    ) -> Result<Acknowledged, StoreError> {
        self.check_writable()?;
        let ids = ids.to_vec();
        // One statement: the unknown ids, and the update only when there
        // are none, so a bad list changes nothing.
        self.with(&self.events, |client| {
            let row = wait(client.query_one(
                "WITH missing AS (
                     SELECT w.id FROM unnest($1::bigint[]) AS w(id)
                     LEFT JOIN alerts a ON a.id = w.id WHERE a.id IS NULL
                 ), updated AS (
                     UPDATE alerts SET acknowledged_at = $2, acknowledged_by = $3
                     WHERE id = ANY($1) AND acknowledged_at IS NULL
                       AND NOT EXISTS (SELECT 1 FROM missing)
                     RETURNING id
                 )
                 SELECT (SELECT array_agg(id ORDER BY id) FROM missing),
                        (SELECT COUNT(*) FROM updated)",
                &[&ids, &at, &by],
            ))?;
            let unknown: Option<Vec<i64>> = row.get(0);
            let count: i64 = row.get(1);
            Ok(Acknowledged {
                count: usize::try_from(count).unwrap_or_default(),
                unknown: unknown.unwrap_or_default(),
            })
        })
    }

    fn acknowledge_alerts_through(
        &self,
        through: i64,
        by: &str,
        at: i64,
    ) -> Result<usize, StoreError> {
        self.check_writable()?;
        self.with(&self.events, |client| {
            let count = wait(client.execute(
                "UPDATE alerts SET acknowledged_at = $2, acknowledged_by = $3
                 WHERE id <= $1 AND acknowledged_at IS NULL",
                &[&through, &at, &by],
            ))?;
            Ok(usize::try_from(count).unwrap_or_default())
        })
    }
}
