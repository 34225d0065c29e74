//! Alerts from one domain's delivery attempts, as the queue runner sees
//! them:
//!
//! * `handshake-failures`: [`HANDSHAKE_FAILURES`] failed TLS handshakes to
//!   one host within [`HANDSHAKE_WINDOW`] (a refused STARTTLS is not a
//!   handshake failure, nor is a certificate our verifier rejected: that
//!   one is a policy failure, below);
//! * `required-tls-deferred`: mail stayed queued because a required TLS
//!   level (a domain rule, MTA-STS, DANE, REQUIRETLS, `tls.outbound.mode`)
//!   could not be met. A learned level is left to `downgrade`, which the
//!   learning raises for the same attempt.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use postern_delivery::{AttemptRecord, DomainReport, Source};
use postern_store::AlertKind;

use super::Alerts;
use crate::context::unix_now;

/// Failed handshakes to one host that make an alert ...
pub const HANDSHAKE_FAILURES: usize = 3;
/// ... within this long.
pub const HANDSHAKE_WINDOW: Duration = Duration::from_secs(600);
/// Hosts whose recent failures are remembered; the oldest go beyond it.
const MAX_HOSTS: usize = 10_000;

/// How the TLS client words a failed handshake (`client/starttls.rs`).
const HANDSHAKE_FAILED: &str = "TLS handshake failed";

pub struct DeliveryAlerts {
    alerts: Alerts,
    /// Recent handshake failures per host.
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl DeliveryAlerts {
    pub fn new(alerts: Alerts) -> DeliveryAlerts {
        DeliveryAlerts {
            alerts,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Look at one domain delivery's attempts and outcomes.
    pub fn observe(&self, domain: &str, report: &DomainReport) {
        let now = unix_now();
        for record in report.attempts.iter().filter(|r| is_handshake_failure(r)) {
            if let Some(count) = self.count_failure(&record.host, Instant::now()) {
                self.alerts.raise(
                    AlertKind::HandshakeFailures,
                    domain,
                    &record.host.to_ascii_lowercase(),
                    &format!(
                        "{count} TLS handshake failures to {} within {} minutes; the last at \
                         {}[{}]: {}",
                        record.host,
                        HANDSHAKE_WINDOW.as_secs() / 60,
                        record.host,
                        record.ip,
                        record.tls_error.as_deref().unwrap_or_default()
                    ),
                    now,
                );
            }
        }
        let Some(failure) = report
            .outcomes
            .iter()
            .filter_map(|o| o.failure())
            .find(|f| !f.is_permanent())
        else {
            return;
        };
        for record in report.attempts.iter().filter(|r| is_required_tls_unmet(r)) {
            self.alerts.raise(
                AlertKind::RequiredTlsDeferred,
                domain,
                &record.host.to_ascii_lowercase(),
                &format!(
                    "deferred: {} could not be met at {}[{}] (set by {}); {failure}",
                    record.requirement,
                    record.host,
                    record.ip,
                    record.source.as_str()
                ),
                now,
            );
        }
    }

    /// Note a failure to `host` at `at`; the number of failures within the
    /// window when it reaches the threshold.
    fn count_failure(&self, host: &str, at: Instant) -> Option<usize> {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= MAX_HOSTS && !failures.contains_key(host) {
            failures.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|last| at.duration_since(*last) < HANDSHAKE_WINDOW)
            });
            if failures.len() >= MAX_HOSTS {
                return None;
            }
        }
        let times = failures.entry(host.to_ascii_lowercase()).or_default();
        while times
            .front()
            .is_some_and(|first| at.duration_since(*first) >= HANDSHAKE_WINDOW)
        {
            times.pop_front();
        }
        times.push_back(at);
        if times.len() > HANDSHAKE_FAILURES {
            times.pop_front();
        }
        (times.len() >= HANDSHAKE_FAILURES).then_some(times.len())
    }
}

fn is_handshake_failure(record: &AttemptRecord) -> bool {
    record
        .tls_error
        .as_deref()
        .is_some_and(|e| e.starts_with(HANDSHAKE_FAILED))
}

/// A TLS policy failure under a requirement other than a learned level.
fn is_required_tls_unmet(record: &AttemptRecord) -> bool {
    record.requirement_met == Some(false) && record.source != Source::Learned
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_admin::Metrics;
    use std::sync::Arc;

    fn raiser() -> DeliveryAlerts {
        let dir = std::env::temp_dir().join(format!("postern-alerts-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let log = crate::maillog::MailLog::open(&dir.join("mail.log")).expect("log");
        let (alerts, _rx) = Alerts::new(Arc::new(log), Arc::new(Metrics::new()));
        DeliveryAlerts::new(alerts)
    }

    #[test]
    fn three_failures_within_ten_minutes_alert() {
        let d = raiser();
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        assert_eq!(d.count_failure("MX.partner.test", t0), None);
        assert_eq!(d.count_failure("mx.partner.test", t0 + 4 * minute), None);
        // Another host's failures do not count for this one.
        assert_eq!(d.count_failure("mx2.partner.test", t0 + 5 * minute), None);
        assert_eq!(d.count_failure("mx.partner.test", t0 + 9 * minute), Some(3));
        // The first fell out of the window: two within ten minutes.
        assert_eq!(d.count_failure("mx.partner.test", t0 + 25 * minute), None);
        assert_eq!(d.count_failure("mx.partner.test", t0 + 26 * minute), None);
        assert_eq!(
            d.count_failure("mx.partner.test", t0 + 27 * minute),
            Some(3)
        );
    }

    fn record() -> AttemptRecord {
        use postern_config::OutboundMode;
        AttemptRecord {
            host: "mx.partner.test".into(),
            ip: std::net::Ipv4Addr::LOCALHOST.into(),
            port: 25,
            local_ip: None,
            mode: OutboundMode::Opportunistic,
            requirement: "global opportunistic".into(),
            source: Source::Global,
            result_type: None,
            starttls_offered: true,
            tls_version: None,
            cipher: None,
            cert_verified: None,
            verify_error: None,
            cert_problem: None,
            cert_names: Vec::new(),
            cert_chain: Vec::new(),
            tls_error: None,
            tls_fallback_plaintext: false,
            reply: String::new(),
            mta_sts: None,
            would_fail: Vec::new(),
            requirement_met: None,
            refused_unconnected: false,
            policy: postern_delivery::Requirement::at(
                OutboundMode::Opportunistic,
                Source::Global,
                "mx.partner.test",
            ),
        }
    }

    #[test]
    fn which_attempts_count() {
        let mut record = record();
        assert!(!is_handshake_failure(&record));
        record.tls_error = Some("TLS handshake failed: peer closed the connection".into());
        assert!(is_handshake_failure(&record));
        record.tls_error = Some("STARTTLS refused: 454 4.7.0 TLS not available".into());
        assert!(!is_handshake_failure(&record));
        record.tls_error = Some("certificate verification failed: self-signed".into());
        assert!(!is_handshake_failure(&record));

        record.requirement_met = Some(false);
        record.source = Source::Domain;
        assert!(is_required_tls_unmet(&record));
        record.source = Source::Learned;
        assert!(
            !is_required_tls_unmet(&record),
            "left to the downgrade alert"
        );
        record.source = Source::MtaSts;
        record.requirement_met = None;
        assert!(
            !is_required_tls_unmet(&record),
            "never got to the TLS decision"
        );
    }
}
