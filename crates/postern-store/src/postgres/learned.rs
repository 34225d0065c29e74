//! The learning evidence in PostgreSQL, on the events connection; each
//! batch is one statement (arrays unnested), so one round trip.

use tokio_postgres::Row;

use super::{wait, PgStore};
use crate::learned::{
    merge_batch, LearnedStore, MonitorCount, MonitorVerdict, TlsLevel, TlsObservation,
};
use crate::StoreError;

fn observation(row: &Row) -> Result<TlsObservation, StoreError> {
    let level: String = row.get(2);
    Ok(TlsObservation {
        domain: row.get(0),
        host: row.get(1),
        level: TlsLevel::parse(&level)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown TLS level {level:?}")))?,
        deliveries: row.get(3),
        first_seen: row.get(4),
        last_seen: row.get(5),
    })
}

fn verdict(row: &Row) -> MonitorVerdict {
    MonitorVerdict {
        domain: row.get(0),
        host: row.get(1),
        at: row.get(2),
        requirement: row.get(3),
        would_fail: row.get(4),
        reason: row.get(5),
        source: row.get(6),
    }
}

impl LearnedStore for PgStore {
    fn record_observations(&self, batch: &[TlsObservation]) -> Result<(), StoreError> {
        self.check_writable()?;
        let merged = merge_batch(batch);
        let domains: Vec<&str> = merged.iter().map(|o| o.domain.as_str()).collect();
        let hosts: Vec<&str> = merged.iter().map(|o| o.host.as_str()).collect();
        let levels: Vec<&str> = merged.iter().map(|o| o.level.as_str()).collect();
        let counts: Vec<i64> = merged.iter().map(|o| o.deliveries).collect();
        let firsts: Vec<i64> = merged.iter().map(|o| o.first_seen).collect();
        let lasts: Vec<i64> = merged.iter().map(|o| o.last_seen).collect();
        self.with(&self.events, |client| {
            wait(client.execute(
                "INSERT INTO tls_observations (domain, host, level, deliveries, first_seen, last_seen)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[],
                                      $5::bigint[], $6::bigint[])
                 ON CONFLICT (domain, host, level) DO UPDATE SET
                    deliveries = tls_observations.deliveries + excluded.deliveries,
                    first_seen = LEAST(tls_observations.first_seen, excluded.first_seen),
                    last_seen = GREATEST(tls_observations.last_seen, excluded.last_seen)",
                &[&domains, &hosts, &levels, &counts, &firsts, &lasts],
            ))?;
            Ok(())
        })
    }

    fn observations(&self) -> Result<Vec<TlsObservation>, StoreError> {
        self.with(&self.events, |client| {
            let rows = wait(client.query(
                "SELECT domain, host, level, deliveries, first_seen, last_seen
                 FROM tls_observations
                 ORDER BY domain COLLATE \"C\", host COLLATE \"C\", level COLLATE \"C\"",
                &[],
            ))?;
            rows.iter().map(observation).collect()
        })
    }

    fn forget_domain(&self, domain: &str) -> Result<usize, StoreError> {
        self.check_writable()?;
        self.with(&self.events, |client| {
            let n =
                wait(client.execute("DELETE FROM tls_observations WHERE domain = $1", &[&domain]))?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn prune(&self, before: i64, verdicts_before: i64) -> Result<usize, StoreError> {
        self.check_writable()?;
        self.with(&self.events, |client| {
            let a = wait(client.execute(
                "DELETE FROM tls_observations WHERE last_seen < $1",
                &[&before],
            ))?;
            let b = wait(client.execute(
                "DELETE FROM monitor_verdicts WHERE at < $1",
                &[&verdicts_before],
            ))?;
            Ok(usize::try_from(a + b).unwrap_or(usize::MAX))
        })
    }

    fn record_verdicts(&self, batch: &[MonitorVerdict]) -> Result<(), StoreError> {
        self.check_writable()?;
        let sources: Vec<&str> = batch.iter().map(|v| v.source.as_str()).collect();
        let domains: Vec<&str> = batch.iter().map(|v| v.domain.as_str()).collect();
        let hosts: Vec<&str> = batch.iter().map(|v| v.host.as_str()).collect();
        let ats: Vec<i64> = batch.iter().map(|v| v.at).collect();
        let requirements: Vec<&str> = batch.iter().map(|v| v.requirement.as_str()).collect();
        let fails: Vec<bool> = batch.iter().map(|v| v.would_fail).collect();
        let reasons: Vec<&str> = batch.iter().map(|v| v.reason.as_str()).collect();
        self.with(&self.events, |client| {
            wait(client.execute(
                "INSERT INTO monitor_verdicts (source, domain, host, at, requirement, would_fail, reason)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[],
                                      $5::text[], $6::boolean[], $7::text[])",
                &[&sources, &domains, &hosts, &ats, &requirements, &fails, &reasons],
            ))?;
            Ok(())
        })
    }

    fn verdict_counts(&self, since: i64) -> Result<Vec<MonitorCount>, StoreError> {
        self.with(&self.events, |client| {
            let rows = wait(client.query(
                "SELECT domain, COUNT(*), COUNT(*) FILTER (WHERE would_fail)
                 FROM monitor_verdicts WHERE at >= $1 AND source = 'domain'
                 GROUP BY domain ORDER BY domain COLLATE \"C\"",
                &[&since],
            ))?;
            Ok(rows
                .iter()
                .map(|row| MonitorCount {
                    domain: row.get(0),
                    attempts: row.get(1),
                    would_fail: row.get(2),
                })
                .collect())
        })
    }

    fn recent_verdicts(
        &self,
        domain: &str,
        limit: usize,
    ) -> Result<Vec<MonitorVerdict>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(&self.events, |client| {
            let rows = wait(client.query(
                "SELECT domain, host, at, requirement, would_fail, reason, source FROM monitor_verdicts
                 WHERE domain = $1 ORDER BY at DESC, id DESC LIMIT $2",
                &[&domain, &limit],
            ))?;
            Ok(rows.iter().map(verdict).collect())
        })
    }
}

impl crate::AlertStore for PgStore {
    fn record_alerts(&self, batch: &[crate::Alert]) -> Result<(), StoreError> {
        self.check_writable()?;
        let kinds: Vec<&str> = batch.iter().map(|a| a.kind.as_str()).collect();
        let subjects: Vec<&str> = batch.iter().map(|a| a.subject.as_str()).collect();
        let hosts: Vec<&str> = batch.iter().map(|a| a.host.as_str()).collect();
        let details: Vec<&str> = batch.iter().map(|a| a.detail.as_str()).collect();
        let ats: Vec<i64> = batch.iter().map(|a| a.at).collect();
        self.with(&self.events, |client| {
            wait(client.execute(
                "INSERT INTO alerts (kind, subject, host, detail, at, node)
                 SELECT *, $6 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])",
                &[&kinds, &subjects, &hosts, &details, &ats, &self.node_name],
            ))?;
            Ok(())
        })
    }

    fn recent_alerts(&self, limit: usize) -> Result<Vec<crate::Alert>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(&self.events, |client| {
            let rows = wait(client.query(
                "SELECT kind, subject, host, detail, at FROM alerts ORDER BY at DESC, id DESC LIMIT $1",
                &[&limit],
            ))?;
            rows.iter()
                .map(|row| {
                    let kind: String = row.get(0);
                    Ok(crate::Alert {
                        kind: crate::AlertKind::parse(&kind).ok_or_else(|| {
                            StoreError::Corrupt(format!("unknown alert kind {kind:?}"))
                        })?,
                        subject: row.get(1),
                        host: row.get(2),
                        detail: row.get(3),
                        at: row.get(4),
                    })
                })
                .collect()
        })
    }
}
