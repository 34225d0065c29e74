//! Alerts (SPEC §12): events an administrator must hear about within
//! minutes. Each raised alert is kept in the store, so every node's alerts
//! are listed together (`/api/v1/alerts`).

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    /// A delivery below a domain's learned TLS level.
    Downgrade,
    /// A host that offered STARTTLS before did not (or its EHLO was masked).
    StarttlsMissing,
    HandshakeFailures,
    RequiredTlsDeferred,
    CertificateExpiry,
    NodeUnreachable,
    NodeBehind,
}

impl AlertKind {
    pub const ALL: [AlertKind; 7] = [
        AlertKind::Downgrade,
        AlertKind::StarttlsMissing,
        AlertKind::HandshakeFailures,
        AlertKind::RequiredTlsDeferred,
        AlertKind::CertificateExpiry,
        AlertKind::NodeUnreachable,
        AlertKind::NodeBehind,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Downgrade => "downgrade",
            AlertKind::StarttlsMissing => "starttls-missing",
            AlertKind::HandshakeFailures => "handshake-failures",
            AlertKind::RequiredTlsDeferred => "required-tls-deferred",
            AlertKind::CertificateExpiry => "certificate-expiry",
            AlertKind::NodeUnreachable => "node-unreachable",
            AlertKind::NodeBehind => "node-behind",
        }
    }

    pub fn parse(text: &str) -> Option<AlertKind> {
        AlertKind::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// Position in [`AlertKind::ALL`] (for counters).
    pub fn index(self) -> usize {
        AlertKind::ALL
            .iter()
            .position(|k| *k == self)
            .unwrap_or_default()
    }
}

/// One raised alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub kind: AlertKind,
    /// The recipient domain (or certificate, node) it concerns.
    pub subject: String,
    /// The MX host, when one is concerned.
    pub host: String,
    /// What happened, in words.
    pub detail: String,
    /// Unix seconds.
    pub at: i64,
}

/// Kept alerts.
pub trait AlertStore: AlertReview + AlertClaims + Send + Sync {
    /// Append alerts (one transaction).
    fn record_alerts(&self, batch: &[Alert]) -> Result<(), StoreError>;
    /// The newest alerts first, at most `limit`.
    fn recent_alerts(&self, limit: usize) -> Result<Vec<Alert>, StoreError>;
}

/// A kept alert with its row id, the node that raised it and its
/// acknowledgement (the Alerts page, the Dashboard banner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptAlert {
    pub id: i64,
    #[serde(flatten)]
    pub alert: Alert,
    /// The raising node's `node_name`; empty for alerts kept before nodes
    /// were recorded.
    pub node: String,
    /// Unix seconds; `None` while unacknowledged.
    pub acknowledged_at: Option<i64>,
    /// Who acknowledged it: `admin` (a browser session) or `token NAME`.
    pub acknowledged_by: Option<String>,
}

/// Which kept alerts to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertFilter {
    pub kind: Option<AlertKind>,
    /// `Some(false)`: only unacknowledged ones; `Some(true)`: only
    /// acknowledged ones.
    pub acknowledged: Option<bool>,
    /// At most this many, newest first.
    pub limit: usize,
}

impl AlertFilter {
    /// The newest unacknowledged alerts.
    pub fn unacknowledged(limit: usize) -> AlertFilter {
        AlertFilter {
            kind: None,
            acknowledged: Some(false),
            limit,
        }
    }
}

/// What acknowledging a list of alerts did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Acknowledged {
    /// Alerts acknowledged now (already acknowledged ones keep their first
    /// acknowledgement and are not counted).
    pub count: usize,
    /// Ids that name no alert: when any is, nothing was acknowledged.
    pub unknown: Vec<i64>,
}

/// Reviewing kept alerts: list, count and acknowledge them. Separate from
/// [`AlertStore`]'s recording so that each can grow on its own.
pub trait AlertReview: Send + Sync {
    /// Kept alerts matching `filter`, newest first.
    fn kept_alerts(&self, filter: &AlertFilter) -> Result<Vec<KeptAlert>, StoreError>;
    /// One kept alert.
    fn kept_alert(&self, id: i64) -> Result<Option<KeptAlert>, StoreError>;
    /// How many alerts are not acknowledged yet.
    fn unacknowledged_alert_count(&self) -> Result<u64, StoreError>;
    /// Acknowledge the alerts `ids` (one transaction): all of them, or
    /// none when an id is unknown.
    fn acknowledge_alerts(
        &self,
        ids: &[i64],
        by: &str,
        at: i64,
    ) -> Result<Acknowledged, StoreError>;
    /// Acknowledge every unacknowledged alert up to and including id
    /// `through` (what the reviewer has seen, not what arrived since).
    fn acknowledge_alerts_through(
        &self,
        through: i64,
        by: &str,
        at: i64,
    ) -> Result<usize, StoreError>;
}

/// One condition sent to one destination, for [`AlertClaims`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertClaim<'a> {
    pub kind: AlertKind,
    /// As [`Alert::subject`].
    pub subject: &'a str,
    /// What else tells the condition apart: the MX host, or for
    /// `certificate-expiry` the threshold and the certificate's fingerprint.
    pub scope: &'a str,
    /// `webhook <url>`, `mailto:<address>`, or `node <name>`.
    pub destination: &'a str,
}

/// The rate limit of alert destinations, shared by every node of a
/// cluster: whoever claims a (condition, destination) pair first sends it;
/// the others, and repeats within the window, do not.
pub trait AlertClaims: Send + Sync {
    /// Claim `claim` at `now` (unix seconds): `true` when there was no
    /// claim of it at or after `now - window` (the claim is now ours),
    /// `false` when there was. One statement, so two nodes claiming at
    /// once get one `true`.
    fn claim_alert(
        &self,
        claim: &AlertClaim<'_>,
        now: i64,
        window: i64,
    ) -> Result<bool, StoreError>;
    /// Delete claims made before `before`; returns how many.
    fn prune_alert_claims(&self, before: i64) -> Result<usize, StoreError>;
}
