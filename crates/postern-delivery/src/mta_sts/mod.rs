//! MTA-STS (RFC 8461; SPEC §10 item 3): what a recipient domain's policy
//! says for one delivery, as an input of the requirement function.
//!
//! On every delivery the `_mta-sts.<domain>` TXT record is looked up (the
//! resolver caches it for its TTL) and compared with the cached policy's
//! id; [`cache::step`] decides whether to use the cached policy or fetch
//! ([`fetch`]) a new one. Policies are cached in the store, shared by a
//! cluster, and in memory, so a busy domain costs no store read per
//! message. One fetch per domain runs at a time; a failed fetch is
//! remembered for [`FAILURE_MEMORY`] so that a dead policy host does not
//! hold up every message.
//!
//! Layout: `parse` (the TXT record and the policy file, pure), `fetch`
//! (the HTTPS fetch), `cache` (the caching rules, pure), this file (the
//! lookup that ties them together).

pub mod cache;
pub mod fetch;
pub mod parse;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::policy::{MtaStsPolicy, ResultType};
use crate::route::Resolver;
use crate::tls_client::ClientTls;

pub use cache::CachedPolicy;
use cache::{step, Step, Txt};
use parse::{parse_txt, Announcement};

/// How long a policy read from the store is used before the store is asked
/// again (another node may have refreshed it).
const STORE_RECHECK: Duration = Duration::from_secs(30);

/// How long a failed fetch of one domain and id, or a failed TXT lookup
/// (a timeout: NXDOMAIN and NODATA are cached by the resolver), is
/// remembered before it is tried again.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(60);

/// Where policies are kept between fetches: the store, shared by a cluster
/// (the binary adapts `postern_store::Store`).
pub trait PolicyStore: Send + Sync {
    fn load(&self, domain: &str) -> Result<Option<CachedPolicy>, String>;
    /// Insert or replace the domain's policy.
    fn save(&self, policy: &CachedPolicy) -> Result<(), String>;
}

/// Why a policy could not be had, with its RFC 8460 result type
/// (`sts-policy-fetch-error`, `sts-policy-invalid`, `sts-webpki-invalid`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Hash)]
pub struct StsFailure {
    pub result_type: ResultType,
    pub detail: String,
}

/// Where the policy in use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum PolicyFrom {
    /// The cache (memory or store).
    Cache,
    /// Fetched for this delivery.
    Fetched,
    /// No policy applies.
    None,
}

/// What MTA-STS says for one delivery to a domain: recorded with every
/// attempt and shown by `postern probe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StsStatus {
    /// The `_mta-sts` TXT record as seen: the record, `none`, or why it
    /// does not count.
    pub txt: String,
    pub from: PolicyFrom,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<CachedPolicy>,
    /// A fetch that failed (the cached policy, if any, still applies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<StsFailure>,
}

impl StsStatus {
    /// The policy for the requirement function.
    pub fn policy(&self) -> Option<MtaStsPolicy> {
        self.policy.as_ref().map(CachedPolicy::policy)
    }
}

struct Remembered {
    policy: Option<CachedPolicy>,
    read_at: Instant,
}

struct Failed {
    id: String,
    failure: StsFailure,
    at: Instant,
}

type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The MTA-STS lookups of one gateway.
pub struct MtaSts {
    store: Option<Arc<dyn PolicyStore>>,
    https_port: u16,
    clock: Clock,
    memory: Mutex<HashMap<String, Remembered>>,
    failed: Mutex<HashMap<String, Failed>>,
    txt_failed: Mutex<HashMap<String, (String, Instant)>>,
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl MtaSts {
    /// Policies are fetched on `https_port` (`[delivery] https_port`) and
    /// kept in `store` (none: in memory only).
    pub fn new(store: Option<Arc<dyn PolicyStore>>, https_port: u16) -> MtaSts {
        MtaSts {
            store,
            https_port,
            clock: Arc::new(|| time::OffsetDateTime::now_utc().unix_timestamp()),
            memory: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            txt_failed: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
        }
    }

    /// Another clock (unix seconds), for tests.
    pub fn with_clock(mut self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> MtaSts {
        self.clock = Arc::new(clock);
        self
    }

    /// What MTA-STS says for a delivery to `domain` now.
    pub async fn status(&self, resolver: &Resolver, tls: &ClientTls, domain: &str) -> StsStatus {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let (txt_text, txt) = match self.txt(resolver, &domain).await {
            Ok(records) => match parse_txt(&records) {
                Announcement::Policy { id } => {
                    let shown = records
                        .iter()
                        .find(|r| r.starts_with("v=STSv1"))
                        .cloned()
                        .unwrap_or_default();
                    (shown, Txt::Id(id))
                }
                Announcement::None => ("none".to_string(), Txt::Nothing),
                Announcement::Invalid(why) => (why, Txt::Nothing),
            },
            Err(error) => (error, Txt::Nothing),
        };
        let now = (self.clock)();
        let cached = self.cached(&domain).await;
        let status = |from, policy, failure| StsStatus {
            txt: txt_text.clone(),
            from,
            policy,
            failure,
        };
        let (id, fallback) = match step(cached.as_ref(), &txt, now) {
            Step::Use(policy) => return status(PolicyFrom::Cache, Some(policy), None),
            Step::NoPolicy => return status(PolicyFrom::None, None, None),
            Step::Fetch { id, fallback } => (id, fallback),
        };
        let on_failure = |failure: StsFailure| match &fallback {
            Some(policy) => status(PolicyFrom::Cache, Some(policy.clone()), Some(failure)),
            None => status(PolicyFrom::None, None, Some(failure)),
        };

        // One fetch per domain at a time; the others then find its result.
        let lock = self.fetch_lock(&domain);
        let _fetching = lock.lock().await;
        if let Some(Step::Use(policy)) = self
            .remembered(&domain)
            .map(|policy| step(policy.as_ref(), &txt, now))
        {
            return status(PolicyFrom::Cache, Some(policy), None);
        }
        if let Some(failure) = self.recent_failure(&domain, &id) {
            return on_failure(failure);
        }
        match fetch::fetch(resolver, tls, &domain, self.https_port).await {
            Ok((parsed, text)) => {
                let policy = CachedPolicy::new(&domain, &id, parsed, text, now);
                self.save(&policy).await;
                status(PolicyFrom::Fetched, Some(policy), None)
            }
            Err(failure) => {
                tracing::warn!(
                    domain,
                    id,
                    "MTA-STS policy fetch failed: {}",
                    failure.detail
                );
                if let Ok(mut failed) = self.failed.lock() {
                    failed.insert(
                        domain.clone(),
                        Failed {
                            id,
                            failure: failure.clone(),
                            at: Instant::now(),
                        },
                    );
                }
                on_failure(failure)
            }
        }
    }

    /// The `_mta-sts` TXT records; a failed lookup is not repeated for
    /// [`FAILURE_MEMORY`], so a name server that drops these queries does
    /// not cost every message its timeout.
    async fn txt(&self, resolver: &Resolver, domain: &str) -> Result<Vec<String>, String> {
        let recent = self.txt_failed.lock().ok().and_then(|failed| {
            failed
                .get(domain)
                .filter(|(_, at)| at.elapsed() < FAILURE_MEMORY)
                .map(|(error, _)| error.clone())
        });
        if let Some(error) = recent {
            return Err(error);
        }
        let answer = resolver.txt(&format!("_mta-sts.{domain}")).await;
        if let Ok(mut failed) = self.txt_failed.lock() {
            match &answer {
                Err(error) => {
                    failed.insert(domain.to_string(), (error.clone(), Instant::now()));
                }
                Ok(_) => {
                    failed.remove(domain);
                }
            }
        }
        answer
    }

    /// The cached policy: from memory while it was read recently, else
    /// from the store (falling back to memory when the store fails).
    async fn cached(&self, domain: &str) -> Option<CachedPolicy> {
        let recent = self.memory.lock().ok().and_then(|memory| {
            memory
                .get(domain)
                .filter(|r| r.read_at.elapsed() < STORE_RECHECK)
                .map(|r| r.policy.clone())
        });
        if let Some(policy) = recent {
            return policy;
        }
        let Some(store) = self.store.clone() else {
            return self.remembered(domain).flatten();
        };
        let key = domain.to_string();
        match tokio::task::spawn_blocking(move || store.load(&key)).await {
            Ok(Ok(policy)) => {
                self.remember(domain, policy.clone());
                policy
            }
            Ok(Err(error)) => {
                tracing::warn!(domain, "MTA-STS cache: cannot read the store: {error}");
                self.remembered(domain).flatten()
            }
            Err(error) => {
                tracing::warn!(domain, "MTA-STS cache: store read failed: {error}");
                self.remembered(domain).flatten()
            }
        }
    }

    async fn save(&self, policy: &CachedPolicy) {
        self.remember(&policy.domain, Some(policy.clone()));
        if let Ok(mut failed) = self.failed.lock() {
            failed.remove(&policy.domain);
        }
        let Some(store) = self.store.clone() else {
            return;
        };
        let stored = policy.clone();
        match tokio::task::spawn_blocking(move || store.save(&stored)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(
                domain = policy.domain,
                "MTA-STS cache: cannot save the policy in the store: {error}"
            ),
            Err(error) => tracing::warn!(
                domain = policy.domain,
                "MTA-STS cache: store write failed: {error}"
            ),
        }
    }

    fn remember(&self, domain: &str, policy: Option<CachedPolicy>) {
        if let Ok(mut memory) = self.memory.lock() {
            memory.insert(
                domain.to_string(),
                Remembered {
                    policy,
                    read_at: Instant::now(),
                },
            );
        }
    }

    /// What memory holds, however old (`None`: nothing remembered).
    fn remembered(&self, domain: &str) -> Option<Option<CachedPolicy>> {
        let memory = self.memory.lock().ok()?;
        memory.get(domain).map(|r| r.policy.clone())
    }

    fn recent_failure(&self, domain: &str, id: &str) -> Option<StsFailure> {
        let failed = self.failed.lock().ok()?;
        failed
            .get(domain)
            .filter(|f| f.id == id && f.at.elapsed() < FAILURE_MEMORY)
            .map(|f| f.failure.clone())
    }

    fn fetch_lock(&self, domain: &str) -> Arc<tokio::sync::Mutex<()>> {
        match self.fetching.lock() {
            Ok(mut locks) => locks.entry(domain.to_string()).or_default().clone(),
            // A poisoned map: fetch without coordination rather than not at all.
            Err(_) => Arc::default(),
        }
    }
}
