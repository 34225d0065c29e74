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

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use postern_store::{Store, TrackingEvent};

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
    pub fn start(store: Arc<dyn Store>) -> std::io::Result<Tracker> {
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("postern-tracking".into())
            .spawn(move || writer(store.as_ref(), &rx))?;
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

fn writer(store: &dyn Store, rx: &Receiver<Msg>) {
    let mut batch: Vec<TrackingEvent> = Vec::new();
    let mut flushed: Vec<Sender<()>> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Events(events) => batch.extend(events),
                Msg::Flush(done) => flushed.push(done),
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            if let Err(e) = store.record_events(&batch) {
                tracing::warn!("{} tracking event(s) not recorded: {e}", batch.len());
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
