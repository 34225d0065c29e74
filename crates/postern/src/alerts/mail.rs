//! The alert mail: a short plain-text message to the `alerts.email`
//! addresses, from `postmaster@<host name>`, marked `Auto-Submitted` so
//! that vacation responders stay quiet (RFC 3834).

use mail_builder::headers::address::Address;
use mail_builder::headers::date::Date;
use mail_builder::headers::text::Text;
use mail_builder::MessageBuilder;
use postern_store::AlertKind;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::Raised;

/// What the administrator should look at, per kind.
pub fn advice(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::Downgrade => {
            "A delivery went below the TLS level this domain was learned at. Check the \
             host (postern trace, the Outbound policies page); if the change is intended, \
             forget the learned level (postern policy forget DOMAIN)."
        }
        AlertKind::StarttlsMissing => {
            "A host that offered STARTTLS before did not (or a middlebox masked it). \
             Ask the domain's postmaster, or check for a firewall rewriting EHLO."
        }
        AlertKind::HandshakeFailures => {
            "TLS handshakes to this host keep failing. Check the host's certificate and \
             TLS versions (postern probe DOMAIN)."
        }
        AlertKind::RequiredTlsDeferred => {
            "Mail stays queued because the TLS this domain requires could not be met. \
             Check the reason (postern queue list, postern trace); fix the peer or the \
             domain rule. Nothing is sent in plaintext."
        }
        AlertKind::CertificateExpiry => {
            "A certificate of the certificate table expires soon. Import its successor \
             (postern cert import) before it does."
        }
        AlertKind::NodeUnreachable => {
            "A cluster node has not written its registry row for 30 s or more. Check that \
             it runs and reaches PostgreSQL (postern cluster status)."
        }
        AlertKind::NodeBehind => {
            "A cluster node runs older settings than the store holds. Check its log for \
             reload errors (postern cluster status)."
        }
    }
}

/// The whole message, CRLF line ends.
pub fn render(
    raised: &Raised,
    node: &str,
    hostname: &str,
    sender: &str,
    recipients: &[String],
) -> std::io::Result<Vec<u8>> {
    let alert = &raised.alert;
    let kind = alert.kind.as_str();
    let at = OffsetDateTime::from_unix_timestamp(alert.at)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default();
    let about = if alert.host.is_empty() {
        alert.subject.clone()
    } else {
        format!("{} ({})", alert.subject, alert.host)
    };
    let mut text = format!(
        "Postern on node {node} ({hostname}) raised an alert.\n\n\
         Kind:    {kind}\n\
         About:   {subject}\n",
        subject = alert.subject
    );
    if !alert.host.is_empty() {
        text.push_str(&format!("Host:    {}\n", alert.host));
    }
    text.push_str(&format!(
        "When:    {at}\n\
         Detail:  {detail}\n\n\
         What to do: {advice}\n\n\
         The same condition is sent to this address at most once an hour (a \
         certificate once at 30 days and once at 7). Every alert is also in the \
         mail log, in /metrics (postern_alerts_total) and on the admin Alerts page.\n",
        detail = alert.detail,
        advice = advice(alert.kind),
    ));
    // Short lines (no quoted-printable soft breaks for plain words) and
    // the CRLF line ends SMTP wants.
    let text = text
        .lines()
        .map(|line| wrap(line, 72))
        .collect::<Vec<_>>()
        .join("\r\n")
        + "\r\n";
    let to: Vec<Address<'_>> = recipients
        .iter()
        .map(|r| Address::new_address(None::<&str>, r.as_str()))
        .collect();
    let id = format!("alert.{}.{}@{hostname}", alert.at, rand_token());
    MessageBuilder::new()
        .from(Address::new_address(Some("Postern alerts"), sender))
        .to(Address::new_list(to))
        .subject(format!("[Postern alert] {kind}: {about}"))
        .date(Date::new(alert.at))
        .message_id(id)
        .header("Auto-Submitted", Text::new("auto-generated"))
        .header("X-Postern-Alert", Text::new(kind))
        .text_body(text)
        .write_to_vec()
}

/// `line` broken at spaces into lines of at most `width` characters (a
/// longer word stays whole); continuation lines are indented like the
/// first line's value (`Detail:  ...`).
fn wrap(line: &str, width: usize) -> String {
    let indent = match line.find(":  ") {
        Some(at) if at < 12 => line[at + 1..].len() - line[at + 1..].trim_start().len() + at + 1,
        _ => 0,
    };
    let mut out = String::new();
    let mut current = String::new();
    for word in line.split(' ') {
        let started = !current.trim().is_empty();
        if started && current.chars().count() + 1 + word.chars().count() > width {
            out.push_str(current.trim_end());
            out.push_str("\r\n");
            current = " ".repeat(indent);
        } else if started {
            current.push(' ');
        }
        current.push_str(word);
    }
    out.push_str(&current);
    out
}

/// Random hex digits for the Message-ID.
fn rand_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::Condition;
    use postern_store::Alert;

    #[test]
    fn readable_text_with_headers() {
        let raised = Raised {
            condition: Condition::new(AlertKind::CertificateExpiry, "Partner CA", ""),
            alert: Alert {
                kind: AlertKind::CertificateExpiry,
                subject: "Partner CA".into(),
                host: String::new(),
                detail: "expires 2026-12-13T00:00:00Z, in 10 days".into(),
                at: 1_796_256_000,
            },
        };
        let raw = render(
            &raised,
            "gw1",
            "mail.example.com",
            "postmaster@mail.example.com",
            &["tls@example.com".into(), "noc@example.org".into()],
        )
        .expect("render");
        let text = String::from_utf8_lossy(&raw);
        assert!(
            text.contains("Subject: [Postern alert] certificate-expiry: Partner CA\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Auto-Submitted: auto-generated\r\n"),
            "{text}"
        );
        assert!(text.contains("<tls@example.com>"), "{text}");
        assert!(text.contains("<noc@example.org>"), "{text}");
        assert!(text.contains("postmaster@mail.example.com"), "{text}");
        assert!(text.contains("Message-ID: <alert.1796256000."), "{text}");
        assert!(
            !raw.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
            "bare LF"
        );
        assert!(text.contains("Kind:    certificate-expiry\r\n"), "{text}");
        assert!(
            text.contains("Detail:  expires 2026-12-13T00:00:00Z, in 10 days"),
            "{text}"
        );
        assert!(text.contains("What to do: A certificate of the"), "{text}");
        assert!(text.ends_with("page.\r\n"), "{text}");
        assert!(text.contains("Content-Transfer-Encoding: 7bit"), "{text}");
        assert!(text.lines().all(|l| l.len() <= 78), "{text}");
    }

    #[test]
    fn wraps_at_spaces_and_indents_values() {
        assert_eq!(wrap("short", 72), "short");
        assert_eq!(
            wrap("Detail:  one two three four", 20),
            "Detail:  one two\r\n         three four"
        );
        assert_eq!(
            wrap("What to do: aaaa bbbb", 10),
            "What to\r\ndo: aaaa\r\nbbbb"
        );
        let long = "x".repeat(100);
        assert_eq!(wrap(&long, 72), long, "a long word stays whole");
    }
}
