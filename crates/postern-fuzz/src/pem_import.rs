//! `pem_import`: certificate table imports (`postern cert import`, the
//! admin UI upload): [`validate_entry`] and [`describe`] over a PEM chain
//! and an optional PEM key.
//!
//! Input: the chain file, then optionally a NUL byte and the key file
//! (PEM text never contains NUL).
//!
//! Invariants: nothing panics; an entry with a key that passes the import
//! check also builds a working inbound TLS configuration (a certificate
//! the gateway accepted can always be served); a chain that passes is
//! described the same way by [`describe`].

use postern_config::{ClientCertMode, TlsVersion};
use postern_tls::{describe, parse_chain, parse_key, validate_entry, InboundTlsParams, ServerTls};

pub fn run(data: &[u8]) {
    let (chain, key) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], Some(&data[nul + 1..])),
        None => (data, None),
    };
    let chain = String::from_utf8_lossy(chain);
    let key = key.map(String::from_utf8_lossy);

    let described = describe(&chain);
    let _ = parse_chain(&chain);
    if let Some(key) = &key {
        let _ = parse_key(key);
    }
    let Ok(info) = validate_entry(&chain, key.as_deref()) else {
        return;
    };
    match described {
        Ok(d) => assert_eq!(d, info, "describe and validate_entry disagree"),
        Err(e) => panic!("validate_entry accepts what describe refuses: {e}"),
    }
    if let Some(key) = &key {
        let params = InboundTlsParams {
            chain_pem: &chain,
            key_pem: key,
            client_certificate: ClientCertMode::None,
            client_ca_pems: Vec::new(),
            min_version: TlsVersion::V1_2,
            session_tickets: true,
        };
        if let Err(e) = ServerTls::build(&params) {
            panic!("an imported certificate cannot be served: {e}");
        }
    }
}
