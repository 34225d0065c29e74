//! Parsing SMTP replies as the outbound client receives them (RFC 5321
//! §4.2, multi-line replies §4.2.1; RFC 2034 enhanced status codes).
//!
//! [`Reply::parse`] takes the bytes buffered so far and returns either a
//! complete reply and how many bytes it used, "need more bytes" (`Ok(None)`),
//! or a [`ReplyError`] when the peer sent something that is not a reply. The
//! parser is lenient where interoperability needs it and strict where it
//! matters:
//!
//! * Lines end in CRLF; a bare LF is accepted as a line end too (some
//!   servers send it, and a reply is not message content, so this cannot
//!   smuggle anything). A CR elsewhere becomes part of the text and is
//!   replaced when the reply is displayed or rendered.
//! * Every line must start with the same three-digit code (first digit
//!   2–5), followed by `-` (more lines follow), a space, or the line end
//!   (the last line).
//! * The enhanced status code is taken from the first line when it is
//!   `class.subject.detail` with the class equal to the reply's first digit;
//!   it is then stripped from every line that starts with it.
//! * Lines are limited to [`MAX_REPLY_LINE`] bytes and replies to
//!   [`MAX_REPLY_LINES`] lines, so a hostile server cannot make the client
//!   buffer without bound.
//! * Text that is not UTF-8 is decoded lossily.

use std::fmt;

use crate::reply::{EnhancedCode, Reply};

/// Longest reply line accepted, without its line end. RFC 5321 §4.5.3.1.5
/// allows 512 bytes; real servers send longer texts, so be generous.
pub const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one reply (an EHLO reply has a few dozen at most).
pub const MAX_REPLY_LINES: usize = 128;

/// The peer sent something that is not an SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// The line does not start with a three-digit code 200–599.
    BadCode { line: usize },
    /// A continuation line carries another code than the first line.
    CodeMismatch {
        line: usize,
        expected: u16,
        found: u16,
    },
    /// The code is followed by something other than space, `-` or the line end.
    BadSeparator { line: usize },
    /// A line is longer than [`MAX_REPLY_LINE`].
    LineTooLong,
    /// More than [`MAX_REPLY_LINES`] lines.
    TooManyLines,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::BadCode { line } => write!(
                f,
                "reply line {line} does not start with a three-digit code 200-599"
            ),
            ReplyError::CodeMismatch {
                line,
                expected,
                found,
            } => write!(
                f,
                "reply line {line} has code {found}, but the reply started with {expected}"
            ),
            ReplyError::BadSeparator { line } => {
                write!(f, "reply line {line} has no space or hyphen after the code")
            }
            ReplyError::LineTooLong => write!(f, "reply line longer than {MAX_REPLY_LINE} bytes"),
            ReplyError::TooManyLines => write!(f, "reply with more than {MAX_REPLY_LINES} lines"),
        }
    }
}

impl std::error::Error for ReplyError {}

impl Reply {
    /// Parse one complete reply from the start of `buf`.
    ///
    /// Returns `Ok(Some((reply, consumed)))` with the number of bytes the
    /// reply took (including its last line end), `Ok(None)` when the reply is
    /// not complete yet, or an error when the bytes cannot be a reply.
    pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
        let mut offset = 0;
        let mut code: Option<u16> = None;
        let mut texts: Vec<String> = Vec::new();
        loop {
            let rest = buf.get(offset..).unwrap_or_default();
            let Some(newline) = rest.iter().position(|&b| b == b'\n') else {
                if rest.len() > MAX_REPLY_LINE + 1 {
                    return Err(ReplyError::LineTooLong);
                }
                // Check what is there already, so garbage fails early.
                if let Some(partial) = rest.get(..rest.len().min(4)) {
                    check_prefix(partial, texts.len() + 1, code)?;
                }
                return Ok(None);
            };
            let line_no = texts.len() + 1;
            if line_no > MAX_REPLY_LINES {
                return Err(ReplyError::TooManyLines);
            }
            let raw = rest.get(..newline).unwrap_or_default();
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            if line.len() > MAX_REPLY_LINE {
                return Err(ReplyError::LineTooLong);
            }
            offset += newline + 1;
            let (this_code, last, text) = split_line(line, line_no)?;
            match code {
                None => code = Some(this_code),
                Some(expected) if expected != this_code => {
                    return Err(ReplyError::CodeMismatch {
                        line: line_no,
                        expected,
                        found: this_code,
                    })
                }
                Some(_) => {}
            }
            texts.push(String::from_utf8_lossy(text).into_owned());
            if last {
                let code = this_code;
                return Ok(Some((build(code, texts), offset)));
            }
        }
    }
}

/// Validate the first bytes of a line that has no line end yet.
fn check_prefix(partial: &[u8], line: usize, expected: Option<u16>) -> Result<(), ReplyError> {
    for (i, &b) in partial.iter().enumerate() {
        let ok = match i {
            0 => (b'2'..=b'5').contains(&b),
            1 | 2 => b.is_ascii_digit(),
            _ => matches!(b, b' ' | b'-' | b'\r'),
        };
        if !ok {
            return Err(if i == 3 {
                ReplyError::BadSeparator { line }
            } else {
                ReplyError::BadCode { line }
            });
        }
    }
    if let (Some(expected), Some(digits)) = (expected, partial.get(..3)) {
        let found = code_value(digits);
        if found != expected {
            return Err(ReplyError::CodeMismatch {
                line,
                expected,
                found,
            });
        }
    }
    Ok(())
}

/// `(code, is_last_line, text)` of one line without its line end.
fn split_line(line: &[u8], line_no: usize) -> Result<(u16, bool, &[u8]), ReplyError> {
    let digits = line
        .get(..3)
        .filter(|d| (b'2'..=b'5').contains(&d[0]) && d.iter().all(u8::is_ascii_digit))
        .ok_or(ReplyError::BadCode { line: line_no })?;
    let code = code_value(digits);
    match line.get(3) {
        None => Ok((code, true, b"")),
        Some(b' ') => Ok((code, true, line.get(4..).unwrap_or_default())),
        Some(b'-') => Ok((code, false, line.get(4..).unwrap_or_default())),
        Some(_) => Err(ReplyError::BadSeparator { line: line_no }),
    }
}

fn code_value(digits: &[u8]) -> u16 {
    digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d.saturating_sub(b'0')))
}

/// Assemble the reply, moving a consistent enhanced code out of the text.
fn build(code: u16, mut texts: Vec<String>) -> Reply {
    let class = u8::try_from(code / 100).unwrap_or(0);
    let enhanced = texts
        .first()
        .and_then(|first| parse_enhanced(first))
        .filter(|(e, _)| e.0 == class)
        .map(|(e, _)| e);
    if let Some(enhanced) = enhanced {
        for text in &mut texts {
            if let Some((found, rest)) = parse_enhanced(text) {
                if found == enhanced {
                    *text = rest.to_string();
                }
            }
        }
    }
    Reply {
        code,
        enhanced,
        lines: texts,
    }
}

/// `2.1.0 text` → (2.1.0, "text"); `2.0.0` alone → (2.0.0, "").
fn parse_enhanced(text: &str) -> Option<(EnhancedCode, &str)> {
    let (token, rest) = match text.split_once(' ') {
        Some((token, rest)) => (token, rest),
        None => (text, ""),
    };
    let mut parts = token.split('.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let number = |s: &str, max: usize| -> Option<u16> {
        if s.is_empty() || s.len() > max || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let class = u8::try_from(number(class, 1)?).ok()?;
    if !(2..=5).contains(&class) {
        return None;
    }
    Some((
        EnhancedCode(class, number(subject, 3)?, number(detail, 3)?),
        rest,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| t.to_string()).collect()
    }

    /// Wire text, code, enhanced code, lines, bytes consumed.
    type Row = (
        &'static str,
        u16,
        Option<EnhancedCode>,
        &'static [&'static str],
        usize,
    );

    #[test]
    fn complete_replies() {
        let rows: &[Row] = &[
            (
                "220 mx.example ESMTP\r\n",
                220,
                None,
                &["mx.example ESMTP"],
                22,
            ),
            (
                "250-mx.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n",
                250,
                None,
                &["mx.example", "PIPELINING", "STARTTLS"],
                46,
            ),
            (
                "550 5.1.1 user unknown\r\n",
                550,
                Some(EnhancedCode(5, 1, 1)),
                &["user unknown"],
                24,
            ),
            (
                "550-5.1.1 No such user\r\n550 5.1.1 Really\r\n",
                550,
                Some(EnhancedCode(5, 1, 1)),
                &["No such user", "Really"],
                42,
            ),
            ("250 2.0.0\r\n", 250, Some(EnhancedCode(2, 0, 0)), &[""], 11),
            ("250\r\n", 250, None, &[""], 5),
            ("250 \r\n", 250, None, &[""], 6),
            // Bare LF line ends are tolerated.
            ("354 go ahead\n", 354, None, &["go ahead"], 13),
            // Enhanced code of another class is text, not a code.
            ("250 5.1.1 odd\r\n", 250, None, &["5.1.1 odd"], 15),
            // Not an enhanced code.
            ("250 8BITMIME\r\n", 250, None, &["8BITMIME"], 14),
            ("250 1.2.3.4 ok\r\n", 250, None, &["1.2.3.4 ok"], 16),
            // Only the first reply is taken.
            ("250 a\r\n251 b\r\n", 250, None, &["a"], 7),
        ];
        for (wire, code, enhanced, lines, consumed) in rows {
            let (reply, used) = Reply::parse(wire.as_bytes())
                .unwrap_or_else(|e| panic!("{wire:?}: {e}"))
                .unwrap_or_else(|| panic!("{wire:?}: incomplete"));
            assert_eq!(reply.code, *code, "{wire:?}");
            assert_eq!(reply.enhanced, *enhanced, "{wire:?}");
            assert_eq!(reply.lines, strings(lines), "{wire:?}");
            assert_eq!(used, *consumed, "{wire:?}");
        }
    }

    #[test]
    fn incomplete_replies() {
        for wire in [
            "",
            "2",
            "25",
            "250",
            "250-",
            "250-first\r\n",
            "250-a\r\n250 b",
            "250 text\r",
        ] {
            assert_eq!(Reply::parse(wire.as_bytes()), Ok(None), "{wire:?}");
        }
    }

    #[test]
    fn bad_replies() {
        let rows: &[(&str, ReplyError)] = &[
            ("hello\r\n", ReplyError::BadCode { line: 1 }),
            ("HTTP/1.1 400\r\n", ReplyError::BadCode { line: 1 }),
            ("150 x\r\n", ReplyError::BadCode { line: 1 }),
            ("25a x\r\n", ReplyError::BadCode { line: 1 }),
            ("250x\r\n", ReplyError::BadSeparator { line: 1 }),
            ("\r\n", ReplyError::BadCode { line: 1 }),
            (
                "250-a\r\n220 b\r\n",
                ReplyError::CodeMismatch {
                    line: 2,
                    expected: 250,
                    found: 220,
                },
            ),
            // Detected before the line is complete.
            ("x", ReplyError::BadCode { line: 1 }),
            (
                "250-a\r\n354",
                ReplyError::CodeMismatch {
                    line: 2,
                    expected: 250,
                    found: 354,
                },
            ),
            ("250*", ReplyError::BadSeparator { line: 1 }),
        ];
        for (wire, error) in rows {
            assert_eq!(
                Reply::parse(wire.as_bytes()),
                Err(error.clone()),
                "{wire:?}"
            );
        }
    }

    #[test]
    fn limits() {
        let long = format!("250 {}", "a".repeat(MAX_REPLY_LINE + 10));
        assert_eq!(Reply::parse(long.as_bytes()), Err(ReplyError::LineTooLong));
        let long_line = format!("{long}\r\n");
        assert_eq!(
            Reply::parse(long_line.as_bytes()),
            Err(ReplyError::LineTooLong)
        );
        let many = "250-x\r\n".repeat(MAX_REPLY_LINES + 1);
        assert_eq!(Reply::parse(many.as_bytes()), Err(ReplyError::TooManyLines));
        let fine = format!("{}250 end\r\n", "250-x\r\n".repeat(MAX_REPLY_LINES - 1));
        assert!(matches!(Reply::parse(fine.as_bytes()), Ok(Some(_))));
    }

    #[test]
    fn round_trips_rendered_replies() {
        let replies = [
            Reply::new(554, (5, 7, 1), "Relaying denied"),
            Reply::plain(250, strings(&["mx.example", "PIPELINING", "SIZE 1000"])),
            Reply {
                code: 550,
                enhanced: Some(EnhancedCode(5, 1, 1)),
                lines: strings(&["No such user", "Really"]),
            },
            Reply::new(250, (2, 0, 0), ""),
        ];
        for reply in replies {
            let wire = reply.to_bytes();
            let (parsed, used) = Reply::parse(&wire).expect("parses").expect("complete");
            assert_eq!(parsed, reply);
            assert_eq!(used, wire.len());
        }
    }

    #[test]
    fn non_utf8_text_is_lossy() {
        let (reply, _) = Reply::parse(b"550 caf\xe9\r\n")
            .expect("ok")
            .expect("complete");
        assert_eq!(reply.lines, vec!["caf\u{fffd}".to_string()]);
    }
}
