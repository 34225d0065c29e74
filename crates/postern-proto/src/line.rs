//! Command line framing (RFC 5321 §2.3.8, §4.5.3.1.4): one CRLF-terminated
//! line at a time.
//!
//! Only CRLF ends a command line. A bare LF is refused rather than taken as
//! a line end (the same rule as in DATA, so the two can never disagree about
//! where a line stops); a CR that is not followed by LF stays inside the
//! line, where the command parser refuses it as an invalid character.

/// Why a command line could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// More than `max` bytes without a line end. `consumed` bytes (the whole
    /// over-long line up to and including its LF, or the whole buffer if no
    /// LF is in it yet) must be dropped by the caller.
    TooLong { consumed: usize },
    /// A line ended in a bare LF (no CR before it). `consumed` bytes
    /// (through the LF) must be dropped.
    BareLf { consumed: usize },
}

/// Find the next complete command line at the start of `buf`.
///
/// * `Ok(Some((line, consumed)))` — `line` excludes the CRLF; the caller
///   drops `consumed` bytes (line + CRLF) from its buffer.
/// * `Ok(None)` — need more bytes (and fewer than `max` are buffered).
/// * `Err(..)` — see [`LineError`].
///
/// `max` counts the line without its CRLF (RFC 5321 §4.5.3.1.4 says 510 +
/// CRLF; extensions make it longer, so the caller chooses).
///
/// Precedence: a line that is both over-long and ends in a bare LF is
/// reported as [`LineError::TooLong`]. With no LF buffered yet, a final CR
/// is not counted against `max` (it may be the first half of the CRLF), so
/// a line of exactly `max` bytes split between its CR and LF is still
/// `Ok(None)` and then `Ok(Some(..))`.
pub fn take_line(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, LineError> {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        let pending = match buf.last() {
            Some(b'\r') => buf.len() - 1,
            _ => buf.len(),
        };
        if pending > max {
            return Err(LineError::TooLong {
                consumed: buf.len(),
            });
        }
        return Ok(None);
    };
    let consumed = lf + 1;
    let before_lf = buf.get(..lf).unwrap_or_default();
    match before_lf.split_last() {
        Some((b'\r', line)) => {
            if line.len() > max {
                return Err(LineError::TooLong { consumed });
            }
            Ok(Some((line, consumed)))
        }
        _ => {
            if before_lf.len() > max {
                return Err(LineError::TooLong { consumed });
            }
            Err(LineError::BareLf { consumed })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Expect = Result<Option<(&'static [u8], usize)>, LineError>;

    #[test]
    fn framing_table() {
        let rows: &[(&[u8], usize, Expect)] = &[
            // good
            (b"NOOP\r\n", 10, Ok(Some((b"NOOP", 6)))),
            (b"NOOP\r\nQUIT\r\n", 10, Ok(Some((b"NOOP", 6)))),
            (b"\r\n", 10, Ok(Some((b"", 2)))),
            (b"0123456789\r\n", 10, Ok(Some((b"0123456789", 12)))),
            (b"A\rB\r\n", 10, Ok(Some((b"A\rB", 5)))),
            (b"A\r\r\n", 10, Ok(Some((b"A\r", 4)))),
            // need more
            (b"", 10, Ok(None)),
            (b"NOOP", 10, Ok(None)),
            (b"NOOP\r", 10, Ok(None)),
            (b"0123456789", 10, Ok(None)),
            (b"0123456789\r", 10, Ok(None)),
            // bad
            (b"NOOP\n", 10, Err(LineError::BareLf { consumed: 5 })),
            (b"\n", 10, Err(LineError::BareLf { consumed: 1 })),
            (
                b"NOOP\nQUIT\r\n",
                10,
                Err(LineError::BareLf { consumed: 5 }),
            ),
            (b"A\rB\n", 10, Err(LineError::BareLf { consumed: 4 })),
            (
                b"01234567890\r\n",
                10,
                Err(LineError::TooLong { consumed: 13 }),
            ),
            (
                b"01234567890\r\nQUIT\r\n",
                10,
                Err(LineError::TooLong { consumed: 13 }),
            ),
            (
                b"01234567890\n",
                10,
                Err(LineError::TooLong { consumed: 12 }),
            ),
            (b"01234567890", 10, Err(LineError::TooLong { consumed: 11 })),
            (
                b"01234567890\r",
                10,
                Err(LineError::TooLong { consumed: 12 }),
            ),
            (
                b"0123456789\r\r",
                10,
                Err(LineError::TooLong { consumed: 12 }),
            ),
        ];
        for (input, max, expected) in rows {
            assert_eq!(
                take_line(input, *max),
                *expected,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn zero_and_huge_max() {
        assert_eq!(take_line(b"\r\n", 0), Ok(Some((&b""[..], 2))));
        assert_eq!(take_line(b"\r", 0), Ok(None));
        assert_eq!(take_line(b"x", 0), Err(LineError::TooLong { consumed: 1 }));
        assert_eq!(take_line(b"abc", usize::MAX), Ok(None));
        assert_eq!(
            take_line(b"abc\r\n", usize::MAX),
            Ok(Some((&b"abc"[..], 5)))
        );
    }
}
