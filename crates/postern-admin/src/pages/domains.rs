//! Settings → Integrated MTA → Domains: the `[[domain]]` table — list, add,
//! edit, delete — with the per-domain outbound TLS mode.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};
use postern_config::{DomainEntry, Settings};
use postern_store::MonitorCount;

use super::tls::OUTBOUND_MODES;
use super::{
    csrf_field, error_banner, failure, field_error, layout, notice, render, see_other, segment,
    FieldErrors, Section,
};
use crate::api::blocking;
use crate::api::domains::{apply, parse_mode, DomainChange};
use crate::error::ApiError;
use crate::http::{CsrfForm, Principal};
use crate::Shared;

/// The form's values as submitted.
#[derive(Debug, Clone, Default)]
struct DomainForm {
    name: String,
    relay: bool,
    next_hop: String,
    tls: String,
    dane: bool,
    mta_sts: bool,
    monitor: bool,
}

impl DomainForm {
    /// The add form: what a new `[[domain]]` entry defaults to.
    fn blank() -> Self {
        Self {
            relay: true,
            dane: true,
            mta_sts: true,
            ..Self::default()
        }
    }

    fn from_entry(entry: &DomainEntry) -> Self {
        Self {
            name: entry.name.clone(),
            relay: entry.relay,
            dane: entry.dane,
            mta_sts: entry.mta_sts,
            next_hop: entry.next_hop.clone().unwrap_or_default(),
            tls: entry
                .tls
                .and_then(|m| serde_json::to_value(m).ok())
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            monitor: entry.monitor,
        }
    }

    fn from_form(form: &CsrfForm) -> Self {
        Self {
            name: form.get("name"),
            relay: form.has("relay"),
            next_hop: form.get("next_hop"),
            tls: form.get("tls"),
            dane: form.has("dane"),
            mta_sts: form.has("mta_sts"),
            monitor: form.has("monitor"),
        }
    }

    fn entry(&self) -> Result<DomainEntry, ApiError> {
        if self.name.is_empty() {
            return Err(ApiError::invalid(
                "name",
                "name: give a domain (\"example.com\") or a wildcard (\"*.example.com\")",
            ));
        }
        Ok(DomainEntry {
            name: self.name.clone(),
            relay: self.relay,
            next_hop: (!self.next_hop.is_empty()).then(|| self.next_hop.clone()),
            tls: parse_mode(&self.tls)?,
            mta_sts: self.mta_sts,
            dane: self.dane,
            monitor: self.monitor,
        })
    }
}

fn mode_label(entry: &DomainEntry) -> String {
    let value = entry
        .tls
        .and_then(|m| serde_json::to_value(m).ok())
        .and_then(|v| v.as_str().map(str::to_string));
    match value {
        None => "Global client mode".to_string(),
        Some(v) => OUTBOUND_MODES
            .iter()
            .find(|(value, _, _)| *value == v)
            .map_or(v.clone(), |(_, label, _)| (*label).to_string()),
    }
}

fn entry_form(
    principal: &Principal,
    action: &str,
    form: &DomainForm,
    errors: &FieldErrors,
    submit: &str,
) -> Markup {
    html! {
        form.domain method="post" action=(action) {
            (csrf_field(principal))
            div.field {
                label for="name" { "Domain" }
                input #name type="text" name="name" value=(form.name) placeholder="corp.example or *.corp.example" required;
                (field_error(errors, "name"))
                p.help { "An exact name, or \"*.corp.example\" for every subdomain (not corp.example itself)." }
            }
            div.field {
                label.check {
                    input #relay type="checkbox" name="relay" value="true" checked[form.relay];
                    " Accept mail for this domain from anyone (relay)"
                }
                (field_error(errors, "relay"))
            }
            div.field {
                label.check {
                    input #dane type="checkbox" name="dane" value="true" checked[form.dane];
                    " Honour this domain's DANE (TLSA) records"
                }
            }
            div.field {
                label.check {
                    input #mta_sts type="checkbox" name="mta_sts" value="true" checked[form.mta_sts];
                    " Honour this domain's MTA-STS policy"
                }
            }
            div.field {
                label for="next_hop" { "Next hop" }
                input #next_hop type="text" name="next_hop" value=(form.next_hop) placeholder="empty: MX lookup; or host, host:port, [192.0.2.1]:25";
                (field_error(errors, "next_hop"))
                p.help { "A static route instead of the MX lookup. IP addresses in brackets." }
            }
            div.field {
                label for="tls" { "TLS mode for this domain" }
                select #tls name="tls" {
                    option value="" selected[form.tls.is_empty()] { "Use the global client mode" }
                    @for (value, label, _) in OUTBOUND_MODES {
                        option value=(value) selected[*value == form.tls] { (label) }
                    }
                }
                (field_error(errors, "tls"))
                dl.choices {
                    @for (_, label, help) in OUTBOUND_MODES {
                        dt { (label) }
                        dd { (help) }
                    }
                }
            }
            div.field {
                label.check {
                    input #monitor type="checkbox" name="monitor" value="true" checked[form.monitor];
                    " Monitor only: evaluate this TLS mode on every attempt and record what would fail, but deliver by the global mode"
                }
                (field_error(errors, "monitor"))
            }
            button type="submit" { (submit) }
        }
    }
}

/// Would-be verdicts of monitor rules over the last 24 hours and 7 days.
#[derive(Debug, Default)]
struct MonitorCounts {
    day: Vec<MonitorCount>,
    week: Vec<MonitorCount>,
}

impl MonitorCounts {
    fn of(list: &[MonitorCount], domain: &str) -> (i64, i64) {
        list.iter()
            .find(|c| c.domain.eq_ignore_ascii_case(domain))
            .map_or((0, 0), |c| (c.attempts, c.would_fail))
    }
}

fn monitor_cell(entry: &DomainEntry, counts: &MonitorCounts) -> Markup {
    let (day_attempts, day_fail) = MonitorCounts::of(&counts.day, &entry.name);
    let (week_attempts, week_fail) = MonitorCounts::of(&counts.week, &entry.name);
    html! {
        td.monitor data-would-fail-24h=(day_fail) data-attempts-24h=(day_attempts)
            data-would-fail-7d=(week_fail) data-attempts-7d=(week_attempts) {
            "Monitor: would have failed " (day_fail) " of " (day_attempts) " in 24 h, "
            (week_fail) " of " (week_attempts) " in 7 d"
        }
    }
}

fn list_markup(
    principal: &Principal,
    settings: &Settings,
    form: &DomainForm,
    errors: &FieldErrors,
    ok: Option<&str>,
    counts: &MonitorCounts,
) -> Markup {
    html! {
        p.crumbs { "Settings → Integrated MTA" }
        h1 { "Domains" }
        (notice(ok))
        (error_banner(errors.general(&["name", "relay", "next_hop", "tls", "monitor"])))
        @if settings.domains.is_empty() {
            p { "No domain entries: mail is accepted only from trusted networks, delivered by MX lookup with the global client TLS mode." }
        } @else {
            table.list #domains {
                thead { tr { th { "Domain" } th { "Relay" } th { "Next hop" } th { "TLS mode" } th { "Monitor" } th { "" } } }
                tbody {
                    @for entry in &settings.domains {
                        tr data-domain=(entry.name) {
                            td { (entry.name) }
                            td { @if entry.relay { "yes" } @else { "no" } }
                            td { (entry.next_hop.as_deref().unwrap_or("MX lookup")) }
                            td.mode { (mode_label(entry)) }
                            @if entry.monitor {
                                (monitor_cell(entry, counts))
                            } @else {
                                td.monitor { "" }
                            }
                            td.actions {
                                a.button href=(format!("/settings/domains/{}/edit", segment(&entry.name))) { "Edit" }
                                form.inline method="post" action=(format!("/settings/domains/{}/delete", segment(&entry.name))) data-confirm=(format!("Delete the entry for {}?", entry.name)) {
                                    (csrf_field(principal))
                                    button.danger type="submit" { "Delete" }
                                }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Add a domain" }
            (entry_form(principal, "/settings/domains", form, errors, "Add"))
        }
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct Done {
    ok: Option<String>,
}

async fn load(state: &Shared) -> Result<Settings, ApiError> {
    let store = state.store.clone();
    blocking(move || store.settings().map_err(ApiError::from_store)).await
}

/// The counts are evidence, not the page: a store that cannot give them
/// shows zeros rather than no page.
async fn monitor_counts(state: &Shared) -> MonitorCounts {
    let store = state.store.clone();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    blocking(move || {
        let learned = store.learned();
        Ok(MonitorCounts {
            day: learned.verdict_counts(now - 86_400).unwrap_or_default(),
            week: learned.verdict_counts(now - 7 * 86_400).unwrap_or_default(),
        })
    })
    .await
    .unwrap_or_default()
}

pub async fn page(
    State(state): State<Shared>,
    Extension(principal): Extension<Principal>,
    Query(done): Query<Done>,
) -> Response {
    let counts = monitor_counts(&state).await;
    match load(&state).await {
        Ok(settings) => render(
            StatusCode::OK,
            layout(
                "Domains",
                Section::Domains,
                &principal,
                list_markup(
                    &principal,
                    &settings,
                    &DomainForm::blank(),
                    &FieldErrors::default(),
                    done.ok.as_deref(),
                    &counts,
                ),
            ),
        ),
        Err(e) => failure(&principal, &e),
    }
}

/// Apply a change; on error show `refused` with the message.
async fn change(
    state: Shared,
    change: Result<DomainChange, ApiError>,
    done: &str,
    refused: impl FnOnce(&Settings, &FieldErrors, StatusCode) -> Response,
) -> Response {
    let result = match change {
        Ok(change) => {
            let state2 = state.clone();
            blocking(move || apply(&state2, change)).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => {
            tracing::info!("domain table changed through the admin UI");
            see_other(done)
        }
        Err(e) => {
            let settings = load(&state).await.unwrap_or_default();
            refused(&settings, &FieldErrors::from_api(&e), e.status)
        }
    }
}

pub async fn add(State(state): State<Shared>, form: CsrfForm) -> Response {
    let principal = form.principal.clone();
    let submitted = DomainForm::from_form(&form);
    let entry = submitted.entry().map(DomainChange::Add);
    change(
        state,
        entry,
        "/settings/domains?ok=added",
        |settings, errors, status| {
            render(
                status,
                layout(
                    "Domains",
                    Section::Domains,
                    &principal,
                    list_markup(
                        &principal,
                        settings,
                        &submitted,
                        errors,
                        None,
                        &MonitorCounts::default(),
                    ),
                ),
            )
        },
    )
    .await
}

fn edit_markup(
    principal: &Principal,
    original: &str,
    form: &DomainForm,
    errors: &FieldErrors,
) -> Markup {
    html! {
        p.crumbs { "Settings → Integrated MTA → Domains" }
        h1 { "Edit " (original) }
        (error_banner(errors.general(&["name", "relay", "next_hop", "tls", "monitor"])))
        (entry_form(principal, &format!("/settings/domains/{}", segment(original)), form, errors, "Save"))
        p { a href="/settings/domains" { "Back to the list" } }
    }
}

pub async fn edit_page(
    State(state): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Response {
    let settings = match load(&state).await {
        Ok(settings) => settings,
        Err(e) => return failure(&principal, &e),
    };
    let Some(entry) = settings
        .domains
        .iter()
        .find(|d| d.name.eq_ignore_ascii_case(&name))
    else {
        return failure(
            &principal,
            &ApiError::not_found(format!("no domain entry \"{name}\"")),
        );
    };
    render(
        StatusCode::OK,
        layout(
            "Edit domain",
            Section::Domains,
            &principal,
            edit_markup(
                &principal,
                &entry.name,
                &DomainForm::from_entry(entry),
                &FieldErrors::default(),
            ),
        ),
    )
}

pub async fn update(
    State(state): State<Shared>,
    Path(name): Path<String>,
    form: CsrfForm,
) -> Response {
    let principal = form.principal.clone();
    let submitted = DomainForm::from_form(&form);
    let entry = submitted
        .entry()
        .map(|e| DomainChange::Update(name.clone(), e));
    change(
        state,
        entry,
        "/settings/domains?ok=updated",
        |_, errors, status| {
            render(
                status,
                layout(
                    "Edit domain",
                    Section::Domains,
                    &principal,
                    edit_markup(&principal, &name, &submitted, errors),
                ),
            )
        },
    )
    .await
}

pub async fn delete(
    State(state): State<Shared>,
    Path(name): Path<String>,
    form: CsrfForm,
) -> Response {
    let principal = form.principal.clone();
    change(
        state,
        Ok(DomainChange::Delete(name)),
        "/settings/domains?ok=deleted",
        |settings, errors, status| {
            render(
                status,
                layout(
                    "Domains",
                    Section::Domains,
                    &principal,
                    list_markup(
                        &principal,
                        settings,
                        &DomainForm::blank(),
                        errors,
                        None,
                        &MonitorCounts::default(),
                    ),
                ),
            )
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_keeps_mta_sts_off_across_an_edit() {
        let entry = DomainEntry {
            name: "partner.test".into(),
            relay: false,
            next_hop: None,
            tls: None,
            mta_sts: false,
            dane: true,
            monitor: false,
        };
        let form = DomainForm::from_entry(&entry);
        let html = entry_form(
            &Principal::Token("t".into()),
            "/x",
            &form,
            &FieldErrors::default(),
            "Save",
        )
        .into_string();
        assert!(
            html.contains(r#"<input id="mta_sts" type="checkbox" name="mta_sts" value="true">"#),
            "unchecked: {html}"
        );
        assert!(html.contains(r#"name="dane" value="true" checked"#));
        assert_eq!(form.entry().unwrap(), entry);
        assert!(DomainForm::blank().mta_sts, "a new entry honours MTA-STS");
    }
}
