//! Admin sessions and login attempts, shared by every node of an
//! installation (SPEC §9: a login works on every node and survives
//! restarts; a lockout reached through one node holds on all).
//!
//! The store keeps only what it needs to check a session: the SHA-256 of
//! its id (a copy of the database gives no live session), the password
//! version it was opened with, and its times. Which sessions are alive and
//! what a session may do is decided by `postern-admin`; the store keeps the
//! rows bounded (expired and surplus sessions go when a new one is made)
//! and counts login attempts atomically under the write lock, so
//! concurrent attempts on several nodes cannot overshoot the limit.

use serde::{Deserialize, Serialize};

use crate::backend::Transaction;
use crate::StoreError;

/// One admin session as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminSession {
    /// `sha256:` and the hex digest of the session id (never the id).
    pub id_hash: String,
    /// Which admin password the login was checked against.
    pub password_version: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last recorded use.
    pub last_seen: i64,
}

/// How long sessions live and how many there may be; given by the caller
/// when it creates one, so the store can drop the dead ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Seconds without use after which a session is dead.
    pub idle_secs: i64,
    /// Seconds after creation after which a session is dead.
    pub lifetime_secs: i64,
    /// Most sessions at once; the least recently used go first.
    pub max_sessions: usize,
}

/// Failed-login limits within a sliding window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginLimits {
    /// Attempts per client (address, or /64) in the window.
    pub per_client: usize,
    /// Attempts in total in the window.
    pub total: usize,
    pub window_secs: i64,
}

/// The answer to a login attempt's reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginReservation {
    /// Counted; the id is the attempt's row.
    Granted(i64),
    /// Refused: room again in this many seconds (at least 1).
    Wait(i64),
}

/// Key of the credentials version in `meta`: bumped by every change of the
/// password, a token or a session, so each node's local copy (and cache)
/// follows within a poll.
pub(crate) const CREDENTIALS_VERSION: &str = "credentials";

pub(crate) fn check_session(session: &AdminSession) -> Result<(), StoreError> {
    crate::admin::check_hash(&session.id_hash)?;
    crate::admin::check_hash(&session.password_version)
}

pub(crate) fn check_client(client: &str) -> Result<(), StoreError> {
    if client.is_empty() || client.len() > 64 || client.chars().any(char::is_control) {
        return Err(StoreError::BadName(format!(
            "login client key {client:?}: 1 to 64 printable characters"
        )));
    }
    Ok(())
}

/// Insert `session` (ending `replaces`), after dropping the dead ones and,
/// past the limit, the least recently used; inside a write transaction.
pub(crate) fn create(
    tx: &mut dyn Transaction,
    session: &AdminSession,
    replaces: Option<&str>,
    limits: &SessionLimits,
) -> Result<(), StoreError> {
    if let Some(old) = replaces {
        tx.delete_session(old)?;
    }
    let now = session.created_at;
    tx.delete_dead_sessions(
        now.saturating_sub(limits.idle_secs),
        now.saturating_sub(limits.lifetime_secs),
    )?;
    tx.keep_recent_sessions(limits.max_sessions.saturating_sub(1))?;
    tx.insert_session(session)?;
    tx.bump_credentials()
}

/// Count an attempt of `client` at `at`, or say how long to wait.
pub(crate) fn reserve(
    tx: &mut dyn Transaction,
    client: &str,
    at: i64,
    limits: &LoginLimits,
) -> Result<LoginReservation, StoreError> {
    let since = at.saturating_sub(limits.window_secs);
    // Attempts that left the window are of no use any more.
    tx.prune_login_attempts(since)?;
    let wait = |times: &[i64], max: usize| -> Option<i64> {
        if times.len() < max {
            return None;
        }
        // Room again when the oldest counted attempt leaves the window.
        let oldest = times.get(times.len() - max).copied()?;
        Some(
            limits
                .window_secs
                .saturating_sub(at.saturating_sub(oldest))
                .max(1),
        )
    };
    let all = tx.login_attempts(None, since)?;
    let mine = tx.login_attempts(Some(client), since)?;
    match wait(&all, limits.total).max(wait(&mine, limits.per_client)) {
        Some(seconds) => Ok(LoginReservation::Wait(seconds)),
        None => Ok(LoginReservation::Granted(
            tx.insert_login_attempt(client, at)?,
        )),
    }
}
