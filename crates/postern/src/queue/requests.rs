//! Retry and delete asked of this node by another node of the cluster
//! (SPEC §9: carried out by the owning node within 2 s, through the store).
//! The requests wait in the store; this node looks for its own when the
//! store's `NOTIFY` hint wakes it and every [`POLL`] in any case, carries
//! each out through its queue runner — exactly as `postern queue
//! retry|delete` does, so the single-writer rule holds (a retry during an
//! attempt takes effect after it) — and records the outcome.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use postern_spool::QueueId;
use postern_store::{QueueAction, QueueRequest, Store, StoreError};

use super::QueueRunner;

/// The fallback poll (the hint is only a hint): well inside the 2 s.
const POLL: Duration = Duration::from_millis(500);

pub async fn serve(node: String, store: Arc<dyn Store>, runner: Arc<QueueRunner>) {
    // Outcomes carried out but not yet recorded (the store went away in
    // between): recorded later, never carried out twice.
    let mut unrecorded: HashMap<i64, Result<String, String>> = HashMap::new();
    let mut last_error: Option<String> = None;
    loop {
        match store.queue_hint() {
            Some(hint) => {
                tokio::select! {
                    () = hint.notified() => {}
                    () = tokio::time::sleep(POLL) => {}
                }
            }
            None => tokio::time::sleep(POLL).await,
        }
        let (store2, node2) = (Arc::clone(&store), node.clone());
        let waiting = match tokio::task::spawn_blocking(move || {
            store2.waiting_queue_requests(&node2)
        })
        .await
        {
            Ok(Ok(waiting)) => {
                if last_error.take().is_some() {
                    tracing::info!("queue requests from other nodes: read again");
                }
                waiting
            }
            // The store logs its own outage, once.
            Ok(Err(StoreError::Unreachable(_))) => continue,
            Ok(Err(e)) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!("queue requests from other nodes not read: {text}");
                    last_error = Some(text);
                }
                continue;
            }
            Err(e) => {
                tracing::warn!("queue request task failed: {e}");
                continue;
            }
        };
        for request in waiting {
            let outcome = match unrecorded.remove(&request.id) {
                Some(outcome) => outcome,
                None => carry_out(&runner, &request).await,
            };
            let store2 = Arc::clone(&store);
            let (id, sent) = (request.id, outcome.clone());
            let recorded =
                tokio::task::spawn_blocking(move || store2.finish_queue_request(id, &sent)).await;
            if !matches!(recorded, Ok(Ok(()))) {
                unrecorded.insert(request.id, outcome);
            }
        }
    }
}

async fn carry_out(runner: &QueueRunner, request: &QueueRequest) -> Result<String, String> {
    let id: QueueId = request
        .queue_id
        .parse()
        .map_err(|e| format!("\"{}\" is not a queue id: {e}", request.queue_id))?;
    let outcome = match request.action {
        QueueAction::Retry => match runner.retry(Some(id.clone())).await {
            Ok(0) => Err(format!(
                "{id} is no longer queued here (delivered or deleted)"
            )),
            Ok(_) => Ok(format!("{id}: deferred recipients are due now")),
            Err(e) => Err(e),
        },
        QueueAction::Delete => runner
            .delete(id.clone())
            .await
            .map(|()| format!("{id} deleted")),
    };
    match &outcome {
        Ok(text) => tracing::info!(
            "queue request {} from node {}: {text}",
            request.id,
            request.requested_by
        ),
        Err(text) => tracing::warn!(
            "queue request {} from node {} ({} {id}) failed: {text}",
            request.id,
            request.requested_by,
            request.action.as_str()
        ),
    }
    outcome
}
