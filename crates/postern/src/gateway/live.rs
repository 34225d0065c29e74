//! The running gateway's view of the shared settings and its TLS
//! configuration, reloaded from the store when its generation changes.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use postern_config::Settings;
use postern_delivery::{ClientTls, TrustSources};
use postern_store::Store;
use postern_tls::{CertKeyPem, InboundTlsParams, ServerTls};

use crate::systemd::Notifier;

/// One consistent snapshot; connections keep the one they started with.
pub struct Live {
    pub settings: Arc<Settings>,
    pub tls: Option<Arc<ServerTls>>,
    /// Outbound TLS: trust anchors and our client certificate.
    pub client_tls: Arc<ClientTls>,
    pub generation: i64,
}

impl Live {
    pub fn load(store: &dyn Store) -> Result<Live> {
        let generation = store.generation()?;
        let settings = store.settings()?;
        let tls = build_server_tls(&settings, store)?;
        let client_tls = build_client_tls(&settings, store)?;
        Ok(Live {
            settings: Arc::new(settings),
            tls: Some(Arc::new(tls)),
            client_tls: Arc::new(client_tls),
            generation,
        })
    }
}

/// The outbound TLS configuration the settings ask for.
pub fn build_client_tls(settings: &Settings, store: &dyn Store) -> Result<ClientTls> {
    let outbound = &settings.tls.outbound;
    let trusted = TrustSources::from_names(&outbound.trusted_ca, |name| {
        store.certificate(name).ok().flatten().map(|c| c.chain_pem)
    })
    .context("tls.outbound.trusted_ca")?;
    let client_cert = if outbound.client_certificate.is_empty() {
        None
    } else {
        let name = &outbound.client_certificate;
        let record = store.certificate(name)?.ok_or_else(|| {
            anyhow!("tls.outbound.client_certificate: no certificate named \"{name}\"")
        })?;
        let key = record.key_pem.ok_or_else(|| {
            anyhow!("tls.outbound.client_certificate: \"{name}\" has no private key")
        })?;
        Some((record.chain_pem, key))
    };
    ClientTls::new(trusted, client_cert).context("building outbound TLS")
}

/// The inbound TLS configuration the settings ask for.
pub fn build_server_tls(settings: &Settings, store: &dyn Store) -> Result<ServerTls> {
    let inbound = &settings.tls.inbound;
    let cert = store.certificate(&inbound.certificate)?.ok_or_else(|| {
        anyhow!(
            "tls.inbound.certificate: no certificate named \"{}\"",
            inbound.certificate
        )
    })?;
    let key = cert.key_pem.as_deref().ok_or_else(|| {
        anyhow!(
            "tls.inbound.certificate: \"{}\" has no private key",
            inbound.certificate
        )
    })?;
    let mut cas = Vec::new();
    for name in &inbound.trusted_client_ca {
        let ca = store.certificate(name)?.ok_or_else(|| {
            anyhow!("tls.inbound.trusted_client_ca: no certificate named \"{name}\"")
        })?;
        cas.push(ca.chain_pem);
    }
    let ecdsa = ecdsa_companion(settings, store)?;
    let alternates: Vec<CertKeyPem> = ecdsa
        .iter()
        .map(|(chain_pem, key_pem)| CertKeyPem { chain_pem, key_pem })
        .collect();
    let params = InboundTlsParams {
        chain_pem: &cert.chain_pem,
        key_pem: key,
        client_certificate: inbound.client_certificate,
        client_ca_pems: cas.iter().map(String::as_str).collect(),
        min_version: inbound.min_version,
        session_tickets: inbound.session_tickets,
    };
    ServerTls::build_with_alternates(&params, &alternates).with_context(|| {
        if inbound.ecdsa_certificate.is_empty() {
            format!("building inbound TLS with \"{}\"", inbound.certificate)
        } else {
            format!(
                "tls.inbound.ecdsa_certificate: building inbound TLS with \"{}\" and \"{}\"",
                inbound.certificate, inbound.ecdsa_certificate
            )
        }
    })
}

/// The ECDSA certificate (chain, key) presented beside the primary one:
/// the one `tls.inbound.ecdsa_certificate` names, or, when that is empty and
/// the primary is the `Default Cert`, its generated companion — unless the
/// admin deleted it. An admin's own certificate never gets the self-signed
/// companion beside it: clients that verify would see the wrong one.
fn ecdsa_companion(settings: &Settings, store: &dyn Store) -> Result<Option<(String, String)>> {
    let inbound = &settings.tls.inbound;
    let Some(name) = settings.effective_ecdsa_certificate() else {
        return Ok(None);
    };
    let Some(record) = store.certificate(name)? else {
        if name == inbound.ecdsa_certificate {
            return Err(anyhow!(
                "tls.inbound.ecdsa_certificate: no certificate named \"{name}\""
            ));
        }
        return Ok(None);
    };
    match record.key_pem {
        Some(key) => Ok(Some((record.chain_pem, key))),
        None if name == inbound.ecdsa_certificate => Err(anyhow!(
            "tls.inbound.ecdsa_certificate: \"{name}\" has no private key"
        )),
        None => Ok(None),
    }
}

/// The current snapshot, swapped whole on reload.
pub struct LiveConfig {
    current: RwLock<Arc<Live>>,
}

impl LiveConfig {
    pub fn new(live: Live) -> Self {
        Self {
            current: RwLock::new(Arc::new(live)),
        }
    }

    pub fn get(&self) -> Arc<Live> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn set(&self, live: Live) {
        match self.current.write() {
            Ok(mut guard) => *guard = Arc::new(live),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(live),
        }
    }
}

/// Poll the store's generation and reload on change: a settings or
/// certificate change reaches new connections within about a second.
/// SIGHUP (`systemctl reload`) reloads at once, even when the generation did
/// not change, and tells systemd the reload started and ended.
pub async fn reload_loop(
    live: Arc<LiveConfig>,
    store: Arc<dyn Store>,
    mut hangup: tokio::signal::unix::Signal,
    systemd: Arc<Notifier>,
) {
    let mut failed_generation = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    // PostgreSQL's LISTEN/NOTIFY: a hint to look now; the generation decides.
    let hint = store.change_hint();
    loop {
        // A store without NOTIFY (SQLite) never wakes the hint: the
        // ticker does.
        let hinted = async {
            match &hint {
                Some(hint) => hint.notified().await,
                None => std::future::pending().await,
            }
        };
        let forced = tokio::select! {
            _ = ticker.tick() => false,
            _ = hinted => false,
            _ = hangup.recv() => true,
        };
        if forced {
            tracing::info!("SIGHUP: re-reading settings and certificates from the store");
            systemd.reloading();
        }
        let current = live.get().generation;
        let store = Arc::clone(&store);
        let loaded = tokio::task::spawn_blocking(move || -> Result<Option<Live>> {
            let generation = store.generation()?;
            if generation == current && !forced {
                return Ok(None);
            }
            Live::load(store.as_ref()).map(Some)
        })
        .await;
        match loaded {
            Ok(Ok(Some(next))) => {
                tracing::info!(generation = next.generation, "settings reloaded");
                failed_generation = None;
                let max_connections = next.settings.mta.max_connections;
                if max_connections != live.get().settings.mta.max_connections {
                    super::check_open_files_after_reload(max_connections);
                }
                live.set(next);
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                // Log each distinct failure once, not every half second; a
                // reload asked for by SIGHUP always answers.
                let text = format!("{e:#}");
                if forced || failed_generation.as_deref() != Some(text.as_str()) {
                    tracing::error!("new settings not applied, keeping the previous ones: {text}");
                    failed_generation = Some(text);
                }
            }
            Err(e) => tracing::error!("settings reload task failed: {e}"),
        }
        if forced {
            systemd.ready("Accepting mail (reloaded)");
        }
    }
}
