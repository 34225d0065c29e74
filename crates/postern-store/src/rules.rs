//! The store's rules, once for every backend: [`Store`] for any
//! [`Backend`]. See the crate documentation for the rules themselves.

use std::time::Duration;

use postern_config::Settings;

use crate::backend::{self, Backend, CredentialKind, Transaction};
use crate::{
    admin, certificates, events, settings, ApiToken, CertificateRecord, EventQuery, NodeStatus,
    Store, StoreError, TrackingEvent,
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
            tx.put_credential(CredentialKind::Password, ADMIN, hash, crate::now())
        })
    }

    fn init_admin_password_hash(&self, hash: &str) -> Result<bool, StoreError> {
        admin::check_hash(hash)?;
        backend::write(self, WRITE_WAIT, |tx| {
            if tx.credential(CredentialKind::Password, ADMIN)?.is_some() {
                return Ok(false);
            }
            tx.put_credential(CredentialKind::Password, ADMIN, hash, crate::now())?;
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
            tx.put_credential(CredentialKind::Token, name, token_hash, crate::now())
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
            Ok(())
        })
    }

    fn register_node(&self, node: &NodeStatus) -> Result<(), StoreError> {
        self.put_node(node)
    }

    fn nodes(&self) -> Result<Vec<NodeStatus>, StoreError> {
        Backend::nodes(self)
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

    fn change_hint(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        Backend::change_hint(self)
    }
}
