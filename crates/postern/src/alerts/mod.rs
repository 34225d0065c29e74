//! Raising alerts (SPEC §12; docs/tls-policy.md, Alerts).
//!
//! Every raised alert goes to the mail log (`alert kind=... domain=...`),
//! `postern_alerts_total{kind}` and the store (`/api/v1/alerts`) — once per
//! condition and node within [`REPEAT_AFTER`] — and then to the
//! destinations of `[alerts]`: the webhook and each address, once per
//! condition and destination in the whole cluster ([`destinations`]).
//! Raising never waits: store rows are queued and written with the
//! learning evidence, destinations are served by their own task.
//!
//! Where the kinds come from: `downgrade` and `starttls-missing` from the
//! learning (`crate::learning`), `handshake-failures` and
//! `required-tls-deferred` from each domain's attempts ([`delivery`]),
//! `certificate-expiry` from the certificate table ([`certificates`]),
//! `node-unreachable` and `node-behind` from the node registry ([`nodes`]).

pub mod certificates;
pub mod delivery;
pub mod destinations;
mod mail;
pub mod nodes;
mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern_admin::Metrics;
use postern_store::{Alert, AlertKind, Store};
use tokio::sync::mpsc;

use crate::maillog::MailLog;

/// The same condition alerts at most once per this (per node; per
/// destination in the cluster).
pub const REPEAT_AFTER: Duration = Duration::from_secs(3600);
/// Most queued alerts (a long store outage).
const MAX_PENDING: usize = 10_000;
/// Alerts waiting for their destinations; beyond it (a flood while the
/// webhook hangs) new ones reach log, metrics and store only.
const MAX_UNSENT: usize = 1000;

/// What tells one alert condition from another, and how long it stays
/// quiet once it alerted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Condition {
    pub kind: AlertKind,
    /// The recipient domain, certificate or node concerned.
    pub subject: String,
    /// The MX host (or node host name), shown with the alert.
    pub host: String,
    /// What else tells it apart (the host, or for `certificate-expiry` the
    /// threshold and the certificate's fingerprint); not shown.
    pub scope: String,
    /// Quiet time after it alerted.
    pub window: Duration,
}

impl Condition {
    /// A condition about `subject` at `host`, quiet for [`REPEAT_AFTER`].
    pub fn new(kind: AlertKind, subject: &str, host: &str) -> Condition {
        Condition {
            kind,
            subject: subject.to_string(),
            host: host.to_string(),
            scope: host.to_string(),
            window: REPEAT_AFTER,
        }
    }
}

/// A raised alert on its way to the destinations.
#[derive(Debug, Clone)]
pub struct Raised {
    pub condition: Condition,
    pub alert: Alert,
}

struct Inner {
    maillog: Arc<MailLog>,
    metrics: Arc<Metrics>,
    last: Mutex<HashMap<(AlertKind, String, String), Instant>>,
    pending: Mutex<Vec<Alert>>,
    unsent: mpsc::Sender<Raised>,
}

/// The alert raiser, shared (cheap to clone) by everything that sees a
/// condition.
#[derive(Clone)]
pub struct Alerts {
    inner: Arc<Inner>,
}

impl Alerts {
    /// The raiser, and what [`destinations::Destinations::run`] reads.
    pub fn new(maillog: Arc<MailLog>, metrics: Arc<Metrics>) -> (Alerts, mpsc::Receiver<Raised>) {
        let (unsent, receiver) = mpsc::channel(MAX_UNSENT);
        let inner = Inner {
            maillog,
            metrics,
            last: Mutex::new(HashMap::new()),
            pending: Mutex::new(Vec::new()),
            unsent,
        };
        (
            Alerts {
                inner: Arc::new(inner),
            },
            receiver,
        )
    }

    /// Raise `kind` for `domain` (and `host`), unless the same condition
    /// alerted within the hour. Returns whether it was raised.
    pub fn raise(&self, kind: AlertKind, domain: &str, host: &str, detail: &str, now: i64) -> bool {
        self.raise_condition(Condition::new(kind, domain, host), detail, now)
    }

    /// Raise `condition`, unless it alerted on this node within its window
    /// (or the hour, whichever is shorter: a longer window is the caller's
    /// to keep, e.g. across restarts). Returns whether it was raised.
    pub fn raise_condition(&self, condition: Condition, detail: &str, now: i64) -> bool {
        let inner = &self.inner;
        {
            let mut last = inner.last.lock().unwrap_or_else(|p| p.into_inner());
            let quiet = condition.window.min(REPEAT_AFTER);
            let key = (
                condition.kind,
                condition.subject.clone(),
                condition.scope.clone(),
            );
            if last.get(&key).is_some_and(|at| at.elapsed() < quiet) {
                return false;
            }
            last.retain(|_, at| at.elapsed() < REPEAT_AFTER);
            last.insert(key, Instant::now());
        }
        inner.maillog.write(
            "alert",
            &[
                ("kind", condition.kind.as_str()),
                ("domain", &condition.subject),
                ("host", &condition.host),
                ("detail", detail),
            ],
        );
        inner.metrics.alert_raised(condition.kind);
        let alert = Alert {
            kind: condition.kind,
            subject: condition.subject.clone(),
            host: condition.host.clone(),
            detail: detail.to_string(),
            at: now,
        };
        {
            let mut pending = inner.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.len() < MAX_PENDING {
                pending.push(alert.clone());
            }
        }
        if let Err(e) = inner.unsent.try_send(Raised { condition, alert }) {
            tracing::warn!("alerts: not sent to the webhook and addresses ({e})");
        }
        true
    }

    /// Write the queued alerts (blocking); on failure they stay queued.
    pub fn flush(&self, store: &dyn Store) {
        let inner = &self.inner;
        let batch = std::mem::take(&mut *inner.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return;
        }
        if let Err(e) = store.alerts().record_alerts(&batch) {
            tracing::warn!("alerts: writing to the store failed, kept for later: {e}");
            let mut pending = inner.pending.lock().unwrap_or_else(|p| p.into_inner());
            let newer = std::mem::replace(&mut *pending, batch);
            pending.extend(newer);
        }
    }
}
