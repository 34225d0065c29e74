//! Tracking events are written by one thread, in batches.
//!
//! Every accepted or delivered message records a few events (SPEC: `postern
//! trace`). Writing each from its own `spawn_blocking` task made every event
//! a SQLite transaction and, under load, parked hundreds of blocking-pool
//! threads on the store's mutex — threads the spool's durable writes (the
//! ones a `250` waits for) then had to queue behind. Here events go through
//! a channel to one writer thread, which commits whatever has arrived in
//! one transaction: the same events, in the same order, never delaying a
//! reply.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_store::{Store, TrackingEvent};

use crate::journal::Journal;

/// Most events per transaction.
const MAX_BATCH: usize = 1024;

/// How long the writer lets events gather after each transaction. `postern
/// trace` may lag the mail log by this much.
const GATHER: Duration = Duration::from_millis(20);

enum Msg {
    Events(Vec<TrackingEvent>),
    Flush(Sender<()>),
}

pub struct Tracker {
    tx: Sender<Msg>,
}

impl Tracker {
    /// Start the writer. Events the store cannot take go to the journal
    /// at `journal` and are written when it is back; a journal left by an
    /// earlier run is written first.
    pub fn start(store: Arc<dyn Store>, journal: PathBuf) -> std::io::Result<Tracker> {
        let (tx, rx) = channel();
        let journal = Journal::new(journal);
        std::thread::Builder::new()
            .name("postern-tracking".into())
            .spawn(move || writer(store.as_ref(), &rx, journal))?;
        Ok(Tracker { tx })
    }

    pub fn record(&self, event: TrackingEvent) {
        let _ = self.tx.send(Msg::Events(vec![event]));
    }

    pub fn record_all(&self, events: Vec<TrackingEvent>) {
        if !events.is_empty() {
            let _ = self.tx.send(Msg::Events(events));
        }
    }

    /// Wait (bounded) until everything recorded so far is written.
    pub fn flush(&self, limit: Duration) {
        let (done, wait) = channel();
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(limit);
        }
    }
}

/// How often a pending journal is tried again without new events.
const RETRY: Duration = Duration::from_secs(1);

fn writer(store: &dyn Store, rx: &Receiver<Msg>, mut journal: Journal) {
    let mut batch: Vec<TrackingEvent> = Vec::new();
    let mut flushed: Vec<Sender<()>> = Vec::new();
    // Logged once per outage, not per batch.
    let mut outage: Option<String> = None;
    // During an outage the store is tried once per RETRY, not per batch.
    let mut last_try: Option<Instant> = None;
    loop {
        let first = if journal.pending() {
            match rx.recv_timeout(RETRY) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match rx.recv() {
                Ok(msg) => Some(msg),
                Err(_) => return,
            }
        };
        let mut next = first;
        while let Some(msg) = next.take() {
            match msg {
                Msg::Events(events) => batch.extend(events),
                Msg::Flush(done) => flushed.push(done),
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        // The journal first: events stay in the order they happened.
        if journal.pending() && last_try.is_none_or(|at| at.elapsed() >= RETRY) {
            last_try = Some(Instant::now());
            match journal.replay(store) {
                Ok(n) => {
                    outage = None;
                    if n > 0 {
                        tracing::info!(
                            "{n} tracking event(s) from the local journal written to the store"
                        );
                    }
                }
                Err(e) => note_outage(&mut outage, &journal, &e.to_string()),
            }
        }
        if !batch.is_empty() {
            let result = if journal.pending() {
                Err("the store is still unreachable".to_string())
            } else {
                store.record_events(&batch).map_err(|e| {
                    last_try = Some(Instant::now());
                    e.to_string()
                })
            };
            if let Err(reason) = result {
                note_outage(&mut outage, &journal, &reason);
                if let Err(e) = journal.append(&batch) {
                    tracing::error!(
                        "{} tracking event(s) lost: the store failed ({reason}) and the journal {} too: {e}",
                        batch.len(),
                        journal.path().display()
                    );
                }
            }
            batch.clear();
        }
        let flush_asked = !flushed.is_empty();
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
        // Let the next events gather: one wake-up and one transaction per
        // interval under load, instead of one per event.
        if !flush_asked {
            std::thread::sleep(GATHER);
        }
    }
}

fn note_outage(outage: &mut Option<String>, journal: &Journal, reason: &str) {
    if outage.is_none() {
        tracing::warn!(
            "tracking events kept in {} until the store takes them: {reason}",
            journal.path().display()
        );
        *outage = Some(reason.to_string());
    }
}

/// How often old tracking events are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Delete tracking events older than `mta.tracking_retention`, soon after
/// start and then hourly. Every node of a cluster may do it; it is idempotent.
pub async fn prune_loop(store: Arc<dyn Store>, live: Arc<crate::gateway::LiveConfig>) {
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(60),
        PRUNE_EVERY,
    );
    loop {
        ticker.tick().await;
        let retention = live.get().settings.mta.tracking_retention.as_secs();
        let before =
            crate::context::unix_now().saturating_sub(i64::try_from(retention).unwrap_or(i64::MAX));
        let store = Arc::clone(&store);
        match tokio::task::spawn_blocking(move || store.prune_events(before)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!("deleted {n} tracking event(s) older than {retention} s"),
            Ok(Err(e)) => tracing::warn!("tracking events not pruned: {e}"),
            Err(e) => tracing::warn!("tracking prune task failed: {e}"),
        }
    }
}
