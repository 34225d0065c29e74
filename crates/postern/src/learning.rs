//! Learned per-domain TLS levels and monitor rules in the running gateway
//! (SPEC §10 items 4 and 7).
//!
//! A delivery never waits for the store: the courier asks the in-memory
//! view for a domain's level ([`LearnedLevels`]), the runner hands every
//! domain delivery to [`Learning::observe`], which updates the view and
//! queues the evidence; [`Learning::run`] writes the queue in one batch per
//! second and reloads the view from the store (what other nodes learned,
//! what an administrator forgot) every [`RELOAD`]. A store outage keeps the
//! evidence queued and the view as it was.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use postern_config::{Learn, OutboundMode, Settings};
use postern_delivery::learning::{
    delivering_attempt, learned_requirement, reached_tls_decision, session_level, would_meet,
};
use postern_delivery::policy::{LearnMode, LearnedLevel};
use postern_delivery::{DomainReport, LearnedLevels, ResultType, Source};
use postern_store::learned::{learn, normalise_name, LearnRule};
use postern_store::{AlertKind, MonitorVerdict, Store, TlsLevel, TlsObservation};

use crate::alerts::Alerts;
use crate::context::unix_now;
use crate::gateway::LiveConfig;
use crate::maillog::MailLog;

/// How often queued evidence is written.
const FLUSH: Duration = Duration::from_secs(1);
/// How often the view is reloaded from the store (so a `policy forget`
/// elsewhere applies within this long).
const RELOAD: Duration = Duration::from_secs(2);
/// How often expired evidence is deleted.
const PRUNE: Duration = Duration::from_secs(3600);
/// Monitor verdicts are kept this long (the Domains page counts 7 days).
const VERDICT_RETENTION: i64 = 8 * 86_400;
/// Most queued rows; beyond it (a long store outage) new evidence is
/// dropped rather than memory grown.
const MAX_PENDING: usize = 100_000;

#[derive(Default)]
struct State {
    /// Every observation, by domain: the store's rows plus what is queued.
    view: HashMap<String, Vec<TlsObservation>>,
    pending: Vec<TlsObservation>,
    verdicts: Vec<MonitorVerdict>,
}

pub struct Learning {
    store: Arc<dyn Store>,
    maillog: Arc<MailLog>,
    alerts: Alerts,
    state: Mutex<State>,
}

fn to_learned(level: TlsLevel) -> Option<LearnedLevel> {
    match level {
        TlsLevel::None => None,
        TlsLevel::Tls => Some(LearnedLevel::Tls),
        TlsLevel::Verified => Some(LearnedLevel::Verified),
    }
}

fn to_level(level: Option<LearnedLevel>) -> TlsLevel {
    match level {
        None => TlsLevel::None,
        Some(LearnedLevel::Tls) => TlsLevel::Tls,
        Some(LearnedLevel::Verified) => TlsLevel::Verified,
    }
}

fn mode_name(mode: OutboundMode) -> &'static str {
    match mode {
        OutboundMode::None => "none",
        OutboundMode::Opportunistic => "opportunistic",
        OutboundMode::Require => "require",
        OutboundMode::Verify => "verify",
    }
}

/// Add `o` to `rows` (same host and level: summed).
fn merge_into(rows: &mut Vec<TlsObservation>, o: &TlsObservation) {
    match rows
        .iter_mut()
        .find(|r| r.host == o.host && r.level == o.level)
    {
        Some(row) => {
            row.deliveries += o.deliveries;
            row.first_seen = row.first_seen.min(o.first_seen);
            row.last_seen = row.last_seen.max(o.last_seen);
        }
        None => rows.push(o.clone()),
    }
}

impl Learning {
    pub fn new(store: Arc<dyn Store>, maillog: Arc<MailLog>, alerts: Alerts) -> Learning {
        Learning {
            store,
            maillog,
            alerts,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn level_now(&self, settings: &Settings, domain: &str) -> Option<TlsLevel> {
        let rule = LearnRule::from_settings(&settings.tls.outbound);
        let state = self.state();
        let rows: Vec<&TlsObservation> = state.view.get(domain)?.iter().collect();
        learn(&rows, unix_now(), &rule).map(|l| l.level)
    }

    /// What one domain delivery shows: the evidence of the session that
    /// delivered, a downgrade below the learned level, a host that stopped
    /// offering STARTTLS, and the would-be verdicts of a monitor rule.
    pub fn observe(&self, settings: &Settings, domain: &str, report: &DomainReport) {
        let domain = normalise_name(domain);
        let now = unix_now();
        let delivered = delivering_attempt(report);
        self.monitor_verdicts(settings, &domain, report, now);
        if settings.tls.outbound.learn == Learn::Off {
            return;
        }
        let learned = self.level_now(settings, &domain);
        // Sessions that went on (or were refused) because STARTTLS was
        // not in the EHLO reply.
        let without_starttls = report.attempts.iter().filter(|r| {
            !r.starttls_offered
                && (delivered.is_some_and(|d| std::ptr::eq(d, *r))
                    || r.result_type == Some(ResultType::StarttlsNotSupported))
        });
        for record in without_starttls {
            if self.host_had_tls(&domain, &record.host) {
                // A middlebox masking STARTTLS (`XXXXXXXA`) looks the same.
                self.maillog.write(
                    "starttls-missing",
                    &[
                        ("domain", &domain),
                        ("host", &record.host),
                        ("ip", &record.ip.to_string()),
                    ],
                );
                self.alerts.raise(
                    AlertKind::StarttlsMissing,
                    &domain,
                    &normalise_name(&record.host),
                    &format!(
                        "{}[{}] offered STARTTLS before and did not now (EHLO masked or \
                         STARTTLS removed)",
                        record.host, record.ip
                    ),
                    now,
                );
            }
        }
        for record in report
            .attempts
            .iter()
            .filter(|r| r.source == Source::Learned && r.result_type.is_some())
        {
            self.maillog.write(
                "downgrade",
                &[
                    ("domain", &domain),
                    ("host", &record.host),
                    ("learned", learned.map_or("", TlsLevel::as_str)),
                    ("action", "deferred"),
                    ("requirement", &record.requirement),
                ],
            );
            self.alerts.raise(
                AlertKind::Downgrade,
                &domain,
                &normalise_name(&record.host),
                &format!(
                    "below the learned level {}: deferred ({})",
                    learned.map_or("", TlsLevel::as_str),
                    record.requirement
                ),
                now,
            );
        }
        let Some(record) = delivered else {
            return;
        };
        let level = to_level(session_level(record));
        let host = normalise_name(&record.host);
        if let Some(learned) = learned.filter(|l| level < *l) {
            let requirement = to_learned(learned).map(learned_requirement);
            let reason = requirement
                .map(|r| would_meet(r, record))
                .and_then(Result::err)
                .unwrap_or_default();
            self.maillog.write(
                "downgrade",
                &[
                    ("domain", &domain),
                    ("host", &host),
                    ("learned", learned.as_str()),
                    ("delivered", level.as_str()),
                    ("action", "delivered"),
                    ("reason", &reason),
                ],
            );
            self.alerts.raise(
                AlertKind::Downgrade,
                &domain,
                &host,
                &format!(
                    "delivered at {} below the learned level {}: {reason}",
                    level.as_str(),
                    learned.as_str()
                ),
                now,
            );
            self.state().verdicts.push(MonitorVerdict {
                source: "learned".into(),
                domain: domain.clone(),
                host: host.clone(),
                at: now,
                requirement: format!("learned {}", learned.as_str()),
                would_fail: true,
                reason,
            });
        }
        let observation = TlsObservation {
            domain: domain.clone(),
            host,
            level,
            deliveries: 1,
            first_seen: now,
            last_seen: now,
        };
        let mut state = self.state();
        merge_into(state.view.entry(domain).or_default(), &observation);
        if state.pending.len() < MAX_PENDING {
            state.pending.push(observation);
        }
    }

    fn host_had_tls(&self, domain: &str, host: &str) -> bool {
        let host = normalise_name(host);
        self.state().view.get(domain).is_some_and(|rows| {
            rows.iter()
                .any(|r| r.host == host && r.level > TlsLevel::None)
        })
    }

    /// SPEC §10 item 7: a `monitor = true` rule's `tls`, judged on every
    /// attempt that reached the TLS decision.
    fn monitor_verdicts(&self, settings: &Settings, domain: &str, report: &DomainReport, now: i64) {
        let Some(level) = settings
            .domain_entry(domain)
            .filter(|e| e.monitor)
            .and_then(|e| e.tls)
        else {
            return;
        };
        let delivered = delivering_attempt(report).map(std::ptr::from_ref);
        let requirement = format!("domain {}", mode_name(level));
        for record in &report.attempts {
            let carried = delivered == Some(std::ptr::from_ref(record));
            if !reached_tls_decision(record, carried) {
                continue;
            }
            let verdict = would_meet(level, record);
            let host = normalise_name(&record.host);
            if let Err(reason) = &verdict {
                self.maillog.write(
                    "monitor",
                    &[
                        ("domain", domain),
                        ("host", &host),
                        ("requirement", &requirement),
                        ("verdict", "would-fail"),
                        ("reason", reason),
                    ],
                );
            }
            let mut state = self.state();
            if state.verdicts.len() < MAX_PENDING {
                state.verdicts.push(MonitorVerdict {
                    source: "domain".into(),
                    domain: domain.to_string(),
                    host,
                    at: now,
                    requirement: requirement.clone(),
                    would_fail: verdict.is_err(),
                    reason: verdict.err().unwrap_or_default(),
                });
            }
        }
    }

    /// Write what is queued; on failure it stays queued.
    fn flush(&self) {
        self.alerts.flush(self.store.as_ref());
        let (observations, verdicts) = {
            let mut state = self.state();
            (
                std::mem::take(&mut state.pending),
                std::mem::take(&mut state.verdicts),
            )
        };
        let learned = self.store.learned();
        if !observations.is_empty() {
            if let Err(e) = learned.record_observations(&observations) {
                tracing::warn!("learned TLS levels: writing evidence failed, kept for later: {e}");
                let mut state = self.state();
                let newer = std::mem::replace(&mut state.pending, observations);
                state.pending.extend(newer);
            }
        }
        if !verdicts.is_empty() {
            if let Err(e) = learned.record_verdicts(&verdicts) {
                tracing::warn!("monitor verdicts: writing failed, kept for later: {e}");
                let mut state = self.state();
                let newer = std::mem::replace(&mut state.verdicts, verdicts);
                state.verdicts.extend(newer);
            }
        }
    }

    /// The store's rows plus what is still queued become the view.
    fn reload(&self) {
        let rows = match self.store.learned().observations() {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!("learned TLS levels: reload failed, keeping the view: {e}");
                return;
            }
        };
        let mut view: HashMap<String, Vec<TlsObservation>> = HashMap::new();
        for row in rows {
            view.entry(row.domain.clone()).or_default().push(row);
        }
        let mut state = self.state();
        for o in &state.pending {
            merge_into(view.entry(o.domain.clone()).or_default(), o);
        }
        state.view = view;
    }

    fn prune(&self, settings: &Settings) {
        let expiry =
            i64::try_from(settings.tls.outbound.learn_expiry.as_secs()).unwrap_or(i64::MAX);
        let now = unix_now();
        if let Err(e) = self
            .store
            .learned()
            .prune(now.saturating_sub(expiry), now - VERDICT_RETENTION)
        {
            tracing::warn!("learned TLS levels: pruning expired evidence failed: {e}");
        }
    }

    /// Load the view (before the first delivery), then write, reload and
    /// prune for ever. Each store call runs on the blocking pool.
    pub async fn run(self: Arc<Self>, live: Arc<LiveConfig>) {
        let mut flush = tokio::time::interval(FLUSH);
        let mut reload = tokio::time::interval(RELOAD);
        let mut prune = tokio::time::interval(PRUNE);
        loop {
            let this = Arc::clone(&self);
            let job: Box<dyn FnOnce() + Send> = tokio::select! {
                _ = flush.tick() => Box::new(move || this.flush()),
                _ = reload.tick() => Box::new(move || { this.flush(); this.reload() }),
                _ = prune.tick() => {
                    let settings = live.get().settings.clone();
                    Box::new(move || this.prune(&settings))
                }
            };
            if let Err(e) = tokio::task::spawn_blocking(job).await {
                tracing::error!("learned TLS levels task failed: {e}");
            }
        }
    }

    /// Write what is queued (at shutdown).
    pub async fn finish(self: Arc<Self>) {
        let _ = tokio::task::spawn_blocking(move || self.flush()).await;
    }
}

impl LearnedLevels for Learning {
    fn learned(&self, settings: &Settings, domain: &str) -> Option<(LearnedLevel, LearnMode)> {
        let mode = match settings.tls.outbound.learn {
            Learn::Off => return None,
            Learn::Monitor => LearnMode::Monitor,
            Learn::Enforce => LearnMode::Enforce,
        };
        let level = to_learned(self.level_now(settings, &normalise_name(domain))?)?;
        Some((level, mode))
    }
}

/// The learned levels as the store has them now, for `postern probe`: the
/// same rule and the same requirement input as delivery, without the
/// gateway's queue.
pub struct StoredLevels(HashMap<String, Vec<TlsObservation>>);

impl StoredLevels {
    pub fn load(store: &dyn Store) -> Result<StoredLevels, postern_store::StoreError> {
        let mut view: HashMap<String, Vec<TlsObservation>> = HashMap::new();
        for row in store.learned().observations()? {
            view.entry(row.domain.clone()).or_default().push(row);
        }
        Ok(StoredLevels(view))
    }

    /// `verified`, `tls`, or `None`.
    pub fn level(&self, settings: &Settings, domain: &str) -> Option<TlsLevel> {
        let rule = LearnRule::from_settings(&settings.tls.outbound);
        let rows: Vec<&TlsObservation> = self.0.get(&normalise_name(domain))?.iter().collect();
        learn(&rows, unix_now(), &rule).map(|l| l.level)
    }
}

impl LearnedLevels for StoredLevels {
    fn learned(&self, settings: &Settings, domain: &str) -> Option<(LearnedLevel, LearnMode)> {
        let mode = match settings.tls.outbound.learn {
            Learn::Off => return None,
            Learn::Monitor => LearnMode::Monitor,
            Learn::Enforce => LearnMode::Enforce,
        };
        Some((to_learned(self.level(settings, domain)?)?, mode))
    }
}
