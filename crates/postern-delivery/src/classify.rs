//! The one place that decides whether a delivery failure is temporary or
//! permanent, who is at fault, and which RFC 3463 status code it carries.
//!
//! Every failure that [`crate::Connection::open`] reports, and every
//! connection-level failure of [`crate::Connection::send`], is temporary:
//! only DNS answers about the domain and replies or checks about the
//! message itself can be permanent.
//!
//! Every failure of the delivery path is a [`Failure`]: the host it happened
//! with (if any) and a [`FailureKind`] from one of the layers — routing
//! (DNS), connecting, TLS policy, the peer's SMTP replies, the protocol
//! itself, our own decisions about the message, and local errors.
//! [`classify`] maps each kind to a [`Classification`]; nothing else in the
//! crate decides "retry or bounce".
//!
//! The rules (SPEC §6, STYLE practice 9):
//!
//! | layer | permanence |
//! |---|---|
//! | DNS: NXDOMAIN, null MX (RFC 7505), no MX and no address | permanent |
//! | DNS: SERVFAIL, timeout, an MX host without address | temporary |
//! | connect, timeouts, connection lost | temporary |
//! | TLS policy (STARTTLS missing or refused, handshake, certificate) | always temporary: the message waits for its queue lifetime |
//! | SMTP reply 4xx (and `421` anywhere) | temporary |
//! | SMTP reply 5xx to MAIL, RCPT, DATA, end of data | permanent |
//! | SMTP reply 5xx to the greeting, HELO, RSET | temporary: it refuses this host's session, not the message, so the next MX is tried (like Postfix's `smtp_skip_5xx_greeting`) |
//! | protocol violations by the peer | temporary |
//! | message needs SMTPUTF8 the peer lacks, message over the peer's SIZE, unusable envelope address | permanent (5.6.7, 5.3.4, 5.1.3) |
//! | local errors | temporary |
//!
//! [`Failure::last_error`] is the operator-facing text stored as a
//! recipient's `last_error`: it names the host and what failed, e.g.
//! `mx1.partner.test[127.0.0.2]: 550 5.1.1 user unknown (in reply to RCPT TO)`.

use std::fmt;
use std::net::IpAddr;

use postern_proto::{EnhancedCode, Reply};

use crate::policy::TlsPolicyFailure;
use crate::route::RouteError;

/// Retry later, or give up and bounce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permanence {
    Temporary,
    Permanent,
}

/// Who is at fault — for operators and for TLS-RPT style reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The destination does not exist or accepts no mail (NXDOMAIN, null
    /// MX), or its DNS points nowhere.
    Destination,
    /// The peer refused with an SMTP reply.
    PeerRefused,
    /// The peer broke the protocol: garbage, bytes after the STARTTLS `220`,
    /// an unexpected close.
    PeerMisbehaved,
    /// The peer lacks something we require: STARTTLS, a certificate that
    /// verifies, a working TLS handshake, SMTPUTF8, a large enough SIZE.
    PeerIncompatible,
    /// DNS server trouble, an unreachable host, a timeout.
    Network,
    /// Our own side: local I/O, configuration.
    Local,
}

/// The outcome of [`classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    pub permanence: Permanence,
    pub fault: Fault,
    /// RFC 3463 status for the DSN and logs (`5.1.1`, `4.7.5`).
    pub status: EnhancedCode,
}

/// The step of an SMTP conversation a failure happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Connect,
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    TlsHandshake,
    MailFrom,
    RcptTo,
    Data,
    /// The message body and the final dot.
    DataEnd,
    Rset,
    Quit,
}

impl Stage {
    /// How the stage is named after "in reply to" / "after".
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::Helo => "HELO",
            Stage::StartTls => "STARTTLS",
            Stage::TlsHandshake => "TLS handshake",
            Stage::MailFrom => "MAIL FROM",
            Stage::RcptTo => "RCPT TO",
            Stage::Data => "DATA",
            Stage::DataEnd => "end of DATA",
            Stage::Rset => "RSET",
            Stage::Quit => "QUIT",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something about the message that the peer cannot take, decided by us
/// before sending it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageProblem {
    /// Non-ASCII addresses (or headers of an SMTPUTF8 message) and a peer
    /// without SMTPUTF8 (RFC 6531 §3.2: 5.6.7).
    SmtpUtf8NotOffered,
    /// The message is larger than the peer's advertised SIZE (RFC 1870).
    TooBig { size: u64, limit: u64 },
    /// An envelope address that cannot be put in a command line (control
    /// characters, angle brackets). The inbound side never accepts such
    /// addresses; this guards against a damaged queue file.
    InvalidAddress(String),
}

/// What failed, by layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// Finding where to deliver.
    Route(RouteError),
    /// The TCP connection could not be made.
    Connect(String),
    /// No answer in time.
    Timeout(Stage),
    /// The required TLS level could not be met.
    TlsPolicy(TlsPolicyFailure),
    /// The peer answered with a failure reply.
    Reply { stage: Stage, reply: Reply },
    /// The peer closed the connection.
    ConnectionLost(Stage),
    /// The peer broke the protocol (the text says how).
    Protocol(String),
    /// The message cannot go to this peer.
    Message(MessageProblem),
    /// A failure on our side.
    Local(String),
}

/// The single decision: temporary or permanent, whose fault, which status.
pub fn classify(kind: &FailureKind) -> Classification {
    use Fault::*;
    use Permanence::*;
    let (permanence, fault, status) = match kind {
        FailureKind::Route(route) => match route {
            RouteError::NxDomain { .. } => (Permanent, Destination, (5, 1, 2)),
            RouteError::NoRecords { .. } => (Permanent, Destination, (5, 1, 2)),
            RouteError::InvalidDomain { .. } => (Permanent, Destination, (5, 1, 2)),
            // RFC 7505 §4.2.
            RouteError::NullMx { .. } => (Permanent, Destination, (5, 1, 10)),
            RouteError::NoAddress { .. } => (Temporary, Destination, (4, 4, 4)),
            RouteError::Lookup { .. } => (Temporary, Network, (4, 4, 3)),
        },
        FailureKind::Connect(_) => (Temporary, Network, (4, 4, 1)),
        FailureKind::Timeout(Stage::Connect) => (Temporary, Network, (4, 4, 1)),
        FailureKind::Timeout(_) => (Temporary, Network, (4, 4, 2)),
        FailureKind::TlsPolicy(policy) => match policy {
            TlsPolicyFailure::StartTlsNotOffered | TlsPolicyFailure::StartTlsRefused(_) => {
                (Temporary, PeerIncompatible, (4, 7, 4))
            }
            TlsPolicyFailure::HandshakeFailed(_)
            | TlsPolicyFailure::CertificateUnverified(_)
            | TlsPolicyFailure::MxNotInPolicy { .. } => (Temporary, PeerIncompatible, (4, 7, 5)),
            // RFC 8689 §5: X.7.30, REQUIRETLS support required.
            TlsPolicyFailure::RequireTlsNotOffered
            | TlsPolicyFailure::RouteNotAuthenticated { .. } => {
                (Temporary, PeerIncompatible, (4, 7, 30))
            }
            TlsPolicyFailure::DaneLookupFailed(_) | TlsPolicyFailure::RouteStatusFailed(_) => {
                (Temporary, Network, (4, 7, 5))
            }
        },
        FailureKind::Reply { stage, reply } => {
            let class = reply.code / 100;
            // Only replies about the message are permanent; a 5xx to the
            // greeting, HELO or RSET refuses this host's session, not the
            // message, and the next MX may well take it.
            let about_message = matches!(
                stage,
                Stage::MailFrom | Stage::RcptTo | Stage::Data | Stage::DataEnd
            );
            let permanence = if class == 5 && about_message {
                Permanent
            } else {
                Temporary
            };
            let status = reply_status(reply, permanence);
            return Classification {
                permanence,
                fault: PeerRefused,
                status,
            };
        }
        FailureKind::ConnectionLost(_) => (Temporary, PeerMisbehaved, (4, 4, 2)),
        FailureKind::Protocol(_) => (Temporary, PeerMisbehaved, (4, 5, 0)),
        FailureKind::Message(MessageProblem::SmtpUtf8NotOffered) => {
            (Permanent, PeerIncompatible, (5, 6, 7))
        }
        FailureKind::Message(MessageProblem::TooBig { .. }) => {
            (Permanent, PeerIncompatible, (5, 3, 4))
        }
        FailureKind::Message(MessageProblem::InvalidAddress(_)) => (Permanent, Local, (5, 1, 3)),
        FailureKind::Local(_) => (Temporary, Local, (4, 3, 0)),
    };
    Classification {
        permanence,
        fault,
        status: EnhancedCode(status.0, status.1, status.2),
    }
}

/// The reply's own enhanced code when it agrees with the permanence,
/// else `4.0.0` / `5.0.0`.
fn reply_status(reply: &Reply, permanence: Permanence) -> EnhancedCode {
    let class = match permanence {
        Permanence::Temporary => 4,
        Permanence::Permanent => 5,
    };
    match reply.enhanced {
        Some(code) if code.0 == class => code,
        _ => EnhancedCode(class, 0, 0),
    }
}

/// The host a failure happened with: `mx1.partner.test[127.0.0.2]`, or the
/// domain alone for routing failures.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostRef {
    pub name: String,
    pub ip: Option<IpAddr>,
}

impl HostRef {
    pub fn new(name: impl Into<String>, ip: Option<IpAddr>) -> Self {
        Self {
            name: name.into(),
            ip,
        }
    }
}

impl fmt::Display for HostRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            Some(ip) => write!(f, "{}[{ip}]", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A failure with the host it happened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub host: Option<HostRef>,
    pub kind: FailureKind,
    /// For a TLS policy failure: the requirement that was not met, as
    /// [`crate::Requirement::label`] names it (`domain verify`, `MTA-STS
    /// enforce`).
    pub policy: Option<String>,
}

impl Failure {
    pub fn new(host: Option<HostRef>, kind: FailureKind) -> Self {
        Self {
            host,
            kind,
            policy: None,
        }
    }

    /// Name the requirement a TLS policy failure is about.
    pub fn under(mut self, policy: String) -> Self {
        self.policy = Some(policy);
        self
    }

    pub fn classification(&self) -> Classification {
        classify(&self.kind)
    }

    pub fn permanence(&self) -> Permanence {
        self.classification().permanence
    }

    pub fn is_permanent(&self) -> bool {
        self.permanence() == Permanence::Permanent
    }

    pub fn fault(&self) -> Fault {
        self.classification().fault
    }

    /// RFC 3463 status text for the DSN, e.g. `5.1.1`.
    pub fn status(&self) -> String {
        self.classification().status.to_string()
    }

    /// The peer's reply, when the failure is one.
    pub fn reply(&self) -> Option<&Reply> {
        match &self.kind {
            FailureKind::Reply { reply, .. } => Some(reply),
            _ => None,
        }
    }

    /// The text for a recipient's `last_error`: host, then what failed.
    pub fn last_error(&self) -> String {
        self.to_string()
    }

    /// What failed, without the host (for DSN diagnostics and logs that
    /// name the host elsewhere).
    pub fn detail(&self) -> String {
        describe(&self.kind)
    }

    /// RFC 3464 `Diagnostic-Code` value: `smtp; 550 5.1.1 user unknown`
    /// for a reply, `X-Postern; <what failed>` otherwise.
    pub fn diagnostic_code(&self) -> String {
        match &self.kind {
            FailureKind::Reply { reply, .. } => format!("smtp; {reply}"),
            other => format!("X-Postern; {}", describe(other)),
        }
    }
}

impl fmt::Display for Failure {
    /// `host[ip]: what failed`; a TLS policy failure also names the
    /// requirement: `mx1.partner.test[192.0.2.2]: domain verify: certificate
    /// verification failed: ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(host) = &self.host {
            write!(f, "{host}: ")?;
        }
        if let Some(policy) = &self.policy {
            write!(f, "{policy}: ")?;
        }
        f.write_str(&describe(&self.kind))
    }
}

impl std::error::Error for Failure {}

fn describe(kind: &FailureKind) -> String {
    match kind {
        FailureKind::Route(route) => route.to_string(),
        FailureKind::Connect(reason) => format!("connection failed: {reason}"),
        FailureKind::Timeout(Stage::Connect) => "connection timed out".into(),
        FailureKind::Timeout(Stage::Greeting) => "timeout waiting for the greeting".into(),
        FailureKind::Timeout(stage) => format!("timeout after {stage}"),
        FailureKind::TlsPolicy(policy) => policy.to_string(),
        FailureKind::Reply {
            stage: Stage::Greeting,
            reply,
        } => format!("{reply} (greeting)"),
        FailureKind::Reply { stage, reply } => format!("{reply} (in reply to {stage})"),
        FailureKind::ConnectionLost(Stage::Greeting) => {
            "connection closed before the greeting".into()
        }
        FailureKind::ConnectionLost(stage) => format!("connection closed after {stage}"),
        FailureKind::Protocol(what) => format!("protocol error: {what}"),
        FailureKind::Message(MessageProblem::SmtpUtf8NotOffered) => {
            "message needs SMTPUTF8, which the server does not offer".into()
        }
        FailureKind::Message(MessageProblem::TooBig { size, limit }) => {
            format!("message size {size} exceeds the server's limit of {limit} bytes")
        }
        FailureKind::Message(MessageProblem::InvalidAddress(address)) => {
            format!("invalid envelope address \"{}\"", address.escape_debug())
        }
        FailureKind::Local(what) => format!("local error: {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{CertFault, CertProblem};

    fn host() -> Option<HostRef> {
        Some(HostRef::new("mx1.partner.test", "127.0.0.2".parse().ok()))
    }

    fn reply(code: u16, enhanced: Option<(u8, u16, u16)>, text: &str) -> Reply {
        Reply {
            code,
            enhanced: enhanced.map(|(a, b, c)| EnhancedCode(a, b, c)),
            lines: vec![text.to_string()],
        }
    }

    #[test]
    fn every_layer_is_classified() {
        use Permanence::*;
        let rows: Vec<(FailureKind, Permanence, Fault, &str)> = vec![
            (
                FailureKind::Route(RouteError::NxDomain {
                    domain: "nx.test".into(),
                }),
                Permanent,
                Fault::Destination,
                "5.1.2",
            ),
            (
                FailureKind::Route(RouteError::NullMx {
                    domain: "null.test".into(),
                }),
                Permanent,
                Fault::Destination,
                "5.1.10",
            ),
            (
                FailureKind::Route(RouteError::NoRecords {
                    domain: "empty.test".into(),
                }),
                Permanent,
                Fault::Destination,
                "5.1.2",
            ),
            (
                FailureKind::Route(RouteError::Lookup {
                    name: "partner.test".into(),
                    record: "MX",
                    detail: "SERVFAIL".into(),
                }),
                Temporary,
                Fault::Network,
                "4.4.3",
            ),
            (
                FailureKind::Route(RouteError::NoAddress {
                    host: "mx.partner.test".into(),
                    detail: "no A/AAAA records".into(),
                }),
                Temporary,
                Fault::Destination,
                "4.4.4",
            ),
            (
                FailureKind::Connect("Connection refused".into()),
                Temporary,
                Fault::Network,
                "4.4.1",
            ),
            (
                FailureKind::Timeout(Stage::Connect),
                Temporary,
                Fault::Network,
                "4.4.1",
            ),
            (
                FailureKind::Timeout(Stage::DataEnd),
                Temporary,
                Fault::Network,
                "4.4.2",
            ),
            (
                FailureKind::TlsPolicy(TlsPolicyFailure::StartTlsNotOffered),
                Temporary,
                Fault::PeerIncompatible,
                "4.7.4",
            ),
            (
                FailureKind::TlsPolicy(TlsPolicyFailure::CertificateUnverified(CertProblem {
                    fault: CertFault::NotTrusted,
                    detail: "unknown issuer".into(),
                })),
                Temporary,
                Fault::PeerIncompatible,
                "4.7.5",
            ),
            (
                FailureKind::TlsPolicy(TlsPolicyFailure::HandshakeFailed("alert".into())),
                Temporary,
                Fault::PeerIncompatible,
                "4.7.5",
            ),
            (
                FailureKind::Reply {
                    stage: Stage::RcptTo,
                    reply: reply(550, Some((5, 1, 1)), "user unknown"),
                },
                Permanent,
                Fault::PeerRefused,
                "5.1.1",
            ),
            (
                FailureKind::Reply {
                    stage: Stage::RcptTo,
                    reply: reply(450, Some((4, 2, 0)), "mailbox busy"),
                },
                Temporary,
                Fault::PeerRefused,
                "4.2.0",
            ),
            (
                FailureKind::Reply {
                    stage: Stage::DataEnd,
                    reply: reply(554, None, "rejected"),
                },
                Permanent,
                Fault::PeerRefused,
                "5.0.0",
            ),
            (
                // An enhanced code of the wrong class is not trusted.
                FailureKind::Reply {
                    stage: Stage::MailFrom,
                    reply: reply(451, Some((5, 1, 1)), "confused"),
                },
                Temporary,
                Fault::PeerRefused,
                "4.0.0",
            ),
            (
                FailureKind::Reply {
                    stage: Stage::Greeting,
                    reply: reply(554, None, "go away"),
                },
                Temporary,
                Fault::PeerRefused,
                "4.0.0",
            ),
            (
                FailureKind::Reply {
                    stage: Stage::Helo,
                    reply: reply(550, None, "no thanks"),
                },
                Temporary,
                Fault::PeerRefused,
                "4.0.0",
            ),
            (
                FailureKind::ConnectionLost(Stage::RcptTo),
                Temporary,
                Fault::PeerMisbehaved,
                "4.4.2",
            ),
            (
                FailureKind::Protocol("garbage".into()),
                Temporary,
                Fault::PeerMisbehaved,
                "4.5.0",
            ),
            (
                FailureKind::Message(MessageProblem::SmtpUtf8NotOffered),
                Permanent,
                Fault::PeerIncompatible,
                "5.6.7",
            ),
            (
                FailureKind::Message(MessageProblem::TooBig { size: 10, limit: 5 }),
                Permanent,
                Fault::PeerIncompatible,
                "5.3.4",
            ),
            (
                FailureKind::Local("disk".into()),
                Temporary,
                Fault::Local,
                "4.3.0",
            ),
        ];
        for (kind, permanence, fault, status) in rows {
            let c = classify(&kind);
            assert_eq!(c.permanence, permanence, "{kind:?}");
            assert_eq!(c.fault, fault, "{kind:?}");
            assert_eq!(c.status.to_string(), status, "{kind:?}");
        }
    }

    #[test]
    fn last_error_names_host_and_failure() {
        let rows = [
            (
                FailureKind::TlsPolicy(TlsPolicyFailure::StartTlsNotOffered),
                "mx1.partner.test[127.0.0.2]: TLS required but STARTTLS not offered",
            ),
            (
                FailureKind::TlsPolicy(TlsPolicyFailure::CertificateUnverified(CertProblem {
                    fault: CertFault::NotTrusted,
                    detail: "certificate not issued by a trusted CA".into(),
                })),
                "mx1.partner.test[127.0.0.2]: certificate verification failed: \
                 certificate not issued by a trusted CA",
            ),
            (
                FailureKind::Reply {
                    stage: Stage::RcptTo,
                    reply: reply(550, Some((5, 1, 1)), "user unknown"),
                },
                "mx1.partner.test[127.0.0.2]: 550 5.1.1 user unknown (in reply to RCPT TO)",
            ),
            (
                FailureKind::Connect("Connection refused (os error 111)".into()),
                "mx1.partner.test[127.0.0.2]: connection failed: Connection refused (os error 111)",
            ),
            (
                FailureKind::Timeout(Stage::Greeting),
                "mx1.partner.test[127.0.0.2]: timeout waiting for the greeting",
            ),
        ];
        for (kind, text) in rows {
            let failure = Failure::new(host(), kind);
            assert_eq!(failure.last_error(), text);
        }
        let policy = Failure::new(
            host(),
            FailureKind::TlsPolicy(TlsPolicyFailure::CertificateUnverified(CertProblem {
                fault: CertFault::NotTrusted,
                detail: "certificate not issued by a trusted CA".into(),
            })),
        )
        .under("MTA-STS enforce".into());
        assert_eq!(
            policy.last_error(),
            "mx1.partner.test[127.0.0.2]: MTA-STS enforce: certificate verification failed: \
             certificate not issued by a trusted CA"
        );
        let route = Failure::new(
            None,
            FailureKind::Route(RouteError::NullMx {
                domain: "null.test".into(),
            }),
        );
        assert_eq!(
            route.last_error(),
            "null.test: domain does not accept mail (null MX)"
        );
        assert!(route.is_permanent());
    }

    #[test]
    fn diagnostic_codes() {
        let failure = Failure::new(
            host(),
            FailureKind::Reply {
                stage: Stage::RcptTo,
                reply: reply(550, Some((5, 1, 1)), "user unknown"),
            },
        );
        assert_eq!(failure.diagnostic_code(), "smtp; 550 5.1.1 user unknown");
        let failure = Failure::new(
            host(),
            FailureKind::Message(MessageProblem::SmtpUtf8NotOffered),
        );
        assert_eq!(
            failure.diagnostic_code(),
            "X-Postern; message needs SMTPUTF8, which the server does not offer"
        );
    }
}
