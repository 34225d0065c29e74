//! Raising alerts (SPEC §12): the mail log line `alert kind=... domain=...`,
//! `postern_alerts_total{kind}`, and a row in the store (`/api/v1/alerts`),
//! each condition (kind, domain, host) at most once an hour per node.
//! Store writes are queued and written with the learning evidence, so
//! raising one never waits for the store.
//!
//! Not yet: the webhook and e-mail destinations, the Alerts page with
//! acknowledgement and the Dashboard banner, and the kinds not raised by
//! the learning (handshake failures, required-TLS deferrals, certificate
//! expiry, cluster nodes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern_admin::Metrics;
use postern_store::{Alert, AlertKind, Store};

use crate::maillog::MailLog;

/// The same condition alerts at most once per this.
const REPEAT_AFTER: Duration = Duration::from_secs(3600);
/// Most queued alerts (a long store outage).
const MAX_PENDING: usize = 10_000;

pub struct Alerts {
    maillog: Arc<MailLog>,
    metrics: Arc<Metrics>,
    last: Mutex<HashMap<(AlertKind, String, String), Instant>>,
    pending: Mutex<Vec<Alert>>,
}

impl Alerts {
    pub fn new(maillog: Arc<MailLog>, metrics: Arc<Metrics>) -> Alerts {
        Alerts {
            maillog,
            metrics,
            last: Mutex::new(HashMap::new()),
            pending: Mutex::new(Vec::new()),
        }
    }

    /// Raise `kind` for `domain` (and `host`), unless the same condition
    /// alerted within the hour. Returns whether it was raised.
    pub fn raise(&self, kind: AlertKind, domain: &str, host: &str, detail: &str, now: i64) -> bool {
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let key = (kind, domain.to_string(), host.to_string());
            if last.get(&key).is_some_and(|at| at.elapsed() < REPEAT_AFTER) {
                return false;
            }
            last.retain(|_, at| at.elapsed() < REPEAT_AFTER);
            last.insert(key, Instant::now());
        }
        self.maillog.write(
            "alert",
            &[
                ("kind", kind.as_str()),
                ("domain", domain),
                ("host", host),
                ("detail", detail),
            ],
        );
        self.metrics.alert_raised(kind);
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() < MAX_PENDING {
            pending.push(Alert {
                kind,
                subject: domain.to_string(),
                host: host.to_string(),
                detail: detail.to_string(),
                at: now,
            });
        }
        true
    }

    /// Write the queued alerts (blocking); on failure they stay queued.
    pub fn flush(&self, store: &dyn Store) {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return;
        }
        if let Err(e) = store.alerts().record_alerts(&batch) {
            tracing::warn!("alerts: writing to the store failed, kept for later: {e}");
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let newer = std::mem::replace(&mut *pending, batch);
            pending.extend(newer);
        }
    }
}
