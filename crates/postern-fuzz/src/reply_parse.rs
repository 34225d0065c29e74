//! `reply_parse`: SMTP replies as the outbound client reads them from a
//! remote server ([`Reply::parse`]), and the EHLO capabilities taken from
//! them ([`Capabilities::from_ehlo`]).
//!
//! Input: the bytes a server sent, read as a stream of replies.
//!
//! Invariants: a reply takes at least one byte and no more than it was
//! given; its code is 200–599 and it has at least one line; every strict
//! prefix of a complete reply is "need more bytes", never an error or a
//! different reply (so a slow server cannot change what the client sees);
//! and a parsed reply, rendered again, parses to the same code and number
//! of lines.

use postern_delivery::Capabilities;
use postern_proto::reply_parse::MAX_REPLY_LINE;
use postern_proto::Reply;

pub fn run(data: &[u8]) {
    let mut rest = data;
    // Every round consumes at least one byte or stops.
    for _ in 0..=data.len() {
        let (reply, consumed) = match Reply::parse(rest) {
            Ok(Some(parsed)) => parsed,
            Ok(None) | Err(_) => return,
        };
        assert!(consumed > 0 && consumed <= rest.len());
        assert!((200..=599).contains(&reply.code), "code {}", reply.code);
        assert!(!reply.lines.is_empty());
        assert_eq!(rest[consumed - 1], b'\n');
        for cut in [consumed - 1, consumed / 2, 1] {
            assert_eq!(
                Reply::parse(&rest[..cut]),
                Ok(None),
                "a prefix of {cut} bytes is not 'need more'"
            );
        }
        let rendered = reply.to_bytes();
        let fits = rendered
            .split(|&b| b == b'\n')
            .all(|line| line.len() <= MAX_REPLY_LINE + 1);
        if fits {
            match Reply::parse(&rendered) {
                Ok(Some((again, used))) => {
                    assert_eq!(used, rendered.len());
                    assert_eq!(again.code, reply.code);
                    assert_eq!(again.lines.len(), reply.lines.len());
                }
                other => panic!("rendered reply does not parse: {other:?}"),
            }
        }
        if reply.code == 250 {
            let _ = Capabilities::from_ehlo(&reply);
        }
        rest = &rest[consumed..];
    }
    panic!("Reply::parse did not make progress");
}
