//! One HTTPS request (GET, or a POST) with the limits a mail gateway needs when it
//! talks to servers it does not control: the certificate verified for the URL's
//! host against `tls.outbound.trusted_ca` (the rustls configuration from
//! [`ClientTls::https_config`], the one aws-lc-rs provider), the host's
//! addresses from our own resolver, no redirects followed, no proxy,
//! bounded connect and total time, and a body size cap. MTA-STS policy
//! fetches use it ([`get`]), and alert webhooks ([`post`]); so will TLS-RPT
//! https reports.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::tls_client::ClientTls;

/// Limits of one fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub connect_timeout: Duration,
    /// The whole request, from connecting to the last byte of the body.
    pub total_timeout: Duration,
    /// A longer body is refused, not truncated.
    pub max_body: usize,
}

/// A response with status, media type and the whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The `Content-Type` header as sent, if any.
    pub content_type: Option<String>,
    /// The `Location` header, for a redirect that was not followed.
    pub location: Option<String>,
    pub body: Vec<u8>,
}

impl Response {
    /// The media type without parameters, lower-cased (`text/plain`).
    pub fn media_type(&self) -> Option<String> {
        self.content_type.as_deref().map(|value| {
            value
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
    }
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The server's certificate did not verify for the host (or the TLS
    /// handshake failed otherwise).
    Certificate(String),
    /// Connecting, timing out, a broken response, the size cap.
    Transport(String),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Certificate(detail) => write!(f, "certificate not valid: {detail}"),
            FetchError::Transport(detail) => f.write_str(detail),
        }
    }
}

/// GET `url` (an `https://` URL whose host is `host`), connecting only to
/// `addrs` (resolved by the caller through the delivery resolver; their
/// ports are ignored, the URL's is used).
pub async fn get(
    tls: &ClientTls,
    url: &str,
    host: &str,
    addrs: &[SocketAddr],
    limits: Limits,
) -> Result<Response, FetchError> {
    let client = client(tls, host, addrs, limits)?;
    let response = client.get(url).send().await.map_err(|e| describe(&e))?;
    read(response, limits).await
}

/// POST `body` as `content_type` to `url`, with the same limits and
/// checks as [`get`] (alert webhooks; TLS-RPT https reports).
pub async fn post(
    tls: &ClientTls,
    url: &str,
    host: &str,
    addrs: &[SocketAddr],
    limits: Limits,
    content_type: &str,
    body: Vec<u8>,
) -> Result<Response, FetchError> {
    let client = client(tls, host, addrs, limits)?;
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    read(response, limits).await
}

fn client(
    tls: &ClientTls,
    host: &str,
    addrs: &[SocketAddr],
    limits: Limits,
) -> Result<reqwest::Client, FetchError> {
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls.https_config()).clone())
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(limits.connect_timeout)
        .timeout(limits.total_timeout)
        .resolve_to_addrs(host, addrs)
        .user_agent(concat!("Postern/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| FetchError::Transport(format!("cannot build the HTTPS client: {e}")))
}

/// Status, headers and the body (within the size cap) of `response`.
async fn read(mut response: reqwest::Response, limits: Limits) -> Result<Response, FetchError> {
    let header = |name: reqwest::header::HeaderName| {
        response
            .headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let content_type = header(reqwest::header::CONTENT_TYPE);
    let location = header(reqwest::header::LOCATION);
    let status = response.status().as_u16();
    if response
        .content_length()
        .is_some_and(|length| length > limits.max_body as u64)
    {
        return Err(too_large(limits.max_body));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
        if body.len() + chunk.len() > limits.max_body {
            return Err(too_large(limits.max_body));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Response {
        status,
        content_type,
        location,
        body,
    })
}

fn too_large(max: usize) -> FetchError {
    FetchError::Transport(format!("the response is larger than {} KiB", max / 1024))
}

/// reqwest's error with its causes, and whether a certificate was at fault.
fn describe(error: &reqwest::Error) -> FetchError {
    let mut text = if error.is_timeout() {
        "timed out".to_string()
    } else if error.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut certificate = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(tls) = rustls_error(cause) {
            certificate = Some(match tls {
                rustls::Error::InvalidCertificate(_) => {
                    crate::tls_client::certificate_problem(tls).detail
                }
                other => format!("TLS handshake failed: {other}"),
            });
        }
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    match certificate {
        Some(detail) => FetchError::Certificate(detail),
        None => FetchError::Transport(text),
    }
}

/// The rustls error behind `error`: it comes wrapped in an io::Error
/// (twice, by tokio-rustls and hyper-rustls), whose `source()` skips it.
fn rustls_error<'a>(mut error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    for _ in 0..4 {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = error.downcast_ref::<std::io::Error>()?.get_ref()?;
        error = inner;
    }
    None
}
