//! `data_receiver`: the DATA receiver fed in arbitrary splits, compared
//! with a reference reader.
//!
//! Input: one byte for the size limit, two for the split seed, then the
//! bytes the client sent after `354`.
//!
//! Invariants: whatever the splits, the receiver consumes no more than it
//! was given, reports at most one outcome, and agrees with feeding the
//! whole input at once; the end of data is exactly the first `CRLF.CRLF`
//! (or `.CRLF` at the very start) and nothing else — no bare CR or LF
//! variant can end the data (SMTP smuggling); a message with only CRLF line
//! endings comes out dot-unstuffed, or `TooBig` when over the limit; a
//! message with a bare CR or LF never comes out as `Complete`; and a
//! complete message dot-stuffed again (as the outbound client does) reads
//! back unchanged.

use postern_proto::DataReceiver;

use crate::{strict_crlf, Input, Received, Splits};

/// The session's view: the outcome and how many bytes it took.
type Run = (Option<Received>, usize);

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let max = match input.byte() {
        255 => 1 << 20,
        b => usize::from(b) * 4,
    };
    let seed = input.u16();
    let stream = input.rest();

    let whole = feed(max, stream, &mut |_| stream.len());
    let mut splits = Splits::new(u64::from(seed));
    let limit = 1 + usize::from(seed >> 12);
    let split = feed(max, stream, &mut |_| splits.next(limit));
    assert_eq!(whole, split, "split reads differ from one read");
    if stream.len() <= 2048 {
        let bytewise = feed(max, stream, &mut |_| 1);
        assert_eq!(whole, bytewise, "byte-by-byte differs from one read");
    }
    check_reference(max, stream, &whole);

    if let (Some(Received::Complete(message)), _) = &whole {
        assert!(message.len() <= max);
        assert!(strict_crlf(message));
        assert!(message.is_empty() || message.ends_with(b"\r\n"));
        let mut wire = stuff(message);
        wire.extend_from_slice(b".\r\n");
        let again = feed(max, &wire, &mut |_| wire.len());
        assert_eq!(
            again,
            (Some(Received::Complete(message.clone())), wire.len()),
            "dot-stuffing round trip"
        );
    }
}

/// Feed `stream` the way the session does: a read appends `piece(..)` more
/// bytes to the buffer, the receiver consumes some, the rest stays.
fn feed(max: usize, stream: &[u8], piece: &mut dyn FnMut(usize) -> usize) -> Run {
    let mut receiver = DataReceiver::new(max);
    let mut message = Vec::new();
    let mut buffer: Vec<u8> = Vec::new();
    let mut offset = 0;
    let mut taken = 0;
    while offset < stream.len() {
        let n = piece(stream.len() - offset).clamp(1, stream.len() - offset);
        buffer.extend_from_slice(&stream[offset..offset + n]);
        offset += n;
        let (consumed, outcome) = receiver.feed(&buffer, &mut message);
        assert!(consumed <= buffer.len(), "consumed more than given");
        assert!(message.len() <= max, "passed on more than the limit");
        taken += consumed;
        buffer.drain(..consumed);
        if let Some(outcome) = outcome {
            // Spent: never a second outcome, never another byte.
            let before = message.len();
            assert_eq!(receiver.feed(&buffer, &mut message), (0, None));
            assert_eq!(receiver.feed(b"\r\n.\r\n", &mut message), (0, None));
            assert_eq!(message.len(), before, "spent receiver passed bytes on");
            return (Some(Received::new(outcome, message)), taken);
        }
        assert!(buffer.is_empty(), "bytes left over without an outcome");
    }
    (None, taken)
}

/// The reference: where the data ends and what it must yield.
fn check_reference(max: usize, stream: &[u8], (outcome, taken): &Run) {
    let end = if stream.starts_with(b".\r\n") {
        Some((0, 3))
    } else {
        stream
            .windows(5)
            .position(|w| w == b"\r\n.\r\n")
            .map(|i| (i + 2, i + 5))
    };
    let Some((body_end, data_end)) = end else {
        assert_eq!(*outcome, None, "end of data without CRLF.CRLF");
        assert_eq!(*taken, stream.len());
        return;
    };
    assert_eq!(*taken, data_end, "end of data not at the first CRLF.CRLF");
    let body = &stream[..body_end];
    let Some(outcome) = outcome else {
        panic!("CRLF.CRLF not taken as the end of data");
    };
    if strict_crlf(body) {
        let message = unstuff(body);
        let expected = if message.len() > max {
            Received::TooBig
        } else {
            Received::Complete(message)
        };
        assert_eq!(*outcome, expected);
    } else if body.len() <= max {
        assert_eq!(*outcome, Received::BareLineEnding);
    } else {
        assert!(matches!(
            outcome,
            Received::BareLineEnding | Received::TooBig
        ));
    }
}

/// RFC 5321 §4.5.2 on a body with only CRLF line ends: drop the first dot
/// of every line.
fn unstuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    for line in body.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

/// RFC 5321 §4.5.2, sending side: double a dot at the start of every line.
fn stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 8);
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out
}
