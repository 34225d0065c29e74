//! Postern's store: the shared settings (SPEC §4), the certificate table and
//! the message-tracking events, kept in one database.
//!
//! Everything the CLI, the admin API and the running gateway share goes
//! through the [`Store`] trait; [`open`] picks the backend from the node
//! config's `store`. [`SqliteStore`] is the embedded default, one SQLite
//! file in the data directory; [`PgStore`] keeps a cluster's installation
//! in PostgreSQL (SPEC §9). Both implement only [`backend::Backend`] (rows
//! in transactions); the rules below are written once, in `rules.rs`.
//!
//! Rules every implementation keeps:
//!
//! * Settings are saved only after [`Settings::validate`] and a check that
//!   every certificate they name exists (and has a private key where one is
//!   presented). Nothing changes on error, and the error names the key.
//! * A certificate cannot be deleted while the settings use it.
//! * Every change to settings or certificates bumps [`Store::generation`];
//!   a running gateway polls it and reloads (SPEC §2: within 2 seconds).
//! * The `Default Cert` is generated once per installation. A flag records
//!   that it happened, so deleting it never brings it back silently.
//!
//! The API is synchronous: the gateway calls it from `spawn_blocking`, the
//! CLI directly. Several processes may open the same store at once; every
//! read-check-write sequence runs in one write transaction.
//!
//! Layout: `backend` (the row interface), `rules` (the rules over it),
//! `settings`, `certificates`, `events`, `admin` (admin UI credentials) and
//! `nodes` (the node registry) hold the backend-neutral types and checks of
//! one concern each; `sqlite/` and `postgres/` are the two backends.

mod admin;
pub mod alerts;
pub mod backend;
mod cached;
mod certificates;
mod copy;
mod dkim;
pub mod event;
mod events;
pub mod learned;
mod mta_sts;
mod nodes;
mod postgres;
mod queue;
mod rules;
mod sessions;
mod settings;
mod sqlite;
pub mod tlsrpt;

use std::path::PathBuf;
use std::sync::Arc;

use postern_config::{ConfigError, Settings};

pub use admin::{validate_token_name, ApiToken, MAX_TOKEN_NAME_CHARS};
pub use alerts::{
    Acknowledged, Alert, AlertClaim, AlertClaims, AlertFilter, AlertKind, AlertReview, AlertStore,
    KeptAlert,
};
pub use cached::CachedPgStore;
pub use certificates::{validate_certificate_name, CertificateRecord, MAX_CERTIFICATE_NAME_CHARS};
pub use copy::{copy_installation, CopyReport};
pub use dkim::{DkimKeyRecord, DKIM_KEY_TYPES};
pub use event::Event;
pub use events::{event_kind, EventQuery, TrackingEvent};
pub use learned::{LearnedStore, MonitorCount, MonitorVerdict, TlsLevel, TlsObservation};
pub use mta_sts::MtaStsRecord;
pub use nodes::{NodeState, NodeStatus, UNREACHABLE_AFTER_SECS};
pub use postgres::conninfo::is_postgres_url;
pub use postgres::PgStore;
pub use sessions::{AdminSession, LoginLimits, LoginReservation, SessionLimits};

pub use queue::{
    QueueAction, QueueRequest, QueueSnapshot, REQUEST_KEEP_SECS, SNAPSHOT_MAX_ENTRIES,
};
pub use sqlite::schema::SCHEMA_VERSION;
pub use sqlite::SqliteStore;
pub use tlsrpt::TlsRptStore;

/// The store shared by the CLI, the admin API and the gateway.
pub trait Store: Send + Sync {
    /// The current settings; the defaults when they were never saved.
    fn settings(&self) -> Result<Settings, StoreError>;

    /// Validate and save the settings, then bump the generation.
    ///
    /// Validation is [`Settings::validate`] plus the certificate table:
    /// `tls.inbound.certificate` and `tls.outbound.client_certificate` must
    /// name entries with a private key; `tls.inbound.trusted_client_ca` and
    /// `tls.outbound.trusted_ca` entries (except `"system"`) must exist.
    /// Nothing changes on error; [`StoreError::Invalid`] names the key.
    fn put_settings(&self, settings: &Settings) -> Result<(), StoreError>;

    /// Read, change and save the settings in one write transaction, so two
    /// processes editing at once cannot lose each other's change. `change`
    /// gets the current settings and returns the new ones (e.g.
    /// `Ok(current.with(key, value)?)`); they are validated as in
    /// [`Store::put_settings`]. Returns the saved settings.
    fn update_settings(
        &self,
        change: &mut dyn FnMut(&Settings) -> Result<Settings, StoreError>,
    ) -> Result<Settings, StoreError>;

    /// A number that changes whenever settings or certificates change.
    fn generation(&self) -> Result<i64, StoreError>;

    /// The certificate table, ordered by name.
    fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError>;

    /// One certificate by its exact name.
    fn certificate(&self, name: &str) -> Result<Option<CertificateRecord>, StoreError>;

    /// Insert a certificate and bump the generation.
    ///
    /// Refuses a name already taken (compared ignoring ASCII case) and names
    /// that [`validate_certificate_name`] refuses; refuses a chain without a
    /// PEM certificate and a key without a PEM private key.
    fn add_certificate(&self, record: &CertificateRecord) -> Result<(), StoreError>;

    /// Delete a certificate and bump the generation. Refuses unknown names
    /// and certificates the current settings use ([`StoreError::InUse`]
    /// names the key).
    fn delete_certificate(&self, name: &str) -> Result<(), StoreError>;

    /// First-use initialisation of a generated certificate (the `Default
    /// Cert`, [`postern_config::DEFAULT_CERT_NAME`], and its ECDSA companion,
    /// [`postern_config::DEFAULT_ECDSA_CERT_NAME`]), atomic across processes.
    ///
    /// When this store has never created the entry `name`, call `make` and
    /// insert the result as `name` (whatever name `make` gave it), then
    /// remember that it happened. Returns true when it generated. Once done,
    /// never again — not even after the certificate was deleted. When an
    /// entry of that name already exists (imported before first use), it is
    /// kept and nothing is generated.
    fn ensure_default_certificate(
        &self,
        name: &str,
        make: &mut dyn FnMut() -> Result<CertificateRecord, String>,
    ) -> Result<bool, StoreError>;

    /// The DKIM keys, ordered by name.
    fn dkim_keys(&self) -> Result<Vec<DkimKeyRecord>, StoreError>;

    /// One DKIM key by its name (`<selector>._domainkey.<domain>`).
    fn dkim_key(&self, name: &str) -> Result<Option<DkimKeyRecord>, StoreError>;

    /// Insert a DKIM key; refuses a name already taken.
    fn add_dkim_key(&self, record: &DkimKeyRecord) -> Result<(), StoreError>;

    /// Delete a DKIM key; refuses unknown names and the key that
    /// `tlsrpt.dkim_key` names.
    fn delete_dkim_key(&self, name: &str) -> Result<(), StoreError>;

    /// Append one tracking event.
    fn record_event(&self, event: &TrackingEvent) -> Result<(), StoreError>;

    /// Append several tracking events at once (one transaction where the
    /// backend has them).
    fn record_events(&self, events: &[TrackingEvent]) -> Result<(), StoreError> {
        events.iter().try_for_each(|event| self.record_event(event))
    }

    /// Events of one message, oldest first, found by queue id or by
    /// Message-ID header value (with or without the angle brackets). A
    /// Message-ID also finds the events of its queue ids that carry no
    /// Message-ID themselves.
    fn events_for(&self, id_or_message_id: &str) -> Result<Vec<TrackingEvent>, StoreError>;

    /// Recent events, newest first, at most `limit`.
    fn recent_events(&self, limit: usize) -> Result<Vec<TrackingEvent>, StoreError>;

    /// Delete events older than `before` (unix seconds); returns how many.
    fn prune_events(&self, before: i64) -> Result<usize, StoreError>;

    /// Events matching `query`, newest first (message tracking search,
    /// dashboard counts).
    fn search_events(&self, query: &EventQuery) -> Result<Vec<TrackingEvent>, StoreError>;

    /// The admin password's hash (an argon2id PHC string), `None` before
    /// one was set.
    fn admin_password_hash(&self) -> Result<Option<String>, StoreError>;

    /// Set or replace the admin password's hash.
    fn set_admin_password_hash(&self, hash: &str) -> Result<(), StoreError>;

    /// Set the admin password's hash only when none is set yet, atomically
    /// across processes (first start). Returns true when it was set.
    fn init_admin_password_hash(&self, hash: &str) -> Result<bool, StoreError>;

    /// Store a new API token by its hash. Refuses a name already taken
    /// ([`StoreError::DuplicateToken`]) and names [`validate_token_name`]
    /// refuses.
    fn add_api_token(&self, name: &str, token_hash: &str) -> Result<(), StoreError>;

    /// The token with this hash, if any.
    fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>, StoreError>;

    /// Every API token, ordered by name.
    fn api_tokens(&self) -> Result<Vec<ApiToken>, StoreError>;

    /// Revoke a token by name ([`StoreError::UnknownToken`] when none).
    fn delete_api_token(&self, name: &str) -> Result<(), StoreError>;

    /// A number that changes whenever the admin password, an API token or
    /// an admin session is added, changed or removed (not when a session
    /// is merely used).
    fn credentials_version(&self) -> Result<i64, StoreError>;

    /// Store a new admin session (by its id hash), ending `replaces` (the
    /// id hash of the browser's previous session) and dropping sessions
    /// dead by `limits` at `session.created_at`, and the least recently
    /// used beyond `limits.max_sessions`.
    fn create_admin_session(
        &self,
        session: &AdminSession,
        replaces: Option<&str>,
        limits: &SessionLimits,
    ) -> Result<(), StoreError>;

    /// The admin session with this id hash, alive or not (the caller
    /// judges).
    fn admin_session(&self, id_hash: &str) -> Result<Option<AdminSession>, StoreError>;

    /// Record that a session was used at `at` (unix seconds); false when
    /// it is gone.
    fn touch_admin_session(&self, id_hash: &str, at: i64) -> Result<bool, StoreError>;

    /// End a session (logout); false when there was none.
    fn delete_admin_session(&self, id_hash: &str) -> Result<bool, StoreError>;

    /// End every session opened with a password version other than
    /// `current`; returns how many ended.
    fn end_admin_sessions_except(&self, current: &str) -> Result<usize, StoreError>;

    /// Count a login attempt of `client` (an address or /64 prefix) at
    /// `at` (unix seconds), before its password is checked, or refuse it
    /// when `limits` are reached — atomically across processes and nodes.
    fn reserve_login_attempt(
        &self,
        client: &str,
        at: i64,
        limits: &LoginLimits,
    ) -> Result<LoginReservation, StoreError>;

    /// A login of `client` succeeded: its counted attempts (the successful
    /// one too) are forgotten.
    fn forget_login_attempts(&self, client: &str) -> Result<(), StoreError>;

    /// Insert or refresh this node's row of the node registry (`last_seen`
    /// is set by the store's clock).
    fn register_node(&self, node: &NodeStatus) -> Result<(), StoreError>;

    /// The node registry, by name.
    fn nodes(&self) -> Result<Vec<NodeStatus>, StoreError>;

    /// Insert or replace the cached MTA-STS policy of `record.domain`
    /// (SPEC §9: the cache is shared by a cluster). The domain is stored
    /// lower-case.
    fn put_mta_sts_policy(&self, record: &MtaStsRecord) -> Result<(), StoreError>;

    /// The cached MTA-STS policy of `domain` (any case), expired or not:
    /// the caller applies `expires_at`.
    fn mta_sts_policy(&self, domain: &str) -> Result<Option<MtaStsRecord>, StoreError>;

    /// Every cached MTA-STS policy, by domain.
    fn mta_sts_policies(&self) -> Result<Vec<MtaStsRecord>, StoreError>;

    /// Publish this node's queue (replacing its previous snapshot; the
    /// store stamps the time).
    fn publish_queue(&self, snapshot: &QueueSnapshot) -> Result<(), StoreError>;

    /// The queue snapshots of every node, by node name.
    fn queue_snapshots(&self) -> Result<Vec<QueueSnapshot>, StoreError>;

    /// Ask `node` to retry or delete its message `queue_id`; the request
    /// records this node as the requester. The owner picks it up with
    /// [`Store::waiting_queue_requests`].
    fn request_queue_action(
        &self,
        node: &str,
        queue_id: &str,
        action: QueueAction,
    ) -> Result<QueueRequest, StoreError>;

    /// Requests for `node` not carried out yet, oldest first.
    fn waiting_queue_requests(&self, node: &str) -> Result<Vec<QueueRequest>, StoreError>;

    /// One request by id (done ones are kept for a day).
    fn queue_request(&self, id: i64) -> Result<Option<QueueRequest>, StoreError>;

    /// Record the owner's outcome of a request (once; later calls change
    /// nothing).
    fn finish_queue_request(
        &self,
        id: i64,
        outcome: &Result<String, String>,
    ) -> Result<(), StoreError>;

    /// Woken when a queue request for this node may be waiting
    /// (PostgreSQL `NOTIFY`); `None` where only polling tells.
    fn queue_hint(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }

    /// Where the store is, for messages: a file path, or a URL without its
    /// password.
    fn location(&self) -> String;

    /// The evidence of learned TLS levels and monitor rules.
    fn learned(&self) -> &dyn LearnedStore;

    /// The kept alerts (SPEC §12).
    fn alerts(&self) -> &dyn AlertStore;

    /// The TLS-RPT claims and report deliveries (SPEC §11).
    fn tlsrpt(&self) -> &dyn TlsRptStore;

    /// Woken when another process or node may have changed the store
    /// (PostgreSQL `NOTIFY`); `None` where only polling tells. A hint only:
    /// [`Store::generation`] decides.
    fn change_hint(&self) -> Option<Arc<tokio::sync::Notify>>;
}

/// Where the store is: the node config's `store` (SPEC §3, §9).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded store: this SQLite file.
    Sqlite(PathBuf),
    /// A cluster store: a `postgres://` URL (it may hold a password).
    Postgres(String),
}

impl StoreLocation {
    /// For messages: the path, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::Sqlite(path) => path.display().to_string(),
            StoreLocation::Postgres(url) => {
                match postgres::conninfo::ConnInfo::parse(url, &|_| None) {
                    Ok(info) => info.redacted(),
                    Err(_) => "the PostgreSQL store URL".to_string(),
                }
            }
        }
    }
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Open (and create or migrate) the store at `location`; tracking events
/// and the node registry name this node `node_name`.
pub fn open(location: &StoreLocation, node_name: &str) -> Result<Arc<dyn Store>, StoreError> {
    match location {
        StoreLocation::Sqlite(path) => Ok(Arc::new(SqliteStore::open(path, node_name)?)),
        StoreLocation::Postgres(url) => Ok(Arc::new(PgStore::open(url, node_name)?)),
    }
}

/// As [`open`], but a PostgreSQL store keeps a local copy at `cache` and
/// runs from it while the server is unreachable ([`CachedPgStore`]).
pub fn open_with_cache(
    location: &StoreLocation,
    node_name: &str,
    cache: &std::path::Path,
) -> Result<Arc<dyn Store>, StoreError> {
    match location {
        StoreLocation::Postgres(url) => Ok(Arc::new(CachedPgStore::open(url, node_name, cache)?)),
        StoreLocation::Sqlite(_) => open(location, node_name),
    }
}

/// Why a store operation failed. Misconfiguration ([`Invalid`], [`InUse`],
/// [`NotFound`], [`Duplicate`], [`BadName`], [`BadCertificate`]) is the
/// caller's to fix; the rest are local failures.
///
/// [`Invalid`]: StoreError::Invalid
/// [`InUse`]: StoreError::InUse
/// [`NotFound`]: StoreError::NotFound
/// [`Duplicate`]: StoreError::Duplicate
/// [`BadName`]: StoreError::BadName
/// [`BadCertificate`]: StoreError::BadCertificate
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Settings that do not validate; the error names the key.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// The certificate is named by a setting.
    #[error("certificate \"{name}\" is in use by {key}; change {key} first")]
    InUse { name: String, key: String },
    /// No certificate of that name.
    #[error("no certificate named \"{0}\"")]
    NotFound(String),
    /// A certificate of that name (ignoring ASCII case) exists already.
    #[error("a certificate named \"{0}\" already exists")]
    Duplicate(String),
    /// A DKIM key of that name exists already.
    #[error("a DKIM key named \"{0}\" already exists; delete it first to make a new one")]
    DuplicateDkimKey(String),
    /// No DKIM key of that name.
    #[error("no DKIM key named \"{0}\" (see `postern dkim list`)")]
    UnknownDkimKey(String),
    /// The DKIM key is named by `tlsrpt.dkim_key`.
    #[error(
        "DKIM key \"{0}\" is in use by tlsrpt.dkim_key; set tlsrpt.dkim_key to another key \
         (or to \"\") first"
    )]
    DkimKeyInUse(String),
    /// An API token of that name exists already.
    #[error("an API token named \"{0}\" already exists")]
    DuplicateToken(String),
    /// No API token of that name.
    #[error("no API token named \"{0}\"")]
    UnknownToken(String),
    /// A certificate name that cannot be stored; the text says why.
    #[error("{0}")]
    BadName(String),
    /// A certificate record whose PEM text is missing or of the wrong kind.
    #[error("{0}")]
    BadCertificate(String),
    /// `make` in [`Store::ensure_default_certificate`] failed.
    #[error("generating a default certificate failed: {0}")]
    DefaultCertificate(String),
    /// Another process held the database lock for longer than the timeout.
    #[error("the store is busy (locked by another process): {0}")]
    Busy(String),
    /// The database was written by a newer Postern.
    #[error(
        "the store has schema version {found}, written by a newer Postern; this one knows up \
         to version {supported} and does not write to it: upgrade this node to a Postern \
         with schema version {found}"
    )]
    UnsupportedSchema { found: i64, supported: i64 },
    /// Stored data that cannot be read back.
    #[error("the store holds unreadable data: {0}")]
    Corrupt(String),
    /// The store's file or directory.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The `store` URL cannot be used; the text says why (never the password).
    #[error("store: {0}")]
    BadLocation(String),
    /// `store copy` found the target holding an installation already.
    #[error(
        "the target already holds a Postern installation ({0}); store copy only fills an \
         empty database, and changed nothing"
    )]
    NotEmpty(String),
    /// The cluster store cannot be reached (or the connection broke).
    #[error("cluster store unreachable: {0}")]
    Unreachable(String),
    /// Any other database failure.
    #[error("store database error: {0}")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                StoreError::Busy(error.to_string())
            }
            _ => StoreError::Database(Box::new(error)),
        }
    }
}

/// Current time in unix seconds.
fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
