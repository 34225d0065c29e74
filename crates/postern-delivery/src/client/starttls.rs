//! STARTTLS (RFC 3207) and the TLS handshake: injection check, the
//! verifying or accepting configuration, and what the attempt record learns
//! (version, cipher, verification).

use std::io;
use std::sync::Arc;

use postern_proto::Reply;
use rustls::ClientConfig;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use super::stream::{Io, Stream};
use super::{AttemptRecord, Timeouts};
use crate::classify::{Failure, FailureKind, Stage};
use crate::policy::{CertProblem, TlsFailure};
use crate::tls_client::{certificate_problem, server_name, ClientTls};

/// How STARTTLS went, with the connection when there still is one.
pub(super) enum Upgrade {
    /// TLS is up (the record holds version, cipher, verification);
    /// `certificate` says whether it authenticated as PKIX for the host.
    Established {
        io: Io,
        certificate: Result<(), CertProblem>,
    },
    /// The server refused STARTTLS; the plaintext session goes on.
    Refused { io: Io, reply: Reply },
    /// The handshake failed; the connection is gone.
    Failed(TlsFailure),
}

/// STARTTLS and the handshake with `config`; `verifies` says whether that
/// configuration authenticates the certificate itself (else it is checked
/// afterwards, for the record). `Err` only for a protocol violation that
/// rules out both TLS and plaintext (bytes injected after the `220`).
pub(super) async fn starttls(
    mut io: Io,
    host: &str,
    tls: &ClientTls,
    (config, verifies): (Arc<ClientConfig>, bool),
    timeouts: &Timeouts,
    record: &mut AttemptRecord,
) -> Result<Upgrade, FailureKind> {
    let failed = |record: &mut AttemptRecord, reason: String| {
        record.tls_error = Some(format!("TLS handshake failed: {reason}"));
        Upgrade::Failed(TlsFailure::Failed(reason))
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
        return Ok(Upgrade::Refused { io, reply });
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
    let connector = TlsConnector::from(config);
    let stream = match timeout(timeouts.command, connector.connect(name, tcp)).await {
        Err(_) => return Ok(failed(record, "timeout".into())),
        Ok(Err(e)) => {
            if let Some(problem) = certificate_rejection(&e) {
                record.cert_verified = Some(false);
                record.verify_error = Some(problem.detail.clone());
                record.cert_problem = Some(problem.clone());
                record.tls_error = Some(format!("certificate verification failed: {problem}"));
                return Ok(Upgrade::Failed(TlsFailure::CertificateRejected(problem)));
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
    record.cert_names = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| postern_tls::describe_der(std::slice::from_ref(leaf)).ok())
        .map(|info| info.sans)
        .unwrap_or_default();
    let certificate = if verifies {
        // The verifying configuration checked chain and name in the handshake.
        Ok(())
    } else {
        tls.check_certificate(connection.peer_certificates(), host)
    };
    record.cert_verified = Some(certificate.is_ok());
    record.verify_error = certificate.as_ref().err().map(|p| p.detail.clone());
    record.cert_problem = certificate.as_ref().err().cloned();
    Ok(Upgrade::Established {
        io: Io::new(Stream::Tls(Box::new(stream))),
        certificate,
    })
}

/// What is wrong with the certificate when the handshake failed because
/// our verifier rejected it.
fn certificate_rejection(error: &io::Error) -> Option<CertProblem> {
    let inner = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    match inner {
        rustls::Error::InvalidCertificate(_) => Some(certificate_problem(inner)),
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
