//! The alert destinations' rate limit in PostgreSQL, shared by the nodes.
//! One statement: `INSERT ... ON CONFLICT DO UPDATE ... WHERE` locks the
//! row, so of two nodes claiming at once the second sees the first's claim
//! and changes nothing (READ COMMITTED re-checks the WHERE on the new row).

use super::{wait, PgStore};
use crate::alerts::{AlertClaim, AlertClaims};
use crate::StoreError;

impl AlertClaims for PgStore {
    fn claim_alert(
        &self,
        claim: &AlertClaim<'_>,
        now: i64,
        window: i64,
    ) -> Result<bool, StoreError> {
        self.check_writable()?;
        let since = now.saturating_sub(window);
        self.with(&self.events, |client| {
            let changed = wait(client.execute(
                "INSERT INTO alert_claims (kind, subject, scope, destination, claimed_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (kind, subject, scope, destination) DO UPDATE
                    SET claimed_at = excluded.claimed_at
                    WHERE alert_claims.claimed_at < $6",
                &[
                    &claim.kind.as_str(),
                    &claim.subject,
                    &claim.scope,
                    &claim.destination,
                    &now,
                    &since,
                ],
            ))?;
            Ok(changed == 1)
        })
    }

    fn prune_alert_claims(&self, before: i64) -> Result<usize, StoreError> {
        self.check_writable()?;
        self.with(&self.events, |client| {
            let deleted =
                wait(client.execute("DELETE FROM alert_claims WHERE claimed_at < $1", &[&before]))?;
            Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
        })
    }
}
