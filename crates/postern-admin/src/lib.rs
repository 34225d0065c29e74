//! Postern's admin web UI, JSON API and Prometheus metrics (SPEC §8).
//!
//! HTTPS on `admin.listen`, with a certificate from the certificate table.
//! The crate is a thin layer over narrow interfaces and holds no business
//! logic of its own:
//!
//! * settings and certificates go through [`postern_store::Store`]
//!   (validated there; a running gateway reloads within a second),
//! * certificates are generated, checked and described by `postern-tls`,
//! * the queue is read and changed through [`QueueControl`], which the
//!   gateway implements with its queue runner,
//! * message tracking reads the store's tracking events,
//! * [`Metrics`] are counters the gateway bumps and `/metrics` renders.
//!
//! Layout: `auth` (passwords, tokens, sessions, CSRF, rate limits — no
//! HTTP), `http` (cookies, the authentication middleware, security
//! headers), `api` (the JSON API under `/api/v1/`), `pages` (server-rendered
//! HTML), `views` (what both show: certificate rows, queue entries, message
//! summaries and hops, dashboard counts), `tls` and `server` (the HTTPS
//! listener), `metrics`.

mod api;
pub mod auth;
mod cluster_queue;
mod error;
mod http;
pub mod metrics;
mod pages;
mod queue;
mod server;
mod tls;
mod views;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use postern_store::{Store, StoreError};
use tokio::net::TcpListener;

pub use metrics::{Metrics, OpenConnection, Outcome, QueueGauge};
pub use queue::{from_snapshot_entry, snapshot_entry, BoxFuture, QueueControl, QueueError};

/// What the admin server is told about its node.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    /// The node's host name (default CN of generated certificates).
    pub hostname: String,
    /// This node's `node_name`: the `node` of its own queued messages.
    pub node_name: String,
    /// The certificate table entry to serve; `None`: the one
    /// `tls.inbound.certificate` names.
    pub certificate: Option<String>,
}

/// Everything request handlers share.
pub(crate) struct AppState {
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn QueueControl>,
    pub metrics: Arc<Metrics>,
    pub sessions: auth::Sessions,
    pub limiter: auth::LoginLimiter,
    pub options: AdminOptions,
    pub tls: Arc<tls::AdminTls>,
    /// argon2 verifications at once (each costs ~19 MiB and tens of ms).
    pub password_checks: tokio::sync::Semaphore,
}

pub(crate) type Shared = Arc<AppState>;

/// The admin server, ready to serve.
pub struct AdminServer {
    state: Shared,
}

impl AdminServer {
    pub fn new(
        options: AdminOptions,
        store: Arc<dyn Store>,
        queue: Arc<dyn QueueControl>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let tls = Arc::new(tls::AdminTls::new(
            Arc::clone(&store),
            options.certificate.clone(),
        ));
        let sessions = auth::Sessions::with_defaults(Arc::clone(&store));
        let limiter = auth::LoginLimiter::with_defaults(Arc::clone(&store));
        Self {
            state: Arc::new(AppState {
                store,
                queue,
                metrics,
                sessions,
                limiter,
                options,
                tls,
                password_checks: tokio::sync::Semaphore::new(2),
            }),
        }
    }

    /// Load the certificate now, so a broken one is reported at start.
    /// Blocking.
    pub fn load_certificate(&self) -> Result<(), String> {
        self.state.tls.refresh().map(|_| ())
    }

    /// The HTTP application without TLS (for tests in this crate).
    pub(crate) fn router(&self) -> Router {
        http::router(Arc::clone(&self.state))
    }

    /// Serve HTTPS on an already bound listener until the task is aborted.
    pub async fn serve(self, listener: TcpListener) {
        let refresh = tokio::spawn(Arc::clone(&self.state.tls).refresh_loop());
        let watch = tokio::spawn(watch_password(Arc::clone(&self.state)));
        let local: Option<SocketAddr> = listener.local_addr().ok();
        if let Some(addr) = local {
            tracing::info!("listening on {addr} (admin UI and API, HTTPS)");
        }
        server::serve(listener, self.router(), Arc::clone(&self.state.tls)).await;
        refresh.abort();
        watch.abort();
    }
}

/// When the admin password changes (`postern admin passwd` in another
/// process, or on another node), remove the sessions opened with an older
/// password from the store; checked every two seconds. Those sessions stop
/// working at once anyway (each validation compares the password version);
/// this only clears their rows. A session opened with the new password,
/// even before this loop noticed the change, stays.
async fn watch_password(state: Shared) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(2));
    let mut purged: Option<auth::PasswordVersion> = None;
    loop {
        ticker.tick().await;
        let store = state.store.clone();
        let current = tokio::task::spawn_blocking(move || store.admin_password_hash()).await;
        let Ok(Ok(Some(hash))) = current else {
            continue;
        };
        let version = auth::PasswordVersion::of(&hash);
        if purged.as_ref() == Some(&version) {
            continue;
        }
        let worker = Arc::clone(&state);
        let ending = version.clone();
        let ended =
            tokio::task::spawn_blocking(move || worker.sessions.end_other_passwords(&ending)).await;
        match ended {
            Ok(Ok(ended)) => {
                if ended > 0 {
                    tracing::info!(
                        "admin password changed: ended {ended} admin session(s) opened with an \
                         older password"
                    );
                }
                purged = Some(version);
            }
            // Unreachable store: tried again on the next tick.
            Ok(Err(e)) => tracing::debug!("old admin sessions not removed yet: {e}"),
            Err(e) => tracing::warn!("old admin sessions not removed: {e}"),
        }
    }
}

/// First start: when no admin password is set, make one, store its hash
/// and return it (for the caller to print once). `None` when a password
/// exists already. Blocking (argon2).
pub fn ensure_admin_password(store: &dyn Store) -> Result<Option<String>, StoreError> {
    if store.admin_password_hash()?.is_some() {
        return Ok(None);
    }
    let password = auth::generate_password();
    let hash = auth::hash_password(&password).map_err(|e| StoreError::Database(Box::new(e)))?;
    Ok(store.init_admin_password_hash(&hash)?.then_some(password))
}

#[cfg(test)]
mod tests;
