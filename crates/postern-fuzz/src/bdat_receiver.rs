//! `bdat_receiver`: the CHUNKING receiver with chunks and reads of
//! arbitrary sizes, compared with a reference.
//!
//! Input: one byte for the size limit, one for the number of chunks, one
//! per chunk for its length, two for the read-split seed, then the chunk
//! bytes. A chunk count of 255 tests a huge announced chunk instead.
//!
//! Invariants: a chunk never takes more bytes than announced (what follows
//! is the next command); the outcome does not depend on how the bytes were
//! split into reads; it is `TooBig` exactly when the chunks add up to more
//! than the limit, `BareLineEnding` when their concatenation has a bare CR
//! or LF anywhere (also across chunk boundaries, also a final lone CR),
//! and otherwise the concatenation, with a CRLF added when missing.

use postern_proto::{BdatReceiver, DataOutcome};

use crate::Received;

use crate::{strict_crlf, Input, Splits};

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let max = usize::from(input.byte()) * 2;
    let count = input.byte();
    if count == 255 {
        return huge_chunk(max, &mut input);
    }
    let sizes: Vec<usize> = (0..count % 16).map(|_| usize::from(input.byte())).collect();
    let seed = input.u16();
    let mut bytes = input.rest();
    let mut chunks: Vec<&[u8]> = Vec::new();
    for size in sizes {
        let (chunk, rest) = bytes.split_at(size.min(bytes.len()));
        chunks.push(chunk);
        bytes = rest;
    }

    let whole = receive(max, &chunks, &mut |_| usize::MAX);
    let mut splits = Splits::new(u64::from(seed));
    let limit = 1 + usize::from(seed >> 12);
    let split = receive(max, &chunks, &mut |_| splits.next(limit));
    assert_eq!(whole, split, "split reads differ from one read");

    let all: Vec<u8> = chunks.concat();
    let expected = if all.len() > max {
        Received::TooBig
    } else if !strict_crlf(&all) {
        Received::BareLineEnding
    } else {
        let mut message = all;
        if !message.is_empty() && !message.ends_with(b"\r\n") {
            message.extend_from_slice(b"\r\n");
        }
        Received::Complete(message)
    };
    assert_eq!(whole, expected);
}

/// Announce each chunk, then offer it (followed by a pipelined command)
/// in reads of `piece(..)` bytes, as the session does.
fn receive(max: usize, chunks: &[&[u8]], piece: &mut dyn FnMut(usize) -> usize) -> Received {
    let mut receiver = BdatReceiver::new(max);
    let mut out = Vec::new();
    for chunk in chunks {
        receiver.begin_chunk(chunk.len() as u64);
        let mut wire = chunk.to_vec();
        wire.extend_from_slice(b"BDAT 0 LAST\r\n");
        let mut offset: usize = 0;
        // Each round takes at least one byte while the chunk is incomplete.
        for _ in 0..=chunk.len() {
            if receiver.remaining() == 0 {
                break;
            }
            let end = offset
                .saturating_add(piece(wire.len() - offset))
                .min(wire.len());
            let before = receiver.remaining();
            let consumed = receiver.feed(&wire[offset..end], &mut out);
            assert!(consumed <= end - offset);
            assert_eq!(receiver.remaining(), before - consumed as u64);
            offset += consumed;
        }
        assert_eq!(receiver.remaining(), 0, "chunk not complete");
        assert_eq!(offset, chunk.len(), "took bytes after the chunk");
        assert_eq!(receiver.feed(b"BDAT 0 LAST\r\n", &mut out), 0);
        assert!(out.len() <= max, "passed on more than the limit");
    }
    let outcome = receiver.finish(&mut out);
    Received::new(outcome, out)
}

/// `BDAT <huge>`: the announced size is trusted only within the limit; the
/// receiver neither allocates it nor over-counts.
fn huge_chunk(max: usize, input: &mut Input<'_>) {
    let announced = input.u64();
    let bytes = input.rest();
    let mut receiver = BdatReceiver::new(max);
    receiver.begin_chunk(announced);
    let mut out = Vec::new();
    let consumed = receiver.feed(bytes, &mut out);
    assert!(out.len() <= max, "passed on more than the limit");
    let expected = usize::try_from(announced).map_or(bytes.len(), |a| a.min(bytes.len()));
    assert_eq!(consumed, expected);
    assert_eq!(receiver.remaining(), announced - consumed as u64);
    assert_eq!(receiver.is_too_big(), consumed > max);
    let outcome = receiver.finish(&mut out);
    if announced > max as u64 {
        assert_eq!(outcome, DataOutcome::TooBig);
    }
}
