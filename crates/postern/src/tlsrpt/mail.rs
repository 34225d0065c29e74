//! The report as a mail (RFC 8460 §5.3): `multipart/report;
//! report-type=tlsrpt` with a short text part and the gzipped JSON as
//! `application/tlsrpt+gzip`, the `TLS-Report-Domain` and
//! `TLS-Report-Submitter` headers, and `TLS-Required: No` (RFC 8689 §5: a
//! report about broken TLS must still get through), DKIM-signed when a key
//! is set.

use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::MimePart;
use mail_builder::MessageBuilder;

/// What goes into one report mail.
pub struct ReportMail<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub domain: &'a str,
    pub submitter: &'a str,
    pub report_id: &'a str,
    /// `<submitter>!<domain>!<begin>!<end>.json.gz`.
    pub filename: &'a str,
    pub gzipped: &'a [u8],
    /// Unix seconds.
    pub date: i64,
}

/// The message, CRLF line ends, unsigned.
pub fn render(mail: &ReportMail<'_>) -> Result<Vec<u8>, String> {
    let text = format!(
        "This is an aggregate TLS report (RFC 8460) from {} for {}.\r\n",
        mail.submitter, mail.domain
    );
    MessageBuilder::new()
        .from(mail.from)
        .to(mail.to)
        // Raw: RFC 8460 §5.3's subject is plain ASCII; encoding it for
        // its `<>` would only hide it from simple filters.
        .header(
            "Subject",
            Raw::new(format!(
                "Report Domain: {} Submitter: {} Report-ID: <{}>",
                mail.domain, mail.submitter, mail.report_id
            )),
        )
        .date(mail.date)
        .message_id(mail.report_id)
        .header("TLS-Report-Domain", Raw::new(mail.domain))
        .header("TLS-Report-Submitter", Raw::new(mail.submitter))
        .header("TLS-Required", Raw::new("No"))
        .body(MimePart::new(
            ContentType::new("multipart/report").attribute("report-type", "tlsrpt"),
            vec![
                MimePart::new(
                    ContentType::new("text/plain").attribute("charset", "us-ascii"),
                    text,
                ),
                MimePart::new("application/tlsrpt+gzip", mail.gzipped.to_vec())
                    .attachment(mail.filename),
            ],
        ))
        .write_to_vec()
        .map_err(|e| format!("cannot write the report mail: {e}"))
}

/// The attachment's name (RFC 8460 §5.1).
pub fn filename(submitter: &str, domain: &str, begin: i64, end: i64) -> String {
    format!("{submitter}!{domain}!{begin}!{end}.json.gz")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_mail_has_the_rfc_8460_shape() {
        let mail = render(&ReportMail {
            from: "postmaster@gw.test",
            to: "tlsrpt@r.test",
            domain: "r.test",
            submitter: "gw.test",
            report_id: "2026-12-01.r.test.1a@gw.test",
            filename: &filename("gw.test", "r.test", 1, 2),
            gzipped: &[0x1f, 0x8b, 8, 0],
            date: 1_764_547_200,
        })
        .unwrap();
        let raw = String::from_utf8(mail).unwrap();
        // Long header fields are folded; unfolded they must read as below.
        let text = raw.replace("\r\n ", " ");
        for needle in [
            "TLS-Report-Domain: r.test\r\n",
            "TLS-Report-Submitter: gw.test\r\n",
            "TLS-Required: No\r\n",
            "Subject: Report Domain: r.test Submitter: gw.test Report-ID: <2026-12-01.r.test.1a@gw.test>",
            "Content-Type: multipart/report; report-type=\"tlsrpt\";",
            "Content-Type: application/tlsrpt+gzip",
            "filename=\"gw.test!r.test!1!2.json.gz\"",
            "Content-Transfer-Encoding: base64",
        ] {
            assert!(text.contains(needle), "{needle:?} missing in\n{text}");
        }
        assert!(!raw.replace("\r\n", "").contains('\n'), "bare LF in\n{raw}");
    }
}
