//! The learning evidence and the alerts in SQLite, on the events connection: it is
//! written in batches by the gateway and need not survive a power cut.

use rusqlite::{params, Row};

use super::{write_on, SqliteStore};
use crate::learned::{
    merge_batch, LearnedStore, MonitorCount, MonitorVerdict, TlsLevel, TlsObservation,
};
use crate::StoreError;

fn observation(row: &Row<'_>) -> rusqlite::Result<TlsObservation> {
    let level: String = row.get(2)?;
    let level = TlsLevel::parse(&level).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            2,
            rusqlite::types::Type::Text,
            format!("unknown TLS level {level:?}").into(),
        )
    })?;
    Ok(TlsObservation {
        domain: row.get(0)?,
        host: row.get(1)?,
        level,
        deliveries: row.get(3)?,
        first_seen: row.get(4)?,
        last_seen: row.get(5)?,
    })
}

impl LearnedStore for SqliteStore {
    fn record_observations(&self, batch: &[TlsObservation]) -> Result<(), StoreError> {
        let mut conn = self.events();
        write_on(&mut conn, |tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO tls_observations (domain, host, level, deliveries, first_seen, last_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (domain, host, level) DO UPDATE SET
                    deliveries = deliveries + excluded.deliveries,
                    first_seen = MIN(first_seen, excluded.first_seen),
                    last_seen = MAX(last_seen, excluded.last_seen)",
            )?;
            for o in merge_batch(batch) {
                stmt.execute(params![
                    o.domain,
                    o.host,
                    o.level.as_str(),
                    o.deliveries,
                    o.first_seen,
                    o.last_seen
                ])?;
            }
            Ok(())
        })
    }

    fn observations(&self) -> Result<Vec<TlsObservation>, StoreError> {
        let conn = self.events();
        let mut stmt = conn.prepare_cached(
            "SELECT domain, host, level, deliveries, first_seen, last_seen
             FROM tls_observations ORDER BY domain, host, level",
        )?;
        let rows = stmt.query_map([], observation)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn forget_domain(&self, domain: &str) -> Result<usize, StoreError> {
        Ok(self
            .events()
            .execute("DELETE FROM tls_observations WHERE domain = ?1", [domain])?)
    }

    fn prune(&self, before: i64, verdicts_before: i64) -> Result<usize, StoreError> {
        let mut conn = self.events();
        write_on(&mut conn, |tx| {
            let observations = tx.execute(
                "DELETE FROM tls_observations WHERE last_seen < ?1",
                [before],
            )?;
            let verdicts = tx.execute(
                "DELETE FROM monitor_verdicts WHERE at < ?1",
                [verdicts_before],
            )?;
            Ok(observations + verdicts)
        })
    }

    fn record_verdicts(&self, batch: &[MonitorVerdict]) -> Result<(), StoreError> {
        let mut conn = self.events();
        write_on(&mut conn, |tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO monitor_verdicts (source, domain, host, at, requirement, would_fail, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for v in batch {
                stmt.execute(params![
                    v.source,
                    v.domain,
                    v.host,
                    v.at,
                    v.requirement,
                    v.would_fail,
                    v.reason
                ])?;
            }
            Ok(())
        })
    }

    fn verdict_counts(&self, since: i64) -> Result<Vec<MonitorCount>, StoreError> {
        let conn = self.events();
        let mut stmt = conn.prepare_cached(
            "SELECT domain, COUNT(*), SUM(would_fail) FROM monitor_verdicts
             WHERE at >= ?1 AND source = 'domain' GROUP BY domain ORDER BY domain",
        )?;
        let rows = stmt.query_map([since], |row| {
            Ok(MonitorCount {
                domain: row.get(0)?,
                attempts: row.get(1)?,
                would_fail: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn recent_verdicts(
        &self,
        domain: &str,
        limit: usize,
    ) -> Result<Vec<MonitorVerdict>, StoreError> {
        let conn = self.events();
        let mut stmt = conn.prepare_cached(
            "SELECT domain, host, at, requirement, would_fail, reason, source FROM monitor_verdicts
             WHERE domain = ?1 ORDER BY at DESC, id DESC LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![domain, limit], |row| {
            Ok(MonitorVerdict {
                domain: row.get(0)?,
                host: row.get(1)?,
                at: row.get(2)?,
                requirement: row.get(3)?,
                would_fail: row.get(4)?,
                reason: row.get(5)?,
                source: row.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl crate::AlertStore for SqliteStore {
    fn record_alerts(&self, batch: &[crate::Alert]) -> Result<(), StoreError> {
        let mut conn = self.events();
        write_on(&mut conn, |tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO alerts (kind, subject, host, detail, at, node)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for a in batch {
                stmt.execute(params![
                    a.kind.as_str(),
                    a.subject,
                    a.host,
                    a.detail,
                    a.at,
                    self.node_name
                ])?;
            }
            Ok(())
        })
    }

    fn recent_alerts(&self, limit: usize) -> Result<Vec<crate::Alert>, StoreError> {
        let conn = self.events();
        let mut stmt = conn.prepare_cached(
            "SELECT kind, subject, host, detail, at FROM alerts ORDER BY at DESC, id DESC LIMIT ?1",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map([limit], |row| {
            let kind: String = row.get(0)?;
            Ok(crate::Alert {
                kind: crate::AlertKind::parse(&kind).ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(
                        0,
                        rusqlite::types::Type::Text,
                        format!("unknown alert kind {kind:?}").into(),
                    )
                })?,
                subject: row.get(1)?,
                host: row.get(2)?,
                detail: row.get(3)?,
                at: row.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
