//! DKIM keys (SPEC §11, `postern dkim`): the private key that signs mailed
//! TLS reports and the DNS TXT record that publishes its public half. A key
//! is named after the DNS name of that record, `<selector>._domainkey.<domain>`,
//! and cannot be deleted while `tlsrpt.dkim_key` names it.

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Key types `postern dkim generate --key` makes.
pub const DKIM_KEY_TYPES: &[&str] = &["rsa2048", "ed25519"];

/// One DKIM key as the store keeps it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DkimKeyRecord {
    /// `<selector>._domainkey.<domain>`, lower case.
    pub name: String,
    pub domain: String,
    pub selector: String,
    /// One of [`DKIM_KEY_TYPES`].
    pub key_type: String,
    /// PKCS#8, PEM (`-----BEGIN PRIVATE KEY-----`).
    pub private_key_pem: String,
    /// The TXT record to publish at `name`: `v=DKIM1; k=...; p=...`.
    pub dns_record: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// What the store refuses to keep, named.
pub(crate) fn validate_record(record: &DkimKeyRecord) -> Result<(), StoreError> {
    let bad = |why: String| Err(StoreError::BadName(format!("DKIM key: {why}")));
    match postern_config::dkim_key_name(&record.selector, &record.domain) {
        Ok(name) if name == record.name => {}
        Ok(name) => return bad(format!("name {:?} should be {name:?}", record.name)),
        Err(e) => return bad(e.to_string()),
    }
    if !DKIM_KEY_TYPES.contains(&record.key_type.as_str()) {
        return bad(format!(
            "key type {:?} is not one of {}",
            record.key_type,
            DKIM_KEY_TYPES.join(", ")
        ));
    }
    if !record
        .private_key_pem
        .starts_with("-----BEGIN PRIVATE KEY-----")
    {
        return bad("the private key must be PKCS#8 PEM".to_string());
    }
    if !record.dns_record.starts_with("v=DKIM1;") {
        return bad("the DNS record must start with \"v=DKIM1;\"".to_string());
    }
    Ok(())
}
