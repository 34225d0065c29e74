//! Settings → Integrated MTA → TLS encryption, with the appliance's labels
//! (seed: "Modus für die TLS-Sicherheit des Servers / des Clients").
//! Form fields are named by their settings keys, so a validation error's
//! key points at the field it belongs to.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};
use postern_config::{ConfigError, Settings};
use postern_store::{CertificateRecord, StoreError};
use serde_json::Value;

use super::{
    csrf_field, error_banner, failure, field_error, layout, notice, render, see_other, FieldErrors,
    Section,
};
use crate::api::blocking;
use crate::error::ApiError;
use crate::http::{CsrfForm, Principal};
use crate::Shared;

pub const INBOUND_MODES: &[(&str, &str, &str)] = &[
    (
        "none",
        "No TLS encryption",
        "STARTTLS is not offered: every message arrives in plaintext. Only for networks where TLS cannot work.",
    ),
    (
        "offer",
        "Attempt TLS encryption",
        "Default. STARTTLS is offered; a client that cannot use TLS still delivers in plaintext.",
    ),
    (
        "require",
        "Require TLS encryption",
        "No mail without STARTTLS: MAIL, RCPT and DATA before it are refused (530). Warning: \
         servers that cannot do TLS can no longer send you mail.",
    ),
];

pub const CLIENT_CERT_MODES: &[(&str, &str, &str)] = &[
    (
        "none",
        "Do not request",
        "Default. Clients are not asked for a certificate.",
    ),
    (
        "request",
        "Request",
        "Clients are asked for a certificate; one without is still accepted, and whether it \
         verified against the trusted client CAs is recorded.",
    ),
    (
        "require",
        "Require",
        "Only clients whose certificate chains to a trusted client CA can send mail. Needs \
         \"Require TLS encryption\" and at least one trusted client CA. Warning: every other \
         client is refused.",
    ),
];

pub const OUTBOUND_MODES: &[(&str, &str, &str)] = &[
    (
        "none",
        "No TLS",
        "Mail is delivered in plaintext, even to servers that offer STARTTLS.",
    ),
    (
        "opportunistic",
        "Check TLS possibility",
        "Default. STARTTLS is used when the server offers it; otherwise, or when the handshake \
         fails, the message goes in plaintext.",
    ),
    (
        "require",
        "Require TLS, don't verify certificate",
        "Delivery only over TLS, whatever certificate the server shows. Warning: mail to servers \
         without TLS stays queued (deferred) and bounces when its queue lifetime ends.",
    ),
    (
        "verify",
        "Require TLS and verify certificate",
        "Delivery only over TLS to a server whose certificate chains to a trusted CA and names \
         the host. Warning: mail to servers that cannot meet this stays queued and bounces when \
         its queue lifetime ends.",
    ),
];

const MIN_VERSIONS: &[(&str, &str)] = &[("1.2", "TLS 1.2"), ("1.3", "TLS 1.3")];

/// The form's values, as text (what was submitted, or the settings).
#[derive(Debug, Clone, Default)]
struct TlsForm {
    inbound_mode: String,
    certificate: String,
    /// `None` when the submitted form lacks the field: keep the setting.
    ecdsa_certificate: Option<String>,
    client_certificate: String,
    trusted_client_ca: Vec<String>,
    min_version: String,
    /// "on" / "off"; `None` as above.
    session_tickets: Option<String>,
    outbound_mode: String,
    trusted_ca: Vec<String>,
    outbound_client_certificate: String,
}

fn on_off(value: bool) -> &'static str {
    if value {
        "on"
    } else {
        "off"
    }
}

fn text_of(value: impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

impl TlsForm {
    fn from_settings(s: &Settings) -> Self {
        Self {
            inbound_mode: text_of(s.tls.inbound.mode),
            certificate: s.tls.inbound.certificate.clone(),
            ecdsa_certificate: Some(s.tls.inbound.ecdsa_certificate.clone()),
            client_certificate: text_of(s.tls.inbound.client_certificate),
            trusted_client_ca: s.tls.inbound.trusted_client_ca.clone(),
            min_version: text_of(s.tls.inbound.min_version),
            session_tickets: Some(on_off(s.tls.inbound.session_tickets).to_string()),
            outbound_mode: text_of(s.tls.outbound.mode),
            trusted_ca: s.tls.outbound.trusted_ca.clone(),
            outbound_client_certificate: s.tls.outbound.client_certificate.clone(),
        }
    }

    fn from_form(form: &CsrfForm) -> Self {
        Self {
            inbound_mode: form.get("tls.inbound.mode"),
            certificate: form.get("tls.inbound.certificate"),
            ecdsa_certificate: form
                .has("tls.inbound.ecdsa_certificate")
                .then(|| form.get("tls.inbound.ecdsa_certificate")),
            client_certificate: form.get("tls.inbound.client_certificate"),
            trusted_client_ca: form.all("tls.inbound.trusted_client_ca"),
            min_version: form.get("tls.inbound.min_version"),
            session_tickets: form
                .has("tls.inbound.session_tickets")
                .then(|| form.get("tls.inbound.session_tickets")),
            outbound_mode: form.get("tls.outbound.mode"),
            trusted_ca: form.all("tls.outbound.trusted_ca"),
            outbound_client_certificate: form.get("tls.outbound.client_certificate"),
        }
    }

    /// `current` with this form's TLS values; the error names the key.
    fn apply(&self, current: &Settings) -> Result<Settings, ConfigError> {
        let mut root = serde_json::to_value(current)
            .map_err(|e| ConfigError::new("settings", e.to_string()))?;
        let mut set = |path: &[&str], value: Value| {
            let mut slot = &mut root;
            for part in path {
                slot = &mut slot[*part];
            }
            *slot = value;
        };
        let list = |items: &[String]| Value::from(items.to_vec());
        set(
            &["tls", "inbound", "mode"],
            self.inbound_mode.clone().into(),
        );
        set(
            &["tls", "inbound", "certificate"],
            self.certificate.clone().into(),
        );
        if let Some(ecdsa) = &self.ecdsa_certificate {
            set(
                &["tls", "inbound", "ecdsa_certificate"],
                ecdsa.clone().into(),
            );
        }
        set(
            &["tls", "inbound", "client_certificate"],
            self.client_certificate.clone().into(),
        );
        if let Some(tickets) = &self.session_tickets {
            let on = match tickets.as_str() {
                "on" => true,
                "off" => false,
                other => {
                    return Err(ConfigError::new(
                        "tls.inbound.session_tickets",
                        format!("\"{other}\" is not on or off"),
                    ))
                }
            };
            set(&["tls", "inbound", "session_tickets"], on.into());
        }
        set(
            &["tls", "inbound", "trusted_client_ca"],
            list(&self.trusted_client_ca),
        );
        set(
            &["tls", "inbound", "min_version"],
            self.min_version.clone().into(),
        );
        set(
            &["tls", "outbound", "mode"],
            self.outbound_mode.clone().into(),
        );
        set(&["tls", "outbound", "trusted_ca"], list(&self.trusted_ca));
        set(
            &["tls", "outbound", "client_certificate"],
            self.outbound_client_certificate.clone().into(),
        );
        let settings: Settings = serde_path_to_error::deserialize(root)
            .map_err(|e| ConfigError::new(e.path().to_string(), e.inner().to_string()))?;
        settings.validate()?;
        Ok(settings)
    }
}

fn choice_select(
    key: &str,
    label: &str,
    choices: &[(&str, &str, &str)],
    selected: &str,
    errors: &FieldErrors,
) -> Markup {
    html! {
        div.field {
            label for=(key) { (label) }
            select id=(key) name=(key) {
                @for (value, text, _) in choices {
                    option value=(value) selected[*value == selected] { (text) }
                }
            }
            (field_error(errors, key))
            dl.choices {
                @for (_, text, help) in choices {
                    dt { (text) }
                    dd { (help) }
                }
            }
        }
    }
}

fn cert_select(
    key: &str,
    label: &str,
    certs: &[CertificateRecord],
    selected: &str,
    none_label: Option<&str>,
    help: &str,
    errors: &FieldErrors,
) -> Markup {
    let known = certs.iter().any(|c| c.name == selected);
    html! {
        div.field {
            label for=(key) { (label) }
            select id=(key) name=(key) {
                @if let Some(none) = none_label {
                    option value="" selected[selected.is_empty()] { (none) }
                }
                @if !known && !selected.is_empty() {
                    option value=(selected) selected { (selected) " (missing)" }
                }
                @for cert in certs.iter().filter(|c| c.has_private_key()) {
                    option value=(cert.name) selected[cert.name == selected] { (cert.name) }
                }
            }
            (field_error(errors, key))
            p.help { (help) " Entries with a private key from the " a href="/certificates" { "certificate table" } "." }
        }
    }
}

fn ca_checkboxes(
    key: &str,
    legend: &str,
    certs: &[CertificateRecord],
    chosen: &[String],
    with_system: bool,
    help: &str,
    errors: &FieldErrors,
) -> Markup {
    html! {
        fieldset.field id=(key) {
            legend { (legend) }
            @if with_system {
                label.check {
                    input type="checkbox" name=(key) value="system" checked[chosen.iter().any(|c| c == "system")];
                    " Public web PKI roots (system)"
                }
            }
            @for cert in certs {
                label.check {
                    input type="checkbox" name=(key) value=(cert.name) checked[chosen.contains(&cert.name)];
                    " " (cert.name)
                    @if !cert.has_private_key() { span.tag { "CA" } }
                }
            }
            @for missing in chosen.iter().filter(|c| c.as_str() != "system" && !certs.iter().any(|x| &x.name == *c)) {
                label.check {
                    input type="checkbox" name=(key) value=(missing) checked;
                    " " (missing) " (missing)"
                }
            }
            (field_error(errors, key))
            p.help { (help) }
        }
    }
}

const FIELDS: &[&str] = &[
    "tls.inbound.mode",
    "tls.inbound.certificate",
    "tls.inbound.ecdsa_certificate",
    "tls.inbound.client_certificate",
    "tls.inbound.trusted_client_ca",
    "tls.inbound.min_version",
    "tls.inbound.session_tickets",
    "tls.outbound.mode",
    "tls.outbound.trusted_ca",
    "tls.outbound.client_certificate",
];

fn form_markup(
    principal: &Principal,
    form: &TlsForm,
    certs: &[CertificateRecord],
    errors: &FieldErrors,
    ok: Option<&str>,
) -> Markup {
    html! {
        p.crumbs { "Settings → Integrated MTA" }
        h1 { "TLS encryption" }
        (notice(ok))
        (error_banner(errors.general(FIELDS)))
        @if !errors.is_empty() && errors.general(FIELDS).is_none() {
            p.error role="alert" { "Not saved: see the message next to the field." }
        }
        form.settings method="post" action="/settings/tls" {
            (csrf_field(principal))
            section {
                h2 { "Server (inbound: mail from other servers and clients)" }
                (choice_select("tls.inbound.mode", "Server TLS security mode", INBOUND_MODES, &form.inbound_mode, errors))
                (cert_select("tls.inbound.certificate", "Certificate presented", certs, &form.certificate, None,
                    "The certificate the gateway shows to clients (and on this admin page, unless postern.toml names another).", errors))
                (cert_select("tls.inbound.ecdsa_certificate", "ECDSA certificate beside it", certs,
                    form.ecdsa_certificate.as_deref().unwrap_or(""), Some("Automatic (Default Cert ECDSA beside the Default Cert)"),
                    "Shown instead to clients that support ECDSA: a much cheaper handshake. Clients offering only RSA get the certificate above. Automatic: the generated Default Cert ECDSA when the Default Cert is presented (delete it to present RSA only), nothing beside your own certificate.", errors))
                (choice_select("tls.inbound.client_certificate", "Client certificate", CLIENT_CERT_MODES, &form.client_certificate, errors))
                (ca_checkboxes("tls.inbound.trusted_client_ca", "Trusted client CAs", certs, &form.trusted_client_ca, false,
                    "Client certificates must chain to one of these to count as verified.", errors))
                div.field {
                    label for="tls.inbound.min_version" { "Minimum TLS version" }
                    select id="tls.inbound.min_version" name="tls.inbound.min_version" {
                        @for (value, text) in MIN_VERSIONS {
                            option value=(value) selected[*value == form.min_version] { (text) }
                        }
                    }
                    (field_error(errors, "tls.inbound.min_version"))
                }
                div.field {
                    label for="tls.inbound.session_tickets" { "TLS session tickets" }
                    select id="tls.inbound.session_tickets" name="tls.inbound.session_tickets" {
                        @for (value, text) in [("on", "Issue tickets (fast resumption)"), ("off", "No tickets (for peers that break on them)")] {
                            option value=(value) selected[Some(value) == form.session_tickets.as_deref()] { (text) }
                        }
                    }
                    (field_error(errors, "tls.inbound.session_tickets"))
                }
            }
            section {
                h2 { "Client (outbound: delivery to other servers)" }
                (choice_select("tls.outbound.mode", "Client TLS security mode", OUTBOUND_MODES, &form.outbound_mode, errors))
                (ca_checkboxes("tls.outbound.trusted_ca", "Trusted CAs", certs, &form.trusted_ca, true,
                    "\"Require TLS and verify certificate\" accepts server certificates that chain to one of these.", errors))
                (cert_select("tls.outbound.client_certificate", "Client certificate (outbound)", certs, &form.outbound_client_certificate, Some("None"),
                    "Shown to servers that ask for one.", errors))
            }
            p.help {
                "Per-domain TLS modes (" a href="/settings/domains" { "Domains" } ") override the client mode. "
                "Strict TLS modes raise the load on the gateway and lower its throughput."
            }
            button type="submit" { "Save" }
        }
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct Done {
    ok: Option<String>,
}

impl Done {
    /// The notice code after a redirect (`?ok=saved`).
    pub fn ok(&self) -> Option<&str> {
        self.ok.as_deref()
    }
}

pub async fn page(
    State(state): State<Shared>,
    Extension(principal): Extension<Principal>,
    Query(done): Query<Done>,
) -> Response {
    let store = state.store.clone();
    let loaded = blocking(move || {
        let settings = store.settings().map_err(ApiError::from_store)?;
        let certs = store.certificates().map_err(ApiError::from_store)?;
        Ok((settings, certs))
    })
    .await;
    let (settings, certs) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => return failure(&principal, &e),
    };
    let form = TlsForm::from_settings(&settings);
    render(
        StatusCode::OK,
        layout(
            "TLS encryption",
            Section::Tls,
            &principal,
            form_markup(
                &principal,
                &form,
                &certs,
                &FieldErrors::default(),
                done.ok.as_deref(),
            ),
        ),
    )
}

pub async fn save(State(state): State<Shared>, form: CsrfForm) -> Response {
    let principal = form.principal.clone();
    let submitted = TlsForm::from_form(&form);
    let store = state.store.clone();
    let values = submitted.clone();
    let result = blocking(move || {
        let saved = store.update_settings(&mut |current| Ok(values.apply(current)?));
        let certs = store.certificates().map_err(ApiError::from_store)?;
        Ok((saved, certs))
    })
    .await;
    match result {
        Ok((Ok(_), _)) => {
            tracing::info!("TLS settings changed through the admin UI");
            see_other("/settings/tls?ok=saved")
        }
        Ok((Err(error), certs)) => {
            let api = match error {
                StoreError::Invalid(e) => ApiError::invalid(e.key.clone(), e.message),
                other => ApiError::from_store(other),
            };
            let errors = FieldErrors::from_api(&api);
            let status = api.status;
            render(
                status,
                layout(
                    "TLS encryption",
                    Section::Tls,
                    &principal,
                    form_markup(&principal, &submitted, &certs, &errors, None),
                ),
            )
        }
        Err(e) => failure(&principal, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form() -> TlsForm {
        TlsForm::from_settings(&Settings::default())
    }

    #[test]
    fn defaults_round_trip_through_the_form() {
        let s = Settings::default();
        assert_eq!(form().apply(&s).expect("valid"), s);
    }

    #[test]
    fn changes_apply_together() {
        let mut f = form();
        f.inbound_mode = "require".into();
        f.client_certificate = "require".into();
        f.trusted_client_ca = vec!["Partner CA".into()];
        f.outbound_mode = "verify".into();
        let s = f.apply(&Settings::default()).expect("valid");
        assert_eq!(s.tls.inbound.mode, postern_config::InboundMode::Require);
        assert_eq!(s.tls.outbound.mode, postern_config::OutboundMode::Verify);
    }

    #[test]
    fn errors_name_the_field() {
        let mut f = form();
        f.inbound_mode = "always".into();
        assert_eq!(
            f.apply(&Settings::default()).unwrap_err().key,
            "tls.inbound.mode"
        );
        let mut f = form();
        f.client_certificate = "require".into();
        f.trusted_client_ca = vec!["Partner CA".into()];
        assert_eq!(
            f.apply(&Settings::default()).unwrap_err().key,
            "tls.inbound.client_certificate"
        );
        let mut f = form();
        f.certificate = String::new();
        assert_eq!(
            f.apply(&Settings::default()).unwrap_err().key,
            "tls.inbound.certificate"
        );
    }

    #[test]
    fn every_mode_has_a_label_and_help() {
        for (choices, n) in [
            (INBOUND_MODES, 3),
            (CLIENT_CERT_MODES, 3),
            (OUTBOUND_MODES, 4),
        ] {
            assert_eq!(choices.len(), n);
            for (value, label, help) in choices {
                assert!(!value.is_empty() && !label.is_empty() && !help.is_empty());
            }
        }
        // The values are the settings' own names.
        for (value, _, _) in OUTBOUND_MODES {
            let mut f = form();
            f.outbound_mode = (*value).to_string();
            assert!(f.apply(&Settings::default()).is_ok(), "{value}");
        }
    }
}
