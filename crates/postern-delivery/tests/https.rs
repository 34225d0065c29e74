//! The bounded HTTPS client against a real TLS server on loopback
//! (tokio-rustls with Postern's own inbound configuration).

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use postern_delivery::https::{get, FetchError, Limits};
use support::https::{ok, HttpsServer};
use support::{client_tls, server_tls, TestCa};

const HOST: &str = "mta-sts.partner.test";

const LIMITS: Limits = Limits {
    connect_timeout: Duration::from_secs(5),
    total_timeout: Duration::from_secs(10),
    max_body: 1024,
};

async fn fetch_from(
    server: Arc<postern_tls::ServerTls>,
    ca: &TestCa,
    response: String,
) -> Result<postern_delivery::https::Response, FetchError> {
    let server = HttpsServer::start(server, response).await;
    let addr = server.addr;
    let url = format!("https://{HOST}:{}/.well-known/mta-sts.txt", addr.port());
    get(&client_tls(&[&ca.pem]), &url, HOST, &[addr], LIMITS).await
}

#[tokio::test]
async fn fetches_from_a_verified_host() {
    let ca = TestCa::new("Test CA");
    let (chain, key) = ca.issue(&[HOST]);
    let response = fetch_from(
        server_tls(&chain, &key),
        &ca,
        ok("text/plain; charset=utf-8", "version: STSv1\r\n"),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.media_type().as_deref(), Some("text/plain"));
    assert_eq!(response.body, b"version: STSv1\r\n");
}

#[tokio::test]
async fn untrusted_or_misnamed_certificates_are_certificate_errors() {
    let ca = TestCa::new("Test CA");
    let other = TestCa::new("Other CA");
    let (chain, key) = other.issue(&[HOST]);
    let error = fetch_from(server_tls(&chain, &key), &ca, ok("text/plain", "x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, FetchError::Certificate(d) if d.contains("trusted CA")),
        "{error:?}"
    );

    let (chain, key) = ca.issue(&["mta-sts.other.test"]);
    let error = fetch_from(server_tls(&chain, &key), &ca, ok("text/plain", "x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, FetchError::Certificate(d) if d.contains("mta-sts.other.test")),
        "{error:?}"
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let ca = TestCa::new("Test CA");
    let (chain, key) = ca.issue(&[HOST]);
    let response = fetch_from(
        server_tls(&chain, &key),
        &ca,
        "HTTP/1.1 301 Moved\r\nLocation: https://elsewhere.test/p\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 301);
    assert_eq!(
        response.location.as_deref(),
        Some("https://elsewhere.test/p")
    );
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused() {
    let ca = TestCa::new("Test CA");
    let (chain, key) = ca.issue(&[HOST]);
    let big = "x".repeat(LIMITS.max_body + 1);
    // Announced by Content-Length, and streamed without one.
    let error = fetch_from(server_tls(&chain, &key), &ca, ok("text/plain", &big))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, FetchError::Transport(d) if d.contains("larger than 1 KiB")),
        "{error:?}"
    );
    let chunked =
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{big}");
    let error = fetch_from(server_tls(&chain, &key), &ca, chunked)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, FetchError::Transport(d) if d.contains("larger than 1 KiB")),
        "{error:?}"
    );
}
