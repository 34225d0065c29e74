//! A fresh PostgreSQL database per test on the throwaway server that
//! `scripts/pg-test-server.sh` starts (`POSTERN_TEST_PG_URL`, a superuser
//! URL with `sslmode=verify-full`). Without it the PostgreSQL tests are
//! skipped with a note — except under `CI=1`, where they fail.

#![allow(clippy::unwrap_used, dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The server URL, or `None` (skip) outside CI.
pub fn server_url() -> Option<String> {
    match std::env::var("POSTERN_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").ok().as_deref() != Some("1"),
                "CI=1 but POSTERN_TEST_PG_URL is not set: start scripts/pg-test-server.sh"
            );
            eprintln!("skipped: POSTERN_TEST_PG_URL not set (scripts/pg-test-server.sh start)");
            None
        }
    }
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (authority, _) = base.rsplit_once('/').unwrap();
    if query.is_empty() {
        format!("{authority}/{db}")
    } else {
        format!("{authority}/{db}?{query}")
    }
}

/// Run SQL on the server with psql (the real client, not ours).
pub fn psql(url: &str, sql: &str) -> String {
    let psql = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dirs| {
            let mut bins: Vec<_> = dirs
                .filter_map(|d| d.ok())
                .map(|d| d.path().join("bin/psql"))
                .filter(|p| p.exists())
                .collect();
            bins.sort();
            bins.pop()
        })
        .unwrap_or_else(|| "psql".into());
    let out = Command::new(psql)
        .args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            url,
            "-c",
            sql,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A new empty database; returns its URL.
pub fn fresh_database(server: &str) -> String {
    let name = format!(
        "t_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    psql(server, &format!("CREATE DATABASE {name}"));
    with_database(server, &name)
}
