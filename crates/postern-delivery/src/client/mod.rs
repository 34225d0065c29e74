//! The outbound SMTP client (RFC 5321; STARTTLS RFC 3207; PIPELINING RFC
//! 2920; SIZE RFC 1870; 8BITMIME RFC 6152; SMTPUTF8 RFC 6531).
//!
//! A [`Connection`] is one SMTP session with one host: [`Connection::open`]
//! connects, reads the greeting, says EHLO (HELO when EHLO is refused with
//! 5xx) and applies the outbound TLS policy ([`crate::policy`]);
//! [`Connection::send`] then carries one message at a time — several
//! messages to the same destination reuse the connection — and
//! [`Connection::quit`] ends it. [`deliver`] does all three for a batch.
//!
//! What the client guarantees:
//!
//! * **TLS policy, never silently weakened.** `require`/`verify` end in a
//!   [`TlsPolicyFailure`] (temporary) when TLS cannot be had. In
//!   `opportunistic` mode a failed handshake reconnects to the same address
//!   in plaintext, and [`AttemptRecord::tls_fallback_plaintext`] says so.
//! * **STARTTLS injection safety** (CVE-2011-0411 and kin): after STARTTLS
//!   the client reads exactly the `220` and refuses to go on if the server
//!   sent anything after it in plaintext (it could only have been injected
//!   or be garbage); after the handshake it starts over with EHLO and
//!   forgets what the plaintext EHLO said.
//! * **Per-recipient outcomes.** Each RCPT gets its own result; MAIL, DATA
//!   and end-of-data failures apply to the recipients they concern.
//!   Connection-level failures (I/O, timeouts, `421`, protocol errors) are
//!   an [`AttemptError`] and leave the connection unusable.
//! * **DATA framing**: dot-stuffing after every line end, a final CRLF if
//!   the message lacks one, then `.` CRLF. Messages come from the spool,
//!   where the inbound side already refused bare CR and LF; a dot after a
//!   bare LF is stuffed too, so even such a message cannot end the data
//!   early at a lenient receiver.
//! * **Timeouts on every step** ([`Timeouts`]) and `TCP_NODELAY` on the
//!   socket (SPEC §7).
//! * Every attempt leaves an [`AttemptRecord`]: host, IP, TLS version,
//!   cipher, verification result and the last reply (SPEC §6, §9 TLS-RPT).
//!
//! Layout: this file has the types, opening a connection (greeting, EHLO,
//! the TLS decision) and the batch helpers; `starttls.rs` the upgrade,
//! `transaction.rs` MAIL/RCPT/DATA, `stream.rs` the socket and reply reading.

mod starttls;
mod stream;
mod transaction;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use postern_config::OutboundMode;
use postern_proto::Reply;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::timeout;

use self::starttls::{io_reason, starttls, Upgrade};
use self::stream::Io;
pub use self::stream::Stream;
use crate::body::MessageBody;
use crate::classify::{Failure, FailureKind, HostRef, Stage};
use crate::policy::{
    after_handshake, after_tls_failure, decide, CertProblem, Fallback, Plan, Requirement,
    ResultType, Source, TlsFailure, TlsPolicyFailure,
};
use crate::tls_client::ClientTls;

pub use transaction::dot_stuff;

/// How long each step may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// The `220` greeting after connecting.
    pub greeting: Duration,
    /// Each command's reply, each write, and the TLS handshake.
    pub command: Duration,
    /// The reply after the final dot (the server may scan the message).
    pub data_end: Duration,
}

impl Default for Timeouts {
    /// Connect 30 s, greeting 60 s, each command 60 s, end of data 600 s.
    /// RFC 5321 §4.5.3.2 suggests 5 minutes for the greeting and MAIL/RCPT;
    /// a minute is plenty for a working server and keeps a stuck one from
    /// holding a delivery slot. The final-dot limit is the RFC's 10 minutes.
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(30),
            greeting: Duration::from_secs(60),
            command: Duration::from_secs(60),
            data_end: Duration::from_secs(600),
        }
    }
}

/// What the server advertised in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// The server answered EHLO (not only HELO).
    pub esmtp: bool,
    pub starttls: bool,
    pub pipelining: bool,
    /// `SIZE` with its limit; `Some(0)` means no fixed limit.
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub enhanced_status_codes: bool,
    pub chunking: bool,
    /// RFC 8689 (only meaningful over TLS).
    pub requiretls: bool,
}

impl Capabilities {
    /// Parse the lines of a `250` EHLO reply (the first line is the greeting).
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities {
            esmtp: true,
            ..Capabilities::default()
        };
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "STARTTLS" => caps.starttls = true,
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => {
                    caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0));
                }
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "CHUNKING" => caps.chunking = true,
                "REQUIRETLS" => caps.requiretls = true,
                _ => {}
            }
        }
        caps
    }
}

/// Everything worth keeping about one connection attempt (SPEC §6): the
/// basis of `postern trace`, tracking events and, later, TLS-RPT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRecord {
    /// The target host name (MX or next hop; the IP text for IP literals).
    pub host: String,
    pub ip: IpAddr,
    pub port: u16,
    /// Our address on the connection (TLS-RPT's `sending-mta-ip`); `None`
    /// when it did not connect.
    pub local_ip: Option<IpAddr>,
    /// The outbound TLS level that applied.
    pub mode: OutboundMode,
    /// The requirement as deferral reasons name it (`domain verify`).
    pub requirement: String,
    /// The policy source that set it (`global`, `domain`, `dane`, ...).
    pub source: Source,
    /// For a TLS policy failure: its RFC 8460 result type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_type: Option<ResultType>,
    /// Whether the server advertised STARTTLS (plaintext EHLO).
    pub starttls_offered: bool,
    /// `TLSv1.3`, `TLSv1.2` when TLS was used.
    pub tls_version: Option<String>,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: Option<String>,
    /// Whether the certificate chains to a trusted root and names the host;
    /// `None` when no certificate was seen.
    pub cert_verified: Option<bool>,
    /// Why it did not verify.
    pub verify_error: Option<String>,
    /// The same, with its RFC 8460 category.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_problem: Option<CertProblem>,
    /// The names (SANs) of the server's certificate.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cert_names: Vec<String>,
    /// The certificates the server presented, leaf first:
    /// `subject (issuer ..., until ...)`.
    pub cert_chain: Vec<String>,
    /// Why STARTTLS or the handshake failed, when it did.
    pub tls_error: Option<String>,
    /// STARTTLS was tried and failed, and the session went on in plaintext
    /// (opportunistic mode only): on the same connection after a refused
    /// STARTTLS, on a new connection after a failed handshake.
    pub tls_fallback_plaintext: bool,
    /// The last reply from the server, as one line.
    pub reply: String,
    /// What the domain's MTA-STS policy said (set by the courier).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mta_sts: Option<crate::mta_sts::StsStatus>,
    /// Report-only requirements this attempt would have failed (set by
    /// the courier).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub would_fail: Vec<ReportOnlyVerdict>,
    /// Whether the requirement was met: `Some(true)` once the session went
    /// on as it allows, `Some(false)` for a TLS policy failure, `None` when
    /// the connection failed before it could be applied.
    pub requirement_met: Option<bool>,
    /// The requirement refused the host before any connection (an MX
    /// outside the enforced MTA-STS policy, a failed TLSA lookup): the
    /// record exists for TLS-RPT and alerts, not for what a server said.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub refused_unconnected: bool,
    /// The whole requirement (MTA-STS policy, TLSA records, report-only
    /// requirements), for the tracking event.
    #[serde(skip)]
    pub policy: Requirement,
}

/// A report-only requirement (MTA-STS `testing`, a `monitor` rule, a
/// learned level in `monitor`) that an attempt did not meet: recorded,
/// not enforced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportOnlyVerdict {
    /// As deferral reasons name it (`MTA-STS testing`).
    pub requirement: String,
    pub source: Source,
    pub result_type: ResultType,
    /// What would have failed.
    pub failure: String,
}

impl ReportOnlyVerdict {
    pub fn new(requirement: &Requirement, failure: &TlsPolicyFailure) -> Self {
        ReportOnlyVerdict {
            requirement: requirement.label(),
            source: requirement.source,
            result_type: failure.result_type(),
            failure: failure.to_string(),
        }
    }
}

impl AttemptRecord {
    fn new(host: &str, addr: SocketAddr, requirement: &Requirement) -> Self {
        Self {
            host: host.to_string(),
            ip: addr.ip(),
            port: addr.port(),
            local_ip: None,
            mode: requirement.level,
            requirement: requirement.label(),
            source: requirement.source,
            result_type: None,
            starttls_offered: false,
            tls_version: None,
            cipher: None,
            cert_verified: None,
            verify_error: None,
            cert_problem: None,
            cert_names: Vec::new(),
            cert_chain: Vec::new(),
            tls_error: None,
            tls_fallback_plaintext: false,
            reply: String::new(),
            mta_sts: None,
            would_fail: Vec::new(),
            requirement_met: None,
            refused_unconnected: false,
            policy: requirement.clone(),
        }
    }

    /// The record of a host the requirement refused without connecting:
    /// a failed session under that requirement, with `failure` as its
    /// reason.
    pub fn refused(
        host: &str,
        addr: SocketAddr,
        requirement: &Requirement,
        failure: &TlsPolicyFailure,
    ) -> Self {
        let mut record = Self::new(host, addr, requirement);
        record.result_type = Some(failure.result_type());
        record.tls_error = Some(failure.to_string());
        record.requirement_met = Some(false);
        record.refused_unconnected = true;
        record
    }

    /// Whether the session that carries mail is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls_version.is_some()
    }
}

/// A connection-level failure: the host could not be used (or stopped
/// being usable). Try the next address or MX host; if it is temporary and
/// none is left, defer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    pub failure: Failure,
    /// What was learnt about the attempt before it failed.
    pub record: AttemptRecord,
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.failure.fmt(f)
    }
}

impl std::error::Error for AttemptError {}

/// One message to send.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Reverse path without brackets; `""` is the null sender.
    pub sender: &'a str,
    /// Forward paths, without brackets.
    pub recipients: &'a [String],
    /// The message: CRLF line ends, not dot-stuffed (as the spool keeps it),
    /// read from the queue file while it is sent.
    pub message: &'a MessageBody,
    /// The message arrived with SMTPUTF8 (its headers may be UTF-8).
    pub smtputf8: bool,
    /// The message arrived with `MAIL FROM:<..> REQUIRETLS` (RFC 8689): it
    /// goes out only with `REQUIRETLS` on its `MAIL FROM`, over TLS, to a
    /// server that advertised it.
    pub requiretls: bool,
    /// The message has `TLS-Required: No` (and no REQUIRETLS).
    pub tls_required_no: bool,
}

/// The result for one recipient of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientOutcome {
    pub recipient: String,
    pub result: RecipientResult,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientResult {
    /// Accepted by the server; the reply to the final dot.
    Delivered { reply: String },
    /// Refused; [`Failure::is_permanent`] says bounce or retry.
    Failed(Failure),
}

impl RecipientOutcome {
    pub fn is_delivered(&self) -> bool {
        matches!(self.result, RecipientResult::Delivered { .. })
    }

    pub fn failure(&self) -> Option<&Failure> {
        match &self.result {
            RecipientResult::Failed(failure) => Some(failure),
            RecipientResult::Delivered { .. } => None,
        }
    }
}

/// An open SMTP session with one host, ready for [`Connection::send`].
pub struct Connection {
    io: Io,
    caps: Capabilities,
    record: AttemptRecord,
    host: HostRef,
    timeouts: Timeouts,
    usable: bool,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("record", &self.record)
            .field("caps", &self.caps)
            .field("usable", &self.usable)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connect to `addr`, greet, and apply `requirement` (see
    /// [`crate::policy`]).
    ///
    /// `host` is the target's name: it is verified against the certificate
    /// and sent as SNI (not for IP literals). `helo` is our host name.
    pub async fn open(
        host: &str,
        addr: SocketAddr,
        tls: &ClientTls,
        requirement: &Requirement,
        helo: &str,
        timeouts: &Timeouts,
    ) -> Result<Connection, AttemptError> {
        let mut record = AttemptRecord::new(host, addr, requirement);
        let host_ref = HostRef::new(host, Some(addr.ip()));
        let fail = |record: &AttemptRecord, kind: FailureKind| {
            let mut record = record.clone();
            let mut failure = Failure::new(Some(host_ref.clone()), kind);
            if let FailureKind::TlsPolicy(policy) = &failure.kind {
                record.requirement_met = Some(false);
                record.result_type = Some(policy.result_type());
                failure = failure.under(requirement.label());
            }
            AttemptError { failure, record }
        };
        if !is_clean_token(helo) {
            let kind = FailureKind::Local(format!("invalid EHLO name \"{}\"", helo.escape_debug()));
            return Err(fail(&record, kind));
        }

        let (mut io, caps) = match greet(addr, helo, timeouts, &mut record).await {
            Ok(greeted) => greeted,
            Err(kind) => return Err(fail(&record, kind)),
        };
        record.starttls_offered = caps.starttls;
        let connection = |io, caps, mut record: AttemptRecord| Connection {
            io,
            caps,
            record: {
                record.requirement_met = Some(true);
                record
            },
            host: host_ref.clone(),
            timeouts: *timeouts,
            usable: true,
        };

        let verifier = match decide(requirement, &caps) {
            Plan::Plaintext => return Ok(connection(io, caps, record)),
            Plan::Defer(reason) => {
                io.quit_quietly(timeouts).await;
                return Err(fail(&record, FailureKind::TlsPolicy(reason)));
            }
            Plan::StartTls => match tls.config_for(requirement) {
                Ok(verifier) => verifier,
                Err(e) => {
                    io.quit_quietly(timeouts).await;
                    return Err(fail(&record, FailureKind::Local(e.to_string())));
                }
            },
        };

        match starttls(io, host, tls, verifier, timeouts, &mut record).await {
            Err(kind) => Err(fail(&record, kind)),
            Ok(Upgrade::Established {
                mut io,
                certificate,
            }) => {
                // RFC 3207 §4.2: forget the plaintext EHLO, ask again.
                let caps = match ehlo(&mut io, helo, timeouts, &mut record).await {
                    Ok(caps) => caps,
                    Err(kind) => return Err(fail(&record, kind)),
                };
                match after_handshake(requirement, &certificate, &caps) {
                    Ok(()) => Ok(connection(io, caps, record)),
                    Err(reason) => {
                        io.quit_quietly(timeouts).await;
                        Err(fail(&record, FailureKind::TlsPolicy(reason)))
                    }
                }
            }
            Ok(Upgrade::Refused { mut io, reply }) => {
                match after_tls_failure(requirement, &TlsFailure::Refused(reply.to_string())) {
                    Fallback::Plaintext => {
                        record.tls_fallback_plaintext = true;
                        Ok(connection(io, caps, record))
                    }
                    Fallback::Defer(reason) => {
                        io.quit_quietly(timeouts).await;
                        Err(fail(&record, FailureKind::TlsPolicy(reason)))
                    }
                }
            }
            Ok(Upgrade::Failed(failure)) => match after_tls_failure(requirement, &failure) {
                Fallback::Plaintext => {
                    reconnect_plaintext(addr, helo, timeouts, record, connection, &fail).await
                }
                Fallback::Defer(reason) => Err(fail(&record, FailureKind::TlsPolicy(reason))),
            },
        }
    }

    /// What the attempt looks like so far (TLS details, last reply).
    pub fn record(&self) -> &AttemptRecord {
        &self.record
    }

    /// What the server advertised (after STARTTLS: over TLS).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// False once a connection-level failure happened: open a new one.
    pub fn is_usable(&self) -> bool {
        self.usable
    }

    /// Say goodbye (best effort) and close.
    pub async fn quit(mut self) {
        if self.usable {
            self.io.quit_quietly(&self.timeouts).await;
        }
    }

    fn error(&self, kind: FailureKind) -> AttemptError {
        AttemptError {
            failure: Failure::new(Some(self.host.clone()), kind),
            record: self.record.clone(),
        }
    }
}

/// Open, send every message, quit: one connection for a batch of messages
/// to the same destination.
///
/// `Err` when the connection could not be opened (try the next address).
/// Otherwise one entry per message, in order: its recipient outcomes, or
/// the connection-level error that stopped it (later messages get the same
/// error: they were not attempted).
pub async fn deliver(
    target_host: &str,
    addr: SocketAddr,
    tls: &ClientTls,
    requirement: &Requirement,
    helo: &str,
    timeouts: &Timeouts,
    messages: &[Outgoing<'_>],
) -> Result<BatchReport, AttemptError> {
    let mut connection =
        Connection::open(target_host, addr, tls, requirement, helo, timeouts).await?;
    let mut results = Vec::with_capacity(messages.len());
    let mut stopped: Option<AttemptError> = None;
    for message in messages {
        if let Some(error) = &stopped {
            results.push(Err(error.clone()));
            continue;
        }
        match connection.send(message).await {
            Ok(outcomes) => results.push(Ok(outcomes)),
            Err(error) => {
                stopped = Some(error.clone());
                results.push(Err(error));
            }
        }
    }
    let record = connection.record().clone();
    connection.quit().await;
    Ok(BatchReport {
        record,
        messages: results,
    })
}

/// What [`deliver`] did.
#[derive(Debug, Clone)]
pub struct BatchReport {
    /// The connection's record (TLS details, last reply).
    pub record: AttemptRecord,
    /// Per message: recipient outcomes, or the connection failure.
    pub messages: Vec<Result<Vec<RecipientOutcome>, AttemptError>>,
}

fn is_clean_token(text: &str) -> bool {
    !text.is_empty() && !text.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// Connect, read the greeting, EHLO.
async fn greet(
    addr: SocketAddr,
    helo: &str,
    timeouts: &Timeouts,
    record: &mut AttemptRecord,
) -> Result<(Io, Capabilities), FailureKind> {
    let tcp = match timeout(timeouts.connect, TcpStream::connect(addr)).await {
        Err(_) => return Err(FailureKind::Timeout(Stage::Connect)),
        Ok(Err(e)) => return Err(FailureKind::Connect(io_reason(&e))),
        Ok(Ok(tcp)) => tcp,
    };
    // Replies and commands are small; never wait for delayed ACKs (SPEC §7).
    let _ = tcp.set_nodelay(true);
    record.local_ip = tcp.local_addr().ok().map(|a| a.ip());
    let mut io = Io::new(Stream::Plain(tcp));
    let banner = io.read_reply(timeouts.greeting, Stage::Greeting).await?;
    record.reply = banner.to_string();
    if banner.code != 220 {
        io.quit_quietly(timeouts).await;
        return Err(FailureKind::Reply {
            stage: Stage::Greeting,
            reply: banner,
        });
    }
    let caps = ehlo(&mut io, helo, timeouts, record).await?;
    Ok((io, caps))
}

/// EHLO, or HELO when EHLO is refused with 5xx (RFC 5321 §3.2).
async fn ehlo(
    io: &mut Io,
    helo: &str,
    timeouts: &Timeouts,
    record: &mut AttemptRecord,
) -> Result<Capabilities, FailureKind> {
    let reply = io
        .command(&format!("EHLO {helo}\r\n"), timeouts.command, Stage::Ehlo)
        .await?;
    record.reply = reply.to_string();
    if reply.code == 250 {
        return Ok(Capabilities::from_ehlo(&reply));
    }
    if reply.code / 100 != 5 {
        io.quit_quietly(timeouts).await;
        return Err(FailureKind::Reply {
            stage: Stage::Ehlo,
            reply,
        });
    }
    let reply = io
        .command(&format!("HELO {helo}\r\n"), timeouts.command, Stage::Helo)
        .await?;
    record.reply = reply.to_string();
    if reply.code == 250 {
        return Ok(Capabilities::default());
    }
    io.quit_quietly(timeouts).await;
    Err(FailureKind::Reply {
        stage: Stage::Helo,
        reply,
    })
}

/// Opportunistic fallback: a new plaintext connection to the same address.
async fn reconnect_plaintext<C, F>(
    addr: SocketAddr,
    helo: &str,
    timeouts: &Timeouts,
    mut record: AttemptRecord,
    connection: C,
    fail: &F,
) -> Result<Connection, AttemptError>
where
    C: FnOnce(Io, Capabilities, AttemptRecord) -> Connection,
    F: Fn(&AttemptRecord, FailureKind) -> AttemptError,
{
    record.tls_fallback_plaintext = true;
    record.tls_version = None;
    record.cipher = None;
    match greet(addr, helo, timeouts, &mut record).await {
        Ok((io, caps)) => Ok(connection(io, caps, record)),
        Err(kind) => Err(fail(&record, kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_from_ehlo() {
        let reply = Reply::plain(
            250,
            [
                "mx.example Hello",
                "PIPELINING",
                "SIZE 1000",
                "8BITMIME",
                "starttls",
                "SMTPUTF8",
                "X-OTHER 1",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        );
        let caps = Capabilities::from_ehlo(&reply);
        assert!(
            caps.esmtp && caps.pipelining && caps.starttls && caps.smtputf8 && caps.eight_bit_mime
        );
        assert_eq!(caps.size, Some(1000));
        assert!(!caps.chunking);
        // The greeting line is not a capability.
        let reply = Reply::plain(250, vec!["STARTTLS".into()]);
        assert!(!Capabilities::from_ehlo(&reply).starttls);
    }

    #[test]
    fn helo_names_are_single_tokens() {
        assert!(!is_clean_token("mx example"));
        assert!(!is_clean_token("mx\r\nQUIT"));
        assert!(is_clean_token("mx.example.test"));
    }
}
