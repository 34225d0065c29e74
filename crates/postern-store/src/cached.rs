//! A cluster store that survives PostgreSQL outages (SPEC §9): every node
//! keeps a copy of what it needs to run — settings, certificates with keys,
//! the once-only flags, the admin password hash, API token hashes and the
//! admin sessions (id hashes only) — in `data_dir/store-cache.json` (0600,
//! replaced atomically), refreshed whenever the store's generation or its
//! credentials version changes (both are read at every generation poll,
//! so a credential change reaches the copy within that poll), and every
//! minute.
//!
//! While PostgreSQL cannot be reached, reads are answered from that copy
//! (the gateway keeps serving with the certificates it had; logins and
//! tokens still authenticate) and writes fail with
//! [`StoreError::Unreachable`]. A node started during an outage runs from
//! the copy and connects when PostgreSQL is back; without a copy it stops
//! with an error naming the store. Each change of state is logged once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postern_config::Settings;
use serde::{Deserialize, Serialize};

use crate::backend;
use crate::certificates::generated_flag;
use crate::copy::{read_installation, Installation};
use crate::{
    settings, AdminSession, ApiToken, CertificateRecord, DkimKeyRecord, EventQuery, LoginLimits,
    LoginReservation, MtaStsRecord, NodeStatus, PgStore, QueueAction, QueueRequest, QueueSnapshot,
    SessionLimits, Store, StoreError, TrackingEvent,
};

/// How often a node that started without its store tries to connect.
const RECONNECT_EVERY: Duration = Duration::from_secs(2);

/// How old the local copy may get without a change of the generation or
/// the credentials version.
const REFRESH_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    generation: i64,
    installation: Installation,
    /// The credentials version the copy was read at.
    #[serde(default)]
    credentials: i64,
    #[serde(default)]
    sessions: Vec<AdminSession>,
}

struct State {
    store: Option<Arc<PgStore>>,
    snapshot: Option<Snapshot>,
    refreshed: Option<Instant>,
    last_connect: Option<Instant>,
    /// `Some(reason)` while unreachable (logged once per outage).
    down: Option<String>,
}

/// [`PgStore`] with a local copy for outages.
pub struct CachedPgStore {
    url: String,
    node_name: String,
    cache: PathBuf,
    location: String,
    state: Mutex<State>,
}

impl CachedPgStore {
    /// Connect to `url`; when that fails for want of the server, run from
    /// the copy at `cache` — or fail, naming the store, without one.
    pub fn open(url: &str, node_name: &str, cache: &Path) -> Result<CachedPgStore, StoreError> {
        let snapshot = read_cache(cache);
        let (store, down) = match PgStore::open(url, node_name) {
            Ok(store) => (Some(Arc::new(store)), None),
            Err(StoreError::Unreachable(reason)) if snapshot.is_some() => {
                tracing::warn!(
                    "cluster store unreachable ({reason}); running from the local copy {} \
                     until it is back",
                    cache.display()
                );
                (None, Some(reason))
            }
            Err(e) => return Err(e),
        };
        let location = match &store {
            Some(store) => store.location(),
            None => crate::StoreLocation::Postgres(url.to_string()).describe(),
        };
        let cached = CachedPgStore {
            url: url.to_string(),
            node_name: node_name.to_string(),
            cache: cache.to_path_buf(),
            location,
            state: Mutex::new(State {
                store,
                snapshot,
                refreshed: None,
                last_connect: Some(Instant::now()),
                down,
            }),
        };
        // Keep the copy current from the first moment.
        let _ = cached.generation();
        Ok(cached)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connected store, connecting (at most every few seconds) when the
    /// node started without it.
    fn store(&self) -> Option<Arc<PgStore>> {
        {
            let mut state = self.state();
            if state.store.is_some()
                || state
                    .last_connect
                    .is_some_and(|at| at.elapsed() < RECONNECT_EVERY)
            {
                return state.store.clone();
            }
            state.last_connect = Some(Instant::now());
        }
        // Without the lock: reads go on from the copy meanwhile.
        let store = PgStore::open(&self.url, &self.node_name).ok().map(Arc::new);
        let mut state = self.state();
        if state.store.is_none() {
            state.store = store;
        }
        state.store.clone()
    }

    fn mark_up(&self) {
        let mut state = self.state();
        if state.down.take().is_some() {
            tracing::info!("cluster store reachable again: {}", self.location);
        }
    }

    fn mark_down(&self, reason: &str) {
        let mut state = self.state();
        if state.down.is_none() {
            tracing::warn!(
                "cluster store unreachable ({reason}); serving from the local copy {}",
                self.cache.display()
            );
            state.down = Some(reason.to_string());
        }
    }

    fn unreachable(&self) -> StoreError {
        let reason = self.state().down.clone();
        StoreError::Unreachable(reason.unwrap_or_else(|| self.location.clone()))
    }

    /// Run `live` on the store; when it cannot be reached, `cached` on the
    /// local copy (writes pass a `cached` that fails).
    fn with<T>(
        &self,
        live: impl FnOnce(&PgStore) -> Result<T, StoreError>,
        cached: impl FnOnce(&Snapshot) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if let Some(store) = self.store() {
            match live(&store) {
                Err(StoreError::Unreachable(reason)) => self.mark_down(&reason),
                other => {
                    self.mark_up();
                    return other;
                }
            }
        }
        let snapshot = self.state().snapshot.clone();
        match snapshot {
            Some(snapshot) => cached(&snapshot),
            None => Err(self.unreachable()),
        }
    }

    /// A write: no copy can take it.
    fn write<T>(
        &self,
        live: impl FnOnce(&PgStore) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with(live, |_| Err(self.unreachable()))
    }

    /// Refresh the local copy after a change of the generation or of the
    /// credentials version (and now and then).
    fn refresh(&self, store: &PgStore, generation: i64, credentials: i64) {
        let stale = {
            let state = self.state();
            state
                .snapshot
                .as_ref()
                .map(|s| (s.generation, s.credentials))
                != Some((generation, credentials))
                || state
                    .refreshed
                    .is_none_or(|at| at.elapsed() >= REFRESH_EVERY)
        };
        if !stale {
            return;
        }
        let read = backend::read(store, |tx| {
            Ok(Snapshot {
                generation: tx.generation()?,
                installation: read_installation(tx)?,
                credentials: tx.flag(crate::sessions::CREDENTIALS_VERSION)?.unwrap_or(0),
                sessions: tx.sessions()?,
            })
        });
        match read.and_then(|snapshot| write_cache(&self.cache, &snapshot).map(|()| snapshot)) {
            Ok(snapshot) => {
                let mut state = self.state();
                state.snapshot = Some(snapshot);
                state.refreshed = Some(Instant::now());
            }
            Err(e) => tracing::warn!("local copy of the store not refreshed: {e}"),
        }
    }
}

fn read_cache(path: &Path) -> Option<Snapshot> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text) {
        Ok(snapshot) => Some(snapshot),
        Err(e) => {
            tracing::warn!(
                "{}: unreadable local copy of the store ignored: {e}",
                path.display()
            );
            None
        }
    }
}

/// Replace the file atomically: written to a temporary file, fsync'd,
/// renamed, the directory fsync'd.
fn write_cache(path: &Path, snapshot: &Snapshot) -> Result<(), StoreError> {
    use std::io::Write;
    let io = |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    };
    let text = serde_json::to_string(snapshot)
        .map_err(|e| StoreError::Corrupt(format!("local copy: {e}")))?;
    // Per process: the gateway and a CLI command may refresh it at once.
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

fn cached_settings(snapshot: &Snapshot) -> Result<Settings, StoreError> {
    settings::parse_document(snapshot.installation.settings.as_deref())
}

impl Store for CachedPgStore {
    fn settings(&self) -> Result<Settings, StoreError> {
        self.with(|s| s.settings(), cached_settings)
    }

    fn put_settings(&self, new: &Settings) -> Result<(), StoreError> {
        self.write(|s| s.put_settings(new))
    }

    fn update_settings(
        &self,
        change: &mut dyn FnMut(&Settings) -> Result<Settings, StoreError>,
    ) -> Result<Settings, StoreError> {
        self.write(|s| s.update_settings(change))
    }

    fn generation(&self) -> Result<i64, StoreError> {
        if let Some(store) = self.store() {
            match store
                .generation()
                .and_then(|g| Ok((g, store.credentials_version()?)))
            {
                Ok((generation, credentials)) => {
                    self.mark_up();
                    self.refresh(&store, generation, credentials);
                    return Ok(generation);
                }
                Err(StoreError::Unreachable(reason)) => self.mark_down(&reason),
                Err(e) => return Err(e),
            }
        }
        let snapshot = self.state().snapshot.clone();
        snapshot
            .map(|s| s.generation)
            .ok_or_else(|| self.unreachable())
    }

    fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        self.with(
            |s| s.certificates(),
            |c| Ok(c.installation.certificates.clone()),
        )
    }

    fn certificate(&self, name: &str) -> Result<Option<CertificateRecord>, StoreError> {
        self.with(
            |s| s.certificate(name),
            |c| {
                Ok(c.installation
                    .certificates
                    .iter()
                    .find(|r| r.name == name)
                    .cloned())
            },
        )
    }

    fn add_certificate(&self, record: &CertificateRecord) -> Result<(), StoreError> {
        self.write(|s| s.add_certificate(record))
    }

    fn delete_certificate(&self, name: &str) -> Result<(), StoreError> {
        self.write(|s| s.delete_certificate(name))
    }

    fn ensure_default_certificate(
        &self,
        name: &str,
        make: &mut dyn FnMut() -> Result<CertificateRecord, String>,
    ) -> Result<bool, StoreError> {
        let flag = generated_flag(name);
        self.with(
            |s| s.ensure_default_certificate(name, make),
            |c| {
                if c.installation.flags.iter().any(|(key, _)| *key == flag) {
                    Ok(false)
                } else {
                    Err(self.unreachable())
                }
            },
        )
    }

    fn record_event(&self, event: &TrackingEvent) -> Result<(), StoreError> {
        self.write(|s| s.record_event(event))
    }

    fn record_events(&self, events: &[TrackingEvent]) -> Result<(), StoreError> {
        self.write(|s| s.record_events(events))
    }

    fn events_for(&self, id_or_message_id: &str) -> Result<Vec<TrackingEvent>, StoreError> {
        self.write(|s| s.events_for(id_or_message_id))
    }

    fn recent_events(&self, limit: usize) -> Result<Vec<TrackingEvent>, StoreError> {
        self.write(|s| s.recent_events(limit))
    }

    fn prune_events(&self, before: i64) -> Result<usize, StoreError> {
        self.write(|s| s.prune_events(before))
    }

    fn search_events(&self, query: &EventQuery) -> Result<Vec<TrackingEvent>, StoreError> {
        self.write(|s| s.search_events(query))
    }

    fn admin_password_hash(&self) -> Result<Option<String>, StoreError> {
        self.with(
            |s| s.admin_password_hash(),
            |c| Ok(c.installation.password.clone()),
        )
    }

    fn set_admin_password_hash(&self, hash: &str) -> Result<(), StoreError> {
        self.write(|s| s.set_admin_password_hash(hash))
    }

    fn init_admin_password_hash(&self, hash: &str) -> Result<bool, StoreError> {
        self.with(
            |s| s.init_admin_password_hash(hash),
            // Set already (it is in the copy): nothing to do, as online.
            |c| match c.installation.password {
                Some(_) => Ok(false),
                None => Err(self.unreachable()),
            },
        )
    }

    fn dkim_keys(&self) -> Result<Vec<DkimKeyRecord>, StoreError> {
        self.with(|s| s.dkim_keys(), |c| Ok(c.installation.dkim_keys.clone()))
    }

    fn dkim_key(&self, name: &str) -> Result<Option<DkimKeyRecord>, StoreError> {
        self.with(
            |s| s.dkim_key(name),
            |c| {
                Ok(c.installation
                    .dkim_keys
                    .iter()
                    .find(|k| k.name == name)
                    .cloned())
            },
        )
    }

    fn add_dkim_key(&self, record: &DkimKeyRecord) -> Result<(), StoreError> {
        self.write(|s| s.add_dkim_key(record))
    }

    fn delete_dkim_key(&self, name: &str) -> Result<(), StoreError> {
        self.write(|s| s.delete_dkim_key(name))
    }

    fn add_api_token(&self, name: &str, token_hash: &str) -> Result<(), StoreError> {
        self.write(|s| s.add_api_token(name, token_hash))
    }

    fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>, StoreError> {
        self.with(
            |s| s.api_token_by_hash(token_hash),
            |c| {
                Ok(c.installation
                    .tokens
                    .iter()
                    .find(|(_, hash, _)| hash == token_hash)
                    .map(|(name, _, created_at)| ApiToken {
                        name: name.clone(),
                        created_at: *created_at,
                    }))
            },
        )
    }

    fn api_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        self.with(
            |s| s.api_tokens(),
            |c| {
                Ok(c.installation
                    .tokens
                    .iter()
                    .map(|(name, _, created_at)| ApiToken {
                        name: name.clone(),
                        created_at: *created_at,
                    })
                    .collect())
            },
        )
    }

    fn delete_api_token(&self, name: &str) -> Result<(), StoreError> {
        self.write(|s| s.delete_api_token(name))
    }

    fn credentials_version(&self) -> Result<i64, StoreError> {
        self.with(|s| s.credentials_version(), |c| Ok(c.credentials))
    }

    fn create_admin_session(
        &self,
        session: &AdminSession,
        replaces: Option<&str>,
        limits: &SessionLimits,
    ) -> Result<(), StoreError> {
        self.write(|s| s.create_admin_session(session, replaces, limits))
    }

    fn admin_session(&self, id_hash: &str) -> Result<Option<AdminSession>, StoreError> {
        self.with(
            |s| s.admin_session(id_hash),
            |c| Ok(c.sessions.iter().find(|s| s.id_hash == id_hash).cloned()),
        )
    }

    fn touch_admin_session(&self, id_hash: &str, at: i64) -> Result<bool, StoreError> {
        self.write(|s| s.touch_admin_session(id_hash, at))
    }

    fn delete_admin_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        self.write(|s| s.delete_admin_session(id_hash))
    }

    fn end_admin_sessions_except(&self, current: &str) -> Result<usize, StoreError> {
        self.write(|s| s.end_admin_sessions_except(current))
    }

    fn reserve_login_attempt(
        &self,
        client: &str,
        at: i64,
        limits: &LoginLimits,
    ) -> Result<LoginReservation, StoreError> {
        self.write(|s| s.reserve_login_attempt(client, at, limits))
    }

    fn forget_login_attempts(&self, client: &str) -> Result<(), StoreError> {
        self.write(|s| s.forget_login_attempts(client))
    }

    fn register_node(&self, node: &NodeStatus) -> Result<(), StoreError> {
        self.write(|s| s.register_node(node))
    }

    fn nodes(&self) -> Result<Vec<NodeStatus>, StoreError> {
        self.write(|s| s.nodes())
    }

    // The policy cache is not in the local copy: while the cluster store is
    // unreachable, the gateway's in-memory cache carries on.
    fn put_mta_sts_policy(&self, record: &MtaStsRecord) -> Result<(), StoreError> {
        self.write(|s| s.put_mta_sts_policy(record))
    }

    fn mta_sts_policy(&self, domain: &str) -> Result<Option<MtaStsRecord>, StoreError> {
        self.write(|s| s.mta_sts_policy(domain))
    }

    fn mta_sts_policies(&self) -> Result<Vec<MtaStsRecord>, StoreError> {
        self.write(|s| s.mta_sts_policies())
    }

    fn publish_queue(&self, snapshot: &QueueSnapshot) -> Result<(), StoreError> {
        self.write(|s| s.publish_queue(snapshot))
    }

    fn queue_snapshots(&self) -> Result<Vec<QueueSnapshot>, StoreError> {
        self.write(|s| s.queue_snapshots())
    }

    fn request_queue_action(
        &self,
        node: &str,
        queue_id: &str,
        action: QueueAction,
    ) -> Result<QueueRequest, StoreError> {
        self.write(|s| s.request_queue_action(node, queue_id, action))
    }

    fn waiting_queue_requests(&self, node: &str) -> Result<Vec<QueueRequest>, StoreError> {
        self.write(|s| s.waiting_queue_requests(node))
    }

    fn queue_request(&self, id: i64) -> Result<Option<QueueRequest>, StoreError> {
        self.write(|s| s.queue_request(id))
    }

    fn finish_queue_request(
        &self,
        id: i64,
        outcome: &Result<String, String>,
    ) -> Result<(), StoreError> {
        self.write(|s| s.finish_queue_request(id, outcome))
    }

    fn queue_hint(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.state().store.as_ref().and_then(|s| s.queue_hint())
    }

    fn location(&self) -> String {
        self.location.clone()
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

    fn change_hint(&self) -> Option<Arc<tokio::sync::Notify>> {
        // A node started during an outage has no listener until it connects;
        // the periodic check covers it.
        self.state().store.as_ref().and_then(|s| s.change_hint())
    }
}

/// The learning evidence lives only in the cluster store: while it is
/// unreachable, reads and writes fail ([`StoreError::Unreachable`]) and the
/// gateway keeps its in-memory view and retries the batch.
impl crate::LearnedStore for CachedPgStore {
    fn record_observations(&self, batch: &[crate::TlsObservation]) -> Result<(), StoreError> {
        self.write(|s| s.learned().record_observations(batch))
    }

    fn observations(&self) -> Result<Vec<crate::TlsObservation>, StoreError> {
        self.write(|s| s.learned().observations())
    }

    fn forget_domain(&self, domain: &str) -> Result<usize, StoreError> {
        self.write(|s| s.learned().forget_domain(domain))
    }

    fn prune(&self, before: i64, verdicts_before: i64) -> Result<usize, StoreError> {
        self.write(|s| s.learned().prune(before, verdicts_before))
    }

    fn record_verdicts(&self, batch: &[crate::MonitorVerdict]) -> Result<(), StoreError> {
        self.write(|s| s.learned().record_verdicts(batch))
    }

    fn verdict_counts(&self, since: i64) -> Result<Vec<crate::MonitorCount>, StoreError> {
        self.write(|s| s.learned().verdict_counts(since))
    }

    fn recent_verdicts(
        &self,
        domain: &str,
        limit: usize,
    ) -> Result<Vec<crate::MonitorVerdict>, StoreError> {
        self.write(|s| s.learned().recent_verdicts(domain, limit))
    }
}

/// Alerts, like the learning evidence, only in the cluster store.
impl crate::AlertStore for CachedPgStore {
    fn record_alerts(&self, batch: &[crate::Alert]) -> Result<(), StoreError> {
        self.write(|s| s.alerts().record_alerts(batch))
    }

    fn recent_alerts(&self, limit: usize) -> Result<Vec<crate::Alert>, StoreError> {
        self.write(|s| s.alerts().recent_alerts(limit))
    }
}

// Report claims and deliveries need the shared store: without it no node
// can know whether another sent the report, so nothing is sent.
impl crate::TlsRptStore for CachedPgStore {
    fn attempt_events(&self, since: i64, until: i64) -> Result<Vec<TrackingEvent>, StoreError> {
        self.write(|s| s.tlsrpt().attempt_events(since, until))
    }

    fn claim_report(&self, claim: &crate::tlsrpt::ReportClaim) -> Result<bool, StoreError> {
        self.write(|s| s.tlsrpt().claim_report(claim))
    }

    fn report_claims(&self, day: &str) -> Result<Vec<crate::tlsrpt::ReportClaim>, StoreError> {
        self.write(|s| s.tlsrpt().report_claims(day))
    }

    fn add_report_delivery(
        &self,
        delivery: &crate::tlsrpt::ReportDelivery,
    ) -> Result<i64, StoreError> {
        self.write(|s| s.tlsrpt().add_report_delivery(delivery))
    }

    fn update_report_delivery(
        &self,
        id: i64,
        update: &crate::tlsrpt::DeliveryUpdate,
    ) -> Result<(), StoreError> {
        self.write(|s| s.tlsrpt().update_report_delivery(id, update))
    }

    fn report_deliveries(
        &self,
        day: &str,
    ) -> Result<Vec<crate::tlsrpt::ReportDelivery>, StoreError> {
        self.write(|s| s.tlsrpt().report_deliveries(day))
    }

    fn take_due_report_deliveries(
        &self,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<crate::tlsrpt::ReportDelivery>, StoreError> {
        self.write(|s| s.tlsrpt().take_due_report_deliveries(now, lease_until))
    }

    fn prune_reports(&self, day: &str) -> Result<usize, StoreError> {
        self.write(|s| s.tlsrpt().prune_reports(day))
    }
}

impl crate::AlertReview for CachedPgStore {
    fn kept_alerts(
        &self,
        filter: &crate::AlertFilter,
    ) -> Result<Vec<crate::KeptAlert>, StoreError> {
        self.write(|s| s.alerts().kept_alerts(filter))
    }

    fn kept_alert(&self, id: i64) -> Result<Option<crate::KeptAlert>, StoreError> {
        self.write(|s| s.alerts().kept_alert(id))
    }

    fn unacknowledged_alert_count(&self) -> Result<u64, StoreError> {
        self.write(|s| s.alerts().unacknowledged_alert_count())
    }

    fn acknowledge_alerts(
        &self,
        ids: &[i64],
        by: &str,
        at: i64,
    ) -> Result<crate::Acknowledged, StoreError> {
        self.write(|s| s.alerts().acknowledge_alerts(ids, by, at))
    }

    fn acknowledge_alerts_through(
        &self,
        through: i64,
        by: &str,
        at: i64,
    ) -> Result<usize, StoreError> {
        self.write(|s| s.alerts().acknowledge_alerts_through(through, by, at))
    }
}

/// The alert rate limit, like the alerts, only in the cluster store: while
/// it is unreachable a claim fails and the gateway falls back to its own
/// once-an-hour memory.
impl crate::AlertClaims for CachedPgStore {
    fn claim_alert(
        &self,
        claim: &crate::AlertClaim<'_>,
        now: i64,
        window: i64,
    ) -> Result<bool, StoreError> {
        self.write(|s| s.alerts().claim_alert(claim, now, window))
    }

    fn prune_alert_claims(&self, before: i64) -> Result<usize, StoreError> {
        self.write(|s| s.alerts().prune_alert_claims(before))
    }
}
