//! The `[tlsrpt]` settings (SPEC §11): who signs and sends the daily
//! TLS-RPT reports (RFC 8460), and the name rule for DKIM keys.

use serde::{Deserialize, Serialize};

use crate::domain::is_domain_name;
use crate::ConfigError;

/// Longest free-text value (`organization`, `contact`), in characters: it
/// goes into a JSON report and a mail header, not an essay.
const MAX_TEXT_CHARS: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsRptSettings {
    /// Send daily aggregate reports.
    pub enabled: bool,
    /// `organization-name` of the reports; empty: the host name.
    pub organization: String,
    /// `contact-info`; empty: `postmaster@<host name>`.
    pub contact: String,
    /// Sender of mailed reports; empty: `postmaster@<host name>`.
    pub from: String,
    /// Name of the DKIM key (`postern dkim ...`) that signs mailed reports.
    pub dkim_key: String,
}

impl TlsRptSettings {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check_text("tlsrpt.organization", &self.organization)?;
        check_text("tlsrpt.contact", &self.contact)?;
        if !self.from.is_empty() && !is_address(&self.from) {
            return Err(ConfigError::new(
                "tlsrpt.from",
                format!(
                    "{:?} is not a mail address: give local@domain (e.g. \
                     \"postmaster@example.com\"), or leave it empty for postmaster@<host name>",
                    shown(&self.from)
                ),
            ));
        }
        if !self.dkim_key.is_empty() {
            let parsed = self
                .dkim_key
                .split_once("._domainkey.")
                .and_then(|(selector, domain)| dkim_key_name(selector, domain).ok());
            if parsed.as_deref() != Some(self.dkim_key.as_str()) {
                return Err(ConfigError::new(
                    "tlsrpt.dkim_key",
                    format!(
                        "{:?} is not a DKIM key name: keys are named \
                         <selector>._domainkey.<domain> (see `postern dkim list`), \
                         or leave it empty to send reports unsigned",
                        shown(&self.dkim_key)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The name of the DKIM key for `selector` and `domain`: the DNS name of
/// its TXT record, `<selector>._domainkey.<domain>` (RFC 6376 §3.6.2.1),
/// lower-cased. Errors name the argument that is wrong.
pub fn dkim_key_name(selector: &str, domain: &str) -> Result<String, ConfigError> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if !is_domain_name(&domain) || !domain.contains('.') {
        return Err(ConfigError::new(
            "domain",
            format!(
                "{:?} is not a domain name (e.g. \"example.com\")",
                shown(&domain)
            ),
        ));
    }
    let selector = selector.to_ascii_lowercase();
    // RFC 6376 §3.1: selector = sub-domain *( "." sub-domain ).
    let labels_ok = !selector.is_empty()
        && selector.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !labels_ok || selector.len() > 63 {
        return Err(ConfigError::new(
            "selector",
            format!(
                "{:?} is not a DKIM selector: use letters, digits and '-' in dot-separated \
                 labels, at most 63 characters (e.g. \"tlsrpt2026\")",
                shown(&selector)
            ),
        ));
    }
    let name = format!("{selector}._domainkey.{domain}");
    if name.len() > 253 {
        return Err(ConfigError::new(
            "domain",
            format!("{name} is longer than a DNS name may be (253 characters)"),
        ));
    }
    Ok(name)
}

fn check_text(key: &str, value: &str) -> Result<(), ConfigError> {
    let chars = value.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(ConfigError::new(
            key,
            format!("must be at most {MAX_TEXT_CHARS} characters (got {chars})"),
        ));
    }
    if let Some(bad) = value.chars().find(|c| c.is_control()) {
        return Err(ConfigError::new(
            key,
            format!(
                "must be one line of text; control character U+{:04X} is not allowed",
                u32::from(bad)
            ),
        ));
    }
    Ok(())
}

pub(crate) fn is_address(value: &str) -> bool {
    let Some((local, domain)) = value.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && local
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"<>()[]\\,;:@\"".contains(&b))
        && is_domain_name(domain)
}

/// At most 64 characters of a value, for messages about huge inputs.
fn shown(value: &str) -> String {
    value.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Settings;

    #[test]
    fn defaults_and_spec_block() {
        let s = Settings::from_toml(
            "[tlsrpt]\nenabled = false\norganization = \"\"\ncontact = \"\"\nfrom = \"\"\ndkim_key = \"\"\n",
        )
        .expect("SPEC §11 block");
        assert_eq!(s.tlsrpt, TlsRptSettings::default());
        assert!(!s.tlsrpt.enabled);
    }

    #[test]
    fn validation_names_the_key() {
        #[rustfmt::skip]
        let rows: &[(&str, &str, Option<&str>)] = &[
            ("tlsrpt.dkim_key", "tlsrpt._domainkey.example.com", None),
            ("tlsrpt.dkim_key", "", None),
            ("tlsrpt.dkim_key", "example.com", Some("tlsrpt.dkim_key: \"example.com\" is not a DKIM key name")),
            ("tlsrpt.dkim_key", "Sel._domainkey.example.com", Some("is not a DKIM key name")),
            ("tlsrpt.dkim_key", "a b._domainkey.example.com", Some("is not a DKIM key name")),
            ("tlsrpt.from", "reports@example.com", None),
            ("tlsrpt.from", "reports", Some("tlsrpt.from: \"reports\" is not a mail address")),
            ("tlsrpt.from", "a@b@", Some("is not a mail address")),
            ("tlsrpt.organization", "Example Corp", None),
            ("tlsrpt.organization", "a\nb", Some("tlsrpt.organization: must be one line")),
            ("tlsrpt.contact", &"x".repeat(201), Some("tlsrpt.contact: must be at most 200 characters (got 201)")),
            ("tlsrpt.enabled", "maybe", Some("tlsrpt.enabled")),
        ];
        for (key, value, want) in rows {
            let got = Settings::default().with(key, value);
            match want {
                None => assert!(got.is_ok(), "{key}={value:?}: {got:?}"),
                Some(msg) => {
                    let err = got.expect_err(key).to_string();
                    assert!(err.contains(msg), "{key}={value:?}: {err}");
                }
            }
        }
    }

    #[test]
    fn key_names() {
        assert_eq!(
            dkim_key_name("S1", "Example.COM.").expect("ok"),
            "s1._domainkey.example.com"
        );
        assert_eq!(
            dkim_key_name("s", "localhost").expect_err("tld").key,
            "domain"
        );
        assert_eq!(
            dkim_key_name("", "example.com").expect_err("empty").key,
            "selector"
        );
        assert_eq!(
            dkim_key_name("a_b", "example.com").expect_err("_").key,
            "selector"
        );
        assert_eq!(
            dkim_key_name("-a", "example.com").expect_err("-").key,
            "selector"
        );
        assert!(dkim_key_name("2026.tlsrpt", "example.com").is_ok());
    }
}
