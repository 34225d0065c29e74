//! The evidence behind learned per-domain TLS levels (SPEC §10 item 4) and
//! the would-be verdicts of `monitor` domain rules (item 7), shared through
//! the store so that every node of a cluster learns as one.
//!
//! Only evidence is stored: per recipient domain, MX host and level, how
//! many deliveries were made at it and when first and last. What is
//! *learned* from it is a pure function of the evidence, the clock and the
//! settings (`rule.rs`, used by the gateway, the CLI and the admin API
//! alike), so changing `learn_min_deliveries` applies to what was already
//! seen.

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// The security a delivery had, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsLevel {
    /// No TLS.
    None,
    /// TLS, the certificate not authenticated.
    Tls,
    /// TLS with an authenticated certificate.
    Verified,
}

impl TlsLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsLevel::None => "none",
            TlsLevel::Tls => "tls",
            TlsLevel::Verified => "verified",
        }
    }

    pub fn parse(text: &str) -> Option<TlsLevel> {
        match text {
            "none" => Some(TlsLevel::None),
            "tls" => Some(TlsLevel::Tls),
            "verified" => Some(TlsLevel::Verified),
            _ => None,
        }
    }
}

/// Deliveries to one domain's host at one level: one row of evidence. As
/// a write, `deliveries` are added and the seen times widened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsObservation {
    /// Recipient domain, lower case.
    pub domain: String,
    /// The MX host (or next hop) delivered to, lower case.
    pub host: String,
    pub level: TlsLevel,
    pub deliveries: i64,
    /// Unix seconds.
    pub first_seen: i64,
    pub last_seen: i64,
}

/// One attempt's would-be verdict under a report-only requirement: a
/// `monitor = true` domain rule (every attempt), or a learned level under
/// `learn = "monitor"` (only downgrades).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorVerdict {
    /// `domain` (a monitor rule) or `learned`.
    pub source: String,
    pub domain: String,
    pub host: String,
    /// Unix seconds.
    pub at: i64,
    /// The rule's requirement as reasons name it (`domain verify`).
    pub requirement: String,
    /// Whether the attempt would have failed under it.
    pub would_fail: bool,
    /// What would have failed (empty when it would have passed).
    pub reason: String,
}

/// Would-be verdicts of one domain since a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorCount {
    pub domain: String,
    pub attempts: i64,
    pub would_fail: i64,
}

/// Reads and writes of the learning evidence.
pub trait LearnedStore: Send + Sync {
    /// Add a batch of observations (one transaction): for each (domain,
    /// host, level), deliveries are summed, `first_seen` is the earliest
    /// and `last_seen` the latest.
    fn record_observations(&self, batch: &[TlsObservation]) -> Result<(), StoreError>;

    /// Every observation, ordered by domain, host and level.
    fn observations(&self) -> Result<Vec<TlsObservation>, StoreError>;

    /// Forget every observation of `domain`; returns how many rows went.
    fn forget_domain(&self, domain: &str) -> Result<usize, StoreError>;

    /// Delete observations last seen before `before` (unix seconds), and
    /// monitor verdicts older than `verdicts_before`; returns how many.
    fn prune(&self, before: i64, verdicts_before: i64) -> Result<usize, StoreError>;

    /// Append would-be verdicts of monitor rules.
    fn record_verdicts(&self, batch: &[MonitorVerdict]) -> Result<(), StoreError>;

    /// Per domain: verdicts of monitor rules (`source = "domain"`) at or
    /// after `since`, and how many would have failed.
    fn verdict_counts(&self, since: i64) -> Result<Vec<MonitorCount>, StoreError>;

    /// The latest verdicts of `domain`, newest first, at most `limit`.
    fn recent_verdicts(
        &self,
        domain: &str,
        limit: usize,
    ) -> Result<Vec<MonitorVerdict>, StoreError>;
}

/// A domain or host name as stored: lower case, no trailing dot.
pub fn normalise_name(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// One row per (domain, host, level), summed: a batch may see the same
/// key twice, and one statement may not update a row twice.
pub(crate) fn merge_batch(batch: &[TlsObservation]) -> Vec<TlsObservation> {
    let mut merged: std::collections::BTreeMap<(&str, &str, TlsLevel), TlsObservation> =
        std::collections::BTreeMap::new();
    for o in batch {
        merged
            .entry((&o.domain, &o.host, o.level))
            .and_modify(|m| {
                m.deliveries += o.deliveries;
                m.first_seen = m.first_seen.min(o.first_seen);
                m.last_seen = m.last_seen.max(o.last_seen);
            })
            .or_insert_with(|| o.clone());
    }
    merged.into_values().collect()
}

pub mod review;
mod rule;
pub use rule::{learn, summarise, DomainEvidence, LearnRule, Learned};
