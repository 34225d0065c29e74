//! This node's queue, published to the store for the other nodes of a
//! cluster (SPEC §9: the Queue page and `/api/v1/queue` list every node's
//! queue). One snapshot row per node, replaced as a whole:
//!
//! * at most once a second (less often for a large queue, see
//!   [`PAUSE_PER_ENTRY`]), and only when the queue runner saw a change (a
//!   message accepted, attempted, retried or deleted) — or every
//!   [`REPUBLISH`] so its age tells that the node is alive;
//! * the oldest [`SNAPSHOT_MAX_ENTRIES`] messages (their envelopes and
//!   recipient states, never bodies) plus the count of all of them, so a
//!   huge queue costs a bounded read of the spool and a bounded row.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_spool::{DeliveryState, Spool, SpoolError};
use postern_store::{QueueSnapshot, Store, StoreError, SNAPSHOT_MAX_ENTRIES};

use super::QueueRunner;

/// How often a change is looked for.
const EVERY: Duration = Duration::from_secs(1);
/// An unchanged queue is published again this often.
const REPUBLISH: Duration = Duration::from_secs(30);
/// Added to the pause after a snapshot per message in it. Building one
/// costs about 17 µs per message (a 5,000-message snapshot about 85 ms of
/// CPU, measured): with this pause a busy, large queue costs at most about
/// 2 % of a core, and a small one is still published every second.
const PAUSE_PER_ENTRY: Duration = Duration::from_millis(1);

pub async fn publish_loop(
    node: String,
    store: Arc<dyn Store>,
    spool: Arc<Spool>,
    runner: Arc<QueueRunner>,
) {
    let mut ticker = tokio::time::interval(EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // (runner change count, when published, what) of the last publication.
    let mut last: Option<(u64, Instant, QueueSnapshot)> = None;
    let mut last_error: Option<String> = None;
    let mut next_build = Instant::now();
    loop {
        ticker.tick().await;
        if Instant::now() < next_build {
            continue;
        }
        // Read before the spool: a change after this is seen next time.
        let changes = runner.changes();
        if let Some((seen, at, _)) = &last {
            if *seen == changes && at.elapsed() < REPUBLISH {
                continue;
            }
        }
        let (spool2, node2) = (Arc::clone(&spool), node.clone());
        let snapshot = match tokio::task::spawn_blocking(move || build(&spool2, &node2)).await {
            Ok(Ok(snapshot)) => {
                let entries = u32::try_from(snapshot.entries.len()).unwrap_or(u32::MAX);
                next_build = Instant::now() + PAUSE_PER_ENTRY * entries;
                snapshot
            }
            Ok(Err(e)) => {
                tracing::warn!("queue snapshot not published: reading the spool: {e}");
                continue;
            }
            Err(e) => {
                tracing::warn!("queue snapshot task failed: {e}");
                continue;
            }
        };
        if let Some((seen, at, published)) = &mut last {
            if *published == snapshot && at.elapsed() < REPUBLISH {
                *seen = changes;
                continue;
            }
        }
        let store2 = Arc::clone(&store);
        let sent = snapshot.clone();
        match tokio::task::spawn_blocking(move || store2.publish_queue(&sent)).await {
            Ok(Ok(())) => {
                if last_error.take().is_some() {
                    tracing::info!("queue snapshot: published to the store again");
                }
                last = Some((changes, Instant::now(), snapshot));
            }
            // The store logs its own outage, once; tried again next second.
            Ok(Err(StoreError::Unreachable(_))) => {}
            Ok(Err(e)) => {
                // Once per distinct failure, not every second.
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!("queue snapshot not published: {text}");
                    last_error = Some(text);
                }
            }
            Err(e) => tracing::warn!("queue snapshot task failed: {e}"),
        }
    }
}

/// The snapshot of `spool` now: its oldest messages and the count of all.
fn build(spool: &Spool, node: &str) -> Result<QueueSnapshot, SpoolError> {
    let ids = spool.list()?;
    let mut entries = Vec::new();
    let mut deferred = 0i64;
    // `list` is oldest first. A message delivered since is skipped.
    for queued in ids
        .iter()
        .take(SNAPSHOT_MAX_ENTRIES)
        .filter_map(|id| spool.load_envelope(id).ok())
    {
        let waiting = queued
            .recipients
            .iter()
            .filter(|r| r.state == DeliveryState::Deferred)
            .count();
        deferred += i64::try_from(waiting).unwrap_or(i64::MAX);
        entries.push(postern_admin::snapshot_entry(&queued));
    }
    Ok(QueueSnapshot {
        node: node.to_string(),
        messages: i64::try_from(ids.len()).unwrap_or(i64::MAX),
        deferred,
        entries,
        published_at: 0,
        age: 0,
    })
}
