//! Alerts (SPEC §12): every kept alert, newest first, with what the
//! operator should do about each kind; filtered by kind and by
//! acknowledgement; acknowledged one by one or all shown at once. The
//! Dashboard shows a banner while any is unacknowledged
//! ([`banner`]). Same store functions as `/api/v1/alerts`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};
use postern_store::{AlertFilter, AlertKind, KeptAlert};

use super::{csrf_field, error_banner, failure, layout, render, see_other, Section};
use crate::api::alerts::{
    acknowledge_many, acknowledge_one, parse_id, reviewer, AlertQuery, MAX_IDS,
};
use crate::api::blocking;
use crate::error::ApiError;
use crate::http::{CsrfForm, Principal};
use crate::views::display_time;
use crate::Shared;

/// What the operator should do, one line per kind.
pub fn advice(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::Downgrade => {
            "Mail went out below the level this domain was learned at: check the MX host's \
             TLS and certificate with the domain's postmaster; set learn = \"enforce\" or pin \
             the level (Outbound policies) to defer such deliveries instead."
        }
        AlertKind::StarttlsMissing => {
            "A host that offered STARTTLS before did not (or its EHLO was masked): look for a \
             middlebox or firewall rewriting SMTP between here and the host, or a broken TLS \
             setup on the receiving side."
        }
        AlertKind::HandshakeFailures => {
            "TLS handshakes to this host keep failing: compare the host's protocols, ciphers \
             and certificate with tls.outbound (Message tracking shows the error of each \
             attempt)."
        }
        AlertKind::RequiredTlsDeferred => {
            "Mail is waiting in the queue because a required TLS level cannot be met: fix the \
             receiving side or, after checking, relax the domain's rule; it bounces when the \
             queue lifetime runs out."
        }
        AlertKind::CertificateExpiry => {
            "A certificate of the table expires soon: import a renewed one (Certificates) and \
             point the listeners at it before it runs out."
        }
        AlertKind::NodeUnreachable => {
            "A cluster node stopped reporting: check that it runs and reaches the PostgreSQL \
             store (Cluster page)."
        }
        AlertKind::NodeBehind => {
            "A cluster node has not applied the current settings or credentials: check its log \
             for the reason, then restart or upgrade it (Cluster page)."
        }
    }
}

#[derive(serde::Deserialize, Default, Debug, Clone)]
#[serde(default)]
pub struct PageQuery {
    kind: Option<String>,
    acknowledged: Option<String>,
    ok: Option<String>,
}

impl PageQuery {
    fn api(&self) -> AlertQuery {
        AlertQuery {
            kind: self.kind.clone(),
            acknowledged: self.acknowledged.clone(),
            limit: None,
        }
    }

    /// The filter part of the page's address, to come back to it.
    fn filter_query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(kind) = self
            .kind
            .as_deref()
            .filter(|k| AlertKind::parse(k).is_some())
        {
            parts.push(format!("kind={kind}"));
        }
        if let Some(ack) = self
            .acknowledged
            .as_deref()
            .filter(|a| matches!(*a, "true" | "false"))
        {
            parts.push(format!("acknowledged={ack}"));
        }
        parts.join("&")
    }
}

/// Where to go after an acknowledgement: the page as it was filtered.
fn back_to(form: &CsrfForm, ok: &str) -> String {
    let query = PageQuery {
        kind: Some(form.get("kind")),
        acknowledged: Some(form.get("acknowledged")),
        ok: None,
    }
    .filter_query();
    if query.is_empty() {
        format!("/alerts?ok={ok}")
    } else {
        format!("/alerts?{query}&ok={ok}")
    }
}

fn notice(ok: Option<&str>) -> Markup {
    let text = match ok {
        Some("acknowledged") => "Acknowledged.",
        Some("none") => "Nothing to acknowledge: every alert shown was acknowledged already.",
        _ => return html! {},
    };
    html! { p.notice role="status" { (text) } }
}

fn filter_form(query: &PageQuery) -> Markup {
    let kind = query.kind.as_deref().unwrap_or("");
    let ack = query.acknowledged.as_deref().unwrap_or("");
    html! {
        form.filters method="get" action="/alerts" {
            label { "Kind "
                select #kind name="kind" {
                    option value="" selected[kind.is_empty()] { "All kinds" }
                    @for k in AlertKind::ALL {
                        option value=(k.as_str()) selected[kind == k.as_str()] { (k.as_str()) }
                    }
                }
            }
            label { "Acknowledged "
                select #acknowledged name="acknowledged" {
                    option value="" selected[ack.is_empty()] { "All" }
                    option value="false" selected[ack == "false"] { "Unacknowledged" }
                    option value="true" selected[ack == "true"] { "Acknowledged" }
                }
            }
            button type="submit" { "Filter" }
        }
    }
}

/// The hidden fields that bring an acknowledgement back to this filter.
fn filter_fields(query: &PageQuery) -> Markup {
    html! {
        input type="hidden" name="kind" value=(query.kind.as_deref().unwrap_or(""));
        input type="hidden" name="acknowledged" value=(query.acknowledged.as_deref().unwrap_or(""));
    }
}

fn row(principal: &Principal, query: &PageQuery, kept: &KeptAlert) -> Markup {
    let a = &kept.alert;
    let acknowledged = kept.acknowledged_at.is_some();
    html! {
        tr data-id=(kept.id) data-kind=(a.kind.as_str()) data-acknowledged=(acknowledged) {
            td { (display_time(a.at)) }
            td.kind { code { (a.kind.as_str()) } }
            td.subject { (a.subject) }
            td.host { (a.host) }
            td.detail {
                div { (a.detail) }
                div.help.todo { (advice(a.kind)) }
            }
            td.node { (kept.node) }
            td.ack {
                @match (kept.acknowledged_at, &kept.acknowledged_by) {
                    (Some(at), by) => { (display_time(at)) " by " (by.as_deref().unwrap_or("?")) }
                    (None, _) => {
                        form.inline method="post" action=(format!("/alerts/{}/acknowledge", kept.id)) {
                            (csrf_field(principal))
                            (filter_fields(query))
                            button.acknowledge type="submit" { "Acknowledge" }
                        }
                    }
                }
            }
        }
    }
}

fn page_markup(
    principal: &Principal,
    list: &[KeptAlert],
    unacknowledged: u64,
    query: &PageQuery,
    error: Option<&str>,
) -> Markup {
    let open: Vec<i64> = list
        .iter()
        .filter(|k| k.acknowledged_at.is_none())
        .map(|k| k.id)
        .take(MAX_IDS)
        .collect();
    html! {
        h1 { "Alerts" }
        p.help {
            "Conditions an administrator must hear about within minutes (times in UTC). "
            "The same condition alerts at most once an hour. An alert stays on the Dashboard "
            "until it is acknowledged here."
        }
        (notice(query.ok.as_deref()))
        (error_banner(error))
        (filter_form(query))
        p.count { (list.len()) " alert(s) shown; " (unacknowledged) " unacknowledged in all" }
        @if !open.is_empty() {
            form.inline #acknowledge-shown method="post" action="/alerts/acknowledge" data-confirm=(format!("Acknowledge the {} unacknowledged alert(s) shown?", open.len())) {
                (csrf_field(principal))
                (filter_fields(query))
                @for id in &open {
                    input type="hidden" name="id" value=(id);
                }
                button.acknowledge-all type="submit" { "Acknowledge all shown" }
            }
        }
        @if list.is_empty() {
            p.empty { "No alert matches." }
        } @else {
            table.list #alerts {
                thead { tr {
                    th { "Time (UTC)" } th { "Kind" } th { "Domain" } th { "Host" }
                    th { "Detail — what to do" } th { "Node" } th { "Acknowledged" }
                } }
                tbody {
                    @for kept in list { (row(principal, query, kept)) }
                }
            }
        }
    }
}

pub async fn page(
    State(state): State<Shared>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<PageQuery>,
) -> Response {
    let loaded = match query.api().filter() {
        Ok(filter) => {
            let store = state.store.clone();
            blocking(move || {
                let alerts = store.alerts();
                let list = alerts.kept_alerts(&filter).map_err(ApiError::from_store)?;
                let count = alerts
                    .unacknowledged_alert_count()
                    .map_err(ApiError::from_store)?;
                Ok((list, count))
            })
            .await
        }
        Err(e) => Err(e),
    };
    let (list, count, error, status) = match loaded {
        Ok((list, count)) => (list, count, None, StatusCode::OK),
        Err(e) => (Vec::new(), 0, Some(e.message.clone()), e.status),
    };
    render(
        status,
        layout(
            "Alerts",
            Section::Alerts,
            &principal,
            page_markup(&principal, &list, count, &query, error.as_deref()),
        ),
    )
}

pub async fn acknowledge(
    State(state): State<Shared>,
    Path(id): Path<String>,
    form: CsrfForm,
) -> Response {
    let principal = form.principal.clone();
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(e) => return failure(&principal, &e),
    };
    let by = reviewer(&principal);
    let store = state.store.clone();
    match blocking(move || acknowledge_one(store.as_ref(), id, &by)).await {
        Ok(_) => see_other(&back_to(&form, "acknowledged")),
        Err(e) => failure(&principal, &e),
    }
}

/// "Acknowledge all shown": the ids the page listed, not what arrived since.
pub async fn acknowledge_shown(State(state): State<Shared>, form: CsrfForm) -> Response {
    let principal = form.principal.clone();
    let ids: Result<Vec<i64>, ApiError> = form.all("id").iter().map(|t| parse_id(t)).collect();
    let ids = match ids {
        Ok(ids) if !ids.is_empty() && ids.len() <= MAX_IDS => ids,
        Ok(_) => {
            return failure(
                &principal,
                &ApiError::invalid("id", format!("give from 1 to {MAX_IDS} alert ids")),
            )
        }
        Err(e) => return failure(&principal, &e),
    };
    let by = reviewer(&principal);
    let store = state.store.clone();
    match blocking(move || acknowledge_many(store.as_ref(), &ids, &by)).await {
        Ok(0) => see_other(&back_to(&form, "none")),
        Ok(_) => see_other(&back_to(&form, "acknowledged")),
        Err(e) => failure(&principal, &e),
    }
}

/// The Dashboard banner: how many alerts are unacknowledged and the newest
/// of them, with a link here; nothing once all are acknowledged.
pub fn banner(count: u64, newest: Option<&KeptAlert>) -> Markup {
    let Some(newest) = newest.filter(|_| count > 0) else {
        return html! {};
    };
    let a = &newest.alert;
    html! {
        div.alert-banner #alert-banner role="alert" data-unacknowledged=(count) {
            strong { (count) " unacknowledged alert(s)." }
            " Newest: " code { (a.kind.as_str()) } " " (a.subject)
            @if !a.host.is_empty() { " (" (a.host) ")" }
            " at " (display_time(a.at)) " UTC — " (a.detail) " "
            a href="/alerts?acknowledged=false" { "Review and acknowledge on the Alerts page" }
        }
    }
}

/// What [`banner`] shows, from the store; `None` when the store cannot
/// tell (the dashboard still shows, with a warning in the log).
pub async fn banner_facts(state: &Shared) -> Option<(u64, Option<KeptAlert>)> {
    let store = state.store.clone();
    let facts = blocking(move || {
        let alerts = store.alerts();
        let count = alerts
            .unacknowledged_alert_count()
            .map_err(ApiError::from_store)?;
        if count == 0 {
            return Ok((0, None));
        }
        let newest = alerts
            .kept_alerts(&AlertFilter::unacknowledged(1))
            .map_err(ApiError::from_store)?;
        Ok((count, newest.into_iter().next()))
    })
    .await;
    match facts {
        Ok(facts) => Some(facts),
        Err(e) => {
            tracing::warn!("dashboard: the alerts could not be read: {}", e.message);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_store::Alert;

    fn kept(id: i64, detail: &str, acknowledged: bool) -> KeptAlert {
        KeptAlert {
            id,
            alert: Alert {
                kind: AlertKind::Downgrade,
                subject: "partner.test".into(),
                host: "<b>mx</b>".into(),
                detail: detail.into(),
                at: 1_700_000_000,
            },
            node: "gw1".into(),
            acknowledged_at: acknowledged.then_some(1_700_000_100),
            acknowledged_by: acknowledged.then(|| "admin".to_string()),
        }
    }

    fn principal() -> Principal {
        Principal::Token("t".into())
    }

    #[test]
    fn every_kind_has_advice() {
        for kind in AlertKind::ALL {
            assert!(advice(kind).len() > 40, "{kind:?}");
        }
    }

    #[test]
    fn rows_escape_what_the_peer_sent_and_offer_acknowledge_while_open() {
        let list = [
            kept(2, "<script>alert(1)</script>", false),
            kept(1, "old", true),
        ];
        let html = page_markup(&principal(), &list, 1, &PageQuery::default(), None).into_string();
        assert!(!html.contains("<script>alert(1)"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("&lt;b&gt;mx&lt;/b&gt;"));
        assert!(html.contains(r#"action="/alerts/2/acknowledge""#));
        assert!(!html.contains(r#"action="/alerts/1/acknowledge""#));
        assert!(html.contains("by admin"));
        // "all shown" carries only the open ones
        assert!(html.contains(r#"name="id" value="2""#));
        assert!(!html.contains(r#"name="id" value="1""#));
        assert!(
            html.contains("this domain was learned at"),
            "the advice line"
        );
    }

    #[test]
    fn banner_shows_the_newest_until_none_is_open() {
        let open = kept(7, "<i>x</i>", false);
        let html = banner(3, Some(&open)).into_string();
        assert!(html.contains(r#"data-unacknowledged="3""#), "{html}");
        assert!(html.contains("&lt;i&gt;x&lt;/i&gt;"));
        assert!(html.contains(r#"href="/alerts?acknowledged=false""#));
        assert_eq!(banner(0, None).into_string(), "");
        assert_eq!(banner(0, Some(&open)).into_string(), "");
    }

    #[test]
    fn coming_back_keeps_only_valid_filters() {
        let q = PageQuery {
            kind: Some("downgrade".into()),
            acknowledged: Some("false".into()),
            ok: None,
        };
        assert_eq!(q.filter_query(), "kind=downgrade&acknowledged=false");
        let bad = PageQuery {
            kind: Some("x&ok=1".into()),
            acknowledged: Some("maybe".into()),
            ok: None,
        };
        assert_eq!(bad.filter_query(), "");
    }
}
