//! This node's row in the node registry (SPEC §9): refreshed every few
//! seconds, and at once after a reload, so `postern cluster status` on any
//! node tells which nodes run which settings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_spool::Spool;
use postern_spool::{DeliveryState, QueueId};
use postern_store::{NodeStatus, Store};

use crate::gateway::LiveConfig;

/// How often the row is refreshed without a change (SPEC: at least every 10 s).
const REFRESH: Duration = Duration::from_secs(5);

/// Who this node is (fixed for the life of the process).
pub struct Identity {
    pub name: String,
    pub hostname: String,
    pub started_at: i64,
}

pub async fn heartbeat_loop(
    identity: Identity,
    store: Arc<dyn Store>,
    live: Arc<LiveConfig>,
    spool: Arc<Spool>,
) {
    let identity = Arc::new(identity);
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let mut registered: Option<(i64, Instant)> = None;
    let mut last_error: Option<String> = None;
    loop {
        ticker.tick().await;
        let applied = live.get();
        let due = match registered {
            Some((generation, at)) => generation != applied.generation || at.elapsed() >= REFRESH,
            None => true,
        };
        if !due {
            continue;
        }
        let (store, spool, identity) = (store.clone(), spool.clone(), identity.clone());
        let generation = applied.generation;
        let result = tokio::task::spawn_blocking(move || {
            let status = NodeStatus {
                name: identity.name.clone(),
                hostname: identity.hostname.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                started_at: identity.started_at,
                last_seen: 0,
                seen_ago: 0,
                applied_generation: generation,
                fingerprints: presented_fingerprints(store.as_ref(), &applied.settings),
                queue_messages: 0,
                queue_deferred: 0,
            };
            let (messages, deferred) = queue_size(&spool);
            store.register_node(&NodeStatus {
                queue_messages: messages,
                queue_deferred: deferred,
                ..status
            })
        })
        .await;
        match result {
            Ok(Ok(())) => {
                if last_error.take().is_some() {
                    tracing::info!("node registry: this node's row is written again");
                }
                registered = Some((generation, Instant::now()));
            }
            Ok(Err(e)) => {
                // Once per distinct failure, not every few seconds.
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!("node registry not updated: {text}");
                    last_error = Some(text);
                }
            }
            Err(e) => tracing::warn!("node registry task failed: {e}"),
        }
    }
}

/// SHA-256 fingerprints of the certificates the SMTP listeners present
/// under the applied settings (the primary and the ECDSA one, if any).
fn presented_fingerprints(store: &dyn Store, settings: &postern_config::Settings) -> Vec<String> {
    let mut names = vec![settings.tls.inbound.certificate.as_str()];
    if let Some(ecdsa) = settings.effective_ecdsa_certificate() {
        names.push(ecdsa);
    }
    names
        .into_iter()
        .filter_map(|name| store.certificate(name).ok().flatten())
        .filter(|record| record.key_pem.is_some())
        .filter_map(|record| postern_tls::describe(&record.chain_pem).ok())
        .map(|info| info.sha256_fingerprint)
        .collect()
}

/// (messages, deferred recipients) in this node's spool.
fn queue_size(spool: &Spool) -> (i64, i64) {
    let ids: Vec<QueueId> = spool.list().unwrap_or_default();
    let deferred = ids
        .iter()
        .filter_map(|id| spool.load_envelope(id).ok())
        .map(|queued| {
            queued
                .recipients
                .iter()
                .filter(|r| r.state == DeliveryState::Deferred)
                .count()
        })
        .sum::<usize>();
    (
        i64::try_from(ids.len()).unwrap_or(i64::MAX),
        i64::try_from(deferred).unwrap_or(i64::MAX),
    )
}
