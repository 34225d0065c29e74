//! `mta_sts`: the MTA-STS policy file and `_mta-sts` TXT records as a
//! remote domain publishes them ([`parse_policy`], [`parse_txt`]).
//!
//! Input: the bytes of a policy file; the same bytes, split at LF, are
//! also read as a TXT RRset (one record per line).
//!
//! Invariants: an accepted policy keeps RFC 8461 §3.2's rules (`max_age`
//! ≤ 31557600, at least one `mx` unless `mode: none`, every pattern
//! lower-case); CRLF and LF line ends parse alike; the TXT verdict does
//! not depend on the order of the records, and an announced id is 1–32
//! letters and digits.

use postern_delivery::mta_sts::parse::{parse_policy, parse_txt, Announcement, MAX_MAX_AGE};
use postern_delivery::policy::MtaStsMode;

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = parse_policy(&text);
    if let Ok(policy) = &parsed {
        assert!(policy.max_age <= MAX_MAX_AGE);
        assert!(policy.mode == MtaStsMode::None || !policy.mx.is_empty());
        assert!(policy.mx.iter().all(|m| *m == m.to_ascii_lowercase()));
    }
    let bare_cr = text
        .char_indices()
        .any(|(i, c)| c == '\r' && !text[i + 1..].starts_with('\n'));
    if !bare_cr {
        let lf = text.replace("\r\n", "\n");
        assert_eq!(
            parse_policy(&lf).ok(),
            parsed.clone().ok(),
            "CRLF and LF differ"
        );
    }

    let mut records: Vec<&str> = text.split('\n').collect();
    let forward = parse_txt(&records);
    records.reverse();
    let backward = parse_txt(&records);
    match (&forward, &backward) {
        (Announcement::Policy { id }, Announcement::Policy { id: again }) => {
            assert_eq!(id, again);
            assert!((1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
        (Announcement::None, Announcement::None)
        | (Announcement::Invalid(_), Announcement::Invalid(_)) => {}
        _ => panic!("record order changed the verdict: {forward:?} / {backward:?}"),
    }
}
