//! Outbound policies (SPEC §8, §10): what the gateway has learned about
//! each recipient domain's TLS, with the evidence behind it, and the two
//! review actions — forget (learn afresh) and pin (make it a `[[domain]]`
//! rule). Both go through `postern_store::learned::review`, like the CLI
//! and `/api/v1/policies`.
//!
//! The page is a list of sections, one per source, all under one filter:
//! [`learned_section`], [`mta_sts_section`] (the shared policy cache) and
//! [`dane_section`] (the newest DANE attempt per domain, from the typed
//! attempt records).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};
use postern_store::learned::{review, DomainEvidence};
use postern_store::MtaStsRecord;

use super::{
    csrf_field, error_banner, failure, layout, notice, render, see_other, segment, Section,
};
use crate::api::blocking;
use crate::api::policies::{dane_statuses, from_review, DaneStatus};
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

/// Everything the page shows.
#[derive(Default)]
struct Sources {
    learned: Vec<DomainEvidence>,
    mta_sts: Vec<MtaStsRecord>,
    dane: Vec<DaneStatus>,
}

fn filter_text(query: &PageQuery) -> String {
    query.q.trim().to_ascii_lowercase()
}

fn mta_sts_matches(record: &MtaStsRecord, filter: &str) -> bool {
    filter.is_empty()
        || record.domain.contains(filter)
        || record
            .mx
            .iter()
            .any(|m| m.to_ascii_lowercase().contains(filter))
}

fn dane_matches(status: &DaneStatus, filter: &str) -> bool {
    filter.is_empty()
        || status.domain.contains(filter)
        || status.host.to_ascii_lowercase().contains(filter)
}

/// `86400` as `86400 s (1 d)`.
fn max_age(seconds: i64) -> String {
    if seconds >= 86_400 {
        format!("{seconds} s ({} d)", seconds / 86_400)
    } else {
        format!("{seconds} s")
    }
}

fn mta_sts_section(records: &[&MtaStsRecord]) -> Markup {
    html! {
        section #mta-sts-cache {
            h2 { "MTA-STS policy cache" }
            p.help {
                "Policies fetched from https://mta-sts.DOMAIN/.well-known/mta-sts.txt, shared by "
                "every node and used until max_age runs out; a new id in the domain's "
                code { "_mta-sts" } " TXT record fetches afresh. Mode " b { "enforce" }
                " requires verified TLS to a host matching the mx patterns; "
                b { "testing" } " only records what would fail."
            }
            @if records.is_empty() {
                p.empty { "No cached MTA-STS policy matches." }
            } @else {
                table.list #mta-sts {
                    thead { tr {
                        th { "Domain" } th { "Mode" } th { "max_age" } th { "Fetched (UTC)" }
                        th { "Expires (UTC)" } th { "MX patterns" } th { "Policy id" }
                    } }
                    tbody {
                        @for r in records {
                            tr data-domain=(r.domain) data-mode=(r.mode) {
                                td { (r.domain) }
                                td.mode { (r.mode) }
                                td.max-age { (max_age(r.max_age)) }
                                td { (display_time(r.fetched_at)) }
                                td { (display_time(r.expires_at)) }
                                td.mx { @for m in &r.mx { code { (m) } " " } }
                                td.policy-id { code { (r.id) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn dane_section(statuses: &[&DaneStatus]) -> Markup {
    html! {
        section #dane-status {
            h2 { "DANE status" }
            p.help {
                "Per recipient domain, the newest delivery attempt where DANE applied (DNSSEC-signed "
                "TLSA records for the MX host) in the last 7 days: the records' certificate usage "
                "and whether the host's certificate matched them."
            }
            @if statuses.is_empty() {
                p.empty { "No DANE attempt matches." }
            } @else {
                table.list #dane {
                    thead { tr {
                        th { "Domain" } th { "MX host" } th { "Last attempt (UTC)" } th { "TLSA usage" }
                        th { "Verdict" } th { "TLSA records" }
                    } }
                    tbody {
                        @for d in statuses {
                            tr data-domain=(d.domain) data-verdict=(d.verdict) {
                                td { (d.domain) }
                                td.host { code { (d.host) } }
                                td { (display_time(d.at)) }
                                td.usage { (d.usages.join(", ")) }
                                td.verdict {
                                    (d.verdict)
                                    @if let Some(rt) = d.result_type { " (" (rt) ")" }
                                }
                                td.tlsa { @for t in &d.tlsa { div { code { (t) } } } }
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
    all: &Sources,
    query: &PageQuery,
    error: Option<&str>,
) -> Markup {
    let filter = filter_text(query);
    let shown: Vec<&DomainEvidence> = all
        .learned
        .iter()
        .filter(|e| matches(e, &query.q))
        .collect();
    let sts: Vec<&MtaStsRecord> = all
        .mta_sts
        .iter()
        .filter(|r| mta_sts_matches(r, &filter))
        .collect();
    let dane: Vec<&DaneStatus> = all
        .dane
        .iter()
        .filter(|d| dane_matches(d, &filter))
        .collect();
    html! {
        h1 { "Outbound policies" }
        (notice(query.ok.as_deref()))
        (error_banner(error))
        form.filters method="get" action="/policies" {
            label { "Domain or MX host " input #filter type="search" name="q" value=(query.q) placeholder="partner.example"; }
            button type="submit" { "Filter" }
        }
        p.count { (shown.len()) " of " (all.learned.len()) " domain(s)" }
        (learned_section(principal, &shown))
        (mta_sts_section(&sts))
        (dane_section(&dane))
    }
}

async fn load(state: &Shared) -> Result<Sources, ApiError> {
    let store = state.store.clone();
    blocking(move || {
        let now = now();
        Ok(Sources {
            learned: review::list(store.as_ref(), now).map_err(ApiError::from_store)?,
            mta_sts: store.mta_sts_policies().map_err(ApiError::from_store)?,
            dane: dane_statuses(store.as_ref(), now).map_err(ApiError::from_store)?,
        })
    })
    .await
}

pub async fn page(
    State(state): State<Shared>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<PageQuery>,
) -> Response {
    let (all, error, status) = match load(&state).await {
        Ok(all) => (all, None, StatusCode::OK),
        Err(e) => (Sources::default(), Some(e.message.clone()), e.status),
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

#[cfg(test)]
mod tests {
    use super::*;
    use postern_store::event::{Attempt, PolicyType, Verdict};

    fn attempt(tlsa: Vec<String>, policy_type: PolicyType) -> Attempt {
        serde_json::from_value(serde_json::json!({
            "host": "mx.dane.test", "ip": "127.0.0.1", "port": 25, "mode": "verify",
            "requirement": "DANE", "policy_type": policy_type, "tlsa": tlsa,
            "verdict": Verdict::Met, "tls_version": "TLSv1.3",
        }))
        .unwrap()
    }

    #[test]
    fn dane_status_names_the_usage_and_skips_attempts_without_dane() {
        let a = attempt(
            vec!["3 1 1 abcd".into(), "3 1 1 ef01".into()],
            PolicyType::Tlsa,
        );
        let status = crate::api::policies::dane_of("dane.test", 10, &a).unwrap();
        assert_eq!(status.usages, vec!["DANE-EE"]);
        assert_eq!(status.verdict, "met");
        let none = attempt(Vec::new(), PolicyType::NoPolicyFound);
        assert!(crate::api::policies::dane_of("x.test", 10, &none).is_none());
    }

    #[test]
    fn sections_escape_and_filter() {
        let sources = Sources {
            learned: Vec::new(),
            mta_sts: vec![MtaStsRecord {
                domain: "sts.test".into(),
                id: "<id>".into(),
                mode: "enforce".into(),
                max_age: 86_400,
                mx: vec!["*.sts.test".into()],
                policy: String::new(),
                fetched_at: 0,
                expires_at: 86_400,
            }],
            dane: vec![crate::api::policies::dane_of(
                "dane.test",
                10,
                &attempt(vec!["2 0 1 <b>".into()], PolicyType::Tlsa),
            )
            .unwrap()],
        };
        let principal = Principal::Token("t".into());
        let html = page_markup(&principal, &sources, &PageQuery::default(), None).into_string();
        assert!(
            html.contains(r#"<tr data-domain="sts.test" data-mode="enforce">"#),
            "{html}"
        );
        assert!(html.contains("86400 s (1 d)") && html.contains("&lt;id&gt;"));
        assert!(html.contains("DANE-TA") && html.contains("2 0 1 &lt;b&gt;"));
        let only_dane = PageQuery {
            q: "mx.dane".into(),
            ok: None,
        };
        let html = page_markup(&principal, &sources, &only_dane, None).into_string();
        assert!(!html.contains(r#"data-domain="sts.test""#));
        assert!(html.contains(r#"data-domain="dane.test""#));
    }
}
