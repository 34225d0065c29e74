//! The HTTPS accept loop: tokio-rustls for TLS (the configuration is
//! looked up per connection, so a new certificate applies to the next
//! connection), hyper's HTTP/1.1 server for the requests, axum's router for
//! the answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::tls::AdminTls;

/// Admin connections open at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// Time for the TLS handshake and for each request's headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(listener: TcpListener, app: Router, tls: Arc<AdminTls>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("admin accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(config) = tls.config() else {
            tracing::warn!("admin connection from {peer} closed: no certificate loaded");
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            connection(tcp, peer, config, app).await;
            drop(permit);
        });
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    config: Arc<rustls::ServerConfig>,
    app: Router,
) {
    let _ = tcp.set_nodelay(true);
    let acceptor = TlsAcceptor::from(config);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!("admin TLS handshake with {peer} failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!("admin TLS handshake with {peer} timed out");
            return;
        }
    };
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .max_buf_size(64 * 1024);
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!("admin connection with {peer}: {e}");
    }
}
