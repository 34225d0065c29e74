//! PostgreSQL-only behaviour, against the throwaway test server: TLS by
//! default, verification, SCRAM channel binding, passwords kept out of
//! errors, the password file, schema versions, change notifications.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use postern_config::Settings;
use postern_store::{PgStore, Store, StoreError};

/// The password in a test server URL.
fn password_of(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let userinfo = rest.rsplit_once('@').unwrap().0;
    userinfo.split_once(':').unwrap().1.to_string()
}

/// The Default Cert a settings save needs (as every command creates it).
fn with_default_cert(store: &PgStore) {
    store
        .ensure_default_certificate(postern_config::DEFAULT_CERT_NAME, &mut || {
            let made =
                postern_tls::generate_self_signed(postern_tls::KeyKind::EcdsaP256, "mx.test", &[])
                    .map_err(|e| e.to_string())?;
            Ok(postern_store::CertificateRecord {
                name: String::new(),
                chain_pem: made.chain_pem,
                key_pem: Some(made.key_pem),
                created_at: 0,
            })
        })
        .unwrap();
}

fn open_err(url: &str) -> String {
    match PgStore::open(url, "gw1") {
        Ok(_) => panic!("opened {url}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn url_without_sslmode_refuses_a_server_without_tls() {
    let Some(_) = support::server_url() else {
        return;
    };
    let plain = std::env::var("POSTERN_TEST_PG_PLAIN_URL")
        .expect("POSTERN_TEST_PG_PLAIN_URL (scripts/pg-test-server.sh)");
    let error = open_err(&plain);
    assert!(error.contains("does not offer TLS"), "{error}");
    assert!(error.contains("sslmode=require"), "{error}");
    assert!(error.contains("cluster store unreachable"), "{error}");
    assert!(!error.contains(&password_of(&plain)), "{error}");
    // Plaintext only when the URL says so.
    let store = PgStore::open(&format!("{plain}?sslmode=disable"), "gw1").unwrap();
    assert_eq!(store.settings().unwrap(), Settings::default());
}

#[test]
fn verify_full_checks_the_ca_and_require_only_encrypts() {
    let Some(server) = support::server_url() else {
        return;
    };
    let url = support::fresh_database(&server);
    // Our own CA: accepted (the server URL already is verify-full).
    PgStore::open(&url, "gw1").unwrap();
    // Another CA: refused.
    let dir = tempfile::tempdir().unwrap();
    let other =
        postern_tls::generate_self_signed(postern_tls::KeyKind::EcdsaP256, "other-ca.test", &[])
            .unwrap();
    let other_ca = dir.path().join("other.pem");
    std::fs::write(&other_ca, other.chain_pem).unwrap();
    let ca = std::env::var("POSTERN_TEST_PG_CA").unwrap();
    let wrong = url.replace(&ca, &other_ca.display().to_string());
    let error = open_err(&wrong);
    assert!(
        error.contains("certificate") || error.contains("TLS"),
        "{error}"
    );
    assert!(!error.contains(&password_of(&url)), "{error}");
    // sslmode=require: encrypted, any certificate.
    let require = wrong.replace("sslmode=verify-full", "sslmode=require");
    PgStore::open(&require, "gw1").unwrap();
    // verify-ca: the chain, not the name; still refuses another CA.
    PgStore::open(&url.replace("verify-full", "verify-ca"), "gw1").unwrap();
    let error = open_err(&wrong.replace("verify-full", "verify-ca"));
    assert!(error.contains("certificate"), "{error}");
}

#[test]
fn scram_with_channel_binding_over_tls() {
    let Some(server) = support::server_url() else {
        return;
    };
    let url = support::fresh_database(&server);
    // `require` fails unless SCRAM-SHA-256-PLUS bound to the TLS channel.
    let store = PgStore::open(&format!("{url}&channel_binding=require"), "gw1").unwrap();
    store.generation().unwrap();
}

#[test]
fn passwords_never_appear_in_errors() {
    let Some(server) = support::server_url() else {
        return;
    };
    let url = support::fresh_database(&server);
    let real = password_of(&url);
    let wrong = url.replace(&real, "Wr0ng-Secret-Value");
    let error = open_err(&wrong);
    assert!(error.contains("password authentication failed"), "{error}");
    assert!(!error.contains("Wr0ng-Secret-Value"), "{error}");
    let store = PgStore::open(&url, "gw1").unwrap();
    assert!(!store.location().contains(&real), "{}", store.location());
    assert!(!format!("{store:?}").contains(&real));
}

#[test]
fn password_from_the_password_file() {
    let Some(server) = support::server_url() else {
        return;
    };
    let url = support::fresh_database(&server);
    let password = password_of(&url);
    let dir = tempfile::tempdir().unwrap();
    let passfile = dir.path().join("pgpass");
    std::fs::write(
        &passfile,
        format!("127.0.0.1:*:*:postern_test:{password}\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let without = url.replace(&format!(":{password}@"), "@");
    let with_file = format!("{without}&passfile={}", passfile.display());
    PgStore::open(&with_file, "gw1").unwrap();
    // And without it, refused: the file was what authenticated.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let error = open_err(&format!("{without}&passfile={}", empty.display()));
    assert!(error.contains("password"), "{error}");
}

#[test]
fn newer_schema_is_read_but_never_written() {
    let Some(server) = support::server_url() else {
        return;
    };
    let url = support::fresh_database(&server);
    let store = PgStore::open(&url, "gw1").unwrap();
    with_default_cert(&store);
    let mut settings = Settings::default();
    settings.mta.max_recipients = 9;
    store.put_settings(&settings).unwrap();
    drop(store);
    support::psql(&url, "UPDATE postern_schema SET version = 99");
    let store = PgStore::open(&url, "gw1").unwrap();
    assert_eq!(store.settings().unwrap(), settings);
    let error = store.put_settings(&Settings::default()).unwrap_err();
    assert!(
        matches!(error, StoreError::UnsupportedSchema { found: 99, .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("schema version 99"), "{text}");
    assert!(store.add_api_token("x", "hash").is_err());
    assert_eq!(
        support::psql(&url, "SELECT version FROM postern_schema"),
        "99"
    );
}

#[test]
fn schema_created_once_by_nodes_starting_together() {
    let Some(server) = support::server_url() else {
        return;
    };
    let url = support::fresh_database(&server);
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || PgStore::open(&url, &format!("gw{i}")).map(|_| ()))
        })
        .collect();
    for thread in threads {
        thread.join().unwrap().unwrap();
    }
    assert_eq!(
        support::psql(&url, "SELECT count(*) FROM postern_schema"),
        "1"
    );
    assert_eq!(
        support::psql(&url, "SELECT value FROM meta WHERE key = 'generation'"),
        "1"
    );
}

#[test]
fn a_change_on_one_node_notifies_another() {
    let Some(server) = support::server_url() else {
        return;
    };
    let url = support::fresh_database(&server);
    let a = PgStore::open(&url, "a").unwrap();
    let b = PgStore::open(&url, "b").unwrap();
    with_default_cert(&a);
    let hint = b.changes();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    // The listener signals once when it starts listening; take that one.
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), hint.notified())
            .await
            .expect("listener started");
    });
    let before = b.generation().unwrap();
    let mut settings = Settings::default();
    settings.mta.max_recipients = 11;
    a.put_settings(&settings).unwrap();
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), hint.notified())
            .await
            .expect("notified of the change");
    });
    assert!(b.generation().unwrap() > before);
    assert_eq!(b.settings().unwrap(), settings);
}

#[test]
fn a_column_of_another_type_is_an_error_naming_it_not_a_panic() {
    let Some(server) = support::server_url() else {
        return;
    };
    let url = support::fresh_database(&server);
    let store = PgStore::open(&url, "gw1").unwrap();
    store.add_api_token("ci", "hash-ci").unwrap();
    // Someone changed the schema by hand.
    support::psql(
        &url,
        "ALTER TABLE admin_credentials ALTER COLUMN created_at TYPE TEXT",
    );
    let error = store.api_tokens().unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("column created_at"), "{text}");
    // The rest of the store still works.
    assert!(store.settings().is_ok());
}
