//! The node-local configuration file, `postern.toml` (SPEC §3).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::toml_syntax::syntax_error;
use crate::ConfigError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Banner/EHLO name; `None` means the system hostname.
    pub hostname: Option<String>,
    pub data_dir: PathBuf,
    /// `"sqlite"` (embedded) or a `postgres://` URL for a cluster (SPEC §9).
    pub store: String,
    /// This node's name in tracking events and the node registry; unique
    /// per cluster. `None` means the host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The unprivileged user `postern run` switches to after binding its
    /// listeners when started as root; `None` means [`DEFAULT_USER`]. Only
    /// an explicit `user = "root"` keeps a gateway started as root running
    /// as root. See [`NodeConfig::run_as`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub smtp: SmtpNode,
    pub delivery: DeliveryNode,
    pub dns: DnsNode,
    pub admin: AdminNode,
    pub spool: SpoolNode,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolNode {
    /// How a stored message is made durable before its `250`.
    pub sync: SpoolSync,
}

/// `[spool] sync` (see `postern_spool::SyncMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpoolSync {
    /// `filesystem` when the spool or the data directory is a file system
    /// of its own (and the kernel allows it), else `file`.
    #[default]
    Auto,
    /// fdatasync each message file, one shared fsync of `queue/`.
    File,
    /// One `syncfs(2)` per group of messages, nothing per file.
    Filesystem,
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
    /// Allows `trusted_networks` to cover every address (`0.0.0.0/0`,
    /// `::/0`): anyone on the internet could then relay through us.
    pub allow_open_relay: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryNode {
    pub mx_port: u16,
    /// Port for MTA-STS policy fetches (and later TLS-RPT https reports).
    pub https_port: u16,
    /// Hold all mail in the queue and deliver nothing (maintenance, or
    /// testing the receiving side). Mail is still accepted.
    pub paused: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsNode {
    pub nameservers: Vec<SocketAddr>,
    /// How DNSSEC authenticity is established (SPEC §10).
    pub dnssec: Dnssec,
}

/// `[dns] dnssec`: where DNSSEC authenticity comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dnssec {
    /// In-process validation from the root trust anchor.
    #[default]
    Validate,
    /// Trust the AD bit of the configured name servers (a local validating
    /// resolver); queries set AD (RFC 6840 §5.7).
    TrustAd,
    /// No DNSSEC, so no DANE.
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminNode {
    pub listen: SocketAddr,
    /// Certificate table entry served by the admin UI; `None`: the one
    /// `tls.inbound.certificate` names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            hostname: None,
            data_dir: PathBuf::from("./postern-data"),
            store: "sqlite".to_string(),
            node_name: None,
            user: None,
            smtp: SmtpNode::default(),
            delivery: DeliveryNode::default(),
            dns: DnsNode::default(),
            admin: AdminNode::default(),
            spool: SpoolNode::default(),
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
            allow_open_relay: false,
        }
    }
}

impl SmtpNode {
    /// A trusted network that covers all of IPv4 or IPv6 — or so much of it
    /// that no organisation owns it: wider than an IPv4 /8 or an IPv6 /7
    /// (`fc00::/7`, the unique-local range, is the widest private one), or
    /// every IPv4-mapped address — if there is one.
    pub fn open_relay_network(&self) -> Option<&IpNet> {
        let mapped: IpNet = IpNet::V6(
            ipnet::Ipv6Net::new(std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96).ok()?,
        );
        self.trusted_networks.iter().find(|net| match net {
            IpNet::V4(v4) => v4.prefix_len() < 8,
            IpNet::V6(v6) => v6.prefix_len() < 7 || net.contains(&mapped),
        })
    }
}

impl Default for DeliveryNode {
    fn default() -> Self {
        Self {
            mx_port: 25,
            https_port: 443,
            paused: false,
        }
    }
}

impl Default for AdminNode {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8025)),
            certificate: None,
        }
    }
}

impl NodeConfig {
    /// Parse `postern.toml` text. A relative `data_dir` is resolved against
    /// `base` (the directory of the config file), so the gateway finds its
    /// data wherever it is started from.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| syntax_error(text, &e))?;
        let mut config: NodeConfig = serde_path_to_error::deserialize(de)
            .map_err(|err| ConfigError::new(err.path().to_string(), err.inner().to_string()))?;
        // Checked before the join below, which would turn "" into the
        // config file's own directory.
        check_data_dir(&config.data_dir)?;
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
            check_host_name("hostname", name)?;
        }
        if let Some(name) = &self.node_name {
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                return Err(ConfigError::new(
                    "node_name",
                    format!("{name:?} is not a node name (1 to 64 letters, digits, '-', '.', '_')"),
                ));
            }
        }
        check_data_dir(&self.data_dir)?;
        if let Some(user) = &self.user {
            if !is_user_name(user) {
                return Err(ConfigError::new(
                    "user",
                    format!(
                        "\"{user}\" is not a user name (letters, digits, '.', '_', '-'; \
                         not starting with '-'; at most 32 characters)"
                    ),
                ));
            }
        }
        let postgres =
            self.store.starts_with("postgres://") || self.store.starts_with("postgresql://");
        if self.store != "sqlite" && !postgres {
            // The value is not repeated: a mistyped URL may hold a password.
            return Err(ConfigError::new(
                "store",
                "must be \"sqlite\" (embedded) or a postgres:// or postgresql:// URL (cluster)",
            ));
        }
        if self.smtp.listen.is_empty() && self.smtp.listen_implicit_tls.is_empty() {
            return Err(ConfigError::new(
                "smtp.listen",
                "at least one of smtp.listen and smtp.listen_implicit_tls must be set",
            ));
        }
        if let Some(everyone) = self.smtp.open_relay_network() {
            if !self.smtp.allow_open_relay {
                return Err(ConfigError::new(
                    "smtp.trusted_networks",
                    format!(
                        "{everyone} covers all or much of the internet: every client \
                         there could relay mail anywhere (an open relay, blocklisted within hours). \
                         List your own networks instead; to run an open relay anyway, \
                         also set smtp.allow_open_relay = true"
                    ),
                ));
            }
        }
        if self.delivery.mx_port == 0 {
            return Err(ConfigError::new(
                "delivery.mx_port",
                "must be between 1 and 65535",
            ));
        }
        if self.delivery.https_port == 0 {
            return Err(ConfigError::new(
                "delivery.https_port",
                "must be between 1 and 65535",
            ));
        }
        Ok(())
    }

    /// The user to run as when started as root: `user`, or [`DEFAULT_USER`].
    pub fn run_as(&self) -> &str {
        self.user.as_deref().unwrap_or(DEFAULT_USER)
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

/// A host name for the banner, EHLO and the Default Cert: LDH labels of at
/// most 63 characters, 253 in all. `key` names where it came from.
pub fn check_host_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if crate::domain::is_domain_name(name) {
        return Ok(());
    }
    // Quote at most a readable prefix of a huge value.
    let shown: String = name.chars().take(64).collect();
    let shown = if shown.len() < name.len() {
        format!("\"{shown}…\" ({} characters)", name.chars().count())
    } else {
        format!("\"{shown}\"")
    };
    Err(ConfigError::new(
        key,
        format!(
            "{shown} is not a host name: use letters, digits, '-' and '_' in labels of \
             1 to 63 characters separated by dots, at most 253 characters in all \
             (e.g. \"mx.example.com\")"
        ),
    ))
}

fn check_data_dir(dir: &Path) -> Result<(), ConfigError> {
    if dir.as_os_str().is_empty() {
        return Err(ConfigError::new(
            "data_dir",
            "is empty: give the directory for the store, spool and mail log \
             (e.g. \"/var/lib/postern\"; a relative path is taken from the config \
             file's directory)",
        ));
    }
    Ok(())
}

/// The user a gateway started as root runs as unless `user` says otherwise.
pub const DEFAULT_USER: &str = "postern";

/// A portable user name (POSIX 3.437, as `useradd` accepts by default).
fn is_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
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
        assert_eq!(c.delivery.https_port, 443);
        assert_eq!(c.user, None);
        assert_eq!(c.run_as(), "postern");
    }

    #[test]
    fn https_port_bounds() {
        let c = NodeConfig::from_toml("[delivery]\nhttps_port = 8443\n", Path::new("."))
            .expect("parses");
        assert_eq!(c.delivery.https_port, 8443);
        for bad in ["0", "65536", "\"443\""] {
            let err =
                NodeConfig::from_toml(&format!("[delivery]\nhttps_port = {bad}\n"), Path::new("."))
                    .expect_err(bad);
            assert_eq!(err.key, "delivery.https_port", "{bad}: {err}");
        }
    }

    #[test]
    fn user_key() {
        let c = NodeConfig::from_toml("user = \"mail-gw\"\n", Path::new(".")).expect("parses");
        assert_eq!(c.run_as(), "mail-gw");
        let c = NodeConfig::from_toml("user = \"root\"\n", Path::new(".")).expect("parses");
        assert_eq!(c.run_as(), "root");
        for bad in ["", "-x", "a b", "../etc", "x:y", &"a".repeat(33)] {
            let err = NodeConfig::from_toml(&format!("user = \"{bad}\"\n"), Path::new("."))
                .expect_err(bad);
            assert_eq!(err.key, "user", "{bad}: {err}");
        }
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
    fn dnssec_key() {
        let c = NodeConfig::from_toml("", Path::new(".")).expect("parses");
        assert_eq!(c.dns.dnssec, Dnssec::Validate);
        for (text, want) in [
            ("validate", Dnssec::Validate),
            ("trust-ad", Dnssec::TrustAd),
            ("off", Dnssec::Off),
        ] {
            let c = NodeConfig::from_toml(&format!("[dns]\ndnssec = \"{text}\"\n"), Path::new("."))
                .expect(text);
            assert_eq!(c.dns.dnssec, want);
        }
        let err = NodeConfig::from_toml("[dns]\ndnssec = \"yes\"\n", Path::new(".")).unwrap_err();
        assert_eq!(err.key, "dns.dnssec", "{err}");
        assert!(err.message.contains("trust-ad"), "{err}");
    }

    #[test]
    fn syntax_error_names_the_line_and_key_of_the_fault() {
        let text =
            "hostname = \"mx.test\"\n\n[smtp]\nlisten = [\"127.0.0.1:25\"\ntrusted_networks = []\n";
        let err = NodeConfig::from_toml(text, Path::new(".")).unwrap_err();
        assert_eq!(err.key, "smtp.listen", "{err}");
        assert!(err.message.starts_with("line 4 "), "{err}");
    }

    #[test]
    fn hostname_and_data_dir_are_checked() {
        let long = format!("{}.example", "a".repeat(10_000));
        let rows: [(&str, &str); 7] = [
            ("hostname = \"\"\n", "hostname"),
            ("hostname = \"mx example\"\n", "hostname"),
            ("hostname = \"-mx.example\"\n", "hostname"),
            ("hostname = \"mx..example\"\n", "hostname"),
            (&format!("hostname = \"{long}\"\n"), "hostname"),
            ("hostname = \"mx.example\"\ndata_dir = \"\"\n", "data_dir"),
            ("data_dir = \"\"\n", "data_dir"),
        ];
        for (text, key) in rows {
            let err = NodeConfig::from_toml(text, Path::new("/etc/postern")).unwrap_err();
            assert_eq!(err.key, key, "{err}");
            assert!(
                err.to_string().len() < 400,
                "the message quotes too much: {err}"
            );
        }
        let ok = NodeConfig::from_toml(
            &format!("hostname = \"{}.example\"\n", "a".repeat(63)),
            Path::new("."),
        );
        assert!(ok.is_ok(), "{ok:?}");
        let err = NodeConfig::from_toml(
            &format!("hostname = \"{}.example\"\n", "a".repeat(64)),
            Path::new("."),
        )
        .unwrap_err();
        assert_eq!(err.key, "hostname");
    }

    #[test]
    fn open_relay_needs_the_flag() {
        for nets in [
            "[\"0.0.0.0/0\"]",
            "[\"10.0.0.0/8\", \"::/0\"]",
            "[\"::ffff:0:0/96\"]",
            "[\"0.0.0.0/0\", \"::/0\"]",
            "[\"0.0.0.0/1\"]",
            "[\"2000::/3\"]",
        ] {
            let text = format!("[smtp]\ntrusted_networks = {nets}\n");
            let err = NodeConfig::from_toml(&text, Path::new(".")).unwrap_err();
            assert_eq!(err.key, "smtp.trusted_networks", "{nets}: {err}");
            assert!(err.message.contains("open relay"), "{err}");
            assert!(err.message.contains("smtp.allow_open_relay"), "{err}");
            let allowed = format!("{text}allow_open_relay = true\n");
            assert!(
                NodeConfig::from_toml(&allowed, Path::new(".")).is_ok(),
                "{nets}"
            );
        }
        for nets in [
            "[]",
            "[\"10.0.0.0/8\", \"2001:db8::/32\"]",
            "[\"127.0.0.0/8\", \"::1/128\", \"fc00::/7\", \"192.168.0.0/16\"]",
        ] {
            let text = format!("[smtp]\ntrusted_networks = {nets}\n");
            assert!(
                NodeConfig::from_toml(&text, Path::new(".")).is_ok(),
                "{nets}"
            );
        }
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

    #[test]
    fn cluster_store_and_node_name() {
        let c = NodeConfig::from_toml(
            "store = \"postgres://postern@db.example/postern\"\nnode_name = \"gw1\"\n",
            Path::new("."),
        )
        .expect("parses");
        assert_eq!(c.node_name.as_deref(), Some("gw1"));
        assert!(c.store.starts_with("postgres://"));
        assert!(NodeConfig::from_toml("store = \"postgresql://p@h/d\"\n", Path::new(".")).is_ok());
        // A mistyped URL is not echoed: it may hold a password.
        let err = NodeConfig::from_toml("store = \"postgress://u:hunter2@h/d\"\n", Path::new("."))
            .unwrap_err();
        assert_eq!(err.key, "store");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        for bad in ["", "gw 1", "gw/1"] {
            let text = format!("node_name = {bad:?}\n");
            let err = NodeConfig::from_toml(&text, Path::new(".")).unwrap_err();
            assert_eq!(err.key, "node_name", "{bad:?}");
        }
    }
}
