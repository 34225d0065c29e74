//! The admin listener's TLS configuration: a certificate table entry (the
//! one `tls.inbound.certificate` names, unless `[admin] certificate` names
//! another), rebuilt when the store's generation changes. No client
//! certificates; TLS 1.2 and 1.3 with the aws-lc-rs provider.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use postern_store::Store;
use rustls::ServerConfig;

/// The current configuration, swapped whole when the certificate changes.
pub struct AdminTls {
    store: Arc<dyn Store>,
    /// `[admin] certificate`; `None`: the inbound SMTP certificate.
    certificate: Option<String>,
    current: RwLock<Option<Loaded>>,
}

#[derive(Clone)]
struct Loaded {
    generation: i64,
    name: String,
    config: Arc<ServerConfig>,
}

impl AdminTls {
    pub fn new(store: Arc<dyn Store>, certificate: Option<String>) -> Self {
        Self {
            store,
            certificate,
            current: RwLock::new(None),
        }
    }

    /// The configuration for a new connection.
    pub fn config(&self) -> Option<Arc<ServerConfig>> {
        let guard = match self.current.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.as_ref().map(|l| Arc::clone(&l.config))
    }

    /// The entry in use, for "used by" in the certificate table.
    pub fn certificate_name(&self) -> Option<String> {
        let guard = match self.current.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.as_ref().map(|l| l.name.clone())
    }

    /// Reload when the store changed. Blocking. Keeps the previous
    /// configuration when the new one cannot be built.
    pub fn refresh(&self) -> Result<bool, String> {
        let generation = self.store.generation().map_err(|e| e.to_string())?;
        let known = self
            .current
            .read()
            .ok()
            .and_then(|g| g.as_ref().map(|l| l.generation));
        if known == Some(generation) {
            return Ok(false);
        }
        let name = match &self.certificate {
            Some(name) => name.clone(),
            None => {
                self.store
                    .settings()
                    .map_err(|e| e.to_string())?
                    .tls
                    .inbound
                    .certificate
            }
        };
        let config = self.build(&name)?;
        let loaded = Loaded {
            generation,
            name,
            config,
        };
        match self.current.write() {
            Ok(mut guard) => *guard = Some(loaded),
            Err(poisoned) => *poisoned.into_inner() = Some(loaded),
        }
        Ok(true)
    }

    fn build(&self, name: &str) -> Result<Arc<ServerConfig>, String> {
        let record = self
            .store
            .certificate(name)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("admin certificate: no certificate named \"{name}\""))?;
        let key_pem = record
            .key_pem
            .as_deref()
            .ok_or_else(|| format!("admin certificate: \"{name}\" has no private key"))?;
        let chain = postern_tls::parse_chain(&record.chain_pem)
            .map_err(|e| format!("admin certificate \"{name}\": {e}"))?;
        let key = postern_tls::parse_key(key_pem)
            .map_err(|e| format!("admin certificate \"{name}\": {e}"))?;
        let config = postern_tls::config::admin_server_config(chain, key)
            .map_err(|e| format!("admin certificate \"{name}\": {e}"))?;
        Ok(Arc::new(config))
    }

    /// Poll the store about once a second (as the SMTP side does).
    pub async fn refresh_loop(self: Arc<Self>) {
        let mut last_error = None;
        let mut ticker = tokio::time::interval(Duration::from_millis(1000));
        loop {
            ticker.tick().await;
            let this = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || this.refresh()).await {
                Ok(Ok(_)) => last_error = None,
                Ok(Err(e)) => {
                    if last_error.as_deref() != Some(e.as_str()) {
                        tracing::error!("admin TLS not reloaded, keeping the previous one: {e}");
                        last_error = Some(e);
                    }
                }
                Err(e) => tracing::error!("admin TLS reload task failed: {e}"),
            }
        }
    }
}
