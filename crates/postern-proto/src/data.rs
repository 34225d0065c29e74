//! The DATA receiver (RFC 5321 §4.1.1.4, §4.5.2) with strict CRLF framing.
//!
//! End of data is exactly `CRLF . CRLF` (the first line may be `.` at the
//! very start). A bare CR or a bare LF anywhere marks the message as bad
//! but is never taken as a line end, so the receiver keeps reading until
//! the real `CRLF.CRLF` and the sender cannot smuggle a second message
//! (CVE-2023-51764 and relatives).
//!
//! Dot-unstuffing follows RFC 5321 §4.5.2: a period at the start of a line
//! is removed, so `..` keeps one dot (and a lone leading dot before other
//! text, which a correct client never sends, is dropped too). NUL and other
//! octets are plain data here; only CR and LF are framing.
//!
//! The receiver keeps no message: it appends the unstuffed bytes to the
//! caller's buffer as they arrive, so the caller can stream them to disk
//! and memory stays bounded whatever the message size. Once the message is
//! known to be refused (bare line ending, over the limit) nothing more is
//! appended; [`DataReceiver::is_refused`] says so at once.

/// How the message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataOutcome {
    /// Every byte appended to the output is the message: unstuffed, CRLF
    /// line ends, without the final `.CRLF`.
    Complete,
    /// More than `max_size` bytes: `552 5.3.4`.
    TooBig,
    /// A bare CR or bare LF was seen: `550 5.5.2`.
    BareLineEnding,
}

/// Where the receiver stands relative to the line structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line: right after CRLF, or at the start of data.
    LineStart,
    /// A `.` at the start of a line (dropped: stuffing or terminator).
    Dot,
    /// `.` CR at the start of a line (the CR is held back: it is part of
    /// the terminator if LF follows).
    DotCr,
    /// Inside a line.
    Text,
    /// Right after a CR inside a line (already stored; LF must follow).
    Cr,
}

/// What the byte just examined does to the output.
enum Step {
    /// Part of the message.
    Keep,
    /// Not part of the message (a line-start dot, or the CR after it).
    Drop,
    /// The LF of the terminating `CRLF.CRLF`.
    End,
}

/// Incremental DATA receiver. Feed it bytes as they arrive.
#[derive(Debug)]
pub struct DataReceiver {
    max_size: usize,
    state: State,
    /// Unstuffed bytes seen so far (saturating), stored or not.
    size: usize,
    /// A bare CR or LF was seen.
    bad: bool,
    /// The end of data was reached and the outcome returned.
    finished: bool,
}

impl DataReceiver {
    pub fn new(max_size: usize) -> Self {
        Self {
            max_size,
            state: State::LineStart,
            size: 0,
            bad: false,
            finished: false,
        }
    }

    /// Consume bytes from `input`, appending the message bytes among them
    /// to `out`. Returns how many bytes were consumed and `Some(outcome)`
    /// when the end of data was reached (bytes after the terminator are not
    /// consumed: they are the next pipelined command). Once the message is
    /// refused (over `max_size`, bare line ending) nothing more is appended,
    /// but the receiver keeps reading to the terminator.
    ///
    /// After the outcome has been returned the receiver is spent: further
    /// calls consume nothing and return `(0, None)`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Option<DataOutcome>) {
        if self.finished {
            return (0, None);
        }
        // Bytes from `run` to `pos` are message bytes not yet emitted; they
        // are emitted in one slice whenever a byte has to be dropped.
        let mut run = 0;
        let mut pos = 0;
        loop {
            if self.state == State::Text {
                // Hot path: skip ordinary text up to the next CR or LF.
                let rest = input.get(pos..).unwrap_or_default();
                match rest.iter().position(|&b| b == b'\r' || b == b'\n') {
                    Some(offset) => pos += offset,
                    None => {
                        pos = input.len();
                        break;
                    }
                }
            }
            let Some(&byte) = input.get(pos) else {
                break;
            };
            match self.step(byte) {
                Step::Keep => pos += 1,
                Step::Drop => {
                    self.emit(input.get(run..pos).unwrap_or_default(), out);
                    pos += 1;
                    run = pos;
                }
                Step::End => {
                    self.emit(input.get(run..pos).unwrap_or_default(), out);
                    self.finished = true;
                    return (pos + 1, Some(self.outcome()));
                }
            }
        }
        self.emit(input.get(run..pos).unwrap_or_default(), out);
        (pos, None)
    }

    /// Advance the state machine by one byte.
    fn step(&mut self, byte: u8) -> Step {
        match (self.state, byte) {
            (State::LineStart, b'.') => {
                self.state = State::Dot;
                Step::Drop
            }
            (State::LineStart | State::Text, b'\r') => {
                self.state = State::Cr;
                Step::Keep
            }
            (State::LineStart | State::Text, b'\n') => {
                // Bare LF: never a line end, so a following dot is text.
                self.bad = true;
                self.state = State::Text;
                Step::Keep
            }
            (State::LineStart | State::Text, _) => {
                self.state = State::Text;
                Step::Keep
            }
            (State::Cr, b'\n') => {
                self.state = State::LineStart;
                Step::Keep
            }
            (State::Cr, b'\r') => {
                // The previous CR was bare; this one may still start a CRLF.
                self.bad = true;
                Step::Keep
            }
            (State::Cr, _) => {
                self.bad = true;
                self.state = State::Text;
                Step::Keep
            }
            (State::Dot, b'\r') => {
                self.state = State::DotCr;
                Step::Drop
            }
            (State::Dot, b'\n') => {
                self.bad = true;
                self.state = State::Text;
                Step::Keep
            }
            (State::Dot, _) => {
                // `..` keeps the second dot; any other text follows the
                // removed dot.
                self.state = State::Text;
                Step::Keep
            }
            (State::DotCr, b'\n') => Step::End,
            (State::DotCr, _) => {
                // The held-back CR was bare: count it (the message is bad,
                // so it need not be stored) and read `byte` as text after it.
                self.bad = true;
                self.size = self.size.saturating_add(1);
                self.state = State::Text;
                self.step(byte)
            }
        }
    }

    /// Whether the message is already certain to be refused (too big, or
    /// a bare CR or LF): what was appended so far can be thrown away.
    pub fn is_refused(&self) -> bool {
        self.bad || self.size > self.max_size
    }

    /// Account for message bytes, passing them on while the message can
    /// still be accepted.
    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.size = self.size.saturating_add(bytes.len());
        if !self.is_refused() {
            out.extend_from_slice(bytes);
        }
    }

    fn outcome(&self) -> DataOutcome {
        if self.size > self.max_size {
            DataOutcome::TooBig
        } else if self.bad {
            DataOutcome::BareLineEnding
        } else {
            DataOutcome::Complete
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny deterministic generator (xorshift64*) for split points.
    pub(crate) struct Rng(u64);

    impl Rng {
        pub(crate) fn new(seed: u64) -> Self {
            Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
        }

        /// Cut `len` bytes into pieces of random lengths (1..=max_piece).
        pub(crate) fn pieces(&mut self, len: usize, max_piece: usize) -> Vec<usize> {
            let mut out = Vec::new();
            let mut left = len;
            while left > 0 {
                let n = (1 + self.below(max_piece)).min(left);
                out.push(n);
                left -= n;
            }
            out
        }
    }

    /// A finished message as the tests compare it: the outcome together with
    /// the bytes the receiver appended (only kept for a complete message).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Got {
        Complete(Vec<u8>),
        TooBig,
        BareLineEnding,
    }

    pub(crate) fn got(outcome: DataOutcome, message: Vec<u8>) -> Got {
        match outcome {
            DataOutcome::Complete => Got::Complete(message),
            DataOutcome::TooBig => Got::TooBig,
            DataOutcome::BareLineEnding => Got::BareLineEnding,
        }
    }

    /// Feed `input` in pieces of the given lengths, the way a session does:
    /// unconsumed bytes stay in its buffer and come back with the next read.
    /// Returns the outcome and the bytes left unconsumed.
    fn run(max: usize, input: &[u8], pieces: &[usize]) -> (Option<Got>, Vec<u8>) {
        let mut receiver = DataReceiver::new(max);
        let mut message = Vec::new();
        let mut buffer = Vec::new();
        let mut offset = 0;
        for &n in pieces {
            buffer.extend_from_slice(&input[offset..offset + n]);
            offset += n;
            let (consumed, outcome) = receiver.feed(&buffer, &mut message);
            assert!(consumed <= buffer.len());
            assert!(message.len() <= max, "appended past the limit");
            buffer.drain(..consumed);
            if let Some(outcome) = outcome {
                buffer.extend_from_slice(&input[offset..]);
                let before = message.len();
                assert_eq!(
                    receiver.feed(b".\r\n", &mut message),
                    (0, None),
                    "spent receiver"
                );
                assert_eq!(message.len(), before, "spent receiver appended");
                return (Some(got(outcome, message)), buffer);
            }
            assert!(
                buffer.is_empty(),
                "without an outcome everything is consumed"
            );
        }
        (None, buffer)
    }

    /// Run `input` whole, byte by byte, and in many random splits; all must
    /// agree.
    fn check(max: usize, input: &[u8]) -> (Option<Got>, Vec<u8>) {
        let whole = run(max, input, &[input.len()]);
        let bytewise = run(max, input, &vec![1; input.len()]);
        assert_eq!(
            whole,
            bytewise,
            "byte-by-byte differs for {:?}",
            String::from_utf8_lossy(input)
        );
        let mut rng = Rng::new(input.len() as u64 + max as u64);
        for round in 0..64 {
            let pieces = rng.pieces(input.len(), 1 + round % 9);
            let split = run(max, input, &pieces);
            assert_eq!(
                whole,
                split,
                "split {pieces:?} differs for {:?}",
                String::from_utf8_lossy(input)
            );
        }
        whole
    }

    fn complete(bytes: &[u8]) -> Option<Got> {
        Some(Got::Complete(bytes.to_vec()))
    }

    const BAD: Option<Got> = Some(Got::BareLineEnding);
    const BIG: Option<Got> = Some(Got::TooBig);

    #[test]
    fn framing_table() {
        // (input, outcome, bytes left for the next command)
        let rows: &[(&[u8], Option<Got>, &[u8])] = &[
            // good
            (b".\r\n", complete(b""), b""),
            (b"a\r\n.\r\n", complete(b"a\r\n"), b""),
            (b"\r\n.\r\n", complete(b"\r\n"), b""),
            (
                b"Subject: x\r\n\r\nbody\r\n.\r\n",
                complete(b"Subject: x\r\n\r\nbody\r\n"),
                b"",
            ),
            (b"a\r\n.\r\nQUIT\r\n", complete(b"a\r\n"), b"QUIT\r\n"),
            (
                b".\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\n",
                complete(b""),
                b"MAIL FROM:<>\r\nRCPT TO:<a@b>\r\n",
            ),
            (b"a\r\n.\r\n.\r\n", complete(b"a\r\n"), b".\r\n"),
            // dot-stuffing
            (b"..\r\n.\r\n", complete(b".\r\n"), b""),
            (b"...\r\n.\r\n", complete(b"..\r\n"), b""),
            (b"a\r\n..b\r\n.\r\n", complete(b"a\r\n.b\r\n"), b""),
            (b"a\r\n..\r\n.\r\n", complete(b"a\r\n.\r\n"), b""),
            (b"a.\r\nb..\r\n.\r\n", complete(b"a.\r\nb..\r\n"), b""),
            (b".x\r\n.\r\n", complete(b"x\r\n"), b""),
            (b"x\r\n .\r\n.\r\n", complete(b"x\r\n .\r\n"), b""),
            // NUL is data, never framing
            (b"a\0b\r\n.\r\n", complete(b"a\0b\r\n"), b""),
            (b"\0\r\n.\r\n", complete(b"\0\r\n"), b""),
            (b"a\r\n\0.\r\n.\r\n", complete(b"a\r\n\0.\r\n"), b""),
            (b"a\r\n.\0\r\n.\r\n", complete(b"a\r\n\0\r\n"), b""),
            // 8-bit is data
            (b"\xc3\xbc\xff\r\n.\r\n", complete(b"\xc3\xbc\xff\r\n"), b""),
            // not finished yet
            (b"", None, b""),
            (b"a\r\n", None, b""),
            (b"a\r\n.", None, b""),
            (b"a\r\n.\r", None, b""),
            (b"a\r", None, b""),
            (b"a\r\n..\r\n", None, b""),
            // smuggling: none of these ends the data; the real end does
            (b"a\n.\nMAIL FROM:<x@y>\r\n.\r\n", BAD, b""),
            (b"a\n.\r\nMAIL FROM:<x@y>\r\n.\r\n", BAD, b""),
            (b"a\r\n.\nMAIL FROM:<x@y>\r\n.\r\n", BAD, b""),
            (b"a\r.\rMAIL FROM:<x@y>\r\n.\r\n", BAD, b""),
            (b"a\r.\r\nMAIL FROM:<x@y>\r\n.\r\n", BAD, b""),
            (b"a\r\n.\rMAIL FROM:<x@y>\r\n.\r\n", BAD, b""),
            (b"a\r\n.\r\rMAIL FROM:<x@y>\r\n.\r\n", BAD, b""),
            (b"a\r\n.\r\r\n.\r\n", BAD, b""),
            (b"a\n\r\n.\r\nQUIT\r\n", BAD, b"QUIT\r\n"),
            (b"\n.\r\n.\r\n", BAD, b""),
            (b".\n.\r\n", None, b""),
            (b".\n\r\n.\r\n", BAD, b""),
            (b"a\r\r\n.\r\n", BAD, b""),
            (b"a\rb\r\n.\r\n", BAD, b""),
            (b"a\nb\r\n.\r\n", BAD, b""),
            (b"a\r\n\r\r\n.\r\n", BAD, b""),
            // bad but not yet finished: a smuggled end is not an end
            (b"a\n.\n", None, b""),
            (b"a\n.\r\n", None, b""),
            (b"a\r\n.\n", None, b""),
            (b"a\r.\r", None, b""),
            (b"a\r\n.\r\rX", None, b""),
            (b"a\r\n.\r\r\n", None, b""),
            (b"a\r\n\0.\r\n", None, b""),
            (b"a\r\n.\0\r\n", None, b""),
            (b"a\r\n.\r\0\n", None, b""),
            // lone CR at the very end of a message
            (b"a\r\r\n.\r\n", BAD, b""),
            (b"a\r", None, b""),
        ];
        for (input, outcome, left) in rows {
            let (got, rest) = check(1000, input);
            assert_eq!(got, *outcome, "input {:?}", String::from_utf8_lossy(input));
            assert_eq!(
                rest,
                *left,
                "leftover for {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn size_limit() {
        // 8 content bytes: "1234567" CRLF minus nothing.
        let msg = b"123456\r\n.\r\n";
        assert_eq!(check(8, msg).0, complete(b"123456\r\n"));
        assert_eq!(check(7, msg).0, BIG);
        assert_eq!(check(0, b".\r\n").0, complete(b""));
        assert_eq!(check(0, b"\r\n.\r\n").0, BIG);
        // Counted after unstuffing: "..\r\n" is 3 bytes of content.
        assert_eq!(check(3, b"..\r\n.\r\n").0, complete(b".\r\n"));
        assert_eq!(check(2, b"..\r\n.\r\n").0, BIG);
        // Still reads to the terminator and leaves the next command.
        let (outcome, rest) = check(4, b"0123456789\r\n..\r\n.\r\nQUIT\r\n");
        assert_eq!(outcome, BIG);
        assert_eq!(rest, b"QUIT\r\n");
        // TooBig takes priority over a bare line ending, either order.
        assert_eq!(check(4, b"a\nbcdefgh\r\n.\r\n").0, BIG);
        assert_eq!(check(4, b"abcdefgh\n\r\n.\r\n").0, BIG);
        assert_eq!(check(100, b"a\nbcdefgh\r\n.\r\n").0, BAD);
    }

    #[test]
    fn over_limit_stops_passing_bytes_on() {
        let mut receiver = DataReceiver::new(1024);
        let mut out = Vec::new();
        let line = [b'x'; 1000];
        for _ in 0..100 {
            assert_eq!(receiver.feed(&line, &mut out), (1000, None));
            assert_eq!(receiver.feed(b"\r\n", &mut out), (2, None));
        }
        assert!(receiver.is_refused());
        assert_eq!(out.len(), 1002, "only the bytes within the limit");
        assert_eq!(
            receiver.feed(b".\r\nNOOP", &mut out),
            (3, Some(DataOutcome::TooBig))
        );
    }

    #[test]
    fn bare_line_ending_stops_passing_bytes_on() {
        let mut receiver = DataReceiver::new(1 << 20);
        let mut out = Vec::new();
        assert_eq!(receiver.feed(b"ok\r\n", &mut out), (4, None));
        assert!(!receiver.is_refused());
        assert_eq!(receiver.feed(b"a\nb\r\nmore\r\n", &mut out), (11, None));
        assert!(receiver.is_refused());
        let appended = out.len();
        assert_eq!(receiver.feed(b"later\r\n", &mut out), (7, None));
        assert_eq!(out.len(), appended, "nothing after the bare LF");
        assert_eq!(
            receiver.feed(b".\r\n", &mut out),
            (3, Some(DataOutcome::BareLineEnding))
        );
    }

    #[test]
    fn large_message_round_trip() {
        // Build a message with stuffed dots on many lines, and its wire form.
        let mut content = Vec::new();
        let mut wire = Vec::new();
        let mut rng = Rng::new(7);
        for i in 0..5000 {
            let mut line = Vec::new();
            if i % 7 == 0 {
                line.push(b'.');
            }
            for _ in 0..rng.below(120) {
                line.push(b"abc .\t\x00\xc3"[rng.below(8)]);
            }
            if line.first() == Some(&b'.') {
                wire.push(b'.');
            }
            wire.extend_from_slice(&line);
            wire.extend_from_slice(b"\r\n");
            content.extend_from_slice(&line);
            content.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b".\r\nRSET\r\n");
        let max = content.len();
        for seed in 0..8 {
            let pieces = Rng::new(seed).pieces(wire.len(), 1 + 300 * seed as usize);
            let (outcome, rest) = run(max, &wire, &pieces);
            assert_eq!(outcome, Some(Got::Complete(content.clone())));
            assert_eq!(rest, b"RSET\r\n");
        }
        assert_eq!(run(max - 1, &wire, &[wire.len()]).0, BIG);
        let (outcome, _) = run(max, &wire, &vec![1; wire.len()]);
        assert_eq!(outcome, Some(Got::Complete(content)));
    }

    #[test]
    fn random_garbage_never_ends_early() {
        // Random streams of CR, LF, dot and text: the outcome only comes at
        // the first real CRLF.CRLF (or leading .CRLF), and the result is
        // independent of the split.
        let alphabet = b"\r\n.a";
        let mut rng = Rng::new(99);
        for _ in 0..2000 {
            let len = rng.below(24);
            let mut input: Vec<u8> = (0..len).map(|_| alphabet[rng.below(4)]).collect();
            input.extend_from_slice(b"\r\n.\r\nX");
            let expected_end = first_terminator(&input);
            let (outcome, rest) = check(usize::MAX, &input);
            assert!(outcome.is_some());
            assert_eq!(
                input.len() - rest.len(),
                expected_end,
                "{:?}",
                String::from_utf8_lossy(&input)
            );
            let clean = !has_bare_line_ending(&input[..expected_end]);
            assert_eq!(matches!(outcome, Some(Got::Complete(_))), clean);
        }
    }

    /// Reference: the end of the first `.CRLF` at the start of a line,
    /// where lines start after CRLF only.
    fn first_terminator(input: &[u8]) -> usize {
        let mut line_start = 0;
        loop {
            if input[line_start..].starts_with(b".\r\n") {
                return line_start + 3;
            }
            let crlf = input[line_start..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("every test input ends with CRLF.CRLF");
            line_start += crlf + 2;
        }
    }

    fn has_bare_line_ending(input: &[u8]) -> bool {
        input.iter().enumerate().any(|(i, &b)| {
            (b == b'\r' && input.get(i + 1) != Some(&b'\n'))
                || (b == b'\n' && (i == 0 || input[i - 1] != b'\r'))
        })
    }
}
