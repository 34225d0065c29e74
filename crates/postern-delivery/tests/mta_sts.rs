//! MTA-STS lookups over time (an injected clock) against a real DNS server
//! and a real HTTPS policy host on loopback: refresh before expiry, a
//! failed refresh keeps the cached policy, an expired one is gone, a
//! vanished TXT record keeps an unexpired policy.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_delivery::mta_sts::{CachedPolicy, MtaSts, PolicyFrom, PolicyStore};
use postern_delivery::policy::MtaStsMode;
use postern_delivery::{Resolver, ResultType};
use support::dns::{DnsServer, Rr};
use support::https::{ok, HttpsServer};
use support::{bounded, client_tls, server_tls, TestCa};

const T0: i64 = 1_800_000_000;
const MAX_AGE: i64 = 1000;

/// The store's part, in memory (the store itself has its conformance tests).
#[derive(Default)]
struct Memory(Mutex<HashMap<String, CachedPolicy>>);

impl PolicyStore for Memory {
    fn load(&self, domain: &str) -> Result<Option<CachedPolicy>, String> {
        Ok(self.0.lock().unwrap().get(domain).cloned())
    }
    fn save(&self, policy: &CachedPolicy) -> Result<(), String> {
        self.0
            .lock()
            .unwrap()
            .insert(policy.domain.clone(), policy.clone());
        Ok(())
    }
}

fn policy(mode: &str) -> String {
    ok(
        "text/plain",
        &format!("version: STSv1\nmode: {mode}\nmx: mx.partner.test\nmax_age: {MAX_AGE}\n"),
    )
}

#[tokio::test]
async fn refresh_keep_and_expiry_by_the_clock() {
    bounded(async {
        let ca = TestCa::new("Test CA");
        let (chain, key) = ca.issue(&["mta-sts.partner.test"]);
        let host = HttpsServer::start(server_tls(&chain, &key), policy("enforce")).await;
        let dns = DnsServer::start(
            "test.",
            &[
                Rr::Txt("_mta-sts.partner.test.", "v=STSv1; id=a1"),
                Rr::A("mta-sts.partner.test.", "127.0.0.1"),
                Rr::A("mta-sts.gone.test.", "127.0.0.1"),
            ],
        )
        .await;
        let resolver = Resolver::with_timeout(&[dns.addr], Duration::from_secs(2)).unwrap();
        let tls = client_tls(&[&ca.pem]);
        let store = Arc::new(Memory::default());
        let now = Arc::new(AtomicI64::new(T0));
        let clock = now.clone();
        let sts = MtaSts::new(Some(store.clone()), host.addr.port())
            .with_clock(move || clock.load(Ordering::SeqCst));
        let at = |t: i64| now.store(T0 + t, Ordering::SeqCst);

        let status = sts.status(&resolver, &tls, "partner.test").await;
        assert_eq!(status.from, PolicyFrom::Fetched, "{status:?}");
        assert_eq!(status.policy.as_ref().unwrap().expires_at, T0 + MAX_AGE);
        assert_eq!(store.load("partner.test").unwrap(), status.policy);

        at(749); // more than a quarter of max_age left: cached, no fetch
        let status = sts.status(&resolver, &tls, "partner.test").await;
        assert_eq!((status.from, host.requests()), (PolicyFrom::Cache, 1));

        at(750); // a quarter left: refreshed before it expires
        host.respond(policy("testing"));
        let status = sts.status(&resolver, &tls, "partner.test").await;
        assert_eq!((status.from, host.requests()), (PolicyFrom::Fetched, 2));
        let refreshed = status.policy.unwrap();
        assert_eq!(
            (refreshed.mode, refreshed.expires_at),
            (MtaStsMode::Testing, T0 + 750 + MAX_AGE)
        );

        // The policy host goes away; the next refresh fails and the cached
        // policy still applies, with the failure recorded.
        host.stop().await;
        at(750 + 800);
        let status = sts.status(&resolver, &tls, "partner.test").await;
        assert_eq!(status.from, PolicyFrom::Cache);
        assert_eq!(status.policy.as_ref(), Some(&refreshed));
        assert_eq!(
            status.failure.unwrap().result_type,
            ResultType::StsPolicyFetchError
        );

        // Expired, and the host still down: no policy.
        at(750 + MAX_AGE);
        let status = sts.status(&resolver, &tls, "partner.test").await;
        assert_eq!((status.from, status.policy), (PolicyFrom::None, None));
        assert!(status.failure.is_some());

        // A domain whose TXT record is gone keeps its unexpired policy, and
        // loses it when it expires (a fresh MtaSts: nothing in memory).
        let mut gone = refreshed.clone();
        gone.domain = "gone.test".into();
        gone.expires_at = T0 + 5000;
        store.save(&gone).unwrap();
        let clock = now.clone();
        let fresh = MtaSts::new(Some(store.clone()), host.addr.port())
            .with_clock(move || clock.load(Ordering::SeqCst));
        at(4999);
        let status = fresh.status(&resolver, &tls, "gone.test").await;
        assert_eq!(
            (status.from, &status.txt[..]),
            (PolicyFrom::Cache, "none"),
            "{status:?}"
        );
        at(5000);
        let status = fresh.status(&resolver, &tls, "gone.test").await;
        assert_eq!((status.from, status.policy), (PolicyFrom::None, None));
        assert_eq!(status.failure, None, "no TXT record: nothing fetched");
    })
    .await;
}
