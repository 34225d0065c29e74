//! The queue runner: decides when each queued message is tried, runs the
//! attempts with bounded concurrency, and rewrites per-recipient state in
//! the spool after every attempt. Only IDs and due times live in memory;
//! message bodies are read from the spool when their turn comes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_admin::{Metrics, Outcome};
use postern_delivery::{
    should_bounce, transition, AttemptRecord, Bounce, Courier, FailedRecipient, MessageBody,
    Outgoing, RetryPolicy, Transition,
};
use postern_spool::{DeliveryState, Envelope, QueueId, RecipientState, Spool, SpoolError};
use postern_store::event::{self, DeliveryAttempt};
use postern_store::{event_kind, Event, TrackingEvent};
use tokio::sync::{Notify, Semaphore};

use crate::context::unix_now;
use crate::gateway::LiveConfig;
use crate::maillog::MailLog;
use crate::tracker::Tracker;

use super::events;
use super::fresh::{Fresh, Loaded};

/// Messages being attempted at once.
const MAX_ACTIVE: usize = 64;
/// Attempts to one recipient domain at once.
const MAX_PER_DOMAIN: usize = 8;

#[derive(Default)]
struct Schedule {
    due: BTreeSet<(i64, QueueId)>,
    when: HashMap<QueueId, i64>,
    in_flight: HashSet<QueueId>,
    /// Deleted by the administrator while an attempt was running.
    deleted: HashSet<QueueId>,
    /// `queue retry` while an attempt was running: applied after it.
    retry_after: HashSet<QueueId>,
}

/// Whether `queue retry` may edit a message's state now.
enum Claim {
    /// Taken out of the schedule and marked in flight: no attempt can
    /// start until [`QueueRunner::finish`].
    Claimed,
    /// An attempt is running; the retry is applied when it ends.
    Running,
}

pub struct QueueRunner {
    spool: Arc<Spool>,
    tracker: Arc<Tracker>,
    live: Arc<LiveConfig>,
    maillog: Arc<MailLog>,
    courier: Courier,
    hostname: String,
    metrics: Arc<Metrics>,
    schedule: Mutex<Schedule>,
    wake: Notify,
    active: Arc<Semaphore>,
    per_domain: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Bumped whenever the queue may have changed (for the published
    /// snapshot: nothing to publish while it stands still).
    changes: AtomicU64,
    learning: Option<Arc<crate::learning::Learning>>,
    /// Just-received messages, for their first attempt without a read back.
    fresh: Fresh,
    alerts: Option<Arc<crate::alerts::delivery::DeliveryAlerts>>,
}

impl QueueRunner {
    pub fn new(
        spool: Arc<Spool>,
        tracker: Arc<Tracker>,
        live: Arc<LiveConfig>,
        maillog: Arc<MailLog>,
        courier: Courier,
        hostname: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            spool,
            tracker,
            live,
            maillog,
            courier,
            hostname,
            metrics,
            schedule: Mutex::new(Schedule::default()),
            wake: Notify::new(),
            active: Arc::new(Semaphore::new(MAX_ACTIVE)),
            per_domain: Mutex::new(HashMap::new()),
            changes: AtomicU64::new(0),
            learning: None,
            fresh: Fresh::default(),
            alerts: None,
        }
    }

    /// Learn per-domain TLS levels from every domain delivery.
    pub fn with_learning(mut self, learning: Arc<crate::learning::Learning>) -> Self {
        self.learning = Some(learning);
        self
    }

    /// Raise alerts from every domain delivery's attempts.
    pub fn with_alerts(mut self, alerts: Arc<crate::alerts::delivery::DeliveryAlerts>) -> Self {
        self.alerts = Some(alerts);
        self
    }

    /// A count that moves whenever a message was queued, attempted,
    /// retried or deleted.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// Try `id` at `due` (unix seconds), or earlier if already scheduled earlier.
    pub fn schedule(&self, id: QueueId, due: i64) {
        self.changed();
        let Ok(mut s) = self.schedule.lock() else {
            return;
        };
        if s.in_flight.contains(&id) {
            return;
        }
        if let Some(&old) = s.when.get(&id) {
            if old <= due {
                return;
            }
            s.due.remove(&(old, id.clone()));
        }
        s.when.insert(id.clone(), due);
        s.due.insert((due, id));
        drop(s);
        self.wake.notify_one();
    }

    /// A message just stored durably as `id`: due now, and its first
    /// attempt sends `message` from memory instead of reading the file back
    /// (when it is small enough: [`Fresh::keep`]).
    pub fn schedule_received(&self, id: QueueId, envelope: Envelope, message: Vec<u8>) {
        self.fresh.keep(&id, envelope, message);
        self.schedule(id, 0);
    }

    /// Schedule everything in the spool (at start).
    pub async fn recover(&self) {
        let spool = Arc::clone(&self.spool);
        let found =
            tokio::task::spawn_blocking(move || -> Result<Vec<(QueueId, i64)>, SpoolError> {
                let mut found = Vec::new();
                for id in spool.list()? {
                    match spool.load_envelope(&id) {
                        Ok(queued) => {
                            found.push((id, earliest_due(&queued.recipients).unwrap_or(0)))
                        }
                        Err(e) => tracing::warn!("queue file {id} not scheduled: {e}"),
                    }
                }
                Ok(found)
            })
            .await;
        match found {
            Ok(Ok(found)) => {
                tracing::info!("queue runner: {} message(s) to deliver", found.len());
                for (id, due) in found {
                    self.schedule(id, due);
                }
            }
            Ok(Err(e)) => tracing::error!("queue scan failed: {e}"),
            Err(e) => tracing::error!("queue scan task failed: {e}"),
        }
    }

    pub async fn run(self: Arc<Self>) {
        self.recover().await;
        let mut reap = tokio::time::interval(Duration::from_secs(2));
        loop {
            let now = unix_now();
            let next_due = self.take_due(now);
            for id in next_due.ready {
                let Ok(permit) = Arc::clone(&self.active).acquire_owned().await else {
                    return;
                };
                let runner = Arc::clone(&self);
                tokio::spawn(async move {
                    let mut again = runner.attempt(id.clone()).await;
                    // A `queue retry` that came during the attempt: applied
                    // now, while the message is still in flight, so it edits
                    // the state the attempt wrote rather than racing it.
                    if runner.take_retry_request(&id) {
                        match runner.reset_deferred(&id, Duration::ZERO).await {
                            Ok(true) => again = Some(0),
                            Ok(false) => again = None,
                            Err(e) => tracing::error!("queue retry of {id} failed: {e}"),
                        }
                    }
                    // Out of the in-flight set first, so it can be scheduled again.
                    if runner.finish(&id) {
                        if let Some(due) = again {
                            runner.schedule(id, due);
                        }
                    }
                    drop(permit);
                });
            }
            let sleep = next_due.next.map_or(Duration::from_secs(60), |t| {
                until_unix(t).min(Duration::from_secs(60))
            });
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = self.wake.notified() => {}
                _ = reap.tick() => self.courier.reap_idle(),
            }
        }
    }

    fn take_due(&self, now: i64) -> Due {
        let Ok(mut s) = self.schedule.lock() else {
            return Due {
                ready: Vec::new(),
                next: None,
            };
        };
        let mut ready = Vec::new();
        while let Some((due, id)) = s.due.first().cloned() {
            if due > now || ready.len() >= MAX_ACTIVE {
                return Due {
                    ready,
                    next: Some(due),
                };
            }
            s.due.remove(&(due, id.clone()));
            s.when.remove(&id);
            s.in_flight.insert(id.clone());
            ready.push(id);
        }
        Due { ready, next: None }
    }

    /// The attempt is over; false when the message was deleted meanwhile.
    fn finish(&self, id: &QueueId) -> bool {
        // After an attempt or an edit: states changed, or the message left.
        self.changed();
        let deleted = match self.schedule.lock() {
            Ok(mut s) => {
                s.in_flight.remove(id);
                if s.deleted.contains(id) {
                    s.retry_after.remove(id);
                }
                s.deleted.remove(id)
            }
            Err(_) => false,
        };
        if deleted {
            self.fresh.forget(id);
            if let Err(e) = self.spool.remove(id) {
                tracing::error!("deleting {id} failed: {e}");
            }
            self.maillog.write("deleted", &[("id", id.as_str())]);
        }
        !deleted
    }

    /// `postern queue retry [ID]`: deferred recipients are due now.
    ///
    /// The state file is only ever edited by whoever holds the message "in
    /// flight": a message being delivered gets its retry when the attempt
    /// ends (its outcome written first), any other is claimed for the edit
    /// so no attempt can start meanwhile. Without that, a retry could read
    /// `deferred`, an attempt conclude `delivered`, and the retry write the
    /// old `deferred` back — a duplicate delivery.
    pub async fn retry(&self, id: Option<QueueId>) -> Result<usize, String> {
        let single = id.is_some();
        let spool = Arc::clone(&self.spool);
        let ids = match id {
            Some(id) => vec![id],
            None => tokio::task::spawn_blocking(move || spool.list())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?,
        };
        let pause = if single {
            retry_edit_pause()
        } else {
            Duration::ZERO
        };
        let mut count = 0;
        for id in ids {
            let old_due = match self.claim(&id) {
                None => return Err("queue unavailable".into()),
                Some((Claim::Running, _)) => {
                    count += 1;
                    continue;
                }
                Some((Claim::Claimed, old_due)) => old_due,
            };
            let reset = self.reset_deferred(&id, pause).await;
            let kept = self.finish(&id);
            match reset {
                Ok(true) if kept => {
                    self.schedule(id, 0);
                    count += 1;
                }
                // Delivered or deleted meanwhile: nothing to retry.
                Ok(_) => {}
                Err(e) => {
                    if let (true, Some(due)) = (kept, old_due) {
                        self.schedule(id, due);
                    }
                    return Err(e);
                }
            }
        }
        Ok(count)
    }

    /// Take `id` for a state edit, or note a retry for its running attempt.
    /// `None` when the schedule is unusable. With `Claimed` comes the due
    /// time it had, to restore when the edit fails.
    fn claim(&self, id: &QueueId) -> Option<(Claim, Option<i64>)> {
        let mut s = self.schedule.lock().ok()?;
        if s.in_flight.contains(id) {
            s.retry_after.insert(id.clone());
            return Some((Claim::Running, None));
        }
        let old_due = s.when.remove(id);
        if let Some(due) = old_due {
            s.due.remove(&(due, id.clone()));
        }
        s.in_flight.insert(id.clone());
        Some((Claim::Claimed, old_due))
    }

    fn take_retry_request(&self, id: &QueueId) -> bool {
        self.schedule
            .lock()
            .is_ok_and(|mut s| s.retry_after.remove(id))
    }

    /// Make every deferred recipient of `id` due now. The caller holds the
    /// message in flight. `Ok(false)` when the message is gone. `pause` is
    /// the test-only hold between reading and writing ([`retry_edit_pause`]).
    async fn reset_deferred(&self, id: &QueueId, pause: Duration) -> Result<bool, String> {
        let spool = Arc::clone(&self.spool);
        let id = id.clone();
        let reset = tokio::task::spawn_blocking(move || -> Result<bool, SpoolError> {
            let queued = match spool.load_envelope(&id) {
                Ok(queued) => queued,
                Err(SpoolError::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(e),
            };
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
            let mut states = queued.recipients;
            for r in states
                .iter_mut()
                .filter(|r| r.state == DeliveryState::Deferred)
            {
                r.next_attempt = None;
            }
            match spool.update_state(&id, &states) {
                Ok(()) => Ok(true),
                Err(SpoolError::NotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        reset.map_err(|e| e.to_string())
    }

    /// `postern queue delete ID`: gone now, or as soon as a running attempt ends.
    pub async fn delete(&self, id: QueueId) -> Result<(), String> {
        {
            let Ok(mut s) = self.schedule.lock() else {
                return Err("queue unavailable".into());
            };
            if let Some(due) = s.when.remove(&id) {
                s.due.remove(&(due, id.clone()));
            }
            if s.in_flight.contains(&id) {
                s.deleted.insert(id.clone());
                return Ok(());
            }
        }
        self.fresh.forget(&id);
        let spool = Arc::clone(&self.spool);
        let id2 = id.clone();
        tokio::task::spawn_blocking(move || spool.remove(&id2))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        self.changed();
        self.maillog.write("deleted", &[("id", id.as_str())]);
        Ok(())
    }

    async fn domain_permit(&self, domain: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let semaphore = {
            let mut map = self.per_domain.lock().ok()?;
            Arc::clone(
                map.entry(domain.to_string())
                    .or_insert_with(|| Arc::new(Semaphore::new(MAX_PER_DOMAIN))),
            )
        };
        semaphore.acquire_owned().await.ok()
    }

    /// One delivery attempt for every due recipient of one message.
    /// Returns when to try it again (`None`: done, or nothing to do).
    async fn attempt(&self, id: QueueId) -> Option<i64> {
        let queued = match self.fresh.take(&id) {
            Some(loaded) => Ok(Ok(loaded)),
            None => {
                let spool = Arc::clone(&self.spool);
                let id2 = id.clone();
                tokio::task::spawn_blocking(move || load(&spool, &id2)).await
            }
        };
        let queued = match queued {
            Ok(Ok(queued)) => queued,
            Ok(Err(SpoolError::NotFound { .. })) => return None,
            Ok(Err(SpoolError::Corrupt { reason, .. })) => {
                tracing::error!("queue file {id} is damaged, moving it to corrupt/: {reason}");
                let _ = self.spool.quarantine(&id, &reason);
                return None;
            }
            Ok(Err(e)) => {
                tracing::error!("cannot read queue file {id}, retrying later: {e}");
                return Some(unix_now() + 60);
            }
            Err(e) => {
                tracing::error!("queue read task failed: {e}");
                return Some(unix_now() + 60);
            }
        };
        let live = self.live.get();
        let settings = &live.settings;
        let now = unix_now();
        let envelope = &queued.envelope.envelope;
        let mut states = queued.envelope.recipients.clone();
        let retry = RetryPolicy {
            queue_lifetime: settings.mta.queue_lifetime.to_std(),
            min_backoff: settings.mta.min_backoff.to_std(),
            max_backoff: settings.mta.max_backoff.to_std(),
        };

        let mut by_domain: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in states
            .iter()
            .filter(|r| !r.state.is_final() && r.next_attempt.is_none_or(|t| t <= now))
        {
            by_domain
                .entry(domain_of(&r.address))
                .or_default()
                .push(r.address.clone());
        }
        let mut bounced = Vec::new();
        for (domain, recipients) in by_domain {
            let _permit = self.domain_permit(&domain).await;
            let outgoing = Outgoing {
                sender: &envelope.sender,
                recipients: &recipients,
                message: &queued.body,
                smtputf8: envelope.smtputf8,
                requiretls: envelope.requiretls,
                tls_required_no: envelope.tls_required_no,
            };
            let report = self
                .courier
                .deliver(
                    settings,
                    live.generation,
                    &live.client_tls,
                    &domain,
                    &outgoing,
                )
                .await;
            self.record_attempts(&id, envelope, &domain, &report.attempts);
            if let Some(learning) = &self.learning {
                learning.observe(settings, &domain, &report);
            }
            if let Some(alerts) = &self.alerts {
                alerts.observe(&domain, &report);
            }
            let relay = report.attempts.last();
            for outcome in report.outcomes {
                let Some(state) = states.iter_mut().find(|s| s.address == outcome.recipient) else {
                    continue;
                };
                state.attempts += 1;
                let result = transition(
                    &state.address,
                    &outcome.result,
                    state.attempts,
                    envelope.received_at,
                    now,
                    &retry,
                    envelope.requiretls,
                );
                match result {
                    Transition::Delivered { reply } => {
                        state.state = DeliveryState::Delivered;
                        state.next_attempt = None;
                        state.last_error = None;
                        self.log_outcome(
                            Outcome::Delivered,
                            &id,
                            envelope,
                            &state.address,
                            relay,
                            &reply,
                        );
                    }
                    Transition::Deferred {
                        next_attempt,
                        last_error,
                    } => {
                        state.state = DeliveryState::Deferred;
                        state.next_attempt = Some(next_attempt);
                        self.log_outcome(
                            Outcome::Deferred,
                            &id,
                            envelope,
                            &state.address,
                            relay,
                            &last_error,
                        );
                        state.last_error = Some(last_error);
                    }
                    Transition::Bounced { last_error, dsn } => {
                        state.state = DeliveryState::Bounced;
                        state.next_attempt = None;
                        self.log_outcome(
                            Outcome::Bounced,
                            &id,
                            envelope,
                            &state.address,
                            relay,
                            &last_error,
                        );
                        state.last_error = Some(last_error);
                        bounced.push(dsn);
                    }
                }
            }
        }
        self.conclude(id, queued, states, bounced).await
    }

    /// Write the new state; when every recipient is final, bounce what
    /// failed and remove the message.
    async fn conclude(
        &self,
        id: QueueId,
        queued: Loaded,
        states: Vec<RecipientState>,
        bounced: Vec<FailedRecipient>,
    ) -> Option<i64> {
        let envelope = queued.envelope.envelope.clone();
        let done = states.iter().all(|s| s.state.is_final());
        let next = earliest_due(&states);
        let dsn = (!bounced.is_empty() && should_bounce(&envelope.sender)).then(|| {
            Bounce {
                original_sender: &envelope.sender,
                reporting_mta: &self.hostname,
                arrival_date: envelope.received_at,
                date: unix_now(),
                failed: &bounced,
                original_headers: queued.body.head(),
            }
            .render()
        });
        let spool = Arc::clone(&self.spool);
        let hostname = self.hostname.clone();
        let id2 = id.clone();
        let sender = envelope.sender.clone();
        let inline = dsn.is_none() && done;
        let write = move || -> Result<Option<QueueId>, SpoolError> {
            // The bounce is durable before the state that says "bounced":
            // a crash or a failed write in between can repeat a delivery or
            // a bounce, never lose one.
            let bounce_id = match dsn {
                Some(message) => Some(spool.store(
                    &Envelope {
                        sender: String::new(),
                        recipients: vec![sender],
                        received_at: unix_now(),
                        client_addr: "local".into(),
                        helo: hostname,
                        tls: None,
                        body: "7BIT".into(),
                        smtputf8: false,
                        message_id: None,
                        requiretls: false,
                        tls_required_no: false,
                    },
                    &message,
                )?),
                None => None,
            };
            if done {
                // Every recipient is final: the removal is the record of
                // that. Writing the final state first would cost a re-read
                // of the message, a new file, two fsyncs and a rename per
                // message, only to be deleted right after. It becomes
                // durable with the next `queue/` fsync, not before we go
                // on: a machine crash in between delivers it again.
                if let Err(e) = spool.remove_delivered(&id2) {
                    // Not removed: record the final state at least, so a
                    // later attempt does not deliver again.
                    let _ = spool.update_state(&id2, &states);
                    return Err(e);
                }
            } else {
                spool.update_state(&id2, &states)?;
            }
            Ok(bounce_id)
        };
        // A delivered message's removal is two directory entry changes
        // and no fsync (it waits for nobody's round): done here, not
        // handed to a blocking thread and back, once per message. (Only
        // its error path writes a state file with an fsync: a broken spool.)
        let result = if inline {
            Ok(write())
        } else {
            tokio::task::spawn_blocking(write).await
        };
        match result {
            Ok(Ok(bounce_id)) => {
                if let Some(bounce_id) = bounce_id {
                    self.maillog.write(
                        "bounce-queued",
                        &[
                            ("id", bounce_id.as_str()),
                            ("for", id.as_str()),
                            ("to", &format!("<{}>", envelope.sender)),
                        ],
                    );
                    self.schedule(bounce_id, 0);
                }
                if done {
                    None
                } else {
                    Some(next.unwrap_or_else(|| unix_now() + 60))
                }
            }
            Ok(Err(e)) => {
                tracing::error!("cannot update queue file {id}: {e}");
                Some(unix_now() + 60)
            }
            Err(e) => {
                tracing::error!("queue update task failed: {e}");
                Some(unix_now() + 60)
            }
        }
    }

    fn record_attempts(
        &self,
        id: &QueueId,
        envelope: &Envelope,
        domain: &str,
        attempts: &[AttemptRecord],
    ) {
        for _ in attempts
            .iter()
            .filter(|r| r.tls_error.is_some() && !r.refused_unconnected)
        {
            self.metrics.outbound_handshake_failed();
        }
        let events: Vec<TrackingEvent> = attempts
            .iter()
            .map(|record| {
                let event = Event::DeliveryAttempt(DeliveryAttempt {
                    domain: domain.to_string(),
                    attempt: events::attempt(record),
                    requiretls: envelope.requiretls,
                    tls_required_no: envelope.tls_required_no,
                });
                TrackingEvent::new(id.as_str(), envelope.message_id.clone(), unix_now(), &event)
            })
            .collect();
        self.tracker.record_all(events);
    }

    fn log_outcome(
        &self,
        outcome: Outcome,
        id: &QueueId,
        envelope: &Envelope,
        recipient: &str,
        relay: Option<&AttemptRecord>,
        detail: &str,
    ) {
        let tls = relay.is_some_and(|r| r.tls_version.is_some());
        self.metrics.recipient_outcome(outcome, tls);
        let kind = match outcome {
            Outcome::Delivered => event_kind::DELIVERED,
            Outcome::Deferred => event_kind::DEFERRED,
            Outcome::Bounced => event_kind::BOUNCED,
        };
        let relay_text = relay.map_or(String::new(), |r| {
            format!("{}[{}]:{}", r.host, r.ip, r.port)
        });
        let verified = relay
            .and_then(|r| r.cert_verified)
            .map_or(String::new(), |v| v.to_string());
        let fallback = relay.is_some_and(|r| r.tls_fallback_plaintext);
        self.maillog.write(
            kind,
            &[
                ("id", id.as_str()),
                ("from", &format!("<{}>", envelope.sender)),
                ("to", &format!("<{recipient}>")),
                ("relay", &relay_text),
                (
                    "tls",
                    relay.and_then(|r| r.tls_version.as_deref()).unwrap_or(""),
                ),
                (
                    "cipher",
                    relay.and_then(|r| r.cipher.as_deref()).unwrap_or(""),
                ),
                ("verified", &verified),
                ("tls_fallback", if fallback { "plaintext" } else { "" }),
                (
                    if kind == "delivered" {
                        "reply"
                    } else {
                        "reason"
                    },
                    detail,
                ),
            ],
        );
        let fields = event::Outcome {
            recipient: recipient.to_string(),
            relay: relay_text,
            detail: detail.to_string(),
        };
        let event = match outcome {
            Outcome::Delivered => Event::Delivered(fields),
            Outcome::Deferred => Event::Deferred(fields),
            Outcome::Bounced => Event::Bounced(fields),
        };
        let event =
            TrackingEvent::new(id.as_str(), envelope.message_id.clone(), unix_now(), &event);
        self.tracker.record(event);
    }
}

/// Test-only: `POSTERN_TEST_RETRY_EDIT_PAUSE_MS` holds a one-message
/// `queue retry ID` between reading the state file and writing it back, so
/// that `tests/test_retry_exactly_once.py` can make that edit span an
/// attempt's conclusion on purpose. The single-writer rule makes the hold
/// harmless; without the rule it is exactly the race that delivered twice.
/// Unset (as everywhere but that test), there is no hold. At most 5 s.
fn retry_edit_pause() -> Duration {
    static PAUSE: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *PAUSE.get_or_init(|| {
        std::env::var("POSTERN_TEST_RETRY_EDIT_PAUSE_MS")
            .ok()
            .and_then(|ms| ms.trim().parse::<u64>().ok())
            .map_or(Duration::ZERO, |ms| Duration::from_millis(ms.min(5000)))
    })
}

struct Due {
    ready: Vec<QueueId>,
    next: Option<i64>,
}

/// When the next non-final recipient is due; `None` when all are final.
fn earliest_due(states: &[RecipientState]) -> Option<i64> {
    states
        .iter()
        .filter(|s| !s.state.is_final())
        .map(|s| s.next_attempt.unwrap_or(0))
        .min()
}

/// How long until the wall clock reaches unix second `t` (zero if past):
/// the runner wakes at the second a retry is due, not up to a second late.
fn until_unix(t: i64) -> Duration {
    let due = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    due.duration_since(std::time::SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or("", |(_, d)| d)
        .to_ascii_lowercase()
}

/// A queued message read from the spool and verified, for delivery.
/// Blocking: call from `spawn_blocking`.
fn load(spool: &Spool, id: &QueueId) -> Result<Loaded, SpoolError> {
    let queued = spool.load(id)?;
    let (file, offset, len) = queued.body.into_parts();
    let body = MessageBody::from_file(file, offset, len).map_err(|source| SpoolError::Io {
        action: "read queued message",
        path: spool.path().join("queue").join(id.as_str()),
        source,
    })?;
    Ok(Loaded {
        envelope: queued.envelope,
        body,
    })
}
