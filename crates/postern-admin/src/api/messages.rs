//! `/api/v1/messages`: message tracking (search and detail with hops) and
//! `/api/v1/stats`: the dashboard's counts.

use std::collections::HashSet;

use axum::extract::{Path, Query, State};
use axum::Json;
use postern_store::{event_kind, EventQuery};

use super::blocking;
use crate::error::{ApiError, ApiResult};
use crate::views::{self, MessageDetail, MessageQuery, MessageSummary, Stats};
use crate::Shared;

/// Events looked at per search (newest first).
const SEARCH_EVENTS: usize = 5000;
/// Dashboard window: 24 hourly buckets.
const BUCKETS: usize = 24;
const BUCKET_SECONDS: i64 = 3600;
/// Events counted for the dashboard at most.
const STATS_EVENTS: usize = 500_000;

/// Search. Blocking.
pub fn find(state: &Shared, query: &MessageQuery) -> Result<Vec<MessageSummary>, ApiError> {
    let (since, until) = query
        .bounds()
        .map_err(|(field, message)| ApiError::invalid(field, message))?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let events = state
        .store
        .search_events(&EventQuery {
            text: query.search_text(),
            // A message's events can trail its arrival; the time filter
            // applies to the arrival below.
            since: since.map(|s| s - 1),
            until: None,
            kinds: Vec::new(),
            limit: SEARCH_EVENTS,
        })
        .map_err(ApiError::from_store)?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for event in events {
        if out.len() >= limit {
            break;
        }
        if !seen.insert(event.queue_id.clone()) {
            continue;
        }
        let all = state
            .store
            .events_for(&event.queue_id)
            .map_err(ApiError::from_store)?;
        let own: Vec<_> = all
            .into_iter()
            .filter(|e| e.queue_id == event.queue_id)
            .collect();
        let summary = views::summarize(&event.queue_id, &own);
        if query.matches(&summary, since, until) {
            out.push(summary);
        }
    }
    Ok(out)
}

/// Detail of every message with this queue id or Message-ID. Blocking.
pub fn detail(state: &Shared, id: &str) -> Result<Vec<MessageDetail>, ApiError> {
    let events = state.store.events_for(id).map_err(ApiError::from_store)?;
    if events.is_empty() {
        return Err(ApiError::not_found(format!(
            "no tracking events for \"{id}\" (give a queue id or a Message-ID)"
        )));
    }
    Ok(views::group_by_queue_id(events)
        .into_iter()
        .map(|(queue_id, events)| views::detail(&queue_id, events))
        .collect())
}

/// Dashboard counts for the last 24 hours. Blocking.
pub fn stats_now(state: &Shared) -> Result<Stats, ApiError> {
    let now = views::now();
    let since = (now / BUCKET_SECONDS - (BUCKETS as i64 - 1)) * BUCKET_SECONDS;
    let events = state
        .store
        .search_events(&EventQuery {
            text: None,
            since: Some(since),
            until: None,
            kinds: [
                event_kind::RECEIVED,
                event_kind::DELIVERED,
                event_kind::DEFERRED,
                event_kind::BOUNCED,
                event_kind::DELIVERY_ATTEMPT,
            ]
            .iter()
            .map(|k| k.to_string())
            .collect(),
            limit: STATS_EVENTS,
        })
        .map_err(ApiError::from_store)?;
    let queue = match state.queue.list() {
        Ok(list) => views::queue_counts(&list),
        Err(e) => {
            tracing::warn!("dashboard: queue not readable: {e}");
            views::QueueCounts::default()
        }
    };
    Ok(views::stats(&events, since, BUCKET_SECONDS, BUCKETS, queue))
}

pub async fn search(
    State(state): State<Shared>,
    Query(query): Query<MessageQuery>,
) -> ApiResult<Json<Vec<MessageSummary>>> {
    Ok(Json(blocking(move || find(&state, &query)).await?))
}

pub async fn show(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<MessageDetail>>> {
    Ok(Json(blocking(move || detail(&state, &id)).await?))
}

pub async fn stats(State(state): State<Shared>) -> ApiResult<Json<Stats>> {
    Ok(Json(blocking(move || stats_now(&state)).await?))
}
