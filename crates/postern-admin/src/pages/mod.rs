//! Server-rendered HTML pages. Every form posts back with the session's
//! CSRF token; a change redirects to the page with a short notice
//! (post/redirect/get), a refused change shows the form again with the
//! message next to the field.

pub mod advanced;
pub mod alerts;
pub mod certificates;
pub mod cluster;
pub mod dashboard;
pub mod domains;
pub mod login;
pub mod policies;
pub mod queue;
pub mod tls;
pub mod tlsrpt;
pub mod tracking;

use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::error::ApiError;
use crate::http::Principal;
use crate::Shared;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/logout", post(login::logout))
        .route("/settings/tls", get(tls::page).post(tls::save))
        .route("/settings/domains", get(domains::page).post(domains::add))
        .route(
            "/settings/advanced",
            get(advanced::page).post(advanced::save),
        )
        .route("/settings/domains/{name}/edit", get(domains::edit_page))
        .route("/settings/domains/{name}", post(domains::update))
        .route("/settings/domains/{name}/delete", post(domains::delete))
        .route("/certificates", get(certificates::page))
        .route("/certificates/generate", post(certificates::generate))
        .route("/certificates/import", post(certificates::import))
        .route("/certificates/{name}/export", get(certificates::export))
        .route("/certificates/{name}/delete", post(certificates::delete))
        .route("/queue", get(queue::page))
        .route("/queue/{id}", get(queue::detail))
        .route("/queue/{id}/retry", post(queue::retry))
        .route("/queue/{id}/delete", post(queue::delete))
        .route("/tracking", get(tracking::page))
        .route("/tracking/{id}", get(tracking::detail))
        .route("/cluster", get(cluster::page))
        .route("/policies", get(policies::page))
        .route("/tlsrpt", get(tlsrpt::page))
        .route("/policies/{domain}/forget", post(policies::forget))
        .route("/policies/{domain}/pin", post(policies::pin))
        .route("/alerts", get(alerts::page))
        .route("/alerts/acknowledge", post(alerts::acknowledge_shown))
        .route("/alerts/{id}/acknowledge", post(alerts::acknowledge))
}

/// Which navigation entry a page belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Dashboard,
    Tls,
    Domains,
    Advanced,
    Certificates,
    Queue,
    Tracking,
    Cluster,
    Policies,
    TlsReports,
    Alerts,
}

const NAV: &[(Section, &str, &str)] = &[
    (Section::Dashboard, "/", "Dashboard"),
    (Section::Tls, "/settings/tls", "TLS encryption"),
    (Section::Domains, "/settings/domains", "Domains"),
    (Section::Advanced, "/settings/advanced", "Advanced"),
    (Section::Certificates, "/certificates", "Certificates"),
    (Section::Queue, "/queue", "Queue"),
    (Section::Tracking, "/tracking", "Message tracking"),
    (Section::Cluster, "/cluster", "Cluster"),
    (Section::Policies, "/policies", "Outbound policies"),
    (Section::TlsReports, "/tlsrpt", "TLS reports"),
    (Section::Alerts, "/alerts", "Alerts"),
];

/// The page frame: header, navigation, logout, content.
pub fn layout(title: &str, section: Section, principal: &Principal, content: Markup) -> Markup {
    let csrf = principal.csrf().unwrap_or("");
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="csrf-token" content=(csrf);
                title { (title) " — Postern" }
                link rel="stylesheet" href="/static/style.css";
                script src="/static/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "Postern" }
                    span.subtitle { "secure SMTP gateway" }
                    form.logout method="post" action="/logout" {
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" { "Log out" }
                    }
                }
                div.frame {
                    nav {
                        ul {
                            @for (s, href, label) in NAV {
                                @if *s == Section::Tls {
                                    li.group { "Settings → Integrated MTA" }
                                }
                                li.sub[matches!(s, Section::Tls | Section::Domains | Section::Advanced)] {
                                    @if *s == section {
                                        a href=(href) aria-current="page" { (label) }
                                    } @else {
                                        a href=(href) { (label) }
                                    }
                                }
                            }
                        }
                    }
                    main { (content) }
                }
            }
        }
    }
}

/// A hidden CSRF field for a form.
pub fn csrf_field(principal: &Principal) -> Markup {
    html! { input type="hidden" name="csrf" value=(principal.csrf().unwrap_or("")); }
}

/// A notice after a redirect (`?ok=...`): fixed texts only.
pub fn notice(code: Option<&str>) -> Markup {
    let text = match code {
        Some("saved") => "Saved. The gateway applies the change within a second.",
        Some("added") => "Added. The gateway applies the change within a second.",
        Some("updated") => "Updated. The gateway applies the change within a second.",
        Some("deleted") => "Deleted.",
        Some("generated") => "Certificate generated.",
        Some("imported") => "Certificate imported.",
        Some("retried") => "Retry scheduled: deferred recipients are due now.",
        Some("requested") => {
            "Requested from the node that holds the message: it carries the request out within 2 seconds."
        }
        Some("forgotten") => "Forgotten. The gateway learns this domain afresh within 2 seconds.",
        Some("pinned") => "Pinned: the learned level is now a [[domain]] rule (see Domains).",
        _ => return html! {},
    };
    html! { p.notice role="status" { (text) } }
}

/// An error banner.
pub fn error_banner(message: Option<&str>) -> Markup {
    match message {
        Some(text) => html! { p.error role="alert" { (text) } },
        None => html! {},
    }
}

/// A message next to a form field, when that field is the one at fault.
pub fn field_error(errors: &FieldErrors, field: &str) -> Markup {
    match errors.get(field) {
        Some(text) => html! { span.field-error role="alert" data-field=(field) { (text) } },
        None => html! {},
    }
}

/// The validation message of a refused form, by field.
#[derive(Default, Clone, Debug)]
pub struct FieldErrors {
    pub field: Option<String>,
    pub message: Option<String>,
}

impl FieldErrors {
    pub fn from_api(error: &ApiError) -> Self {
        Self {
            field: error.field.clone(),
            message: Some(error.message.clone()),
        }
    }

    pub fn get(&self, field: &str) -> Option<&str> {
        (self.field.as_deref() == Some(field))
            .then_some(self.message.as_deref())
            .flatten()
    }

    /// The message when no field of the form shows it.
    pub fn general(&self, fields: &[&str]) -> Option<&str> {
        match &self.field {
            Some(f) if fields.contains(&f.as_str()) => None,
            _ => self.message.as_deref(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.message.is_none()
    }
}

/// Render a page with a status.
pub fn render(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        Html(markup.into_string()),
    )
        .into_response()
}

/// Redirect after a change (303: the browser follows with GET).
pub fn see_other(location: &str) -> Response {
    Redirect::to(location).into_response()
}

/// A page that could not be built.
pub fn failure(principal: &Principal, error: &ApiError) -> Response {
    render(
        error.status,
        layout(
            "Error",
            Section::Dashboard,
            principal,
            html! {
                h1 { "Something went wrong" }
                (error_banner(Some(&error.message)))
                p { a href="/" { "Back to the dashboard" } }
            },
        ),
    )
}

/// Percent-encode a path segment (certificate names with blanks, etc.).
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Raw markup we built ourselves (SVG charts).
pub fn trusted(markup: String) -> Markup {
    PreEscaped(markup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("Default Cert"), "Default%20Cert");
        assert_eq!(segment("../x"), "..%2Fx");
        assert_eq!(segment("a.b-c_d"), "a.b-c_d");
    }

    #[test]
    fn field_errors_attach_to_their_field() {
        let e = FieldErrors::from_api(&ApiError::invalid("next_hop", "bad hop"));
        assert_eq!(e.get("next_hop"), Some("bad hop"));
        assert_eq!(e.get("name"), None);
        assert_eq!(e.general(&["name", "next_hop"]), None);
        assert_eq!(e.general(&["name"]), Some("bad hop"));
    }

    #[test]
    fn text_is_escaped() {
        let markup = html! { p { ("<script>alert(1)</script>") } };
        assert_eq!(
            markup.into_string(),
            "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"
        );
    }
}
