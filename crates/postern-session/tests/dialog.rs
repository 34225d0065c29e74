//! Session dialogs without sockets: every TLS mode and every refusal.

use std::net::SocketAddr;
use std::sync::Arc;

use postern_config::{ClientCertMode, DomainEntry, InboundMode, Settings};
use postern_session::{
    Action, ClientCert, Delivery, Session, SessionConfig, SessionEvent, TlsInfo, BODY_CHUNK,
};

const TRUSTED: &str = "127.0.0.1:40000";
const STRANGER: &str = "198.51.100.9:40000";

/// A message as the listener stored it: the envelope and the bytes.
struct Stored {
    delivery: Delivery,
    message: Vec<u8>,
}

impl std::ops::Deref for Stored {
    type Target = Delivery;
    fn deref(&self) -> &Delivery {
        &self.delivery
    }
}

/// Drives a session the way the listener does and records what it did.
struct Dialog {
    session: Session,
    stored: Vec<Stored>,
    /// The message begun and not yet enqueued or discarded.
    open: Option<Stored>,
    /// Messages begun and then discarded.
    discarded: usize,
    /// The largest `MessageData` handed over.
    largest_piece: usize,
    events: Vec<SessionEvent>,
    closed: bool,
    tls_requested: bool,
    store_fails: bool,
}

impl Dialog {
    fn new(settings: Settings, peer: &str) -> Self {
        Self::with_tls(settings, peer, None)
    }

    fn with_tls(settings: Settings, peer: &str, tls: Option<TlsInfo>) -> Self {
        let config = SessionConfig {
            hostname: "mx.postern.test".into(),
            settings: Arc::new(settings),
            trusted_networks: Arc::new(vec!["127.0.0.0/8".parse().expect("net")]),
            tls_available: true,
        };
        let peer: SocketAddr = peer.parse().expect("peer");
        let session = Session::new(config, peer, tls);
        assert_eq!(
            session.greeting().to_string(),
            "220 mx.postern.test ESMTP Postern"
        );
        Self {
            session,
            stored: Vec::new(),
            open: None,
            discarded: 0,
            largest_piece: 0,
            events: Vec::new(),
            closed: false,
            tls_requested: false,
            store_fails: false,
        }
    }

    /// Send bytes; return every reply line-group as display strings.
    fn send(&mut self, bytes: &str) -> Vec<String> {
        self.send_bytes(bytes.as_bytes())
    }

    fn send_bytes(&mut self, bytes: &[u8]) -> Vec<String> {
        assert!(!self.closed, "session already closed");
        self.session.receive(bytes);
        let mut replies = Vec::new();
        loop {
            match self.session.poll() {
                Action::Reply(reply) => replies.push(reply.to_string()),
                Action::NeedInput => break,
                Action::StartTls => {
                    self.tls_requested = true;
                    break;
                }
                Action::BeginMessage(delivery) => {
                    assert!(self.open.is_none(), "message begun twice");
                    self.open = Some(Stored {
                        delivery: *delivery,
                        message: Vec::new(),
                    });
                }
                Action::MessageData(bytes) => {
                    self.largest_piece = self.largest_piece.max(bytes.len());
                    let open = self.open.as_mut().expect("data without a message");
                    open.message.extend_from_slice(&bytes);
                }
                Action::Enqueue(last) => {
                    let mut message = self.open.take().expect("enqueue without a message");
                    message.message.extend_from_slice(&last);
                    let result = if self.store_fails {
                        Err("disk full".to_string())
                    } else {
                        self.stored.push(message);
                        Ok(format!("ID{}", self.stored.len()))
                    };
                    self.session.enqueued(result);
                }
                Action::DiscardMessage => {
                    assert!(self.open.take().is_some(), "discard without a message");
                    self.discarded += 1;
                }
                Action::Log(event) => self.events.push(event),
                Action::Close => {
                    assert!(self.open.is_none(), "closed with a message open");
                    self.closed = true;
                    break;
                }
            }
        }
        replies
    }

    fn finish_tls(&mut self, client_cert: Option<ClientCert>) {
        assert!(self.tls_requested, "STARTTLS was not started");
        self.tls_requested = false;
        self.session.tls_established(tls13(client_cert));
    }

    /// One command, one reply starting with `expected`.
    fn expect(&mut self, command: &str, expected: &str) {
        let replies = self.send(&format!("{command}\r\n"));
        assert_eq!(replies.len(), 1, "{command}: {replies:?}");
        assert!(
            replies[0].starts_with(expected),
            "{command}: got {:?}, want {expected}",
            replies[0]
        );
    }
}

fn tls13(client_cert: Option<ClientCert>) -> TlsInfo {
    TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "TLS13_AES_256_GCM_SHA384".into(),
        client_cert,
    }
}

fn settings_with(mode: InboundMode) -> Settings {
    let mut s = Settings::default();
    s.tls.inbound.mode = mode;
    s
}

fn send_message(d: &mut Dialog) {
    d.expect("MAIL FROM:<a@example.com>", "250 2.1.0");
    d.expect("RCPT TO:<b@example.org>", "250 2.1.5");
    d.expect("DATA", "354");
    let r = d.send("Subject: hi\r\n\r\nbody\r\n.\r\n");
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(r[0].starts_with("250 2.0.0 Ok: queued as ID"), "{r:?}");
}

#[test]
fn plain_message_in_offer_mode() {
    let mut d = Dialog::new(Settings::default(), TRUSTED);
    let ehlo = d.send("EHLO client.example\r\n");
    let caps = &ehlo[0];
    for cap in [
        "PIPELINING",
        "SIZE 52428800",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
        "SMTPUTF8",
        "CHUNKING",
    ] {
        assert!(caps.contains(cap), "{cap} missing from {caps}");
    }
    send_message(&mut d);
    assert_eq!(d.stored.len(), 1);
    let m = &d.stored[0];
    assert_eq!(m.sender, "a@example.com");
    assert_eq!(m.recipients, vec!["b@example.org"]);
    assert_eq!(m.message, b"Subject: hi\r\n\r\nbody\r\n");
    assert_eq!(m.protocol, "ESMTP");
    assert!(m.tls.is_none());
    d.expect("QUIT", "221 2.0.0");
    assert!(d.closed);
}

#[test]
fn mode_none_does_not_offer_starttls() {
    let mut d = Dialog::new(settings_with(InboundMode::None), TRUSTED);
    let ehlo = d.send("EHLO c\r\n");
    assert!(!ehlo[0].contains("STARTTLS"), "{ehlo:?}");
    d.expect("STARTTLS", "502 5.5.1");
    send_message(&mut d);
}

#[test]
fn require_mode_refuses_mail_before_starttls() {
    let mut d = Dialog::new(settings_with(InboundMode::Require), TRUSTED);
    d.send("EHLO c\r\n");
    d.expect(
        "MAIL FROM:<a@example.com>",
        "530 5.7.0 Must issue a STARTTLS command first",
    );
    d.expect("RCPT TO:<b@example.org>", "530 5.7.0");
    d.expect("DATA", "530 5.7.0");
    assert!(d
        .events
        .iter()
        .any(|e| matches!(e, SessionEvent::MessageRejected { .. })));
    d.expect("STARTTLS", "220 2.0.0");
    d.finish_tls(None);
    let ehlo = d.send("EHLO c\r\n");
    assert!(
        !ehlo[0].contains("STARTTLS"),
        "STARTTLS offered twice: {ehlo:?}"
    );
    send_message(&mut d);
    assert_eq!(d.stored[0].protocol, "ESMTPS");
    assert_eq!(
        d.stored[0].tls.as_ref().map(|t| t.version.as_str()),
        Some("TLSv1.3")
    );
}

#[test]
fn implicit_tls_session_accepts_mail() {
    let mut d = Dialog::with_tls(
        settings_with(InboundMode::Require),
        TRUSTED,
        Some(tls13(None)),
    );
    d.send("EHLO c\r\n");
    send_message(&mut d);
    d.expect("STARTTLS", "503 5.5.1 TLS already active");
}

#[test]
fn starttls_discards_pipelined_plaintext() {
    let mut d = Dialog::new(Settings::default(), TRUSTED);
    d.send("EHLO c\r\n");
    let r = d.send("STARTTLS\r\nRSET\r\nMAIL FROM:<evil@example.com>\r\n");
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(r[0].starts_with("220 "));
    // Bytes arriving before the handshake finishes are not SMTP input.
    d.session.receive(b"NOOP\r\n");
    d.finish_tls(None);
    // The injected commands were never answered, and the state was reset.
    d.expect(
        "MAIL FROM:<a@example.com>",
        "503 5.5.1 Send EHLO or HELO first",
    );
    d.send("EHLO c\r\n");
    send_message(&mut d);
}

#[test]
fn starttls_refused_during_transaction() {
    let mut d = Dialog::new(Settings::default(), TRUSTED);
    d.send("EHLO c\r\n");
    d.expect("MAIL FROM:<a@example.com>", "250");
    d.expect("STARTTLS", "503 5.5.1");
}

#[test]
fn client_certificate_required() {
    let mut s = settings_with(InboundMode::Require);
    s.tls.inbound.client_certificate = ClientCertMode::Require;
    s.tls.inbound.trusted_client_ca = vec!["Test CA".into()];
    let unverified = ClientCert {
        subject: "CN=stranger".into(),
        verified: false,
    };
    let mut d = Dialog::with_tls(s.clone(), TRUSTED, Some(tls13(Some(unverified))));
    d.send("EHLO c\r\n");
    d.expect("MAIL FROM:<a@example.com>", "530 5.7.1");

    let mut d = Dialog::with_tls(s.clone(), TRUSTED, Some(tls13(None)));
    d.send("EHLO c\r\n");
    d.expect("MAIL FROM:<a@example.com>", "530 5.7.1");

    let verified = ClientCert {
        subject: "CN=agent".into(),
        verified: true,
    };
    let mut d = Dialog::with_tls(s, TRUSTED, Some(tls13(Some(verified))));
    d.send("EHLO c\r\n");
    send_message(&mut d);
}

#[test]
fn relay_control() {
    let mut s = Settings::default();
    s.domains.push(DomainEntry {
        name: "corp.example".into(),
        relay: true,
        next_hop: None,
        tls: None,
        mta_sts: true,
        dane: true,
        monitor: false,
    });
    s.domains.push(DomainEntry {
        name: "*.corp.example".into(),
        relay: true,
        next_hop: None,
        tls: None,
        mta_sts: true,
        dane: true,
        monitor: false,
    });
    let mut d = Dialog::new(s, STRANGER);
    d.send("EHLO c\r\n");
    d.expect("MAIL FROM:<a@example.com>", "250");
    d.expect("RCPT TO:<b@example.org>", "554 5.7.1 Relaying denied");
    d.expect("RCPT TO:<b@[127.0.0.1]>", "554 5.7.1");
    d.expect("RCPT TO:<b@Corp.Example>", "250 2.1.5");
    d.expect("RCPT TO:<c@eu.corp.example>", "250 2.1.5");
    d.expect("RCPT TO:<d@notcorp.example>", "554 5.7.1");
    d.expect("DATA", "354");
    d.send("x\r\n.\r\n");
    assert_eq!(
        d.stored[0].recipients,
        vec!["b@corp.example", "c@eu.corp.example"]
    );
    let rejected = d
        .events
        .iter()
        .filter(|e| matches!(e, SessionEvent::RecipientRejected { .. }))
        .count();
    assert_eq!(rejected, 3);
}

#[test]
fn size_limits() {
    let mut s = Settings::default();
    s.mta.max_message_size = 100;
    let mut d = Dialog::new(s, TRUSTED);
    let ehlo = d.send("EHLO c\r\n");
    assert!(ehlo[0].contains("SIZE 100"));
    d.expect("MAIL FROM:<a@example.com> SIZE=101", "552 5.3.4");
    d.expect("MAIL FROM:<a@example.com> SIZE=100", "250");
    d.expect("RCPT TO:<b@example.org>", "250");
    d.expect("DATA", "354");
    let big = format!("{}\r\n.\r\n", "x".repeat(200));
    let r = d.send(&big);
    assert!(r[0].starts_with("552 5.3.4"), "{r:?}");
    assert!(d.stored.is_empty());
    // The session goes on.
    send_message(&mut d);
}

#[test]
fn too_many_recipients() {
    let mut s = Settings::default();
    s.mta.max_recipients = 2;
    let mut d = Dialog::new(s, TRUSTED);
    d.send("EHLO c\r\n");
    d.expect("MAIL FROM:<a@example.com>", "250");
    d.expect("RCPT TO:<1@example.org>", "250");
    d.expect("RCPT TO:<2@example.org>", "250");
    d.expect("RCPT TO:<1@example.org>", "250"); // duplicate: accepted once
    d.expect("RCPT TO:<3@example.org>", "452 4.5.3");
}

#[test]
fn smuggling_never_makes_two_messages() {
    // Bare CR/LF around the dot: refused outright.
    let refused: [&[u8]; 7] = [
        b"\n.\n",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r",
        b"\r\n.\r",
        b"\r.\r\n",
        b"\n.\r\r\n",
    ];
    // NUL before the dot: ordinary data, so one message that contains the rest.
    let one_message: [&[u8]; 2] = [b"\r\n\x00.\r\n", b"\r\n.\x00\r\n"];
    for (variant, expect_refusal) in refused
        .iter()
        .map(|v| (v, true))
        .chain(one_message.iter().map(|v| (v, false)))
    {
        let mut d = Dialog::new(Settings::default(), TRUSTED);
        d.send("EHLO c\r\n");
        d.expect("MAIL FROM:<a@example.com>", "250");
        d.expect("RCPT TO:<b@example.org>", "250");
        d.expect("DATA", "354");
        let mut payload = b"Subject: one\r\n\r\nhello".to_vec();
        payload.extend_from_slice(variant);
        payload.extend_from_slice(b"MAIL FROM:<smuggled@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nSubject: two\r\n\r\nsmuggled\r\n.\r\n");
        let replies = d.send_bytes(&payload);
        assert_eq!(replies.len(), 1, "{variant:?}: {replies:?}");
        if expect_refusal {
            assert!(d.stored.is_empty(), "{variant:?} let a message through");
            assert!(
                replies[0].starts_with("550 5.5.2"),
                "{variant:?}: {replies:?}"
            );
        } else {
            assert_eq!(d.stored.len(), 1, "{variant:?}");
            let body = String::from_utf8_lossy(&d.stored[0].message).into_owned();
            assert!(
                body.contains("smuggled@example.com"),
                "{variant:?}: the rest must stay inside the one message"
            );
            assert_eq!(d.stored[0].sender, "a@example.com");
        }
    }
}

#[test]
fn pipelined_transaction_answers_in_order() {
    let mut d = Dialog::new(Settings::default(), TRUSTED);
    d.send("EHLO c\r\n");
    let r = d.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\nDATA\r\n");
    let codes: Vec<&str> = r.iter().map(|x| &x[..3]).collect();
    assert_eq!(codes, ["250", "250", "250", "354"]);
    let r = d.send("x\r\n..dot\r\n.\r\nMAIL FROM:<a@example.com>\r\n");
    assert!(r[0].starts_with("250 2.0.0 Ok: queued as ID1"), "{r:?}");
    assert!(r[1].starts_with("250 2.1.0"), "{r:?}");
    assert_eq!(d.stored[0].message, b"x\r\n.dot\r\n");
}

#[test]
fn storage_failure_acknowledges_nothing() {
    let mut d = Dialog::new(Settings::default(), TRUSTED);
    d.store_fails = true;
    d.send("EHLO c\r\n");
    d.expect("MAIL FROM:<a@example.com>", "250");
    d.expect("RCPT TO:<b@example.org>", "250");
    d.expect("DATA", "354");
    let r = d.send("x\r\n.\r\n");
    assert!(r[0].starts_with("451 4.3.0"), "{r:?}");
}

#[test]
fn bdat_chunks() {
    let mut d = Dialog::new(Settings::default(), TRUSTED);
    d.send("EHLO c\r\n");
    // Without a transaction the chunk is read and dropped, then refused.
    let r = d.send("BDAT 5\r\nhello");
    assert!(r[0].starts_with("503 5.5.1"), "{r:?}");
    d.expect("MAIL FROM:<a@example.com>", "250");
    d.expect("RCPT TO:<b@example.org>", "250");
    let r = d.send("BDAT 12\r\nSubject: x\r\n");
    assert_eq!(r, ["250 2.0.0 12 octets received"]);
    d.expect("DATA", "503 5.5.1");
    let r = d.send("BDAT 6 LAST\r\n\r\nbody");
    assert!(r[0].starts_with("250 2.0.0 Ok: queued as"), "{r:?}");
    assert_eq!(d.stored[0].message, b"Subject: x\r\n\r\nbody\r\n");
}

#[test]
fn bdat_with_bare_lf_refused() {
    let mut d = Dialog::new(Settings::default(), TRUSTED);
    d.send("EHLO c\r\n");
    d.expect("MAIL FROM:<a@example.com>", "250");
    d.expect("RCPT TO:<b@example.org>", "250");
    let r = d.send("BDAT 9 LAST\r\na\n.\nb\r\n\r\n");
    assert!(r[0].starts_with("550 5.5.2"), "{r:?}");
    assert!(d.stored.is_empty());
}

#[test]
fn sequence_and_syntax_errors() {
    let mut d = Dialog::new(Settings::default(), TRUSTED);
    d.expect("MAIL FROM:<a@example.com>", "503 5.5.1");
    d.send("EHLO c\r\n");
    d.expect("RCPT TO:<b@example.org>", "503 5.5.1");
    d.expect("DATA", "503 5.5.1");
    d.expect("MAIL FROM:<a@example.com>", "250");
    d.expect("DATA", "554 5.5.1");
    d.expect("MAIL FROM:<a@example.com>", "503 5.5.1 Nested");
    d.expect("RSET", "250");
    // A fresh session: the one above is close to the error limit.
    let mut d = Dialog::new(Settings::default(), TRUSTED);
    d.send("EHLO c\r\n");
    d.expect("MAIL FROM:<a@example.com> FOO=BAR", "555 5.5.4");
    d.expect("MAIL FROM:<a@example.com> BODY=BINARYMIME", "555 5.5.4");
    d.expect("MAIL FROM:<jörg@example.com>", "553 5.6.7");
    d.expect("MAIL FROM:<jörg@example.com> SMTPUTF8", "250");
    d.expect("AUTH PLAIN AGFiAGM=", "503 5.5.1");
    d.expect("VRFY root", "502 5.5.1");
    d.expect("FROB", "500 5.5.1");
    d.expect("RCPT TO:<Postmaster>", "550 5.1.1");
}

#[test]
fn line_limits() {
    let mut d = Dialog::new(Settings::default(), TRUSTED);
    d.send("EHLO c\r\n");
    let long = format!("NOOP {}\r\n", "x".repeat(10_000));
    let r = d.send(&long);
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(r[0].starts_with("500 5.5.2 Line too long"), "{r:?}");
    d.expect("NOOP", "250");
    // An over-long line arriving in pieces is refused once.
    let r = d.send(&"y".repeat(5000));
    assert!(r[0].starts_with("500 5.5.2"), "{r:?}");
    assert!(d.send(&"y".repeat(5000)).is_empty());
    d.send("\r\n");
    d.expect("NOOP", "250");
    let r = d.send("NOOP\n");
    assert_eq!(r, ["500 5.5.2 Command lines must end with <CR><LF>"]);
    d.expect("NO\0OP", "500 5.5.2");
}

#[test]
fn too_many_errors_close_the_session() {
    let mut d = Dialog::new(Settings::default(), TRUSTED);
    let mut all = Vec::new();
    for _ in 0..10 {
        all.extend(d.send("FROB\r\n"));
    }
    assert!(d.closed);
    assert!(
        all.last().is_some_and(|r| r.starts_with("421 4.7.0")),
        "{all:?}"
    );
}

#[test]
fn http_to_smtp_port_is_closed() {
    let mut d = Dialog::new(Settings::default(), TRUSTED);
    let r = d.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(r[0].starts_with("421"), "{r:?}");
    assert!(d.closed);
}

#[test]
fn helo_is_plain_smtp() {
    let mut d = Dialog::new(Settings::default(), TRUSTED);
    let r = d.send("HELO c\r\n");
    assert_eq!(r, ["250 mx.postern.test Hello c"]);
    d.expect("MAIL FROM:<a@example.com> SIZE=10", "555 5.5.4");
    send_message(&mut d);
    assert_eq!(d.stored[0].protocol, "SMTP");
}

#[test]
fn unsendable_recipients_refused_at_rcpt() {
    // issue 16 item 3: what the outbound client would refuse is refused
    // here, so nothing is accepted that could only bounce (backscatter).
    let mut s = Settings::default();
    s.domains.push(DomainEntry {
        name: "relay.test".into(),
        relay: true,
        next_hop: None,
        tls: None,
        mta_sts: true,
        dane: true,
        monitor: false,
    });
    let mut d = Dialog::new(s, STRANGER);
    d.send("EHLO c\r\n");
    d.expect("MAIL FROM:<forged@elsewhere.test>", "250");
    d.expect("RCPT TO:<\"x<y>\"@relay.test>", "501 5.1.3");
    d.expect("RCPT TO:<\"x\\>\"@relay.test>", "501 5.1.3");
    let long = format!("RCPT TO:<{}@relay.test>", "a".repeat(65));
    d.expect(&long, "501 5.1.3");
    d.expect("RCPT TO:<a@relay.test@elsewhere.test>", "501 5.1.3");
    d.expect("DATA", "554");
    // Unusual but sendable forms still go through.
    d.expect("RCPT TO:<\"john doe\"@relay.test>", "250");
    d.expect("RCPT TO:<first.last+tag@relay.test>", "250");
    d.expect("DATA", "354");
    d.send("Subject: x\r\n\r\nhi\r\n.\r\n");
    assert_eq!(d.stored.len(), 1);
    assert_eq!(
        d.stored[0].recipients,
        vec![
            "\"john doe\"@relay.test".to_string(),
            "first.last+tag@relay.test".to_string()
        ]
    );
}

/// A body of `lines` lines of 78 characters (80 with CRLF), some starting
/// with a dot, and its dot-stuffed wire form.
fn big_body(lines: usize) -> (Vec<u8>, Vec<u8>) {
    let mut content = b"Subject: big\r\n\r\n".to_vec();
    for i in 0..lines {
        let first = if i % 5 == 0 { '.' } else { 'x' };
        content.extend_from_slice(format!("{first}{:077}\r\n", i).as_bytes());
    }
    let mut wire = Vec::new();
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    wire.extend_from_slice(b".\r\n");
    (content, wire)
}

fn begin_transaction(d: &mut Dialog) {
    d.send("EHLO c\r\n");
    d.expect("MAIL FROM:<a@example.com>", "250");
    d.expect("RCPT TO:<b@example.org>", "250");
}

#[test]
fn large_message_is_handed_over_in_bounded_pieces() {
    let (content, wire) = big_body(40_000); // 3.2 MB
    for piece in [1000, 8192, 100_000, wire.len()] {
        let mut d = Dialog::new(Settings::default(), TRUSTED);
        begin_transaction(&mut d);
        d.expect("DATA", "354");
        assert!(d.open.is_some(), "the message is begun at 354");
        let mut replies = Vec::new();
        let mut sent = 0;
        for chunk in wire.chunks(piece) {
            replies.extend(d.send_bytes(chunk));
            sent += chunk.len();
            // Before the end, all but a bounded rest was handed over.
            if replies.is_empty() {
                let held = sent - d.open.as_ref().unwrap().message.len();
                // Wire bytes include the stuffing dots: 1 per 5 lines.
                assert!(
                    held < 2 * BODY_CHUNK + sent / 400,
                    "session holds {held} bytes"
                );
            }
        }
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert!(replies[0].starts_with("250 2.0.0"), "{replies:?}");
        assert!(d.largest_piece <= 2 * BODY_CHUNK, "{}", d.largest_piece);
        assert_eq!(d.stored[0].message, content, "piece size {piece}");
    }
}

#[test]
fn an_idle_session_gives_back_the_buffers_a_message_grew() {
    let (content, wire) = big_body(3_000); // 240 KB, sent in one piece
    let mut bdat = format!("BDAT {} LAST\r\n", content.len()).into_bytes();
    bdat.extend_from_slice(&content);
    for (data, body) in [(&b"DATA\r\n"[..], wire), (b"", bdat)] {
        let mut d = Dialog::new(Settings::default(), TRUSTED);
        begin_transaction(&mut d);
        if !data.is_empty() {
            assert_eq!(d.send_bytes(data).len(), 1);
        }
        let replies = d.send_bytes(&body);
        assert!(
            replies.last().is_some_and(|r| r.starts_with("250 2.0.0")),
            "{replies:?}"
        );
        assert_eq!(d.stored.len(), 1);
        assert!(
            d.session.buffered_capacity() <= 1024,
            "idle session holds {} bytes of buffer",
            d.session.buffered_capacity()
        );
        // And it still reads the next command.
        d.expect("NOOP", "250");
    }
}

#[test]
fn large_bdat_message_is_handed_over_in_bounded_pieces() {
    let (content, _) = big_body(20_000);
    let mut d = Dialog::new(Settings::default(), TRUSTED);
    begin_transaction(&mut d);
    let (first, second) = content.split_at(700_001);
    let r = d.send_bytes(&[format!("BDAT {}\r\n", first.len()).as_bytes(), first].concat());
    assert_eq!(r, [format!("250 2.0.0 {} octets received", first.len())]);
    let handed = d.open.as_ref().unwrap().message.len();
    assert!(
        first.len() - handed < 2 * BODY_CHUNK,
        "held {}",
        first.len() - handed
    );
    d.expect(
        "RCPT TO:<late@example.org>",
        "503 5.5.1 RCPT not allowed after BDAT",
    );
    let r = d.send_bytes(&[format!("BDAT {} LAST\r\n", second.len()).as_bytes(), second].concat());
    assert!(r[0].starts_with("250 2.0.0 Ok: queued"), "{r:?}");
    assert!(d.largest_piece <= 2 * BODY_CHUNK);
    assert_eq!(d.stored[0].message, content);
    assert_eq!(d.stored[0].recipients, ["b@example.org"]);
}

#[test]
fn refused_or_abandoned_messages_are_discarded_at_once() {
    let mut s = Settings::default();
    s.mta.max_message_size = 200_000;
    // Over the limit: discarded as soon as the limit is passed, long
    // before the end of data; the 552 comes at the end.
    let mut d = Dialog::new(s.clone(), TRUSTED);
    begin_transaction(&mut d);
    d.expect("DATA", "354");
    let (_, wire) = big_body(10_000);
    assert!(d.send_bytes(&wire[..300_000]).is_empty());
    assert_eq!(d.discarded, 1);
    let r = d.send_bytes(&wire[300_000..]);
    assert!(r[0].starts_with("552 5.3.4"), "{r:?}");
    assert!(d.stored.is_empty());
    // A bare LF: discarded at once, refused at the end.
    begin_transaction(&mut d);
    d.expect("DATA", "354");
    assert!(d.send("ok\r\nbare\nline\r\nmore\r\n").is_empty());
    assert_eq!(d.discarded, 2);
    let r = d.send(".\r\n");
    assert!(r[0].starts_with("550 5.5.2"), "{r:?}");
    // A BDAT chunk announced past the limit.
    begin_transaction(&mut d);
    d.send("BDAT 300000\r\nxx");
    assert_eq!(d.discarded, 3);
    assert!(d.open.is_none());
    // RSET between chunks.
    let mut d = Dialog::new(s.clone(), TRUSTED);
    begin_transaction(&mut d);
    d.send("BDAT 3\r\nab\n");
    d.send("BDAT 4\r\nabc\n");
    assert_eq!(d.discarded, 1, "bare LF across chunks");
    begin_transaction(&mut d);
    d.send("BDAT 4\r\nab\r\n");
    d.expect("RSET", "250");
    assert_eq!(d.discarded, 2);
    assert!(d.stored.is_empty());
    // QUIT between chunks: discarded before the close.
    begin_transaction(&mut d);
    d.send("BDAT 4\r\nab\r\n");
    d.send("QUIT\r\n");
    assert_eq!(d.discarded, 3);
    assert!(d.closed);
    assert!(d.stored.is_empty());
}

/// REQUIRETLS (RFC 8689): offered only inside TLS, refused in plaintext
/// with a 5xx, carried on the stored message when accepted.
#[test]
fn requiretls_only_inside_tls() {
    let mut d = Dialog::new(Settings::default(), TRUSTED);
    let ehlo = d.send("EHLO c\r\n");
    assert!(
        !ehlo[0].contains("REQUIRETLS"),
        "offered in plaintext: {ehlo:?}"
    );
    d.expect(
        "MAIL FROM:<a@example.com> REQUIRETLS",
        "530 5.7.10 REQUIRETLS is only accepted in a TLS session",
    );
    // The refusal opened no transaction: a plain MAIL still works.
    d.expect("MAIL FROM:<a@example.com>", "250 2.1.0");
    d.expect("RSET", "250");
    d.expect("STARTTLS", "220 2.0.0");
    d.finish_tls(None);
    let ehlo = d.send("EHLO c\r\n");
    assert!(ehlo[0].contains(" / REQUIRETLS"), "{ehlo:?}");
    d.expect("MAIL FROM:<a@example.com> REQUIRETLS", "250 2.1.0");
    d.expect("RCPT TO:<b@example.org>", "250 2.1.5");
    d.expect("DATA", "354");
    let r = d.send("Subject: hi\r\n\r\nbody\r\n.\r\n");
    assert!(r[0].starts_with("250 2.0.0"), "{r:?}");
    assert!(d.stored[0].requiretls);
    // The flag belongs to one transaction only.
    send_message(&mut d);
    assert!(!d.stored[1].requiretls);
}

#[test]
fn requiretls_off_is_neither_offered_nor_accepted() {
    let mut s = Settings::default();
    s.mta.requiretls = false;
    let mut d = Dialog::with_tls(s, STRANGER, Some(tls13(None)));
    let ehlo = d.send("EHLO c\r\n");
    assert!(!ehlo[0].contains("REQUIRETLS"), "{ehlo:?}");
    d.expect(
        "MAIL FROM:<a@example.com> REQUIRETLS",
        "555 5.5.4 Unsupported parameter REQUIRETLS",
    );
    // Implicit TLS with the setting on: offered and accepted.
    let mut d = Dialog::with_tls(Settings::default(), STRANGER, Some(tls13(None)));
    assert!(d.send("EHLO c\r\n")[0].contains("REQUIRETLS"));
    d.expect("MAIL FROM:<a@example.com> REQUIRETLS", "250 2.1.0");
    // HELO sessions have no ESMTP parameters at all.
    let mut d = Dialog::with_tls(Settings::default(), STRANGER, Some(tls13(None)));
    d.expect("HELO c", "250");
    d.expect("MAIL FROM:<a@example.com> REQUIRETLS", "555 5.5.4");
}
