//! The settings document: one row holding the JSON form of [`Settings`],
//! and the checks made before it is saved (every backend).
//!
//! Keeping the whole document (rather than one row per key) makes a save
//! atomic by construction and leaves the schema of SPEC §4 to
//! `postern-config`, the one place that knows it.

use postern_config::{ConfigError, Settings};
use postern_tls::CertKeyPem;

use crate::{CertificateRecord, StoreError};

/// Keys whose certificate is presented to peers and so needs a private key.
const KEYS_NEEDING_PRIVATE_KEY: &[&str] = &[
    "tls.inbound.certificate",
    "tls.inbound.ecdsa_certificate",
    "tls.outbound.client_certificate",
];

/// The settings from their stored document, or the defaults when none was
/// ever saved.
pub(crate) fn parse_document(document: Option<&str>) -> Result<Settings, StoreError> {
    let Some(document) = document else {
        return Ok(Settings::default());
    };
    // Validated again on the way out: a settings file written by another
    // version must not reach the gateway unchecked. Values outside today's
    // [mta] ranges (saved by an older Postern with looser bounds) still
    // load, so the gateway keeps running and `settings set` can repair them.
    let (settings, out_of_range) = Settings::from_stored_json(document).map_err(|error| {
        StoreError::Invalid(ConfigError::new(
            error.key,
            format!("in the stored settings: {}", error.message),
        ))
    })?;
    if let Some(error) = out_of_range {
        tracing::warn!(
            "stored setting {} is outside its range ({}); it stays in effect until changed",
            error.key,
            error.message
        );
    }
    Ok(settings)
}

/// Validate settings against themselves and the certificate table.
///
/// `lookup` tells, for a certificate name, whether it exists and whether it
/// has a private key: `None`, `Some(false)` or `Some(true)`. Shared by every
/// backend.
pub(crate) fn check(
    settings: &Settings,
    mut lookup: impl FnMut(&str) -> Result<Option<CertificateRecord>, StoreError>,
) -> Result<(), StoreError> {
    settings.validate()?;
    for (key, name) in settings.certificate_references() {
        let Some(record) = lookup(name)? else {
            let message = if name == "system" {
                "\"system\" (the public web PKI roots) is only accepted in tls.outbound.trusted_ca; name CA entries of the certificate table".to_string()
            } else {
                format!("no certificate named \"{name}\" in the certificate table")
            };
            return Err(ConfigError::new(key, message).into());
        };
        let Some(key_pem) = record.key_pem.as_deref() else {
            if KEYS_NEEDING_PRIVATE_KEY.contains(&key) {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "\"{name}\" has no private key (it is a CA / trust anchor); name an entry with a key"
                    ),
                )
                .into());
            }
            continue;
        };
        if key == "tls.inbound.ecdsa_certificate" {
            // An RSA key here would never be chosen over the RSA primary.
            let entry = CertKeyPem {
                chain_pem: &record.chain_pem,
                key_pem,
            };
            entry
                .check_alternate()
                .map_err(|e| ConfigError::new(key, format!("\"{name}\": {e}")))?;
        }
    }
    Ok(())
}

/// The setting key that uses certificate `name`, if any.
pub(crate) fn key_using(settings: &Settings, name: &str) -> Option<&'static str> {
    settings
        .certificate_references()
        .into_iter()
        .find(|(_, used)| *used == name)
        .map(|(key, _)| key)
}
