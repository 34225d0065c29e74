//! Queue: every node's messages; filter by sender, recipient, message id
//! and state; retry now; delete (asked of the owning node when it is
//! another); the detail with every recipient's state and last error.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};
use postern_store::QueueAction;

use super::{csrf_field, error_banner, failure, layout, notice, render, see_other, Section};
use crate::api::blocking;
use crate::api::queue::{filtered, parse_id};
use crate::cluster_queue::{self, Listing, Located};
use crate::error::ApiError;
use crate::http::{CsrfForm, Principal};
use crate::views::{display_time, state_name, QueueFilter};
use crate::Shared;

const STATES: &[&str] = &["pending", "deferred", "delivered", "bounced"];

fn actions(principal: &Principal, id: &str) -> Markup {
    html! {
        form.inline method="post" action=(format!("/queue/{id}/retry")) {
            (csrf_field(principal))
            button type="submit" { "Retry now" }
        }
        form.inline method="post" action=(format!("/queue/{id}/delete")) data-confirm="Delete this message from the queue? No bounce is sent." {
            (csrf_field(principal))
            button.danger type="submit" { "Delete" }
        }
    }
}

fn list_markup(
    principal: &Principal,
    filter: &QueueFilter,
    listing: &Listing,
    ok: Option<&str>,
    error: Option<&str>,
) -> Markup {
    let items = &listing.items;
    let several = listing.nodes.len() > 1;
    html! {
        h1 { "Queue" }
        (notice(ok))
        (error_banner(error))
        form.filters method="get" action="/queue" {
            label { "Sender " input type="text" name="sender" value=(filter.sender); }
            label { "Recipient " input type="text" name="recipient" value=(filter.recipient); }
            label { "Message ID " input type="text" name="message_id" value=(filter.message_id) placeholder="Message-ID or queue id"; }
            label { "State "
                select name="state" {
                    option value="" selected[filter.state.is_empty()] { "any" }
                    @for s in STATES {
                        option value=(s) selected[filter.state == *s] { (s) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        (error_banner(listing.warning.as_deref()))
        p { (items.len()) " message(s)" }
        @if several {
            ul.nodes #queue-nodes {
                @for n in &listing.nodes {
                    li data-node=(n.node) {
                        strong { (n.node) } ": " (n.messages) " message(s)"
                        @if usize::try_from(n.messages).is_ok_and(|m| m > n.listed) { ", the oldest " (n.listed) " listed" }
                        @if n.local { " (this node)" } @else { ", published " (n.age) " s ago" }
                        @if n.unreachable { " — " span.state.bounced { "unreachable" } ": as last published; retry and delete wait until it is back" }
                    }
                }
            }
        }
        @if !items.is_empty() {
            table.list #queue {
                thead { tr { th { "Queue id" } th { "Node" } th { "Received (UTC)" } th { "Sender" } th { "Recipients" } th { "Size" } th { "" } } }
                tbody {
                    @for Located { node, queued: q, .. } in items {
                        tr data-id=(q.id.as_str()) data-node=(node) {
                            td { a href=(format!("/queue/{}", q.id.as_str())) { code { (q.id.as_str()) } } }
                            td { (node) }
                            td { (display_time(q.envelope.received_at)) }
                            td { "<" (q.envelope.sender) ">" }
                            td {
                                @for r in &q.recipients {
                                    div { (r.address) " " span class=(format!("state {}", state_name(r.state))) { (state_name(r.state)) } }
                                }
                            }
                            td { (q.size) }
                            td.actions { (actions(principal, q.id.as_str())) }
                        }
                    }
                }
            }
        }
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct PageQuery {
    #[serde(flatten)]
    filter: QueueFilter,
    ok: Option<String>,
}

pub async fn page(
    State(state): State<Shared>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<PageQuery>,
) -> Response {
    let filter = query.filter.clone();
    let state2 = state.clone();
    let (listing, error, status) = match blocking(move || filtered(&state2, &filter)).await {
        Ok(listing) => (listing, None, StatusCode::OK),
        Err(e) => (
            Listing {
                items: Vec::new(),
                nodes: Vec::new(),
                warning: None,
            },
            Some(e.message.clone()),
            e.status,
        ),
    };
    render(
        status,
        layout(
            "Queue",
            Section::Queue,
            &principal,
            list_markup(
                &principal,
                &query.filter,
                &listing,
                query.ok.as_deref(),
                error.as_deref(),
            ),
        ),
    )
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct Done {
    ok: Option<String>,
}

pub async fn detail(
    State(state): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(done): Query<Done>,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(e) => return failure(&principal, &e),
    };
    let state2 = state.clone();
    let located = match blocking(move || cluster_queue::find(&state2, &id)).await {
        Ok(located) => located,
        Err(e) => return failure(&principal, &e),
    };
    let q = &located.queued;
    let env = &q.envelope;
    let content = html! {
        h1 { "Queued message " code { (q.id.as_str()) } }
        (notice(done.ok.as_deref()))
        @if !located.local {
            p.note { "On node " strong { (located.node) } ", as it last published its queue (at most a second behind while it is reachable)." }
        }
        dl.facts {
            dt { "Node" } dd { (located.node) }
            dt { "Message-ID" } dd { (env.message_id.as_deref().unwrap_or("—")) }
            dt { "Sender" } dd { "<" (env.sender) ">" }
            dt { "Received (UTC)" } dd { (display_time(env.received_at)) }
            dt { "From client" } dd { (env.client_addr) " (" (env.helo) ")" }
            dt { "TLS" } dd { (env.tls.as_deref().unwrap_or("none (plaintext)")) }
            dt { "Size" } dd { (q.size) " bytes" }
        }
        h2 { "Recipients" }
        table.list #recipients {
            thead { tr { th { "Recipient" } th { "State" } th { "Attempts" } th { "Next attempt (UTC)" } th { "Last error" } } }
            tbody {
                @for r in &q.recipients {
                    tr {
                        td { (r.address) }
                        td { span class=(format!("state {}", state_name(r.state))) { (state_name(r.state)) } }
                        td { (r.attempts) }
                        td { (r.next_attempt.map(display_time).unwrap_or_else(|| "—".into())) }
                        td { (r.last_error.as_deref().unwrap_or("—")) }
                    }
                }
            }
        }
        p.actions { (actions(&principal, q.id.as_str())) }
        p { a href=(format!("/tracking/{}", q.id.as_str())) { "Tracking events of this message" } " · " a href="/queue" { "Back to the queue" } }
    };
    render(
        StatusCode::OK,
        layout("Queued message", Section::Queue, &principal, content),
    )
}

/// Where `id` is, then `action` there: at once on this node, as a
/// request to the owner otherwise. `Ok(true)` when it was requested.
async fn act(
    state: &Shared,
    id: &postern_spool::QueueId,
    action: QueueAction,
) -> Result<bool, ApiError> {
    let (state2, id2) = (state.clone(), id.clone());
    let located = blocking(move || cluster_queue::find(&state2, &id2)).await?;
    if !located.local {
        let state2 = state.clone();
        blocking(move || {
            cluster_queue::request(&state2, &located.node, &located.queued.id, action).map(|_| ())
        })
        .await?;
        return Ok(true);
    }
    match action {
        QueueAction::Retry => state.queue.retry(id.clone()).await,
        QueueAction::Delete => state.queue.delete(id.clone()).await,
    }
    .map_err(ApiError::from_queue)?;
    Ok(false)
}

pub async fn retry(
    State(state): State<Shared>,
    Path(id): Path<String>,
    form: CsrfForm,
) -> Response {
    let principal = form.principal.clone();
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(e) => return failure(&principal, &e),
    };
    match act(&state, &id, QueueAction::Retry).await {
        Ok(false) => see_other(&format!("/queue/{}?ok=retried", id.as_str())),
        Ok(true) => see_other(&format!("/queue/{}?ok=requested", id.as_str())),
        Err(e) => failure(&principal, &e),
    }
}

pub async fn delete(
    State(state): State<Shared>,
    Path(id): Path<String>,
    form: CsrfForm,
) -> Response {
    let principal = form.principal.clone();
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(e) => return failure(&principal, &e),
    };
    match act(&state, &id, QueueAction::Delete).await {
        Ok(false) => {
            tracing::info!("queued message {id} deleted through the admin UI");
            see_other("/queue?ok=deleted")
        }
        Ok(true) => see_other("/queue?ok=requested"),
        Err(e) => failure(&principal, &e),
    }
}
