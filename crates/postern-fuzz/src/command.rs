//! `command`: command-line framing ([`take_line`]) and the command parser
//! ([`Command::parse`]), over input from an untrusted SMTP client.
//!
//! Input: one byte choosing the line limit, then the stream of bytes the
//! client sent. The whole stream is also parsed as one line.

use postern_proto::{take_line, Command, LineError, ReversePath};

use crate::Input;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let max = match input.byte() {
        0 => 0,
        b @ 1..=127 => usize::from(b),
        _ => 4096,
    };
    let stream = input.rest();
    check_parse(stream);

    let mut rest = stream;
    // Every round consumes at least one byte or stops.
    for _ in 0..=stream.len() {
        match take_line(rest, max) {
            Ok(None) => {
                assert!(!rest.contains(&b'\n'), "need more, yet an LF is buffered");
                let pending = rest.strip_suffix(b"\r").unwrap_or(rest);
                assert!(pending.len() <= max, "need more, yet over the limit");
                return;
            }
            Ok(Some((line, consumed))) => {
                assert!(consumed >= 2 && consumed <= rest.len());
                assert_eq!(&rest[consumed - 2..consumed], b"\r\n");
                assert_eq!(line, &rest[..consumed - 2]);
                assert!(!line.contains(&b'\n'));
                assert!(line.len() <= max);
                // One byte less (the LF missing) is "need more", never a
                // different line.
                assert_eq!(take_line(&rest[..consumed - 1], max), Ok(None));
                check_parse(line);
                rest = &rest[consumed..];
            }
            Err(LineError::TooLong { consumed }) => {
                assert!(consumed > 0 && consumed <= rest.len());
                rest = &rest[consumed..];
            }
            Err(LineError::BareLf { consumed }) => {
                assert!(consumed > 0 && consumed <= rest.len());
                assert_eq!(rest[consumed - 1], b'\n');
                assert!(consumed < 2 || rest[consumed - 2] != b'\r');
                rest = &rest[consumed..];
            }
        }
    }
    panic!("take_line did not make progress");
}

/// Parse one line; what comes out must be safe to echo into replies,
/// `Received:` headers, the spool and outbound commands.
///
/// Addresses carry no control character at all (not even a C1 control such
/// as U+0085); the free text of VRFY/EXPN and ESMTP parameter values may be
/// any UTF-8 (RFC 6531 §3.3 `UTF8-non-ascii`) but no ASCII control, so no
/// CR, LF or NUL; parameter keywords are ASCII letters, digits and `-`.
fn check_parse(line: &[u8]) {
    let Ok(command) = Command::parse(line) else {
        return;
    };
    assert!(
        !line.iter().any(u8::is_ascii_control),
        "control characters accepted in {line:?}"
    );
    assert!(std::str::from_utf8(line).is_ok(), "invalid UTF-8 accepted");
    let clean = |s: &str| !s.chars().any(char::is_control);
    let no_ascii_control = |s: &str| !s.bytes().any(|b| b.is_ascii_control());
    let keyword =
        |k: &str| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let clean_address = |local: &str, domain: &str| {
        assert!(
            clean(local) && clean(domain),
            "control character in {local:?}@{domain:?}"
        );
        assert!(
            !domain.contains([' ', '<', '>', '"', '@']),
            "domain {domain:?}"
        );
        assert!(local.len() + domain.len() < 256, "path longer than 256");
    };
    let clean_params = |params: &[(String, Option<String>)]| {
        for (key, value) in params {
            assert!(keyword(key), "parameter keyword {key:?}");
            assert!(value.as_deref().is_none_or(no_ascii_control));
        }
    };
    match &command {
        Command::Ehlo(name) | Command::Helo(name) => {
            assert!(!name.is_empty() && clean(name));
        }
        Command::Mail { from, params } => {
            if let ReversePath::Mailbox(a) = from {
                clean_address(&a.local, &a.domain);
            }
            clean_params(&params.other);
        }
        Command::Rcpt { to, params } => {
            clean_address(&to.local, &to.domain);
            clean_params(&params.other);
        }
        Command::Vrfy(text) | Command::Expn(text) => assert!(no_ascii_control(text)),
        _ => {}
    }
}
