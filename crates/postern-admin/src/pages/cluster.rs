//! The Cluster page (SPEC §9): every node of the installation from the
//! store's node registry — what it runs, when it was last seen, which
//! settings version it applied, the certificates it presents, its queue —
//! marked synchronized, behind or unreachable. `/api/v1/cluster` gives the
//! same as JSON.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use maud::html;

use super::{failure, layout, render, Section};
use crate::api::cluster::{load, ClusterView};
use crate::http::Principal;
use crate::Shared;

fn content(view: &ClusterView) -> maud::Markup {
    html! {
        h1 { "Cluster" }
        p.help {
            "Store " code { (view.store) } ", settings version "
            strong data-current-version { (view.settings_version) } ". "
            "A node is " em { "synchronized" } " when it applied that version, "
            em { "behind" } " when it runs an older one, and "
            em { "unreachable" } " when it has not been seen for 30 seconds (times in UTC)."
        }
        @if view.nodes.is_empty() {
            p { "No node has registered yet (a node registers when " code { "postern run" } " starts)." }
        } @else {
            table.list.nodes {
                thead {
                    tr {
                        th { "Node" } th { "State" } th { "Host" } th { "Version" }
                        th { "Started" } th { "Last seen" } th { "Applied version" }
                        th { "Presented certificates (SHA-256)" } th { "Queue" }
                    }
                }
                tbody {
                    @for node in &view.nodes {
                        tr data-node=(node.name) {
                            td { strong { (node.name) } }
                            td { span class=(format!("state {}", node.state)) data-state=(node.state) { (node.state) } }
                            td { (node.hostname) }
                            td { (node.version) }
                            td { (display_time_text(&node.started_at)) }
                            td { (display_time_text(&node.last_seen)) br; small { (node.seen_seconds_ago) " s ago" } }
                            td data-applied { (node.applied_version) }
                            td.fingerprints {
                                @for fp in &node.certificate_fingerprints { code { (fp) } br; }
                            }
                            td data-queue { (node.queue_messages) " message(s), " (node.queue_deferred) " deferred" }
                        }
                    }
                }
            }
        }
    }
}

/// An RFC 3339 time as the tables show times (as `views::display_time`).
fn display_time_text(rfc3339: &str) -> String {
    rfc3339.replace('T', " ").trim_end_matches('Z').to_string()
}

pub async fn page(
    State(state): State<Shared>,
    Extension(principal): Extension<Principal>,
) -> Response {
    match load(&state).await {
        Ok(view) => render(
            StatusCode::OK,
            layout("Cluster", Section::Cluster, &principal, content(&view)),
        ),
        Err(e) => failure(&principal, &e),
    }
}
