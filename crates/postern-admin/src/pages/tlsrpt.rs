//! The TLS reports page (SPEC §11): one UTC day (default: yesterday) —
//! per recipient domain the sessions its report counts, by policy type,
//! and what was sent: when, by which node, to which address or URL, with
//! what result. `/api/v1/tlsrpt` gives the same as JSON.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use maud::html;

use super::{failure, layout, render, Section};
use crate::api::tlsrpt::{load, DayQuery, TlsRptView};
use crate::http::Principal;
use crate::Shared;

fn when(at: i64) -> String {
    postern_store::tlsrpt::report::rfc3339(at)
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

fn content(view: &TlsRptView) -> maud::Markup {
    html! {
        h1 { "TLS reports" }
        form.filter method="get" action="/tlsrpt" {
            label { "Day (UTC) " input type="date" name="date" value=(view.date); }
            button type="submit" { "Show" }
        }
        p.help {
            "Daily TLS-RPT reports (RFC 8460) to the domains that publish "
            code { "_smtp._tls" } ". A session is one connection to an MX host; "
            "the day's report goes out from 00:10 UTC the next day when "
            code { "tlsrpt.enabled" } " is on, or with " code { "postern tlsrpt send" } "."
        }
        @if view.domains.is_empty() {
            p { "No delivery attempts were recorded on " (view.date) "." }
        } @else {
            table.list.tlsrpt {
                thead {
                    tr {
                        th { "Domain" } th { "Successful" } th { "Failed" } th { "By policy" }
                        th { "Report" } th { "Sent to" }
                    }
                }
                tbody {
                    @for d in &view.domains {
                        tr data-domain=(d.domain) {
                            td { strong { (d.domain) } }
                            td data-successful { (d.successful) }
                            td data-failed { (d.failed) }
                            td {
                                @for p in &d.policies {
                                    code { (p.policy_type) } ": " (p.successful) " / " (p.failed) br;
                                }
                            }
                            td {
                                @match &d.report {
                                    Some(r) => { code { (r.report_id) } br; small { "by " (r.node) " at " (when(r.claimed_at)) } }
                                    None => { "not sent" }
                                }
                            }
                            td {
                                @for s in &d.sent {
                                    div data-destination=(s.destination) {
                                        code { (s.destination) } " — "
                                        span class=(format!("state {}", s.status.as_str())) data-status=(s.status.as_str()) { (s.status.as_str()) }
                                        " " (s.detail) br;
                                        small { (when(s.updated_at)) ", " (s.attempts) " attempt(s), node " (s.node) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub async fn page(
    State(state): State<Shared>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<DayQuery>,
) -> Response {
    match load(&state, query.date).await {
        Ok(view) => render(
            StatusCode::OK,
            layout(
                "TLS reports",
                Section::TlsReports,
                &principal,
                content(&view),
            ),
        ),
        Err(e) => failure(&principal, &e),
    }
}
