//! What a database must provide for the store: plain reads and writes of
//! rows, in transactions. Every rule (validation, in-use checks, the
//! once-only Default Cert, credential checks) lives in `rules.rs`, written
//! once over these traits, so SQLite and PostgreSQL keep the same rules.

use std::time::Duration;

use crate::{
    AdminSession, ApiToken, CertificateRecord, DkimKeyRecord, EventQuery, MtaStsRecord, NodeStatus,
    QueueAction, QueueRequest, QueueSnapshot, StoreError, TrackingEvent,
};

/// Credential kinds in the `admin_credentials` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    Password,
    Token,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Password => "password",
            CredentialKind::Token => "token",
        }
    }
}

/// Row access inside one transaction. Writes are only called inside
/// [`Backend::write`], which holds the installation-wide write lock.
pub trait Transaction {
    /// The settings document (JSON), `None` before the first save.
    fn settings_document(&mut self) -> Result<Option<String>, StoreError>;
    fn save_settings_document(&mut self, document: &str, at: i64) -> Result<(), StoreError>;

    fn certificates(&mut self) -> Result<Vec<CertificateRecord>, StoreError>;
    /// By exact name.
    fn certificate(&mut self, name: &str) -> Result<Option<CertificateRecord>, StoreError>;
    /// The stored name equal to `name` ignoring ASCII case, if any.
    fn certificate_name_nocase(&mut self, name: &str) -> Result<Option<String>, StoreError>;
    fn insert_certificate(&mut self, record: &CertificateRecord) -> Result<(), StoreError>;
    /// By exact name; false when there was none.
    fn delete_certificate(&mut self, name: &str) -> Result<bool, StoreError>;

    /// DKIM keys, ordered by name.
    fn dkim_keys(&mut self) -> Result<Vec<DkimKeyRecord>, StoreError>;
    fn dkim_key(&mut self, name: &str) -> Result<Option<DkimKeyRecord>, StoreError>;
    fn insert_dkim_key(&mut self, record: &DkimKeyRecord) -> Result<(), StoreError>;
    /// False when there was none.
    fn delete_dkim_key(&mut self, name: &str) -> Result<bool, StoreError>;

    fn generation(&mut self) -> Result<i64, StoreError>;
    /// Add one to the generation counter.
    fn bump_generation(&mut self) -> Result<(), StoreError>;
    /// A one-time flag (unix time it was set), `None` while unset.
    fn flag(&mut self, key: &str) -> Result<Option<i64>, StoreError>;
    fn set_flag(&mut self, key: &str, value: i64) -> Result<(), StoreError>;

    /// The hash of credential `kind`/`name`.
    fn credential(
        &mut self,
        kind: CredentialKind,
        name: &str,
    ) -> Result<Option<String>, StoreError>;
    /// Insert or replace.
    fn put_credential(
        &mut self,
        kind: CredentialKind,
        name: &str,
        hash: &str,
        at: i64,
    ) -> Result<(), StoreError>;
    /// False when there was none.
    fn delete_credential(&mut self, kind: CredentialKind, name: &str) -> Result<bool, StoreError>;
    /// The API token with this hash.
    fn token_by_hash(&mut self, hash: &str) -> Result<Option<ApiToken>, StoreError>;
    /// Every API token, ordered by name.
    fn tokens(&mut self) -> Result<Vec<ApiToken>, StoreError>;

    /// Add one to the credentials version (password, tokens, sessions).
    fn bump_credentials(&mut self) -> Result<(), StoreError>;

    /// The admin session whose id hashes to `id_hash`.
    fn session(&mut self, id_hash: &str) -> Result<Option<AdminSession>, StoreError>;
    /// Every admin session (for the local copy), by id hash.
    fn sessions(&mut self) -> Result<Vec<AdminSession>, StoreError>;
    fn insert_session(&mut self, session: &AdminSession) -> Result<(), StoreError>;
    /// Record a use; false when there is no such session.
    fn touch_session(&mut self, id_hash: &str, at: i64) -> Result<bool, StoreError>;
    /// False when there was none.
    fn delete_session(&mut self, id_hash: &str) -> Result<bool, StoreError>;
    /// Delete sessions last seen at or before `seen_before`, or created at
    /// or before `created_before`; returns how many.
    fn delete_dead_sessions(
        &mut self,
        seen_before: i64,
        created_before: i64,
    ) -> Result<usize, StoreError>;
    /// Keep only the `keep` most recently used sessions; returns how many
    /// went.
    fn keep_recent_sessions(&mut self, keep: usize) -> Result<usize, StoreError>;
    /// Delete the sessions of every other password version.
    fn delete_sessions_except(&mut self, password_version: &str) -> Result<usize, StoreError>;

    /// Times of the login attempts after `since` (of `client`, or of all),
    /// oldest first.
    fn login_attempts(&mut self, client: Option<&str>, since: i64) -> Result<Vec<i64>, StoreError>;
    /// Returns the attempt's row id.
    fn insert_login_attempt(&mut self, client: &str, at: i64) -> Result<i64, StoreError>;
    fn delete_login_attempts(&mut self, client: &str) -> Result<usize, StoreError>;
    /// Delete attempts made at or before `before`.
    fn prune_login_attempts(&mut self, before: i64) -> Result<usize, StoreError>;

    /// Up to `limit` tracking events with a row id above `after`, by row
    /// id, with their ids (for copying a whole store).
    fn events_after(
        &mut self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, TrackingEvent)>, StoreError>;
    /// Append tracking events inside this transaction; those whose detail
    /// names no node are stamped with `node`.
    fn copy_events(&mut self, node: &str, events: &[TrackingEvent]) -> Result<(), StoreError>;
    /// Number of rows in each table of the installation that is not empty
    /// on a new store: settings, certificates, credentials, events, nodes.
    fn row_counts(&mut self) -> Result<Vec<(&'static str, i64)>, StoreError>;
}

/// The body of a transaction; called once per attempt.
pub type TxBody<'a> = &'a mut dyn FnMut(&mut dyn Transaction) -> Result<(), StoreError>;

/// A database the store can run on.
pub trait Backend: Send + Sync {
    /// Run `body` on a consistent view, without the write lock.
    fn read(&self, body: TxBody<'_>) -> Result<(), StoreError>;

    /// Run `body` in a write transaction holding the installation-wide
    /// write lock (every writer of every process and node waits for it),
    /// waiting at most `wait` for it; commit on `Ok`, roll back otherwise.
    fn write(&self, wait: Duration, body: TxBody<'_>) -> Result<(), StoreError>;

    /// The generation counter (polled often: one cheap statement).
    fn generation(&self) -> Result<i64, StoreError>;

    /// Append tracking events, in one transaction, stamped with this
    /// node's name.
    fn insert_events(&self, events: &[TrackingEvent]) -> Result<(), StoreError>;
    /// Events whose queue id is `queue_id`, or whose Message-ID is one of
    /// `message_ids`, or whose queue id has such an event; oldest first.
    fn events_for(
        &self,
        queue_id: &str,
        message_ids: [&str; 2],
    ) -> Result<Vec<TrackingEvent>, StoreError>;
    fn recent_events(&self, limit: usize) -> Result<Vec<TrackingEvent>, StoreError>;
    fn search_events(&self, query: &EventQuery) -> Result<Vec<TrackingEvent>, StoreError>;
    fn prune_events(&self, before: i64) -> Result<usize, StoreError>;

    /// Insert or replace this node's row in the node registry.
    fn put_node(&self, node: &NodeStatus) -> Result<(), StoreError>;
    /// Every node of the registry, by name.
    fn nodes(&self) -> Result<Vec<NodeStatus>, StoreError>;

    /// Insert or replace the cached MTA-STS policy of its domain.
    fn put_mta_sts(&self, record: &MtaStsRecord) -> Result<(), StoreError>;
    /// The cached MTA-STS policy of `domain` (expired or not).
    fn mta_sts(&self, domain: &str) -> Result<Option<MtaStsRecord>, StoreError>;
    /// Every cached MTA-STS policy, by domain.
    fn mta_sts_list(&self) -> Result<Vec<MtaStsRecord>, StoreError>;

    /// Insert or replace the snapshot of `snapshot.node`'s queue.
    fn put_queue_snapshot(&self, snapshot: &QueueSnapshot) -> Result<(), StoreError>;
    /// Every node's queue snapshot, by node name.
    fn queue_snapshots(&self) -> Result<Vec<QueueSnapshot>, StoreError>;
    /// Record a request for `node` made on this node; wake `node` where
    /// the backend can.
    fn insert_queue_request(
        &self,
        node: &str,
        queue_id: &str,
        action: QueueAction,
    ) -> Result<QueueRequest, StoreError>;
    /// The requests `node` has not carried out yet, oldest first.
    fn waiting_queue_requests(&self, node: &str) -> Result<Vec<QueueRequest>, StoreError>;
    fn queue_request(&self, id: i64) -> Result<Option<QueueRequest>, StoreError>;
    fn finish_queue_request(
        &self,
        id: i64,
        outcome: &Result<String, String>,
    ) -> Result<(), StoreError>;
    /// Woken when a queue request may be waiting for this node.
    fn queue_hint(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }

    /// The learning evidence's tables (the backend itself).
    fn learned(&self) -> &dyn crate::LearnedStore;

    /// The alerts table (the backend itself).
    fn alerts(&self) -> &dyn crate::AlertStore;

    /// The TLS-RPT tables (the backend itself).
    fn tlsrpt(&self) -> &dyn crate::TlsRptStore;

    /// Human-readable location (file path, or URL without password).
    fn describe(&self) -> String;

    /// See [`crate::Store::change_hint`].
    fn change_hint(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
}

/// Run `op` in [`Backend::read`] and return its value.
pub(crate) fn read<B: Backend + ?Sized, T>(
    backend: &B,
    op: impl FnMut(&mut dyn Transaction) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    run(op, |body| backend.read(body))
}

/// Run `op` in [`Backend::write`] and return its value.
pub(crate) fn write<B: Backend + ?Sized, T>(
    backend: &B,
    wait: Duration,
    op: impl FnMut(&mut dyn Transaction) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    run(op, |body| backend.write(wait, body))
}

fn run<T>(
    mut op: impl FnMut(&mut dyn Transaction) -> Result<T, StoreError>,
    exec: impl FnOnce(TxBody<'_>) -> Result<(), StoreError>,
) -> Result<T, StoreError> {
    let mut value = None;
    exec(&mut |tx| {
        value = Some(op(tx)?);
        Ok(())
    })?;
    value.ok_or_else(|| StoreError::Corrupt("a transaction ended without a result".to_string()))
}
