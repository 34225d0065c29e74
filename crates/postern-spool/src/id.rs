//! Queue identifiers: time-ordered, fixed-length, safe as file names.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Crockford base32: digits then letters without I, L, O, U. In ASCII order,
/// so the lexical order of encoded numbers is their numeric order.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const TIME_CHARS: usize = 11;
const RANDOM_CHARS: usize = 5;
/// Length of every queue id.
pub const QUEUE_ID_LEN: usize = TIME_CHARS + RANDOM_CHARS;
/// 11 base32 characters hold 55 bits of microseconds (about 1,100 years).
const MAX_MICROS: u64 = (1 << (5 * TIME_CHARS)) - 1;

/// The last timestamp handed out in this process, so that ids generated here
/// are strictly increasing even when the clock stands still or steps back.
static LAST_MICROS: AtomicU64 = AtomicU64::new(0);

/// Identifier of a queued message and the name of its file in `queue/`.
///
/// 16 characters `[0-9A-Z]`: 11 characters of microseconds since the Unix
/// epoch (Crockford base32), then 5 random characters. Lexical order is arrival
/// order (strictly, for ids made by one process).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(String);

impl QueueId {
    /// A new id, later than every id generated before in this process.
    pub(crate) fn generate() -> QueueId {
        let micros = next_micros();
        let random: u32 = rand::random();
        let mut s = String::with_capacity(QUEUE_ID_LEN);
        for i in (0..TIME_CHARS).rev() {
            s.push(char::from(ALPHABET[((micros >> (5 * i)) & 31) as usize]));
        }
        for i in (0..RANDOM_CHARS).rev() {
            s.push(char::from(ALPHABET[((random >> (5 * i)) & 31) as usize]));
        }
        QueueId(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn next_micros() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
        .min(MAX_MICROS);
    let mut prev = LAST_MICROS.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev.saturating_add(1)).min(MAX_MICROS);
        match LAST_MICROS.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => prev = seen,
        }
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A string that is not a queue id.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("invalid queue id {0:?}: expected {QUEUE_ID_LEN} characters 0-9 A-Z")]
pub struct InvalidQueueId(pub String);

impl FromStr for QueueId {
    type Err = InvalidQueueId;

    fn from_str(s: &str) -> Result<QueueId, InvalidQueueId> {
        let valid = s.len() == QUEUE_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
        if !valid {
            return Err(InvalidQueueId(s.to_owned()));
        }
        Ok(QueueId(s.to_owned()))
    }
}

impl Serialize for QueueId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for QueueId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<QueueId, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_good_and_bad() {
        let rows: &[(&str, bool)] = &[
            ("01JZ3K5Q8M0ABCDE", true),
            ("0000000000000000", true),
            ("ZZZZZZZZZZZZZZZZ", true),
            ("01JZ3K5Q8M0ABCD", false),   // short
            ("01JZ3K5Q8M0ABCDEF", false), // long
            ("01jz3k5q8m0abcde", false),  // lower case
            ("01JZ3K5Q8M0ABCD/", false),
            ("01JZ3K5Q8M0ABC.E", false),
            ("", false),
            ("01JZ3K5Q8M0ABCDÉ", false),
        ];
        for (s, ok) in rows {
            assert_eq!(s.parse::<QueueId>().is_ok(), *ok, "{s:?}");
        }
    }

    #[test]
    fn generated_ids_parse_and_increase() {
        let mut prev = QueueId::generate();
        for _ in 0..10_000 {
            let id = QueueId::generate();
            assert_eq!(id.as_str().parse::<QueueId>().as_ref(), Ok(&id));
            assert!(id > prev, "{id} after {prev}");
            prev = id;
        }
    }

    #[test]
    fn serde_validates() {
        let id = QueueId::generate();
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(json, format!("\"{id}\""));
        let back: QueueId = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, id);
        assert!(serde_json::from_str::<QueueId>("\"../etc/passwd\"").is_err());
    }
}
