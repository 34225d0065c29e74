//! Names of what a handshake negotiated, for `Received:` headers
//! (`using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384`) and traces.

use rustls::{CommonState, ProtocolVersion, SupportedCipherSuite};
use serde::Serialize;

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
