//! Wiring of the admin UI and API (`postern-admin`) into the gateway: the
//! queue interface it gets (reads from the spool, changes through the queue
//! runner), the first admin password, and the server task.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use postern_admin::{AdminOptions, AdminServer, BoxFuture, QueueControl, QueueError};
use postern_spool::{QueueId, QueuedEnvelope, Spool, SpoolError};
use postern_store::Store;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::Shared;
use crate::context::Context;
use crate::queue::QueueRunner;

/// The running gateway's queue as the admin server sees it.
struct AdminQueue {
    spool: Arc<Spool>,
    runner: Arc<QueueRunner>,
}

fn failed(error: impl std::fmt::Display) -> QueueError {
    QueueError::Failed(error.to_string())
}

impl QueueControl for AdminQueue {
    fn list(&self) -> Result<Vec<QueuedEnvelope>, QueueError> {
        let ids = self.spool.list().map_err(failed)?;
        // A message delivered (removed) between list and load is skipped.
        Ok(ids
            .iter()
            .filter_map(|id| self.spool.load_envelope(id).ok())
            .collect())
    }

    fn get(&self, id: &QueueId) -> Result<QueuedEnvelope, QueueError> {
        match self.spool.load_envelope(id) {
            Ok(queued) => Ok(queued),
            Err(SpoolError::NotFound { .. }) => Err(QueueError::NotFound),
            Err(e) => Err(failed(e)),
        }
    }

    fn retry(&self, id: QueueId) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            self.runner
                .retry(Some(id))
                .await
                .map(|_| ())
                .map_err(failed)
        })
    }

    fn delete(&self, id: QueueId) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move { self.runner.delete(id).await.map_err(failed) })
    }
}

/// Set the first admin password if there is none (printed once, here)
/// and load the admin certificate: the slow part, done before the gateway
/// starts answering.
pub async fn prepare(ctx: &Context, shared: &Arc<Shared>, listen: &str) -> Result<AdminServer> {
    let store: Arc<dyn Store> = ctx.store.clone();
    let first = {
        let store = Arc::clone(&store);
        tokio::task::spawn_blocking(move || postern_admin::ensure_admin_password(store.as_ref()))
            .await?
            .context("setting the first admin password")?
    };
    let url = format!("https://{listen}/");
    if let Some(password) = first {
        // Shown this once; only its argon2id hash is stored.
        eprintln!(
            "postern: admin password for {url} (shown only now; change it with `postern admin passwd`): {password}"
        );
    }
    let server = AdminServer::new(
        AdminOptions {
            hostname: ctx.hostname.clone(),
            node_name: ctx.node_name.clone(),
            certificate: ctx.node.admin.certificate.clone(),
        },
        store,
        Arc::new(AdminQueue {
            spool: Arc::clone(&shared.spool),
            runner: Arc::clone(&shared.runner),
        }),
        Arc::clone(&shared.metrics),
    );
    let server = tokio::task::spawn_blocking(move || server.load_certificate().map(|()| server))
        .await?
        .map_err(anyhow::Error::msg)
        .context("loading the admin certificate")?;
    Ok(server)
}

/// Serve on the bound listener until aborted.
pub fn serve(server: AdminServer, listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(server.serve(listener))
}
