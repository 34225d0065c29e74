//! STARTTLS (RFC 3207) and the TLS handshake: injection check, the
//! verifying or accepting configuration, and what the attempt record learns
//! (version, cipher, verification).

use std::io;

use postern_proto::Reply;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use super::stream::{Io, Stream};
use super::{AttemptRecord, Timeouts};
use crate::classify::{Failure, FailureKind, Stage};
use crate::policy::HandshakeOutcome;
use crate::tls_client::{certificate_reason, server_name, ClientTls};

/// How STARTTLS went, with the connection when there still is one.
pub(super) enum Upgrade {
    /// TLS is up (the record holds version, cipher, verification).
    Established { io: Io, outcome: HandshakeOutcome },
    /// The server refused STARTTLS; the plaintext session goes on.
    Refused {
        io: Io,
        reply: Reply,
        outcome: HandshakeOutcome,
    },
    /// The handshake failed; the connection is gone.
    Failed { outcome: HandshakeOutcome },
}

impl Upgrade {
    pub(super) fn outcome(&self) -> &HandshakeOutcome {
        match self {
            Upgrade::Established { outcome, .. }
            | Upgrade::Refused { outcome, .. }
            | Upgrade::Failed { outcome } => outcome,
        }
    }
}

pub(super) fn describe_outcome(outcome: &HandshakeOutcome) -> String {
    match outcome {
        HandshakeOutcome::Established { .. } => "established".into(),
        HandshakeOutcome::Refused(reason)
        | HandshakeOutcome::CertificateRejected(reason)
        | HandshakeOutcome::Failed(reason) => reason.clone(),
    }
}

/// STARTTLS and the handshake. `Err` only for a protocol violation that
/// rules out both TLS and plaintext (bytes injected after the `220`).
pub(super) async fn starttls(
    mut io: Io,
    host: &str,
    tls: &ClientTls,
    verify: bool,
    timeouts: &Timeouts,
    record: &mut AttemptRecord,
) -> Result<Upgrade, FailureKind> {
    let failed = |record: &mut AttemptRecord, reason: String| {
        record.tls_error = Some(format!("TLS handshake failed: {reason}"));
        Upgrade::Failed {
            outcome: HandshakeOutcome::Failed(reason),
        }
    };
    let reply = match io
        .command("STARTTLS\r\n", timeouts.command, Stage::StartTls)
        .await
    {
        Ok(reply) => reply,
        // A connection that dies at STARTTLS is a failed handshake (and,
        // in opportunistic mode, a reason to retry in plaintext).
        Err(kind) => return Ok(failed(record, Failure::new(None, kind).detail())),
    };
    record.reply = reply.to_string();
    if reply.code != 220 {
        record.tls_error = Some(format!("STARTTLS refused: {reply}"));
        return Ok(Upgrade::Refused {
            io,
            outcome: HandshakeOutcome::Refused(reply.to_string()),
            reply,
        });
    }
    if !io.buf.is_empty() {
        let reason = "the server sent data after its 220 reply to STARTTLS \
                      (possible command injection); not starting TLS";
        record.tls_error = Some(reason.into());
        return Err(FailureKind::Protocol(reason.into()));
    }
    let Some(tcp) = io.into_plain() else {
        return Ok(failed(record, "TLS is already active".into()));
    };
    let name = match server_name(host) {
        Ok(name) => name,
        Err(e) => return Ok(failed(record, e.to_string())),
    };
    let connector = TlsConnector::from(tls.config(verify));
    let stream = match timeout(timeouts.command, connector.connect(name, tcp)).await {
        Err(_) => return Ok(failed(record, "timeout".into())),
        Ok(Err(e)) => {
            if let Some(reason) = certificate_rejection(&e) {
                record.cert_verified = Some(false);
                record.verify_error = Some(reason.clone());
                record.tls_error = Some(format!("certificate verification failed: {reason}"));
                return Ok(Upgrade::Failed {
                    outcome: HandshakeOutcome::CertificateRejected(reason),
                });
            }
            return Ok(failed(record, handshake_reason(&e)));
        }
        Ok(Ok(stream)) => stream,
    };

    let (_, connection) = stream.get_ref();
    if let Some(negotiated) = postern_tls::negotiated(connection) {
        record.tls_version = Some(negotiated.version);
        record.cipher = Some(negotiated.cipher);
    }
    record.cert_chain = connection
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(
            |cert| match postern_tls::describe_der(std::slice::from_ref(cert)) {
                Ok(info) => format!(
                    "{} (issuer {}, until {})",
                    info.subject, info.issuer, info.not_after
                ),
                Err(e) => format!("unreadable certificate: {e}"),
            },
        )
        .collect();
    let verified = if verify {
        // The verifying configuration checked chain and name in the handshake.
        Ok(())
    } else {
        tls.check_certificate(connection.peer_certificates(), host)
    };
    record.cert_verified = Some(verified.is_ok());
    record.verify_error = verified.as_ref().err().cloned();
    let outcome = HandshakeOutcome::Established {
        cert_verified: verified.is_ok(),
        verify_error: verified.err(),
    };
    Ok(Upgrade::Established {
        io: Io::new(Stream::Tls(Box::new(stream))),
        outcome,
    })
}

/// The certificate reason when the handshake failed because our verifier
/// rejected the server's certificate.
fn certificate_rejection(error: &io::Error) -> Option<String> {
    let inner = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    match inner {
        rustls::Error::InvalidCertificate(_) => Some(certificate_reason(inner)),
        _ => None,
    }
}

fn handshake_reason(error: &io::Error) -> String {
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidMessage(_)) => {
            format!("the server did not speak TLS ({error})")
        }
        Some(inner) => inner.to_string(),
        None if error.kind() == io::ErrorKind::UnexpectedEof => {
            "connection closed by the server".into()
        }
        None => io_reason(error),
    }
}

pub(super) fn io_reason(error: &io::Error) -> String {
    error.to_string()
}
