//! Settings → Integrated MTA → Advanced: every `[mta]` setting in one
//! form, with its current value, its default and its allowed range.
//!
//! Saving goes through [`Settings::with_all`], the same parsing and
//! validation as `postern settings set`, applied to all fields at once
//! and inside the store's write transaction: an invalid value is refused
//! with the key named next to its field, and nothing changes.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};
use postern_config::{bound, MtaSettings, Settings, MAX_BANNER_CHARS};
use postern_store::StoreError;
use serde_json::Value;

use super::tls::Done;
use super::{
    csrf_field, error_banner, failure, field_error, layout, notice, render, see_other, FieldErrors,
    Section,
};
use crate::api::blocking;
use crate::error::ApiError;
use crate::http::{CsrfForm, Principal};
use crate::Shared;

/// How a field is edited.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Number,
    Duration,
    /// One network per line (or comma-separated).
    Networks,
    /// On or off (a choice, so that "off" is submitted too).
    Bool,
}

/// Every field: settings key, label, kind, what it does.
const FIELDS: &[(&str, &str, Kind, &str)] = &[
    ("mta.banner", "Greeting banner", Kind::Text,
     "The text after 220 in the greeting. Empty: the host name followed by \"ESMTP Postern\"."),
    ("mta.max_message_size", "Largest message (bytes)", Kind::Number,
     "Advertised as SIZE; a larger message is refused with 552 5.3.4."),
    ("mta.max_recipients", "Recipients per message", Kind::Number,
     "More recipients get 452 4.5.3 (the client sends them again in another transaction)."),
    ("mta.max_connections", "Connections in total", Kind::Number,
     "Further connections get 421 4.7.0 and are closed."),
    ("mta.max_connections_per_client", "Connections per client address", Kind::Number,
     "At most the total above. Further connections from the address get 421 4.7.0."),
    ("mta.session_timeout", "Session timeout", Kind::Duration,
     "Idle time allowed while waiting for a command or data; then 421 4.4.2."),
    ("mta.queue_lifetime", "Queue lifetime", Kind::Duration,
     "How long a message is retried before it bounces."),
    ("mta.min_backoff", "First retry after", Kind::Duration,
     "The wait before the first retry; it doubles up to the longest wait below."),
    ("mta.max_backoff", "Longest wait between retries", Kind::Duration,
     "Not shorter than the first retry."),
    ("mta.tracking_retention", "Keep message tracking for", Kind::Duration,
     "Tracking events older than this are deleted (checked hourly)."),
    ("mta.limit_exempt_networks", "Networks exempt from the per-client limit", Kind::Networks,
     "One network per line (10.0.0.0/8, 2001:db8::/32). Empty by default: a trusted network is not exempt on its own."),
    ("mta.requiretls", "Offer REQUIRETLS", Kind::Bool,
     "Advertise REQUIRETLS (RFC 8689) after STARTTLS and accept mail that requires TLS on every hop."),
];

fn keys() -> Vec<&'static str> {
    FIELDS.iter().map(|(key, ..)| *key).collect()
}

/// The value of `key` in `mta` as form text.
fn text_of(mta: &MtaSettings, key: &str) -> String {
    let name = key.trim_start_matches("mta.");
    match serde_json::to_value(mta)
        .ok()
        .and_then(|v| v.get(name).cloned())
    {
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// What the form shows: a text per key (as submitted, or the settings).
type Values = Vec<(&'static str, String)>;

fn values_of(settings: &Settings) -> Values {
    FIELDS
        .iter()
        .map(|(key, ..)| (*key, text_of(&settings.mta, key)))
        .collect()
}

fn values_from(form: &CsrfForm) -> Values {
    FIELDS
        .iter()
        .filter(|(key, ..)| form.has(key))
        .map(|(key, _, kind, _)| {
            let raw = form.get(key);
            // A textarea's lines are list items, as commas are for the CLI.
            let value = match kind {
                Kind::Networks => raw
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(","),
                _ => raw,
            };
            (*key, value)
        })
        .collect()
}

fn field(
    key: &'static str,
    label: &str,
    kind: Kind,
    help: &str,
    value: &str,
    default: &str,
    errors: &FieldErrors,
) -> Markup {
    let range = match (kind, bound(key)) {
        (Kind::Text, _) => {
            format!("one line of at most {MAX_BANNER_CHARS} printable ASCII characters")
        }
        (Kind::Networks, Some(b)) => format!("at most {} networks", b.max),
        (Kind::Bool, _) => "true or false".to_string(),
        (_, Some(b)) => b.range(),
        (_, None) => String::new(),
    };
    let default = if default.is_empty() { "empty" } else { default };
    html! {
        div.field data-key=(key) {
            label for=(key) { (label) }
            @match kind {
                Kind::Networks => {
                    textarea id=(key) name=(key) rows="3" { (value) }
                }
                Kind::Number => {
                    input id=(key) name=(key) type="text" inputmode="numeric" value=(value);
                }
                Kind::Bool => {
                    select id=(key) name=(key) {
                        option value="true" selected[value == "true"] { "true" }
                        option value="false" selected[value == "false"] { "false" }
                    }
                }
                _ => {
                    input id=(key) name=(key) type="text" value=(value);
                }
            }
            (field_error(errors, key))
            p.help {
                (help) " "
                span.range { "Allowed: " (range) "." } " "
                span.default { "Default: " code { (default) } "." } " "
                span.key { "Setting " code { (key) } "." }
            }
        }
    }
}

fn form_markup(
    principal: &Principal,
    values: &Values,
    hostname: &str,
    errors: &FieldErrors,
    ok: Option<&str>,
) -> Markup {
    let defaults = values_of(&Settings::default());
    let keys = keys();
    html! {
        p.crumbs { "Settings → Integrated MTA" }
        h1 { "Advanced" }
        (notice(ok))
        (error_banner(errors.general(&keys)))
        @if !errors.is_empty() && errors.general(&keys).is_none() {
            p.error role="alert" { "Not saved: see the message next to the field. Nothing was changed." }
        }
        form.settings method="post" action="/settings/advanced" {
            (csrf_field(principal))
            @for (key, label, kind, help) in FIELDS {
                @let value = values.iter().find(|(k, _)| k == key).map_or("", |(_, v)| v.as_str());
                @let default = if *key == "mta.banner" {
                    format!("{hostname} ESMTP Postern")
                } else {
                    defaults.iter().find(|(k, _)| k == key).map_or(String::new(), |(_, v)| v.replace('\n', ", "))
                };
                (field(key, label, *kind, help, value, &default, errors))
            }
            p.help { "Durations are written 30s, 5m, 1h or 5d. The gateway applies a change within a second." }
            button type="submit" { "Save" }
        }
    }
}

pub async fn page(
    State(state): State<Shared>,
    Extension(principal): Extension<Principal>,
    Query(done): Query<Done>,
) -> Response {
    let store = state.store.clone();
    let loaded = blocking(move || store.settings().map_err(ApiError::from_store)).await;
    let settings = match loaded {
        Ok(settings) => settings,
        Err(e) => return failure(&principal, &e),
    };
    let markup = form_markup(
        &principal,
        &values_of(&settings),
        &state.options.hostname,
        &FieldErrors::default(),
        done.ok(),
    );
    render(
        StatusCode::OK,
        layout("Advanced", Section::Advanced, &principal, markup),
    )
}

pub async fn save(State(state): State<Shared>, form: CsrfForm) -> Response {
    let principal = form.principal.clone();
    let submitted = values_from(&form);
    let store = state.store.clone();
    let changes = submitted.clone();
    let saved = blocking(move || {
        let pairs: Vec<(&str, &str)> = changes.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Ok(store.update_settings(&mut |current| Ok(current.with_all(&pairs)?)))
    })
    .await;
    let error = match saved {
        Ok(Ok(_)) => {
            tracing::info!("advanced MTA settings changed through the admin UI");
            return see_other("/settings/advanced?ok=saved");
        }
        Ok(Err(StoreError::Invalid(e))) => ApiError::invalid(e.key.clone(), e.to_string()),
        Ok(Err(other)) => ApiError::from_store(other),
        Err(e) => return failure(&principal, &e),
    };
    let errors = FieldErrors::from_api(&error);
    let markup = form_markup(
        &principal,
        &submitted,
        &state.options.hostname,
        &errors,
        None,
    );
    render(
        error.status,
        layout("Advanced", Section::Advanced, &principal, markup),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mta_setting_has_a_field() {
        let mta = serde_json::to_value(MtaSettings::default()).expect("json");
        let names: Vec<String> = mta
            .as_object()
            .expect("object")
            .keys()
            .map(|k| format!("mta.{k}"))
            .collect();
        let mut fields = keys();
        fields.sort_unstable();
        let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            fields, names,
            "a [mta] setting without a field, or the reverse"
        );
    }

    #[test]
    fn defaults_round_trip_through_the_form() {
        let s = Settings::default();
        let values = values_of(&s);
        let pairs: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(s.with_all(&pairs).expect("valid"), s);
    }

    #[test]
    fn networks_are_shown_one_per_line() {
        let s = Settings::default()
            .with("mta.limit_exempt_networks", "10.0.0.0/8, 2001:db8::/32")
            .expect("valid");
        assert_eq!(
            text_of(&s.mta, "mta.limit_exempt_networks"),
            "10.0.0.0/8\n2001:db8::/32"
        );
    }
}
