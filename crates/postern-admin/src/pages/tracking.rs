//! Message tracking: search by Message-ID (or queue id), sender, recipient
//! and time; the detail shows each hop — received from, delivered to —
//! with TLS version, cipher and verification result.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};

use super::{error_banner, failure, layout, render, segment, Section};
use crate::api::blocking;
use crate::api::messages::{detail as load_detail, find};
use crate::http::Principal;
use crate::views::{Hop, MessageDetail, MessageQuery, MessageSummary};
use crate::Shared;

fn tls_text(version: Option<&str>, cipher: Option<&str>) -> String {
    match version {
        Some(v) => format!("{v} {}", cipher.unwrap_or("")).trim().to_string(),
        None => "plaintext".to_string(),
    }
}

fn results(list: &[MessageSummary]) -> Markup {
    html! {
        p { (list.len()) " message(s)" }
        @if !list.is_empty() {
            table.list #messages {
                thead { tr { th { "Received (UTC)" } th { "Queue id" } th { "Message-ID" } th { "Sender" } th { "Recipients" } th { "Inbound TLS" } th { "Status" } } }
                tbody {
                    @for m in list {
                        tr data-queue-id=(m.queue_id) {
                            td { (m.received_at.as_deref().unwrap_or("—")) }
                            td { a href=(format!("/tracking/{}", segment(&m.queue_id))) { code { (m.queue_id) } } }
                            td { (m.message_id.as_deref().unwrap_or("—")) }
                            td { (m.sender.as_deref().map(|s| format!("<{s}>")).unwrap_or_default()) }
                            td { (m.recipients.join(", ")) }
                            td { (tls_text(m.tls_version.as_deref(), m.cipher.as_deref())) }
                            td { span class=(format!("state {}", m.status.replace(' ', "-"))) { (m.status) } }
                        }
                    }
                }
            }
        }
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct SearchForm {
    #[serde(flatten)]
    query: MessageQuery,
    /// The form was submitted (an empty search lists the newest messages).
    search: Option<String>,
}

pub async fn page(
    State(state): State<Shared>,
    Extension(principal): Extension<Principal>,
    Query(form): Query<SearchForm>,
) -> Response {
    let query = form.query.clone();
    let state2 = state.clone();
    let (list, error, status) = match blocking(move || find(&state2, &query)).await {
        Ok(list) => (list, None, StatusCode::OK),
        Err(e) => (Vec::new(), Some(e.message.clone()), e.status),
    };
    let q = &form.query;
    let content = html! {
        h1 { "Message tracking" }
        (error_banner(error.as_deref()))
        form.filters #search method="get" action="/tracking" {
            label { "Message-ID / queue id / text " input #q type="text" name="q" value=(q.q); }
            label { "Sender " input type="text" name="sender" value=(q.sender); }
            label { "Recipient " input type="text" name="recipient" value=(q.recipient); }
            label { "Since (UTC) " input type="datetime-local" name="since" value=(q.since); }
            label { "Until (UTC) " input type="datetime-local" name="until" value=(q.until); }
            input type="hidden" name="search" value="1";
            button type="submit" { "Search" }
        }
        @if form.search.is_none() && q.q.is_empty() { p.help { "The newest messages:" } }
        (results(&list))
    };
    render(
        status,
        layout("Message tracking", Section::Tracking, &principal, content),
    )
}

/// The verdict as an administrator reads it.
fn verdict_text(verdict: &str) -> &str {
    match verdict {
        "met" => "requirement met",
        "failed" => "requirement not met (host not used)",
        "not-reached" => "connection failed before the requirement applied",
        other => other,
    }
}

fn hop_markup(hop: &Hop) -> Markup {
    let inbound = hop.direction == "inbound";
    html! {
        li class=(format!("hop {}", hop.direction)) {
            h3 {
                @if inbound { "Received from " } @else { "Delivery attempt to " }
                (hop.peer)
                " " span.when { (hop.at) }
            }
            dl.facts {
                @if let Some(name) = &hop.name {
                    dt { @if inbound { "EHLO" } @else { "Domain" } } dd { (name) }
                }
                @if let Some(p) = &hop.protocol { dt { "Protocol" } dd { (p) } }
                @if let Some(mode) = &hop.mode { dt { "TLS mode" } dd { (mode) } }
                @if let Some(r) = &hop.requirement { dt { "Requirement" } dd.requirement { (r) @if let Some(src) = &hop.source { " (set by " (src) ")" } } }
                @if let Some(v) = &hop.verdict { dt { "Verdict" } dd class=(format!("verdict {v}")) { (verdict_text(v)) } }
                @if let Some(t) = &hop.result_type { dt { "Policy failure" } dd.result-type { (t) } }
                @if let Some(p) = &hop.policy { dt { "Policy" } dd.policy { (p) } }
                @if let Some(t) = &hop.policy_type { dt { "TLS-RPT policy type" } dd.policy-type { (t) } }
                @for w in &hop.report_only { dt { "Report-only" } dd.report-only { (w) } }
                dt { "TLS version" } dd.tls-version { (hop.tls_version.as_deref().unwrap_or("none (plaintext)")) }
                dt { "Cipher" } dd.cipher { (hop.cipher.as_deref().unwrap_or("—")) }
                dt { "Verification" } dd.verification { (hop.verification) }
                @if let Some(e) = &hop.tls_error { dt { "TLS failure" } dd { (e) } }
                @if hop.tls_fallback_plaintext { dt { "Fallback" } dd { "TLS failed; sent in plaintext (opportunistic)" } }
                @if let Some(r) = &hop.reply { dt { "Reply" } dd { code { (r) } } }
            }
        }
    }
}

fn detail_markup(d: &MessageDetail) -> Markup {
    let m = &d.summary;
    html! {
        section.message data-queue-id=(m.queue_id) {
            h2 { "Queue id " code { (m.queue_id) } " " span class=(format!("state {}", m.status.replace(' ', "-"))) { (m.status) } }
            dl.facts {
                dt { "Message-ID" } dd { (m.message_id.as_deref().unwrap_or("—")) }
                dt { "Sender" } dd { (m.sender.as_deref().map(|s| format!("<{s}>")).unwrap_or_default()) }
                dt { "Recipients" } dd { (m.recipients.join(", ")) }
                dt { "Received (UTC)" } dd { (m.received_at.as_deref().unwrap_or("—")) }
            }
            h3 { "Hops" }
            ol.hops {
                @for hop in &d.hops { (hop_markup(hop)) }
            }
            @if !d.outcomes.is_empty() {
                h3 { "Outcome per recipient" }
                table.list.outcomes {
                    thead { tr { th { "Recipient" } th { "State" } th { "At (UTC)" } th { "Relay" } th { "Reply / reason" } } }
                    tbody {
                        @for o in &d.outcomes {
                            tr {
                                td { (o.recipient) }
                                td { span class=(format!("state {}", o.state)) { (o.state) } }
                                td { (o.at) }
                                td { (o.relay.as_deref().unwrap_or("—")) }
                                td { (o.detail.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
            details {
                summary { "All events (" (d.events.len()) ")" }
                table.list.events {
                    tbody {
                        @for e in &d.events {
                            tr { td { (crate::views::rfc3339(e.at)) } td { (e.kind) } td { code { (e.detail.to_string()) } } }
                        }
                    }
                }
            }
        }
    }
}

pub async fn detail(
    State(state): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    let wanted = id.clone();
    let state2 = state.clone();
    let details = match blocking(move || load_detail(&state2, &wanted)).await {
        Ok(d) => d,
        Err(e) => return failure(&principal, &e),
    };
    let content = html! {
        p.crumbs { a href="/tracking" { "Message tracking" } }
        h1 { "Message " (id) }
        @for d in &details { (detail_markup(d)) }
    };
    render(
        StatusCode::OK,
        layout("Message", Section::Tracking, &principal, content),
    )
}
