//! The BDAT receiver (RFC 3030 CHUNKING): chunks of exactly announced size,
//! concatenated into one message, checked with the same strict line-ending
//! rules as DATA (a bare CR or LF makes the message bad, also across chunk
//! boundaries), and the same size limit.
//!
//! BDAT data is taken verbatim: there is no dot-stuffing and no terminator,
//! only the announced byte counts.
//!
//! As with DATA, the receiver keeps no message: it appends the bytes to the
//! caller's buffer, and stops appending once the message is refused.

use crate::data::DataOutcome;

#[derive(Debug)]
pub struct BdatReceiver {
    max_size: usize,
    /// Bytes of the current chunk still expected.
    remaining: u64,
    /// Bytes received over all chunks (saturating).
    size: u64,
    /// The last byte received was a CR (its LF may start the next chunk).
    pending_cr: bool,
    /// A bare CR or LF was seen.
    bad: bool,
    /// The last byte received (a good message ends in CRLF iff it is LF).
    last: Option<u8>,
}

impl BdatReceiver {
    pub fn new(max_size: usize) -> Self {
        Self {
            max_size,
            remaining: 0,
            size: 0,
            pending_cr: false,
            bad: false,
            last: None,
        }
    }

    /// Start a chunk of `size` bytes (after a `BDAT size [LAST]` command).
    ///
    /// Any part of a previous chunk still outstanding is forgotten (the
    /// session only starts a chunk when the previous one is complete).
    /// An announced chunk that cannot fit refuses the message at once.
    pub fn begin_chunk(&mut self, size: u64) {
        self.remaining = size;
    }

    /// Bytes of the current chunk still expected.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Consume up to `remaining()` bytes of `input`, appending them to
    /// `out` while the message can still be accepted; returns the number
    /// consumed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let take = usize::try_from(self.remaining).map_or(input.len(), |r| r.min(input.len()));
        let chunk = input.get(..take).unwrap_or_default();
        self.remaining -= take as u64;
        self.size = self.size.saturating_add(take as u64);
        if !self.bad {
            self.check_line_endings(chunk);
        }
        if let Some(&byte) = chunk.last() {
            self.last = Some(byte);
        }
        if !self.is_refused() {
            out.extend_from_slice(chunk);
        }
        take
    }

    /// Whether the message is already certain to be refused: a bare CR or
    /// LF, or more bytes received or announced than the limit allows.
    pub fn is_refused(&self) -> bool {
        self.bad || self.is_too_big() || self.will_be_too_big()
    }

    /// After the chunk marked LAST is complete: the outcome of the whole
    /// message. A message that does not end in CRLF is completed with one,
    /// appended to `out`.
    ///
    /// The added CRLF does not count against the size limit, and an empty
    /// message stays empty. Called early (bytes of the chunk still
    /// outstanding), it judges what has arrived, except that a chunk
    /// announced past the size limit already makes the message too big.
    pub fn finish(self, out: &mut Vec<u8>) -> DataOutcome {
        if self.will_be_too_big() {
            return DataOutcome::TooBig;
        }
        if self.bad || self.pending_cr {
            return DataOutcome::BareLineEnding;
        }
        if self.last.is_some_and(|b| b != b'\n') {
            out.extend_from_slice(b"\r\n");
        }
        DataOutcome::Complete
    }

    /// Whether the message so far is already over the size limit (the
    /// session may answer `552 5.3.4` at once after a non-LAST chunk).
    pub fn is_too_big(&self) -> bool {
        self.size > self.max_size as u64
    }

    /// Whether the bytes received plus those announced exceed the limit.
    fn will_be_too_big(&self) -> bool {
        self.size.saturating_add(self.remaining) > self.max_size as u64
    }

    /// Mark the message bad on a CR not followed by LF or an LF not preceded
    /// by CR; a CR at the end of `chunk` is judged by the next byte.
    fn check_line_endings(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        loop {
            if self.pending_cr {
                match rest.split_first() {
                    None => return,
                    Some((b'\n', tail)) => rest = tail,
                    Some(_) => {
                        self.bad = true;
                        self.pending_cr = false;
                        return;
                    }
                }
                self.pending_cr = false;
            }
            let Some(at) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
                return;
            };
            if rest.get(at) == Some(&b'\n') {
                self.bad = true;
                return;
            }
            self.pending_cr = true;
            rest = rest.get(at + 1..).unwrap_or_default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tests::{got, Got, Rng};

    /// Receive `chunks` (each announced with its own size), each fed in
    /// pieces chosen by `rng` (or byte by byte when `rng` is None).
    fn run(max: usize, chunks: &[&[u8]], mut rng: Option<&mut Rng>) -> Got {
        let mut receiver = BdatReceiver::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            receiver.begin_chunk(chunk.len() as u64);
            // Pipelined bytes after the chunk must never be taken.
            let mut wire = chunk.to_vec();
            wire.extend_from_slice(b"BDAT 0 LAST\r\n");
            let mut offset = 0;
            while receiver.remaining() > 0 {
                let piece = match rng.as_deref_mut() {
                    Some(rng) => 1 + rng.below(7),
                    None => 1,
                };
                let end = (offset + piece).min(wire.len());
                let consumed = receiver.feed(&wire[offset..end], &mut out);
                offset += consumed;
            }
            assert_eq!(offset, chunk.len());
            assert_eq!(receiver.feed(b"BDAT 0 LAST\r\n", &mut out), 0);
        }
        let outcome = receiver.finish(&mut out);
        got(outcome, out)
    }

    fn check(max: usize, chunks: &[&[u8]]) -> Got {
        let whole = {
            let mut receiver = BdatReceiver::new(max);
            let mut out = Vec::new();
            for chunk in chunks {
                receiver.begin_chunk(chunk.len() as u64);
                assert_eq!(receiver.feed(chunk, &mut out), chunk.len());
                assert_eq!(receiver.remaining(), 0);
            }
            assert!(out.len() <= max, "appended past the limit");
            let outcome = receiver.finish(&mut out);
            got(outcome, out)
        };
        assert_eq!(run(max, chunks, None), whole, "byte by byte: {chunks:?}");
        let mut rng = Rng::new(chunks.len() as u64);
        for _ in 0..32 {
            assert_eq!(
                run(max, chunks, Some(&mut rng)),
                whole,
                "random split: {chunks:?}"
            );
        }
        whole
    }

    fn complete(bytes: &[u8]) -> Got {
        Got::Complete(bytes.to_vec())
    }

    #[test]
    fn chunks_table() {
        let rows: &[(&[&[u8]], Got)] = &[
            // good
            (&[], complete(b"")),
            (&[b""], complete(b"")),
            (&[b"a\r\n"], complete(b"a\r\n")),
            (&[b"a\r\n", b"b\r\n"], complete(b"a\r\nb\r\n")),
            (&[b"a\r", b"\nb\r\n"], complete(b"a\r\nb\r\n")),
            (&[b"a\r", b"", b"\nb"], complete(b"a\r\nb\r\n")),
            (&[b"no line end"], complete(b"no line end\r\n")),
            (&[b"x\r\n", b"y"], complete(b"x\r\ny\r\n")),
            (&[b"\r\n"], complete(b"\r\n")),
            // no dot-stuffing and no terminator in BDAT
            (&[b"..\r\n.\r\n", b"x\r\n"], complete(b"..\r\n.\r\nx\r\n")),
            (&[b"a\0b\r\n"], complete(b"a\0b\r\n")),
            // bare line endings, also across chunks
            (&[b"a\nb\r\n"], Got::BareLineEnding),
            (&[b"a\rb\r\n"], Got::BareLineEnding),
            (&[b"a\r\r\n"], Got::BareLineEnding),
            (&[b"a\r\n\n"], Got::BareLineEnding),
            (&[b"a\r", b"b\r\n"], Got::BareLineEnding),
            (&[b"a", b"\nb\r\n"], Got::BareLineEnding),
            (&[b"a\r\n", b"\n"], Got::BareLineEnding),
            (&[b"\n"], Got::BareLineEnding),
            (&[b"a\r\n.\nb\r\n"], Got::BareLineEnding),
            (&[b"a\r\n.\rb\r\n"], Got::BareLineEnding),
            // lone CR at the very end
            (&[b"a\r"], Got::BareLineEnding),
            (&[b"a\r\n", b"\r"], Got::BareLineEnding),
        ];
        for (chunks, expected) in rows {
            assert_eq!(check(100, chunks), *expected, "{chunks:?}");
        }
    }

    #[test]
    fn size_limit() {
        assert_eq!(check(6, &[b"abc\r\n", b"d"]), complete(b"abc\r\nd\r\n"));
        assert_eq!(check(5, &[b"abc\r\n", b"d"]), Got::TooBig);
        assert_eq!(check(5, &[b"abc\r\n"]), complete(b"abc\r\n"));
        assert_eq!(check(4, &[b"abc\r\n"]), Got::TooBig);
        assert_eq!(check(0, &[b""]), complete(b""));
        assert_eq!(check(0, &[b"x"]), Got::TooBig);
        // TooBig takes priority over bare line endings.
        assert_eq!(check(3, &[b"a\nbcd"]), Got::TooBig);
        assert_eq!(check(3, &[b"abcd\n"]), Got::TooBig);
    }

    #[test]
    fn too_big_between_chunks() {
        let mut receiver = BdatReceiver::new(10);
        let mut out = Vec::new();
        receiver.begin_chunk(8);
        assert_eq!(receiver.feed(b"12345678", &mut out), 8);
        assert!(!receiver.is_too_big());
        receiver.begin_chunk(8);
        assert!(
            !receiver.is_too_big(),
            "counts received bytes, not announced ones"
        );
        assert!(receiver.is_refused(), "but refuses what cannot fit at once");
        assert_eq!(receiver.feed(b"1234", &mut out), 4);
        assert!(receiver.is_too_big());
        assert_eq!(out, b"12345678", "stops passing bytes on");
        assert_eq!(receiver.feed(b"5678NOOP", &mut out), 4);
        assert_eq!(receiver.remaining(), 0);
        assert_eq!(receiver.finish(&mut out), DataOutcome::TooBig);
        assert_eq!(out, b"12345678");
    }

    #[test]
    fn huge_announced_chunk() {
        let mut receiver = BdatReceiver::new(1 << 20);
        let mut out = Vec::new();
        receiver.begin_chunk(u64::MAX);
        assert!(receiver.is_refused());
        assert_eq!(receiver.feed(b"abc", &mut out), 3);
        assert_eq!(receiver.remaining(), u64::MAX - 3);
        assert!(!receiver.is_too_big());
        assert!(out.is_empty());
    }

    #[test]
    fn finish_early_judges_what_arrived() {
        let mut receiver = BdatReceiver::new(100);
        let mut out = Vec::new();
        receiver.begin_chunk(10);
        assert_eq!(receiver.feed(b"ab\r\n", &mut out), 4);
        assert_eq!(receiver.remaining(), 6);
        assert_eq!(receiver.finish(&mut out), DataOutcome::Complete);
        assert_eq!(out, b"ab\r\n");
        let mut receiver = BdatReceiver::new(100);
        receiver.begin_chunk(101);
        assert_eq!(receiver.feed(b"ab\r\n", &mut out), 4);
        assert_eq!(receiver.finish(&mut out), DataOutcome::TooBig);
    }
}
