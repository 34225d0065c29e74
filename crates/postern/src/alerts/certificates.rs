//! `certificate-expiry`: every certificate of the certificate table (keys
//! and CA entries alike: an expiring trust anchor breaks deliveries too)
//! that expires within [`FIRST_NOTICE`] alerts once, and again within
//! [`LAST_NOTICE`]. Checked at start and every [`CHECK_EVERY`].
//!
//! Each (certificate, threshold) alerts once: the node's own claim in the
//! store (`node <name>`) keeps it quiet across restarts, and the
//! destinations' claims keep the cluster to one webhook call and one mail
//! per address. A renewed certificate (another fingerprint) is a new
//! condition.

use std::sync::Arc;
use std::time::Duration;

use postern_store::{AlertClaim, AlertKind, Store};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{Alerts, Condition};
use crate::context::unix_now;

pub const FIRST_NOTICE: Duration = Duration::from_secs(30 * 86_400);
pub const LAST_NOTICE: Duration = Duration::from_secs(7 * 86_400);
pub const CHECK_EVERY: Duration = Duration::from_secs(3600);

/// One certificate that needs an alert now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiring {
    pub name: String,
    /// `30d` or `7d`: the threshold it is within.
    pub threshold: &'static str,
    pub fingerprint: String,
    pub not_after: String,
    /// Days left, rounded up (1 on its last day; 0 or less once expired).
    pub days_left: i64,
    pub subject: String,
    /// The quiet time of this condition.
    pub window: Duration,
}

/// Which of `entries` (name, subject, not_after RFC 3339, fingerprint)
/// need an alert at `now`.
pub fn expiring(entries: &[(String, String, String, String)], now: i64) -> Vec<Expiring> {
    let mut out = Vec::new();
    for (name, subject, not_after, fingerprint) in entries {
        let Ok(until) = OffsetDateTime::parse(not_after, &Rfc3339) else {
            tracing::warn!("certificate {name:?}: cannot read its end of validity {not_after:?}");
            continue;
        };
        let left = until.unix_timestamp() - now;
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        let (threshold, window) = if left <= secs(LAST_NOTICE) {
            ("7d", LAST_NOTICE)
        } else if left <= secs(FIRST_NOTICE) {
            ("30d", FIRST_NOTICE)
        } else {
            continue;
        };
        out.push(Expiring {
            name: name.clone(),
            threshold,
            fingerprint: fingerprint.clone(),
            not_after: not_after.clone(),
            days_left: (left + 86_399).div_euclid(86_400),
            subject: subject.clone(),
            window,
        });
    }
    out
}

/// Check now, then every [`CHECK_EVERY`], for ever.
pub async fn check_loop(alerts: Alerts, store: Arc<dyn Store>, node: String) {
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    loop {
        ticker.tick().await;
        let (alerts, store, node) = (alerts.clone(), Arc::clone(&store), node.clone());
        if let Err(e) =
            tokio::task::spawn_blocking(move || check(&alerts, store.as_ref(), &node)).await
        {
            tracing::warn!("certificate expiry check failed: {e}");
        }
    }
}

/// One check (blocking: store calls).
pub fn check(alerts: &Alerts, store: &dyn Store, node: &str) {
    let records = match store.certificates() {
        Ok(records) => records,
        Err(e) => {
            tracing::warn!("certificate expiry check: cannot list the certificates: {e}");
            return;
        }
    };
    let entries: Vec<(String, String, String, String)> = records
        .iter()
        .filter_map(|r| {
            let info = postern_tls::describe(&r.chain_pem).ok()?;
            Some((
                r.name.clone(),
                info.subject,
                info.not_after,
                info.sha256_fingerprint,
            ))
        })
        .collect();
    let now = unix_now();
    let me = format!("node {node}");
    for cert in expiring(&entries, now) {
        let scope = format!("{} {}", cert.threshold, cert.fingerprint);
        let window = i64::try_from(cert.window.as_secs()).unwrap_or(i64::MAX);
        let claim = AlertClaim {
            kind: AlertKind::CertificateExpiry,
            subject: &cert.name,
            scope: &scope,
            destination: &me,
        };
        // Unreachable store: alert anyway (at most hourly, by memory).
        if let Ok(false) = store.alerts().claim_alert(&claim, now, window) {
            continue;
        }
        let when = match cert.days_left {
            d if d <= 0 => format!("expired at {}", cert.not_after),
            1 => format!("expires at {}, within a day", cert.not_after),
            d => format!("expires at {}, in {d} days", cert.not_after),
        };
        alerts.raise_condition(
            Condition {
                kind: AlertKind::CertificateExpiry,
                subject: cert.name.clone(),
                host: String::new(),
                scope,
                window: cert.window,
            },
            &format!(
                "certificate {:?} ({}, SHA-256 {}) {when}",
                cert.name, cert.subject, cert.fingerprint
            ),
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, not_after: &str) -> (String, String, String, String) {
        (
            name.into(),
            "CN=x".into(),
            not_after.into(),
            format!("FP-{name}"),
        )
    }

    #[test]
    fn thresholds() {
        // 2026-12-03T00:00:00Z
        let now = 1_796_256_000;
        let rows = [
            entry("far", "2027-06-01T00:00:00Z"),
            entry("31 days", "2027-01-03T00:00:00Z"),
            entry("30 days", "2027-01-02T00:00:00Z"),
            entry("10 days", "2026-12-13T00:00:00Z"),
            entry("8 days", "2026-12-11T00:00:00Z"),
            entry("7 days", "2026-12-10T00:00:00Z"),
            entry("today", "2026-12-03T12:00:00Z"),
            entry("expired", "2026-11-30T00:00:00Z"),
            entry("unreadable", "soon"),
        ];
        let got: Vec<(String, &str, i64)> = expiring(&rows, now)
            .into_iter()
            .map(|e| (e.name, e.threshold, e.days_left))
            .collect();
        assert_eq!(
            got,
            vec![
                ("30 days".to_string(), "30d", 30),
                ("10 days".to_string(), "30d", 10),
                ("8 days".to_string(), "30d", 8),
                ("7 days".to_string(), "7d", 7),
                ("today".to_string(), "7d", 1),
                ("expired".to_string(), "7d", -3),
            ]
        );
    }
}
