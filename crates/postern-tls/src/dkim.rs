//! DKIM keys (RFC 6376; Ed25519 RFC 8463): generation with aws-lc-rs, the
//! DNS TXT record that publishes the public key, and signing with
//! mail-auth's signer (on the same aws-lc-rs) — for mailed TLS reports
//! (SPEC §11). The private key is kept as PKCS#8 PEM.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// The header fields a signature covers (those present are signed;
/// RFC 6376 §5.4.1 recommends From, Subject, Date, To and the MIME ones).
const SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "TLS-Report-Domain",
    "TLS-Report-Submitter",
    "TLS-Required",
];

/// `--key` of `postern dkim generate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DkimKeyType {
    /// RSA, 2048 bits: what every verifier understands (RFC 8301 minimum
    /// 1024, 2048 recommended; longer keys outgrow one TXT string).
    Rsa2048,
    /// Ed25519 (RFC 8463): short, fast, not yet understood everywhere.
    Ed25519,
}

impl DkimKeyType {
    /// The name stored and shown (`rsa2048`, `ed25519`).
    pub fn as_str(self) -> &'static str {
        match self {
            DkimKeyType::Rsa2048 => "rsa2048",
            DkimKeyType::Ed25519 => "ed25519",
        }
    }

    /// Parse a stored or given name.
    pub fn parse(name: &str) -> Result<DkimKeyType, DkimError> {
        match name {
            "rsa2048" => Ok(DkimKeyType::Rsa2048),
            "ed25519" => Ok(DkimKeyType::Ed25519),
            other => Err(DkimError(format!(
                "unknown DKIM key type {other:?}: use rsa2048 or ed25519"
            ))),
        }
    }

    /// The `k=` tag of the DNS record.
    fn tag(self) -> &'static str {
        match self {
            DkimKeyType::Rsa2048 => "rsa",
            DkimKeyType::Ed25519 => "ed25519",
        }
    }
}

/// A DKIM key that could not be made, read or used; the text says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DkimError(String);

/// A new key pair.
#[derive(Debug, Clone)]
pub struct DkimKeyPair {
    pub key_type: DkimKeyType,
    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub private_key_pem: String,
    /// The TXT record to publish at `<selector>._domainkey.<domain>`.
    pub dns_record: String,
}

/// Generate a key of `key_type`.
pub fn generate_dkim_key(key_type: DkimKeyType) -> Result<DkimKeyPair, DkimError> {
    let failed = |what: &str| {
        DkimError(format!(
            "generating the {} key failed: {what}",
            key_type.as_str()
        ))
    };
    let (pkcs8, public) = match key_type {
        DkimKeyType::Rsa2048 => {
            let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| failed("aws-lc"))?;
            let pkcs8 = pair.as_der().map_err(|_| failed("PKCS#8 encoding"))?;
            // SubjectPublicKeyInfo, as `openssl rsa -pubout` writes it.
            let public = pair
                .public_key()
                .as_der()
                .map_err(|_| failed("public key encoding"))?;
            (pkcs8.as_ref().to_vec(), public.as_ref().to_vec())
        }
        DkimKeyType::Ed25519 => {
            // PKCS#8 v1, as `openssl genpkey -algorithm ED25519` writes it:
            // OpenSSL 3.0 does not read the v2 form with the public key.
            let pkcs8 = Ed25519KeyPair::generate_pkcs8v1(&SystemRandom::new())
                .map_err(|_| failed("aws-lc"))?;
            let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                .map_err(|_| failed("reading it back"))?;
            // RFC 8463 §4.2: the bare 32-byte key.
            let public = pair.public_key().as_ref().to_vec();
            (pkcs8.as_ref().to_vec(), public)
        }
    };
    Ok(DkimKeyPair {
        key_type,
        private_key_pem: pem("PRIVATE KEY", &pkcs8),
        dns_record: dns_record(key_type, &public),
    })
}

/// `v=DKIM1; k=rsa; p=<base64>` (RFC 6376 §3.6.1).
fn dns_record(key_type: DkimKeyType, public: &[u8]) -> String {
    format!(
        "v=DKIM1; k={}; p={}",
        key_type.tag(),
        STANDARD.encode(public)
    )
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The `DKIM-Signature:` header field (with its CRLF) for `message`,
/// signed by the key (`key_type`, PKCS#8 PEM) of `selector` and `domain`
/// (relaxed/relaxed, rsa-sha256 or ed25519-sha256). Prepend it to the
/// message.
pub fn dkim_sign(
    message: &[u8],
    domain: &str,
    selector: &str,
    key_type: DkimKeyType,
    private_key_pem: &str,
) -> Result<String, DkimError> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(private_key_pem.as_bytes())
        .map_err(|e| DkimError(format!("the stored DKIM key is not PKCS#8 PEM: {e}")))?;
    let unusable =
        |e: mail_auth::Error| DkimError(format!("the stored DKIM key cannot be used: {e}"));
    let signed = |e: mail_auth::Error| DkimError(format!("DKIM signing failed: {e}"));
    let signature = match key_type {
        DkimKeyType::Rsa2048 => {
            let key =
                RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(der)).map_err(unusable)?;
            DkimSigner::from_key(key)
                .domain(domain)
                .selector(selector)
                .headers(SIGNED_HEADERS.iter().copied())
                .sign(message)
                .map_err(signed)?
        }
        DkimKeyType::Ed25519 => {
            let key = Ed25519Key::from_pkcs8_der(der.secret_pkcs8_der()).map_err(unusable)?;
            DkimSigner::from_key(key)
                .domain(domain)
                .selector(selector)
                .headers(SIGNED_HEADERS.iter().copied())
                .sign(message)
                .map_err(signed)?
        }
    };
    Ok(signature.to_header())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::borrow::Borrow;
    use std::collections::HashMap;
    use std::hash::Hash;
    use std::sync::Mutex;

    use mail_auth::common::parse::TxtRecordParser;
    use mail_auth::common::verify::DomainKey;
    use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters};
    use mail_auth::{ResolverCache, Txt};

    use super::*;

    /// The TXT answers a verifier would get from DNS.
    struct Zone(Mutex<HashMap<Box<str>, Txt>>);

    impl ResolverCache<Box<str>, Txt> for Zone {
        fn get<Q>(&self, name: &Q) -> Option<Txt>
        where
            Box<str>: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            self.0.lock().unwrap().get(name).cloned()
        }
        fn remove<Q>(&self, name: &Q) -> Option<Txt>
        where
            Box<str>: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            self.0.lock().unwrap().remove(name)
        }
        fn insert(&self, key: Box<str>, value: Txt, _: std::time::Instant) {
            self.0.lock().unwrap().insert(key, value);
        }
    }

    const MESSAGE: &[u8] = b"From: TLS reports <postmaster@example.com>\r\n\
        To: <tlsrpt@partner.test>\r\n\
        Subject: Report Domain: partner.test\r\n\
        Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
        Message-ID: <r1@example.com>\r\n\
        TLS-Required: No\r\n\
        \r\n\
        the report\r\n";

    /// A message signed with a generated key verifies against the printed
    /// record (mail-auth's verifier); changed in one byte, it does not.
    #[test]
    fn signed_messages_verify_against_the_printed_record() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for key_type in [DkimKeyType::Rsa2048, DkimKeyType::Ed25519] {
            let pair = generate_dkim_key(key_type).unwrap();
            assert!(pair
                .private_key_pem
                .starts_with("-----BEGIN PRIVATE KEY-----\n"));
            let tag = format!("v=DKIM1; k={}; p=", key_type.tag());
            assert!(pair.dns_record.starts_with(&tag), "{}", pair.dns_record);
            let header = dkim_sign(
                MESSAGE,
                "example.com",
                "s1",
                key_type,
                &pair.private_key_pem,
            )
            .unwrap();
            assert!(header.starts_with("DKIM-Signature: "), "{header}");

            let zone = Zone(Mutex::new(HashMap::new()));
            let key = DomainKey::parse(pair.dns_record.as_bytes()).unwrap();
            zone.insert(
                "s1._domainkey.example.com.".into(),
                Txt::from(Ok::<_, mail_auth::Error>(key)),
                std::time::Instant::now(),
            );
            let verifier = MessageAuthenticator::new_cloudflare().unwrap();
            let verify = |message: &[u8]| {
                let parsed = AuthenticatedMessage::parse(message).unwrap();
                let outputs = runtime
                    .block_on(verifier.verify_dkim(Parameters::new(&parsed).with_txt_cache(&zone)));
                outputs.first().map(|o| o.result().clone())
            };
            let signed = [header.as_bytes(), MESSAGE].concat();
            assert_eq!(verify(&signed), Some(DkimResult::Pass), "{key_type:?}");
            let changed = String::from_utf8_lossy(MESSAGE).replace("the report", "the rePort");
            let tampered = [header.as_bytes(), changed.as_bytes()].concat();
            assert!(
                matches!(
                    verify(&tampered),
                    Some(DkimResult::Fail(_) | DkimResult::Neutral(_))
                ),
                "{key_type:?}: a changed body still verifies"
            );
        }
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason() {
        let err = dkim_sign(
            MESSAGE,
            "example.com",
            "s1",
            DkimKeyType::Rsa2048,
            "not pem",
        )
        .unwrap_err();
        assert!(err.to_string().contains("PKCS#8 PEM"), "{err}");
        let ed = generate_dkim_key(DkimKeyType::Ed25519).unwrap();
        let err = dkim_sign(
            MESSAGE,
            "example.com",
            "s1",
            DkimKeyType::Rsa2048,
            &ed.private_key_pem,
        )
        .unwrap_err();
        assert!(err.to_string().contains("cannot be used"), "{err}");
        assert!(DkimKeyType::parse("rsa1024").is_err());
        assert_eq!(DkimKeyType::parse("ed25519").unwrap(), DkimKeyType::Ed25519);
    }
}
