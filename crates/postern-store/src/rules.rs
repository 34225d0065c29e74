//! The store's rules, once for every backend: [`Store`] for any
//! [`Backend`]. See the crate documentation for the rules themselves.

use std::time::Duration;

use postern_config::Settings;

use crate::backend::{self, Backend, CredentialKind, Transaction};
use crate::{
    admin, certificates, dkim, events, sessions, settings, AdminSession, ApiToken,
    CertificateRecord, DkimKeyRecord, EventQuery, LoginLimits, LoginReservation, MtaStsRecord,
    NodeStatus, QueueAction, QueueRequest, QueueSnapshot, SessionLimits, Store, StoreError,
    TrackingEvent,
};

/// How long a write waits for another writer (a CLI command, another node).
pub(crate) const WRITE_WAIT: Duration = Duration::from_secs(5);

/// How long [`Store::ensure_default_certificate`] waits for another process
/// or node that is generating the key (RSA-4096 can take several seconds).
pub(crate) const DEFAULT_CERT_WAIT: Duration = Duration::from_secs(120);

/// The name of the one admin password row.
const ADMIN: &str = "admin";

fn load_settings(tx: &mut dyn Transaction) -> Result<Settings, StoreError> {
    settings::parse_document(tx.settings_document()?.as_deref())
}

/// Validate `new` against the table and save it; inside a write transaction.
fn check_and_save(tx: &mut dyn Transaction, new: &Settings) -> Result<(), StoreError> {
    settings::check(new, |name| tx.certificate(name))?;
    let key = &new.tlsrpt.dkim_key;
    if !key.is_empty() && tx.dkim_key(key)?.is_none() {
        return Err(StoreError::Invalid(postern_config::ConfigError::new(
            "tlsrpt.dkim_key",
            format!(
                "names no DKIM key: \"{key}\" does not exist; make it with `postern dkim \
                 generate`, or see `postern dkim list`"
            ),
        )));
    }
    tx.save_settings_document(&new.to_json(), crate::now())?;
    tx.bump_generation()
}

fn insert_certificate(
    tx: &mut dyn Transaction,
    record: &CertificateRecord,
) -> Result<(), StoreError> {
    if let Some(existing) = tx.certificate_name_nocase(&record.name)? {
        return Err(StoreError::Duplicate(existing));
    }
    tx.insert_certificate(record)
}

fn ensure_default(
    tx: &mut dyn Transaction,
    name: &str,
    make: &mut dyn FnMut() -> Result<CertificateRecord, String>,
) -> Result<bool, StoreError> {
    let flag = certificates::generated_flag(name);
    if tx.flag(&flag)?.is_some() {
        return Ok(false);
    }
    if tx.certificate(name)?.is_some() {
        // Imported under that name before first use: keep it.
        tx.set_flag(&flag, crate::now())?;
        return Ok(false);
    }
    let mut record = make().map_err(StoreError::DefaultCertificate)?;
    record.name = name.to_string();
    if record.key_pem.is_none() {
        return Err(StoreError::DefaultCertificate(
            "the generated certificate has no private key".to_string(),
        ));
    }
    certificates::validate_record(&record)?;
    insert_certificate(tx, &record)?;
    tx.set_flag(&flag, crate::now())?;
    tx.bump_generation()?;
    Ok(true)
}

impl<B: Backend> Store for B {
    fn settings(&self) -> Result<Settings, StoreError> {
        backend::read(self, load_settings)
    }

    fn put_settings(&self, new: &Settings) -> Result<(), StoreError> {
        // Validated before the lock: bad input never waits for it.
        new.validate()?;
        backend::write(self, WRITE_WAIT, |tx| check_and_save(tx, new))
    }

    fn update_settings(
        &self,
        change: &mut dyn FnMut(&Settings) -> Result<Settings, StoreError>,
    ) -> Result<Settings, StoreError> {
        backend::write(self, WRITE_WAIT, |tx| {
            let new = change(&load_settings(tx)?)?;
            check_and_save(tx, &new)?;
            Ok(new)
        })
    }

    fn generation(&self) -> Result<i64, StoreError> {
        Backend::generation(self)
    }

    fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        backend::read(self, |tx| tx.certificates())
    }

    fn certificate(&self, name: &str) -> Result<Option<CertificateRecord>, StoreError> {
        backend::read(self, |tx| tx.certificate(name))
    }

    fn add_certificate(&self, record: &CertificateRecord) -> Result<(), StoreError> {
        certificates::validate_record(record)?;
        backend::write(self, WRITE_WAIT, |tx| {
            insert_certificate(tx, record)?;
            tx.bump_generation()
        })
    }

    fn delete_certificate(&self, name: &str) -> Result<(), StoreError> {
        backend::write(self, WRITE_WAIT, |tx| {
            let current = load_settings(tx)?;
            if let Some(key) = settings::key_using(&current, name) {
                return Err(StoreError::InUse {
                    name: name.to_string(),
                    key: key.to_string(),
                });
            }
            if !tx.delete_certificate(name)? {
                return Err(StoreError::NotFound(name.to_string()));
            }
            tx.bump_generation()
        })
    }

    fn ensure_default_certificate(
        &self,
        name: &str,
        make: &mut dyn FnMut() -> Result<CertificateRecord, String>,
    ) -> Result<bool, StoreError> {
        let flag = certificates::generated_flag(name);
        // Fast path without the write lock: every start after the first.
        if backend::read(self, |tx| tx.flag(&flag))?.is_some() {
            return Ok(false);
        }
        // Under the write lock, checked again: another process or node may
        // have generated it while we waited.
        backend::write(self, DEFAULT_CERT_WAIT, |tx| ensure_default(tx, name, make))
    }

    fn dkim_keys(&self) -> Result<Vec<DkimKeyRecord>, StoreError> {
        backend::read(self, |tx| tx.dkim_keys())
    }

    fn dkim_key(&self, name: &str) -> Result<Option<DkimKeyRecord>, StoreError> {
        backend::read(self, |tx| tx.dkim_key(name))
    }

    fn add_dkim_key(&self, record: &DkimKeyRecord) -> Result<(), StoreError> {
        dkim::validate_record(record)?;
        backend::write(self, WRITE_WAIT, |tx| {
            if tx.dkim_key(&record.name)?.is_some() {
                return Err(StoreError::DuplicateDkimKey(record.name.clone()));
            }
            tx.insert_dkim_key(record)
        })
    }

    fn delete_dkim_key(&self, name: &str) -> Result<(), StoreError> {
        // In the write transaction: a concurrent `settings set
        // tlsrpt.dkim_key` either sees the key or is seen here.
        backend::write(self, WRITE_WAIT, |tx| {
            if load_settings(tx)?.tlsrpt.dkim_key == name {
                return Err(StoreError::DkimKeyInUse(name.to_string()));
            }
            if !tx.delete_dkim_key(name)? {
                return Err(StoreError::UnknownDkimKey(name.to_string()));
            }
            Ok(())
        })
    }

    fn record_event(&self, event: &TrackingEvent) -> Result<(), StoreError> {
        self.insert_events(std::slice::from_ref(event))
    }

    fn record_events(&self, batch: &[TrackingEvent]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.insert_events(batch)
    }

    fn events_for(&self, id_or_message_id: &str) -> Result<Vec<TrackingEvent>, StoreError> {
        let (given, other) = events::message_id_forms(id_or_message_id);
        Backend::events_for(self, &given, [&given, &other])
    }

    fn recent_events(&self, limit: usize) -> Result<Vec<TrackingEvent>, StoreError> {
        Backend::recent_events(self, limit)
    }

    fn prune_events(&self, before: i64) -> Result<usize, StoreError> {
        Backend::prune_events(self, before)
    }

    fn search_events(&self, query: &EventQuery) -> Result<Vec<TrackingEvent>, StoreError> {
        Backend::search_events(self, query)
    }

    fn admin_password_hash(&self) -> Result<Option<String>, StoreError> {
        backend::read(self, |tx| tx.credential(CredentialKind::Password, ADMIN))
    }

    fn set_admin_password_hash(&self, hash: &str) -> Result<(), StoreError> {
        admin::check_hash(hash)?;
        backend::write(self, WRITE_WAIT, |tx| {
            tx.put_credential(CredentialKind::Password, ADMIN, hash, crate::now())?;
            tx.bump_credentials()
        })
    }

    fn init_admin_password_hash(&self, hash: &str) -> Result<bool, StoreError> {
        admin::check_hash(hash)?;
        backend::write(self, WRITE_WAIT, |tx| {
            if tx.credential(CredentialKind::Password, ADMIN)?.is_some() {
                return Ok(false);
            }
            tx.put_credential(CredentialKind::Password, ADMIN, hash, crate::now())?;
            tx.bump_credentials()?;
            Ok(true)
        })
    }

    fn add_api_token(&self, name: &str, token_hash: &str) -> Result<(), StoreError> {
        admin::validate_token_name(name)?;
        admin::check_hash(token_hash)?;
        backend::write(self, WRITE_WAIT, |tx| {
            if tx.credential(CredentialKind::Token, name)?.is_some() {
                return Err(StoreError::DuplicateToken(name.to_string()));
            }
            tx.put_credential(CredentialKind::Token, name, token_hash, crate::now())?;
            tx.bump_credentials()
        })
    }

    fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>, StoreError> {
        backend::read(self, |tx| tx.token_by_hash(token_hash))
    }

    fn api_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        backend::read(self, |tx| tx.tokens())
    }

    fn delete_api_token(&self, name: &str) -> Result<(), StoreError> {
        backend::write(self, WRITE_WAIT, |tx| {
            if !tx.delete_credential(CredentialKind::Token, name)? {
                return Err(StoreError::UnknownToken(name.to_string()));
            }
            tx.bump_credentials()
        })
    }

    fn credentials_version(&self) -> Result<i64, StoreError> {
        backend::read(self, |tx| {
            Ok(tx.flag(sessions::CREDENTIALS_VERSION)?.unwrap_or(0))
        })
    }

    fn create_admin_session(
        &self,
        session: &AdminSession,
        replaces: Option<&str>,
        limits: &SessionLimits,
    ) -> Result<(), StoreError> {
        sessions::check_session(session)?;
        backend::write(self, WRITE_WAIT, |tx| {
            sessions::create(tx, session, replaces, limits)
        })
    }

    fn admin_session(&self, id_hash: &str) -> Result<Option<AdminSession>, StoreError> {
        backend::read(self, |tx| tx.session(id_hash))
    }

    fn touch_admin_session(&self, id_hash: &str, at: i64) -> Result<bool, StoreError> {
        backend::write(self, WRITE_WAIT, |tx| tx.touch_session(id_hash, at))
    }

    fn delete_admin_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        backend::write(self, WRITE_WAIT, |tx| {
            let deleted = tx.delete_session(id_hash)?;
            if deleted {
                tx.bump_credentials()?;
            }
            Ok(deleted)
        })
    }

    fn end_admin_sessions_except(&self, current: &str) -> Result<usize, StoreError> {
        backend::write(self, WRITE_WAIT, |tx| {
            let ended = tx.delete_sessions_except(current)?;
            if ended > 0 {
                tx.bump_credentials()?;
            }
            Ok(ended)
        })
    }

    fn reserve_login_attempt(
        &self,
        client: &str,
        at: i64,
        limits: &LoginLimits,
    ) -> Result<LoginReservation, StoreError> {
        sessions::check_client(client)?;
        backend::write(self, WRITE_WAIT, |tx| {
            sessions::reserve(tx, client, at, limits)
        })
    }

    fn forget_login_attempts(&self, client: &str) -> Result<(), StoreError> {
        backend::write(self, WRITE_WAIT, |tx| {
            tx.delete_login_attempts(client).map(|_| ())
        })
    }

    fn register_node(&self, node: &NodeStatus) -> Result<(), StoreError> {
        self.put_node(node)
    }

    fn nodes(&self) -> Result<Vec<NodeStatus>, StoreError> {
        Backend::nodes(self)
    }

    fn put_mta_sts_policy(&self, record: &MtaStsRecord) -> Result<(), StoreError> {
        let mut record = record.clone();
        record.domain = record.domain.trim_end_matches('.').to_ascii_lowercase();
        if record.domain.is_empty() {
            return Err(StoreError::BadName(
                "an MTA-STS policy needs a domain".to_string(),
            ));
        }
        self.put_mta_sts(&record)
    }

    fn mta_sts_policy(&self, domain: &str) -> Result<Option<MtaStsRecord>, StoreError> {
        self.mta_sts(&domain.trim_end_matches('.').to_ascii_lowercase())
    }

    fn mta_sts_policies(&self) -> Result<Vec<MtaStsRecord>, StoreError> {
        self.mta_sts_list()
    }

    fn publish_queue(&self, snapshot: &QueueSnapshot) -> Result<(), StoreError> {
        self.put_queue_snapshot(snapshot)
    }

    fn queue_snapshots(&self) -> Result<Vec<QueueSnapshot>, StoreError> {
        Backend::queue_snapshots(self)
    }

    fn request_queue_action(
        &self,
        node: &str,
        queue_id: &str,
        action: QueueAction,
    ) -> Result<QueueRequest, StoreError> {
        if node.is_empty() {
            return Err(StoreError::BadName(
                "a queue request names no node".to_string(),
            ));
        }
        if queue_id.is_empty() {
            return Err(StoreError::BadName(
                "a queue request names no message".to_string(),
            ));
        }
        self.insert_queue_request(node, queue_id, action)
    }

    fn waiting_queue_requests(&self, node: &str) -> Result<Vec<QueueRequest>, StoreError> {
        Backend::waiting_queue_requests(self, node)
    }

    fn queue_request(&self, id: i64) -> Result<Option<QueueRequest>, StoreError> {
        Backend::queue_request(self, id)
    }

    fn finish_queue_request(
        &self,
        id: i64,
        outcome: &Result<String, String>,
    ) -> Result<(), StoreError> {
        Backend::finish_queue_request(self, id, outcome)
    }

    fn queue_hint(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        Backend::queue_hint(self)
    }

    fn location(&self) -> String {
        self.describe()
    }

    fn learned(&self) -> &dyn crate::LearnedStore {
        Backend::learned(self)
    }

    fn alerts(&self) -> &dyn crate::AlertStore {
        Backend::alerts(self)
    }

    fn tlsrpt(&self) -> &dyn crate::TlsRptStore {
        Backend::tlsrpt(self)
    }

    fn change_hint(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        Backend::change_hint(self)
    }
}
