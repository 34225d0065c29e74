//! Certificates: the table, self-signed generation, PEM import by upload,
//! export, and deletion (refused while a setting uses the entry).

use axum::extract::{Multipart, Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};
use postern_tls::KeyKind;

use super::{
    csrf_field, error_banner, failure, field_error, layout, notice, render, see_other, segment,
    FieldErrors, Section,
};
use crate::api::blocking;
use crate::api::certificates::{self as certs, pem_download};
use crate::error::ApiError;
use crate::http::{csrf_ok, CsrfForm, Principal, MAX_BODY};
use crate::views::CertificateView;
use crate::Shared;

const KEY_LABELS: &[(KeyKind, &str)] = &[
    (KeyKind::Rsa4096, "RSA 4096 bits"),
    (KeyKind::Rsa3072, "RSA 3072 bits"),
    (KeyKind::Rsa2048, "RSA 2048 bits"),
    (KeyKind::EcdsaP256, "ECDSA P-256"),
    (KeyKind::EcdsaP384, "ECDSA P-384"),
];

/// What the forms had in them, to show again after an error.
#[derive(Default, Clone)]
struct Drafts {
    generate_name: String,
    key: String,
    cn: String,
    sans: String,
    import_name: String,
}

fn table(principal: &Principal, rows: &[CertificateView]) -> Markup {
    html! {
        table.list.certs #certificates {
            thead {
                tr {
                    th { "Name" } th { "Subject" } th { "SANs" } th { "Issuer" } th { "Key" }
                    th { "Signature" } th { "Valid" } th { "SHA-256 fingerprint" } th { "Used by" } th { "" }
                }
            }
            tbody {
                @for row in rows {
                    tr data-cert=(row.name) {
                        td.name {
                            strong { (row.name) }
                            @if !row.has_private_key { " " span.tag { "CA" } }
                        }
                        @if let Some(info) = &row.info {
                            td { (info.subject) }
                            td { (info.sans.join(", ")) }
                            td { (info.issuer) @if info.self_signed { " " span.tag { "self-signed" } } }
                            td { (info.key_type) @if info.key_bits > 0 && info.key_type.starts_with("RSA") { " " (info.key_bits) " bits" } }
                            td { (info.signature_algorithm) }
                            td.validity { (info.not_before) " – " br; (info.not_after) }
                            td.fingerprint { code { (info.sha256_fingerprint) } }
                        } @else {
                            td colspan="7" { span.error { "unreadable: " (row.error.as_deref().unwrap_or("?")) } }
                        }
                        td.used { @if row.used_by.is_empty() { "—" } @else { (row.used_by.join(", ")) } }
                        td.actions {
                            a.button href=(format!("/certificates/{}/export", segment(&row.name))) download { "Export" }
                            form.inline method="post" action=(format!("/certificates/{}/delete", segment(&row.name))) data-confirm=(format!("Delete the certificate {}?", row.name)) {
                                (csrf_field(principal))
                                button.danger type="submit" { "Delete" }
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
    rows: &[CertificateView],
    drafts: &Drafts,
    generate_errors: &FieldErrors,
    import_errors: &FieldErrors,
    banner: Option<&str>,
    ok: Option<&str>,
) -> Markup {
    let key = if drafts.key.is_empty() {
        "rsa4096"
    } else {
        drafts.key.as_str()
    };
    html! {
        h1 { "Certificates" }
        (notice(ok))
        (error_banner(banner))
        (table(principal, rows))
        div.columns {
            section {
                h2 { "Generate a self-signed certificate" }
                (error_banner(generate_errors.general(&["name", "key", "cn", "sans"])))
                form #generate method="post" action="/certificates/generate" {
                    (csrf_field(principal))
                    div.field {
                        label for="gen-name" { "Name" }
                        input #gen-name type="text" name="name" value=(drafts.generate_name) required maxlength="100";
                        (field_error(generate_errors, "name"))
                    }
                    div.field {
                        label for="gen-key" { "Key" }
                        select #gen-key name="key" {
                            @for (kind, label) in KEY_LABELS {
                                option value=(kind.as_str()) selected[kind.as_str() == key] { (label) }
                            }
                        }
                        (field_error(generate_errors, "key"))
                        p.help { "ECDSA keys make handshakes far cheaper; RSA 2048 or more for old clients." }
                    }
                    div.field {
                        label for="gen-cn" { "Common name (CN)" }
                        input #gen-cn type="text" name="cn" value=(drafts.cn) placeholder="empty: this gateway's host name";
                        (field_error(generate_errors, "cn"))
                    }
                    div.field {
                        label for="gen-sans" { "Subject alternative names" }
                        input #gen-sans type="text" name="sans" value=(drafts.sans) placeholder="comma-separated; empty: the CN";
                        (field_error(generate_errors, "sans"))
                    }
                    button type="submit" { "Generate" }
                }
            }
            section {
                h2 { "Import a certificate" }
                (error_banner(import_errors.general(&["name", "chain_pem", "key_pem"])))
                form #import method="post" action="/certificates/import" enctype="multipart/form-data" {
                    (csrf_field(principal))
                    div.field {
                        label for="imp-name" { "Name" }
                        input #imp-name type="text" name="name" value=(drafts.import_name) required maxlength="100";
                        (field_error(import_errors, "name"))
                    }
                    div.field {
                        label for="imp-chain" { "Certificate chain (PEM, server certificate first)" }
                        input #imp-chain type="file" name="chain" accept=".pem,.crt,.cer,text/plain" required;
                        (field_error(import_errors, "chain_pem"))
                    }
                    div.field {
                        label for="imp-key" { "Private key (PEM)" }
                        input #imp-key type="file" name="key" accept=".pem,.key,text/plain";
                        (field_error(import_errors, "key_pem"))
                        p.help { "Leave empty to import a CA certificate (a trust anchor for outbound verification or client certificates). At most " (MAX_BODY / 1024) " KiB in all." }
                    }
                    button type="submit" { "Import" }
                }
            }
        }
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct Done {
    ok: Option<String>,
}

async fn rows(state: &Shared) -> Result<Vec<CertificateView>, ApiError> {
    let state = state.clone();
    blocking(move || certs::views_of(&state)).await
}

#[allow(clippy::too_many_arguments)]
async fn show(
    state: &Shared,
    principal: &Principal,
    status: StatusCode,
    drafts: &Drafts,
    generate_errors: &FieldErrors,
    import_errors: &FieldErrors,
    banner: Option<&str>,
    ok: Option<&str>,
) -> Response {
    match rows(state).await {
        Ok(rows) => render(
            status,
            layout(
                "Certificates",
                Section::Certificates,
                principal,
                page_markup(
                    principal,
                    &rows,
                    drafts,
                    generate_errors,
                    import_errors,
                    banner,
                    ok,
                ),
            ),
        ),
        Err(e) => failure(principal, &e),
    }
}

pub async fn page(
    State(state): State<Shared>,
    Extension(principal): Extension<Principal>,
    Query(done): Query<Done>,
) -> Response {
    let none = FieldErrors::default();
    show(
        &state,
        &principal,
        StatusCode::OK,
        &Drafts::default(),
        &none,
        &none,
        None,
        done.ok.as_deref(),
    )
    .await
}

fn split_names(text: &str) -> Vec<String> {
    text.split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

pub async fn generate(State(state): State<Shared>, form: CsrfForm) -> Response {
    let principal = form.principal.clone();
    let drafts = Drafts {
        generate_name: form.get("name"),
        key: form.get("key"),
        cn: form.get("cn"),
        sans: form.get("sans"),
        ..Drafts::default()
    };
    let d = drafts.clone();
    let state2 = state.clone();
    let result = blocking(move || {
        certs::generate(
            &state2,
            &d.generate_name,
            &d.key,
            &d.cn,
            &split_names(&d.sans),
        )
    })
    .await;
    match result {
        Ok(_) => see_other("/certificates?ok=generated"),
        Err(e) => {
            show(
                &state,
                &principal,
                e.status,
                &drafts,
                &FieldErrors::from_api(&e),
                &FieldErrors::default(),
                None,
                None,
            )
            .await
        }
    }
}

/// Read the upload form; errors name the field.
async fn read_upload(
    multipart: &mut Multipart,
) -> Result<(String, String, String, Option<String>), ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the upload is larger than {} KiB", MAX_BODY / 1024),
        )
        .field("chain_pem")
    };
    let (mut csrf, mut name, mut chain, mut key) = (String::new(), String::new(), None, None);
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
            Err(e) => return Err(ApiError::bad_request("body", e.body_text())),
        };
        let field_name = field.name().unwrap_or_default().to_string();
        let bytes = match field.bytes().await {
            Ok(bytes) => bytes,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
            Err(e) => return Err(ApiError::bad_request(field_name, e.body_text())),
        };
        let text = |target: &str| {
            String::from_utf8(bytes.to_vec())
                .map_err(|_| ApiError::invalid(target, "the file is not PEM text"))
        };
        match field_name.as_str() {
            "csrf" => csrf = text("csrf")?,
            "name" => name = text("name")?,
            "chain" => chain = Some(text("chain_pem")?),
            "key" => key = Some(text("key_pem")?),
            _ => {}
        }
    }
    let chain = chain.unwrap_or_default();
    Ok((csrf, name, chain, key))
}

pub async fn import(
    State(state): State<Shared>,
    Extension(principal): Extension<Principal>,
    mut multipart: Multipart,
) -> Response {
    let result = read_upload(&mut multipart).await;
    let (name, outcome) = match result {
        Err(e) => (String::new(), Err(e)),
        Ok((csrf, name, chain, key)) => {
            if !csrf_ok(&principal, &csrf) {
                return render(
                    StatusCode::FORBIDDEN,
                    html! { p { "The form's security token is missing or stale; reload the page and try again." } },
                );
            }
            let state2 = state.clone();
            let n = name.clone();
            let outcome =
                blocking(move || certs::import(&state2, &n, &chain, key.as_deref())).await;
            (name, outcome)
        }
    };
    match outcome {
        Ok(_) => see_other("/certificates?ok=imported"),
        Err(e) => {
            let drafts = Drafts {
                import_name: name,
                ..Drafts::default()
            };
            show(
                &state,
                &principal,
                e.status,
                &drafts,
                &FieldErrors::default(),
                &FieldErrors::from_api(&e),
                None,
                None,
            )
            .await
        }
    }
}

pub async fn export(
    State(state): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Response {
    let store = state.store.clone();
    let wanted = name.clone();
    let record = blocking(move || {
        store
            .certificate(&wanted)
            .map_err(ApiError::from_store)?
            .ok_or_else(|| ApiError::not_found(format!("no certificate named \"{wanted}\"")))
    })
    .await;
    match record {
        Ok(record) => pem_download(&name, record.chain_pem),
        Err(e) => failure(&principal, &e),
    }
}

pub async fn delete(
    State(state): State<Shared>,
    Path(name): Path<String>,
    form: CsrfForm,
) -> Response {
    let principal = form.principal.clone();
    let state2 = state.clone();
    let wanted = name.clone();
    match blocking(move || certs::remove(&state2, &wanted)).await {
        Ok(()) => see_other("/certificates?ok=deleted"),
        Err(e) => {
            let none = FieldErrors::default();
            show(
                &state,
                &principal,
                e.status,
                &Drafts::default(),
                &none,
                &none,
                Some(&e.message),
                None,
            )
            .await
        }
    }
}
