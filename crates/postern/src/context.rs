//! What every command needs: the node config, our hostname, and the store
//! (created on first use, with the Default Cert).

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use postern_config::{NodeConfig, DEFAULT_CERT_NAME, DEFAULT_ECDSA_CERT_NAME};
use postern_store::{CertificateRecord, Store};
use postern_tls::{generate_self_signed, KeyKind};

pub struct Context {
    pub node: NodeConfig,
    pub hostname: String,
    /// `node_name`, or the host name: names this node in tracking events
    /// and the node registry.
    pub node_name: String,
    pub store: Arc<dyn Store>,
}

impl Context {
    pub fn open(config: Option<&Path>) -> Result<Self> {
        let node = load_node(config)?;
        let hostname = host_name(&node)?;
        // Private: the data directory holds keys and mail.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&node.data_dir)
            .with_context(|| format!("creating data directory {}", node.data_dir.display()))?;
        let node_name = node.node_name.clone().unwrap_or_else(|| hostname.clone());
        let location = store_location(&node);
        // A cluster node keeps a local copy for PostgreSQL outages.
        let cache = node.data_dir.join("store-cache.json");
        let store = postern_store::open_with_cache(&location, &node_name, &cache)
            .with_context(|| format!("opening the store {}", location.describe()))?;
        // The ECDSA companion is born with the Default Cert, never later: a
        // store from an earlier version (or one whose Default Cert was
        // imported) keeps presenting exactly what it presented, so peers
        // that pinned it (DANE TLSA, fingerprints) keep working.
        if ensure_generated(
            store.as_ref(),
            DEFAULT_CERT_NAME,
            KeyKind::Rsa4096,
            &hostname,
        )? {
            ensure_generated(
                store.as_ref(),
                DEFAULT_ECDSA_CERT_NAME,
                KeyKind::EcdsaP256,
                &hostname,
            )?;
        }
        Ok(Self {
            node,
            hostname,
            node_name,
            store,
        })
    }
}

/// The node config file, or the embedded defaults without one.
pub fn load_node(config: Option<&Path>) -> Result<NodeConfig> {
    Ok(match config {
        Some(path) => NodeConfig::load(path)?,
        None => NodeConfig::default(),
    })
}

/// `hostname`, or the system's host name, which must be one too: it names
/// the banner, EHLO and the Default Cert.
pub fn host_name(node: &NodeConfig) -> Result<String> {
    if let Some(name) = &node.hostname {
        return Ok(name.clone());
    }
    let name = system_hostname();
    postern_config::check_host_name("hostname", &name).map_err(|e| {
        anyhow::anyhow!("{e} (hostname is not set, so the system's host name is used: set it)")
    })?;
    Ok(name)
}

/// Generate one of the default certificates at first start (never again,
/// not even after it was deleted). True when it was generated now.
fn ensure_generated(store: &dyn Store, name: &str, kind: KeyKind, hostname: &str) -> Result<bool> {
    let generated = store.ensure_default_certificate(name, &mut || {
        tracing::info!("generating the {name} ({}) for {hostname}", kind.as_str());
        let cert = generate_self_signed(kind, hostname, &[hostname.to_string()])
            .map_err(|e| e.to_string())?;
        Ok(CertificateRecord {
            name: name.to_string(),
            chain_pem: cert.chain_pem,
            key_pem: Some(cert.key_pem),
            created_at: unix_now(),
        })
    })?;
    if generated {
        tracing::info!("created {name} in the store");
    }
    Ok(generated)
}

/// Where `store` in the node config says the store is.
pub fn store_location(node: &NodeConfig) -> postern_store::StoreLocation {
    if node.store == "sqlite" {
        postern_store::StoreLocation::Sqlite(node.store_path())
    } else {
        postern_store::StoreLocation::Postgres(node.store.clone())
    }
}

pub fn system_hostname() -> String {
    let name = gethostname::gethostname().to_string_lossy().into_owned();
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
