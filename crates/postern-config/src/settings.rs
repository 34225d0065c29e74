//! The shared settings of SPEC §4, their defaults and their validation.

use serde::{Deserialize, Serialize};

use crate::alerts::AlertSettings;
use crate::domain::DomainEntry;
use crate::duration::Duration;
use crate::tlsrpt::TlsRptSettings;
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
    pub tlsrpt: TlsRptSettings,
    pub alerts: AlertSettings,
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
    /// Honour recipient domains' MTA-STS policies (RFC 8461, SPEC §10).
    pub mta_sts: bool,
    /// Honour DNSSEC-authenticated TLSA records (RFC 7672, SPEC §10).
    pub dane: bool,
    /// Learned per-domain TLS levels (SPEC §10 item 4).
    pub learn: Learn,
    /// Deliveries at a level before it is learned.
    pub learn_min_deliveries: u32,
    /// ... spread over at least this long.
    pub learn_min_span: Duration,
    /// An entry not confirmed for this long is forgotten.
    pub learn_expiry: Duration,
}

impl Default for OutboundTls {
    fn default() -> Self {
        Self {
            mode: OutboundMode::Opportunistic,
            trusted_ca: vec!["system".to_string()],
            client_certificate: String::new(),
            mta_sts: true,
            dane: true,
            learn: Learn::Monitor,
            learn_min_deliveries: 3,
            learn_min_span: Duration::from_secs(86_400),
            learn_expiry: Duration::from_secs(90 * DAY),
        }
    }
}

/// `tls.outbound.learn`: what a delivery below a domain's learned level does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Learn {
    /// Nothing is learned.
    Off,
    /// Learned; a downgrade is delivered and recorded.
    #[default]
    Monitor,
    /// Learned; the learned level raises the requirement (a downgrade defers).
    Enforce,
}

impl Learn {
    pub fn as_str(self) -> &'static str {
        match self {
            Learn::Off => "off",
            Learn::Monitor => "monitor",
            Learn::Enforce => "enforce",
        }
    }
}

/// The ranges of the numeric learning settings. A span of `0s` learns from
/// the deliveries alone; the short lower ends let tests run a whole
/// learn-and-expire cycle in seconds.
pub const LEARN_BOUNDS: [Bound; 3] = [
    Bound {
        key: "tls.outbound.learn_min_deliveries",
        min: 1,
        max: 1_000_000,
        unit: Unit::Count,
    },
    Bound {
        key: "tls.outbound.learn_min_span",
        min: 0,
        max: 365 * DAY,
        unit: Unit::Seconds,
    },
    Bound {
        key: "tls.outbound.learn_expiry",
        min: 1,
        max: 3650 * DAY,
        unit: Unit::Seconds,
    },
];

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
    /// Advertise REQUIRETLS (RFC 8689) after STARTTLS and accept
    /// `MAIL FROM:<..> REQUIRETLS` in TLS sessions.
    pub requiretls: bool,
}

impl MtaSettings {
    /// The values [`MTA_BOUNDS`] limits, in its order.
    fn bounded_values(&self) -> [u64; 10] {
        [
            self.max_message_size,
            u64::from(self.max_recipients),
            u64::from(self.max_connections),
            u64::from(self.max_connections_per_client),
            self.session_timeout.as_secs(),
            self.queue_lifetime.as_secs(),
            self.min_backoff.as_secs(),
            self.max_backoff.as_secs(),
            self.tracking_retention.as_secs(),
            u64::try_from(self.limit_exempt_networks.len()).unwrap_or(u64::MAX),
        ]
    }
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
            requiretls: true,
        }
    }
}

/// Longest `mta.banner`, in characters. An SMTP reply line may have 512
/// octets (RFC 5321 §4.5.3.1.5); `220 `, the CRLF and room to spare leave
/// 400 for the text.
pub const MAX_BANNER_CHARS: usize = 400;

/// Most entries in `mta.limit_exempt_networks` (each is checked per
/// connection).
pub const MAX_EXEMPT_NETWORKS: usize = 1000;

/// What a bounded `[mta]` number counts, for messages and forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A plain count (recipients, connections).
    Count,
    /// Bytes.
    Bytes,
    /// Seconds, written as a [`Duration`] (`30s`, `5m`, `1h`, `5d`).
    Seconds,
}

/// The allowed range of one numeric `[mta]` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub key: &'static str,
    pub min: u64,
    pub max: u64,
    pub unit: Unit,
}

impl Bound {
    fn show(&self, value: u64) -> String {
        match self.unit {
            Unit::Count => value.to_string(),
            Unit::Bytes => format!("{value} bytes"),
            Unit::Seconds => Duration::from_secs(value).to_string(),
        }
    }

    /// "between 1s and 1h", for error messages and forms.
    pub fn range(&self) -> String {
        format!(
            "between {} and {}",
            self.show(self.min),
            self.show(self.max)
        )
    }

    fn check(&self, value: u64) -> Result<(), ConfigError> {
        if (self.min..=self.max).contains(&value) {
            return Ok(());
        }
        Err(ConfigError::new(
            self.key,
            format!("must be {} (got {})", self.range(), self.show(value)),
        ))
    }
}

const DAY: u64 = 86_400;

/// Every numeric `[mta]` setting with its range. The lower ends of the
/// timers are short on purpose (tests run whole retry and expiry cycles
/// in seconds); the upper ends stop a typo of a few zeros (a session
/// timeout of `1000000000d` holds a connection slot for ever, a 1 TiB
/// size limit lets one client fill the disk). `max_connections_per_client`
/// is also at most `max_connections`.
pub const MTA_BOUNDS: [Bound; 10] = [
    Bound {
        key: "mta.max_message_size",
        min: 1024,
        max: 1 << 30,
        unit: Unit::Bytes,
    },
    Bound {
        key: "mta.max_recipients",
        min: 1,
        max: 100_000,
        unit: Unit::Count,
    },
    Bound {
        key: "mta.max_connections",
        min: 1,
        max: 100_000,
        unit: Unit::Count,
    },
    Bound {
        key: "mta.max_connections_per_client",
        min: 1,
        max: 100_000,
        unit: Unit::Count,
    },
    Bound {
        key: "mta.session_timeout",
        min: 1,
        max: 3600,
        unit: Unit::Seconds,
    },
    Bound {
        key: "mta.queue_lifetime",
        min: 1,
        max: 30 * DAY,
        unit: Unit::Seconds,
    },
    Bound {
        key: "mta.min_backoff",
        min: 1,
        max: DAY,
        unit: Unit::Seconds,
    },
    Bound {
        key: "mta.max_backoff",
        min: 1,
        max: DAY,
        unit: Unit::Seconds,
    },
    Bound {
        key: "mta.tracking_retention",
        min: 3600,
        max: 3650 * DAY,
        unit: Unit::Seconds,
    },
    // Not a number of its own: the list's length.
    Bound {
        key: "mta.limit_exempt_networks",
        min: 0,
        max: MAX_EXEMPT_NETWORKS as u64,
        unit: Unit::Count,
    },
];

/// The bound of `key` (`mta.session_timeout`, ...), if it has one.
pub fn bound(key: &str) -> Option<&'static Bound> {
    MTA_BOUNDS
        .iter()
        .chain(LEARN_BOUNDS.iter())
        .find(|b| b.key == key)
}

/// Why a banner is refused, if it is: one line of at most
/// [`MAX_BANNER_CHARS`] printable ASCII characters (RFC 5321's reply
/// `textstring`, tabs aside), so every client reads it the same way.
fn check_banner(banner: &str) -> Result<(), ConfigError> {
    let refuse = |why: String| Err(ConfigError::new("mta.banner", why));
    if banner.contains(['\r', '\n']) {
        return refuse("must be a single line".into());
    }
    let chars = banner.chars().count();
    if chars > MAX_BANNER_CHARS {
        return refuse(format!(
            "must be at most {MAX_BANNER_CHARS} characters (got {chars})"
        ));
    }
    if let Some(bad) = banner.chars().find(|c| !(' '..='~').contains(c)) {
        return refuse(format!(
            "must be printable ASCII text (letters, digits, punctuation, spaces); {:?} (U+{:04X}) is not",
            bad, u32::from(bad)
        ));
    }
    Ok(())
}

impl Settings {
    /// Parse a TOML settings document; errors name the offending key.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| crate::toml_syntax::syntax_error(text, &e))?;
        let settings: Settings = serde_path_to_error::deserialize(de).map_err(path_error)?;
        // The text parsed, so it is a table; a section given as an array
        // (`tls = []`), which serde reads as all defaults, is refused here.
        if let Ok(table) = text.parse::<toml::Table>() {
            if let Ok(value) = serde_json::to_value(table) {
                check_shape(&value)?;
            }
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Parse a JSON settings document; errors name the offending key.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ConfigError::new("settings", format!("not valid JSON: {e}")))?;
        check_shape(&value)?;
        let settings: Settings = serde_path_to_error::deserialize(value).map_err(path_error)?;
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
        // A value out of its range is the first thing to say about it.
        self.check_mta_bounds()?;
        self.validate_consistency()
    }

    /// Parse settings as a store saved them: like [`Settings::from_json`],
    /// except that values outside today's `[mta]` ranges (saved by an
    /// older Postern with looser bounds) are returned beside the settings
    /// instead of refusing them, so a gateway keeps running on what it ran
    /// with before and `settings set` can repair it. Every save still
    /// checks the ranges.
    pub fn from_stored_json(text: &str) -> Result<(Self, Option<ConfigError>), ConfigError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ConfigError::new("settings", format!("not valid JSON: {e}")))?;
        check_shape(&value)?;
        let settings: Settings = serde_path_to_error::deserialize(value).map_err(path_error)?;
        settings.validate_consistency()?;
        let out_of_range = settings.check_mta_bounds().err();
        Ok((settings, out_of_range))
    }

    /// The `[mta]` text and number ranges.
    fn check_mta_bounds(&self) -> Result<(), ConfigError> {
        let mta = &self.mta;
        check_banner(&mta.banner)?;
        for (bound, value) in MTA_BOUNDS.iter().zip(mta.bounded_values()) {
            bound.check(value)?;
        }
        let out = &self.tls.outbound;
        let learn_values = [
            u64::from(out.learn_min_deliveries),
            out.learn_min_span.as_secs(),
            out.learn_expiry.as_secs(),
        ];
        for (bound, value) in LEARN_BOUNDS.iter().zip(learn_values) {
            bound.check(value)?;
        }
        if out.learn_expiry <= out.learn_min_span {
            return Err(ConfigError::new(
                "tls.outbound.learn_expiry",
                format!(
                    "must be longer than tls.outbound.learn_min_span ({}), or nothing is ever \
                     learned; is {}",
                    out.learn_min_span, out.learn_expiry
                ),
            ));
        }
        if mta.max_connections_per_client > mta.max_connections {
            return Err(ConfigError::new(
                "mta.max_connections_per_client",
                format!(
                    "must not be larger than mta.max_connections ({}), and is {}; lower it \
                     first, or change both together (settings import, the Advanced page)",
                    mta.max_connections, mta.max_connections_per_client
                ),
            ));
        }
        Ok(())
    }

    /// Everything but the `[mta]` ranges: choices that only work together,
    /// names, the retry order, the domain table.
    fn validate_consistency(&self) -> Result<(), ConfigError> {
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
        if mta.max_backoff < mta.min_backoff {
            return Err(ConfigError::new(
                "mta.max_backoff",
                format!(
                    "must not be shorter than mta.min_backoff ({})",
                    mta.min_backoff
                ),
            ));
        }

        self.tlsrpt.validate()?;
        self.alerts.validate()?;

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

/// Refuse a document whose top level, sections or `[[domain]]` entries are
/// not objects (tables). Serde would read a struct from an array too, so
/// `[]` or `{"tls": []}` would silently mean "every default": a whole
/// configuration wiped by a client that sent the wrong type.
fn check_shape(document: &serde_json::Value) -> Result<(), ConfigError> {
    let schema = serde_json::to_value(Settings::default()).unwrap_or_default();
    check_object("settings", document, &schema)
}

fn type_name(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn check_object(
    key: &str,
    value: &serde_json::Value,
    schema: &serde_json::Value,
) -> Result<(), ConfigError> {
    let Some(object) = value.as_object() else {
        return Err(ConfigError::new(
            key,
            format!(
                "must be an object (a table in TOML), not {}; nothing was changed",
                type_name(value)
            ),
        ));
    };
    let child = |name: &str| {
        if key == "settings" {
            name.to_string()
        } else {
            format!("{key}.{name}")
        }
    };
    for (name, inner) in object {
        if key == "settings" && name == "domain" {
            let Some(entries) = inner.as_array() else {
                return Err(ConfigError::new(
                    "domain",
                    format!(
                        "must be an array of objects ([[domain]] tables), not {}",
                        type_name(inner)
                    ),
                ));
            };
            for (index, entry) in entries.iter().enumerate() {
                if !entry.is_object() {
                    return Err(ConfigError::new(
                        format!("domain[{index}]"),
                        format!(
                            "must be an object with name, relay, next_hop, tls; not {}",
                            type_name(entry)
                        ),
                    ));
                }
            }
            continue;
        }
        // Unknown keys are refused by the deserializer, naming them.
        if let Some(section) = schema.get(name).filter(|v| v.is_object()) {
            check_object(&child(name), inner, section)?;
        }
    }
    Ok(())
}

/// What replacing one settings document by another does to the
/// `[[domain]]` table: entries and relay domains added and removed (names
/// in lower case). Shown in API answers and logs, so that a change of who
/// may relay never goes unnoticed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DomainChanges {
    pub domains_added: Vec<String>,
    pub domains_removed: Vec<String>,
    pub relay_domains_added: Vec<String>,
    pub relay_domains_removed: Vec<String>,
    /// Every entry there was is gone (and there was at least one).
    pub deletes_every_domain: bool,
}

impl DomainChanges {
    pub fn between(before: &Settings, after: &Settings) -> Self {
        use std::collections::BTreeSet;
        let names = |s: &Settings, relay_only: bool| -> BTreeSet<String> {
            s.domains
                .iter()
                .filter(|d| !relay_only || d.relay)
                .map(|d| d.name.to_ascii_lowercase())
                .collect()
        };
        let diff = |a: &BTreeSet<String>, b: &BTreeSet<String>| -> Vec<String> {
            a.difference(b).cloned().collect()
        };
        let (old, new) = (names(before, false), names(after, false));
        let (old_relay, new_relay) = (names(before, true), names(after, true));
        Self {
            domains_added: diff(&new, &old),
            domains_removed: diff(&old, &new),
            relay_domains_added: diff(&new_relay, &old_relay),
            relay_domains_removed: diff(&old_relay, &new_relay),
            deletes_every_domain: !before.domains.is_empty() && after.domains.is_empty(),
        }
    }

    /// Whether the set of relay domains changes.
    pub fn changes_relay_set(&self) -> bool {
        !self.relay_domains_added.is_empty() || !self.relay_domains_removed.is_empty()
    }

    /// Sentences for an administrator, one per kind of risky change.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.deletes_every_domain {
            out.push(format!(
                "every [[domain]] entry is deleted ({}): mail for them is now refused unless the client is trusted",
                self.domains_removed.join(", ")
            ));
        }
        if !self.relay_domains_removed.is_empty() {
            out.push(format!(
                "no longer relay domains: {}",
                self.relay_domains_removed.join(", ")
            ));
        }
        if !self.relay_domains_added.is_empty() {
            out.push(format!(
                "new relay domains (mail for them accepted from anyone): {}",
                self.relay_domains_added.join(", ")
            ));
        }
        out
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
    fn requiretls_defaults_on_and_is_a_boolean() {
        assert!(Settings::default().mta.requiretls);
        let off = Settings::from_toml("[mta]\nrequiretls = false\n").expect("false");
        assert!(!off.mta.requiretls);
        let err = Settings::from_toml("[mta]\nrequiretls = \"yes\"\n").unwrap_err();
        assert_eq!(err.key, "mta.requiretls");
        assert!(
            !Settings::default()
                .with("mta.requiretls", "false")
                .expect("set")
                .mta
                .requiretls
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
    fn dane_switches() {
        let s = Settings::default();
        assert!(s.tls.outbound.dane);
        let s = Settings::from_toml(
            "[tls.outbound]\ndane = false\n[[domain]]\nname = \"a.example\"\n\
             [[domain]]\nname = \"b.example\"\ndane = false\n",
        )
        .expect("parses");
        assert!(!s.tls.outbound.dane);
        assert_eq!(s.domain_entry("a.example").map(|e| e.dane), Some(true));
        assert_eq!(s.domain_entry("b.example").map(|e| e.dane), Some(false));
        // Round trip: the default is not written, `false` is.
        let back = Settings::from_toml(&s.to_toml()).expect("round trip");
        assert_eq!(back, s);
        assert!(!s.to_toml().contains("dane = true"));
        let s = s.with("tls.outbound.dane", "true").expect("set");
        assert!(s.tls.outbound.dane);
        let err = Settings::default()
            .with("tls.outbound.dane", "maybe")
            .unwrap_err();
        assert_eq!(err.key, "tls.outbound.dane", "{err}");
        let err =
            Settings::from_toml("[[domain]]\nname = \"a.example\"\ndane = \"no\"\n").unwrap_err();
        assert!(err.key.contains("dane"), "{err}");
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
requiretls = true

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

    /// Every bounded setting: good and bad rows side by side, the error
    /// naming the key and the range.
    #[test]
    fn bounds_table() {
        type Edit = fn(&mut MtaSettings);
        let rows: &[(&str, Edit, Option<&str>)] = &[
            ("defaults", |_| {}, None),
            ("banner 400", |m| m.banner = "b".repeat(400), None),
            ("banner 401", |m| m.banner = "b".repeat(401), Some("mta.banner: must be at most 400 characters (got 401)")),
            ("banner 10 MiB", |m| m.banner = "b".repeat(10 << 20), Some("mta.banner: must be at most 400")),
            ("banner LF", |m| m.banner = "a\nb".into(), Some("mta.banner: must be a single line")),
            ("banner NUL", |m| m.banner = "a\0b".into(), Some("mta.banner: must be printable ASCII")),
            ("banner tab", |m| m.banner = "a\tb".into(), Some("mta.banner: must be printable ASCII")),
            ("banner DEL", |m| m.banner = "a\u{7f}".into(), Some("U+007F")),
            ("banner bidi", |m| m.banner = "mx\u{202e}moc".into(), Some("U+202E")),
            ("banner accents", |m| m.banner = "mx.café.example".into(), Some("U+00E9")),
            ("banner typical", |m| m.banner = "mx.example.com ESMTP ready (no UCE)".into(), None),
            ("size 1 KiB", |m| m.max_message_size = 1024, None),
            ("size 1023", |m| m.max_message_size = 1023, Some("mta.max_message_size: must be between 1024 bytes and 1073741824 bytes (got 1023 bytes)")),
            ("size 1 GiB", |m| m.max_message_size = 1 << 30, None),
            ("size 1 GiB + 1", |m| m.max_message_size = (1 << 30) + 1, Some("mta.max_message_size: must be between")),
            ("recipients 0", |m| m.max_recipients = 0, Some("mta.max_recipients: must be between 1 and 100000 (got 0)")),
            ("recipients 100000", |m| m.max_recipients = 100_000, None),
            ("recipients 100001", |m| m.max_recipients = 100_001, Some("mta.max_recipients: must be between 1 and 100000")),
            ("connections 0", |m| m.max_connections = 0, Some("mta.max_connections: must be between 1 and 100000")),
            ("connections huge", |m| m.max_connections = u32::MAX, Some("mta.max_connections: must be between 1 and 100000")),
            ("per client 0", |m| m.max_connections_per_client = 0, Some("mta.max_connections_per_client: must be between 1 and 100000")),
            ("per client = total", |m| m.max_connections_per_client = 1000, None),
            ("per client > total", |m| m.max_connections_per_client = 1001, Some("mta.max_connections_per_client: must not be larger than mta.max_connections (1000)")),
            ("per client > small total", |m| {
                m.max_connections = 10;
                m.max_connections_per_client = 50;
            }, Some("mta.max_connections_per_client: must not be larger than mta.max_connections (10)")),
            ("session 1s", |m| m.session_timeout = Duration::from_secs(1), None),
            ("session 0s", |m| m.session_timeout = Duration::from_secs(0), Some("mta.session_timeout: must be between 1s and 1h (got 0s)")),
            ("session 1h", |m| m.session_timeout = Duration::from_secs(3600), None),
            ("session 1000000000d", |m| m.session_timeout = Duration::from_secs(1_000_000_000 * DAY), Some("mta.session_timeout: must be between 1s and 1h (got 1000000000d)")),
            ("lifetime 30d", |m| m.queue_lifetime = Duration::from_secs(30 * DAY), None),
            ("lifetime 31d", |m| m.queue_lifetime = Duration::from_secs(31 * DAY), Some("mta.queue_lifetime: must be between 1s and 30d (got 31d)")),
            ("min backoff 0", |m| m.min_backoff = Duration::from_secs(0), Some("mta.min_backoff: must be between 1s and 1d")),
            ("max backoff 2d", |m| m.max_backoff = Duration::from_secs(2 * DAY), Some("mta.max_backoff: must be between 1s and 1d (got 2d)")),
            ("retention 59m", |m| m.tracking_retention = Duration::from_secs(59 * 60), Some("mta.tracking_retention: must be between 1h and 3650d (got 59m)")),
            ("retention 3650d", |m| m.tracking_retention = Duration::from_secs(3650 * DAY), None),
            ("retention 3651d", |m| m.tracking_retention = Duration::from_secs(3651 * DAY), Some("mta.tracking_retention: must be between 1h and 3650d")),
            ("exempt 1000", |m| m.limit_exempt_networks = vec!["10.0.0.0/8".parse().expect("net"); 1000], None),
            ("exempt 1001", |m| m.limit_exempt_networks = vec!["10.0.0.0/8".parse().expect("net"); 1001], Some("mta.limit_exempt_networks: must be between 0 and 1000 (got 1001)")),
        ];
        for (name, edit, want) in rows {
            let mut s = Settings::default();
            edit(&mut s.mta);
            match (s.validate(), want) {
                (Ok(()), None) => {}
                (Err(e), Some(want)) => {
                    assert!(
                        e.to_string().starts_with(want) || e.to_string().contains(want),
                        "{name}: {e}"
                    )
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        // Every bound is named in the table, once.
        for b in &MTA_BOUNDS {
            assert_eq!(bound(b.key), Some(b));
        }
        assert_eq!(bound("mta.banner"), None);
    }

    #[test]
    fn learning_settings_defaults_and_bounds() {
        let s = Settings::default();
        assert_eq!(s.tls.outbound.learn, Learn::Monitor);
        assert_eq!(s.tls.outbound.learn_min_deliveries, 3);
        assert_eq!(s.tls.outbound.learn_min_span.as_secs(), DAY);
        assert_eq!(s.tls.outbound.learn_expiry.as_secs(), 90 * DAY);
        #[rustfmt::skip]
        let rows: [(&str, &str, Option<&str>); 11] = [
            ("tls.outbound.learn", "enforce", None),
            ("tls.outbound.learn", "off", None),
            ("tls.outbound.learn", "always", Some("tls.outbound.learn")),
            ("tls.outbound.learn_min_deliveries", "0", Some("tls.outbound.learn_min_deliveries: must be between 1 and 1000000 (got 0)")),
            ("tls.outbound.learn_min_deliveries", "1", None),
            ("tls.outbound.learn_min_span", "0s", None),
            ("tls.outbound.learn_min_span", "1s", None),
            ("tls.outbound.learn_min_span", "366d", Some("tls.outbound.learn_min_span: must be between 0s and 365d (got 366d)")),
            ("tls.outbound.learn_expiry", "3651d", Some("tls.outbound.learn_expiry: must be between 1s and 3650d")),
            ("tls.outbound.learn_expiry", "1d", Some("tls.outbound.learn_expiry: must be longer than tls.outbound.learn_min_span (1d)")),
            ("tls.outbound.learn_expiry", "2d", None),
        ];
        for (key, value, want) in rows {
            match (s.with(key, value), want) {
                (Ok(_), None) => {}
                (Err(e), Some(text)) => assert!(e.to_string().contains(text), "{key}={value}: {e}"),
                (got, want) => panic!("{key}={value}: got {got:?}, want {want:?}"),
            }
        }
        let from_toml = Settings::from_toml(
            "[tls.outbound]\nlearn = \"enforce\"\nlearn_min_span = \"1s\"\nlearn_expiry = \"5s\"\n",
        )
        .expect("toml");
        assert_eq!(from_toml.tls.outbound.learn, Learn::Enforce);
        assert_eq!(from_toml.tls.outbound.learn_expiry.as_secs(), 5);
    }

    #[test]
    fn monitor_rules_need_a_tls_mode() {
        let err = Settings::from_toml("[[domain]]\nname = \"p.test\"\nmonitor = true\n")
            .expect_err("monitor without tls");
        assert_eq!(err.key, "domain[0].monitor");
        let ok = Settings::from_toml(
            "[[domain]]\nname = \"p.test\"\ntls = \"verify\"\nmonitor = true\n",
        )
        .expect("monitor rule");
        assert!(ok.domains[0].monitor);
        assert!(ok.to_toml().contains("monitor = true"));
        assert!(!Settings::default().to_toml().contains("\nmonitor ="));
    }

    #[test]
    fn stored_settings_out_of_todays_ranges_still_load() {
        // What an older Postern could save: per client above the total.
        let mut old = Settings::default();
        old.mta.max_connections = 20;
        let text = old.to_json();
        assert!(Settings::from_json(&text).is_err());
        let (loaded, out_of_range) = Settings::from_stored_json(&text).expect("loads");
        assert_eq!(loaded, old);
        let e = out_of_range.expect("reported");
        assert_eq!(e.key, "mta.max_connections_per_client");
        // ... and is repaired with one `settings set`.
        let fixed = loaded
            .with("mta.max_connections_per_client", "20")
            .expect("repaired");
        assert_eq!(
            Settings::from_stored_json(&fixed.to_json()).expect("ok").1,
            None
        );
        // Inconsistent settings are still refused on load.
        let bad = r#"{"tls": {"inbound": {"client_certificate": "require", "trusted_client_ca": ["A"]}}}"#;
        assert!(Settings::from_stored_json(bad).is_err());
        assert!(Settings::from_stored_json("[]").is_err());
    }

    #[test]
    fn bounds_hold_through_toml_and_json() {
        let err = Settings::from_toml("[mta]\nsession_timeout = \"1000000000d\"\n").unwrap_err();
        assert_eq!(err.key, "mta.session_timeout");
        assert!(err.message.contains("between 1s and 1h"), "{err}");
        let err = Settings::from_json(
            r#"{"mta": {"max_connections": 10, "max_connections_per_client": 11}}"#,
        )
        .unwrap_err();
        assert_eq!(err.key, "mta.max_connections_per_client");
        let err = Settings::default()
            .with("mta.banner", &"x".repeat(401))
            .unwrap_err();
        assert_eq!(err.key, "mta.banner");
    }

    #[test]
    fn documents_must_be_objects_where_the_schema_says_object() {
        let rows: &[(&str, &str)] = &[
            ("[]", "settings"),
            ("null", "settings"),
            ("\"tls\"", "settings"),
            (r#"{"tls": []}"#, "tls"),
            (r#"{"tls": null}"#, "tls"),
            (r#"{"tls": {"inbound": []}}"#, "tls.inbound"),
            (r#"{"tls": {"outbound": 3}}"#, "tls.outbound"),
            (r#"{"mta": []}"#, "mta"),
            (r#"{"mta": "x"}"#, "mta"),
            (r#"{"domain": {}}"#, "domain"),
            (r#"{"domain": [["a.example", true]]}"#, "domain[0]"),
            (
                r#"{"domain": [{"name": "a.example"}, "b.example"]}"#,
                "domain[1]",
            ),
            (r#"{"colour": "red"}"#, "colour"),
            (
                r#"{"tls": {"inbound": {"mode": "offer", "colour": 1}}}"#,
                "tls.inbound.colour",
            ),
        ];
        for (text, key) in rows {
            let err = Settings::from_json(text).expect_err(text);
            assert_eq!(&err.key, key, "{text}: {err}");
        }
        let err = Settings::from_json("[]").unwrap_err();
        assert!(err.message.contains("not an array"), "{err}");
        // TOML: the same rules.
        for (text, key) in [
            ("tls = []\n", "tls"),
            ("mta = 5\n", "mta"),
            ("[tls]\ninbound = [1]\n", "tls.inbound"),
            ("domain = [\"a.example\"]\n", "domain[0]"),
            ("domain = \"a.example\"\n", "domain"),
        ] {
            let err = Settings::from_toml(text).expect_err(text);
            assert!(err.key.starts_with(key), "{text}: {err}");
        }
        // Objects, even partial or empty, are fine.
        assert_eq!(Settings::from_json("{}").expect("{}"), Settings::default());
        assert!(Settings::from_json(r#"{"tls": {}, "mta": {}, "domain": []}"#).is_ok());
        assert!(Settings::from_toml("").is_ok());
    }

    #[test]
    fn domain_changes_name_what_changes() {
        let before = Settings::from_toml(
            "[[domain]]\nname = \"A.example\"\nrelay = true\n[[domain]]\nname = \"b.example\"\n",
        )
        .expect("before");
        let same = DomainChanges::between(&before, &before);
        assert_eq!(same, DomainChanges::default());
        assert!(same.warnings().is_empty());

        let wiped = DomainChanges::between(&before, &Settings::default());
        assert!(wiped.deletes_every_domain);
        assert_eq!(wiped.domains_removed, ["a.example", "b.example"]);
        assert_eq!(wiped.relay_domains_removed, ["a.example"]);
        assert!(wiped.changes_relay_set());
        assert!(wiped.warnings()[0].contains("every [[domain]] entry is deleted"));

        let mut after = before.clone();
        after.domains[1].relay = true;
        let more = DomainChanges::between(&before, &after);
        assert!(!more.deletes_every_domain && more.domains_removed.is_empty());
        assert_eq!(more.relay_domains_added, ["b.example"]);
        assert!(
            more.warnings()[0].contains("new relay domains"),
            "{:?}",
            more.warnings()
        );
        // Nothing to delete: not "deletes every domain".
        assert!(
            !DomainChanges::between(&Settings::default(), &Settings::default())
                .deletes_every_domain
        );
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

    #[test]
    fn mta_sts_switches() {
        let s = Settings::default();
        assert!(s.tls.outbound.mta_sts, "on by default (SPEC §10)");
        let s = s.with("tls.outbound.mta_sts", "false").expect("settable");
        assert!(!s.tls.outbound.mta_sts);
        let err = s.with("tls.outbound.mta_sts", "maybe").unwrap_err();
        assert_eq!(err.key, "tls.outbound.mta_sts");

        let s = Settings::from_toml(
            "[[domain]]\nname = \"a.example\"\n[[domain]]\nname = \"b.example\"\nmta_sts = false\n",
        )
        .expect("parses");
        assert!(s.domains[0].mta_sts, "per-domain default is true");
        assert!(!s.domains[1].mta_sts);
        let err = Settings::from_toml("[[domain]]\nname = \"a.example\"\nmta_sts = \"no\"\n")
            .unwrap_err();
        assert!(err.key.contains("mta_sts"), "{err}");
    }
}
