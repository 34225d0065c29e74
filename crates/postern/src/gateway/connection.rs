//! One SMTP connection: drives a [`Session`] over a socket, performs its
//! actions (replies, STARTTLS, durable enqueue) and enforces timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_session::{Action, ClientCert, Session, SessionConfig, SessionEvent, TlsInfo};
use postern_tls::{ClientCertStatus, ServerTls};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::enqueue::Incoming;
use super::limits::ConnectionSlot;
use super::Shared;

/// Read buffer between messages. Most connections sit idle here, so it is
/// small (a pipelined MAIL/RCPT/DATA group fits); 50,000 idle connections
/// must fit in memory.
const COMMAND_READ: usize = 1024;
/// Read buffer while message data arrives (allocated for the message,
/// freed after it).
const DATA_READ: usize = 16 * 1024;

/// Message data that counts as progress for the session timeout.
const DATA_PROGRESS: usize = 4096;

/// How a connection ended, for the mail log.
enum End {
    Closed,
    ClientGone,
    Timeout,
    Shutdown,
    StartTls,
    Error(String),
}

impl End {
    fn describe(&self) -> String {
        match self {
            End::Closed => "closed".into(),
            End::ClientGone => "client disconnected".into(),
            End::Timeout => "timeout".into(),
            End::Shutdown => "shutdown".into(),
            End::StartTls => "starttls".into(),
            End::Error(e) => e.clone(),
        }
    }
}

/// Serve one accepted connection until it ends.
///
/// This future is the task's allocation for the connection's whole life,
/// and the compiler sizes it by the largest of its states, with the
/// states laid side by side more than over each other. So everything
/// large lives in its own allocation, made at its own size while it is
/// needed: the session, the TLS stream, the session loop, the handshake
/// and the storing of a message (10 KiB per idle connection in all
/// before the first boxing, 6.5 KiB for this future alone after it).
pub async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
    slot: ConnectionSlot,
) {
    let started = Instant::now();
    let metrics = Arc::clone(&shared.metrics);
    let _open = metrics.connection_opened(implicit_tls);
    let live = shared.live.get();
    let config = SessionConfig {
        hostname: shared.hostname.clone(),
        settings: Arc::clone(&live.settings),
        trusted_networks: Arc::clone(&shared.trusted_networks),
        tls_available: live.tls.is_some(),
    };
    let idle = live.settings.mta.session_timeout.to_std();
    let server_tls = live.tls.clone();
    drop(live);
    let (end, session) = if implicit_tls {
        let Some(server_tls) = server_tls else {
            shared.maillog.write(
                "tls-failed",
                &[
                    ("client", &peer.to_string()),
                    ("reason", "no certificate loaded"),
                ],
            );
            return;
        };
        match Box::pin(handshake(&server_tls, tcp, idle)).await {
            Ok((mut stream, info)) => {
                let mut session = Box::new(Session::new(config, peer, Some(info)));
                let end = Box::pin(drive(
                    &shared,
                    stream.as_mut(),
                    &mut session,
                    idle,
                    &slot,
                    Greet::Yes,
                ))
                .await;
                (end, session)
            }
            Err(reason) => {
                shared.metrics.inbound_handshake_failed();
                shared.maillog.write(
                    "tls-failed",
                    &[("client", &peer.to_string()), ("reason", &reason)],
                );
                return;
            }
        }
    } else {
        let mut tcp = tcp;
        let mut session = Box::new(Session::new(config, peer, None));
        let end = Box::pin(drive(
            &shared,
            &mut tcp,
            &mut session,
            idle,
            &slot,
            Greet::Yes,
        ))
        .await;
        match (end, server_tls) {
            (End::StartTls, Some(server_tls)) => {
                match Box::pin(handshake(&server_tls, tcp, idle)).await {
                    Ok((mut stream, info)) => {
                        session.tls_established(info);
                        let end = Box::pin(drive(
                            &shared,
                            stream.as_mut(),
                            &mut session,
                            idle,
                            &slot,
                            Greet::No,
                        ))
                        .await;
                        (end, session)
                    }
                    Err(reason) => {
                        shared.metrics.inbound_handshake_failed();
                        (
                            End::Error(format!("TLS handshake failed: {reason}")),
                            session,
                        )
                    }
                }
            }
            (End::StartTls, None) => (End::Error("TLS not available".into()), session),
            (end, _) => (end, session),
        }
    };
    log_disconnect(&shared, peer, &session, &end, started);
    drop(slot);
}

async fn handshake(
    server_tls: &Arc<ServerTls>,
    tcp: TcpStream,
    limit: Duration,
) -> Result<(Box<TlsStream<TcpStream>>, TlsInfo), String> {
    let acceptor = TlsAcceptor::from(Arc::clone(&server_tls.config));
    let stream = match timeout(limit, acceptor.accept(tcp)).await {
        Err(_) => return Err("handshake timeout".into()),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(stream)) => stream,
    };
    let (_, connection) = stream.get_ref();
    let client_cert = match server_tls.client_certificate_status(connection.peer_certificates()) {
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
    let negotiated = postern_tls::negotiated(connection).ok_or("handshake incomplete")?;
    let info = TlsInfo {
        version: negotiated.version,
        cipher: negotiated.cipher,
        client_cert,
    };
    Ok((Box::new(stream), info))
}

/// Whether [`drive`] starts with the greeting (not after STARTTLS).
#[derive(PartialEq)]
enum Greet {
    Yes,
    No,
}

/// Run the session until it closes, the client goes, or STARTTLS.
async fn drive<S>(
    shared: &Arc<Shared>,
    stream: &mut S,
    session: &mut Session,
    idle: Duration,
    slot: &ConnectionSlot,
    greet: Greet,
) -> End
where
    S: SessionStream,
{
    // Replies wait here until the session needs input; the greeting goes
    // out with the first flush, before anything is read.
    let mut out = if greet == Greet::Yes {
        session.greeting().to_bytes()
    } else {
        Vec::new()
    };
    // Read into spare capacity (`read_buf`): never zeroed, so an idle
    // connection's untouched buffer pages stay out of memory.
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_size = 0;
    let mut shutdown = shared.shutdown.clone();
    // A command, or a stretch of message data, must arrive in full within
    // the session timeout: trickling a byte at a time does not keep a
    // connection alive (slowloris).
    let mut deadline = Instant::now() + idle;
    let mut data_since_progress = 0usize;
    // The message being received; dropped (and so discarded) on every way
    // out of here that did not commit it.
    // Boxed: the idle loop then holds a pointer, not the message's state.
    let mut incoming: Option<Box<Incoming>> = None;
    loop {
        match session.poll() {
            Action::Reply(reply) => {
                reply.write_to(&mut out);
                deadline = Instant::now() + idle;
                data_since_progress = 0;
            }
            Action::Log(event) => log_event(shared, session, event),
            Action::BeginMessage(delivery) => {
                incoming = Some(Box::new(Incoming::begin(shared, *delivery)));
            }
            Action::MessageData(bytes) => {
                if let Some(message) = &mut incoming {
                    // Boxed here and below: rare, large futures kept out of
                    // every idle connection's task (see `serve`).
                    Box::pin(message.write(shared, bytes)).await;
                }
            }
            Action::Enqueue(last) => {
                let result = match incoming.take() {
                    Some(message) => Box::pin((*message).commit(shared, last)).await,
                    None => Err("no message was begun".to_string()),
                };
                session.enqueued(result);
            }
            Action::DiscardMessage => incoming = None,
            Action::StartTls => {
                return match flush(stream, &mut out, idle).await {
                    Ok(()) => End::StartTls,
                    Err(end) => end,
                };
            }
            Action::Close => {
                // The session is over: free its slot before the client
                // reads the final reply and reconnects.
                slot.release();
                if stream.queue_final(&mut out) {
                    // The last replies and close_notify go out in one write.
                    return match timeout(idle, stream.shutdown()).await {
                        Err(_) => End::Timeout,
                        Ok(Err(e)) => End::Error(e.to_string()),
                        Ok(Ok(())) => End::Closed,
                    };
                }
                let result = flush(stream, &mut out, idle).await;
                let _ = timeout(Duration::from_secs(1), stream.shutdown()).await;
                return result.err().unwrap_or(End::Closed);
            }
            Action::NeedInput => {
                if let Err(end) = flush(stream, &mut out, idle).await {
                    return end;
                }
                let accepting_shutdown = !session.is_receiving_message();
                let want = if accepting_shutdown {
                    COMMAND_READ
                } else {
                    DATA_READ
                };
                if buf_size != want {
                    buf = Vec::with_capacity(want);
                    buf_size = want;
                }
                buf.clear();
                let read = tokio::select! {
                    read = tokio::time::timeout_at(deadline.into(), stream.read_buf(&mut buf)) => read,
                    () = stopped(&mut shutdown), if accepting_shutdown => {
                        session.shutdown_reply().write_to(&mut out);
                        let _ = flush(stream, &mut out, Duration::from_secs(1)).await;
                        return End::Shutdown;
                    }
                };
                match read {
                    Err(_) => {
                        session.timeout_reply().write_to(&mut out);
                        let _ = flush(stream, &mut out, Duration::from_secs(1)).await;
                        return End::Timeout;
                    }
                    Ok(Ok(0)) => return End::ClientGone,
                    Ok(Ok(n)) => {
                        session.receive(&buf);
                        data_since_progress += n;
                        if data_since_progress >= DATA_PROGRESS {
                            deadline = Instant::now() + idle;
                            data_since_progress = 0;
                        }
                    }
                    Ok(Err(e)) => return End::Error(e.to_string()),
                }
            }
        }
    }
}

/// A connection's byte stream: plain TCP, or TLS over it.
trait SessionStream: AsyncRead + AsyncWrite + Unpin {
    /// Hand the session's last replies (`out`) to the stream, to go out
    /// with what closing it sends, in the one write a `shutdown` makes.
    /// True when all of `out` was taken; false leaves in `out` what is
    /// still to be written the ordinary way (all of it for plain TCP).
    fn queue_final(&mut self, out: &mut Vec<u8>) -> bool;
}

impl SessionStream for TcpStream {
    fn queue_final(&mut self, _out: &mut Vec<u8>) -> bool {
        false
    }
}

impl SessionStream for TlsStream<TcpStream> {
    /// The 221 and TLS close_notify as one write (one syscall and one
    /// loopback segment fewer per connection than writing each).
    fn queue_final(&mut self, out: &mut Vec<u8>) -> bool {
        use std::io::Write as _;
        let (_, connection) = self.get_mut();
        // rustls takes plaintext up to its buffer limit; what it took is
        // sent first either way.
        let Ok(taken) = connection.writer().write(out) else {
            return false;
        };
        out.drain(..taken);
        if !out.is_empty() {
            return false;
        }
        connection.send_close_notify();
        true
    }
}

/// Resolves when the gateway starts shutting down.
async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    // The watch guard is not Send: drop it here, not in the caller.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

async fn flush<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut Vec<u8>,
    limit: Duration,
) -> Result<(), End> {
    if out.is_empty() {
        return Ok(());
    }
    let result = write_all(stream, out, limit).await;
    out.clear();
    result
}

/// Write with a deadline, so a client that never reads cannot hold us.
async fn write_all<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    limit: Duration,
) -> Result<(), End> {
    match timeout(limit, async {
        stream.write_all(bytes).await?;
        stream.flush().await
    })
    .await
    {
        Err(_) => Err(End::Timeout),
        Ok(Err(e)) => Err(End::Error(e.to_string())),
        Ok(Ok(())) => Ok(()),
    }
}

fn tls_fields(session: &Session) -> (String, String, String) {
    match session.tls() {
        None => (String::new(), String::new(), String::new()),
        Some(tls) => {
            let cert = tls
                .client_cert
                .as_ref()
                .map_or(String::new(), |c| c.log_label());
            (tls.version.clone(), tls.cipher.clone(), cert)
        }
    }
}

fn log_event(shared: &Shared, session: &Session, event: SessionEvent) {
    let client = format!("[{}]", session_peer(session));
    let (tls, cipher, cert) = tls_fields(session);
    match event {
        SessionEvent::RecipientRejected {
            sender,
            recipient,
            reply,
        } => shared.maillog.write(
            "rejected",
            &[
                ("client", &client),
                ("from", &format!("<{sender}>")),
                ("to", &format!("<{recipient}>")),
                ("tls", &tls),
                ("cipher", &cipher),
                ("client_cert", &cert),
                ("reply", &reply.to_string()),
            ],
        ),
        SessionEvent::MessageRejected {
            sender,
            recipients,
            reply,
        } => shared.maillog.write(
            "rejected",
            &[
                ("client", &client),
                ("from", &format!("<{sender}>")),
                (
                    "to",
                    &recipients
                        .iter()
                        .map(|r| format!("<{r}>"))
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                ("tls", &tls),
                ("cipher", &cipher),
                ("client_cert", &cert),
                ("reply", &reply.to_string()),
            ],
        ),
    }
}

fn session_peer(session: &Session) -> std::net::IpAddr {
    session.peer().ip()
}

fn log_disconnect(
    shared: &Shared,
    peer: SocketAddr,
    session: &Session,
    end: &End,
    started: Instant,
) {
    let (tls, cipher, cert) = tls_fields(session);
    let stats = session.stats();
    shared.maillog.write(
        "disconnect",
        &[
            ("client", &peer.to_string()),
            ("helo", session.helo_name().unwrap_or("")),
            ("tls", &tls),
            ("cipher", &cipher),
            ("client_cert", &cert),
            ("accepted", &stats.accepted.to_string()),
            ("rejected", &stats.rejected.to_string()),
            ("errors", &stats.errors.to_string()),
            (
                "duration",
                &format!("{:.3}s", started.elapsed().as_secs_f64()),
            ),
            ("end", &end.describe()),
        ],
    );
}
