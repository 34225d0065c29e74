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

use postern_store::{SqliteStore, Store, TrackingEvent};

/// Most events per transaction.
const MAX_BATCH: usize = 1024;

enum Msg {
    Events(Vec<TrackingEvent>),
    Flush(Sender<()>),
}

pub struct Tracker {
    tx: Sender<Msg>,
}

impl Tracker {
    pub fn start(store: Arc<SqliteStore>) -> std::io::Result<Tracker> {
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("postern-tracking".into())
            .spawn(move || writer(&store, &rx))?;
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

fn writer(store: &SqliteStore, rx: &Receiver<Msg>) {
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
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}
