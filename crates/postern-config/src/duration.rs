//! Durations written the way administrators write them: `300s`, `5m`, `1h`, `5d`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A whole number of seconds, written with a unit suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(u64);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(secs)
    }
    pub const fn as_secs(self) -> u64 {
        self.0
    }
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0)
    }
}

const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

impl FromStr for Duration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let expected = "a duration such as \"30s\", \"5m\", \"1h\" or \"5d\"";
        let Some(unit) = text.chars().last() else {
            return Err(format!("empty value; expected {expected}"));
        };
        let (digits, multiplier) = match UNITS.iter().find(|(u, _)| *u == unit) {
            Some((_, m)) => (&text[..text.len() - 1], *m),
            None => return Err(format!("\"{text}\" has no unit; expected {expected}")),
        };
        let count: u64 = digits
            .parse()
            .map_err(|_| format!("\"{text}\" is not {expected}"))?;
        count
            .checked_mul(multiplier)
            .map(Duration)
            .ok_or_else(|| format!("\"{text}\" is too large"))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The largest unit that divides evenly, so "5d" round-trips as "5d".
        for (unit, multiplier) in UNITS {
            if self.0 != 0 && self.0.is_multiple_of(multiplier) {
                return write!(f, "{}{}", self.0 / multiplier, unit);
            }
        }
        write!(f, "{}s", self.0)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (text, secs, shown) in [
            ("300s", 300, "5m"),
            ("5m", 300, "5m"),
            ("1h", 3600, "1h"),
            ("5d", 432_000, "5d"),
            ("90s", 90, "90s"),
            ("0s", 0, "0s"),
        ] {
            let d: Duration = text.parse().expect(text);
            assert_eq!(d.as_secs(), secs, "{text}");
            assert_eq!(d.to_string(), shown, "{text}");
        }
    }

    #[test]
    fn refuses_bad_values() {
        for text in ["", "5", "m", "-1s", "1.5h", "5w", "99999999999999999999d"] {
            assert!(text.parse::<Duration>().is_err(), "{text} accepted");
        }
    }
}
