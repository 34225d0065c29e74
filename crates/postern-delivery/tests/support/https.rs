//! A real HTTPS server on 127.0.0.1 (tokio-rustls with Postern's inbound
//! configuration) that answers every request with one raw HTTP response,
//! counts requests, and can be changed or stopped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use postern_tls::ServerTls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct HttpsServer {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    response: Arc<Mutex<String>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// `200 OK` with this media type and body.
pub fn ok(content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

impl HttpsServer {
    pub async fn start(tls: Arc<ServerTls>, response: String) -> HttpsServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
        let requests = Arc::new(AtomicUsize::new(0));
        let response = Arc::new(Mutex::new(response));
        let (count, text) = (requests.clone(), response.clone());
        let task = tokio::spawn(async move {
            for _ in 0..64 {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let (count, text) = (count.clone(), text.clone());
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
                    count.fetch_add(1, Ordering::SeqCst);
                    let reply = text.lock().expect("response").clone();
                    let _ = stream.write_all(reply.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        HttpsServer {
            addr,
            requests,
            response,
            task: Mutex::new(Some(task)),
        }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn respond(&self, response: String) {
        *self.response.lock().expect("response") = response;
    }

    /// Stop listening: further connections are refused.
    pub async fn stop(&self) {
        let task = self.task.lock().expect("task").take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}
