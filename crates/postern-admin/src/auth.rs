//! Authentication building blocks, free of HTTP: password hashing
//! (argon2id), API tokens, the server-side session table with its CSRF
//! tokens, and the login rate limiter.
//!
//! * The admin password is stored as an argon2id PHC string (RFC 9106
//!   parameters as the `argon2` crate defaults them: 19 MiB, 2 passes).
//! * An API token is 32 random bytes, shown once as `pst_` + hex; the
//!   store keeps its SHA-256 only (a token has full entropy, so a slow hash
//!   adds nothing but latency to every API call).
//! * A session is a random 256-bit id in a cookie; the store keeps its
//!   SHA-256 with its times (every node shares the table, and a copy of
//!   the store gives no live session). Its CSRF token is derived from the
//!   id. It ends after [`SESSION_IDLE`] without use or
//!   [`SESSION_LIFETIME`] after login. Every login makes a new id.
//! * Each session remembers which password it was opened with (a
//!   [`PasswordVersion`]: a digest of the stored hash it was verified
//!   against). When the password changes, exactly the sessions of older
//!   passwords end; one opened with the new password stays, however soon
//!   after the change it was made. No clock is compared, so no race within
//!   a second.
//! * Login attempts are limited per client address and in total within a
//!   sliding window, counted in the store (shared by every node); past the
//!   limit, even a correct password is refused until the window has room
//!   again. An attempt is counted before its password is checked, so
//!   concurrent attempts cannot overshoot.
//!
//! Every function that takes the time takes it as an argument (unix
//! seconds), so the tests run on a clock of their own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use postern_store::{
    AdminSession, LoginLimits, LoginReservation, SessionLimits, Store, StoreError,
};
use rand::RngCore;

/// Prefix of API tokens, so they are recognisable in configs and logs.
pub const TOKEN_PREFIX: &str = "pst_";
/// Sessions end after this long without a request.
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// Sessions end this long after login, used or not.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// At most this many sessions at once; the oldest go first.
pub const MAX_SESSIONS: usize = 1000;
/// Shortest admin password accepted by `postern admin passwd`.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longest admin password accepted (argon2 hashes any length; this bounds
/// the work per login attempt).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Why a password cannot be set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordError(pub String);

impl std::fmt::Display for PasswordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PasswordError {}

/// Check a new admin password: long enough, not too long, printable.
pub fn check_new_password(password: &str) -> Result<(), PasswordError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordError(format!(
            "the password must have at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError(format!(
            "the password must not be longer than {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    if password.chars().any(char::is_control) {
        return Err(PasswordError(
            "the password must not contain control characters (line breaks, tabs)".into(),
        ));
    }
    Ok(())
}

/// The argon2id PHC string of `password`, with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| PasswordError(format!("hashing the password failed: {e}")))
}

/// Whether `password` matches the PHC string `hash`. A malformed hash or an
/// over-long password never matches.
pub fn verify_password(hash: &str, password: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// A new random admin password: 20 characters from an alphabet without
/// look-alikes (about 115 bits).
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| {
            let index = usize::try_from(rng.next_u32()).unwrap_or(0) % ALPHABET.len();
            char::from(ALPHABET.get(index).copied().unwrap_or(b'x'))
        })
        .collect()
}

/// `bytes` random bytes as lower-case hex, from the thread's CSPRNG.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex(&buf)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// A new API token, shown to the administrator once.
pub fn new_token() -> String {
    format!("{TOKEN_PREFIX}{}", random_hex(32))
}

/// What the store keeps of a token: `sha256:` and the hex digest.
pub fn token_hash(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    format!("sha256:{}", hex(digest.as_ref()))
}

/// Whether a string has the shape of one of our tokens (cheap check before
/// a store lookup).
pub fn looks_like_token(token: &str) -> bool {
    token
        .strip_prefix(TOKEN_PREFIX)
        .is_some_and(|rest| rest.len() == 64 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Compare secrets without an early exit on the first difference.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Which admin password a session was opened with: the SHA-256 of the
/// stored PHC string (salted, so setting the same password again is a new
/// version too). The hash itself is not kept in the session table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordVersion(String);

impl PasswordVersion {
    /// The version of the password stored as `phc_hash`.
    pub fn of(phc_hash: &str) -> Self {
        Self(token_hash(phc_hash))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a valid session cookie gives a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: String,
    /// The token every state-changing request of this session must carry.
    pub csrf: String,
}

/// The CSRF token of session `id`: derived from the id (a one-way hash
/// with its own label), so no node has to store it and a leaked CSRF
/// token does not give the session.
fn csrf_of(id: &str) -> String {
    token_hash(&format!("postern-csrf\0{id}"))
        .trim_start_matches("sha256:")
        .to_string()
}

/// Unix seconds of `at`.
pub fn unix_seconds(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// A use is written to the store at most this often per session (the idle
/// timeout is that much less exact; a request costs no write).
pub const TOUCH_EVERY_SECS: i64 = 60;

/// How long a node trusts a session it validated without asking the
/// store again: a logout or a password change on another node takes effect
/// here within this time.
pub const VALIDATED_FOR: Duration = Duration::from_secs(1);

struct Validated {
    at: Instant,
    info: SessionInfo,
}

/// The session table, kept in the store so that every node of an
/// installation shares it and it survives restarts; the store holds only
/// the SHA-256 of each id. Validated sessions are remembered here for
/// [`VALIDATED_FOR`], so most requests cost no store round trip.
///
/// Blocking: call from `spawn_blocking` (except [`Sessions::cached`]).
pub struct Sessions {
    store: Arc<dyn Store>,
    limits: SessionLimits,
    validated_for: Duration,
    validated: Mutex<HashMap<String, Validated>>,
}

impl Sessions {
    pub fn new(store: Arc<dyn Store>, idle: Duration, lifetime: Duration) -> Self {
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Self {
            store,
            limits: SessionLimits {
                idle_secs: secs(idle),
                lifetime_secs: secs(lifetime),
                max_sessions: MAX_SESSIONS,
            },
            validated_for: VALIDATED_FOR,
            validated: Mutex::new(HashMap::new()),
        }
    }

    /// With the default idle timeout and lifetime.
    pub fn with_defaults(store: Arc<dyn Store>) -> Self {
        Self::new(store, SESSION_IDLE, SESSION_LIFETIME)
    }

    /// How long a validated session is trusted without the store (tests
    /// set zero to see every change at once).
    pub fn validated_for(mut self, duration: Duration) -> Self {
        self.validated_for = duration;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Validated>> {
        self.validated
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Start a new session (at login) at `now` (unix seconds) for the
    /// password of version `password` (the one the login was checked
    /// against). `replaces` is the session the browser had before, if any:
    /// it ends now, so an id planted before login is worthless after it.
    pub fn create(
        &self,
        replaces: Option<&str>,
        password: &PasswordVersion,
        now: i64,
    ) -> Result<SessionInfo, StoreError> {
        let id = random_hex(32);
        let replaced = replaces.map(token_hash);
        self.store.create_admin_session(
            &AdminSession {
                id_hash: token_hash(&id),
                password_version: password.0.clone(),
                created_at: now,
                last_seen: now,
            },
            replaced.as_deref(),
            &self.limits,
        )?;
        if let Some(old) = &replaced {
            self.lock().remove(old);
        }
        Ok(SessionInfo {
            csrf: csrf_of(&id),
            id,
        })
    }

    /// The session with this id if this node validated it within
    /// [`VALIDATED_FOR`]; no store access, so callable from async code.
    pub fn cached(&self, id: &str) -> Option<SessionInfo> {
        let hash = token_hash(id);
        let validated = self.lock();
        validated
            .get(&hash)
            .filter(|v| v.at.elapsed() < self.validated_for)
            .map(|v| v.info.clone())
    }

    /// The session with this id, if it is alive at `now` (unix seconds)
    /// and was opened with the current admin password; records the use.
    pub fn get(&self, id: &str, now: i64) -> Result<Option<SessionInfo>, StoreError> {
        if !is_session_id(id) {
            return Ok(None);
        }
        if let Some(info) = self.cached(id) {
            return Ok(Some(info));
        }
        let hash = token_hash(id);
        self.lock().remove(&hash);
        let Some(row) = self.store.admin_session(&hash)? else {
            return Ok(None);
        };
        let alive = now.saturating_sub(row.last_seen) < self.limits.idle_secs
            && now.saturating_sub(row.created_at) < self.limits.lifetime_secs;
        if !alive {
            // Best effort: the next login drops dead rows anyway.
            let _ = self.store.delete_admin_session(&hash);
            return Ok(None);
        }
        // Opened with an older password: ended by the change, on every
        // node, even before any node purged the row.
        let current = self
            .store
            .admin_password_hash()?
            .map(|h| PasswordVersion::of(&h));
        if current.as_ref().map(|v| v.0.as_str()) != Some(row.password_version.as_str()) {
            return Ok(None);
        }
        if now.saturating_sub(row.last_seen) >= TOUCH_EVERY_SECS {
            // Fails while the cluster store is unreachable: the session
            // still works from the local copy meanwhile.
            if let Err(e) = self.store.touch_admin_session(&hash, now) {
                tracing::debug!("admin session use not recorded: {e}");
            }
        }
        let info = SessionInfo {
            csrf: csrf_of(id),
            id: id.to_string(),
        };
        let mut validated = self.lock();
        if validated.len() >= MAX_SESSIONS {
            let keep = self.validated_for;
            validated.retain(|_, v| v.at.elapsed() < keep);
        }
        if validated.len() < MAX_SESSIONS {
            validated.insert(
                hash,
                Validated {
                    at: Instant::now(),
                    info: info.clone(),
                },
            );
        }
        Ok(Some(info))
    }

    /// End a session (logout), on every node.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let hash = token_hash(id);
        self.lock().remove(&hash);
        self.store.delete_admin_session(&hash).map(|_| ())
    }

    /// The password changed to `current`: end every session opened with
    /// another (older) password. Returns how many ended.
    pub fn end_other_passwords(&self, current: &PasswordVersion) -> Result<usize, StoreError> {
        self.lock().clear();
        self.store.end_admin_sessions_except(&current.0)
    }
}

/// Whether a cookie value has the shape of our session ids (64 hex
/// digits): anything else is not looked up.
fn is_session_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Failed-login limits, per client address (IPv6 by /64) and in total,
/// counted in the store: a lockout reached through one node holds on
/// every node. Blocking: call from `spawn_blocking`.
pub struct LoginLimiter {
    store: Arc<dyn Store>,
    limits: LoginLimits,
}

/// The key a client's failures are counted under: the address, or its /64
/// for IPv6 (one host usually has a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                for s in segments.iter_mut().skip(4) {
                    *s = 0;
                }
                IpAddr::from(segments)
            }
        },
    }
}

impl LoginLimiter {
    pub fn new(store: Arc<dyn Store>, per_client: usize, total: usize, window: Duration) -> Self {
        Self {
            store,
            limits: LoginLimits {
                per_client,
                total,
                window_secs: i64::try_from(window.as_secs()).unwrap_or(i64::MAX),
            },
        }
    }

    /// 5 failures per client and 30 in total per minute.
    pub fn with_defaults(store: Arc<dyn Store>) -> Self {
        Self::new(store, 5, 30, Duration::from_secs(60))
    }

    /// Reserve a login attempt for `ip` at `now` (unix seconds), or say
    /// how long to wait.
    ///
    /// The attempt counts from this moment, before the password is
    /// checked: a burst of concurrent attempts, on any nodes, gets exactly
    /// as many checks as the limit allows. A reservation that turns out
    /// right is given back with [`LoginLimiter::success`].
    pub fn reserve(&self, ip: IpAddr, now: i64) -> Result<Result<Attempt, Duration>, StoreError> {
        let key = client_key(ip).to_string();
        Ok(
            match self.store.reserve_login_attempt(&key, now, &self.limits)? {
                LoginReservation::Granted(_) => Ok(Attempt { key }),
                LoginReservation::Wait(seconds) => Err(Duration::from_secs(
                    u64::try_from(seconds).unwrap_or(1).max(1),
                )),
            },
        )
    }

    /// The reserved attempt succeeded: it does not count, and the client's
    /// earlier failures are forgotten.
    pub fn success(&self, attempt: Attempt) -> Result<(), StoreError> {
        self.store.forget_login_attempts(&attempt.key)
    }
}

/// A login attempt [`LoginLimiter::reserve`] counted. Dropping it leaves it
/// counted (a failure).
#[derive(Debug)]
#[must_use = "a successful attempt must be given back with LoginLimiter::success"]
pub struct Attempt {
    key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1() -> PasswordVersion {
        PasswordVersion::of("$argon2id$v=19$first")
    }

    #[test]
    fn password_hash_and_verify() {
        let hash = hash_password("correct horse battery").expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password(&hash, "correct horse battery"));
        assert!(!verify_password(&hash, "correct horse batterY"));
        assert!(!verify_password(&hash, ""));
        assert!(!verify_password("not a phc string", "x"));
        assert!(!verify_password(&hash, &"x".repeat(MAX_PASSWORD_BYTES + 1)));
        // Salted: the same password hashes differently each time.
        let again = hash_password("correct horse battery").expect("hash");
        assert_ne!(hash, again);
        assert!(verify_password(&again, "correct horse battery"));
    }

    #[test]
    fn new_passwords_are_checked() {
        assert!(check_new_password("short").is_err());
        assert!(check_new_password("long enough password").is_ok());
        assert!(check_new_password("line\nbreak in it").is_err());
        assert!(check_new_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
        let generated = generate_password();
        assert_eq!(generated.len(), 20);
        assert!(check_new_password(&generated).is_ok());
        assert_ne!(generated, generate_password());
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let token = new_token();
        assert!(looks_like_token(&token), "{token}");
        assert_ne!(token, new_token());
        let hash = token_hash(&token);
        assert!(
            hash.starts_with("sha256:") && hash.len() == 7 + 64,
            "{hash}"
        );
        assert_eq!(hash, token_hash(&token));
        assert_ne!(hash, token_hash(&new_token()));
        assert!(!looks_like_token("pst_short"));
        assert!(!looks_like_token(&format!("xyz_{}", "a".repeat(64))));
        assert!(!looks_like_token(&format!("pst_{}", "g".repeat(64))));
        assert_eq!(
            token_hash("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
        assert!(constant_time_eq("", ""));
    }

    /// Two nodes on one store: two connections to one SQLite file.
    struct Nodes {
        _dir: tempfile::TempDir,
        a: Arc<dyn Store>,
        b: Arc<dyn Store>,
    }

    fn nodes() -> Nodes {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.db");
        let open = || -> Arc<dyn Store> {
            Arc::new(postern_store::SqliteStore::open(&path, "gw").expect("store"))
        };
        let (a, b) = (open(), open());
        a.set_admin_password_hash(V1).expect("password");
        Nodes { _dir: dir, a, b }
    }

    const V1: &str = "$argon2id$v=19$first";
    const T0: i64 = 1_700_000_000;

    fn sessions(store: &Arc<dyn Store>, idle: u64, lifetime: u64) -> Sessions {
        Sessions::new(
            Arc::clone(store),
            Duration::from_secs(idle),
            Duration::from_secs(lifetime),
        )
        .validated_for(Duration::ZERO)
    }

    #[test]
    fn sessions_expire_when_idle_and_at_the_end_of_their_lifetime() {
        let n = nodes();
        let sessions = sessions(&n.a, 120, 1000);
        let s = sessions.create(None, &v1(), T0).expect("create");
        assert_eq!(s.id.len(), 64);
        assert_ne!(s.id, s.csrf);
        assert_eq!(sessions.get(&s.id, T0 + 30).expect("get"), Some(s.clone()));
        // Used at 70 s (recorded: a minute since the last record): alive at 180 s.
        assert!(sessions.get(&s.id, T0 + 70).expect("get").is_some());
        assert!(sessions.get(&s.id, T0 + 180).expect("get").is_some());
        // Idle for 120 s since the last recorded use: gone.
        assert!(sessions.get(&s.id, T0 + 301).expect("get").is_none());
        assert_eq!(n.a.admin_session(&token_hash(&s.id)).expect("row"), None);

        let sessions = self::sessions(&n.a, 120, 300);
        let s = sessions.create(None, &v1(), T0).expect("create");
        for step in 1..=5 {
            let at = T0 + step * 60;
            let alive = sessions.get(&s.id, at).expect("get").is_some();
            assert_eq!(alive, step * 60 < 300, "at {}s", step * 60);
        }
        assert!(sessions.get("unknown", T0).expect("get").is_none());
    }

    #[test]
    fn a_session_made_on_one_node_works_on_another_and_ends_everywhere() {
        let n = nodes();
        let on_a = sessions(&n.a, 1800, 3600);
        let on_b = sessions(&n.b, 1800, 3600);
        let s = on_a.create(None, &v1(), T0).expect("create");
        assert_eq!(on_b.get(&s.id, T0 + 1).expect("get"), Some(s.clone()));
        // The store has only the id's hash.
        assert!(n.a.admin_session(&s.id).expect("row").is_none());
        assert!(n
            .a
            .admin_session(&token_hash(&s.id))
            .expect("row")
            .is_some());
        on_b.remove(&s.id).expect("logout");
        assert!(on_a.get(&s.id, T0 + 2).expect("get").is_none());
    }

    #[test]
    fn a_validated_session_is_trusted_only_briefly() {
        let n = nodes();
        let on_a =
            Sessions::with_defaults(Arc::clone(&n.a)).validated_for(Duration::from_secs(3600));
        let on_b = sessions(&n.b, 1800, 3600);
        let s = on_b.create(None, &v1(), T0).expect("create");
        assert!(on_a.get(&s.id, T0).expect("get").is_some());
        on_b.remove(&s.id).expect("logout");
        // Within the validation window node A still trusts it ...
        assert!(on_a.cached(&s.id).is_some());
        // ... and with none, it asks the store.
        let strict = on_a.validated_for(Duration::ZERO);
        assert!(strict.cached(&s.id).is_none());
        assert!(strict.get(&s.id, T0).expect("get").is_none());
    }

    #[test]
    fn login_makes_a_new_session_and_ends_the_old_one() {
        let n = nodes();
        let sessions = sessions(&n.a, 1800, 3600);
        let before = sessions.create(None, &v1(), T0).expect("create");
        let after = sessions
            .create(Some(&before.id), &v1(), T0)
            .expect("create");
        assert_ne!(before.id, after.id);
        assert_ne!(before.csrf, after.csrf);
        assert!(
            sessions.get(&before.id, T0).expect("get").is_none(),
            "fixation"
        );
        assert!(sessions.get(&after.id, T0).expect("get").is_some());
        // A planted id that was never issued is simply unknown.
        let planted = random_hex(32);
        let fresh = sessions.create(Some(&planted), &v1(), T0).expect("create");
        assert_ne!(fresh.id, planted);
        assert!(sessions.get(&planted, T0).expect("get").is_none());
        sessions.remove(&fresh.id).expect("remove");
        assert!(sessions.get(&fresh.id, T0).expect("get").is_none());
    }

    #[test]
    fn session_table_is_bounded() {
        let n = nodes();
        let sessions = sessions(&n.a, 1800, 3600);
        let first = sessions.create(None, &v1(), T0).expect("create");
        for i in 1..=i64::try_from(MAX_SESSIONS).unwrap_or(0) {
            sessions.create(None, &v1(), T0 + i).expect("create");
        }
        assert!(sessions.get(&first.id, T0 + 1001).expect("get").is_none());
    }

    #[test]
    fn a_password_change_ends_only_the_sessions_of_older_passwords() {
        let n = nodes();
        let on_a = sessions(&n.a, 1800, 3600);
        let on_b = sessions(&n.b, 1800, 3600);
        let old = on_a.create(None, &v1(), T0).expect("create");
        let v2_hash = "$argon2id$v=19$second";
        let v2 = PasswordVersion::of(v2_hash);
        assert_ne!(v1(), v2);
        n.b.set_admin_password_hash(v2_hash).expect("change");
        // Opened with the new password before any node purged the old rows.
        let new = on_b.create(None, &v2, T0).expect("create");
        // The old session is dead at once, on every node ...
        assert!(
            on_a.get(&old.id, T0).expect("get").is_none(),
            "old session survived"
        );
        assert!(
            on_b.get(&new.id, T0).expect("get").is_some(),
            "new session ended"
        );
        // ... and its row goes when a node notices the change.
        assert_eq!(on_a.end_other_passwords(&v2).expect("end"), 1);
        assert_eq!(on_b.end_other_passwords(&v2).expect("end"), 0);
        assert!(on_a.get(&new.id, T0).expect("get").is_some());
    }

    #[test]
    fn csrf_token_belongs_to_its_session() {
        let n = nodes();
        let sessions = sessions(&n.a, 1800, 3600);
        let a = sessions.create(None, &v1(), T0).expect("create");
        let b = sessions.create(None, &v1(), T0).expect("create");
        let a_seen = sessions.get(&a.id, T0).expect("get").expect("a");
        assert!(constant_time_eq(&a_seen.csrf, &a.csrf));
        assert!(!constant_time_eq(&a_seen.csrf, &b.csrf));
        assert_eq!(a.csrf.len(), 64);
    }

    fn limiter(store: &Arc<dyn Store>, per_client: usize, total: usize) -> LoginLimiter {
        LoginLimiter::new(
            Arc::clone(store),
            per_client,
            total,
            Duration::from_secs(60),
        )
    }

    fn reserve(l: &LoginLimiter, ip: IpAddr, at: i64) -> Result<Attempt, Duration> {
        l.reserve(ip, at).expect("store")
    }

    #[test]
    fn rate_limit_per_client_on_every_node() {
        let n = nodes();
        let (on_a, on_b) = (limiter(&n.a, 5, 100), limiter(&n.b, 5, 100));
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        for i in 0..5 {
            let node = if i % 2 == 0 { &on_a } else { &on_b };
            assert!(reserve(node, ip, T0 + i).is_ok(), "attempt {i}");
        }
        let wait = reserve(&on_b, ip, T0 + 10).expect_err("locked");
        assert_eq!(wait, Duration::from_secs(50));
        assert!(reserve(&on_a, ip, T0 + 10).is_err(), "locked on A too");
        // Others are not affected.
        assert!(reserve(&on_a, other, T0 + 10).is_ok());
        // The oldest attempt leaves the window at 60 s.
        assert!(reserve(&on_a, ip, T0 + 60).is_ok());
        // A success clears the client's record.
        let right = reserve(&on_b, ip, T0 + 61).expect("room at 61 s");
        on_b.success(right).expect("success");
        for i in 0..5 {
            assert!(
                reserve(&on_a, ip, T0 + 62).is_ok(),
                "after success, attempt {i}"
            );
        }
    }

    #[test]
    fn attempts_count_before_they_are_checked() {
        let n = nodes();
        let l = limiter(&n.a, 5, 30);
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let granted: Vec<Attempt> = (0..20).filter_map(|_| reserve(&l, ip, T0).ok()).collect();
        assert_eq!(granted.len(), 5);
        // A success gives its own slot back, in total too.
        let n = nodes();
        let l = limiter(&n.a, 5, 2);
        let first = reserve(&l, ip, T0).expect("first");
        let _second = reserve(&l, IpAddr::from([192, 0, 2, 9]), T0).expect("second");
        assert!(reserve(&l, ip, T0).is_err(), "total reached");
        l.success(first).expect("success");
        assert!(reserve(&l, ip, T0).is_ok(), "slot given back");
    }

    #[test]
    fn rate_limit_global_and_ipv6_prefix() {
        let n = nodes();
        let l = limiter(&n.a, 3, 5);
        for i in 0..5u8 {
            assert!(reserve(&l, IpAddr::from([198, 51, 100, i]), T0).is_ok());
        }
        let fresh: IpAddr = "203.0.113.9".parse().expect("ip");
        assert!(reserve(&l, fresh, T0).is_err(), "global limit");
        assert!(reserve(&l, fresh, T0 + 60).is_ok());

        let n = nodes();
        let l = limiter(&n.a, 2, 100);
        let a: IpAddr = "2001:db8::1".parse().expect("ip");
        let b: IpAddr = "2001:db8::2".parse().expect("ip");
        let far: IpAddr = "2001:db8:1::1".parse().expect("ip");
        assert!(reserve(&l, a, T0).is_ok());
        assert!(reserve(&l, b, T0).is_ok());
        assert!(reserve(&l, a, T0).is_err(), "same /64");
        assert!(reserve(&l, far, T0).is_ok());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert!(reserve(&l, mapped, T0).is_ok());
        assert!(reserve(&l, IpAddr::from([192, 0, 2, 7]), T0).is_ok());
        assert!(reserve(&l, IpAddr::from([192, 0, 2, 7]), T0).is_err());
    }
}
