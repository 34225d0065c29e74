//! The store's contract, run against every backend: SQLite on a temporary
//! file and PostgreSQL on the throwaway test server (a fresh database per
//! test). Every test gets a [`Harness`] that opens new connections to one
//! store, as separate processes or nodes would.

// A failed unwrap here is a failed test, which is what it should be.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use postern_config::{
    ClientCertMode, InboundMode, OutboundMode, Settings, DEFAULT_CERT_NAME, DEFAULT_ECDSA_CERT_NAME,
};
use postern_store::{
    event_kind, AdminSession, CertificateRecord, CopyReport, DkimKeyRecord, LoginLimits,
    LoginReservation, MtaStsRecord, NodeState, NodeStatus, QueueAction, QueueSnapshot,
    SessionLimits, SqliteStore, Store, StoreError, StoreLocation, TrackingEvent,
};
use serde_json::json;

type Opener = Arc<dyn Fn() -> Arc<dyn Store> + Send + Sync>;

/// One store; `open` makes a new connection to it (a new process or node).
trait Harness {
    fn opener(&self) -> Opener;
    /// `store copy` from `source` into this store.
    fn copy_from(&self, source: &SqliteStore) -> Result<CopyReport, StoreError>;
    fn open(&self) -> Arc<dyn Store> {
        (self.opener())()
    }
}

struct Sqlite(tempfile::TempDir);

impl Harness for Sqlite {
    fn opener(&self) -> Opener {
        let location = StoreLocation::Sqlite(self.0.path().join("new").join("store.db"));
        Arc::new(move || postern_store::open(&location, "gw1").expect("open store"))
    }
    fn copy_from(&self, source: &SqliteStore) -> Result<CopyReport, StoreError> {
        let target = SqliteStore::open(&self.0.path().join("new").join("store.db"), "gw1")?;
        postern_store::copy_installation(source, &target, "old-node")
    }
}

struct Postgres(String);

impl Harness for Postgres {
    fn opener(&self) -> Opener {
        let location = StoreLocation::Postgres(self.0.clone());
        Arc::new(move || postern_store::open(&location, "gw1").expect("open store"))
    }
    fn copy_from(&self, source: &SqliteStore) -> Result<CopyReport, StoreError> {
        let target = postern_store::PgStore::open(&self.0, "gw1")?;
        postern_store::copy_installation(source, &target, "old-node")
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(&super::Sqlite(tempfile::tempdir().unwrap()));
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    if let Some(server) = super::support::server_url() {
                        let url = super::support::fresh_database(&server);
                        super::$name(&super::Postgres(url));
                    }
                }
            )*
        }
    };
}

conformance!(
    settings_default_then_round_trip,
    put_refuses_unknown_certificates_naming_the_key,
    ca_entries_cannot_be_presented_but_can_be_trusted,
    system_is_not_a_client_ca,
    generation_changes_on_every_write_and_is_seen_by_another_connection,
    update_settings_applies_and_validates,
    delete_refused_while_in_use_then_allowed,
    certificates_are_listed_by_name_and_read_back,
    duplicate_and_bad_certificates_refused,
    default_certificate_generated_once_and_not_after_deletion,
    ecdsa_companion_generated_once_independently_of_the_default_cert,
    default_certificate_failure_changes_nothing_and_is_retried,
    default_certificate_imported_before_first_use_is_kept,
    default_certificate_concurrent_first_use_makes_exactly_one,
    events_by_queue_id_and_message_id,
    prune_deletes_every_old_event_in_chunks_and_keeps_the_rest,
    store_is_usable_as_a_trait_object,
    admin_password_is_initialised_once_then_replaced,
    api_tokens_by_hash_names_unique_and_revocable,
    event_search_by_text_time_and_kind,
    node_registry_round_trip_and_states,
    events_name_the_recording_node,
    copy_fills_an_empty_store_and_refuses_one_in_use,
    mta_sts_policies_are_shared_replaced_and_listed,
    dkim_keys_round_trip_duplicates_and_bad_records_refused,
    dkim_key_in_use_by_tlsrpt_cannot_be_deleted,
    copy_carries_dkim_keys,
    admin_sessions_are_shared_by_hash_and_bounded,
    credential_changes_bump_the_credentials_version,
    login_attempts_are_limited_across_connections,
    concurrent_login_attempts_never_overshoot,
    queue_snapshots_are_replaced_per_node,
    queue_requests_wait_for_their_node_and_keep_one_outcome,
    learned_observations_add_up_and_are_shared,
    learned_forget_and_prune,
    monitor_verdicts_counted_per_domain_and_source,
    learned_pin_writes_a_validated_domain_rule,
    alerts_kept_newest_first_and_shared,
    tlsrpt_report_claimed_once_across_nodes,
    tlsrpt_attempts_of_a_period_skip_report_mails,
    tlsrpt_deliveries_retry_once_per_lease,
    tlsrpt_old_reports_pruned_but_not_retries,
    alerts_acknowledged_one_listed_and_all_through,
    alert_claims_once_per_window_and_destination_across_nodes,
);

const CHAIN: &str = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIBkey\n-----END PRIVATE KEY-----\n";

fn leaf(name: &str) -> CertificateRecord {
    CertificateRecord {
        name: name.to_string(),
        chain_pem: CHAIN.to_string(),
        key_pem: Some(KEY.to_string()),
        created_at: 1_700_000_000,
    }
}

fn ca(name: &str) -> CertificateRecord {
    CertificateRecord {
        key_pem: None,
        ..leaf(name)
    }
}

/// A store with the Default Cert in place, as every command sees it.
fn initialised(h: &dyn Harness) -> Arc<dyn Store> {
    let store = h.open();
    store
        .ensure_default_certificate(DEFAULT_CERT_NAME, &mut || Ok(leaf("anything")))
        .expect("default cert");
    store
}

fn invalid_key(error: StoreError) -> String {
    match error {
        StoreError::Invalid(e) => e.key,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn settings_default_then_round_trip(h: &dyn Harness) {
    let store = initialised(h);
    assert_eq!(store.settings().unwrap(), Settings::default());

    let mut settings = Settings::default();
    settings.tls.inbound.mode = InboundMode::Require;
    settings.tls.outbound.mode = OutboundMode::Verify;
    settings.mta.max_recipients = 42;
    store.put_settings(&settings).unwrap();
    assert_eq!(store.settings().unwrap(), settings);

    // And from a fresh open of the same file.
    drop(store);
    assert_eq!(h.open().settings().unwrap(), settings);
}

fn put_refuses_unknown_certificates_naming_the_key(h: &dyn Harness) {
    let store = initialised(h);
    let mut before = Settings::default();
    before.mta.max_recipients = 7;
    store.put_settings(&before).unwrap();
    let generation = store.generation().unwrap();

    let mut s = before.clone();
    s.tls.inbound.certificate = "missing".into();
    let err = store.put_settings(&s).unwrap_err();
    assert!(err.to_string().contains("tls.inbound.certificate"), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
    assert_eq!(invalid_key(err), "tls.inbound.certificate");

    let mut s = before.clone();
    s.tls.outbound.trusted_ca = vec!["system".into(), "Partner CA".into()];
    assert_eq!(
        invalid_key(store.put_settings(&s).unwrap_err()),
        "tls.outbound.trusted_ca"
    );

    let mut s = before.clone();
    s.tls.inbound.mode = InboundMode::Require;
    s.tls.inbound.client_certificate = ClientCertMode::Require;
    s.tls.inbound.trusted_client_ca = vec!["Agents CA".into()];
    assert_eq!(
        invalid_key(store.put_settings(&s).unwrap_err()),
        "tls.inbound.trusted_client_ca"
    );

    let mut s = before.clone();
    s.tls.outbound.client_certificate = "nope".into();
    assert_eq!(
        invalid_key(store.put_settings(&s).unwrap_err()),
        "tls.outbound.client_certificate"
    );

    // Settings::validate errors come through too.
    let mut s = before.clone();
    s.mta.max_recipients = 0;
    assert_eq!(
        invalid_key(store.put_settings(&s).unwrap_err()),
        "mta.max_recipients"
    );

    assert_eq!(store.settings().unwrap(), before);
    assert_eq!(store.generation().unwrap(), generation);
}

fn ca_entries_cannot_be_presented_but_can_be_trusted(h: &dyn Harness) {
    let store = initialised(h);
    store.add_certificate(&ca("Partner CA")).unwrap();
    store.add_certificate(&leaf("Relay Client")).unwrap();

    let mut s = Settings::default();
    s.tls.inbound.certificate = "Partner CA".into();
    let err = store.put_settings(&s).unwrap_err();
    assert!(err.to_string().contains("no private key"), "{err}");
    assert_eq!(invalid_key(err), "tls.inbound.certificate");

    let mut s = Settings::default();
    s.tls.outbound.client_certificate = "Partner CA".into();
    assert_eq!(
        invalid_key(store.put_settings(&s).unwrap_err()),
        "tls.outbound.client_certificate"
    );
    assert_eq!(store.settings().unwrap(), Settings::default());

    let mut s = Settings::default();
    s.tls.outbound.trusted_ca = vec!["system".into(), "Partner CA".into()];
    s.tls.outbound.client_certificate = "Relay Client".into();
    s.tls.inbound.mode = InboundMode::Require;
    s.tls.inbound.client_certificate = ClientCertMode::Require;
    s.tls.inbound.trusted_client_ca = vec!["Partner CA".into()];
    store.put_settings(&s).unwrap();
    assert_eq!(store.settings().unwrap(), s);
}

fn system_is_not_a_client_ca(h: &dyn Harness) {
    let store = initialised(h);
    let mut s = Settings::default();
    s.tls.inbound.trusted_client_ca = vec!["system".into()];
    let err = store.put_settings(&s).unwrap_err();
    assert!(err.to_string().contains("trusted_ca"), "{err}");
    assert_eq!(invalid_key(err), "tls.inbound.trusted_client_ca");
}

fn generation_changes_on_every_write_and_is_seen_by_another_connection(h: &dyn Harness) {
    let a = h.open();
    let b = h.open();
    let mut seen = vec![b.generation().unwrap()];
    let step = |seen: &mut Vec<i64>| {
        let g = b.generation().unwrap();
        assert!(!seen.contains(&g), "generation {g} repeated: {seen:?}");
        seen.push(g);
    };

    assert!(a
        .ensure_default_certificate(DEFAULT_CERT_NAME, &mut || Ok(leaf("x")))
        .unwrap());
    step(&mut seen);
    a.put_settings(&Settings::default()).unwrap();
    step(&mut seen);
    a.add_certificate(&ca("Partner CA")).unwrap();
    step(&mut seen);
    a.delete_certificate("Partner CA").unwrap();
    step(&mut seen);
    a.update_settings(&mut |s| Ok(s.with("tls.inbound.mode", "require")?))
        .unwrap();
    step(&mut seen);
    assert_eq!(b.settings().unwrap().tls.inbound.mode, InboundMode::Require);

    // Failed writes and events leave it alone.
    let g = b.generation().unwrap();
    assert!(a.add_certificate(&ca("Default Cert")).is_err());
    assert!(a.delete_certificate("nothing").is_err());
    a.record_event(&event("Q1", None, 1, event_kind::RECEIVED))
        .unwrap();
    assert_eq!(b.generation().unwrap(), g);
}

fn update_settings_applies_and_validates(h: &dyn Harness) {
    let store = initialised(h);
    let saved = store
        .update_settings(&mut |s| Ok(s.with("mta.max_recipients", "12")?))
        .unwrap();
    assert_eq!(saved.mta.max_recipients, 12);
    assert_eq!(store.settings().unwrap(), saved);

    let err = store
        .update_settings(&mut |s| Ok(s.with("tls.inbound.certificate", "ghost")?))
        .unwrap_err();
    assert_eq!(invalid_key(err), "tls.inbound.certificate");
    assert_eq!(store.settings().unwrap(), saved);
}

fn delete_refused_while_in_use_then_allowed(h: &dyn Harness) {
    let store = initialised(h);
    store.add_certificate(&leaf("Second")).unwrap();
    store.add_certificate(&ca("Partner CA")).unwrap();

    // The defaults use the Default Cert.
    let err = store.delete_certificate(DEFAULT_CERT_NAME).unwrap_err();
    assert!(err.to_string().contains("tls.inbound.certificate"), "{err}");

    let mut s = Settings::default();
    s.tls.inbound.certificate = "Second".into();
    s.tls.outbound.trusted_ca = vec!["system".into(), "Partner CA".into()];
    store.put_settings(&s).unwrap();

    match store.delete_certificate("Partner CA").unwrap_err() {
        StoreError::InUse { name, key } => {
            assert_eq!(name, "Partner CA");
            assert_eq!(key, "tls.outbound.trusted_ca");
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    let err = store.delete_certificate("Second").unwrap_err();
    assert!(err.to_string().contains("tls.inbound.certificate"), "{err}");
    assert!(store.certificate("Second").unwrap().is_some());

    store.delete_certificate(DEFAULT_CERT_NAME).unwrap();
    s.tls.outbound.trusted_ca = vec!["system".into()];
    store.put_settings(&s).unwrap();
    store.delete_certificate("Partner CA").unwrap();
    assert!(store.certificate("Partner CA").unwrap().is_none());
    let names: Vec<_> = store
        .certificates()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["Second"]);

    assert!(matches!(
        store.delete_certificate("Partner CA"),
        Err(StoreError::NotFound(_))
    ));
}

fn certificates_are_listed_by_name_and_read_back(h: &dyn Harness) {
    let store = h.open();
    for name in ["b", "C", "a"] {
        store.add_certificate(&leaf(name)).unwrap();
    }
    store.add_certificate(&ca("Partner CA")).unwrap();
    let names: Vec<_> = store
        .certificates()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["C", "Partner CA", "a", "b"]);
    assert_eq!(
        store.certificate("Partner CA").unwrap(),
        Some(ca("Partner CA"))
    );
    assert_eq!(store.certificate("a").unwrap(), Some(leaf("a")));
    assert_eq!(store.certificate("A").unwrap(), None);

    // Debug output never shows the key.
    let shown = format!("{:?}", leaf("a"));
    assert!(!shown.contains("MIIBkey"), "{shown}");
}

fn duplicate_and_bad_certificates_refused(h: &dyn Harness) {
    let store = h.open();
    store.add_certificate(&leaf("Partner")).unwrap();
    let g = store.generation().unwrap();

    let err = store.add_certificate(&ca("Partner")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "a certificate named \"Partner\" already exists"
    );
    assert!(matches!(
        store.add_certificate(&leaf("PARTNER")),
        Err(StoreError::Duplicate(name)) if name == "Partner"
    ));

    let long = "x".repeat(101);
    for bad in [
        "",
        long.as_str(),
        "../etc/passwd",
        "a/b",
        "a\\b",
        "tab\there",
        "new\nline",
        "nul\0",
        "del\u{7f}",
        " padded",
        "padded ",
        "..",
        "system",
    ] {
        assert!(
            matches!(
                store.add_certificate(&leaf(bad)),
                Err(StoreError::BadName(_))
            ),
            "{bad:?} accepted"
        );
    }
    // 100 characters (not bytes) is fine.
    store.add_certificate(&leaf(&"é".repeat(100))).unwrap();

    let mut no_cert = leaf("no cert");
    no_cert.chain_pem = KEY.to_string();
    assert!(matches!(
        store.add_certificate(&no_cert),
        Err(StoreError::BadCertificate(_))
    ));
    let mut bad_key = leaf("bad key");
    bad_key.key_pem = Some(CHAIN.to_string());
    assert!(matches!(
        store.add_certificate(&bad_key),
        Err(StoreError::BadCertificate(_))
    ));

    assert_eq!(store.certificates().unwrap().len(), 2);
    assert_eq!(store.generation().unwrap(), g + 1);
}

fn default_certificate_generated_once_and_not_after_deletion(h: &dyn Harness) {
    let store = h.open();
    let calls = AtomicUsize::new(0);
    let mut make = || {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok(leaf("whatever make calls it"))
    };
    assert!(store
        .ensure_default_certificate(DEFAULT_CERT_NAME, &mut make)
        .unwrap());
    assert!(!store
        .ensure_default_certificate(DEFAULT_CERT_NAME, &mut make)
        .unwrap());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let cert = store.certificate(DEFAULT_CERT_NAME).unwrap().unwrap();
    assert_eq!(cert.key_pem.as_deref(), Some(KEY));

    // Stop using it, delete it: it must not come back.
    store.add_certificate(&leaf("Own")).unwrap();
    let mut s = Settings::default();
    s.tls.inbound.certificate = "Own".into();
    store.put_settings(&s).unwrap();
    store.delete_certificate(DEFAULT_CERT_NAME).unwrap();
    assert!(!store
        .ensure_default_certificate(DEFAULT_CERT_NAME, &mut make)
        .unwrap());
    drop(store);
    let store = h.open();
    assert!(!store
        .ensure_default_certificate(DEFAULT_CERT_NAME, &mut make)
        .unwrap());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(store.certificate(DEFAULT_CERT_NAME).unwrap().is_none());
}

fn ecdsa_companion_generated_once_independently_of_the_default_cert(h: &dyn Harness) {
    let store = h.open();
    assert!(store
        .ensure_default_certificate(DEFAULT_CERT_NAME, &mut || Ok(leaf("rsa")))
        .unwrap());
    assert!(store
        .ensure_default_certificate(DEFAULT_ECDSA_CERT_NAME, &mut || Ok(leaf("ecdsa")))
        .unwrap());
    let names: Vec<_> = store
        .certificates()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert!(names.contains(&DEFAULT_CERT_NAME.to_string()), "{names:?}");
    assert!(
        names.contains(&DEFAULT_ECDSA_CERT_NAME.to_string()),
        "{names:?}"
    );
    // Deleting the companion is how an admin turns it off: it stays off.
    store.delete_certificate(DEFAULT_ECDSA_CERT_NAME).unwrap();
    let mut make = || -> Result<CertificateRecord, String> { panic!("must not generate") };
    assert!(!store
        .ensure_default_certificate(DEFAULT_ECDSA_CERT_NAME, &mut make)
        .unwrap());
    assert!(store
        .certificate(DEFAULT_ECDSA_CERT_NAME)
        .unwrap()
        .is_none());
}

fn default_certificate_failure_changes_nothing_and_is_retried(h: &dyn Harness) {
    let store = h.open();
    let err = store
        .ensure_default_certificate(DEFAULT_CERT_NAME, &mut || Err("no entropy".to_string()))
        .unwrap_err();
    assert!(err.to_string().contains("no entropy"), "{err}");
    assert!(store.certificates().unwrap().is_empty());
    assert!(store
        .ensure_default_certificate(DEFAULT_CERT_NAME, &mut || Ok(leaf("x")))
        .unwrap());
}

fn default_certificate_imported_before_first_use_is_kept(h: &dyn Harness) {
    let store = h.open();
    store.add_certificate(&leaf(DEFAULT_CERT_NAME)).unwrap();
    let mut make = || -> Result<CertificateRecord, String> { panic!("must not generate") };
    assert!(!store
        .ensure_default_certificate(DEFAULT_CERT_NAME, &mut make)
        .unwrap());
    assert_eq!(store.certificates().unwrap(), [leaf(DEFAULT_CERT_NAME)]);
}

fn default_certificate_concurrent_first_use_makes_exactly_one(h: &dyn Harness) {
    let opener = h.opener();
    let calls = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let (opener, calls, barrier) = (opener.clone(), calls.clone(), barrier.clone());
            std::thread::spawn(move || {
                // Both open (and create) the file at the same moment, too.
                barrier.wait();
                let store = opener();
                barrier.wait();
                store
                    .ensure_default_certificate(DEFAULT_CERT_NAME, &mut || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(500));
                        Ok(leaf(&format!("made by {i}")))
                    })
                    .expect("ensure")
            })
        })
        .collect();
    let generated: Vec<bool> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(generated.iter().filter(|g| **g).count(), 1, "{generated:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let store = h.open();
    assert_eq!(store.certificates().unwrap().len(), 1);
}

fn event(queue_id: &str, message_id: Option<&str>, at: i64, kind: &str) -> TrackingEvent {
    TrackingEvent {
        queue_id: queue_id.to_string(),
        message_id: message_id.map(str::to_string),
        at,
        kind: kind.to_string(),
        detail: json!({ "at": at, "tls": { "version": "TLSv1.3" } }),
    }
}

fn events_by_queue_id_and_message_id(h: &dyn Harness) {
    let store = h.open();
    let mid = Some("<abc@example.test>");
    store
        .record_events(&[
            event("Q1", mid, 100, event_kind::RECEIVED),
            event("Q1", mid, 100, event_kind::QUEUED),
            event(
                "Q2",
                Some("<other@example.test>"),
                101,
                event_kind::RECEIVED,
            ),
        ])
        .unwrap();
    // Delivery events may carry the queue id only.
    store
        .record_event(&event("Q1", None, 160, event_kind::DEFERRED))
        .unwrap();
    store
        .record_event(&event("Q1", None, 130, event_kind::DELIVERY_ATTEMPT))
        .unwrap();
    store
        .record_event(&event("Q1", None, 400, event_kind::DELIVERED))
        .unwrap();

    let kinds = |events: Vec<TrackingEvent>| -> Vec<String> {
        events.into_iter().map(|e| e.kind).collect()
    };
    let expected = [
        "received",
        "queued",
        "delivery_attempt",
        "deferred",
        "delivered",
    ];
    assert_eq!(kinds(store.events_for("Q1").unwrap()), expected);
    assert_eq!(
        kinds(store.events_for("<abc@example.test>").unwrap()),
        expected
    );
    assert_eq!(
        kinds(store.events_for("abc@example.test").unwrap()),
        expected
    );
    assert_eq!(store.events_for("Q2").unwrap().len(), 1);
    assert!(store.events_for("nothing").unwrap().is_empty());

    // Read back as recorded, with the recording node's name added.
    let first = &store.events_for("Q1").unwrap()[0];
    let mut expected = event("Q1", mid, 100, event_kind::RECEIVED);
    expected.detail["node"] = json!("gw1");
    assert_eq!(first, &expected);

    // Seen from another connection, newest first.
    let other = h.open();
    let recent = other.recent_events(3).unwrap();
    let at: Vec<i64> = recent.iter().map(|e| e.at).collect();
    assert_eq!(at, [400, 160, 130]);
    assert_eq!(other.recent_events(100).unwrap().len(), 6);

    assert_eq!(other.prune_events(150).unwrap(), 4);
    assert_eq!(
        kinds(store.events_for("Q1").unwrap()),
        ["deferred", "delivered"]
    );
}

fn prune_deletes_every_old_event_in_chunks_and_keeps_the_rest(h: &dyn Harness) {
    let store = h.open();
    let old: Vec<_> = (0..12_345)
        .map(|i| event(&format!("Q{i}"), None, 100, event_kind::RECEIVED))
        .collect();
    store.record_events(&old).unwrap();
    store
        .record_event(&event("KEEP", None, 200, event_kind::RECEIVED))
        .unwrap();
    assert_eq!(store.prune_events(150).unwrap(), 12_345);
    let left = store.recent_events(10).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].queue_id, "KEEP");
}

#[cfg(unix)]
fn store_is_usable_as_a_trait_object(h: &dyn Harness) {
    let store: Arc<dyn Store> = initialised(h);
    let handle = {
        let store = store.clone();
        std::thread::spawn(move || store.generation().unwrap())
    };
    assert_eq!(handle.join().unwrap(), store.generation().unwrap());
}

fn admin_password_is_initialised_once_then_replaced(h: &dyn Harness) {
    let store = h.open();
    assert_eq!(store.admin_password_hash().unwrap(), None);
    assert!(store.init_admin_password_hash("$argon2id$first").unwrap());
    // First start of a second process: the first one's password stays.
    let other = h.open();
    assert!(!other.init_admin_password_hash("$argon2id$second").unwrap());
    assert_eq!(
        store.admin_password_hash().unwrap().as_deref(),
        Some("$argon2id$first")
    );
    other.set_admin_password_hash("$argon2id$changed").unwrap();
    assert_eq!(
        store.admin_password_hash().unwrap().as_deref(),
        Some("$argon2id$changed")
    );
    assert!(matches!(
        store.set_admin_password_hash(""),
        Err(StoreError::BadName(_))
    ));
    // Credentials are not settings: the gateway does not reload for them.
    let generation = store.generation().unwrap();
    store.set_admin_password_hash("$argon2id$again").unwrap();
    assert_eq!(store.generation().unwrap(), generation);
}

fn api_tokens_by_hash_names_unique_and_revocable(h: &dyn Harness) {
    let store = h.open();
    store.add_api_token("ci", "hash-ci").unwrap();
    store.add_api_token("monitoring", "hash-mon").unwrap();
    assert!(matches!(
        store.add_api_token("ci", "hash-other"),
        Err(StoreError::DuplicateToken(name)) if name == "ci"
    ));
    for bad in ["", " padded", "a\nb", &"x".repeat(65)] {
        assert!(
            matches!(store.add_api_token(bad, "h"), Err(StoreError::BadName(_))),
            "{bad:?} accepted"
        );
    }
    let found = store.api_token_by_hash("hash-mon").unwrap().unwrap();
    assert_eq!(found.name, "monitoring");
    assert_eq!(store.api_token_by_hash("hash-none").unwrap(), None);
    // The password hash is never taken for a token.
    store.set_admin_password_hash("pw-hash").unwrap();
    assert_eq!(store.api_token_by_hash("pw-hash").unwrap(), None);
    let names: Vec<String> = store
        .api_tokens()
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["ci", "monitoring"]);
    store.delete_api_token("ci").unwrap();
    assert_eq!(store.api_token_by_hash("hash-ci").unwrap(), None);
    assert!(matches!(
        store.delete_api_token("ci"),
        Err(StoreError::UnknownToken(_))
    ));
}

fn event_search_by_text_time_and_kind(h: &dyn Harness) {
    use postern_store::EventQuery;
    let store = h.open();
    let received = |queue_id: &str, message_id: &str, at: i64, sender: &str| TrackingEvent {
        queue_id: queue_id.to_string(),
        message_id: Some(message_id.to_string()),
        at,
        kind: event_kind::RECEIVED.to_string(),
        detail: json!({ "sender": sender, "recipients": ["rcpt@corp.example"] }),
    };
    store
        .record_events(&[
            received("Q1", "<one@example.test>", 100, "alice@example.test"),
            received("Q2", "<two@example.test>", 200, "bob@example.test"),
            received("Q3", "<50%_off@example.test>", 300, "spam@example.test"),
            event("Q1", None, 150, event_kind::DELIVERED),
        ])
        .unwrap();
    let ids = |query: EventQuery| -> Vec<String> {
        store
            .search_events(&query)
            .unwrap()
            .into_iter()
            .map(|e| format!("{}:{}", e.queue_id, e.kind))
            .collect()
    };
    let all = EventQuery {
        limit: 100,
        ..EventQuery::default()
    };
    assert_eq!(
        ids(all.clone()),
        ["Q3:received", "Q2:received", "Q1:delivered", "Q1:received"]
    );
    let text = |t: &str| EventQuery {
        text: Some(t.to_string()),
        ..all.clone()
    };
    assert_eq!(ids(text("Q2")), ["Q2:received"]);
    assert_eq!(ids(text("one@example.test")), ["Q1:received"]);
    assert_eq!(ids(text("<two@example.test>")), ["Q2:received"]);
    assert_eq!(ids(text("ALICE@example")), ["Q1:received"]);
    assert_eq!(ids(text("corp.example")).len(), 3);
    // LIKE wildcards in the text are literal.
    assert_eq!(ids(text("50%_")), ["Q3:received"]);
    assert!(ids(text("5_%")).is_empty());
    assert_eq!(
        ids(EventQuery {
            since: Some(150),
            until: Some(200),
            ..all.clone()
        }),
        ["Q2:received", "Q1:delivered"]
    );
    assert_eq!(
        ids(EventQuery {
            kinds: vec![event_kind::DELIVERED.to_string()],
            ..all.clone()
        }),
        ["Q1:delivered"]
    );
    assert_eq!(ids(EventQuery { limit: 1, ..all }), ["Q3:received"]);
}

fn node(name: &str, applied: i64) -> NodeStatus {
    NodeStatus {
        name: name.to_string(),
        hostname: format!("{name}.example.test"),
        version: "0.1.0".to_string(),
        started_at: 1_700_000_000,
        last_seen: 0,
        seen_ago: 0,
        applied_generation: applied,
        fingerprints: vec!["ab".repeat(32)],
        queue_messages: 3,
        queue_deferred: 1,
    }
}

fn node_registry_round_trip_and_states(h: &dyn Harness) {
    let store = initialised(h);
    let current = store.generation().unwrap();
    store.register_node(&node("gw2", current)).unwrap();
    store.register_node(&node("gw1", current - 1)).unwrap();
    // Refreshed, not duplicated.
    store.register_node(&node("gw2", current)).unwrap();
    let nodes = h.open().nodes().unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["gw1", "gw2"]);
    let gw2 = &nodes[1];
    assert_eq!(gw2.hostname, "gw2.example.test");
    assert_eq!(gw2.fingerprints, ["ab".repeat(32)]);
    assert_eq!((gw2.queue_messages, gw2.queue_deferred), (3, 1));
    assert!(
        gw2.last_seen > 1_700_000_000,
        "last_seen set by the store's clock"
    );
    assert!((0..5).contains(&gw2.seen_ago), "{}", gw2.seen_ago);
    assert_eq!(gw2.state(current), NodeState::Synchronized);
    assert_eq!(nodes[0].state(current), NodeState::Behind);
    let stale = NodeStatus {
        seen_ago: postern_store::UNREACHABLE_AFTER_SECS,
        ..gw2.clone()
    };
    assert_eq!(stale.state(current), NodeState::Unreachable);
}

fn events_name_the_recording_node(h: &dyn Harness) {
    let store = h.open();
    store
        .record_event(&event("Q9", None, 5, event_kind::RECEIVED))
        .unwrap();
    let mut named = event("Q9", None, 6, event_kind::DELIVERED);
    named.detail = json!({ "node": "elsewhere" });
    store.record_event(&named).unwrap();
    let events = h.open().events_for("Q9").unwrap();
    let nodes: Vec<&str> = events
        .iter()
        .map(|e| e.detail["node"].as_str().unwrap())
        .collect();
    // Stamped with the recording node, unless the event names one.
    assert_eq!(nodes, ["gw1", "elsewhere"]);
}

fn copy_fills_an_empty_store_and_refuses_one_in_use(h: &dyn Harness) {
    let dir = tempfile::tempdir().unwrap();
    let source = SqliteStore::open(&dir.path().join("source.db"), "old-node").unwrap();
    source
        .ensure_default_certificate(DEFAULT_CERT_NAME, &mut || Ok(leaf("x")))
        .unwrap();
    source.add_certificate(&ca("Partner CA")).unwrap();
    let mut settings = Settings::default();
    settings.tls.outbound.trusted_ca = vec!["system".into(), "Partner CA".into()];
    settings.mta.max_recipients = 12;
    settings.domains = vec![postern_config::DomainEntry {
        name: "corp.example".into(),
        relay: true,
        next_hop: None,
        tls: None,
        mta_sts: true,
        dane: true,
        monitor: false,
    }];
    source.put_settings(&settings).unwrap();
    source.set_admin_password_hash("$argon2id$pw").unwrap();
    source.add_api_token("ci", "hash-ci").unwrap();
    let events: Vec<TrackingEvent> = (0..12_000)
        .map(|i| event(&format!("Q{i}"), None, i, event_kind::RECEIVED))
        .collect();
    source.record_events(&events).unwrap();

    let report = h.copy_from(&source).unwrap();
    assert_eq!(report.certificates, 2);
    assert_eq!(report.private_keys, 1);
    assert!(report.settings && report.admin_password);
    assert_eq!((report.api_tokens, report.events), (1, 12_000));
    assert_eq!(report.domains, 1);

    let target = h.open();
    assert_eq!(target.settings().unwrap(), settings);
    assert_eq!(
        target.certificates().unwrap(),
        source.certificates().unwrap()
    );
    assert_eq!(
        target.admin_password_hash().unwrap().as_deref(),
        Some("$argon2id$pw")
    );
    assert_eq!(
        target.api_token_by_hash("hash-ci").unwrap().unwrap().name,
        "ci"
    );
    let trace = target.events_for("Q11999").unwrap();
    assert_eq!(trace.len(), 1);
    assert_eq!(trace[0].detail["node"], json!("old-node"));
    // The Default Cert is never made again on the target.
    let mut make = || -> Result<CertificateRecord, String> { panic!("must not generate") };
    assert!(!target
        .ensure_default_certificate(DEFAULT_CERT_NAME, &mut make)
        .unwrap());

    // A second copy is refused and changes nothing.
    let generation = target.generation().unwrap();
    source.add_certificate(&ca("Later CA")).unwrap();
    let error = h.copy_from(&source).unwrap_err();
    assert!(matches!(error, StoreError::NotEmpty(_)), "{error:?}");
    assert!(error.to_string().contains("certificates: 2"), "{error}");
    assert_eq!(target.generation().unwrap(), generation);
    assert_eq!(target.certificates().unwrap().len(), 2);
    assert_eq!(target.recent_events(100_000).unwrap().len(), 12_000);
}

fn sts(domain: &str, id: &str, fetched_at: i64) -> MtaStsRecord {
    MtaStsRecord {
        domain: domain.into(),
        id: id.into(),
        mode: "enforce".into(),
        max_age: 86_400,
        mx: vec!["mx1.partner.test".into(), "*.mx.partner.test".into()],
        policy: "version: STSv1\r\nmode: enforce\r\nmx: mx1.partner.test\r\n".into(),
        fetched_at,
        expires_at: fetched_at + 86_400,
    }
}

fn mta_sts_policies_are_shared_replaced_and_listed(h: &dyn Harness) {
    let node1 = h.open();
    let node2 = h.open();
    assert_eq!(node1.mta_sts_policy("partner.test").unwrap(), None);
    assert!(node1.mta_sts_policies().unwrap().is_empty());

    // Stored lower-case, found in any case, seen by another connection.
    node1
        .put_mta_sts_policy(&sts("Partner.Test.", "20260101", 1_000))
        .unwrap();
    let want = sts("partner.test", "20260101", 1_000);
    assert_eq!(node2.mta_sts_policy("PARTNER.test").unwrap(), Some(want));

    // A refetch replaces the row: one per domain.
    node2
        .put_mta_sts_policy(&sts("partner.test", "20260202", 2_000))
        .unwrap();
    node1
        .put_mta_sts_policy(&sts("a.test", "1", 3_000))
        .unwrap();
    let all = node1.mta_sts_policies().unwrap();
    let listed: Vec<(&str, &str)> = all.iter().map(|p| (&*p.domain, &*p.id)).collect();
    assert_eq!(listed, [("a.test", "1"), ("partner.test", "20260202")]);
    assert_eq!(all[1].expires_at, 2_000 + 86_400);
    assert_eq!(all[1].mx.len(), 2);

    let error = node1.put_mta_sts_policy(&sts(".", "1", 1)).unwrap_err();
    assert!(error.to_string().contains("needs a domain"), "{error}");
}

fn dkim(selector: &str, domain: &str) -> DkimKeyRecord {
    DkimKeyRecord {
        name: format!("{selector}._domainkey.{domain}"),
        domain: domain.to_string(),
        selector: selector.to_string(),
        key_type: "ed25519".to_string(),
        private_key_pem: KEY.to_string(),
        dns_record: "v=DKIM1; k=ed25519; p=MCowBQYDK2VwAyEA".to_string(),
        created_at: 1_700_000_000,
    }
}

fn dkim_keys_round_trip_duplicates_and_bad_records_refused(h: &dyn Harness) {
    let store = initialised(h);
    assert!(store.dkim_keys().unwrap().is_empty());
    store.add_dkim_key(&dkim("s2", "example.com")).unwrap();
    store.add_dkim_key(&dkim("s1", "example.com")).unwrap();
    // Another connection sees both, by name.
    let other = h.open();
    let names: Vec<String> = other
        .dkim_keys()
        .unwrap()
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(
        names,
        ["s1._domainkey.example.com", "s2._domainkey.example.com"]
    );
    assert_eq!(
        other.dkim_key("s1._domainkey.example.com").unwrap(),
        Some(dkim("s1", "example.com"))
    );
    assert_eq!(other.dkim_key("nope._domainkey.example.com").unwrap(), None);

    let error = store.add_dkim_key(&dkim("s1", "example.com")).unwrap_err();
    assert!(
        matches!(error, StoreError::DuplicateDkimKey(_)),
        "{error:?}"
    );
    for (bad, want) in [
        (
            DkimKeyRecord {
                name: "other".into(),
                ..dkim("s3", "example.com")
            },
            "should be",
        ),
        (
            DkimKeyRecord {
                key_type: "dsa".into(),
                ..dkim("s3", "example.com")
            },
            "key type",
        ),
        (
            DkimKeyRecord {
                private_key_pem: "x".into(),
                ..dkim("s3", "example.com")
            },
            "PKCS#8",
        ),
        (
            DkimKeyRecord {
                dns_record: "p=x".into(),
                ..dkim("s3", "example.com")
            },
            "v=DKIM1",
        ),
    ] {
        let error = store.add_dkim_key(&bad).unwrap_err();
        assert!(error.to_string().contains(want), "{error}");
    }
    assert_eq!(store.dkim_keys().unwrap().len(), 2);

    store.delete_dkim_key("s2._domainkey.example.com").unwrap();
    let error = store
        .delete_dkim_key("s2._domainkey.example.com")
        .unwrap_err();
    assert!(matches!(error, StoreError::UnknownDkimKey(_)), "{error:?}");
    assert_eq!(other.dkim_keys().unwrap().len(), 1);
}

fn dkim_key_in_use_by_tlsrpt_cannot_be_deleted(h: &dyn Harness) {
    let store = initialised(h);
    let name = "tlsrpt._domainkey.example.com";
    // Settings cannot name a key that does not exist.
    let mut settings = Settings::default();
    settings.tlsrpt.dkim_key = name.to_string();
    assert_eq!(
        invalid_key(store.put_settings(&settings).unwrap_err()),
        "tlsrpt.dkim_key"
    );
    store.add_dkim_key(&dkim("tlsrpt", "example.com")).unwrap();
    store.put_settings(&settings).unwrap();
    let error = h.open().delete_dkim_key(name).unwrap_err();
    assert!(matches!(error, StoreError::DkimKeyInUse(_)), "{error:?}");
    assert!(error.to_string().contains("tlsrpt.dkim_key"), "{error}");
    assert!(store.dkim_key(name).unwrap().is_some());
    settings.tlsrpt.dkim_key.clear();
    store.put_settings(&settings).unwrap();
    store.delete_dkim_key(name).unwrap();
    assert!(store.dkim_keys().unwrap().is_empty());
}

fn copy_carries_dkim_keys(h: &dyn Harness) {
    let dir = tempfile::tempdir().unwrap();
    let source = SqliteStore::open(&dir.path().join("source.db"), "old-node").unwrap();
    source
        .ensure_default_certificate(DEFAULT_CERT_NAME, &mut || Ok(leaf("x")))
        .unwrap();
    source.add_dkim_key(&dkim("tlsrpt", "example.com")).unwrap();
    let mut settings = Settings::default();
    settings.tlsrpt.dkim_key = "tlsrpt._domainkey.example.com".into();
    source.put_settings(&settings).unwrap();
    let report = h.copy_from(&source).unwrap();
    assert_eq!(report.dkim_keys, 1);
    let target = h.open();
    assert_eq!(target.dkim_keys().unwrap(), source.dkim_keys().unwrap());
    assert_eq!(target.settings().unwrap(), settings);
}

fn session(id: &str, version: &str, at: i64) -> AdminSession {
    AdminSession {
        id_hash: format!("sha256:{id}"),
        password_version: format!("sha256:{version}"),
        created_at: at,
        last_seen: at,
    }
}

const LIMITS: SessionLimits = SessionLimits {
    idle_secs: 60,
    lifetime_secs: 300,
    max_sessions: 3,
};

fn admin_sessions_are_shared_by_hash_and_bounded(h: &dyn Harness) {
    let a = h.open();
    let b = h.open();
    let t0 = 1_700_000_000;
    let first = session("one", "v1", t0);
    a.create_admin_session(&first, None, &LIMITS).unwrap();
    // Another node sees it, by its hash only.
    assert_eq!(b.admin_session("sha256:one").unwrap(), Some(first.clone()));
    assert_eq!(b.admin_session("one").unwrap(), None);
    // A use is recorded, never moved backwards.
    assert!(b.touch_admin_session("sha256:one", t0 + 30).unwrap());
    assert!(a.touch_admin_session("sha256:one", t0 + 10).unwrap());
    assert_eq!(
        a.admin_session("sha256:one").unwrap().unwrap().last_seen,
        t0 + 30
    );
    assert!(!a.touch_admin_session("sha256:none", t0).unwrap());
    // A login from the same browser ends its previous session.
    b.create_admin_session(&session("two", "v1", t0 + 40), Some("sha256:one"), &LIMITS)
        .unwrap();
    assert_eq!(a.admin_session("sha256:one").unwrap(), None);
    // Dead sessions go when a new one is made: idle (last seen 60 s ago) ...
    a.create_admin_session(&session("three", "v1", t0 + 100), None, &LIMITS)
        .unwrap();
    assert_eq!(a.admin_session("sha256:two").unwrap(), None, "idle");
    // ... and past the lifetime, however recently used.
    assert!(a.touch_admin_session("sha256:three", t0 + 399).unwrap());
    a.create_admin_session(&session("four", "v1", t0 + 400), None, &LIMITS)
        .unwrap();
    assert_eq!(a.admin_session("sha256:three").unwrap(), None, "lifetime");
    // At most three: the least recently used goes.
    for (i, id) in ["five", "six"].iter().enumerate() {
        let at = t0 + 401 + i64::try_from(i).unwrap();
        b.create_admin_session(&session(id, "v2", at), None, &LIMITS)
            .unwrap();
    }
    assert!(a.touch_admin_session("sha256:four", t0 + 410).unwrap());
    b.create_admin_session(&session("seven", "v2", t0 + 411), None, &LIMITS)
        .unwrap();
    let alive: Vec<bool> = ["four", "five", "six", "seven"]
        .iter()
        .map(|id| a.admin_session(&format!("sha256:{id}")).unwrap().is_some())
        .collect();
    assert_eq!(alive, [true, false, true, true]);
    // A password change ends exactly the sessions of the other versions.
    assert_eq!(b.end_admin_sessions_except("sha256:v2").unwrap(), 1);
    assert_eq!(a.admin_session("sha256:four").unwrap(), None);
    assert!(a.admin_session("sha256:six").unwrap().is_some());
    assert_eq!(b.end_admin_sessions_except("sha256:v2").unwrap(), 0);
    // Logout.
    assert!(a.delete_admin_session("sha256:six").unwrap());
    assert!(!b.delete_admin_session("sha256:six").unwrap());
    assert_eq!(b.admin_session("sha256:six").unwrap(), None);
    // A malformed row is refused before it is written.
    let mut bad = session("x", "v2", t0);
    bad.id_hash = "two words".to_string();
    assert!(matches!(
        a.create_admin_session(&bad, None, &LIMITS),
        Err(StoreError::BadName(_))
    ));
    // Sessions are not settings: no reload for them.
    let generation = a.generation().unwrap();
    a.create_admin_session(&session("eight", "v2", t0 + 412), None, &LIMITS)
        .unwrap();
    assert_eq!(a.generation().unwrap(), generation);
}

fn credential_changes_bump_the_credentials_version(h: &dyn Harness) {
    let a = h.open();
    let b = h.open();
    let seen = std::cell::Cell::new(b.credentials_version().unwrap());
    let changed = |what: &str| {
        let now = b.credentials_version().unwrap();
        assert!(
            now > seen.get(),
            "{what} did not change the credentials version"
        );
        seen.set(now);
    };
    a.init_admin_password_hash("$argon2id$first").unwrap();
    changed("first password");
    a.set_admin_password_hash("$argon2id$second").unwrap();
    changed("password change");
    a.add_api_token("ci", "hash-ci").unwrap();
    changed("token added");
    a.delete_api_token("ci").unwrap();
    changed("token deleted");
    a.create_admin_session(&session("s", "v", 1_700_000_000), None, &LIMITS)
        .unwrap();
    changed("session created");
    // Using a session is not a change of credentials.
    a.touch_admin_session("sha256:s", 1_700_000_010).unwrap();
    assert_eq!(b.credentials_version().unwrap(), seen.get(), "touch");
    a.end_admin_sessions_except("sha256:other").unwrap();
    changed("sessions ended");
    a.create_admin_session(&session("t", "v", 1_700_000_000), None, &LIMITS)
        .unwrap();
    changed("session created");
    a.delete_admin_session("sha256:t").unwrap();
    changed("logout");
    // Nothing ended, nothing changed.
    a.delete_admin_session("sha256:t").unwrap();
    a.end_admin_sessions_except("sha256:other").unwrap();
    assert_eq!(b.credentials_version().unwrap(), seen.get());
}

const LOGIN: LoginLimits = LoginLimits {
    per_client: 3,
    total: 5,
    window_secs: 60,
};

fn granted(r: LoginReservation) -> bool {
    matches!(r, LoginReservation::Granted(_))
}

fn login_attempts_are_limited_across_connections(h: &dyn Harness) {
    let a = h.open();
    let b = h.open();
    let t0 = 1_700_000_000;
    // Three attempts of one client, through two nodes: then locked on both.
    assert!(granted(
        a.reserve_login_attempt("192.0.2.1", t0, &LOGIN).unwrap()
    ));
    assert!(granted(
        b.reserve_login_attempt("192.0.2.1", t0 + 1, &LOGIN)
            .unwrap()
    ));
    assert!(granted(
        a.reserve_login_attempt("192.0.2.1", t0 + 2, &LOGIN)
            .unwrap()
    ));
    assert_eq!(
        b.reserve_login_attempt("192.0.2.1", t0 + 10, &LOGIN)
            .unwrap(),
        LoginReservation::Wait(50)
    );
    assert_eq!(
        a.reserve_login_attempt("192.0.2.1", t0 + 59, &LOGIN)
            .unwrap(),
        LoginReservation::Wait(1)
    );
    // Others are not affected until the total is reached.
    assert!(granted(
        b.reserve_login_attempt("192.0.2.2", t0 + 10, &LOGIN)
            .unwrap()
    ));
    assert!(granted(
        a.reserve_login_attempt("192.0.2.3", t0 + 10, &LOGIN)
            .unwrap()
    ));
    assert!(matches!(
        b.reserve_login_attempt("192.0.2.4", t0 + 11, &LOGIN)
            .unwrap(),
        LoginReservation::Wait(49)
    ));
    // The oldest attempt leaves the window at 60 s.
    assert!(granted(
        a.reserve_login_attempt("192.0.2.1", t0 + 60, &LOGIN)
            .unwrap()
    ));
    // A success forgets the client's attempts, on every node.
    b.forget_login_attempts("192.0.2.1").unwrap();
    for i in 0..3 {
        assert!(
            granted(
                a.reserve_login_attempt("192.0.2.1", t0 + 62, &LOGIN)
                    .unwrap()
            ),
            "after success, attempt {i}"
        );
    }
    assert!(!granted(
        b.reserve_login_attempt("192.0.2.1", t0 + 62, &LOGIN)
            .unwrap()
    ));
    assert!(matches!(
        a.reserve_login_attempt("", t0, &LOGIN),
        Err(StoreError::BadName(_))
    ));
}

fn concurrent_login_attempts_never_overshoot(h: &dyn Harness) {
    // Eight "nodes" trying at once: exactly the per-client limit gets in.
    let opener = h.opener();
    let barrier = Arc::new(Barrier::new(8));
    let granted_count = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let store = opener();
            let barrier = Arc::clone(&barrier);
            let granted_count = Arc::clone(&granted_count);
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..3 {
                    let answer = store
                        .reserve_login_attempt("198.51.100.7", 1_700_000_000, &LOGIN)
                        .unwrap();
                    if granted(answer) {
                        granted_count.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(granted_count.load(Ordering::SeqCst), LOGIN.per_client);
}

fn snapshot(node: &str, ids: &[&str]) -> QueueSnapshot {
    QueueSnapshot {
        node: node.to_string(),
        messages: i64::try_from(ids.len()).unwrap() + 10,
        deferred: 1,
        entries: ids.iter().map(|id| json!({ "id": id })).collect(),
        published_at: 0,
        age: 0,
    }
}

fn queue_snapshots_are_replaced_per_node(h: &dyn Harness) {
    let store = h.open();
    assert!(store.queue_snapshots().unwrap().is_empty());
    store.publish_queue(&snapshot("gw2", &["A", "B"])).unwrap();
    store.publish_queue(&snapshot("gw1", &["C"])).unwrap();
    // Replaced, not appended.
    store.publish_queue(&snapshot("gw2", &["B"])).unwrap();
    let snapshots = h.open().queue_snapshots().unwrap();
    let nodes: Vec<&str> = snapshots.iter().map(|s| s.node.as_str()).collect();
    assert_eq!(nodes, ["gw1", "gw2"]);
    let gw2 = &snapshots[1];
    assert_eq!(gw2.entries, vec![json!({ "id": "B" })]);
    assert_eq!((gw2.messages, gw2.deferred), (11, 1));
    assert!(
        gw2.published_at > 1_700_000_000,
        "published_at set by the store's clock"
    );
    assert!((0..5).contains(&gw2.age), "{}", gw2.age);
}

fn queue_requests_wait_for_their_node_and_keep_one_outcome(h: &dyn Harness) {
    let store = h.open();
    let retry = store
        .request_queue_action("gw2", "Q1", QueueAction::Retry)
        .unwrap();
    let delete = store
        .request_queue_action("gw2", "Q2", QueueAction::Delete)
        .unwrap();
    store
        .request_queue_action("gw3", "Q3", QueueAction::Retry)
        .unwrap();
    assert!(delete.id > retry.id);
    assert_eq!(retry.requested_by, "gw1", "the requesting node");
    assert_eq!((retry.done_at, retry.outcome.clone()), (None, None));
    assert!(retry.requested_at > 1_700_000_000);

    let owner = h.open();
    let waiting = owner.waiting_queue_requests("gw2").unwrap();
    let seen: Vec<(&str, QueueAction)> = waiting
        .iter()
        .map(|r| (r.queue_id.as_str(), r.action))
        .collect();
    assert_eq!(
        seen,
        [("Q1", QueueAction::Retry), ("Q2", QueueAction::Delete)]
    );

    owner
        .finish_queue_request(retry.id, &Ok("scheduled now".to_string()))
        .unwrap();
    owner
        .finish_queue_request(delete.id, &Err("no such queued message".to_string()))
        .unwrap();
    // A second outcome changes nothing.
    owner
        .finish_queue_request(retry.id, &Err("late".to_string()))
        .unwrap();
    assert!(owner.waiting_queue_requests("gw2").unwrap().is_empty());
    assert_eq!(owner.waiting_queue_requests("gw3").unwrap().len(), 1);

    let done = store.queue_request(retry.id).unwrap().unwrap();
    assert_eq!(done.outcome, Some(Ok("scheduled now".to_string())));
    assert!(done.done_at.is_some());
    let failed = store.queue_request(delete.id).unwrap().unwrap();
    assert_eq!(
        failed.outcome,
        Some(Err("no such queued message".to_string()))
    );
    assert!(store.queue_request(delete.id + 1000).unwrap().is_none());

    let refused = store.request_queue_action("", "Q1", QueueAction::Retry);
    assert!(
        matches!(refused, Err(StoreError::BadName(ref m)) if m.contains("node")),
        "{refused:?}"
    );
}

// ---- learned TLS levels and monitor verdicts (issue 14) ----

fn observation(
    domain: &str,
    host: &str,
    level: postern_store::TlsLevel,
    n: i64,
    first: i64,
    last: i64,
) -> postern_store::TlsObservation {
    postern_store::TlsObservation {
        domain: domain.into(),
        host: host.into(),
        level,
        deliveries: n,
        first_seen: first,
        last_seen: last,
    }
}

fn learned_observations_add_up_and_are_shared(h: &dyn Harness) {
    use postern_store::TlsLevel::{Tls, Verified};
    let a = h.open();
    let b = h.open();
    assert!(a.learned().observations().unwrap().is_empty());
    // one batch with the same key twice, then a second batch from another node
    a.learned()
        .record_observations(&[
            observation("partner.test", "mx1.partner.test", Verified, 1, 100, 100),
            observation("partner.test", "mx1.partner.test", Verified, 1, 90, 95),
            observation("other.test", "mx.other.test", Tls, 1, 50, 50),
        ])
        .unwrap();
    b.learned()
        .record_observations(&[observation(
            "partner.test",
            "mx1.partner.test",
            Verified,
            2,
            200,
            300,
        )])
        .unwrap();
    let rows = a.learned().observations().unwrap();
    assert_eq!(
        rows,
        vec![
            observation("other.test", "mx.other.test", Tls, 1, 50, 50),
            observation("partner.test", "mx1.partner.test", Verified, 4, 90, 300),
        ]
    );
}

fn learned_forget_and_prune(h: &dyn Harness) {
    use postern_store::TlsLevel::{None as Plain, Verified};
    let s = h.open();
    s.learned()
        .record_observations(&[
            observation("partner.test", "mx1.partner.test", Verified, 3, 100, 200),
            observation("partner.test", "mx1.partner.test", Plain, 1, 300, 300),
            observation("old.test", "mx.old.test", Verified, 3, 10, 20),
        ])
        .unwrap();
    assert_eq!(s.learned().forget_domain("partner.test").unwrap(), 2);
    assert_eq!(s.learned().forget_domain("partner.test").unwrap(), 0);
    assert_eq!(s.learned().prune(21, 0).unwrap(), 1);
    assert!(s.learned().observations().unwrap().is_empty());
}

fn monitor_verdicts_counted_per_domain_and_source(h: &dyn Harness) {
    let s = h.open();
    let verdict = |source: &str, domain: &str, at: i64, fail: bool| postern_store::MonitorVerdict {
        source: source.into(),
        domain: domain.into(),
        host: format!("mx.{domain}"),
        at,
        requirement: "domain verify".into(),
        would_fail: fail,
        reason: if fail {
            "certificate not verified".into()
        } else {
            String::new()
        },
    };
    s.learned()
        .record_verdicts(&[
            verdict("domain", "partner.test", 100, true),
            verdict("domain", "partner.test", 200, false),
            verdict("domain", "partner.test", 300, true),
            verdict("learned", "partner.test", 300, true),
            verdict("domain", "b.test", 50, true),
        ])
        .unwrap();
    let counts = s.learned().verdict_counts(150).unwrap();
    assert_eq!(
        counts,
        vec![postern_store::MonitorCount {
            domain: "partner.test".into(),
            attempts: 2,
            would_fail: 1
        }]
    );
    let all = s.learned().verdict_counts(0).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!((all[0].domain.as_str(), all[0].would_fail), ("b.test", 1));
    assert_eq!((all[1].attempts, all[1].would_fail), (3, 2));
    let recent = s.learned().recent_verdicts("partner.test", 2).unwrap();
    assert_eq!(recent.len(), 2);
    assert!(recent.iter().all(|v| v.at == 300), "{recent:?}");
    assert!(recent.iter().any(|v| v.source == "learned"));
    assert_eq!(s.learned().prune(0, 250).unwrap(), 3);
    assert_eq!(s.learned().verdict_counts(0).unwrap()[0].attempts, 1);
}

fn learned_pin_writes_a_validated_domain_rule(h: &dyn Harness) {
    use postern_store::learned::review;
    let s = initialised(h);
    let now = 10_000_000;
    let err = review::pin(s.as_ref(), "partner.test", now).unwrap_err();
    assert!(
        err.to_string()
            .contains("no learned entry for partner.test"),
        "{err}"
    );
    s.learned()
        .record_observations(&[observation(
            "partner.test",
            "mx1.partner.test",
            postern_store::TlsLevel::Verified,
            2,
            now - 2 * 86_400,
            now - 60,
        )])
        .unwrap();
    let err = review::pin(s.as_ref(), "Partner.Test.", now).unwrap_err();
    assert!(
        err.to_string()
            .contains("nothing is learned for partner.test yet"),
        "{err}"
    );
    let before = s.generation().unwrap();
    s.learned()
        .record_observations(&[observation(
            "partner.test",
            "mx1.partner.test",
            postern_store::TlsLevel::Verified,
            1,
            now - 30,
            now - 30,
        )])
        .unwrap();
    let entry = review::pin(s.as_ref(), "partner.test", now).unwrap();
    assert_eq!(entry.tls, Some(OutboundMode::Verify));
    let settings = h.open().settings().unwrap();
    assert!(settings
        .domains
        .iter()
        .any(|d| d.name == "partner.test" && d.tls == Some(OutboundMode::Verify) && !d.relay));
    assert!(
        s.generation().unwrap() > before,
        "a pin is a settings change"
    );
    let listed = review::list(s.as_ref(), now).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].learned.as_ref().map(|l| l.level),
        Some(postern_store::TlsLevel::Verified)
    );
}

fn alerts_kept_newest_first_and_shared(h: &dyn Harness) {
    use postern_store::{Alert, AlertKind};
    let a = h.open();
    assert!(a.alerts().recent_alerts(10).unwrap().is_empty());
    let alert = |kind, at| Alert {
        kind,
        subject: "partner.test".into(),
        host: "mx1.partner.test".into(),
        detail: "delivered at none below the learned level verified".into(),
        at,
    };
    a.alerts()
        .record_alerts(&[
            alert(AlertKind::Downgrade, 100),
            alert(AlertKind::StarttlsMissing, 200),
        ])
        .unwrap();
    h.open()
        .alerts()
        .record_alerts(&[alert(AlertKind::CertificateExpiry, 300)])
        .unwrap();
    let kinds: Vec<AlertKind> = a
        .alerts()
        .recent_alerts(2)
        .unwrap()
        .into_iter()
        .map(|x| x.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![AlertKind::CertificateExpiry, AlertKind::StarttlsMissing]
    );
    assert_eq!(
        a.alerts().recent_alerts(10).unwrap()[2],
        alert(AlertKind::Downgrade, 100)
    );
}

fn tlsrpt_claim(node: &str) -> postern_store::tlsrpt::ReportClaim {
    postern_store::tlsrpt::ReportClaim {
        domain: "rcpt.test".into(),
        day: "2026-12-01".into(),
        node: node.into(),
        report_id: format!("2026-12-01.rcpt.test@{node}"),
        claimed_at: 100,
        successful: 3,
        failed: 1,
    }
}

fn tlsrpt_report_claimed_once_across_nodes(h: &dyn Harness) {
    // Eight connections (nodes) race for one (domain, day): one wins.
    let opener = h.opener();
    let barrier = Arc::new(Barrier::new(8));
    let wins = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (opener, barrier, wins) = (opener.clone(), barrier.clone(), wins.clone());
            std::thread::spawn(move || {
                let store = opener();
                barrier.wait();
                if store
                    .tlsrpt()
                    .claim_report(&tlsrpt_claim(&format!("gw{i}")))
                    .unwrap()
                {
                    wins.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(wins.load(Ordering::SeqCst), 1);
    let store = h.open();
    let claims = store.tlsrpt().report_claims("2026-12-01").unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!((claims[0].successful, claims[0].failed), (3, 1));
    assert!(!store.tlsrpt().claim_report(&tlsrpt_claim("late")).unwrap());
    // Another day of the same domain is its own report.
    let mut next = tlsrpt_claim("gw1");
    next.day = "2026-12-02".into();
    assert!(store.tlsrpt().claim_report(&next).unwrap());
    assert!(store
        .tlsrpt()
        .report_claims("2026-11-30")
        .unwrap()
        .is_empty());
}

fn tlsrpt_delivery(
    destination: &str,
    queue_id: Option<&str>,
) -> postern_store::tlsrpt::ReportDelivery {
    use postern_store::tlsrpt::{DeliveryStatus, ReportDelivery};
    ReportDelivery {
        id: 0,
        domain: "rcpt.test".into(),
        day: "2026-12-01".into(),
        destination: destination.into(),
        node: "gw1".into(),
        status: if queue_id.is_some() {
            DeliveryStatus::Queued
        } else {
            DeliveryStatus::Retrying
        },
        detail: "first try".into(),
        queue_id: queue_id.map(str::to_string),
        attempts: 1,
        created_at: 100,
        updated_at: 100,
        next_attempt: queue_id.is_none().then_some(160),
        body: queue_id.is_none().then(|| vec![0x1f, 0x8b, 0, 1, 2]),
    }
}

fn tlsrpt_attempts_of_a_period_skip_report_mails(h: &dyn Harness) {
    let store = h.open();
    let attempt = |queue_id: &str, at: i64| event(queue_id, None, at, event_kind::DELIVERY_ATTEMPT);
    store
        .record_events(&[
            attempt("Q1", 99),
            attempt("Q1", 100),
            event("Q1", None, 150, event_kind::DELIVERED),
            attempt("Q2", 199),
            attempt("REPORT", 150),
            attempt("Q3", 200),
        ])
        .unwrap();
    store
        .tlsrpt()
        .add_report_delivery(&tlsrpt_delivery("mailto:tlsrpt@rcpt.test", Some("REPORT")))
        .unwrap();
    let found: Vec<(String, i64)> = h
        .open()
        .tlsrpt()
        .attempt_events(100, 200)
        .unwrap()
        .into_iter()
        .map(|e| (e.queue_id, e.at))
        .collect();
    assert_eq!(
        found,
        vec![("Q1".to_string(), 100), ("Q2".to_string(), 199)]
    );
}

fn tlsrpt_deliveries_retry_once_per_lease(h: &dyn Harness) {
    use postern_store::tlsrpt::{DeliveryStatus, DeliveryUpdate};
    let a = h.open();
    let b = h.open();
    let id = a
        .tlsrpt()
        .add_report_delivery(&tlsrpt_delivery("https://tlsrpt.rcpt.test/v1", None))
        .unwrap();
    a.tlsrpt()
        .add_report_delivery(&tlsrpt_delivery("mailto:tlsrpt@rcpt.test", Some("Q9")))
        .unwrap();
    assert!(a
        .tlsrpt()
        .take_due_report_deliveries(159, 999)
        .unwrap()
        .is_empty());
    let taken = a.tlsrpt().take_due_report_deliveries(160, 220).unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].id, id);
    assert_eq!(taken[0].body.as_deref(), Some(&[0x1f, 0x8b, 0, 1, 2][..]));
    // Leased: another node polling now takes nothing, until the lease ends.
    assert!(b
        .tlsrpt()
        .take_due_report_deliveries(200, 260)
        .unwrap()
        .is_empty());
    assert_eq!(
        b.tlsrpt()
            .take_due_report_deliveries(220, 280)
            .unwrap()
            .len(),
        1
    );
    b.tlsrpt()
        .update_report_delivery(
            id,
            &DeliveryUpdate {
                status: DeliveryStatus::Sent,
                detail: "HTTP 202".into(),
                node: "gw2".into(),
                attempts: 3,
                updated_at: 230,
                next_attempt: None,
            },
        )
        .unwrap();
    assert!(a
        .tlsrpt()
        .take_due_report_deliveries(10_000, 10_060)
        .unwrap()
        .is_empty());
    let listed = a.tlsrpt().report_deliveries("2026-12-01").unwrap();
    assert_eq!(listed.len(), 2);
    let https = listed.iter().find(|d| d.id == id).unwrap();
    assert_eq!(
        (
            https.status,
            https.detail.as_str(),
            https.node.as_str(),
            https.attempts
        ),
        (DeliveryStatus::Sent, "HTTP 202", "gw2", 3)
    );
    assert_eq!(https.body, None, "listing does not load bodies");
    let mail = listed.iter().find(|d| d.id != id).unwrap();
    assert_eq!(mail.queue_id.as_deref(), Some("Q9"));
    assert_eq!(mail.status, DeliveryStatus::Queued);
    assert!(a
        .tlsrpt()
        .report_deliveries("2026-12-02")
        .unwrap()
        .is_empty());
}

fn tlsrpt_old_reports_pruned_but_not_retries(h: &dyn Harness) {
    let store = h.open();
    let t = store.tlsrpt();
    for day in ["2026-08-31", "2026-09-01", "2026-09-02"] {
        let mut claim = tlsrpt_claim("gw1");
        claim.day = day.into();
        assert!(t.claim_report(&claim).unwrap());
        for (destination, queue_id) in [
            ("mailto:tlsrpt@rcpt.test", Some("Q1")),
            ("https://tlsrpt.rcpt.test/v1", None),
        ] {
            let mut delivery = tlsrpt_delivery(destination, queue_id);
            delivery.day = day.into();
            t.add_report_delivery(&delivery).unwrap();
        }
    }
    // Before 2026-09-02: two claims and the two mailed deliveries; the
    // two https deliveries still retrying stay until they end.
    assert_eq!(t.prune_reports("2026-09-02").unwrap(), 4);
    assert!(t.report_claims("2026-09-01").unwrap().is_empty());
    let kept = t.report_deliveries("2026-09-01").unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].destination, "https://tlsrpt.rcpt.test/v1");
    assert_eq!(
        h.open().tlsrpt().report_claims("2026-09-02").unwrap().len(),
        1
    );
    assert_eq!(t.report_deliveries("2026-09-02").unwrap().len(), 2);
    assert_eq!(t.prune_reports("2026-09-02").unwrap(), 0);
}

fn alerts_acknowledged_one_listed_and_all_through(h: &dyn Harness) {
    use postern_store::{Alert, AlertFilter, AlertKind};
    let a = h.open();
    let alert = |kind, subject: &str, at| Alert {
        kind,
        subject: subject.into(),
        host: "mx1.partner.test".into(),
        detail: "what happened".into(),
        at,
    };
    a.alerts()
        .record_alerts(&[
            alert(AlertKind::Downgrade, "a.test", 100),
            alert(AlertKind::StarttlsMissing, "a.test", 200),
            alert(AlertKind::Downgrade, "b.test", 300),
        ])
        .unwrap();
    let all = |acknowledged| AlertFilter {
        kind: None,
        acknowledged,
        limit: 10,
    };
    let listed = a.alerts().kept_alerts(&all(None)).unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0].alert.subject, "b.test", "newest first");
    assert_eq!(listed[0].node, "gw1", "the raising node is kept");
    assert!(listed.iter().all(|k| k.acknowledged_at.is_none()));
    let ids: Vec<i64> = listed.iter().map(|k| k.id).collect();
    let (newest, middle, oldest) = (ids[0], ids[1], ids[2]);
    assert_eq!(a.alerts().unacknowledged_alert_count().unwrap(), 3);

    // A list with an unknown id acknowledges nothing and names it.
    let refused = a
        .alerts()
        .acknowledge_alerts(&[oldest, newest + 1000], "admin", 400)
        .unwrap();
    assert_eq!((refused.count, refused.unknown), (0, vec![newest + 1000]));
    assert_eq!(a.alerts().unacknowledged_alert_count().unwrap(), 3);

    // One, seen by another connection; a second acknowledgement keeps the first.
    let done = a
        .alerts()
        .acknowledge_alerts(&[oldest], "admin", 400)
        .unwrap();
    assert_eq!((done.count, done.unknown.len()), (1, 0));
    let again = h
        .open()
        .alerts()
        .acknowledge_alerts(&[oldest], "token ops", 500)
        .unwrap();
    assert_eq!(again.count, 0);
    let kept = h.open().alerts().kept_alert(oldest).unwrap().unwrap();
    assert_eq!(kept.acknowledged_at, Some(400));
    assert_eq!(kept.acknowledged_by.as_deref(), Some("admin"));
    assert_eq!(kept.alert, alert(AlertKind::Downgrade, "a.test", 100));
    assert!(a.alerts().kept_alert(newest + 1000).unwrap().is_none());

    // Filters: unacknowledged, acknowledged, by kind.
    let open: Vec<i64> = a
        .alerts()
        .kept_alerts(&AlertFilter::unacknowledged(10))
        .unwrap()
        .iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(open, vec![newest, middle]);
    let closed = a.alerts().kept_alerts(&all(Some(true))).unwrap();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].id, oldest);
    let downgrades = a
        .alerts()
        .kept_alerts(&AlertFilter {
            kind: Some(AlertKind::Downgrade),
            acknowledged: Some(false),
            limit: 10,
        })
        .unwrap();
    assert_eq!(downgrades.len(), 1);
    assert_eq!(downgrades[0].id, newest);
    assert_eq!(a.alerts().unacknowledged_alert_count().unwrap(), 2);

    // All through an id: what arrived after it stays unacknowledged.
    assert_eq!(
        a.alerts()
            .acknowledge_alerts_through(middle, "token ops", 600)
            .unwrap(),
        1
    );
    assert_eq!(a.alerts().unacknowledged_alert_count().unwrap(), 1);
    assert_eq!(
        a.alerts()
            .kept_alert(middle)
            .unwrap()
            .unwrap()
            .acknowledged_by
            .as_deref(),
        Some("token ops")
    );
    assert_eq!(
        a.alerts()
            .acknowledge_alerts_through(newest, "admin", 700)
            .unwrap(),
        1
    );
    assert_eq!(a.alerts().unacknowledged_alert_count().unwrap(), 0);
    assert!(a
        .alerts()
        .kept_alerts(&AlertFilter::unacknowledged(10))
        .unwrap()
        .is_empty());
}

fn alert_claims_once_per_window_and_destination_across_nodes(h: &dyn Harness) {
    use postern_store::{AlertClaim, AlertKind};
    const HOUR: i64 = 3600;
    let claim = |destination| AlertClaim {
        kind: AlertKind::HandshakeFailures,
        subject: "partner.test",
        scope: "mx1.partner.test",
        destination,
    };
    let webhook = claim("webhook https://hooks.example/x");
    let (a, b) = (h.open(), h.open());
    assert!(a.alerts().claim_alert(&webhook, 1000, HOUR).unwrap());
    // Within the hour: neither this node nor another one claims it again.
    assert!(!a
        .alerts()
        .claim_alert(&webhook, 1000 + 59 * 60, HOUR)
        .unwrap());
    assert!(!b.alerts().claim_alert(&webhook, 1000 + 60, HOUR).unwrap());
    // Another destination, another scope, another kind: claims of their own.
    assert!(b
        .alerts()
        .claim_alert(&claim("mailto:tls@example.com"), 1100, HOUR)
        .unwrap());
    let other_host = AlertClaim {
        scope: "mx2.partner.test",
        ..webhook
    };
    assert!(b.alerts().claim_alert(&other_host, 1100, HOUR).unwrap());
    let other_kind = AlertClaim {
        kind: AlertKind::RequiredTlsDeferred,
        ..webhook
    };
    assert!(b.alerts().claim_alert(&other_kind, 1100, HOUR).unwrap());
    // An hour after the claim: due again, once.
    assert!(b
        .alerts()
        .claim_alert(&webhook, 1000 + HOUR + 1, HOUR)
        .unwrap());
    assert!(!a
        .alerts()
        .claim_alert(&webhook, 1000 + HOUR + 2, HOUR)
        .unwrap());
    // A longer window (certificate expiry) is honoured as given.
    assert!(!a
        .alerts()
        .claim_alert(&webhook, 1000 + 2 * HOUR, 30 * 86_400)
        .unwrap());

    // Eight nodes claiming the same new condition at once: exactly one wins.
    let opener = h.opener();
    let barrier = Arc::new(Barrier::new(8));
    let won = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (store, barrier, won) = (opener(), barrier.clone(), won.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let race = AlertClaim {
                    kind: AlertKind::NodeUnreachable,
                    subject: "gw3",
                    scope: "gw3.example",
                    destination: "webhook https://hooks.example/x",
                };
                if store.alerts().claim_alert(&race, 5000, HOUR).unwrap() {
                    won.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(won.load(Ordering::SeqCst), 1);

    // Pruning old claims makes them claimable again.
    assert_eq!(a.alerts().prune_alert_claims(1200).unwrap(), 3);
    assert!(a.alerts().claim_alert(&other_host, 1300, HOUR).unwrap());
}
