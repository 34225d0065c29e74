//! The MTA-STS policy cache (SPEC §9, §10): one row per recipient domain,
//! shared by every node of a cluster, so a policy fetched by one node is
//! used by all until its `max_age` runs out.

use serde::{Deserialize, Serialize};

/// A cached MTA-STS policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MtaStsRecord {
    /// The recipient domain, lower-case.
    pub domain: String,
    /// The `_mta-sts` TXT `id` the policy was fetched for.
    pub id: String,
    /// `enforce`, `testing` or `none`.
    pub mode: String,
    /// Seconds.
    pub max_age: i64,
    /// The `mx` patterns.
    pub mx: Vec<String>,
    /// The policy file as fetched.
    pub policy: String,
    /// Unix seconds.
    pub fetched_at: i64,
    /// Unix seconds: `fetched_at + max_age`.
    pub expires_at: i64,
}

pub(crate) fn mx_json(record: &MtaStsRecord) -> Result<String, crate::StoreError> {
    serde_json::to_string(&record.mx)
        .map_err(|error| crate::StoreError::Corrupt(format!("MTA-STS mx list: {error}")))
}

pub(crate) fn mx_from_json(text: &str) -> Result<Vec<String>, crate::StoreError> {
    serde_json::from_str(text)
        .map_err(|error| crate::StoreError::Corrupt(format!("MTA-STS mx list: {error}")))
}
