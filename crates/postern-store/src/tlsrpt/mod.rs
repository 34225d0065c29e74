//! TLS-RPT (RFC 8460, SPEC §11): what the store keeps for the daily
//! reports, and the pure aggregation of a day's attempts into one.
//!
//! * A **claim** per (recipient domain, UTC day): inserted if absent in one
//!   statement, so of two nodes racing to send the same report exactly one
//!   wins and sends it. It carries the report's id and summary counts.
//! * A **delivery** per destination of the report's `rua`: a `mailto:`
//!   report queued through Postern's own queue (its queue id is kept, and
//!   the attempts of that queue id are never counted in reports), or an
//!   `https:` POST with its state (attempts, next try, the gzipped body) so
//!   retries resume after a restart, on any node.
//!
//! [`report`] builds the RFC 8460 §4 JSON from attempt events; it does no
//! I/O, so the CLI, the daily run and the admin page share it.

pub mod report;

use serde::{Deserialize, Serialize};

use crate::{StoreError, TrackingEvent};

/// The winner of one (domain, day) report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportClaim {
    /// The recipient (policy) domain, lower case.
    pub domain: String,
    /// The UTC day reported, `YYYY-MM-DD`.
    pub day: String,
    /// The node that sends it.
    pub node: String,
    pub report_id: String,
    /// Unix seconds.
    pub claimed_at: i64,
    pub successful: i64,
    pub failed: i64,
}

/// Where a delivery of a report stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryStatus {
    /// A `mailto:` report handed to the queue (its outcome is the queued
    /// message's).
    Queued,
    /// Accepted by the endpoint (2xx).
    Sent,
    /// Failed; tried again at `next_attempt`.
    Retrying,
    /// Given up (24 hours of failures, or a destination that cannot work).
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Queued => "queued",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Retrying => "retrying",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        [
            DeliveryStatus::Queued,
            DeliveryStatus::Sent,
            DeliveryStatus::Retrying,
            DeliveryStatus::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// One destination of one report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportDelivery {
    /// Set by the store.
    pub id: i64,
    pub domain: String,
    pub day: String,
    /// The `rua` URI: `mailto:...` or `https://...`.
    pub destination: String,
    /// The node that sent (or last tried) it.
    pub node: String,
    pub status: DeliveryStatus,
    /// The last result in words (the endpoint's status, why it failed,
    /// the queue id).
    pub detail: String,
    /// The queued report mail, for `mailto:`.
    pub queue_id: Option<String>,
    pub attempts: i64,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
    /// When a `retrying` delivery is due.
    pub next_attempt: Option<i64>,
    /// The gzipped report, kept while an `https:` delivery may be retried.
    #[serde(skip)]
    pub body: Option<Vec<u8>>,
}

/// The result of one try of a delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryUpdate {
    pub status: DeliveryStatus,
    pub detail: String,
    pub node: String,
    pub attempts: i64,
    pub updated_at: i64,
    pub next_attempt: Option<i64>,
}

/// The store's TLS-RPT tables.
pub trait TlsRptStore: Send + Sync {
    /// The `delivery_attempt` events recorded at `since` ≤ at < `until`,
    /// oldest first — except those of queued report mails (a report's own
    /// delivery is never counted in a report).
    fn attempt_events(&self, since: i64, until: i64) -> Result<Vec<TrackingEvent>, StoreError>;

    /// Insert the claim unless one exists for its (domain, day), in one
    /// statement. True when this call inserted it (the caller sends).
    fn claim_report(&self, claim: &ReportClaim) -> Result<bool, StoreError>;

    /// The claims of `day`, by domain.
    fn report_claims(&self, day: &str) -> Result<Vec<ReportClaim>, StoreError>;

    /// Record a delivery; returns its id.
    fn add_report_delivery(&self, delivery: &ReportDelivery) -> Result<i64, StoreError>;

    /// Record the result of a try; the body is dropped unless it is
    /// `retrying`.
    fn update_report_delivery(&self, id: i64, update: &DeliveryUpdate) -> Result<(), StoreError>;

    /// The deliveries of `day`, by domain and id (bodies not loaded).
    fn report_deliveries(&self, day: &str) -> Result<Vec<ReportDelivery>, StoreError>;

    /// Take the `retrying` deliveries due at `now` (with their bodies):
    /// their `next_attempt` moves to `lease_until` in the same statement,
    /// so another node polling at once does not take them too.
    fn take_due_report_deliveries(
        &self,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<ReportDelivery>, StoreError>;

    /// Delete the claims and deliveries of days before `day` (`YYYY-MM-DD`,
    /// so text order is date order), except deliveries still `retrying`.
    /// Returns the rows deleted.
    fn prune_reports(&self, day: &str) -> Result<usize, StoreError>;
}
