//! Errors of the JSON API: a status and `{"error": TEXT, "field": KEY}`,
//! where `field` names the offending input (a settings key such as
//! `tls.inbound.mode`, or a request field such as `name`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use postern_store::StoreError;
use postern_tls::TlsError;
use serde_json::json;

use crate::queue::QueueError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Input that parses but is not acceptable.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message).field(field)
    }

    /// Input that does not parse.
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message).field(field)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication required: log in, or send Authorization: Bearer TOKEN",
        )
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        tracing::error!("admin API: {message}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the gateway's log",
        )
    }

    /// A store error, with the field it concerns. `cert_field` names the
    /// request field of a certificate name (`name`).
    pub fn from_store(error: StoreError) -> Self {
        match error {
            StoreError::Invalid(e) => Self::invalid(e.key.clone(), e.to_string()),
            StoreError::InUse { ref key, .. } => {
                Self::new(StatusCode::CONFLICT, error.to_string()).field(key.clone())
            }
            StoreError::NotFound(_) | StoreError::UnknownToken(_) => {
                Self::not_found(error.to_string())
            }
            StoreError::Duplicate(_) | StoreError::DuplicateToken(_) => {
                Self::new(StatusCode::CONFLICT, error.to_string()).field("name")
            }
            StoreError::BadName(_) => Self::invalid("name", error.to_string()),
            StoreError::BadCertificate(ref text) => {
                let field = if text.contains("the key") {
                    "key_pem"
                } else {
                    "chain_pem"
                };
                Self::invalid(field, error.to_string())
            }
            StoreError::Busy(_) => {
                let mut e = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the store is busy; try again",
                );
                e.retry_after = Some(1);
                e
            }
            // The cluster's PostgreSQL is down: the words SPEC §9 asks for;
            // the details (never a password) go to the log.
            StoreError::Unreachable(ref detail) => {
                tracing::warn!("admin API: {detail}");
                let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "cluster store unreachable");
                e.retry_after = Some(5);
                e
            }
            StoreError::UnsupportedSchema { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
            }
            other => Self::internal(other),
        }
    }

    /// A certificate or key that `postern-tls` refused.
    pub fn from_tls(error: TlsError) -> Self {
        Self::invalid(tls_error_field(&error), error.to_string())
    }

    pub fn from_queue(error: QueueError) -> Self {
        match error {
            QueueError::NotFound => Self::not_found("no such queued message"),
            QueueError::Failed(text) => Self::internal(text),
        }
    }
}

/// Which upload a certificate error is about.
pub fn tls_error_field(error: &TlsError) -> &'static str {
    match error {
        TlsError::NoPrivateKey
        | TlsError::EncryptedKey
        | TlsError::MultipleKeys
        | TlsError::UnsupportedKey(_)
        | TlsError::KeyMismatch => "key_pem",
        TlsError::MalformedPem { file, .. } if file.contains("key") => "key_pem",
        TlsError::UnknownKeyKind(_) => "key",
        TlsError::InvalidName { .. } => "cn",
        _ => "chain_pem",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match &self.field {
            Some(field) => json!({ "error": self.message, "field": field }),
            None => json!({ "error": self.message }),
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"postern\""),
            );
        }
        if let Some(seconds) = self.retry_after {
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
