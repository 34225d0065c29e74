//! Sending raised alerts to the `[alerts]` destinations: the webhook and
//! each address. Each (condition, destination) pair is claimed in the
//! store first ([`postern_store::AlertClaims`]): in a cluster the node that
//! claims it sends it, the others and repeats within the window do not.
//! When the store cannot be asked, this node's own memory limits it
//! instead (once per window per node): an outage is when alerts matter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use postern_delivery::Resolver;
use postern_spool::Spool;
use postern_store::{AlertClaim, Store};
use tokio::sync::{mpsc, Semaphore};

use super::{mail, webhook, Raised};
use crate::context::unix_now;
use crate::gateway::LiveConfig;
use crate::maillog::MailLog;
use crate::queue::QueueRunner;

/// Webhook deliveries (each with its retries) in flight at once.
const MAX_WEBHOOKS: usize = 16;
/// Claims are deleted this long after they were made (longer than any
/// window: a certificate's 30 days).
const CLAIM_RETENTION: i64 = 60 * 86_400;

/// Everything sending needs.
pub struct Destinations {
    pub store: Arc<dyn Store>,
    pub live: Arc<LiveConfig>,
    pub resolver: Resolver,
    pub spool: Arc<Spool>,
    pub runner: Arc<QueueRunner>,
    pub maillog: Arc<MailLog>,
    /// This node's `node_name`.
    pub node: String,
    /// This node's host name (the alert mail's sender domain).
    pub hostname: String,
}

type LocalKey = (postern_store::AlertKind, String, String, String);

impl Destinations {
    /// Send every raised alert, for ever.
    pub async fn run(self, mut raised: mpsc::Receiver<Raised>) {
        let this = Arc::new(self);
        let webhooks = Arc::new(Semaphore::new(MAX_WEBHOOKS));
        let local: Arc<Mutex<HashMap<LocalKey, Instant>>> = Arc::default();
        let mut prune = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            let raised = tokio::select! {
                next = raised.recv() => match next {
                    Some(raised) => raised,
                    None => return,
                },
                _ = prune.tick() => {
                    let store = Arc::clone(&this.store);
                    let _ = tokio::task::spawn_blocking(move || {
                        store.alerts().prune_alert_claims(unix_now() - CLAIM_RETENTION)
                    })
                    .await;
                    continue;
                }
            };
            let settings = this.live.get().settings.alerts.clone();
            let webhook = settings.webhook_url();
            let mut wanted: Vec<String> = settings
                .email
                .iter()
                .map(|a| format!("mailto:{a}"))
                .collect();
            if let Some(hook) = &webhook {
                wanted.push(format!("webhook {}", hook.url));
            }
            if wanted.is_empty() {
                continue;
            }
            let claimed = {
                let (this, local, raised) = (Arc::clone(&this), Arc::clone(&local), raised.clone());
                let host = webhook.as_ref().map(|w| w.host.clone()).unwrap_or_default();
                tokio::task::spawn_blocking(move || this.claim_all(&raised, &wanted, &host, &local))
                    .await
            };
            let Ok(claimed) = claimed else {
                continue;
            };
            let addresses: Vec<String> = claimed
                .iter()
                .filter_map(|d| d.strip_prefix("mailto:"))
                .map(str::to_string)
                .collect();
            if !addresses.is_empty() {
                let this = Arc::clone(&this);
                let raised = raised.clone();
                tokio::task::spawn_blocking(move || this.mail(&raised, &addresses));
            }
            if let Some(hook) =
                webhook.filter(|_| claimed.iter().any(|d| d.starts_with("webhook ")))
            {
                let Ok(permit) = Arc::clone(&webhooks).acquire_owned().await else {
                    return;
                };
                let this = Arc::clone(&this);
                tokio::spawn(async move {
                    webhook::send(&this, &hook, &raised).await;
                    drop(permit);
                });
            }
        }
    }

    /// The destinations of `wanted` that this node claimed for `raised`.
    /// Blocking (store calls).
    fn claim_all(
        &self,
        raised: &Raised,
        wanted: &[String],
        webhook_host: &str,
        local: &Mutex<HashMap<LocalKey, Instant>>,
    ) -> Vec<String> {
        let c = &raised.condition;
        let window = i64::try_from(c.window.as_secs()).unwrap_or(i64::MAX);
        let now = unix_now();
        let mut claimed = Vec::new();
        for destination in wanted {
            let claim = AlertClaim {
                kind: c.kind,
                subject: &c.subject,
                scope: &c.scope,
                destination,
            };
            match self.store.alerts().claim_alert(&claim, now, window) {
                Ok(true) => claimed.push(destination.clone()),
                Ok(false) => {
                    let (event, key, value) = match destination.strip_prefix("mailto:") {
                        Some(address) => ("alert-mail", "to", address),
                        None => ("alert-webhook", "webhook", webhook_host),
                    };
                    self.maillog.write(
                        event,
                        &[
                            ("kind", c.kind.as_str()),
                            ("domain", &c.subject),
                            ("host", &c.host),
                            (key, value),
                            ("result", "skipped"),
                            ("reason", "sent within the window, by this node or another"),
                        ],
                    );
                }
                Err(e) => {
                    tracing::warn!(
                        "alerts: the store cannot rate-limit {destination} ({e}); \
                         limiting it on this node"
                    );
                    let key = (
                        c.kind,
                        c.subject.clone(),
                        c.scope.clone(),
                        destination.clone(),
                    );
                    let mut local = local.lock().unwrap_or_else(|p| p.into_inner());
                    local.retain(|_, at| at.elapsed() < c.window.max(super::REPEAT_AFTER));
                    if local.get(&key).is_none_or(|at| at.elapsed() >= c.window) {
                        local.insert(key, Instant::now());
                        claimed.push(destination.clone());
                    }
                }
            }
        }
        claimed
    }

    /// Queue the alert mail to `addresses` (blocking: the spool's fsync).
    fn mail(&self, raised: &Raised, addresses: &[String]) {
        let sender = format!("postmaster@{}", self.hostname);
        let message = match mail::render(raised, &self.node, &self.hostname, &sender, addresses) {
            Ok(message) => message,
            Err(e) => {
                tracing::error!("alerts: cannot write the alert mail: {e}");
                return;
            }
        };
        // Not `TLS-Required: No`: an alert about TLS goes under the same
        // TLS policy as any other mail (docs/tls-policy.md, Alerts).
        match crate::queue::local::submit_local(
            &self.spool,
            Some(&self.runner),
            &sender,
            addresses,
            &message,
            false,
        ) {
            Ok(id) => self.maillog.write(
                "alert-mail",
                &[
                    ("id", id.as_str()),
                    ("kind", raised.condition.kind.as_str()),
                    ("domain", &raised.condition.subject),
                    ("to", &addresses.join(",")),
                ],
            ),
            Err(e) => {
                tracing::error!("alerts: queueing the alert mail failed: {e}");
                self.maillog.write(
                    "alert-mail",
                    &[
                        ("kind", raised.condition.kind.as_str()),
                        ("domain", &raised.condition.subject),
                        ("to", &addresses.join(",")),
                        ("result", "failed"),
                        ("reason", &e.to_string()),
                    ],
                );
            }
        }
    }
}
