//! `/api/v1/certificates`: the certificate table. Generation, import
//! checks and descriptions are `postern-tls`'s; storage and the in-use
//! check are the store's. Private keys never leave the store through here.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use postern_store::{validate_certificate_name, CertificateRecord};
use postern_tls::KeyKind;
use serde::Deserialize;

use super::blocking;
use crate::error::{ApiError, ApiResult};
use crate::http::{parse_json, Body};
use crate::views::{self, CertificateView};
use crate::Shared;

/// The name of the certificate the admin listener serves.
pub fn admin_certificate(state: &Shared) -> Option<String> {
    state
        .options
        .certificate
        .clone()
        .or_else(|| state.tls.certificate_name())
}

/// Every entry, described.
pub fn views_of(state: &Shared) -> Result<Vec<CertificateView>, ApiError> {
    let settings = state.store.settings().map_err(ApiError::from_store)?;
    let admin = admin_certificate(state);
    Ok(state
        .store
        .certificates()
        .map_err(ApiError::from_store)?
        .iter()
        .map(|r| views::certificate_view(r, &settings, admin.as_deref()))
        .collect())
}

fn check_name(name: &str) -> Result<(), ApiError> {
    validate_certificate_name(name).map_err(|e| ApiError::invalid("name", e.to_string()))
}

/// Generate a self-signed entry. Blocking (RSA-4096 takes a while).
pub fn generate(
    state: &Shared,
    name: &str,
    key: &str,
    cn: &str,
    sans: &[String],
) -> Result<CertificateView, ApiError> {
    check_name(name)?;
    let kind: KeyKind = key
        .trim()
        .parse()
        .map_err(|e: postern_tls::TlsError| ApiError::invalid("key", e.to_string()))?;
    let cn = if cn.trim().is_empty() {
        state.options.hostname.as_str()
    } else {
        cn.trim()
    };
    let sans: Vec<String> = sans
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let generated = postern_tls::generate_self_signed(kind, cn, &sans).map_err(|e| match e {
        postern_tls::TlsError::InvalidName { ref detail, .. }
            if !sans.is_empty() && !detail.starts_with("the common name") =>
        {
            ApiError::invalid("sans", e.to_string())
        }
        other => ApiError::from_tls(other),
    })?;
    store_record(
        state,
        CertificateRecord {
            name: name.to_string(),
            chain_pem: generated.chain_pem,
            key_pem: Some(generated.key_pem),
            created_at: views::now(),
        },
    )
}

/// Import a PEM chain, with its key or as a CA. Blocking.
pub fn import(
    state: &Shared,
    name: &str,
    chain_pem: &str,
    key_pem: Option<&str>,
) -> Result<CertificateView, ApiError> {
    check_name(name)?;
    if chain_pem.trim().is_empty() {
        return Err(ApiError::invalid(
            "chain_pem",
            "a PEM certificate chain is required",
        ));
    }
    let key_pem = key_pem.filter(|k| !k.trim().is_empty());
    postern_tls::validate_entry(chain_pem, key_pem).map_err(ApiError::from_tls)?;
    store_record(
        state,
        CertificateRecord {
            name: name.to_string(),
            chain_pem: chain_pem.to_string(),
            key_pem: key_pem.map(str::to_string),
            created_at: views::now(),
        },
    )
}

fn store_record(state: &Shared, record: CertificateRecord) -> Result<CertificateView, ApiError> {
    state
        .store
        .add_certificate(&record)
        .map_err(ApiError::from_store)?;
    tracing::info!(
        "certificate \"{}\" added through the admin UI/API",
        record.name
    );
    let settings = state.store.settings().map_err(ApiError::from_store)?;
    Ok(views::certificate_view(
        &record,
        &settings,
        admin_certificate(state).as_deref(),
    ))
}

/// Delete, unless a setting (or the admin listener) uses it. Blocking.
pub fn remove(state: &Shared, name: &str) -> Result<(), ApiError> {
    if state.options.certificate.as_deref() == Some(name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "certificate \"{name}\" is in use by the admin listener ([admin] certificate in postern.toml)"
            ),
        )
        .field("admin.certificate"));
    }
    state
        .store
        .delete_certificate(name)
        .map_err(ApiError::from_store)?;
    tracing::info!("certificate \"{name}\" deleted through the admin UI/API");
    Ok(())
}

pub async fn list(State(state): State<Shared>) -> ApiResult<Json<Vec<CertificateView>>> {
    let views = blocking(move || views_of(&state)).await?;
    Ok(Json(views))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    name: String,
    #[serde(default)]
    generate: Option<GenerateSpec>,
    #[serde(default)]
    chain_pem: Option<String>,
    #[serde(default)]
    key_pem: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateSpec {
    #[serde(default = "default_key")]
    key: String,
    #[serde(default)]
    cn: String,
    #[serde(default)]
    sans: Vec<String>,
}

fn default_key() -> String {
    KeyKind::Rsa4096.as_str().to_string()
}

/// `POST`: `{"name", "generate": {"key", "cn", "sans"}}` makes a
/// self-signed entry; `{"name", "chain_pem", "key_pem"?}` imports one.
pub async fn create(State(state): State<Shared>, Body(body): Body) -> ApiResult<Response> {
    let request: CreateRequest = parse_json(&body)?;
    let view = blocking(move || match (request.generate, request.chain_pem) {
        (Some(spec), None) => {
            if request.key_pem.is_some() {
                return Err(ApiError::invalid(
                    "key_pem",
                    "a generated certificate makes its own key; leave key_pem out",
                ));
            }
            generate(&state, &request.name, &spec.key, &spec.cn, &spec.sans)
        }
        (None, Some(chain)) => import(&state, &request.name, &chain, request.key_pem.as_deref()),
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "generate",
            "give either generate (a new self-signed certificate) or chain_pem (an import), not both",
        )),
        (None, None) => Err(ApiError::invalid(
            "chain_pem",
            "give generate (a new self-signed certificate) or chain_pem (an import)",
        )),
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ShowQuery {
    /// `pem`: the chain as a PEM download instead of JSON.
    format: String,
}

/// One entry with its chain (never its key); `?format=pem` downloads the chain.
pub async fn show(
    State(state): State<Shared>,
    Path(name): Path<String>,
    Query(query): Query<ShowQuery>,
) -> ApiResult<Response> {
    check_name(&name).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        ..e
    })?;
    let wanted = name.clone();
    let (record, view) = blocking(move || {
        let record = state
            .store
            .certificate(&wanted)
            .map_err(ApiError::from_store)?
            .ok_or_else(|| ApiError::not_found(format!("no certificate named \"{wanted}\"")))?;
        let settings = state.store.settings().map_err(ApiError::from_store)?;
        let view =
            views::certificate_view(&record, &settings, admin_certificate(&state).as_deref());
        Ok((record, view))
    })
    .await?;
    match query.format.as_str() {
        "" | "json" => {
            let mut value = serde_json::to_value(&view).map_err(ApiError::internal)?;
            if let Some(object) = value.as_object_mut() {
                object.insert("chain_pem".into(), record.chain_pem.into());
            }
            Ok(Json(value).into_response())
        }
        "pem" => Ok(pem_download(&name, record.chain_pem)),
        other => Err(ApiError::bad_request(
            "format",
            format!("\"{other}\" is not a format; use json or pem"),
        )),
    }
}

/// The chain as a download with a safe file name.
pub fn pem_download(name: &str, chain_pem: String) -> Response {
    let disposition = format!("attachment; filename=\"{}\"", views::download_name(name));
    let mut response = (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        chain_pem,
    )
        .into_response();
    if let Ok(value) = header::HeaderValue::from_str(&disposition) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

pub async fn delete(State(state): State<Shared>, Path(name): Path<String>) -> ApiResult<Response> {
    check_name(&name).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        ..e
    })?;
    blocking(move || remove(&state, &name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
