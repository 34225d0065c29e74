//! Postern's configuration vocabulary.
//!
//! Two kinds of configuration live here, deliberately apart:
//!
//! * [`NodeConfig`] — the node-local `postern.toml`: where this node listens,
//!   where its data lives, which DNS servers it asks. Every key is optional.
//! * [`Settings`] — the shared settings kept in the store (SPEC §4): TLS
//!   modes, MTA limits and the `[[domain]]` table. Edited through the CLI,
//!   the API or the web UI, always validated before anything changes.
//!
//! Validation errors always name the key and, for choices, the allowed values.

mod alerts;
mod domain;
mod duration;
mod node;
mod set;
mod settings;
mod tlsrpt;
mod toml_syntax;

pub use alerts::{AlertSettings, WebhookUrl, MAX_ALERT_ADDRESSES};
pub use domain::{DomainEntry, DomainPattern, NextHop, NextHopHost};
pub use duration::Duration;
pub use node::{
    check_host_name, AdminNode, DeliveryNode, DnsNode, Dnssec, NodeConfig, SmtpNode, SpoolNode,
    SpoolSync, DEFAULT_USER,
};
pub use set::known_keys;
pub use settings::{
    bound, Bound, ClientCertMode, DomainChanges, InboundMode, InboundTls, Learn, MtaSettings,
    OutboundMode, OutboundTls, Settings, TlsSettings, TlsVersion, Unit, DEFAULT_CERT_NAME,
    DEFAULT_ECDSA_CERT_NAME, LEARN_BOUNDS, MAX_BANNER_CHARS, MTA_BOUNDS,
};
pub use tlsrpt::{dkim_key_name, TlsRptSettings};

/// A configuration error that names what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// Dotted key (`tls.inbound.mode`, `domain[2].next_hop`) or file name.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}
