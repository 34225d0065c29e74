//! `/api/v1/tlsrpt?date=YYYY-MM-DD` (SPEC §11): for one UTC day (default:
//! the previous one, what the daily run reports), per recipient domain the
//! session counts the report has (per policy type), the report claimed for
//! it (which node, when), and each destination it was sent to with the
//! result. The counts come from the same pure aggregation the reports use.
//! A `mailto:` report is `queued` when handed to the queue; its outcome is
//! the queued message's, read from that message's tracking events here.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::Json;
use postern_store::event::Event;
use postern_store::tlsrpt::report::{self, DAY_SECS};
use postern_store::tlsrpt::{DeliveryStatus, ReportClaim, ReportDelivery};
use postern_store::TrackingEvent;
use serde::{Deserialize, Serialize};

use super::blocking;
use crate::error::{ApiError, ApiResult};
use crate::Shared;

#[derive(Debug, Default, Deserialize)]
pub struct DayQuery {
    pub date: Option<String>,
}

/// Counts of one policy type.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyCounts {
    pub policy_type: String,
    pub successful: u64,
    pub failed: u64,
}

/// One recipient domain on one day.
#[derive(Debug, Clone, Serialize)]
pub struct DomainDay {
    pub domain: String,
    pub successful: u64,
    pub failed: u64,
    pub policies: Vec<PolicyCounts>,
    /// The report sent for it, when one was.
    pub report: Option<ReportClaim>,
    pub sent: Vec<ReportDelivery>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsRptView {
    pub date: String,
    pub domains: Vec<DomainDay>,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The view of `date` (default: yesterday, UTC).
pub async fn load(state: &Shared, date: Option<String>) -> Result<TlsRptView, ApiError> {
    let day = date
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| report::day_of(now() - DAY_SECS));
    let start = report::day_start(&day).map_err(|e| ApiError::bad_request("date", e))?;
    let store = state.store.clone();
    blocking(move || {
        let tlsrpt = store.tlsrpt();
        let events = tlsrpt
            .attempt_events(start, start + DAY_SECS)
            .map_err(ApiError::from_store)?;
        let claims = tlsrpt.report_claims(&day).map_err(ApiError::from_store)?;
        let deliveries = tlsrpt
            .report_deliveries(&day)
            .map_err(ApiError::from_store)?;
        let attempts = report::attempts(&events);
        let mut domains: BTreeMap<String, DomainDay> = BTreeMap::new();
        let empty = |domain: &str| DomainDay {
            domain: domain.to_string(),
            successful: 0,
            failed: 0,
            policies: Vec::new(),
            report: None,
            sent: Vec::new(),
        };
        let meta = report::ReportMeta {
            organization: String::new(),
            contact: String::new(),
            report_id: String::new(),
            start,
            end: start + DAY_SECS,
        };
        for domain in report::domains(&attempts) {
            let built = report::build(&meta, &domain, &attempts);
            let mut entry = empty(&domain);
            let mut by_type: BTreeMap<String, (u64, u64)> = BTreeMap::new();
            for p in &built.policies {
                let counts = by_type.entry(p.policy.policy_type.clone()).or_default();
                counts.0 += p.summary.total_successful_session_count;
                counts.1 += p.summary.total_failure_session_count;
            }
            let totals = built.totals();
            entry.successful = totals.total_successful_session_count;
            entry.failed = totals.total_failure_session_count;
            entry.policies = by_type
                .into_iter()
                .map(|(policy_type, (successful, failed))| PolicyCounts {
                    policy_type,
                    successful,
                    failed,
                })
                .collect();
            domains.insert(domain.clone(), entry);
        }
        for claim in claims {
            let domain = claim.domain.clone();
            domains
                .entry(domain.clone())
                .or_insert_with(|| empty(&domain))
                .report = Some(claim);
        }
        for mut delivery in deliveries {
            if let (DeliveryStatus::Queued, Some(queue_id)) =
                (delivery.status, delivery.queue_id.clone())
            {
                let events = store.events_for(&queue_id).map_err(ApiError::from_store)?;
                with_mail_outcome(&mut delivery, &events);
            }
            let domain = delivery.domain.clone();
            domains
                .entry(domain.clone())
                .or_insert_with(|| empty(&domain))
                .sent
                .push(delivery);
        }
        Ok(TlsRptView {
            date: day,
            domains: domains.into_values().collect(),
        })
    })
    .await
}

/// A queued report mail's row, told what became of the mail: `sent` once
/// it was delivered, `failed` once it bounced, still `queued` (with the
/// last deferral) while the queue retries it.
fn with_mail_outcome(delivery: &mut ReportDelivery, events: &[TrackingEvent]) {
    let queued = delivery.detail.clone();
    let mut deferred = None;
    for event in events {
        match event.parse() {
            Some(Event::Delivered(outcome)) => {
                delivery.status = DeliveryStatus::Sent;
                delivery.detail = format!(
                    "{queued}; delivered to {}: {}",
                    outcome.relay, outcome.detail
                );
                delivery.updated_at = event.at;
                return;
            }
            Some(Event::Bounced(outcome)) => {
                delivery.status = DeliveryStatus::Failed;
                delivery.detail = format!("{queued}; bounced: {}", outcome.detail);
                delivery.updated_at = event.at;
                return;
            }
            Some(Event::Deferred(outcome)) => deferred = Some((event.at, outcome.detail)),
            _ => {}
        }
    }
    if let Some((at, why)) = deferred {
        delivery.detail = format!("{queued}; deferred: {why}");
        delivery.updated_at = at;
    }
}

/// `GET /api/v1/tlsrpt`.
pub async fn show(
    State(state): State<Shared>,
    Query(query): Query<DayQuery>,
) -> ApiResult<Json<TlsRptView>> {
    Ok(Json(load(&state, query.date).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_store::event::Outcome;
    use postern_store::event_kind;

    fn mailed() -> ReportDelivery {
        ReportDelivery {
            id: 1,
            domain: "rcpt.test".into(),
            day: "2026-12-02".into(),
            destination: "mailto:tlsrpt@reports.test".into(),
            node: "n1".into(),
            status: DeliveryStatus::Queued,
            detail: "queued as Q1".into(),
            queue_id: Some("Q1".into()),
            attempts: 0,
            created_at: 100,
            updated_at: 100,
            next_attempt: None,
            body: None,
        }
    }

    fn event(at: i64, kind: &str, detail: &str) -> TrackingEvent {
        let outcome = Outcome {
            recipient: "tlsrpt@reports.test".into(),
            relay: "mx.reports.test[127.0.0.1]:25".into(),
            detail: detail.into(),
        };
        TrackingEvent {
            queue_id: "Q1".into(),
            message_id: None,
            at,
            kind: kind.into(),
            detail: serde_json::to_value(outcome).unwrap(),
        }
    }

    #[test]
    fn a_mailed_report_takes_its_mails_outcome() {
        let mut row = mailed();
        with_mail_outcome(&mut row, &[]);
        assert_eq!(
            (row.status, row.detail.as_str()),
            (DeliveryStatus::Queued, "queued as Q1")
        );

        let deferred = event(150, event_kind::DEFERRED, "451 try later");
        with_mail_outcome(&mut row, std::slice::from_ref(&deferred));
        assert_eq!(row.status, DeliveryStatus::Queued);
        assert_eq!(row.detail, "queued as Q1; deferred: 451 try later");

        let mut row = mailed();
        with_mail_outcome(
            &mut row,
            &[
                deferred.clone(),
                event(200, event_kind::DELIVERED, "250 ok"),
            ],
        );
        assert_eq!(row.status, DeliveryStatus::Sent);
        assert_eq!(
            row.detail,
            "queued as Q1; delivered to mx.reports.test[127.0.0.1]:25: 250 ok"
        );
        assert_eq!(row.updated_at, 200);

        let mut row = mailed();
        with_mail_outcome(
            &mut row,
            &[
                deferred,
                event(300, event_kind::BOUNCED, "550 no such user"),
            ],
        );
        assert_eq!(
            (row.status, row.detail.as_str()),
            (
                DeliveryStatus::Failed,
                "queued as Q1; bounced: 550 no such user"
            )
        );
    }
}
