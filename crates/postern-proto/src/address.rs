//! The mailbox grammar (RFC 5321 §4.1.2, RFC 6531), one for both sides:
//! [`crate::command`] parses `MAIL FROM`/`RCPT TO` paths with
//! [`parse_mailbox`], and the outbound client checks every address it is
//! about to send with [`is_sendable`]. A recipient the client would refuse
//! is therefore refused at `RCPT` (`501 5.1.3`), never accepted and then
//! bounced to a sender who may be forged (backscatter).
//!
//! Stricter than RFC 5321 in one place: a quoted local part may not contain
//! `<` or `>`, raw or escaped (`"x<y>"@example.com`). RFC 5321 allows them,
//! but they end or restart a path in too many parsers downstream; no real
//! mailbox needs them.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::command::Address;

/// RFC 5321 §4.5.3.1: limits in octets.
pub const MAX_LOCAL_PART: usize = 64;
pub const MAX_DOMAIN: usize = 255;
/// A path is at most 256 octets with its angle brackets.
pub const MAX_MAILBOX: usize = 254;

/// Whether the outbound client may send `text` (`local@domain`, as the
/// queue keeps it) in `MAIL FROM`/`RCPT TO`; the null sender is checked by
/// the caller. Exactly what [`parse_mailbox`] accepts.
pub fn is_sendable(text: &str) -> bool {
    parse_mailbox(text).is_some()
}

/// `Local-part "@" ( Domain / address-literal )`, within the RFC 5321
/// §4.5.3.1 limits: the one grammar of a mailbox, inbound and outbound.
pub fn parse_mailbox(mailbox: &str) -> Option<Address> {
    let at = if mailbox.starts_with('"') {
        // The closing quote of the quoted string, then '@'.
        quoted_end(mailbox)?
    } else {
        mailbox.find('@')?
    };
    if mailbox.len() > MAX_MAILBOX {
        return None;
    }
    let (local, domain) = mailbox.split_at(at);
    let domain = domain.strip_prefix('@')?;
    if local.len() > MAX_LOCAL_PART || !(valid_dot_atom(local) || valid_quoted(local)) {
        return None;
    }
    if !valid_domain(domain) {
        return None;
    }
    Some(Address {
        local: local.to_string(),
        domain: domain.to_string(),
    })
}

/// The length of the quoted string at the start of `s`.
fn quoted_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, b) in s.bytes().enumerate().skip(1) {
        match (escaped, b) {
            (true, _) => escaped = false,
            (false, b'\\') => escaped = true,
            (false, b'"') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// Non-ASCII (RFC 6531 UTF8-non-ascii) except Unicode controls and spaces.
fn valid_non_ascii(c: char) -> bool {
    !c.is_ascii() && !c.is_control() && !c.is_whitespace()
}

/// `Dot-string`: atoms of atext separated by single dots.
fn valid_dot_atom(s: &str) -> bool {
    s.split('.').all(|atom| {
        !atom.is_empty()
            && atom.chars().all(|c| {
                c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || valid_non_ascii(c)
            })
    })
}

/// `Quoted-string` with its quotes: qtextSMTP and quoted-pairSMTP, except
/// `<` and `>` (see the module documentation).
fn valid_quoted(s: &str) -> bool {
    let Some(content) = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) else {
        return false;
    };
    let mut chars = content.chars();
    while let Some(c) = chars.next() {
        match c {
            '<' | '>' => return false,
            '\\' => match chars.next() {
                Some('<' | '>') => return false,
                Some(' '..='~') => {}
                _ => return false,
            },
            '"' => return false,
            ' '..='~' => {}
            c if valid_non_ascii(c) => {}
            _ => return false,
        }
    }
    true
}

/// A host name of LDH labels (U-labels allowed, RFC 6531) or an address
/// literal `[1.2.3.4]` / `[IPv6:...]`.
pub(crate) fn valid_domain(domain: &str) -> bool {
    if domain.is_empty() || domain.len() > MAX_DOMAIN {
        return false;
    }
    if let Some(literal) = domain.strip_prefix('[') {
        return literal.strip_suffix(']').is_some_and(valid_address_literal);
    }
    domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || valid_non_ascii(c))
    })
}

fn valid_address_literal(literal: &str) -> bool {
    match literal.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => literal
            .get(5..)
            .is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok()),
        _ => literal.parse::<Ipv4Addr>().is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailboxes() {
        let long_local = "a".repeat(65);
        let max_local = "a".repeat(64);
        let long_label = format!("{}.example", "b".repeat(64));
        let long_domain = format!("{}.example", vec!["c".repeat(60); 5].join("."));
        let d60 = "d".repeat(60);
        let max_total = format!("{max_local}@{d60}.{d60}.{}.example", "d".repeat(59));
        let over_total = format!("{max_local}@{d60}.{d60}.{d60}.example");
        // (text, accepted)
        let rows: Vec<(&str, bool)> = vec![
            ("a@relay.test", true),
            ("first.last+tag@relay.test", true),
            ("\"john doe\"@relay.test", true),
            ("\"a\\\"b\"@relay.test", true),
            ("\"a\\\\b\"@relay.test", true),
            ("\"a@b\"@relay.test", true),
            ("a@[192.0.2.1]", true),
            ("a@[IPv6:2001:db8::1]", true),
            ("jürgen@bücher.test", true),
            (&max_local, false),
            ("\"x<y>\"@relay.test", false),
            ("\"x<y\"@relay.test", false),
            ("\"x>\"@relay.test", false),
            ("\"x\\<y\"@relay.test", false),
            ("\"x\\>\"@relay.test", false),
            ("\"x\"y\"@relay.test", false),
            ("\"x@relay.test", false),
            ("a\\b@relay.test", false),
            ("a\0b@relay.test", false),
            ("\"a\0b\"@relay.test", false),
            ("\"a\tb\"@relay.test", false),
            ("a\r\nRCPT TO:<b@c.test>@relay.test", false),
            ("a<b@relay.test", false),
            ("a@relay.test>", false),
            ("a@@relay.test", false),
            ("@relay.test", false),
            ("a@", false),
            ("a@relay.test@other.test", false),
            ("a@b..test", false),
            ("a@-b.test", false),
            ("a@b.test.", false),
            (".a@relay.test", false),
            ("a..b@relay.test", false),
            ("@x.test:a@relay.test", false),
            ("a@[300.1.1.1]", false),
            ("a@[IPv6:nonsense]", false),
            ("a@[192.0.2.1", false),
            ("a b@relay.test", false),
        ];
        let mut wrong: Vec<String> = rows
            .iter()
            .filter(|(text, ok)| is_sendable(text) != *ok)
            .map(|(text, ok)| format!("{text:?}: want {ok}"))
            .collect();
        for (text, ok) in [
            (format!("{max_local}@relay.test"), true),
            (format!("{long_local}@relay.test"), false),
            (format!("\"{}\"@relay.test", "a".repeat(63)), false),
            (format!("a@{long_label}"), false),
            (format!("a@{long_domain}"), false),
            (max_total.clone(), true),
            (over_total.clone(), false),
        ] {
            if is_sendable(&text) != ok {
                wrong.push(format!("{} chars: want {ok}", text.len()));
            }
        }
        assert_eq!(max_total.len(), MAX_MAILBOX);
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn parse_keeps_the_parts() {
        let a = parse_mailbox("\"john doe\"@Relay.Test").expect("quoted");
        assert_eq!(a.local, "\"john doe\"");
        assert_eq!(a.domain, "Relay.Test");
    }
}
