//! SMTP replies as values (RFC 5321 §4.2, RFC 3463 enhanced status codes,
//! RFC 2034 ENHANCEDSTATUSCODES).
//!
//! A [`Reply`] is data until it is rendered; rendering guarantees one wire
//! line per text line, so no text (for example an address echoed back) can
//! inject a second reply.

use std::fmt;

/// `class.subject.detail`, e.g. `5.7.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode(pub u8, pub u16, pub u16);

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One SMTP reply, possibly multi-line.
///
/// Rendering: every line is `code` + (`-` for all but the last, ` ` for the
/// last) + optional enhanced code + text + CRLF. The EHLO reply has no
/// enhanced code on its lines (RFC 2034 §3 exempts greeting and EHLO).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<EnhancedCode>,
    /// At least one line; no line contains CR or LF.
    pub lines: Vec<String>,
}

impl Reply {
    /// Single-line reply with an enhanced code, e.g.
    /// `Reply::new(554, (5, 7, 1), "Relaying denied")`.
    pub fn new(code: u16, enhanced: (u8, u16, u16), text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced: Some(EnhancedCode(enhanced.0, enhanced.1, enhanced.2)),
            lines: vec![text.into()],
        }
    }

    /// Reply without an enhanced code (the 220 greeting, EHLO, 354).
    pub fn plain(code: u16, lines: Vec<String>) -> Self {
        Self {
            code,
            enhanced: None,
            lines,
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Append the wire form to `out`. Any CR/LF inside a line's text is
    /// replaced by a space so a reply can never inject another reply.
    ///
    /// Other ASCII control characters (except HT, which RFC 5321 allows in
    /// text) are replaced as well. An empty `lines` renders as one line with
    /// no text (`250 \r\n`, or `250 2.0.0\r\n` with an enhanced code).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let code = self.code.to_string();
        let enhanced = self.enhanced.map(|e| e.to_string());
        let empty = [String::new()];
        let lines = if self.lines.is_empty() {
            &empty[..]
        } else {
            &self.lines[..]
        };
        let last = lines.len() - 1;
        for (i, text) in lines.iter().enumerate() {
            out.extend_from_slice(code.as_bytes());
            out.push(if i == last { b' ' } else { b'-' });
            if let Some(enhanced) = &enhanced {
                out.extend_from_slice(enhanced.as_bytes());
                if !text.is_empty() {
                    out.push(b' ');
                }
            }
            push_text(out, text);
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

impl fmt::Display for Reply {
    /// The reply as one log-friendly line: `554 5.7.1 Relaying denied`
    /// (multi-line replies joined with " / ").
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(enhanced) = self.enhanced {
            write!(f, " {enhanced}")?;
        }
        for (i, text) in self.lines.iter().enumerate() {
            f.write_str(if i == 0 { " " } else { " / " })?;
            for c in text.chars() {
                let c = if is_unsafe_char(c) { ' ' } else { c };
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// CR, LF and other controls (HT is allowed in reply text).
fn is_unsafe_char(c: char) -> bool {
    c.is_ascii_control() && c != '\t'
}

fn push_text(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut rest = bytes;
    while let Some(bad) = rest.iter().position(|&b| is_unsafe_char(char::from(b))) {
        let (clean, tail) = rest.split_at(bad);
        out.extend_from_slice(clean);
        out.push(b' ');
        rest = tail.get(1..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn rendering_table() {
        let rows: &[(Reply, &str, &str)] = &[
            (
                Reply::new(554, (5, 7, 1), "Relaying denied"),
                "554 5.7.1 Relaying denied\r\n",
                "554 5.7.1 Relaying denied",
            ),
            (
                Reply::plain(220, lines(&["mx.example ESMTP Postern"])),
                "220 mx.example ESMTP Postern\r\n",
                "220 mx.example ESMTP Postern",
            ),
            (
                Reply::plain(
                    250,
                    lines(&["mx.example", "PIPELINING", "SIZE 10240000", "STARTTLS"]),
                ),
                "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 STARTTLS\r\n",
                "250 mx.example / PIPELINING / SIZE 10240000 / STARTTLS",
            ),
            (
                Reply {
                    code: 550,
                    enhanced: Some(EnhancedCode(5, 1, 1)),
                    lines: lines(&["No such user", "Really"]),
                },
                "550-5.1.1 No such user\r\n550 5.1.1 Really\r\n",
                "550 5.1.1 No such user / Really",
            ),
            (
                Reply::new(501, (5, 1, 7), "Bad <a@b>\r\n250 2.0.0 injected"),
                "501 5.1.7 Bad <a@b>  250 2.0.0 injected\r\n",
                "501 5.1.7 Bad <a@b>  250 2.0.0 injected",
            ),
            (
                Reply::plain(250, lines(&["a\rb\nc\0d\te"])),
                "250 a b c d\te\r\n",
                "250 a b c d\te",
            ),
            (Reply::plain(250, vec![]), "250 \r\n", "250"),
            (
                Reply {
                    code: 250,
                    enhanced: Some(EnhancedCode(2, 0, 0)),
                    lines: vec![],
                },
                "250 2.0.0\r\n",
                "250 2.0.0",
            ),
            (
                Reply::new(250, (2, 0, 0), ""),
                "250 2.0.0\r\n",
                "250 2.0.0 ",
            ),
            (
                Reply::plain(250, lines(&["", "x"])),
                "250-\r\n250 x\r\n",
                "250  / x",
            ),
            (
                Reply::new(250, (2, 1, 0), "Sender <ü@bücher.example> OK"),
                "250 2.1.0 Sender <ü@bücher.example> OK\r\n",
                "250 2.1.0 Sender <ü@bücher.example> OK",
            ),
        ];
        for (reply, wire, log) in rows {
            assert_eq!(
                String::from_utf8_lossy(&reply.to_bytes()),
                *wire,
                "{reply:?}"
            );
            assert_eq!(reply.to_string(), *log, "{reply:?}");
        }
    }

    #[test]
    fn write_to_appends() {
        let mut out = b"250 2.0.0 OK\r\n".to_vec();
        Reply::new(221, (2, 0, 0), "Bye").write_to(&mut out);
        assert_eq!(out, b"250 2.0.0 OK\r\n221 2.0.0 Bye\r\n");
    }

    #[test]
    fn positive() {
        assert!(Reply::new(250, (2, 0, 0), "OK").is_positive());
        assert!(Reply::plain(354, lines(&["Go ahead"])).is_positive());
        assert!(!Reply::new(451, (4, 3, 0), "Try later").is_positive());
        assert!(!Reply::new(550, (5, 0, 0), "No").is_positive());
    }
}
