//! Delivery status notifications (bounces): RFC 3464 `message/delivery-status`
//! inside an RFC 6522 `multipart/report`, with the original header section
//! as `text/rfc822-headers`. Addresses that are not ASCII use the RFC 6533
//! `utf-8` address type and `message/global-delivery-status`.
//!
//! The bounce is sent from the null sender (`MAIL FROM:<>`) by the runner;
//! [`should_bounce`] says whether a failed message gets one at all (never a
//! bounce to a bounce). Output has CRLF line endings and no line of 998
//! bytes or more (RFC 5322 §2.1.1): long fields are folded, long original
//! header lines are split.

use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc2822;
use time::OffsetDateTime;

/// Longest line we write, without CRLF (RFC 5322 allows 998).
const MAX_LINE: usize = 990;
/// Preferred width for folded fields.
const FOLD_AT: usize = 78;
/// At most this much of the original is looked at for its header section:
/// a bounce never carries (or reads) more of a large message than this.
pub const MAX_ORIGINAL_HEADERS: usize = 64 * 1024;

/// One recipient the bounce reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRecipient {
    /// The recipient address, without angle brackets.
    pub recipient: String,
    /// RFC 3463 status, e.g. `5.1.1` (see [`crate::Failure::status`]).
    pub status: String,
    /// What went wrong: the remote reply (`550 5.1.1 user unknown`) or our
    /// own description (see [`crate::Failure::diagnostic_code`] for a ready
    /// `type; text` value).
    pub diagnostic: String,
    /// The host that answered, if one did (`mx1.partner.test`).
    pub remote_mta: Option<String>,
}

/// Everything a bounce says; [`Bounce::render`] builds the message.
#[derive(Debug, Clone)]
pub struct Bounce<'a> {
    /// The original envelope sender, who receives the bounce.
    pub original_sender: &'a str,
    /// Our host name (`Reporting-MTA`, `From: MAILER-DAEMON@…`).
    pub reporting_mta: &'a str,
    /// When the original message was received, unix seconds.
    pub arrival_date: i64,
    /// When the bounce is written, unix seconds (`Date:`).
    pub date: i64,
    pub failed: &'a [FailedRecipient],
    /// The original message's header section (or its first bytes: only
    /// the part before the first empty line, and at most
    /// [`MAX_ORIGINAL_HEADERS`] of it in whole lines, is used).
    pub original_headers: &'a [u8],
}

/// Whether a message from `sender` that failed gets a bounce: not for the
/// null sender (RFC 5321 §4.5.5), so bounces never loop.
pub fn should_bounce(sender: &str) -> bool {
    let sender = sender.trim();
    !(sender.is_empty() || sender == "<>")
}

/// Build a bounce dated now (see [`Bounce`] for the fields).
pub fn bounce(
    original_sender: &str,
    reporting_mta: &str,
    arrival_date: i64,
    failed: &[FailedRecipient],
    original_headers: &[u8],
) -> Vec<u8> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Bounce {
        original_sender,
        reporting_mta,
        arrival_date,
        date: now,
        failed,
        original_headers,
    }
    .render()
}

/// The header section of a message: everything up to and including the
/// empty line that ends it (the whole message if there is none).
pub fn header_section(message: &[u8]) -> &[u8] {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => message.get(..end + 4).unwrap_or(message),
        None if message.starts_with(b"\r\n") => message.get(..2).unwrap_or(message),
        None => message,
    }
}

/// At most [`MAX_ORIGINAL_HEADERS`] of `headers`, cut after a line end
/// when it has to be cut.
fn bounded_lines(headers: &[u8]) -> &[u8] {
    if headers.len() <= MAX_ORIGINAL_HEADERS {
        return headers;
    }
    let prefix = headers.get(..MAX_ORIGINAL_HEADERS).unwrap_or(headers);
    match prefix.iter().rposition(|&b| b == b'\n') {
        Some(end) => prefix.get(..=end).unwrap_or(prefix),
        None => prefix,
    }
}

impl Bounce<'_> {
    /// The complete bounce message, CRLF line endings.
    pub fn render(&self) -> Vec<u8> {
        let utf8 =
            self.failed.iter().any(|f| !f.recipient.is_ascii()) || !self.original_sender.is_ascii();
        let boundary = boundary(self.date, self.reporting_mta);
        let mta = clean(self.reporting_mta);
        let mut out = Out::default();

        out.field(
            "From",
            &format!("Mail Delivery System <MAILER-DAEMON@{mta}>"),
        );
        out.field("To", &format!("<{}>", clean(self.original_sender)));
        out.field("Subject", "Undelivered Mail Returned to Sender");
        out.field("Date", &rfc2822(self.date));
        out.field(
            "Message-ID",
            &format!("<{}@{mta}>", boundary.trim_start_matches("=_")),
        );
        out.field("Auto-Submitted", "auto-replied");
        out.field("MIME-Version", "1.0");
        out.field(
            "Content-Type",
            &format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\""),
        );
        out.line("");
        out.line("This is a MIME-encapsulated message.");
        out.line("");

        // 1. The human-readable part.
        out.line(&format!("--{boundary}"));
        out.field("Content-Type", "text/plain; charset=utf-8");
        out.field(
            "Content-Transfer-Encoding",
            if utf8 { "8bit" } else { "7bit" },
        );
        out.field("Content-Description", "Notification");
        out.line("");
        out.text(&format!(
            "This is the mail system at host {mta}.\r\n\r\n\
             Your message could not be delivered to one or more recipients.\r\n\
             It is attached below (headers only).\r\n\r\n\
             For further assistance, please contact your postmaster.\r\n"
        ));
        out.line("");
        for failed in self.failed {
            let host = failed
                .remote_mta
                .as_deref()
                .map(|h| format!(" (host {})", clean(h)))
                .unwrap_or_default();
            out.text(&format!(
                "<{}>{host}: {}",
                clean(&failed.recipient),
                clean(&failed.diagnostic)
            ));
        }
        out.line("");

        // 2. The machine-readable part.
        out.line(&format!("--{boundary}"));
        if utf8 {
            out.field("Content-Type", "message/global-delivery-status");
            out.field("Content-Transfer-Encoding", "8bit");
        } else {
            out.field("Content-Type", "message/delivery-status");
        }
        out.field("Content-Description", "Delivery report");
        out.line("");
        out.field("Reporting-MTA", &format!("dns; {mta}"));
        out.field("Arrival-Date", &rfc2822(self.arrival_date));
        for failed in self.failed {
            out.line("");
            let recipient = clean(&failed.recipient);
            let kind = if recipient.is_ascii() {
                "rfc822"
            } else {
                "utf-8"
            };
            out.field("Final-Recipient", &format!("{kind}; {recipient}"));
            out.field("Action", "failed");
            out.field("Status", &status_text(&failed.status));
            if let Some(host) = &failed.remote_mta {
                out.field("Remote-MTA", &format!("dns; {}", clean(host)));
            }
            out.field("Diagnostic-Code", &diagnostic_code(&failed.diagnostic));
        }
        out.line("");

        // 3. The original header section.
        out.line(&format!("--{boundary}"));
        let headers = bounded_lines(header_section(self.original_headers));
        if headers.is_ascii() {
            out.field("Content-Type", "text/rfc822-headers");
        } else {
            out.field("Content-Type", "text/rfc822-headers; charset=utf-8");
            out.field("Content-Transfer-Encoding", "8bit");
        }
        out.field("Content-Description", "Undelivered Message Headers");
        out.line("");
        out.raw_lines(headers);
        out.line("");
        out.line(&format!("--{boundary}--"));
        out.bytes
    }
}

/// Builds CRLF output with bounded line lengths.
#[derive(Default)]
struct Out {
    bytes: Vec<u8>,
}

impl Out {
    fn line(&mut self, text: &str) {
        self.bytes.extend_from_slice(text.as_bytes());
        self.bytes.extend_from_slice(b"\r\n");
    }

    /// `Name: value`, folded at spaces when long (RFC 5322 §2.2.3).
    fn field(&mut self, name: &str, value: &str) {
        let text = format!("{name}: {}", clean(value));
        for (i, piece) in fold(&text).into_iter().enumerate() {
            if i > 0 {
                self.bytes.push(b' ');
            }
            self.line(piece);
        }
    }

    /// Free text: each CRLF-separated line, wrapped when too long.
    fn text(&mut self, text: &str) {
        let text = text.strip_suffix("\r\n").unwrap_or(text);
        for line in text.split("\r\n") {
            for piece in fold(&clean(line)) {
                self.line(piece);
            }
        }
    }

    /// Original header lines, split hard where a line is too long.
    fn raw_lines(&mut self, bytes: &[u8]) {
        let body = bytes.strip_suffix(b"\r\n\r\n").unwrap_or(bytes);
        let body = body.strip_suffix(b"\r\n").unwrap_or(body);
        if body.is_empty() {
            return;
        }
        for line in split_lines(body) {
            let mut rest = line;
            loop {
                let cut = floor_char_boundary(rest, MAX_LINE);
                let (head, tail) = rest.split_at(cut);
                self.bytes.extend_from_slice(head);
                self.bytes.extend_from_slice(b"\r\n");
                if tail.is_empty() {
                    break;
                }
                // Continue as a folded header line.
                self.bytes.push(b' ');
                rest = tail;
            }
        }
    }
}

/// Split on CRLF, bare CR and bare LF alike, so no stray line end survives.
fn split_lines(bytes: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' => {
                lines.push(&bytes[start..i]);
                i += if bytes.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = i;
            }
            b'\n' => {
                lines.push(&bytes[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < bytes.len() {
        lines.push(&bytes[start..]);
    }
    lines
}

/// Largest cut ≤ `max` that does not split a UTF-8 sequence (bytes that are
/// not UTF-8 are cut anywhere).
fn floor_char_boundary(bytes: &[u8], max: usize) -> usize {
    if bytes.len() <= max {
        return bytes.len();
    }
    let mut cut = max;
    while cut > max.saturating_sub(4) && bytes.get(cut).is_some_and(|b| b & 0xC0 == 0x80) {
        cut -= 1;
    }
    if cut == 0 {
        max
    } else {
        cut
    }
}

/// Break `text` at spaces so pieces stay near [`FOLD_AT`] (or at the first
/// space after it), and hard at [`MAX_LINE`] when there is no space.
/// Pieces do not include the space they were cut at.
fn fold(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.len() > FOLD_AT {
        let head = &rest[..floor_str_boundary(rest, FOLD_AT)];
        let cut = match head.rfind(' ').filter(|&i| i > 0) {
            Some(i) => i,
            None => {
                let window = &rest[..floor_str_boundary(rest, MAX_LINE)];
                match window[head.len()..].find(' ') {
                    Some(i) => head.len() + i,
                    None if window.len() == rest.len() => break,
                    None => window.len(),
                }
            }
        };
        pieces.push(&rest[..cut]);
        rest = rest[cut..].trim_start_matches(' ');
    }
    pieces.push(rest);
    pieces
}

fn floor_str_boundary(text: &str, max: usize) -> usize {
    if text.len() <= max {
        return text.len();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    cut
}

/// Replace line breaks and other controls so a value stays on its line.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// `smtp; 550 …` when the text is an SMTP reply, `X-Postern; …` otherwise;
/// an already typed value (`smtp; …`) is kept.
fn diagnostic_code(diagnostic: &str) -> String {
    let text = clean(diagnostic);
    let looks_typed = text.split_once(';').is_some_and(|(kind, _)| {
        !kind.is_empty() && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    if looks_typed {
        return text;
    }
    let is_reply = text.len() >= 3
        && text.as_bytes()[..3].iter().all(u8::is_ascii_digit)
        && matches!(text.as_bytes().get(3), None | Some(b' '));
    if is_reply {
        format!("smtp; {text}")
    } else {
        format!("X-Postern; {text}")
    }
}

/// A status in `d.d.d` form; anything else becomes `5.0.0`.
fn status_text(status: &str) -> String {
    let parts: Vec<&str> = status.trim().split('.').collect();
    let valid = parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    if valid {
        status.trim().to_string()
    } else {
        "5.0.0".to_string()
    }
}

fn rfc2822(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc2822).ok())
        .unwrap_or_else(|| "Thu, 01 Jan 1970 00:00:00 +0000".to_string())
}

/// A boundary that cannot occur in the parts: `=_` never starts a line of
/// quoted-printable or base64, and the random part makes collisions with
/// the original headers practically impossible.
fn boundary(date: i64, host: &str) -> String {
    let random: u64 = rand::random();
    let tag: u32 = host
        .bytes()
        .fold(0u32, |h, b| h.rotate_left(5) ^ u32::from(b));
    format!("=_{date:x}.{random:016x}.{tag:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<FailedRecipient> {
        vec![
            FailedRecipient {
                recipient: "nobody@partner.test".into(),
                status: "5.1.1".into(),
                diagnostic: "550 5.1.1 user unknown".into(),
                remote_mta: Some("mx1.partner.test".into()),
            },
            FailedRecipient {
                recipient: "later@partner.test".into(),
                status: "4.7.5".into(),
                diagnostic: "mx1.partner.test[127.0.0.2]: certificate verification failed: expired"
                    .into(),
                remote_mta: None,
            },
        ]
    }

    const ORIGINAL: &[u8] = b"From: Alice <alice@example.test>\r\nTo: nobody@partner.test\r\n\
Subject: hello\r\nMessage-ID: <abc@example.test>\r\n\r\nBody text\r\n.\r\n";

    fn render(failed: &[FailedRecipient], original: &[u8]) -> String {
        let bytes = Bounce {
            original_sender: "alice@example.test",
            reporting_mta: "mx.postern.test",
            arrival_date: 1_700_000_000,
            date: 1_700_086_400,
            failed,
            original_headers: original,
        }
        .render();
        String::from_utf8(bytes).expect("utf-8")
    }

    fn boundary_of(text: &str) -> String {
        let start = text.find("boundary=\"").expect("boundary") + "boundary=\"".len();
        let end = text[start..].find('"').expect("end quote") + start;
        text[start..end].to_string()
    }

    #[test]
    fn structure() {
        let failed = sample();
        let text = render(&failed, ORIGINAL);
        let (headers, body) = text.split_once("\r\n\r\n").expect("header/body");
        assert!(headers.contains("From: Mail Delivery System <MAILER-DAEMON@mx.postern.test>"));
        assert!(headers.contains("To: <alice@example.test>"));
        assert!(headers.contains("Auto-Submitted: auto-replied"));
        assert!(headers.contains("MIME-Version: 1.0"));
        assert!(
            headers.contains("Date: Wed, 15 Nov 2023 22:13:20 +0000"),
            "{headers}"
        );
        assert!(headers.contains("multipart/report; report-type=delivery-status;"));

        let boundary = boundary_of(headers);
        let delimiter = format!("\r\n--{boundary}\r\n");
        let parts: Vec<&str> = body.split(&delimiter).collect();
        assert_eq!(parts.len(), 4, "preamble + 3 parts: {body}");
        let last = parts[3];
        assert!(last.ends_with(&format!("\r\n--{boundary}--\r\n")), "{last}");
        assert_eq!(body.matches(&format!("--{boundary}")).count(), 4);

        let human = parts[1];
        assert!(human.starts_with("Content-Type: text/plain; charset=utf-8\r\n"));
        assert!(
            human.contains("<nobody@partner.test> (host mx1.partner.test): 550 5.1.1 user unknown")
        );

        let status = parts[2];
        assert!(status.starts_with("Content-Type: message/delivery-status\r\n"));
        let (_, fields) = status.split_once("\r\n\r\n").expect("part headers");
        let groups: Vec<&str> = fields.trim_end().split("\r\n\r\n").collect();
        assert_eq!(groups.len(), 3, "per-message + 2 recipients: {fields}");
        assert_eq!(
            groups[0],
            "Reporting-MTA: dns; mx.postern.test\r\nArrival-Date: Tue, 14 Nov 2023 22:13:20 +0000"
        );
        assert_eq!(
            groups[1],
            "Final-Recipient: rfc822; nobody@partner.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\
             Remote-MTA: dns; mx1.partner.test\r\nDiagnostic-Code: smtp; 550 5.1.1 user unknown"
        );
        assert!(groups[2].contains("Status: 4.7.5"));
        assert!(groups[2].contains("Diagnostic-Code: X-Postern; mx1.partner.test[127.0.0.2]:"));
        assert!(!groups[2].contains("Remote-MTA"));

        let original = parts[3];
        assert!(original.starts_with("Content-Type: text/rfc822-headers\r\n"));
        assert!(original.contains("Subject: hello\r\nMessage-ID: <abc@example.test>\r\n"));
        assert!(!original.contains("Body text"), "only headers are returned");
    }

    #[test]
    fn crlf_only_and_short_lines() {
        let mut failed = sample();
        failed[0].diagnostic = format!("550 5.7.1 {}", "very long reason ".repeat(200));
        failed[1].diagnostic = format!("550 {}", "x".repeat(3000));
        let mut original = b"Subject: ".to_vec();
        original.extend(std::iter::repeat_n(b'y', 2500));
        original.extend_from_slice(b"\r\nX-Bare: a\nb\rc\r\n\r\nbody");
        let text = render(&failed, &original);
        let bytes = text.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'\n' {
                assert_eq!(bytes.get(i.wrapping_sub(1)), Some(&b'\r'), "bare LF at {i}");
            }
            if b == b'\r' {
                assert_eq!(bytes.get(i + 1), Some(&b'\n'), "bare CR at {i}");
            }
        }
        for line in text.split("\r\n") {
            assert!(line.len() < 998, "line of {} bytes", line.len());
        }
        // Folded field lines continue with whitespace.
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.7.1 very long reason"));
    }

    #[test]
    fn utf8_recipients_use_global_types() {
        let failed = vec![FailedRecipient {
            recipient: "jörg@bücher.test".into(),
            status: "5.1.1".into(),
            diagnostic: "550 5.1.1 unknown".into(),
            remote_mta: Some("mx.bücher.test".into()),
        }];
        let text = render(&failed, ORIGINAL);
        assert!(text.contains("Content-Type: message/global-delivery-status"));
        assert!(text.contains("Final-Recipient: utf-8; jörg@bücher.test"));
    }

    #[test]
    fn null_sender_never_bounces() {
        assert!(!should_bounce(""));
        assert!(!should_bounce("<>"));
        assert!(!should_bounce("  "));
        assert!(should_bounce("alice@example.test"));
    }

    #[test]
    fn status_and_diagnostic_normalised() {
        assert_eq!(status_text("5.1.1"), "5.1.1");
        assert_eq!(status_text("4.7.10"), "4.7.10");
        assert_eq!(status_text("x"), "5.0.0");
        assert_eq!(diagnostic_code("550 5.1.1 no"), "smtp; 550 5.1.1 no");
        assert_eq!(diagnostic_code("smtp; 550 no"), "smtp; 550 no");
        assert_eq!(diagnostic_code("DNS: no MX"), "X-Postern; DNS: no MX");
        assert_eq!(
            diagnostic_code("host[1.2.3.4]: refused"),
            "X-Postern; host[1.2.3.4]: refused"
        );
    }

    #[test]
    fn original_headers_are_bounded() {
        let failed = [FailedRecipient {
            recipient: "bob@example.test".into(),
            status: "5.1.1".into(),
            diagnostic: "smtp; 550 5.1.1 no".into(),
            remote_mta: None,
        }];
        let mut original = Vec::new();
        for i in 0..20_000 {
            original.extend_from_slice(format!("X-Filler-{i}: some header text\r\n").as_bytes());
        }
        original.extend_from_slice(b"\r\nbody\r\n");
        assert!(original.len() > 4 * MAX_ORIGINAL_HEADERS);
        let text = render(&failed, &original);
        assert!(text.len() < MAX_ORIGINAL_HEADERS + 4096, "{}", text.len());
        assert!(text.contains("X-Filler-0: some header text\r\n"));
        assert!(!text.contains("X-Filler-19999"));
        // Cut after a whole line: every filler line in the bounce is complete.
        let last = text.lines().rfind(|l| l.starts_with("X-Filler-")).unwrap();
        assert!(last.ends_with("some header text"), "{last:?}");
    }

    #[test]
    fn header_section_cuts_at_blank_line() {
        assert_eq!(header_section(b"A: b\r\n\r\nbody"), b"A: b\r\n\r\n");
        assert_eq!(header_section(b"A: b\r\n"), b"A: b\r\n");
        assert_eq!(header_section(b"\r\nbody"), b"\r\n");
    }
}
