//! The store as the MTA-STS policy cache of the delivery crate: one row per
//! domain, shared by every node of a cluster (SPEC §9).

use std::sync::Arc;

use postern_delivery::mta_sts::{CachedPolicy, MtaSts, PolicyStore};
use postern_delivery::policy::MtaStsMode;
use postern_store::{MtaStsRecord, Store};

/// MTA-STS lookups that keep their policies in `store`, fetching on
/// `https_port`.
pub fn mta_sts(store: &Arc<dyn Store>, https_port: u16) -> Arc<MtaSts> {
    let cache: Arc<dyn PolicyStore> = Arc::new(StoreCache(Arc::clone(store)));
    Arc::new(MtaSts::new(Some(cache), https_port))
}

struct StoreCache(Arc<dyn Store>);

impl PolicyStore for StoreCache {
    fn load(&self, domain: &str) -> Result<Option<CachedPolicy>, String> {
        let record = self.0.mta_sts_policy(domain).map_err(|e| e.to_string())?;
        record.map(from_record).transpose()
    }

    fn save(&self, policy: &CachedPolicy) -> Result<(), String> {
        self.0
            .put_mta_sts_policy(&to_record(policy))
            .map_err(|e| e.to_string())
    }
}

fn mode_name(mode: MtaStsMode) -> &'static str {
    match mode {
        MtaStsMode::Enforce => "enforce",
        MtaStsMode::Testing => "testing",
        MtaStsMode::None => "none",
    }
}

fn to_record(policy: &CachedPolicy) -> MtaStsRecord {
    MtaStsRecord {
        domain: policy.domain.clone(),
        id: policy.id.clone(),
        mode: mode_name(policy.mode).to_string(),
        max_age: i64::try_from(policy.max_age).unwrap_or(i64::MAX),
        mx: policy.mx.clone(),
        policy: policy.text.clone(),
        fetched_at: policy.fetched_at,
        expires_at: policy.expires_at,
    }
}

fn from_record(record: MtaStsRecord) -> Result<CachedPolicy, String> {
    let mode = match record.mode.as_str() {
        "enforce" => MtaStsMode::Enforce,
        "testing" => MtaStsMode::Testing,
        "none" => MtaStsMode::None,
        other => {
            return Err(format!(
                "cached MTA-STS policy of {} has mode \"{other}\"",
                record.domain
            ))
        }
    };
    Ok(CachedPolicy {
        max_age: u64::try_from(record.max_age).unwrap_or(0),
        domain: record.domain,
        id: record.id,
        mode,
        mx: record.mx,
        text: record.policy,
        fetched_at: record.fetched_at,
        expires_at: record.expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        for mode in [MtaStsMode::Enforce, MtaStsMode::Testing, MtaStsMode::None] {
            let policy = CachedPolicy {
                domain: "partner.test".into(),
                id: "abc".into(),
                mode,
                max_age: 600,
                mx: vec!["*.partner.test".into()],
                text: "version: STSv1\n".into(),
                fetched_at: 10,
                expires_at: 610,
            };
            assert_eq!(from_record(to_record(&policy)), Ok(policy));
        }
        let mut bad = to_record(&CachedPolicy {
            domain: "x.test".into(),
            id: "1".into(),
            mode: MtaStsMode::Enforce,
            max_age: 1,
            mx: vec![],
            text: String::new(),
            fetched_at: 0,
            expires_at: 1,
        });
        bad.mode = "strict".into();
        assert!(from_record(bad).unwrap_err().contains("\"strict\""));
    }
}
