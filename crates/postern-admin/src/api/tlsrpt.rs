//! `/api/v1/tlsrpt?date=YYYY-MM-DD` (SPEC §11): for one UTC day (default:
//! the previous one, what the daily run reports), per recipient domain the
//! session counts the report has (per policy type), the report claimed for
//! it (which node, when), and each destination it was sent to with the
//! result. The counts come from the same pure aggregation the reports use.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::Json;
use postern_store::tlsrpt::report::{self, DAY_SECS};
use postern_store::tlsrpt::{ReportClaim, ReportDelivery};
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
        for delivery in deliveries {
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

/// `GET /api/v1/tlsrpt`.
pub async fn show(
    State(state): State<Shared>,
    Query(query): Query<DayQuery>,
) -> ApiResult<Json<TlsRptView>> {
    Ok(Json(load(&state, query.date).await?))
}
