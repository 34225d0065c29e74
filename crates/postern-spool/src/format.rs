//! The on-disk formats of message files (`queue/<ID>`) and state files
//! (`queue/<ID>.state`). See `docs/queue-format.md`.
//!
//! Message file (version 2, written since messages are streamed to disk):
//!
//! ```text
//! POSTERN-SPOOL 2\n
//! {"sender":"a@example.org","recipients":["b@example.net"],...}\n
//! SIZE 00000000000000001234\n
//! <1234 raw message bytes>
//! \nEND 89abcdef\n
//! ```
//!
//! The SIZE has exactly 20 digits, so the line can be written before the
//! message bytes arrive and filled in at the end without moving them.
//! Version 1 (still read) differs only in the SIZE line: `SIZE 1234`, in
//! canonical decimal. Version 3 has the layout of version 2; it is written
//! instead of 2 when the envelope has `"requiretls":true` or
//! `"tls_required_no":true`, fields a version-2 reader would silently drop
//! (it must quarantine such a file rather than deliver it without them). The CRC32 (IEEE) in the trailer covers every byte
//! before the trailer. The file length must be exactly header + SIZE +
//! trailer.
//!
//! State file:
//!
//! ```text
//! POSTERN-STATE 1\n
//! [{"address":"b@example.net","state":"deferred",...}]\n
//! END 01234567\n
//! ```
//!
//! The CRC32 covers the first two lines.

use std::fmt;
use std::io::{self, BufRead, Read};

use crate::types::{Envelope, RecipientState};

pub(crate) const MESSAGE_MAGIC: &str = "POSTERN-SPOOL";
pub(crate) const STATE_MAGIC: &str = "POSTERN-STATE";
/// The message file version written for envelopes an older reader fully
/// understands; version 1 is still read.
pub(crate) const MESSAGE_VERSION: u32 = 2;
/// Written when the envelope carries the REQUIRETLS or `TLS-Required: No`
/// flag: a version-2 reader would ignore those fields and deliver the
/// message under the wrong policy, so it must refuse the file instead.
pub(crate) const MESSAGE_VERSION_FLAGS: u32 = 3;
const MESSAGE_VERSIONS_READ: &[u32] = &[1, 2, 3];
pub(crate) const STATE_VERSION: u32 = 1;
/// Digits of the fixed-width SIZE of a version-2 file (any u64 fits).
const SIZE_DIGITS: usize = 20;
/// Upper bound on one JSON line (envelope or state), written and read.
pub(crate) const MAX_JSON_LINE: usize = 8 << 20;
/// Upper bound on a whole state file.
pub(crate) const MAX_STATE_FILE: u64 = MAX_JSON_LINE as u64 + 64;
/// `"\nEND "` + 8 hex digits + `"\n"`.
pub(crate) const TRAILER_LEN: usize = 14;
const MAGIC_LINE_MAX: u64 = 64;
const SIZE_LINE_MAX: u64 = 32;
const CHUNK: usize = 64 * 1024;

/// Why a file failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Damage {
    BadMagic,
    UnknownVersion(String),
    Truncated(&'static str),
    LineTooLong(&'static str),
    BadSizeLine,
    LengthMismatch { file: u64, expected: u64 },
    MissingEndMarker,
    ChecksumMismatch { stored: String, computed: u32 },
    TrailingData,
    BadJson(&'static str, String),
    NoRecipients,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::BadMagic => f.write_str("not a Postern spool file (bad first line)"),
            Damage::UnknownVersion(v) => write!(f, "unknown format version {v:?}"),
            Damage::Truncated(what) => write!(f, "truncated in the {what}"),
            Damage::LineTooLong(what) => write!(f, "{what} line too long or unterminated"),
            Damage::BadSizeLine => f.write_str("malformed SIZE line"),
            Damage::LengthMismatch { file, expected } => write!(
                f,
                "file is {file} bytes but its header announces {expected} (truncated or extended)"
            ),
            Damage::MissingEndMarker => f.write_str("END marker missing"),
            Damage::ChecksumMismatch { stored, computed } => {
                write!(
                    f,
                    "checksum mismatch: stored {stored}, computed {computed:08x}"
                )
            }
            Damage::TrailingData => f.write_str("data after the END marker"),
            Damage::BadJson(what, err) => write!(f, "unparsable {what}: {err}"),
            Damage::NoRecipients => f.write_str("envelope has no recipients"),
        }
    }
}

/// Failure while decoding from a reader: the file is damaged, or reading failed.
#[derive(Debug)]
pub(crate) enum DecodeError {
    Damage(Damage),
    Io(io::Error),
}

impl From<Damage> for DecodeError {
    fn from(d: Damage) -> Self {
        DecodeError::Damage(d)
    }
}

/// Map a read error: running out of bytes means the file shrank under us.
fn read_err(e: io::Error, what: &'static str) -> DecodeError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        DecodeError::Damage(Damage::Truncated(what))
    } else {
        DecodeError::Io(e)
    }
}

fn trailer(crc: u32) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t.copy_from_slice(format!("\nEND {crc:08x}\n").as_bytes());
    t
}

/// The header of a version-2 message file: format line, envelope, and a
/// SIZE line whose digits are filled in once the message is complete.
#[derive(Debug)]
pub(crate) struct MessageHeader {
    bytes: Vec<u8>,
}

impl MessageHeader {
    /// Build the header for `envelope`. Errors name what the spool refuses
    /// to store.
    pub(crate) fn new(envelope: &Envelope) -> Result<MessageHeader, String> {
        if envelope.recipients.is_empty() {
            return Err("envelope has no recipients".to_owned());
        }
        let json = serde_json::to_vec(envelope).map_err(|e| format!("envelope: {e}"))?;
        if json.len() > MAX_JSON_LINE {
            return Err(format!(
                "envelope is {} bytes of JSON, the limit is {MAX_JSON_LINE}",
                json.len()
            ));
        }
        let version = if envelope.needs_version_3() {
            MESSAGE_VERSION_FLAGS
        } else {
            MESSAGE_VERSION
        };
        let mut bytes = Vec::with_capacity(json.len() + 48);
        bytes.extend_from_slice(format!("{MESSAGE_MAGIC} {version}\n").as_bytes());
        bytes.extend_from_slice(&json);
        bytes.extend_from_slice(format!("\nSIZE {:0width$}\n", 0, width = SIZE_DIGITS).as_bytes());
        Ok(MessageHeader { bytes })
    }

    /// The header bytes (with the SIZE last set).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Where the SIZE digits start, from the start of the file.
    pub(crate) fn size_offset(&self) -> usize {
        self.bytes.len() - SIZE_DIGITS - 1
    }

    /// Write `size` into the SIZE line; returns the digits written.
    pub(crate) fn set_size(&mut self, size: u64) -> [u8; SIZE_DIGITS] {
        let mut digits = [0u8; SIZE_DIGITS];
        digits.copy_from_slice(format!("{size:0width$}", width = SIZE_DIGITS).as_bytes());
        let at = self.size_offset();
        if let Some(slot) = self.bytes.get_mut(at..at + SIZE_DIGITS) {
            slot.copy_from_slice(&digits);
        }
        digits
    }

    /// The trailer for this header (SIZE set) followed by a message whose
    /// bytes hash to `message_crc`.
    pub(crate) fn trailer(&self, message_crc: &crc32fast::Hasher) -> [u8; TRAILER_LEN] {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&self.bytes);
        crc.combine(message_crc);
        trailer(crc.finalize())
    }
}

/// Read one `\n`-terminated line of at most `max` bytes (newline included)
/// into `buf`. Returns false when the line has no newline: EOF or too long.
fn read_line<R: BufRead>(r: &mut R, max: u64, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.clear();
    r.by_ref().take(max).read_until(b'\n', buf)?;
    Ok(buf.last() == Some(&b'\n'))
}

/// Check a `MAGIC VERSION` first line (newline stripped) against the
/// versions this reader knows; returns the version.
fn check_magic(line: &[u8], magic: &str, known: &[u32]) -> Result<u32, Damage> {
    let prefix = format!("{magic} ");
    let Some(version) = line.strip_prefix(prefix.as_bytes()) else {
        return Err(Damage::BadMagic);
    };
    if let Some(v) = known.iter().find(|v| version == v.to_string().as_bytes()) {
        return Ok(*v);
    }
    let v = String::from_utf8_lossy(version);
    if !version.is_empty() && version.len() <= 10 && version.iter().all(u8::is_ascii_digit) {
        return Err(Damage::UnknownVersion(v.into_owned()));
    }
    Err(Damage::BadMagic)
}

/// The first line, or what is wrong with it. `got` is what was read.
fn magic_line_damage(got: &[u8], magic: &str) -> Damage {
    let prefix = format!("{magic} ");
    let n = got.len().min(prefix.len());
    if got[..n] == prefix.as_bytes()[..n] && got.len() < MAGIC_LINE_MAX as usize {
        Damage::Truncated("format line")
    } else {
        Damage::BadMagic
    }
}

/// Parse `SIZE <decimal>` (newline stripped): canonical digits in
/// version 1, exactly [`SIZE_DIGITS`] digits in version 2.
fn parse_size(line: &[u8], version: u32) -> Option<u64> {
    let digits = line.strip_prefix(b"SIZE ")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let canonical = digits.len() == 1 || digits[0] != b'0';
    let fits = match version {
        1 => canonical,
        _ => digits.len() == SIZE_DIGITS,
    };
    if !fits {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

pub(crate) struct DecodedMessage {
    pub envelope: Envelope,
    pub size: u64,
    /// Where the message bytes start in the file.
    pub offset: u64,
}

/// Read and verify a whole message file of `file_len` bytes; the message
/// bytes are streamed through the checksum, never held.
pub(crate) fn decode_message<R: BufRead>(
    r: &mut R,
    file_len: u64,
) -> Result<DecodedMessage, DecodeError> {
    let mut crc = crc32fast::Hasher::new();
    let mut line = Vec::new();

    let complete = read_line(r, MAGIC_LINE_MAX, &mut line).map_err(DecodeError::Io)?;
    if !complete {
        return Err(magic_line_damage(&line, MESSAGE_MAGIC).into());
    }
    let version = check_magic(
        &line[..line.len() - 1],
        MESSAGE_MAGIC,
        MESSAGE_VERSIONS_READ,
    )?;
    crc.update(&line);
    let mut header_len = line.len() as u64;

    let mut json = Vec::new();
    let complete = read_line(r, MAX_JSON_LINE as u64 + 1, &mut json).map_err(DecodeError::Io)?;
    if !complete {
        return Err(if json.len() > MAX_JSON_LINE {
            Damage::LineTooLong("envelope")
        } else {
            Damage::Truncated("envelope line")
        }
        .into());
    }
    crc.update(&json);
    header_len += json.len() as u64;
    json.pop();

    let complete = read_line(r, SIZE_LINE_MAX, &mut line).map_err(DecodeError::Io)?;
    if !complete {
        let n = line.len().min(5);
        let plausible = (line.len() as u64) < SIZE_LINE_MAX
            && line[..n] == b"SIZE "[..n]
            && line
                .get(5..)
                .is_none_or(|d| d.iter().all(u8::is_ascii_digit));
        return Err(if plausible {
            Damage::Truncated("SIZE line")
        } else {
            Damage::BadSizeLine
        }
        .into());
    }
    let size = parse_size(&line[..line.len() - 1], version).ok_or(Damage::BadSizeLine)?;
    crc.update(&line);
    header_len += line.len() as u64;

    let expected = header_len
        .checked_add(size)
        .and_then(|n| n.checked_add(TRAILER_LEN as u64))
        .ok_or(Damage::BadSizeLine)?;
    if expected != file_len {
        return Err(Damage::LengthMismatch {
            file: file_len,
            expected,
        }
        .into());
    }

    let mut left = size;
    let mut chunk = vec![0u8; CHUNK.min(usize::try_from(size).unwrap_or(CHUNK))];
    while left > 0 {
        let n = chunk.len().min(usize::try_from(left).unwrap_or(CHUNK));
        r.read_exact(&mut chunk[..n])
            .map_err(|e| read_err(e, "message"))?;
        crc.update(&chunk[..n]);
        left -= n as u64;
    }

    let mut stored = [0u8; TRAILER_LEN];
    r.read_exact(&mut stored)
        .map_err(|e| read_err(e, "trailer"))?;
    check_trailer(&stored, crc.finalize())?;
    let mut extra = [0u8; 1];
    if r.read(&mut extra).map_err(DecodeError::Io)? != 0 {
        return Err(Damage::TrailingData.into());
    }

    let envelope: Envelope =
        serde_json::from_slice(&json).map_err(|e| Damage::BadJson("envelope", e.to_string()))?;
    if envelope.recipients.is_empty() {
        return Err(Damage::NoRecipients.into());
    }
    Ok(DecodedMessage {
        envelope,
        size,
        offset: header_len,
    })
}

fn check_trailer(stored: &[u8], crc: u32) -> Result<(), Damage> {
    let expected = trailer(crc);
    if stored == expected {
        return Ok(());
    }
    if stored.len() == TRAILER_LEN && stored.starts_with(b"\nEND ") && stored.ends_with(b"\n") {
        return Err(Damage::ChecksumMismatch {
            stored: String::from_utf8_lossy(&stored[5..13]).into_owned(),
            computed: crc,
        });
    }
    Err(Damage::MissingEndMarker)
}

/// Serialize a state file. Errors name what the spool refuses to write.
pub(crate) fn encode_state(recipients: &[RecipientState]) -> Result<Vec<u8>, String> {
    let json = serde_json::to_vec(recipients).map_err(|e| format!("recipient state: {e}"))?;
    if json.len() > MAX_JSON_LINE {
        return Err(format!(
            "recipient state is {} bytes of JSON, the limit is {MAX_JSON_LINE}",
            json.len()
        ));
    }
    let mut out = Vec::with_capacity(json.len() + 40);
    out.extend_from_slice(format!("{STATE_MAGIC} {STATE_VERSION}\n").as_bytes());
    out.extend_from_slice(&json);
    out.push(b'\n');
    let crc = crc32fast::hash(&out);
    // The state trailer is the message trailer without its leading newline:
    // the JSON line already ends with one.
    out.extend_from_slice(&trailer(crc)[1..]);
    Ok(out)
}

/// Verify and parse a whole state file.
pub(crate) fn decode_state(bytes: &[u8]) -> Result<Vec<RecipientState>, Damage> {
    let Some(first_nl) = bytes.iter().position(|&b| b == b'\n') else {
        return Err(magic_line_damage(bytes, STATE_MAGIC));
    };
    check_magic(&bytes[..first_nl], STATE_MAGIC, &[STATE_VERSION])?;
    let tlen = TRAILER_LEN - 1;
    if bytes.len() < first_nl + 1 + tlen + 1 {
        return Err(Damage::Truncated("state file"));
    }
    let (covered, stored) = bytes.split_at(bytes.len() - tlen);
    // `covered` must be exactly two lines: the magic and the JSON.
    let json = &covered[first_nl + 1..];
    let Some((&b'\n', json)) = json.split_last() else {
        return Err(Damage::MissingEndMarker);
    };
    if json.contains(&b'\n') {
        return Err(Damage::MissingEndMarker);
    }
    let crc = crc32fast::hash(covered);
    let mut full = [0u8; TRAILER_LEN];
    full[0] = b'\n';
    full[1..].copy_from_slice(stored);
    check_trailer(&full, crc)?;
    serde_json::from_slice(json).map_err(|e| Damage::BadJson("recipient state", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::DeliveryState;

    fn envelope() -> Envelope {
        Envelope {
            sender: "alice@example.org".into(),
            recipients: vec!["bob@example.net".into(), "carol@example.net".into()],
            received_at: 1_700_000_000,
            client_addr: "203.0.113.5:51234".into(),
            helo: "client.example.org".into(),
            tls: Some("TLSv1.3 TLS13_AES_256_GCM_SHA384".into()),
            body: "8BITMIME".into(),
            smtputf8: false,
            message_id: Some("<1@example.org>".into()),
            requiretls: false,
            tls_required_no: false,
        }
    }

    /// A version-2 file, built the way the spool's writer builds it: the
    /// header first, the SIZE filled in at the end.
    fn file(message: &[u8]) -> Vec<u8> {
        let mut header = MessageHeader::new(&envelope()).expect("encode");
        header.set_size(message.len() as u64);
        let mut crc = crc32fast::Hasher::new();
        crc.update(message);
        let mut f = header.bytes().to_vec();
        f.extend_from_slice(message);
        f.extend_from_slice(&header.trailer(&crc));
        f
    }

    /// A version-1 file, as the previous release wrote it.
    fn v1_file(message: &[u8]) -> Vec<u8> {
        let json = serde_json::to_string(&envelope()).expect("json");
        let mut f = format!("POSTERN-SPOOL 1\n{json}\nSIZE {}\n", message.len()).into_bytes();
        f.extend_from_slice(message);
        let crc = crc32fast::hash(&f);
        f.extend_from_slice(&trailer(crc));
        f
    }

    fn decode(bytes: &[u8]) -> Result<DecodedMessage, Damage> {
        let mut r = bytes;
        decode_message(&mut r, bytes.len() as u64).map_err(|e| match e {
            DecodeError::Damage(d) => d,
            DecodeError::Io(e) => panic!("in-memory read failed: {e}"),
        })
    }

    #[test]
    fn round_trip() {
        for message in [
            &b""[..],
            b"Subject: x\r\n\r\nhi\r\n",
            b"\0\xff\nEND 00000000\n",
        ] {
            for f in [file(message), v1_file(message)] {
                let d = decode(&f).expect("decode");
                assert_eq!(d.envelope, envelope());
                assert_eq!(d.size, message.len() as u64);
                let at = d.offset as usize;
                assert_eq!(&f[at..at + message.len()], message);
            }
        }
    }

    #[test]
    fn sizes_are_fixed_width_in_version_2_only() {
        let f = file(b"hi\r\n");
        let v1 = v1_file(b"hi\r\n");
        let swap = |f: &[u8], from: &[u8], to: &[u8]| -> Vec<u8> {
            let at = f
                .windows(from.len())
                .position(|w| w == from)
                .expect("present");
            let mut g = [&f[..at], to, &f[at + from.len()..]].concat();
            let body_end = g.len() - TRAILER_LEN;
            let crc = crc32fast::hash(&g[..body_end]);
            g.truncate(body_end);
            g.extend_from_slice(&trailer(crc));
            g
        };
        // A version-2 file with a short SIZE, or a version-1 file with a
        // padded one, is damaged even with a valid checksum.
        let short = swap(&f, b"SIZE 00000000000000000004\n", b"SIZE 4\n");
        assert_eq!(decode(&short).err(), Some(Damage::BadSizeLine));
        let padded = swap(&v1, b"SIZE 4\n", b"SIZE 00000000000000000004\n");
        assert_eq!(decode(&padded).err(), Some(Damage::BadSizeLine));
        let wide = swap(
            &f,
            b"SIZE 00000000000000000004\n",
            b"SIZE 000000000000000000004\n",
        );
        assert!(decode(&wide).is_err());
        let max = format!("{}", u64::MAX);
        assert_eq!(max.len(), SIZE_DIGITS, "every size fits the width");
    }

    #[test]
    fn layout_is_as_documented() {
        let f = file(b"hi\r\n");
        let text = String::from_utf8(f).expect("utf8");
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines[0], "POSTERN-SPOOL 2");
        assert!(lines[1].starts_with("{\"sender\":\"alice@example.org\""));
        assert_eq!(lines[2], "SIZE 00000000000000000004");
        assert_eq!(lines[3], "hi\r");
        let crc = crc32fast::hash(&text.as_bytes()[..text.len() - TRAILER_LEN]);
        // The trailer's own newline gives an empty line after a message that
        // ends in CRLF, and keeps END on its own line when it does not.
        assert_eq!(lines[4], "");
        assert_eq!(lines[5], format!("END {crc:08x}"));
        assert_eq!(lines[6], "");
        assert_eq!(lines.len(), 7);
    }

    #[test]
    fn every_truncation_is_detected() {
        let message = b"Subject: test\r\n\r\nbody line\r\n";
        for f in [file(message), v1_file(message)] {
            for len in 0..f.len() {
                assert!(decode(&f[..len]).is_err(), "truncated at {len} accepted");
            }
        }
    }

    #[test]
    fn every_byte_flip_is_detected() {
        let message = b"Subject: test\r\n\r\nbody line\r\n";
        for f in [file(message), v1_file(message)] {
            for i in 0..f.len() {
                for mask in [0x01u8, 0x20, 0x80, 0xff] {
                    let mut g = f.clone();
                    g[i] ^= mask;
                    assert!(decode(&g).is_err(), "flip {mask:#x} at {i} accepted");
                }
            }
        }
    }

    #[test]
    fn extension_is_detected() {
        let mut f = file(b"x");
        f.push(b'\n');
        assert!(decode(&f).is_err());
    }

    #[test]
    fn version_and_magic() {
        let f = file(b"x");
        let v4 = [b"POSTERN-SPOOL 4".as_slice(), &f[15..]].concat();
        assert_eq!(decode(&v4).err(), Some(Damage::UnknownVersion("4".into())));
        let other = [b"SOMETHING ELSE 1".as_slice(), &f[15..]].concat();
        assert_eq!(decode(&other).err(), Some(Damage::BadMagic));
        assert_eq!(
            decode(b"POSTERN-SP").err(),
            Some(Damage::Truncated("format line"))
        );
        assert_eq!(decode(b"").err(), Some(Damage::Truncated("format line")));
        assert_eq!(decode(b"hello").err(), Some(Damage::BadMagic));
    }

    #[test]
    fn valid_checksum_but_bad_json() {
        let mut f = b"POSTERN-SPOOL 1\n{\"sender\":\nSIZE 1\nx".to_vec();
        let crc = crc32fast::hash(&f);
        f.extend_from_slice(&trailer(crc));
        assert!(matches!(decode(&f), Err(Damage::BadJson(..))));
    }

    #[test]
    fn huge_size_does_not_allocate() {
        for mut f in [
            b"POSTERN-SPOOL 1\n{}\nSIZE 18446744073709551615\n".to_vec(),
            b"POSTERN-SPOOL 2\n{}\nSIZE 18446744073709551615\n".to_vec(),
        ] {
            let crc = crc32fast::hash(&f);
            f.extend_from_slice(&trailer(crc));
            assert!(decode(&f).is_err());
        }
    }

    #[test]
    fn refuses_empty_recipients() {
        let mut e = envelope();
        e.recipients.clear();
        assert!(MessageHeader::new(&e).is_err());
    }

    fn states() -> Vec<RecipientState> {
        vec![
            RecipientState::pending("bob@example.net"),
            RecipientState {
                address: "carol@example.net".into(),
                state: DeliveryState::Deferred,
                attempts: 2,
                next_attempt: Some(1_700_000_600),
                last_error: Some("mx.example.net[192.0.2.1]: 451 4.7.1 try later".into()),
            },
        ]
    }

    #[test]
    fn state_round_trip_and_layout() {
        let f = encode_state(&states()).expect("encode");
        assert_eq!(decode_state(&f), Ok(states()));
        let text = String::from_utf8(f).expect("utf8");
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], "POSTERN-STATE 1", "state files keep version 1");
        assert!(lines[1].contains("\"state\":\"deferred\""));
        assert!(lines[2].starts_with("END "));
    }

    #[test]
    fn state_damage_detected() {
        let f = encode_state(&states()).expect("encode");
        for len in 0..f.len() {
            assert!(
                decode_state(&f[..len]).is_err(),
                "truncated at {len} accepted"
            );
        }
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x04;
            assert!(decode_state(&g).is_err(), "flip at {i} accepted");
        }
        let mut g = f.clone();
        g.push(b'\n');
        assert!(decode_state(&g).is_err());
    }
}
