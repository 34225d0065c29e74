//! [`PgStore`]: a cluster's installation in PostgreSQL (SPEC §9).
//!
//! The client is tokio-postgres (with tokio-postgres-rustls on aws-lc-rs).
//! The [`Store`](crate::Store) interface is synchronous — the gateway calls
//! it from `spawn_blocking`, the CLI directly — so the store owns a small
//! runtime (one worker thread) that drives the sockets, and callers wait
//! for each statement with [`block_on`] on their own thread. A
//! tokio-postgres client future only talks to its connection task through
//! channels, so waiting for it needs no runtime and works from any thread.
//!
//! Connections: `main` for settings, certificates and credentials, `events`
//! for tracking events and the node registry (so a batch of events does not
//! hold up the generation poll), and a listener for `LISTEN` (a change
//! hint; the generation in the table stays the truth). A broken connection
//! is opened again on the next call.
//!
//! Writes run in a transaction holding `pg_advisory_xact_lock`: one writer
//! at a time in the whole installation, like SQLite's `BEGIN IMMEDIATE`, so
//! every read-check-write sequence of the rules sees what it changes.

mod alert_claims;
mod alert_review;
pub mod conninfo;
mod events;
mod learned;
mod mta_sts;
mod queue;
mod row;
mod schema;
mod tls;
mod tlsrpt;
mod tx;

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio_postgres::{Client, NoTls};

use crate::backend::{Backend, TxBody};

use crate::{
    EventQuery, MtaStsRecord, NodeStatus, QueueAction, QueueRequest, QueueSnapshot, StoreError,
    TrackingEvent,
};
use conninfo::{ChannelBinding, ConnInfo, Host, SslMode};
use tx::PgTx;

/// Advisory lock key of the installation-wide write lock ("PSTW").
const WRITE_LOCK: i64 = 0x5053_5457;

/// The `NOTIFY` channel a write's commit signals on.
pub(crate) const CHANNEL: &str = "postern_changes";

/// The PostgreSQL store.
pub struct PgStore {
    info: ConnInfo,
    node_name: String,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// `None` only while dropping.
    runtime: Option<Runtime>,
    main: Mutex<Option<Client>>,
    events: Mutex<Option<Client>>,
    /// Set when the database's schema is newer than this binary: reads
    /// work, writes are refused.
    newer_schema: Option<i64>,
    /// Signalled when another process committed a change (a hint).
    changes: Arc<tokio::sync::Notify>,
    /// Signalled when a queue request was made (a hint: any node's).
    queue_wake: Arc<tokio::sync::Notify>,
    /// The last failed connection attempt: for a second after it, calls
    /// fail at once instead of each waiting for a connect timeout.
    failed: Mutex<Option<(std::time::Instant, String)>>,
}

/// See [`PgStore::failed`].
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.info.redacted())
            .finish()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio refuses inside async code.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Wait for `future` on this thread (see the module documentation).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
        std::thread::park();
    }
}

impl PgStore {
    /// Connect to the store at `url` (see [`conninfo`]), migrate its schema
    /// (under an advisory lock), and start listening for changes.
    pub fn open(url: &str, node_name: &str) -> Result<PgStore, StoreError> {
        let info = ConnInfo::parse(url, &|name| std::env::var(name).ok())
            .map_err(StoreError::BadLocation)?;
        let tls = tls::client_config(&info)
            .map_err(StoreError::BadLocation)?
            .map(tokio_postgres_rustls::MakeRustlsConnect::new);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("postern-pg")
            .enable_all()
            .build()
            .map_err(|source| StoreError::Io {
                path: "PostgreSQL client runtime".to_string(),
                source,
            })?;
        let mut store = PgStore {
            info,
            node_name: node_name.to_string(),
            tls,
            runtime: Some(runtime),
            main: Mutex::new(None),
            events: Mutex::new(None),
            newer_schema: None,
            changes: Arc::new(tokio::sync::Notify::new()),
            queue_wake: Arc::new(tokio::sync::Notify::new()),
            failed: Mutex::new(None),
        };
        let client = store.connect()?;
        store.newer_schema = schema::migrate(&client)?;
        *lock(&store.main) = Some(client);
        store.start_listener()?;
        Ok(store)
    }

    fn runtime(&self) -> Result<&Runtime, StoreError> {
        self.runtime
            .as_ref()
            .ok_or_else(|| StoreError::Unreachable("the store is shutting down".to_string()))
    }

    fn config(&self) -> tokio_postgres::Config {
        let info = &self.info;
        let mut config = tokio_postgres::Config::new();
        match &info.host {
            Host::Tcp(host) => config.host(host),
            Host::Unix(dir) => config.host_path(dir),
        };
        config
            .port(info.port)
            .dbname(&info.dbname)
            .user(&info.user)
            .application_name(&info.application_name)
            .connect_timeout(info.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .channel_binding(match info.channel_binding {
                ChannelBinding::Disable => tokio_postgres::config::ChannelBinding::Disable,
                ChannelBinding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
                ChannelBinding::Require => tokio_postgres::config::ChannelBinding::Require,
            })
            .ssl_mode(match info.sslmode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                _ => tokio_postgres::config::SslMode::Require,
            });
        if let Some(password) = info.password() {
            config.password(password);
        }
        config
    }

    /// Open one connection; its socket is driven by the store's runtime.
    fn connect(&self) -> Result<Client, StoreError> {
        let config = self.config();
        let tls = self.tls.clone();
        let connecting = self.runtime()?.spawn(async move {
            match tls {
                Some(tls) => {
                    let (client, connection) = config.connect(tls).await?;
                    tokio::spawn(drive(connection));
                    Ok(client)
                }
                None => {
                    let (client, connection) = config.connect(NoTls).await?;
                    tokio::spawn(drive(connection));
                    Ok(client)
                }
            }
        });
        match block_on(connecting) {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(error)) => Err(self.connect_error(&error)),
            Err(error) => Err(StoreError::Unreachable(format!(
                "connecting to {}: {error}",
                self.info.redacted()
            ))),
        }
    }

    /// A connection failure in words an administrator can act on; never
    /// the password (tokio-postgres errors do not carry it).
    fn connect_error(&self, error: &tokio_postgres::Error) -> StoreError {
        let text = error_chain(error);
        let url = self.info.redacted();
        if text.contains("server does not support TLS") {
            return StoreError::Unreachable(format!(
                "{url}: the server does not offer TLS, and sslmode={} refuses plaintext \
                 (enable ssl on the server, or write sslmode=disable to allow plaintext)",
                self.info.sslmode.as_str()
            ));
        }
        if let Some(db) = error.as_db_error() {
            return StoreError::Unreachable(format!("{url}: {}", db.message()));
        }
        StoreError::Unreachable(format!("{url}: {text}"))
    }

    /// Run `op` on the connection in `slot`, connecting first when it is
    /// missing or broken; a connection that broke meanwhile is dropped.
    fn with<T>(
        &self,
        slot: &Mutex<Option<Client>>,
        op: impl FnOnce(&Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = lock(slot);
        let client = match guard.take().filter(|c| !c.is_closed()) {
            Some(client) => client,
            None => {
                let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((at, reason)) = failed.as_ref() {
                    if at.elapsed() < RECONNECT_PAUSE {
                        return Err(StoreError::Unreachable(reason.clone()));
                    }
                }
                match self.connect() {
                    Ok(client) => {
                        *failed = None;
                        client
                    }
                    Err(error) => {
                        if let StoreError::Unreachable(reason) = &error {
                            *failed = Some((std::time::Instant::now(), reason.clone()));
                        }
                        return Err(error);
                    }
                }
            }
        };
        let result = op(&client);
        if !client.is_closed() {
            *guard = Some(client);
        }
        result
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        match self.newer_schema {
            Some(found) => Err(StoreError::UnsupportedSchema {
                found,
                supported: schema::SCHEMA_VERSION,
            }),
            None => Ok(()),
        }
    }

    /// `LISTEN` on a connection of its own, again after every reconnect;
    /// each notification (and each reconnect) wakes [`Self::changes`].
    fn start_listener(&self) -> Result<(), StoreError> {
        let config = self.config();
        let tls = self.tls.clone();
        let wake = Wake2 {
            changes: Arc::clone(&self.changes),
            queue: Arc::clone(&self.queue_wake),
        };
        let url = self.info.redacted();
        self.runtime()?.spawn(async move {
            let mut failing = false;
            loop {
                match listen_once(&config, tls.clone(), &wake).await {
                    Ok(()) => failing = false,
                    Err(error) => {
                        if !failing {
                            tracing::warn!("change notifications from {url} stopped: {error}");
                        }
                        failing = true;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Ok(())
    }

    /// A hint that the store may have changed (a `NOTIFY` arrived, or the
    /// listener reconnected); the generation is still to be read.
    pub fn changes(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.changes)
    }
}

async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(error) = connection.await {
        tracing::debug!("PostgreSQL connection ended: {error}");
    }
}

/// What the listener wakes: settings/certificate changes, queue requests.
struct Wake2 {
    changes: Arc<tokio::sync::Notify>,
    queue: Arc<tokio::sync::Notify>,
}

/// One listening session: until its connection ends.
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    wake: &Wake2,
) -> Result<(), tokio_postgres::Error> {
    match tls {
        Some(tls) => {
            let (client, connection) = config.connect(tls).await?;
            listen_on(client, connection, wake).await
        }
        None => {
            let (client, connection) = config.connect(NoTls).await?;
            listen_on(client, connection, wake).await
        }
    }
}

async fn listen_on<S, T>(
    client: Client,
    mut connection: tokio_postgres::Connection<S, T>,
    wake: &Wake2,
) -> Result<(), tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let statement = format!("LISTEN {CHANNEL}; LISTEN {}", queue::QUEUE_CHANNEL);
    let listen = client.batch_execute(&statement);
    let mut listen = pin!(listen);
    // Drive the connection until LISTEN is through, then read messages.
    let mut listening = false;
    std::future::poll_fn(|cx| loop {
        if !listening {
            if let Poll::Ready(result) = listen.as_mut().poll(cx) {
                result?;
                listening = true;
                // Changes and requests made while we were not listening.
                wake.changes.notify_one();
                wake.queue.notify_one();
            }
        }
        match connection.poll_message(cx) {
            Poll::Ready(Some(Ok(tokio_postgres::AsyncMessage::Notification(note)))) => {
                if note.channel() == queue::QUEUE_CHANNEL {
                    wake.queue.notify_one();
                } else {
                    wake.changes.notify_one();
                }
            }
            Poll::Ready(Some(Ok(_))) => {}
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(error)),
            Poll::Ready(None) => return Poll::Ready(Ok(())),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

fn lock(slot: &Mutex<Option<Client>>) -> MutexGuard<'_, Option<Client>> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An error and its causes, as one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        if error.is_closed() {
            return StoreError::Unreachable(error_chain(&error));
        }
        match error.code() {
            Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                StoreError::Busy(error_chain(&error))
            }
            _ => StoreError::Database(Box::new(error)),
        }
    }
}

/// Run a statement future to its end on this thread.
pub(crate) fn wait<T>(
    future: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, StoreError> {
    block_on(future).map_err(StoreError::from)
}

impl Backend for PgStore {
    fn read(&self, body: TxBody<'_>) -> Result<(), StoreError> {
        self.with(&self.main, |client| body(&mut PgTx::new(client)))
    }

    fn write(&self, wait_for: Duration, body: TxBody<'_>) -> Result<(), StoreError> {
        self.check_writable()?;
        self.with(&self.main, |client| {
            let millis = wait_for.as_millis().max(1);
            wait(client.batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = '{millis}ms'; \
                 SELECT pg_advisory_xact_lock({WRITE_LOCK})"
            )))?;
            match body(&mut PgTx::new(client)) {
                Ok(()) => wait(client.batch_execute("COMMIT")),
                Err(error) => {
                    // A broken connection rolls back by itself.
                    let _ = wait(client.batch_execute("ROLLBACK"));
                    Err(error)
                }
            }
        })
    }

    fn generation(&self) -> Result<i64, StoreError> {
        self.with(&self.main, |client| {
            crate::backend::Transaction::generation(&mut PgTx::new(client))
        })
    }

    fn insert_events(&self, batch: &[TrackingEvent]) -> Result<(), StoreError> {
        self.check_writable()?;
        self.with(&self.events, |client| {
            events::insert(client, &self.node_name, batch)
        })
    }

    fn events_for(
        &self,
        queue_id: &str,
        message_ids: [&str; 2],
    ) -> Result<Vec<TrackingEvent>, StoreError> {
        self.with(&self.events, |client| {
            events::for_message(client, queue_id, message_ids)
        })
    }

    fn recent_events(&self, limit: usize) -> Result<Vec<TrackingEvent>, StoreError> {
        self.with(&self.events, |client| events::recent(client, limit))
    }

    fn search_events(&self, query: &EventQuery) -> Result<Vec<TrackingEvent>, StoreError> {
        self.with(&self.events, |client| events::search(client, query))
    }

    fn prune_events(&self, before: i64) -> Result<usize, StoreError> {
        self.check_writable()?;
        self.with(&self.events, |client| events::prune(client, before))
    }

    fn put_node(&self, node: &NodeStatus) -> Result<(), StoreError> {
        self.check_writable()?;
        self.with(&self.events, |client| events::put_node(client, node))
    }

    fn nodes(&self) -> Result<Vec<NodeStatus>, StoreError> {
        self.with(&self.events, events::nodes)
    }

    fn put_mta_sts(&self, record: &MtaStsRecord) -> Result<(), StoreError> {
        self.check_writable()?;
        self.with(&self.events, |client| mta_sts::put(client, record))
    }

    fn mta_sts(&self, domain: &str) -> Result<Option<MtaStsRecord>, StoreError> {
        self.with(&self.events, |client| mta_sts::get(client, domain))
    }

    fn mta_sts_list(&self) -> Result<Vec<MtaStsRecord>, StoreError> {
        self.with(&self.events, mta_sts::list)
    }

    fn put_queue_snapshot(&self, snapshot: &QueueSnapshot) -> Result<(), StoreError> {
        self.check_writable()?;
        self.with(&self.events, |client| queue::put_snapshot(client, snapshot))
    }

    fn queue_snapshots(&self) -> Result<Vec<QueueSnapshot>, StoreError> {
        self.with(&self.events, queue::snapshots)
    }

    fn insert_queue_request(
        &self,
        node: &str,
        queue_id: &str,
        action: QueueAction,
    ) -> Result<QueueRequest, StoreError> {
        self.check_writable()?;
        self.with(&self.events, |client| {
            queue::insert_request(client, node, queue_id, action, &self.node_name)
        })
    }

    fn waiting_queue_requests(&self, node: &str) -> Result<Vec<QueueRequest>, StoreError> {
        self.with(&self.events, |client| queue::waiting_requests(client, node))
    }

    fn queue_request(&self, id: i64) -> Result<Option<QueueRequest>, StoreError> {
        self.with(&self.events, |client| queue::request(client, id))
    }

    fn finish_queue_request(
        &self,
        id: i64,
        outcome: &Result<String, String>,
    ) -> Result<(), StoreError> {
        self.check_writable()?;
        self.with(&self.events, |client| {
            queue::finish_request(client, id, outcome)
        })
    }

    fn queue_hint(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(Arc::clone(&self.queue_wake))
    }

    fn learned(&self) -> &dyn crate::LearnedStore {
        self
    }

    fn alerts(&self) -> &dyn crate::AlertStore {
        self
    }

    fn tlsrpt(&self) -> &dyn crate::TlsRptStore {
        self
    }

    fn describe(&self) -> String {
        self.info.redacted()
    }

    fn change_hint(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.changes())
    }
}
