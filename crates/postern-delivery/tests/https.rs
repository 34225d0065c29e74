//! The bounded HTTPS client against a real TLS server on loopback
//! (tokio-rustls with Postern's own inbound configuration).

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use postern_delivery::https::{get, FetchError, Limits};
use support::{client_tls, server_tls, TestCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const HOST: &str = "mta-sts.partner.test";

const LIMITS: Limits = Limits {
    connect_timeout: Duration::from_secs(5),
    total_timeout: Duration::from_secs(10),
    max_body: 1024,
};

/// An HTTPS server answering every request with `response` (raw HTTP).
async fn serve(tls: Arc<postern_tls::ServerTls>, response: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let response = response.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16384 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

fn ok(content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn fetch_from(
    server: Arc<postern_tls::ServerTls>,
    ca: &TestCa,
    response: String,
) -> Result<postern_delivery::https::Response, FetchError> {
    let addr = serve(server, response).await;
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
