//! The `Received:` trace header (RFC 5321 §4.4) and the Message-ID lookup.

use crate::session::Delivery;

/// The trace header for one hop, folded, ending in CRLF. `date` is an
/// RFC 5322 date-time supplied by the caller (the session has no clock).
///
/// ```text
/// Received: from client.example ([192.0.2.7])
///         by mx.example.test (Postern) with ESMTPS
///         (using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)
///         for <user@example.com>; Sat, 28 Nov 2026 06:00:00 +0000
/// ```
pub fn received_header(delivery: &Delivery, hostname: &str, date: &str) -> String {
    let mut header = format!(
        "Received: from {} ([{}])\r\n\tby {} (Postern) with {}",
        sanitize(&delivery.helo),
        delivery.peer.ip(),
        hostname,
        delivery.protocol
    );
    if let Some(tls) = &delivery.tls {
        header.push_str(&format!(
            "\r\n\t(using {} with cipher {})",
            sanitize(&tls.version),
            sanitize(&tls.cipher)
        ));
        if let Some(cert) = &tls.client_cert {
            let state = if cert.verified {
                "verified"
            } else {
                "not verified"
            };
            header.push_str(&format!(
                "\r\n\t(client certificate {state}: {})",
                sanitize(&cert.subject)
            ));
        }
    }
    if let [only] = delivery.recipients.as_slice() {
        header.push_str(&format!("\r\n\tfor <{}>", sanitize(only)));
    }
    header.push_str(&format!("; {date}\r\n"));
    header
}

/// Peer-supplied text in a header: printable ASCII only, no comment
/// delimiters that could end our comment early, bounded length.
fn sanitize(text: &str) -> String {
    text.chars()
        .take(200)
        .map(|c| match c {
            '(' | ')' | ';' | '<' | '>' | '\\' => '_',
            c if c.is_ascii_graphic() || c == ' ' => c,
            c if !c.is_ascii() && !c.is_control() => c,
            _ => '?',
        })
        .collect()
}

/// The value of the `Message-ID:` header, if the message has one.
pub fn message_id(message: &[u8]) -> Option<String> {
    let value = header_value(message, b"message-id")?;
    (!value.is_empty()).then_some(value)
}

/// Whether the header section in `message` (the first piece of a message,
/// as for [`message_id`]) has `TLS-Required: No` (RFC 8689 §5): the sender
/// asks that recipient-published TLS policies be ignored. A header beyond
/// the first piece is not seen, which errs on the safe side: the message
/// then keeps every policy.
pub fn tls_required_no(message: &[u8]) -> bool {
    header_value(message, b"tls-required").is_some_and(|v| v.eq_ignore_ascii_case("no"))
}

/// The unfolded, trimmed value of the first header field called `name` in
/// the header section at the start of `message`.
fn header_value(message: &[u8], name: &[u8]) -> Option<String> {
    let headers_end = find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 2);
    let headers = message.get(..headers_end)?;
    let mut lines = headers.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some((field, value)) = split_header(line) else {
            continue;
        };
        if !field.eq_ignore_ascii_case(name) {
            continue;
        }
        let mut value = String::from_utf8_lossy(value).into_owned();
        // Folded continuation lines.
        while let Some(next) = lines.peek() {
            if !next.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                break;
            }
            let next = next.strip_suffix(b"\r").unwrap_or(next);
            value.push_str(&String::from_utf8_lossy(next));
            lines.next();
        }
        return Some(value.trim().to_string());
    }
    None
}

fn split_header(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    let (name, rest) = line.split_at(colon);
    Some((name.trim_ascii_end(), rest.get(1..)?))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{ClientCert, TlsInfo};

    fn delivery(tls: Option<TlsInfo>, recipients: &[&str]) -> Delivery {
        Delivery {
            sender: "a@example.com".into(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            helo: "client.example (evil) ; x".into(),
            peer: "192.0.2.7:4000".parse().expect("addr"),
            tls,
            body: "7BIT",
            smtputf8: false,
            requiretls: false,
            protocol: "ESMTPS",
        }
    }

    #[test]
    fn names_tls_version_and_cipher() {
        let tls = TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
            client_cert: Some(ClientCert {
                subject: "CN=agent".into(),
                verified: true,
            }),
        };
        let h = received_header(&delivery(Some(tls), &["u@example.org"]), "mx.test", "DATE");
        assert!(
            h.starts_with("Received: from client.example _evil_ _ x ([192.0.2.7])\r\n"),
            "{h}"
        );
        assert!(h.contains("by mx.test (Postern) with ESMTPS\r\n"), "{h}");
        assert!(
            h.contains("(using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)"),
            "{h}"
        );
        assert!(h.contains("(client certificate verified: CN=agent)"), "{h}");
        assert!(h.ends_with("for <u@example.org>; DATE\r\n"), "{h}");
    }

    #[test]
    fn no_for_clause_with_several_recipients() {
        let h = received_header(&delivery(None, &["a@x.org", "b@x.org"]), "mx.test", "DATE");
        assert!(!h.contains("for <"), "{h}");
        assert!(!h.contains("using"), "{h}");
    }

    #[test]
    fn finds_message_id() {
        let m = b"From: a\r\nMessage-ID: <1@x>\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(message_id(m).as_deref(), Some("<1@x>"));
        let folded = b"message-id:\r\n <2@x>\r\nSubject: y\r\n\r\n";
        assert_eq!(message_id(folded).as_deref(), Some("<2@x>"));
        assert_eq!(message_id(b"Subject: y\r\n\r\nMessage-ID: <3@x>\r\n"), None);
    }

    #[test]
    fn tls_required_no_in_the_header_section_only() {
        #[rustfmt::skip]
        let rows: &[(&[u8], bool)] = &[
            (b"Subject: x\r\nTLS-Required: No\r\n\r\nbody\r\n", true),
            (b"tls-required:no\r\n\r\n", true),
            (b"TLS-Required:\r\n  NO \r\n\r\n", true),
            (b"TLS-Required: Yes\r\n\r\n", false),
            (b"TLS-Required: No thanks\r\n\r\n", false),
            (b"X-TLS-Required: No\r\n\r\n", false),
            (b"Subject: x\r\n\r\nTLS-Required: No\r\n", false),
            (b"Subject: x\r\n\r\n", false),
        ];
        for (message, want) in rows {
            assert_eq!(
                tls_required_no(message),
                *want,
                "{}",
                String::from_utf8_lossy(message)
            );
        }
    }
}
