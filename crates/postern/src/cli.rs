//! The command line (SPEC §2).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "postern", version, about = "Postern secure SMTP gateway")]
pub struct Cli {
    /// Node configuration file (postern.toml). Without it, embedded defaults.
    #[arg(long, global = true, env = "POSTERN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (SMTP listeners).
    Run,
    /// Validate the config file and the stored settings.
    Check,
    /// Show, export, import or change the shared settings.
    #[command(subcommand)]
    Settings(SettingsCommand),
    /// The certificate table.
    #[command(subcommand)]
    Cert(CertCommand),
    /// The mail queue.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Every recorded event of a message (queue ID or Message-ID).
    Trace { id: String },
    /// Check a domain as delivery would see it: MX hosts, STARTTLS, TLS, certificate.
    Probe { domain: String },
    /// The admin UI's password and the API tokens.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The nodes sharing this store.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Move this node's embedded store into PostgreSQL.
    #[command(subcommand)]
    Store(StoreCommand),
    /// DKIM keys that sign mailed TLS reports.
    #[command(subcommand)]
    Dkim(crate::commands::dkim::DkimCommand),
    /// Learned outbound TLS levels: list, show, forget, pin.
    #[command(subcommand)]
    Policy(crate::commands::policy::PolicyCommand),
    /// Daily TLS-RPT reports (RFC 8460): preview, send now.
    #[command(subcommand)]
    Tlsrpt(crate::commands::tlsrpt::TlsRptCommand),
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy the embedded (SQLite) store into an empty PostgreSQL database:
    /// settings, certificates with keys, credentials, tokens, tracking.
    Copy {
        /// The target, a postgres:// URL (as `store` in postern.toml).
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Every node: synchronized, behind or unreachable, with what it presents.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Set the admin password (prompted twice, or read from stdin).
    Passwd {
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// API tokens for automation (`Authorization: Bearer TOKEN`).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new API token on stdout (shown once; only its hash is stored).
    Create {
        /// A name to recognise and revoke it by; default: token-<random>.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the tokens' names.
    List,
    /// Revoke a token by name.
    Revoke { name: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Toml,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum SettingsCommand {
    /// Print the current settings.
    Show {
        #[arg(long, value_enum, default_value = "toml")]
        format: Format,
    },
    /// Print the current settings (same as show; for redirecting to a file).
    Export {
        #[arg(long, value_enum, default_value = "toml")]
        format: Format,
    },
    /// Replace all settings from a TOML or JSON file (validated first).
    Import { file: PathBuf },
    /// Change one setting, e.g. `settings set tls.inbound.mode require`.
    Set { key: String, value: String },
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// List the certificate table.
    List,
    /// Show one certificate in detail.
    Show { name: String },
    /// Print the certificate chain as PEM.
    Export { name: String },
    /// Generate a new self-signed certificate.
    Generate(GenerateArgs),
    /// Import a PEM chain (with its key), or a CA certificate (without key).
    Import(ImportArgs),
    /// Delete a certificate (refused while the settings use it).
    Delete { name: String },
    /// Print the TLSA records (DANE) to publish for a certificate.
    Tlsa {
        name: String,
        /// The port others deliver to.
        #[arg(long, default_value_t = 25)]
        port: u16,
        /// The MX host name the records are for; default: the node's hostname.
        #[arg(long)]
        host: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[arg(long)]
    pub name: String,
    /// rsa4096 | rsa3072 | rsa2048 | ecdsa-p256 | ecdsa-p384
    #[arg(long, default_value = "rsa4096")]
    pub key: String,
    /// Subject common name; default: the node's hostname.
    #[arg(long)]
    pub cn: Option<String>,
    /// Subject alternative names (repeatable); default: the CN.
    #[arg(long)]
    pub san: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[arg(long)]
    pub name: String,
    /// PEM file with the certificate chain, leaf first.
    #[arg(long)]
    pub cert: PathBuf,
    /// PEM file with the private key; omit for a CA / trust anchor.
    #[arg(long)]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List queued messages.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one queued message: envelope and per-recipient state.
    Show { id: String },
    /// Try deferred recipients now (all messages, or one).
    Retry { id: Option<String> },
    /// Remove a message from the queue (no bounce).
    Delete { id: String },
}
