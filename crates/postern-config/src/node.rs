//! The node-local configuration file, `postern.toml` (SPEC §3).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::ConfigError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Banner/EHLO name; `None` means the system hostname.
    pub hostname: Option<String>,
    pub data_dir: PathBuf,
    /// `"sqlite"` (embedded) or, later, a `postgres://` URL for a cluster.
    pub store: String,
    pub smtp: SmtpNode,
    pub delivery: DeliveryNode,
    pub dns: DnsNode,
    pub admin: AdminNode,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpNode {
    /// SMTP listeners offering STARTTLS (per `tls.inbound.mode`).
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (RFC 8314).
    pub listen_implicit_tls: Vec<SocketAddr>,
    /// Clients in these networks may relay to any domain.
    pub trusted_networks: Vec<IpNet>,
    /// How long a shutting-down gateway lets sessions finish.
    pub shutdown_grace: crate::Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryNode {
    pub mx_port: u16,
    /// Hold all mail in the queue and deliver nothing (maintenance, or
    /// testing the receiving side). Mail is still accepted.
    pub paused: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsNode {
    pub nameservers: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminNode {
    pub listen: SocketAddr,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            hostname: None,
            data_dir: PathBuf::from("./postern-data"),
            store: "sqlite".to_string(),
            smtp: SmtpNode::default(),
            delivery: DeliveryNode::default(),
            dns: DnsNode::default(),
            admin: AdminNode::default(),
        }
    }
}

impl Default for SmtpNode {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            listen_implicit_tls: Vec::new(),
            trusted_networks: ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
            shutdown_grace: crate::Duration::from_secs(10),
        }
    }
}

impl Default for DeliveryNode {
    fn default() -> Self {
        Self {
            mx_port: 25,
            paused: false,
        }
    }
}

impl Default for AdminNode {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8025)),
        }
    }
}

impl NodeConfig {
    /// Parse `postern.toml` text. A relative `data_dir` is resolved against
    /// `base` (the directory of the config file), so the gateway finds its
    /// data wherever it is started from.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let de =
            toml::Deserializer::parse(text).map_err(|e| ConfigError::new("toml", e.to_string()))?;
        let mut config: NodeConfig = serde_path_to_error::deserialize(de)
            .map_err(|err| ConfigError::new(err.path().to_string(), err.inner().to_string()))?;
        if config.data_dir.is_relative() {
            config.data_dir = base.join(&config.data_dir);
        }
        config.validate()?;
        Ok(config)
    }

    /// Read and parse a config file; the error names the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path.display().to_string(), e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base).map_err(|e| ConfigError {
            key: format!("{}: {}", path.display(), e.key),
            message: e.message,
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(name) = &self.hostname {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                return Err(ConfigError::new(
                    "hostname",
                    format!("\"{name}\" is not a host name"),
                ));
            }
        }
        if self.store != "sqlite" {
            return Err(ConfigError::new(
                "store",
                format!(
                    "\"{}\" is not supported yet; allowed: \"sqlite\"",
                    self.store
                ),
            ));
        }
        if self.smtp.listen.is_empty() && self.smtp.listen_implicit_tls.is_empty() {
            return Err(ConfigError::new(
                "smtp.listen",
                "at least one of smtp.listen and smtp.listen_implicit_tls must be set",
            ));
        }
        if self.delivery.mx_port == 0 {
            return Err(ConfigError::new(
                "delivery.mx_port",
                "must be between 1 and 65535",
            ));
        }
        Ok(())
    }

    /// Path of the embedded SQLite store.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("postern.db")
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("spool")
    }

    pub fn mail_log_path(&self) -> PathBuf {
        self.data_dir.join("mail.log")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = NodeConfig::from_toml("", Path::new("/etc/postern")).expect("parses");
        assert_eq!(c.data_dir, PathBuf::from("/etc/postern/./postern-data"));
        assert_eq!(
            c.smtp.listen,
            vec![SocketAddr::from(([127, 0, 0, 1], 2525))]
        );
        assert_eq!(c.delivery.mx_port, 25);
    }

    #[test]
    fn spec_example_parses() {
        let text = r#"
hostname = "mx.example.test"
data_dir = "/var/lib/postern"
store = "sqlite"
[smtp]
listen = ["127.0.0.1:2525"]
listen_implicit_tls = ["127.0.0.1:4650"]
trusted_networks = ["127.0.0.0/8", "::1/128"]
[delivery]
mx_port = 2526
[dns]
nameservers = ["127.0.0.1:5353"]
[admin]
listen = "127.0.0.1:8025"
"#;
        let c = NodeConfig::from_toml(text, Path::new(".")).expect("parses");
        assert_eq!(c.hostname.as_deref(), Some("mx.example.test"));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/postern"));
        assert_eq!(c.delivery.mx_port, 2526);
    }

    #[test]
    fn errors_name_the_key() {
        let err =
            NodeConfig::from_toml("[smtp]\nlisten = [\"nonsense\"]\n", Path::new(".")).unwrap_err();
        assert!(err.key.starts_with("smtp.listen"), "{err}");
        let err = NodeConfig::from_toml("colour = 1\n", Path::new(".")).unwrap_err();
        assert!(err.message.contains("colour"), "{err}");
        let err = NodeConfig::from_toml("store = \"mysql://x\"\n", Path::new(".")).unwrap_err();
        assert_eq!(err.key, "store");
    }
}
