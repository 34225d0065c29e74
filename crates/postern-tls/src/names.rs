//! Names of what a handshake negotiated, for `Received:` headers
//! (`using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384`) and traces; and
//! the check that a name an administrator types for a certificate (its
//! table entry name, its common name) shows what it is.

use rustls::{CommonState, ProtocolVersion, SupportedCipherSuite};
use serde::Serialize;

/// Why `c` may not appear in a name an administrator reads (certificate
/// entries, common names), or `None` when it may: control characters (C0,
/// DEL, C1) and the invisible characters that change how text around them
/// is shown — bidirectional embeddings, overrides, isolates and marks
/// (U+202A–U+202E, U+2066–U+2069, U+200E/F, U+061C), zero-width characters
/// and the byte-order mark. A name with U+202E can read "Default Cert" on
/// screen and be another entry.
pub fn forbidden_name_char(c: char) -> Option<&'static str> {
    match c {
        c if c.is_control() => Some("a control character"),
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => {
            Some("a bidirectional override or isolate")
        }
        '\u{200E}' | '\u{200F}' | '\u{061C}' => Some("a bidirectional mark"),
        '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' => Some("an invisible character"),
        _ => None,
    }
}

/// Check a name for [`forbidden_name_char`]: the message names the first
/// bad character by its code point (`U+202E, a bidirectional override or
/// isolate`).
pub fn check_name_chars(name: &str) -> Result<(), String> {
    match name
        .chars()
        .find_map(|c| forbidden_name_char(c).map(|why| (c, why)))
    {
        Some((c, why)) => Err(format!("must not contain U+{:04X} ({why})", u32::from(c))),
        None => Ok(()),
    }
}

/// The protocol parameters of an established TLS connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NegotiatedTls {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: String,
    /// rustls / IANA-style suite name: `TLS13_AES_256_GCM_SHA384`,
    /// `TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// Key exchange group, e.g. `X25519MLKEM768`, `X25519`, `secp256r1`;
    /// `None` where rustls does not report it (TLS 1.2 resumption).
    pub key_exchange: Option<String>,
}

/// Version, cipher and key exchange of a connection once its handshake is
/// done; `None` while it is still handshaking.
///
/// Takes the common state, so it works for a `ServerConnection` and a
/// `ClientConnection` alike (`negotiated(&conn)` deref-coerces), and with
/// tokio-rustls through `stream.get_ref().1`.
pub fn negotiated(conn: &CommonState) -> Option<NegotiatedTls> {
    let version = conn.protocol_version()?;
    let suite = conn.negotiated_cipher_suite()?;
    Some(NegotiatedTls {
        version: protocol_name(version),
        cipher: cipher_suite_name(suite),
        key_exchange: conn
            .negotiated_key_exchange_group()
            .map(|group| format!("{:?}", group.name())),
    })
}

/// `TLSv1.2`, `TLSv1.3` (OpenSSL's spelling, as Postfix writes it in
/// `Received:` headers).
pub fn protocol_name(version: ProtocolVersion) -> String {
    match version {
        ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        ProtocolVersion::TLSv1_1 => "TLSv1.1".into(),
        ProtocolVersion::TLSv1_0 => "TLSv1".into(),
        other => format!("{other:?}"),
    }
}

/// The suite's name as rustls spells it: `TLS13_AES_256_GCM_SHA384`.
pub fn cipher_suite_name(suite: SupportedCipherSuite) -> String {
    let id = suite.suite();
    id.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{id:?}"))
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn names_with_hidden_characters_are_refused() {
        let rows: &[(&str, Option<&str>)] = &[
            ("Default Cert", None),
            ("Partner CA (Zürich)", None),
            ("日本の証明書", None),
            (
                "x\u{202E}trec",
                Some("U+202E (a bidirectional override or isolate)"),
            ),
            ("\u{202A}x", Some("U+202A")),
            ("x\u{2066}y", Some("U+2066")),
            ("x\u{2069}", Some("U+2069")),
            ("x\u{200E}", Some("U+200E (a bidirectional mark)")),
            ("x\u{200F}", Some("U+200F")),
            ("x\u{061C}", Some("U+061C")),
            ("x\u{200B}y", Some("U+200B (an invisible character)")),
            ("\u{FEFF}x", Some("U+FEFF")),
            ("a\0b", Some("U+0000 (a control character)")),
            ("a\tb", Some("U+0009")),
            ("a\u{7F}", Some("U+007F")),
            ("a\u{85}b", Some("U+0085 (a control character)")),
            ("a\u{9F}", Some("U+009F")),
        ];
        for (name, want) in rows {
            match (check_name_chars(name), want) {
                (Ok(()), None) => {}
                (Err(e), Some(want)) => assert!(e.contains(want), "{name:?}: {e}"),
                (got, want) => panic!("{name:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
