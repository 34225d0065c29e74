//! Test support: a real SMTP receiver on 127.0.0.1 — the inbound
//! `postern-session` state machine driven over tokio and tokio-rustls, the
//! way the gateway's listener drives it — with switches for the variants
//! the delivery tests need: no TLS, STARTTLS with a given certificate, a
//! broken TLS layer (220 to STARTTLS, then garbage), bytes injected after
//! the 220, and EHLO capabilities hidden from the client.
//!
//! Also certificate helpers (a test CA with rcgen, self-signed entries from
//! `postern-tls`).

#![allow(dead_code)]

pub mod dns;
pub mod https;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_config::{DomainEntry, InboundMode, Settings};
use postern_delivery::{ClientTls, Timeouts, TrustSources};
use postern_proto::Reply;
use postern_session::{Action, ClientCert, Delivery, Session, SessionConfig, TlsInfo};
use postern_tls::{generate_self_signed, ClientCertStatus, InboundTlsParams, KeyKind, ServerTls};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::HandshakeKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

pub const MX_NAME: &str = "mx.partner.test";

/// Short timeouts: every test finishes in seconds, even when it fails.
pub fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(5),
        greeting: Duration::from_secs(5),
        command: Duration::from_secs(5),
        data_end: Duration::from_secs(10),
    }
}

/// Run a test body with an overall deadline.
pub async fn bounded<F: Future>(body: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), body)
        .await
        .expect("test took longer than 60 s")
}

/// What the receiver does when the client says STARTTLS.
#[derive(Clone)]
pub enum TlsLayer {
    /// STARTTLS is not advertised.
    Off,
    /// A real handshake with this configuration.
    Real(Arc<ServerTls>),
    /// `220`, then garbage in answer to the ClientHello.
    Broken,
    /// `220` and another reply in the same write (command injection).
    Inject,
}

#[derive(Clone)]
pub struct ServerOptions {
    pub tls: TlsLayer,
    /// EHLO keywords to hide from the client (`PIPELINING`, `SMTPUTF8`).
    pub hide: Vec<&'static str>,
    /// When not empty: only these domains are accepted (relay = true) and
    /// the client is not trusted, so other recipients get `554 5.7.1`.
    pub relay_domains: Vec<&'static str>,
    pub max_message_size: u64,
}

impl ServerOptions {
    pub fn new(tls: TlsLayer) -> Self {
        Self {
            tls,
            hide: Vec::new(),
            relay_domains: Vec::new(),
            max_message_size: 10 * 1024 * 1024,
        }
    }
}

/// A message the receiver accepted: the envelope and the bytes.
#[derive(Clone, Debug)]
pub struct Stored {
    pub delivery: Delivery,
    pub message: Vec<u8>,
}

impl std::ops::Deref for Stored {
    type Target = Delivery;
    fn deref(&self) -> &Delivery {
        &self.delivery
    }
}

/// What the receiver saw.
#[derive(Default)]
pub struct Seen {
    pub connections: AtomicUsize,
    pub deliveries: Mutex<Vec<Stored>>,
    /// Every chunk read from a client, in order (plaintext and TLS).
    pub reads: Mutex<Vec<Vec<u8>>>,
    pub tls_sessions: Mutex<Vec<(TlsInfo, HandshakeKind)>>,
}

impl Seen {
    pub fn deliveries(&self) -> Vec<Stored> {
        self.deliveries.lock().expect("lock").clone()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn reads(&self) -> Vec<String> {
        self.reads
            .lock()
            .expect("lock")
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }

    pub fn tls_infos(&self) -> Vec<TlsInfo> {
        self.tls_sessions
            .lock()
            .expect("lock")
            .iter()
            .map(|(i, _)| i.clone())
            .collect()
    }

    pub fn handshakes(&self) -> Vec<HandshakeKind> {
        self.tls_sessions
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, k)| *k)
            .collect()
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub async fn start(options: ServerOptions) -> TestServer {
        Self::start_on("127.0.0.1:0", options).await
    }

    pub async fn start_on(bind: &str, options: ServerOptions) -> TestServer {
        let listener = TcpListener::bind(bind).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Seen::default());
        let options = Arc::new(options);
        let task_seen = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                let seen = task_seen.clone();
                let options = options.clone();
                tokio::spawn(async move { serve(seen, options, tcp, peer).await });
            }
        });
        TestServer { addr, seen, task }
    }
}

fn session_config(options: &ServerOptions) -> SessionConfig {
    let mut settings = Settings::default();
    settings.mta.max_message_size = options.max_message_size;
    settings.tls.inbound.mode = match options.tls {
        TlsLayer::Off => InboundMode::None,
        _ => InboundMode::Offer,
    };
    settings.domains = options
        .relay_domains
        .iter()
        .map(|name| DomainEntry {
            name: name.to_string(),
            relay: true,
            next_hop: None,
            tls: None,
            mta_sts: true,
            dane: true,
            monitor: false,
        })
        .collect();
    let trusted = if options.relay_domains.is_empty() {
        vec![
            "127.0.0.0/8".parse().expect("net"),
            "::1/128".parse().expect("net"),
        ]
    } else {
        Vec::new()
    };
    SessionConfig {
        hostname: MX_NAME.into(),
        settings: Arc::new(settings),
        trusted_networks: Arc::new(trusted),
        tls_available: !matches!(options.tls, TlsLayer::Off),
    }
}

enum End {
    Closed,
    StartTls,
}

async fn serve(seen: Arc<Seen>, options: Arc<ServerOptions>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    seen.connections.fetch_add(1, Ordering::SeqCst);
    let mut session = Session::new(session_config(&options), peer, None);
    let mut tcp = tcp;
    let greeting = session.greeting().to_bytes();
    if tcp.write_all(&greeting).await.is_err() {
        return;
    }
    let End::StartTls = drive(&seen, &options, &mut tcp, &mut session).await else {
        return;
    };
    match &options.tls {
        TlsLayer::Real(server_tls) => {
            let acceptor = TlsAcceptor::from(server_tls.config.clone());
            let Ok(Ok(mut stream)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let (_, connection) = stream.get_ref();
            let Some(negotiated) = postern_tls::negotiated(connection) else {
                return;
            };
            let kind = connection.handshake_kind().unwrap_or(HandshakeKind::Full);
            let client_cert =
                match server_tls.client_certificate_status(connection.peer_certificates()) {
                    ClientCertStatus::NotPresented => None,
                    ClientCertStatus::Verified { subject } => Some(ClientCert {
                        subject,
                        verified: true,
                    }),
                    ClientCertStatus::Unverified { subject, .. } => Some(ClientCert {
                        subject,
                        verified: false,
                    }),
                };
            let info = TlsInfo {
                version: negotiated.version,
                cipher: negotiated.cipher,
                client_cert,
            };
            seen.tls_sessions
                .lock()
                .expect("lock")
                .push((info.clone(), kind));
            session.tls_established(info);
            drive(&seen, &options, &mut stream, &mut session).await;
        }
        TlsLayer::Broken => {
            // Take the ClientHello, answer with garbage. (Garbage sent
            // before the ClientHello would arrive with the 220 and is the
            // injection case, a protocol error.)
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut sink)).await;
            let _ = tcp
                .write_all(b"this is not a TLS handshake\r\n\x00\x01\x02\x03garbage garbage\r\n")
                .await;
            let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut sink)).await;
        }
        TlsLayer::Off | TlsLayer::Inject => {}
    }
}

/// Drive the session until it closes or asks for TLS (as the gateway does).
async fn drive<S>(
    seen: &Seen,
    options: &ServerOptions,
    stream: &mut S,
    session: &mut Session,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut open: Option<Stored> = None;
    loop {
        match session.poll() {
            Action::Reply(reply) => hide_capabilities(reply, &options.hide).write_to(&mut out),
            Action::Log(_) => {}
            Action::BeginMessage(delivery) => {
                open = Some(Stored {
                    delivery: *delivery,
                    message: Vec::new(),
                })
            }
            Action::MessageData(bytes) => {
                if let Some(open) = &mut open {
                    open.message.extend_from_slice(&bytes);
                }
            }
            Action::DiscardMessage => open = None,
            Action::Enqueue(last) => {
                let Some(mut stored) = open.take() else {
                    session.enqueued(Err("no message".into()));
                    continue;
                };
                stored.message.extend_from_slice(&last);
                let id = {
                    let mut deliveries = seen.deliveries.lock().expect("lock");
                    deliveries.push(stored);
                    format!("TEST{}", deliveries.len())
                };
                session.enqueued(Ok(id));
            }
            Action::StartTls => {
                if matches!(options.tls, TlsLayer::Inject) {
                    out.extend_from_slice(b"250 2.0.0 injected\r\n");
                }
                let _ = stream.write_all(&out).await;
                return End::StartTls;
            }
            Action::Close => {
                let _ = stream.write_all(&out).await;
                let _ = stream.shutdown().await;
                return End::Closed;
            }
            Action::NeedInput => {
                if !out.is_empty() {
                    if stream.write_all(&out).await.is_err() {
                        return End::Closed;
                    }
                    let _ = stream.flush().await;
                    out.clear();
                }
                let read =
                    tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await;
                match read {
                    Ok(Ok(n)) if n > 0 => {
                        let bytes = &buf[..n];
                        seen.reads.lock().expect("lock").push(bytes.to_vec());
                        session.receive(bytes);
                    }
                    _ => return End::Closed,
                }
            }
        }
    }
}

/// Drop hidden keywords from the EHLO reply.
fn hide_capabilities(reply: Reply, hide: &[&str]) -> Reply {
    if hide.is_empty() || reply.code != 250 || reply.lines.len() < 2 {
        return reply;
    }
    let mut lines = reply.lines.clone();
    let first = lines.remove(0);
    lines.retain(|line| {
        let keyword = line.split_whitespace().next().unwrap_or("");
        !hide.iter().any(|h| h.eq_ignore_ascii_case(keyword))
    });
    lines.insert(0, first);
    Reply { lines, ..reply }
}

/// A listener that accepts and then runs `script` on each connection.
pub async fn raw_server<F, Fut>(script: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(script(tcp));
        }
    });
    (addr, task)
}

/// A scripted SMTP server: `220` greeting, then `answer(line)` for every
/// command line (CRLF included); after a `354` the message is read up to
/// the final dot, which is answered with `answer(".\r\n")`. QUIT gets 221.
pub async fn scripted(
    answer: fn(&str) -> &'static [u8],
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    raw_server(move |tcp| async move {
        let (read, mut write) = tcp.into_split();
        let mut lines = tokio::io::BufReader::new(read);
        if write
            .write_all(b"220 scripted.partner.test ESMTP\r\n")
            .await
            .is_err()
        {
            return;
        }
        let mut line = String::new();
        let mut in_data = false;
        loop {
            line.clear();
            match tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if in_data && line != ".\r\n" {
                continue;
            }
            if line.starts_with("QUIT") {
                let _ = write.write_all(b"221 bye\r\n").await;
                return;
            }
            let reply = answer(&line);
            in_data = reply.starts_with(b"354");
            if write.write_all(reply).await.is_err() || reply.starts_with(b"421") {
                return;
            }
        }
    })
    .await
}

// --- certificates ---------------------------------------------------------

pub struct TestCa {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA cert");
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A client certificate (clientAuth) with this common name:
    /// (chain PEM, key PEM).
    pub fn issue_client(&self, cn: &str) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("issue");
        (cert.pem(), key.serialize_pem())
    }

    /// A server certificate for `names` (IP literals become IP SANs):
    /// (chain PEM, key PEM).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.issuer).expect("issue");
        (cert.pem(), key.serialize_pem())
    }
}

pub fn server_tls(chain_pem: &str, key_pem: &str) -> Arc<ServerTls> {
    Arc::new(
        ServerTls::build(&InboundTlsParams {
            chain_pem,
            key_pem,
            client_certificate: Default::default(),
            client_ca_pems: Vec::new(),
            min_version: Default::default(),
            session_tickets: true,
        })
        .expect("server tls"),
    )
}

/// STARTTLS with a self-signed ECDSA P-256 certificate for `mx.partner.test`.
pub fn self_signed_tls() -> Arc<ServerTls> {
    let generated = generate_self_signed(KeyKind::EcdsaP256, MX_NAME, &[]).expect("self-signed");
    server_tls(&generated.chain_pem, &generated.key_pem)
}

/// A client trusting only `ca_pems` (no public roots).
pub fn client_tls(ca_pems: &[&str]) -> ClientTls {
    postern_tls::install_crypto_provider();
    ClientTls::new(
        TrustSources {
            system: false,
            ca_pems: ca_pems.iter().map(|p| p.to_string()).collect(),
        },
        None,
    )
    .expect("client tls")
}

/// A small message with CRLF line ends.
pub fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: <alice@example.test>\r\nTo: <bob@partner.test>\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@example.test>\r\n\r\nHello.\r\n"
    )
    .into_bytes()
}
