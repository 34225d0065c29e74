//! `session`: a whole inbound SMTP dialog with arbitrary client bytes,
//! driven the way the listener drives [`Session`].
//!
//! Input: one byte choosing the settings, the client and what the driver
//! reports back (TLS handshake outcome and client certificate, storage
//! failures), two bytes seeding the read splits, then everything the
//! client sends (after STARTTLS, the rest continues "inside" TLS).
//!
//! Invariants, the security rules visible from outside:
//! * no panics, and bounded work: the number of actions and the bytes of
//!   replies are bounded by the input;
//! * every reply renders as whole CRLF-terminated lines, never a bare CR
//!   or LF (no reply injection);
//! * nothing pipelined after STARTTLS survives the handshake (CVE-2011-0411);
//! * under `tls.inbound.mode = require` no message is stored without TLS,
//!   and with a required client certificate not without a verified one;
//! * a client outside `trusted_networks` only gets mail stored for relay
//!   domains;
//! * a stored message has only CRLF line ends, fits the size limit, has
//!   1..=max_recipients recipients;
//! * after `Close` the session stays closed.

use std::net::SocketAddr;
use std::sync::Arc;

use postern_config::{ClientCertMode, DomainEntry, InboundMode, Settings};
use postern_session::{Action, ClientCert, Session, SessionConfig, TlsInfo};

use crate::{strict_crlf, Input, Splits};

/// Max message size in the fuzzed settings: small, to reach the limit.
const MAX_SIZE: u64 = 2000;
const MAX_RECIPIENTS: u32 = 5;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.byte();
    let seed = input.u16();
    let stream = input.rest();

    let settings = settings(flags);
    let require_tls = settings.tls.inbound.mode == InboundMode::Require;
    let require_cert = settings.tls.inbound.client_certificate == ClientCertMode::Require;
    let trusted = flags & 0x04 != 0;
    let peer: SocketAddr = if trusted {
        SocketAddr::from(([127, 0, 0, 1], 40000))
    } else {
        SocketAddr::from(([198, 51, 100, 9], 40000))
    };
    let implicit_tls = flags & 0x08 != 0;
    let handshake_ok = flags & 0x10 == 0;
    let client_cert = match (flags >> 5) & 3 {
        0 => None,
        1 => Some(ClientCert {
            subject: "CN=client".into(),
            verified: true,
        }),
        _ => Some(ClientCert {
            subject: "CN=stranger".into(),
            verified: false,
        }),
    };
    let store_fails = flags & 0x80 != 0;
    let tls_info = TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "TLS13_AES_256_GCM_SHA384".into(),
        client_cert,
    };

    let config = SessionConfig {
        hostname: "mx.postern.test".into(),
        settings: Arc::new(settings.clone()),
        trusted_networks: Arc::new(vec!["127.0.0.0/8".parse().expect("network")]),
        tls_available: true,
    };
    let mut session = Session::new(config, peer, implicit_tls.then(|| tls_info.clone()));
    let mut out = session.greeting().to_bytes();

    // Generous but finite: a command line is at least 2 bytes and gets a
    // few replies at most; the EHLO reply is the largest.
    let max_actions = 16 + 4 * stream.len();
    let max_output = 8192 + 64 * stream.len();
    let mut actions = 0usize;
    let mut closed = false;
    // The message begun and the bytes handed over for it so far.
    let mut open: Option<(postern_session::Delivery, Vec<u8>)> = None;
    let mut splits = Splits::new(u64::from(seed));
    let piece_limit = 1 + usize::from(seed >> 8);
    let mut offset = 0;
    while offset < stream.len() && !closed {
        let n = splits.next(piece_limit).min(stream.len() - offset);
        session.receive(&stream[offset..offset + n]);
        offset += n;
        loop {
            actions += 1;
            assert!(actions <= max_actions, "runaway session: {actions} actions");
            match session.poll() {
                Action::NeedInput => break,
                Action::Reply(reply) => {
                    let bytes = reply.to_bytes();
                    check_reply_bytes(&bytes);
                    out.extend_from_slice(&bytes);
                    assert!(out.len() <= max_output, "output out of bounds");
                }
                Action::Log(_) => {}
                Action::StartTls => {
                    assert!(session.tls().is_none(), "STARTTLS inside TLS");
                    assert!(
                        !session.has_buffered_input(),
                        "plaintext pipelined after STARTTLS kept"
                    );
                    if !handshake_ok {
                        closed = true;
                        break;
                    }
                    session.tls_established(tls_info.clone());
                    assert!(!session.has_buffered_input());
                }
                Action::BeginMessage(delivery) => {
                    assert!(open.is_none(), "message begun twice");
                    open = Some((*delivery, Vec::new()));
                }
                Action::MessageData(bytes) => {
                    assert!(bytes.len() <= 2 * postern_session::BODY_CHUNK);
                    let (_, message) = open.as_mut().expect("data without a message");
                    message.extend_from_slice(&bytes);
                    assert!(message.len() as u64 <= MAX_SIZE, "passed on past the limit");
                }
                Action::DiscardMessage => {
                    assert!(open.take().is_some(), "discard without a message");
                }
                Action::Enqueue(last) => {
                    let (delivery, mut message) = open.take().expect("enqueue without a message");
                    message.extend_from_slice(&last);
                    let tls = session.tls();
                    if require_tls {
                        assert!(tls.is_some(), "mail stored without TLS under require");
                    }
                    if require_cert {
                        assert!(
                            tls.and_then(|t| t.client_cert.as_ref())
                                .is_some_and(|c| c.verified),
                            "mail stored without a verified client certificate"
                        );
                    }
                    assert!(!delivery.recipients.is_empty());
                    assert!(delivery.recipients.len() <= MAX_RECIPIENTS as usize);
                    assert!(message.len() as u64 <= MAX_SIZE + 2);
                    assert!(strict_crlf(&message), "bare CR/LF stored");
                    if !trusted {
                        for rcpt in &delivery.recipients {
                            let domain = rcpt.rsplit_once('@').map_or("", |(_, d)| d);
                            assert!(
                                settings.is_relay_domain(domain),
                                "relayed for a stranger to {rcpt}"
                            );
                        }
                    }
                    let _ = postern_session::received_header(
                        &delivery,
                        "mx.postern.test",
                        "Thu, 1 Jan 2026 00:00:00 +0000",
                    );
                    let _ = postern_session::message_id(&message);
                    let result = if store_fails {
                        Err("disk full".to_string())
                    } else {
                        Ok("01HF3K5Q8M0ABCDE".to_string())
                    };
                    session.enqueued(result);
                }
                Action::Close => {
                    assert!(open.is_none(), "closed with a message begun");
                    closed = true;
                    break;
                }
            }
        }
    }
    if closed {
        // A closed session ignores input and only says "close".
        session.receive(b"MAIL FROM:<a@b.test>\r\n");
        assert_eq!(session.poll(), Action::Close);
        assert!(!session.has_buffered_input());
    }
}

/// Settings chosen by the low two bits of `flags`.
fn settings(flags: u8) -> Settings {
    let mut settings = Settings::default();
    settings.mta.max_message_size = MAX_SIZE;
    settings.mta.max_recipients = MAX_RECIPIENTS;
    settings.domains = vec![
        DomainEntry {
            name: "relay.test".into(),
            relay: true,
            next_hop: None,
            tls: None,
            mta_sts: true,
            dane: true,
            monitor: false,
        },
        DomainEntry {
            name: "*.sub.test".into(),
            relay: true,
            next_hop: None,
            tls: None,
            mta_sts: true,
            dane: true,
            monitor: false,
        },
    ];
    match flags & 3 {
        0 => {}
        1 => settings.tls.inbound.mode = InboundMode::None,
        2 => settings.tls.inbound.mode = InboundMode::Require,
        _ => {
            settings.tls.inbound.mode = InboundMode::Require;
            settings.tls.inbound.client_certificate = ClientCertMode::Require;
        }
    }
    settings
}

/// Reply bytes are whole lines `NNN[ -]text CRLF` with no CR or LF inside.
fn check_reply_bytes(bytes: &[u8]) {
    assert!(bytes.ends_with(b"\r\n"));
    assert!(strict_crlf(bytes), "bare CR/LF in a reply: {bytes:?}");
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        assert!(line.len() >= 6, "short reply line {line:?}");
        assert!(line[..3].iter().all(u8::is_ascii_digit));
        assert!(line[3] == b' ' || line[3] == b'-');
    }
}
