//! The shared settings of SPEC §4, their defaults and their validation.

use serde::{Deserialize, Serialize};

use crate::domain::DomainEntry;
use crate::duration::Duration;
use crate::ConfigError;

/// Name of the self-signed certificate generated at first start.
pub const DEFAULT_CERT_NAME: &str = "Default Cert";

/// Name of the ECDSA P-256 companion generated beside the `Default Cert`:
/// presented to clients that can verify ECDSA (one signature costs ~0.03 ms
/// against ~4.8 ms for RSA-4096), while the rest get the RSA `Default Cert`.
pub const DEFAULT_ECDSA_CERT_NAME: &str = "Default Cert ECDSA";

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub tls: TlsSettings,
    pub mta: MtaSettings,
    #[serde(rename = "domain", skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<DomainEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    pub inbound: InboundTls,
    pub outbound: OutboundTls,
}

/// Server TLS security mode (the appliance's "Modus für die TLS-Sicherheit des Servers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InboundMode {
    /// STARTTLS is not advertised.
    None,
    /// STARTTLS is advertised; plaintext mail is still accepted.
    #[default]
    Offer,
    /// No MAIL, RCPT or DATA before STARTTLS.
    Require,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertMode {
    #[default]
    None,
    Request,
    Require,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboundTls {
    pub mode: InboundMode,
    pub certificate: String,
    /// An ECDSA certificate presented beside `certificate` to clients that
    /// support ECDSA. Empty: when `certificate` is the `Default Cert`, its
    /// generated companion `Default Cert ECDSA` (if not deleted); otherwise
    /// nothing beside `certificate`.
    pub ecdsa_certificate: String,
    pub client_certificate: ClientCertMode,
    pub trusted_client_ca: Vec<String>,
    pub min_version: TlsVersion,
    /// Issue TLS session tickets (stateless resumption). Off for peers
    /// known to break on them; TLS 1.2 session-ID resumption stays.
    pub session_tickets: bool,
}

impl Default for InboundTls {
    fn default() -> Self {
        Self {
            mode: InboundMode::Offer,
            certificate: DEFAULT_CERT_NAME.to_string(),
            ecdsa_certificate: String::new(),
            client_certificate: ClientCertMode::None,
            trusted_client_ca: Vec::new(),
            min_version: TlsVersion::V1_2,
            session_tickets: true,
        }
    }
}

/// Client TLS security mode, ordered from weakest to strictest.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum OutboundMode {
    None,
    #[default]
    Opportunistic,
    Require,
    Verify,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundTls {
    pub mode: OutboundMode,
    pub trusted_ca: Vec<String>,
    pub client_certificate: String,
}

impl Default for OutboundTls {
    fn default() -> Self {
        Self {
            mode: OutboundMode::Opportunistic,
            trusted_ca: vec!["system".to_string()],
            client_certificate: String::new(),
        }
    }
}

/// The appliance's "advanced MTA settings".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MtaSettings {
    /// Greeting text after `220`; empty means "<hostname> ESMTP Postern".
    pub banner: String,
    pub max_message_size: u64,
    pub max_recipients: u32,
    pub max_connections: u32,
    pub max_connections_per_client: u32,
    pub session_timeout: Duration,
    pub queue_lifetime: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Tracking events older than this are deleted (checked hourly).
    pub tracking_retention: Duration,
    /// Client networks exempt from `max_connections_per_client` (Postfix's
    /// `smtpd_client_event_limit_exceptions`). Empty by default: unlike
    /// Postfix (`$mynetworks`), a trusted network is not exempt on its own,
    /// so one runaway internal host cannot take every connection slot.
    pub limit_exempt_networks: Vec<ipnet::IpNet>,
}

impl Default for MtaSettings {
    fn default() -> Self {
        Self {
            banner: String::new(),
            max_message_size: 52_428_800,
            max_recipients: 1000,
            max_connections: 1000,
            max_connections_per_client: 50,
            session_timeout: Duration::from_secs(300),
            queue_lifetime: Duration::from_secs(5 * 86_400),
            min_backoff: Duration::from_secs(300),
            max_backoff: Duration::from_secs(3600),
            tracking_retention: Duration::from_secs(30 * 86_400),
            limit_exempt_networks: Vec::new(),
        }
    }
}

/// Largest message size that may be configured (1 GiB): a typo of a few
/// zeros must not let one client fill the disk.
const MAX_MESSAGE_SIZE_LIMIT: u64 = 1 << 30;

impl Settings {
    /// Parse a TOML settings document; errors name the offending key.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| crate::toml_syntax::syntax_error(text, &e))?;
        let settings: Settings = serde_path_to_error::deserialize(de).map_err(path_error)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Parse a JSON settings document; errors name the offending key.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let settings: Settings = serde_path_to_error::deserialize(&mut de).map_err(path_error)?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn to_toml(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        toml::to_string(self).unwrap_or_default()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Check everything that can be checked without the certificate table.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let inbound = &self.tls.inbound;
        if inbound.certificate.trim().is_empty() {
            return Err(ConfigError::new(
                "tls.inbound.certificate",
                "must name a certificate table entry (e.g. \"Default Cert\")",
            ));
        }
        if inbound.ecdsa_certificate == inbound.certificate {
            return Err(ConfigError::new(
                "tls.inbound.ecdsa_certificate",
                "names the same entry as tls.inbound.certificate; name an ECDSA certificate, or leave it empty",
            ));
        }
        if inbound.client_certificate == ClientCertMode::Require {
            if inbound.mode != InboundMode::Require {
                return Err(ConfigError::new(
                    "tls.inbound.client_certificate",
                    "\"require\" is only valid together with tls.inbound.mode = \"require\"",
                ));
            }
            if inbound.trusted_client_ca.is_empty() {
                return Err(ConfigError::new(
                    "tls.inbound.trusted_client_ca",
                    "must name at least one CA entry when client_certificate = \"require\"",
                ));
            }
        }
        check_names("tls.inbound.trusted_client_ca", &inbound.trusted_client_ca)?;
        check_names("tls.outbound.trusted_ca", &self.tls.outbound.trusted_ca)?;

        let mta = &self.mta;
        if mta.banner.contains(['\r', '\n']) {
            return Err(ConfigError::new("mta.banner", "must be a single line"));
        }
        if mta.max_message_size == 0 || mta.max_message_size > MAX_MESSAGE_SIZE_LIMIT {
            return Err(ConfigError::new(
                "mta.max_message_size",
                format!("must be between 1 and {MAX_MESSAGE_SIZE_LIMIT} bytes"),
            ));
        }
        for (key, value) in [
            ("mta.max_recipients", mta.max_recipients),
            ("mta.max_connections", mta.max_connections),
            (
                "mta.max_connections_per_client",
                mta.max_connections_per_client,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        for (key, value) in [
            ("mta.session_timeout", mta.session_timeout),
            ("mta.queue_lifetime", mta.queue_lifetime),
            ("mta.min_backoff", mta.min_backoff),
            ("mta.max_backoff", mta.max_backoff),
            ("mta.tracking_retention", mta.tracking_retention),
        ] {
            if value.as_secs() == 0 {
                return Err(ConfigError::new(key, "must be longer than 0s"));
            }
        }
        if mta.max_backoff < mta.min_backoff {
            return Err(ConfigError::new(
                "mta.max_backoff",
                format!(
                    "must not be shorter than mta.min_backoff ({})",
                    mta.min_backoff
                ),
            ));
        }

        let mut seen = std::collections::HashSet::new();
        for (index, entry) in self.domains.iter().enumerate() {
            entry.validate(index)?;
            if !seen.insert(entry.name.to_ascii_lowercase()) {
                return Err(ConfigError::new(
                    format!("domain[{index}].name"),
                    format!("\"{}\" is listed twice", entry.name),
                ));
            }
        }
        Ok(())
    }

    /// Every certificate table entry these settings refer to, with the key
    /// that refers to it. Used to refuse deleting a certificate in use and to
    /// check that every named entry exists.
    pub fn certificate_references(&self) -> Vec<(&'static str, &str)> {
        let mut refs = vec![(
            "tls.inbound.certificate",
            self.tls.inbound.certificate.as_str(),
        )];
        if !self.tls.inbound.ecdsa_certificate.is_empty() {
            refs.push((
                "tls.inbound.ecdsa_certificate",
                self.tls.inbound.ecdsa_certificate.as_str(),
            ));
        }
        refs.extend(
            self.tls
                .inbound
                .trusted_client_ca
                .iter()
                .map(|n| ("tls.inbound.trusted_client_ca", n.as_str())),
        );
        refs.extend(
            self.tls
                .outbound
                .trusted_ca
                .iter()
                .filter(|n| n.as_str() != "system")
                .map(|n| ("tls.outbound.trusted_ca", n.as_str())),
        );
        if !self.tls.outbound.client_certificate.is_empty() {
            refs.push((
                "tls.outbound.client_certificate",
                self.tls.outbound.client_certificate.as_str(),
            ));
        }
        refs
    }

    /// The ECDSA certificate entry presented beside `tls.inbound.certificate`:
    /// the one `tls.inbound.ecdsa_certificate` names, or, when that is empty
    /// and the primary is the `Default Cert`, its generated companion (which
    /// may have been deleted: then nothing is presented beside it).
    pub fn effective_ecdsa_certificate(&self) -> Option<&str> {
        let inbound = &self.tls.inbound;
        if !inbound.ecdsa_certificate.is_empty() {
            Some(&inbound.ecdsa_certificate)
        } else if inbound.certificate == DEFAULT_CERT_NAME {
            Some(DEFAULT_ECDSA_CERT_NAME)
        } else {
            None
        }
    }

    /// Where `name` is in use, for listings: every setting key that names
    /// it, plus the automatic ECDSA companion of the `Default Cert`.
    pub fn certificate_usage(&self, name: &str) -> Vec<&'static str> {
        let mut keys: Vec<&'static str> = self
            .certificate_references()
            .into_iter()
            .filter(|(_, used)| *used == name)
            .map(|(key, _)| key)
            .collect();
        keys.dedup();
        if self.tls.inbound.ecdsa_certificate.is_empty()
            && self.effective_ecdsa_certificate() == Some(name)
        {
            keys.push("tls.inbound.ecdsa_certificate (automatic, beside the Default Cert)");
        }
        keys
    }

    /// The banner text after `220 `.
    pub fn banner(&self, hostname: &str) -> String {
        if self.mta.banner.is_empty() {
            format!("{hostname} ESMTP Postern")
        } else {
            self.mta.banner.clone()
        }
    }

    /// The best matching `[[domain]]` entry: exact name first, then the most
    /// specific wildcard.
    pub fn domain_entry(&self, domain: &str) -> Option<&DomainEntry> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if let Some(exact) = self
            .domains
            .iter()
            .find(|d| !d.pattern().is_wildcard() && d.pattern().matches(&domain))
        {
            return Some(exact);
        }
        self.domains
            .iter()
            .filter(|d| d.pattern().is_wildcard() && d.pattern().matches(&domain))
            .max_by_key(|d| d.name.len())
    }

    /// Outbound TLS mode for a recipient domain (SPEC §4 precedence).
    pub fn outbound_mode(&self, domain: &str) -> OutboundMode {
        self.domain_entry(domain)
            .and_then(|d| d.tls)
            .unwrap_or(self.tls.outbound.mode)
    }

    /// Whether mail for this domain is accepted from any client.
    pub fn is_relay_domain(&self, domain: &str) -> bool {
        self.domain_entry(domain).is_some_and(|d| d.relay)
    }
}

fn check_names(key: &str, names: &[String]) -> Result<(), ConfigError> {
    if names.iter().any(|n| n.trim().is_empty()) {
        return Err(ConfigError::new(key, "entries must not be empty"));
    }
    Ok(())
}

fn path_error<E: std::fmt::Display>(err: serde_path_to_error::Error<E>) -> ConfigError {
    let path = err.path().to_string();
    let key = if path == "." {
        "settings".to_string()
    } else {
        path
    };
    ConfigError::new(key, err.inner().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_companion_only_beside_the_default_cert() {
        let mut s = Settings::default();
        assert_eq!(
            s.effective_ecdsa_certificate(),
            Some(DEFAULT_ECDSA_CERT_NAME)
        );
        assert_eq!(s.certificate_usage(DEFAULT_ECDSA_CERT_NAME).len(), 1);
        s.tls.inbound.certificate = "Own RSA".into();
        assert_eq!(s.effective_ecdsa_certificate(), None);
        assert!(s.certificate_usage(DEFAULT_ECDSA_CERT_NAME).is_empty());
        s.tls.inbound.ecdsa_certificate = "Own EC".into();
        assert_eq!(s.effective_ecdsa_certificate(), Some("Own EC"));
        assert_eq!(
            s.certificate_usage("Own EC"),
            ["tls.inbound.ecdsa_certificate"]
        );
    }

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let s = Settings::default();
        s.validate().expect("defaults valid");
        assert_eq!(Settings::from_toml(&s.to_toml()).expect("toml"), s);
        assert_eq!(Settings::from_json(&s.to_json()).expect("json"), s);
    }

    #[test]
    fn spec_example_parses() {
        let text = r#"
[tls.inbound]
mode = "offer"
certificate = "Default Cert"
ecdsa_certificate = ""
client_certificate = "none"
trusted_client_ca = []
min_version = "1.2"

[tls.outbound]
mode = "opportunistic"
trusted_ca = ["system"]
client_certificate = ""

[mta]
banner = ""
max_message_size = 52428800
max_recipients = 1000
max_connections = 1000
max_connections_per_client = 50
session_timeout = "300s"
queue_lifetime = "5d"
min_backoff = "5m"
max_backoff = "1h"
tracking_retention = "30d"
limit_exempt_networks = []

[[domain]]
name = "corp.example"
relay = true
next_hop = "[10.0.0.5]:25"
tls = "verify"
"#;
        let s = Settings::from_toml(text).expect("parses");
        assert_eq!(s.domains.len(), 1);
        assert_eq!(s.outbound_mode("corp.example"), OutboundMode::Verify);
        assert_eq!(
            s.outbound_mode("other.example"),
            OutboundMode::Opportunistic
        );
        assert!(s.is_relay_domain("CORP.example."));
    }

    #[test]
    fn errors_name_the_key_and_choices() {
        let err = Settings::from_toml("[tls.inbound]\nmode = \"always\"\n").unwrap_err();
        assert_eq!(err.key, "tls.inbound.mode");
        assert!(
            err.message.contains("none") && err.message.contains("require"),
            "{err}"
        );

        let err = Settings::from_toml("[mta]\nmax_size = 1\n").unwrap_err();
        assert!(err.message.contains("max_size"), "{err}");

        let err = Settings::from_json(r#"{"mta": {"session_timeout": "5 minutes"}}"#).unwrap_err();
        assert_eq!(err.key, "mta.session_timeout");
    }

    #[test]
    fn client_certificate_require_needs_require_mode() {
        let mut s = Settings::default();
        s.tls.inbound.client_certificate = ClientCertMode::Require;
        s.tls.inbound.trusted_client_ca = vec!["Partner CA".into()];
        let err = s.validate().unwrap_err();
        assert_eq!(err.key, "tls.inbound.client_certificate");
        s.tls.inbound.mode = InboundMode::Require;
        s.validate().expect("valid with require mode");
        s.tls.inbound.trusted_client_ca.clear();
        assert_eq!(
            s.validate().unwrap_err().key,
            "tls.inbound.trusted_client_ca"
        );
    }

    #[test]
    fn limits_and_backoff_are_checked() {
        let mut s = Settings::default();
        s.mta.max_message_size = 0;
        assert_eq!(s.validate().unwrap_err().key, "mta.max_message_size");
        let mut s = Settings::default();
        s.mta.min_backoff = Duration::from_secs(7200);
        assert_eq!(s.validate().unwrap_err().key, "mta.max_backoff");
        let mut s = Settings::default();
        s.mta.banner = "evil\r\n250 ok".into();
        assert_eq!(s.validate().unwrap_err().key, "mta.banner");
    }

    #[test]
    fn wildcard_precedence() {
        let s = Settings::from_toml(
            r#"
[[domain]]
name = "*.corp.example"
tls = "require"
[[domain]]
name = "*.eu.corp.example"
tls = "none"
[[domain]]
name = "mail.eu.corp.example"
tls = "verify"
"#,
        )
        .expect("parses");
        assert_eq!(s.outbound_mode("corp.example"), OutboundMode::Opportunistic);
        assert_eq!(s.outbound_mode("a.corp.example"), OutboundMode::Require);
        assert_eq!(s.outbound_mode("b.a.corp.example"), OutboundMode::Require);
        assert_eq!(s.outbound_mode("x.eu.corp.example"), OutboundMode::None);
        assert_eq!(
            s.outbound_mode("mail.eu.corp.example"),
            OutboundMode::Verify
        );
    }

    #[test]
    fn duplicate_domains_refused() {
        let err = Settings::from_toml(
            "[[domain]]\nname = \"a.example\"\n[[domain]]\nname = \"A.example\"\n",
        )
        .unwrap_err();
        assert_eq!(err.key, "domain[1].name");
    }
}
