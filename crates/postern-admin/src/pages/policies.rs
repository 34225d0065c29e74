//! Outbound policies (SPEC §8, §10): what the gateway has learned about
//! each recipient domain's TLS, with the evidence behind it, and the two
//! review actions — forget (learn afresh) and pin (make it a `[[domain]]`
//! rule). Both go through `postern_store::learned::review`, like the CLI
//! and `/api/v1/policies`.
//!
//! The page is a list of sections; the MTA-STS policy cache and the DANE
//! status of MX hosts belong here as further sections beside
//! [`learned_section`], each from its own store table.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};
use postern_store::learned::{review, DomainEvidence};

use super::{
    csrf_field, error_banner, failure, layout, notice, render, see_other, segment, Section,
};
use crate::api::blocking;
use crate::api::policies::from_review;
use crate::error::ApiError;
use crate::http::{CsrfForm, Principal};
use crate::views::display_time;
use crate::Shared;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct PageQuery {
    /// Part of a domain name.
    q: String,
    ok: Option<String>,
}

fn matches(entry: &DomainEvidence, filter: &str) -> bool {
    let filter = filter.trim().to_ascii_lowercase();
    filter.is_empty()
        || entry.domain.contains(&filter)
        || entry.hosts.iter().any(|h| h.host.contains(&filter))
}

fn actions(principal: &Principal, entry: &DomainEvidence) -> Markup {
    let path = segment(&entry.domain);
    html! {
        @if entry.learned.is_some() {
            form.inline method="post" action=(format!("/policies/{path}/pin")) data-confirm=(format!("Write a [[domain]] rule for {} with this level?", entry.domain)) {
                (csrf_field(principal))
                button.pin type="submit" { "Pin" }
            }
        }
        form.inline method="post" action=(format!("/policies/{path}/forget")) data-confirm=(format!("Forget what was learned for {}?", entry.domain)) {
            (csrf_field(principal))
            button.danger.forget type="submit" { "Forget" }
        }
    }
}

fn learned_section(principal: &Principal, entries: &[&DomainEvidence]) -> Markup {
    html! {
        section #learned {
            h2 { "Learned TLS levels" }
            p.help {
                "Per recipient domain, the best level mail was delivered with: "
                b { "verified" } " (certificate authenticated) or " b { "tls" } ". "
                "A level is learned after tls.outbound.learn_min_deliveries deliveries over "
                "tls.outbound.learn_min_span, and forgotten after tls.outbound.learn_expiry "
                "without one. A delivery below it is a downgrade: recorded under "
                code { "learn = \"monitor\"" } ", deferred under " code { "learn = \"enforce\"" } "."
            }
            @if entries.is_empty() {
                p.empty { "No domain matches." }
            } @else {
                table.list #policies {
                    thead { tr {
                        th { "Domain" } th { "Learned" } th { "Deliveries" } th { "First seen (UTC)" }
                        th { "Last seen (UTC)" } th { "Forgotten at (UTC)" } th { "Evidence per MX host" } th { "" }
                    } }
                    tbody {
                        @for entry in entries {
                            tr data-domain=(entry.domain) data-level=(entry.learned.as_ref().map_or("", |l| l.level.as_str())) {
                                td { (entry.domain) }
                                @match &entry.learned {
                                    Some(l) => {
                                        td.level { (l.level.as_str()) }
                                        td { (l.deliveries) }
                                        td { (display_time(l.first_seen)) }
                                        td { (display_time(l.last_seen)) }
                                        td { (display_time(l.expires_at)) }
                                    }
                                    None => {
                                        td.level { "not yet" }
                                        td { (entry.hosts.iter().map(|h| h.deliveries).sum::<i64>()) }
                                        td { "" } td { "" } td { "" }
                                    }
                                }
                                td.evidence {
                                    @for h in &entry.hosts {
                                        div {
                                            code { (h.host) } " " (h.level.as_str()) ": " (h.deliveries)
                                            " (" (display_time(h.first_seen)) " – " (display_time(h.last_seen)) ")"
                                        }
                                    }
                                }
                                td.actions { (actions(principal, entry)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn page_markup(
    principal: &Principal,
    all: &[DomainEvidence],
    query: &PageQuery,
    error: Option<&str>,
) -> Markup {
    let shown: Vec<&DomainEvidence> = all.iter().filter(|e| matches(e, &query.q)).collect();
    html! {
        h1 { "Outbound policies" }
        (notice(query.ok.as_deref()))
        (error_banner(error))
        form.filters method="get" action="/policies" {
            label { "Domain or MX host " input #filter type="search" name="q" value=(query.q) placeholder="partner.example"; }
            button type="submit" { "Filter" }
        }
        p.count { (shown.len()) " of " (all.len()) " domain(s)" }
        (learned_section(principal, &shown))
    }
}

async fn load(state: &Shared) -> Result<Vec<DomainEvidence>, ApiError> {
    let store = state.store.clone();
    blocking(move || review::list(store.as_ref(), now()).map_err(ApiError::from_store)).await
}

pub async fn page(
    State(state): State<Shared>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<PageQuery>,
) -> Response {
    let (all, error, status) = match load(&state).await {
        Ok(all) => (all, None, StatusCode::OK),
        Err(e) => (Vec::new(), Some(e.message.clone()), e.status),
    };
    render(
        status,
        layout(
            "Outbound policies",
            Section::Policies,
            &principal,
            page_markup(&principal, &all, &query, error.as_deref()),
        ),
    )
}

async fn act(state: Shared, principal: &Principal, domain: String, pin: bool) -> Response {
    let store = state.store.clone();
    let result = blocking(move || {
        if pin {
            review::pin(store.as_ref(), &domain, now()).map(|_| ())
        } else {
            review::forget(store.as_ref(), &domain).map(|_| ())
        }
        .map_err(from_review)
    })
    .await;
    match result {
        Ok(()) => see_other(if pin {
            "/policies?ok=pinned"
        } else {
            "/policies?ok=forgotten"
        }),
        Err(e) => failure(principal, &e),
    }
}

pub async fn forget(
    State(state): State<Shared>,
    Path(domain): Path<String>,
    form: CsrfForm,
) -> Response {
    let principal = form.principal.clone();
    tracing::info!("learned TLS level of {domain} forgotten through the admin UI");
    act(state, &principal, domain, false).await
}

pub async fn pin(
    State(state): State<Shared>,
    Path(domain): Path<String>,
    form: CsrfForm,
) -> Response {
    let principal = form.principal.clone();
    tracing::info!("learned TLS level of {domain} pinned through the admin UI");
    act(state, &principal, domain, true).await
}
