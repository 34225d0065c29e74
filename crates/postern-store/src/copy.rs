//! `postern store copy --to URL` (SPEC §9): an installation copied, whole,
//! into an empty store — settings and domains, certificates with their
//! keys, the once-only flags (so the target never makes a second Default
//! Cert), the admin password hash, API token hashes, tracking events —
//! then read back and compared.
//!
//! The target is written in one transaction holding its write lock, so a
//! node starting on it meanwhile waits and then finds the copy, and a
//! refused or failed copy leaves it as it was.

use postern_config::{DEFAULT_CERT_NAME, DEFAULT_ECDSA_CERT_NAME};

use crate::backend::{self, Backend, CredentialKind, Transaction};
use crate::certificates::generated_flag;
use crate::rules::{DEFAULT_CERT_WAIT, WRITE_WAIT};
use crate::{CertificateRecord, DkimKeyRecord, StoreError};

/// Events read and written per round.
const EVENT_PAGE: usize = 5000;

/// What was copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Whether settings had ever been saved (else the defaults apply).
    pub settings: bool,
    /// `[[domain]]` entries in the settings.
    pub domains: usize,
    pub certificates: usize,
    /// Of which with a private key.
    pub private_keys: usize,
    pub admin_password: bool,
    pub api_tokens: usize,
    pub dkim_keys: usize,
    pub events: usize,
}

/// Everything but the events, read in one consistent view (also what a
/// node caches locally for store outages, `cached.rs`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Installation {
    pub(crate) settings: Option<String>,
    pub(crate) certificates: Vec<CertificateRecord>,
    pub(crate) flags: Vec<(String, i64)>,
    pub(crate) password: Option<String>,
    /// (name, hash, created_at)
    pub(crate) tokens: Vec<(String, String, i64)>,
    #[serde(default)]
    pub(crate) dkim_keys: Vec<DkimKeyRecord>,
}

pub(crate) fn read_installation(tx: &mut dyn Transaction) -> Result<Installation, StoreError> {
    let mut flags = Vec::new();
    for name in [DEFAULT_CERT_NAME, DEFAULT_ECDSA_CERT_NAME] {
        let key = generated_flag(name);
        if let Some(value) = tx.flag(&key)? {
            flags.push((key, value));
        }
    }
    let mut tokens = Vec::new();
    for token in tx.tokens()? {
        if let Some(hash) = tx.credential(CredentialKind::Token, &token.name)? {
            tokens.push((token.name, hash, token.created_at));
        }
    }
    Ok(Installation {
        settings: tx.settings_document()?,
        certificates: tx.certificates()?,
        flags,
        password: tx.credential(CredentialKind::Password, "admin")?,
        tokens,
        dkim_keys: tx.dkim_keys()?,
    })
}

/// Copy `source` into `target`, which must hold no installation; events
/// without a node name are stamped with `node` (the node that recorded
/// them). Nothing is written when the target is not empty.
pub fn copy_installation<S, T>(source: &S, target: &T, node: &str) -> Result<CopyReport, StoreError>
where
    S: Backend + ?Sized,
    T: Backend + ?Sized,
{
    // Read under the source's write lock: no CLI command changes it halfway.
    let installation = backend::write(source, WRITE_WAIT, read_installation)?;
    let events = backend::write(target, DEFAULT_CERT_WAIT, |tx| {
        let occupied: Vec<String> = tx
            .row_counts()?
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(table, n)| format!("{table}: {n}"))
            .collect();
        let flagged = [DEFAULT_CERT_NAME, DEFAULT_ECDSA_CERT_NAME]
            .iter()
            .any(|name| matches!(tx.flag(&generated_flag(name)), Ok(Some(_))));
        if !occupied.is_empty() || flagged {
            return Err(StoreError::NotEmpty(if occupied.is_empty() {
                "its Default Cert was created already".to_string()
            } else {
                occupied.join(", ")
            }));
        }
        if let Some(document) = &installation.settings {
            tx.save_settings_document(document, crate::now())?;
        }
        for record in &installation.certificates {
            tx.insert_certificate(record)?;
        }
        for (key, value) in &installation.flags {
            tx.set_flag(key, *value)?;
        }
        if let Some(hash) = &installation.password {
            tx.put_credential(CredentialKind::Password, "admin", hash, crate::now())?;
        }
        for (name, hash, at) in &installation.tokens {
            tx.put_credential(CredentialKind::Token, name, hash, *at)?;
        }
        for key in &installation.dkim_keys {
            tx.insert_dkim_key(key)?;
        }
        let mut copied = 0;
        let mut after = 0;
        loop {
            let page = backend::read(source, |source_tx| {
                source_tx.events_after(after, EVENT_PAGE)
            })?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = *last;
            let events: Vec<_> = page.into_iter().map(|(_, event)| event).collect();
            tx.copy_events(node, &events)?;
            copied += events.len();
        }
        // Nodes already running on the target reload.
        tx.bump_generation()?;
        Ok(copied)
    })?;
    verify(&installation, events, target)?;
    let domains = match &installation.settings {
        Some(document) => crate::settings::parse_document(Some(document))?
            .domains
            .len(),
        None => 0,
    };
    Ok(CopyReport {
        settings: installation.settings.is_some(),
        domains,
        certificates: installation.certificates.len(),
        private_keys: installation
            .certificates
            .iter()
            .filter(|c| c.key_pem.is_some())
            .count(),
        admin_password: installation.password.is_some(),
        api_tokens: installation.tokens.len(),
        dkim_keys: installation.dkim_keys.len(),
        events,
    })
}

/// Read the target back and compare it with what was copied.
fn verify<T: Backend + ?Sized>(
    copied: &Installation,
    events: usize,
    target: &T,
) -> Result<(), StoreError> {
    let found = backend::read(target, read_installation)?;
    let counted = backend::read(target, |tx| tx.row_counts())?;
    let target_events = counted
        .iter()
        .find(|(table, _)| *table == "events")
        .map_or(0, |(_, n)| *n);
    let mismatch = |what: &str| {
        Err(StoreError::Corrupt(format!(
            "store copy: the {what} read back from the target differ from the source"
        )))
    };
    if found.settings != copied.settings {
        return mismatch("settings");
    }
    if found.certificates != copied.certificates {
        return mismatch("certificates");
    }
    if found.flags != copied.flags {
        return mismatch("once-only flags");
    }
    if found.password != copied.password || found.tokens != copied.tokens {
        return mismatch("credentials");
    }
    if found.dkim_keys != copied.dkim_keys {
        return mismatch("DKIM keys");
    }
    if usize::try_from(target_events).ok() != Some(events) {
        return mismatch("tracking events");
    }
    Ok(())
}
