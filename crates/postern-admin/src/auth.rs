//! Authentication building blocks, free of HTTP: password hashing
//! (argon2id), API tokens, the server-side session table with its CSRF
//! tokens, and the login rate limiter.
//!
//! * The admin password is stored as an argon2id PHC string (RFC 9106
//!   parameters as the `argon2` crate defaults them: 19 MiB, 2 passes).
//! * An API token is 32 random bytes, shown once as `pst_` + hex; the
//!   store keeps its SHA-256 only (a token has full entropy, so a slow hash
//!   adds nothing but latency to every API call).
//! * A session is a random 256-bit id in a cookie, mapped server-side to
//!   its CSRF token and times; it ends after [`SESSION_IDLE`] without use
//!   or [`SESSION_LIFETIME`] after login. Every login makes a new id.
//! * Each session remembers which password it was opened with (a
//!   [`PasswordVersion`]: a digest of the stored hash it was verified
//!   against). When the password changes, exactly the sessions of older
//!   passwords end; one opened with the new password stays, however soon
//!   after the change it was made. No clock is compared, so no race within
//!   a second.
//! * Login attempts are limited per client address and in total within a
//!   sliding window; past the limit, even a correct password is refused
//!   until the window has room again. An attempt is counted before its
//!   password is checked, so concurrent attempts cannot overshoot.
//!
//! Every function that takes the time takes it as an argument, so the
//! tests run on a clock of their own.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
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
}

/// What a valid session cookie gives a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: String,
    /// The token every state-changing request of this session must carry.
    pub csrf: String,
}

struct SessionEntry {
    csrf: String,
    password: PasswordVersion,
    created: Instant,
    last_seen: Instant,
}

/// The server-side session table.
pub struct Sessions {
    entries: Mutex<HashMap<String, SessionEntry>>,
    idle: Duration,
    lifetime: Duration,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new(SESSION_IDLE, SESSION_LIFETIME)
    }
}

impl Sessions {
    pub fn new(idle: Duration, lifetime: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            idle,
            lifetime,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionEntry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Start a new session (at login) for the password of version
    /// `password` (the one the login was checked against). `replaces` is
    /// the session the browser had before, if any: it ends now, so an id
    /// planted before login is worthless after it.
    pub fn create(
        &self,
        replaces: Option<&str>,
        password: PasswordVersion,
        now: Instant,
    ) -> SessionInfo {
        let info = SessionInfo {
            id: random_hex(32),
            csrf: random_hex(32),
        };
        let mut entries = self.lock();
        if let Some(old) = replaces {
            entries.remove(old);
        }
        entries.retain(|_, e| self.alive(e, now));
        while entries.len() >= MAX_SESSIONS {
            let oldest = entries
                .iter()
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => entries.remove(&id),
                None => break,
            };
        }
        entries.insert(
            info.id.clone(),
            SessionEntry {
                csrf: info.csrf.clone(),
                password,
                created: now,
                last_seen: now,
            },
        );
        info
    }

    fn alive(&self, entry: &SessionEntry, now: Instant) -> bool {
        now.saturating_duration_since(entry.last_seen) < self.idle
            && now.saturating_duration_since(entry.created) < self.lifetime
    }

    /// The session with this id, if it is alive; marks it used.
    pub fn get(&self, id: &str, now: Instant) -> Option<SessionInfo> {
        let mut entries = self.lock();
        let alive = entries.get(id).map(|e| self.alive(e, now))?;
        if !alive {
            entries.remove(id);
            return None;
        }
        let entry = entries.get_mut(id)?;
        entry.last_seen = now;
        Some(SessionInfo {
            id: id.to_string(),
            csrf: entry.csrf.clone(),
        })
    }

    /// End a session (logout).
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// The password changed to `current`: end every session opened with
    /// another (older) password. Returns how many ended.
    pub fn end_other_passwords(&self, current: &PasswordVersion) -> usize {
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|_, e| e.password == *current);
        before - entries.len()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Failed-login limits: per client address (IPv6 by /64) and in total.
pub struct LoginLimiter {
    per_client: usize,
    total: usize,
    window: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Default)]
struct LimiterState {
    clients: HashMap<IpAddr, VecDeque<Instant>>,
    all: VecDeque<Instant>,
}

impl Default for LoginLimiter {
    /// 5 failures per client and 30 in total per minute.
    fn default() -> Self {
        Self::new(5, 30, Duration::from_secs(60))
    }
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

fn expire(queue: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while queue
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= window)
    {
        queue.pop_front();
    }
}

impl LoginLimiter {
    pub fn new(per_client: usize, total: usize, window: Duration) -> Self {
        Self {
            per_client,
            total,
            window,
            state: Mutex::new(LimiterState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimiterState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reserve a login attempt for `ip` now, or say how long to wait.
    ///
    /// The attempt counts from this moment, before the password is
    /// checked: a burst of concurrent attempts gets exactly as many
    /// checks as the limit allows, never one per connection that got in
    /// before the first failure was recorded. A reservation that turns
    /// out right is given back with [`LoginLimiter::success`].
    pub fn reserve(&self, ip: IpAddr, now: Instant) -> Result<Attempt, Duration> {
        let key = client_key(ip);
        let window = self.window;
        let mut state = self.lock();
        // Bound memory under a flood from many addresses.
        if state.clients.len() > 10_000 {
            state.clients.retain(|_, q| {
                expire(q, now, window);
                !q.is_empty()
            });
        }
        expire(&mut state.all, now, window);
        let wait = |queue: &VecDeque<Instant>, max: usize| -> Option<Duration> {
            if queue.len() < max {
                return None;
            }
            // Room again when the oldest counted attempt leaves the window.
            let oldest = queue.get(queue.len() - max).copied()?;
            Some(
                window
                    .saturating_sub(now.saturating_duration_since(oldest))
                    .max(Duration::from_secs(1)),
            )
        };
        let mut retry = wait(&state.all, self.total);
        let queue = state.clients.entry(key).or_default();
        expire(queue, now, window);
        retry = retry.max(wait(queue, self.per_client));
        if let Some(wait) = retry {
            if queue.is_empty() {
                state.clients.remove(&key);
            }
            return Err(wait);
        }
        queue.push_back(now);
        state.all.push_back(now);
        Ok(Attempt { key, at: now })
    }

    /// The reserved attempt succeeded: it does not count, and the client's
    /// earlier failures are forgotten.
    pub fn success(&self, attempt: Attempt) {
        let mut state = self.lock();
        state.clients.remove(&attempt.key);
        if let Some(index) = state.all.iter().position(|t| *t == attempt.at) {
            state.all.remove(index);
        }
    }
}

/// A login attempt [`LoginLimiter::reserve`] counted. Dropping it leaves it
/// counted (a failure).
#[derive(Debug)]
#[must_use = "a successful attempt must be given back with LoginLimiter::success"]
pub struct Attempt {
    key: IpAddr,
    at: Instant,
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

    #[test]
    fn sessions_expire_when_idle_and_at_the_end_of_their_lifetime() {
        let sessions = Sessions::new(Duration::from_secs(60), Duration::from_secs(300));
        let t0 = Instant::now();
        let s = sessions.create(None, v1(), t0);
        assert_eq!(s.id.len(), 64);
        assert_ne!(s.id, s.csrf);
        assert_eq!(
            sessions.get(&s.id, t0 + Duration::from_secs(30)),
            Some(s.clone())
        );
        // Used at 30 s: still alive at 80 s.
        assert!(sessions.get(&s.id, t0 + Duration::from_secs(80)).is_some());
        // Idle for 60 s: gone.
        assert!(sessions.get(&s.id, t0 + Duration::from_secs(141)).is_none());
        assert!(sessions.is_empty());

        let s = sessions.create(None, v1(), t0);
        for step in 1..=5 {
            let now = t0 + Duration::from_secs(step * 50);
            let alive = sessions.get(&s.id, now).is_some();
            assert_eq!(alive, step * 50 < 300, "at {}s", step * 50);
        }
        assert!(sessions.get(&s.id, t0 + Duration::from_secs(301)).is_none());
        assert!(sessions.get("unknown", t0).is_none());
    }

    #[test]
    fn login_makes_a_new_session_and_ends_the_old_one() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let before = sessions.create(None, v1(), now);
        let after = sessions.create(Some(&before.id), v1(), now);
        assert_ne!(before.id, after.id);
        assert_ne!(before.csrf, after.csrf);
        assert!(sessions.get(&before.id, now).is_none(), "fixation");
        assert!(sessions.get(&after.id, now).is_some());
        // A planted id that was never issued is simply unknown.
        let planted = random_hex(32);
        let fresh = sessions.create(Some(&planted), v1(), now);
        assert_ne!(fresh.id, planted);
        sessions.remove(&fresh.id);
        assert!(sessions.get(&fresh.id, now).is_none());
    }

    #[test]
    fn session_table_is_bounded() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let first = sessions.create(None, v1(), t0);
        for i in 1..=MAX_SESSIONS {
            sessions.create(
                None,
                v1(),
                t0 + Duration::from_millis(u64::try_from(i).unwrap_or(0)),
            );
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert!(sessions
            .get(&first.id, t0 + Duration::from_secs(1))
            .is_none());
    }

    #[test]
    fn a_password_change_ends_only_the_sessions_of_older_passwords() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let old = sessions.create(None, v1(), now);
        let v2 = PasswordVersion::of("$argon2id$v=19$second");
        assert_ne!(v1(), v2);
        // Opened with the new password before the change was noticed.
        let new = sessions.create(None, v2.clone(), now);
        assert_eq!(sessions.end_other_passwords(&v2), 1);
        assert!(sessions.get(&old.id, now).is_none(), "old session survived");
        assert!(sessions.get(&new.id, now).is_some(), "new session ended");
        // Noticing the same password again ends nothing.
        assert_eq!(sessions.end_other_passwords(&v2), 0);
        assert!(sessions.get(&new.id, now).is_some());
    }

    #[test]
    fn csrf_token_belongs_to_its_session() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let a = sessions.create(None, v1(), now);
        let b = sessions.create(None, v1(), now);
        let a_seen = sessions.get(&a.id, now).expect("a");
        assert!(constant_time_eq(&a_seen.csrf, &a.csrf));
        assert!(!constant_time_eq(&a_seen.csrf, &b.csrf));
    }

    #[test]
    fn rate_limit_per_client() {
        let limiter = LoginLimiter::new(5, 100, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        let t0 = Instant::now();
        for i in 0..5 {
            let attempt = limiter.reserve(ip, t0 + Duration::from_secs(i));
            assert!(attempt.is_ok(), "attempt {i}");
        }
        let wait = limiter
            .reserve(ip, t0 + Duration::from_secs(10))
            .expect_err("locked");
        assert_eq!(wait, Duration::from_secs(50));
        // Others are not affected.
        assert!(limiter.reserve(other, t0 + Duration::from_secs(10)).is_ok());
        // The oldest attempt leaves the window at 60 s.
        assert!(limiter.reserve(ip, t0 + Duration::from_secs(60)).is_ok());
        // A success clears the client's record.
        let right = limiter
            .reserve(ip, t0 + Duration::from_secs(61))
            .expect("room at 61 s");
        limiter.success(right);
        for i in 0..5 {
            let attempt = limiter.reserve(ip, t0 + Duration::from_secs(62));
            assert!(attempt.is_ok(), "after success, attempt {i}");
        }
    }

    #[test]
    fn attempts_count_before_they_are_checked() {
        // A burst: every attempt reserved before any finished.
        let limiter = LoginLimiter::new(5, 30, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let t0 = Instant::now();
        let granted: Vec<Attempt> = (0..120)
            .filter_map(|_| limiter.reserve(ip, t0).ok())
            .collect();
        assert_eq!(granted.len(), 5);
        // A success gives its own slot back, in total too.
        let limiter = LoginLimiter::new(5, 2, Duration::from_secs(60));
        let first = limiter.reserve(ip, t0).expect("first");
        let _second = limiter
            .reserve(IpAddr::from([192, 0, 2, 9]), t0)
            .expect("second");
        assert!(limiter.reserve(ip, t0).is_err(), "total reached");
        limiter.success(first);
        assert!(limiter.reserve(ip, t0).is_ok(), "slot given back");
    }

    #[test]
    fn rate_limit_global_and_ipv6_prefix() {
        let limiter = LoginLimiter::new(3, 5, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..5u8 {
            let ip = IpAddr::from([198, 51, 100, i]);
            assert!(limiter.reserve(ip, t0).is_ok());
        }
        let fresh: IpAddr = "203.0.113.9".parse().expect("ip");
        assert!(limiter.reserve(fresh, t0).is_err(), "global limit");
        assert!(limiter.reserve(fresh, t0 + Duration::from_secs(60)).is_ok());

        let limiter = LoginLimiter::new(2, 100, Duration::from_secs(60));
        let a: IpAddr = "2001:db8::1".parse().expect("ip");
        let b: IpAddr = "2001:db8::2".parse().expect("ip");
        let far: IpAddr = "2001:db8:1::1".parse().expect("ip");
        assert!(limiter.reserve(a, t0).is_ok());
        assert!(limiter.reserve(b, t0).is_ok());
        assert!(limiter.reserve(a, t0).is_err(), "same /64");
        assert!(limiter.reserve(far, t0).is_ok());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert!(limiter.reserve(mapped, t0).is_ok());
        assert!(limiter.reserve(IpAddr::from([192, 0, 2, 7]), t0).is_ok());
        assert!(limiter.reserve(IpAddr::from([192, 0, 2, 7]), t0).is_err());
    }
}
