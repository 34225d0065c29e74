//! The alert destinations' rate limit in SQLite (one node, but the same
//! statement as PostgreSQL's): an insert, or an update of a claim older
//! than the window; a row changed means the claim is ours.

use rusqlite::params;

use super::{write_on, SqliteStore};
use crate::alerts::{AlertClaim, AlertClaims};
use crate::StoreError;

impl AlertClaims for SqliteStore {
    fn claim_alert(
        &self,
        claim: &AlertClaim<'_>,
        now: i64,
        window: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.events();
        write_on(&mut conn, |tx| {
            let changed = tx
                .prepare_cached(
                    "INSERT INTO alert_claims (kind, subject, scope, destination, claimed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (kind, subject, scope, destination) DO UPDATE
                    SET claimed_at = excluded.claimed_at
                    WHERE alert_claims.claimed_at < ?6",
                )?
                .execute(params![
                    claim.kind.as_str(),
                    claim.subject,
                    claim.scope,
                    claim.destination,
                    now,
                    now.saturating_sub(window),
                ])?;
            Ok(changed == 1)
        })
    }

    fn prune_alert_claims(&self, before: i64) -> Result<usize, StoreError> {
        let mut conn = self.events();
        write_on(&mut conn, |tx| {
            Ok(tx.execute("DELETE FROM alert_claims WHERE claimed_at < ?1", [before])?)
        })
    }
}
