//! The two MTA-STS texts, parsed strictly and purely (fuzz-friendly): the
//! `_mta-sts` TXT record (RFC 8461 §3.1) and the policy file (§3.2).

use std::fmt;

use crate::policy::MtaStsMode;

/// RFC 8461 §3.2: `max_age` is at most 31557600 seconds (about a year).
pub const MAX_MAX_AGE: u64 = 31_557_600;

/// A policy file that follows RFC 8461 §3.2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedPolicy {
    pub mode: MtaStsMode,
    /// Seconds the policy may be cached.
    pub max_age: u64,
    /// `mx` patterns, lower-cased, in the order given.
    pub mx: Vec<String>,
}

/// Why a policy file or TXT record is not valid (RFC 8460
/// `sts-policy-invalid`); the text names the line or field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPolicy(pub String);

impl fmt::Display for InvalidPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn invalid(text: impl Into<String>) -> InvalidPolicy {
    InvalidPolicy(text.into())
}

/// Parse a policy file: `key: value` lines separated by CRLF or LF.
/// `version: STSv1`, `mode`, `max_age` and (unless `mode: none`) at least
/// one `mx` are required; a required key given twice is refused (which
/// one would count is ambiguous); unknown keys are ignored.
pub fn parse_policy(text: &str) -> Result<ParsedPolicy, InvalidPolicy> {
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    // The grammar allows one final line break; a few more at the end are
    // common and harmless, so they are tolerated, but not blank lines
    // between fields.
    let body = text.trim_end_matches(['\r', '\n']);
    if body.is_empty() {
        return Err(invalid("the policy is empty"));
    }
    for (index, raw) in body.split('\n').enumerate() {
        let number = index + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.contains('\r') {
            return Err(invalid(format!("line {number}: a bare CR")));
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(invalid(format!("line {number}: not \"key: value\"")));
        };
        if !is_field_name(key) {
            return Err(invalid(format!(
                "line {number}: \"{key}\" is not a field name"
            )));
        }
        let value = value.trim_matches([' ', '\t']);
        if value.is_empty()
            || !value
                .bytes()
                .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
        {
            return Err(invalid(format!("line {number}: {key} has no valid value")));
        }
        let once = |present: bool| {
            if present {
                Err(invalid(format!("line {number}: {key} is given twice")))
            } else {
                Ok(())
            }
        };
        match key {
            "version" => {
                once(version.is_some())?;
                if value != "STSv1" {
                    return Err(invalid(format!(
                        "line {number}: version is \"{value}\", not STSv1"
                    )));
                }
                version = Some(());
            }
            "mode" => {
                once(mode.is_some())?;
                mode = Some(match value {
                    "enforce" => MtaStsMode::Enforce,
                    "testing" => MtaStsMode::Testing,
                    "none" => MtaStsMode::None,
                    other => {
                        return Err(invalid(format!(
                            "line {number}: mode \"{other}\" is not enforce, testing or none"
                        )))
                    }
                });
            }
            "max_age" => {
                once(max_age.is_some())?;
                let seconds = (value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| value.parse::<u64>().ok())
                    .flatten()
                    .filter(|s| *s <= MAX_MAX_AGE)
                    .ok_or_else(|| {
                        invalid(format!(
                            "line {number}: max_age \"{value}\" is not a number of seconds \
                             up to {MAX_MAX_AGE}"
                        ))
                    })?;
                max_age = Some(seconds);
            }
            "mx" => {
                if !is_mx_pattern(value) {
                    return Err(invalid(format!(
                        "line {number}: mx \"{value}\" is not a host name or *.domain"
                    )));
                }
                mx.push(value.to_ascii_lowercase());
            }
            _ => {} // RFC 8461 §3.2: unknown fields are ignored.
        }
    }
    if version.is_none() {
        return Err(invalid("version: STSv1 is missing"));
    }
    let mode = mode.ok_or_else(|| invalid("mode is missing"))?;
    let max_age = max_age.ok_or_else(|| invalid("max_age is missing"))?;
    if mx.is_empty() && mode != MtaStsMode::None {
        return Err(invalid("no mx pattern (required unless mode is none)"));
    }
    Ok(ParsedPolicy { mode, max_age, mx })
}

/// RFC 8461 §3.2 `sts-policy-ext-name`: 1–32 of ALPHA, DIGIT, `_`, `-`, `.`.
fn is_field_name(key: &str) -> bool {
    (1..=32).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// `["*."] Domain` (RFC 5321 Domain: letter-digit-hyphen labels).
fn is_mx_pattern(value: &str) -> bool {
    let name = value.strip_prefix("*.").unwrap_or(value);
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// What the `_mta-sts` TXT RRset announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    /// Exactly one valid `v=STSv1` record, with this `id`.
    Policy { id: String },
    /// No `v=STSv1` record: the domain has no MTA-STS policy.
    None,
    /// Records that begin with `v=STSv1` but are not exactly one valid
    /// one: RFC 8461 §3.1 says to treat the domain as having no policy.
    Invalid(String),
}

/// RFC 8461 §3.1 over the TXT RRset (each record's strings already
/// joined): records not beginning with `v=STSv1;` are discarded; exactly
/// one must remain, with `id` of 1–32 alphanumerics.
pub fn parse_txt<S: AsRef<str>>(records: &[S]) -> Announcement {
    let sts: Vec<&str> = records
        .iter()
        .map(AsRef::as_ref)
        .filter(|r| is_sts_record(r))
        .collect();
    match sts.as_slice() {
        [] => Announcement::None,
        [record] => match txt_id(record) {
            Ok(id) => Announcement::Policy { id },
            Err(why) => Announcement::Invalid(format!("_mta-sts TXT record \"{record}\": {why}")),
        },
        several => Announcement::Invalid(format!(
            "{} _mta-sts TXT records begin with v=STSv1 (exactly one is allowed)",
            several.len()
        )),
    }
}

fn is_sts_record(record: &str) -> bool {
    record
        .strip_prefix("v=STSv1")
        .is_some_and(|rest| rest.trim_start_matches([' ', '\t']).starts_with(';'))
}

/// `v=STSv1; id=<1*32 alnum>; ext=...` — fields split by `;` with optional
/// spaces around them.
fn txt_id(record: &str) -> Result<String, String> {
    let mut id = None;
    for (index, field) in record.split(';').enumerate() {
        let field = field.trim_matches([' ', '\t']);
        if field.is_empty() {
            // Only a trailing `;` leaves an empty field.
            continue;
        }
        let Some((key, value)) = field.split_once('=') else {
            return Err(format!("\"{field}\" is not key=value"));
        };
        if index == 0 {
            continue; // v=STSv1, checked by the caller
        }
        let ext_name = (1..=32).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !ext_name {
            return Err(format!("\"{key}\" is not a field name"));
        }
        if key == "id" {
            if id.is_some() {
                return Err("id is given twice".into());
            }
            if !(1..=32).contains(&value.len()) || !value.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(format!("id \"{value}\" is not 1-32 letters and digits"));
            }
            id = Some(value.to_string());
        }
    }
    id.ok_or_else(|| "no id".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "version: STSv1\nmode: enforce\nmx: mx1.partner.test\nmx: *.mx.partner.test\nmax_age: 86400\n";

    #[test]
    fn policy_table() {
        use MtaStsMode::{Enforce, None as Off, Testing};
        // (text, Ok((mode, max_age, mx count)) or Err(part of the message))
        type Row = (String, Result<(MtaStsMode, u64, usize), &'static str>);
        let rows: Vec<Row> = vec![
            (GOOD.into(), Ok((Enforce, 86400, 2))),
            (GOOD.replace('\n', "\r\n"), Ok((Enforce, 86400, 2))),
            (GOOD.trim_end().into(), Ok((Enforce, 86400, 2))),
            (format!("{GOOD}\n\n"), Ok((Enforce, 86400, 2))),
            (
                "version: STSv1\nmode: testing\nmx: a.test\nmax_age: 0".into(),
                Ok((Testing, 0, 1)),
            ),
            (
                "version: STSv1\nmode: none\nmax_age: 31557600".into(),
                Ok((Off, 31_557_600, 0)),
            ),
            (
                "version:STSv1\nmode:\tenforce \nmx: A.Test\nmax_age: 5".into(),
                Ok((Enforce, 5, 1)),
            ),
            (
                format!("{GOOD}x-future_ext.1: anything goes here\n"),
                Ok((Enforce, 86400, 2)),
            ),
            (
                "mx: a.test\nmax_age: 9\nmode: enforce\nversion: STSv1".into(),
                Ok((Enforce, 9, 1)),
            ),
            ("".into(), Err("empty")),
            ("\r\n".into(), Err("empty")),
            (GOOD.replace("STSv1", "STSv2"), Err("not STSv1")),
            (
                GOOD.replace("version: STSv1\n", ""),
                Err("version: STSv1 is missing"),
            ),
            (GOOD.replace("mode: enforce\n", ""), Err("mode is missing")),
            (
                GOOD.replace("max_age: 86400\n", ""),
                Err("max_age is missing"),
            ),
            (GOOD.replace("enforce", "Enforce"), Err("mode \"Enforce\"")),
            (
                GOOD.replace("enforce", "reject"),
                Err("not enforce, testing or none"),
            ),
            (GOOD.replace("86400", "31557601"), Err("up to 31557600")),
            (GOOD.replace("86400", "-1"), Err("max_age \"-1\"")),
            (GOOD.replace("86400", "1e5"), Err("max_age \"1e5\"")),
            (GOOD.replace("86400", "00000000086400"), Err("max_age")),
            (
                "version: STSv1\nmode: enforce\nmax_age: 60".into(),
                Err("no mx pattern"),
            ),
            (
                "version: STSv1\nmode: testing\nmax_age: 60".into(),
                Err("no mx pattern"),
            ),
            (
                GOOD.replace("mx1.partner.test", "mx1..partner.test"),
                Err("mx \"mx1..partner.test\""),
            ),
            (GOOD.replace("mx1.partner.test", "*"), Err("mx \"*\"")),
            (
                GOOD.replace("mx1.partner.test", "mx.*.test"),
                Err("mx \"mx.*.test\""),
            ),
            (
                GOOD.replace("mx1.partner.test", "mx_1.test"),
                Err("mx \"mx_1.test\""),
            ),
            (format!("{GOOD}mode: testing\n"), Err("mode is given twice")),
            (format!("{GOOD}max_age: 1\n"), Err("max_age is given twice")),
            (GOOD.replace("mode:", "mode "), Err("not \"key: value\"")),
            (GOOD.replace("mode:", " mode:"), Err("is not a field name")),
            (
                GOOD.replace("\nmx: *", "\n\nmx: *"),
                Err("line 4: not \"key: value\""),
            ),
            (GOOD.replace("enforce\n", "enforce\r\r\n"), Err("bare CR")),
            (GOOD.replace("86400", ""), Err("max_age has no valid value")),
            ("<html>moved</html>".into(), Err("not \"key: value\"")),
        ];
        for (text, want) in rows {
            let got = parse_policy(&text);
            match (&got, want) {
                (Ok(p), Ok((mode, max_age, mx))) => {
                    assert_eq!(
                        (p.mode, p.max_age, p.mx.len()),
                        (mode, max_age, mx),
                        "{text:?}"
                    );
                }
                (Err(e), Err(part)) => assert!(e.0.contains(part), "{text:?}: {e}"),
                _ => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn mx_patterns_are_lowercased() {
        let p = parse_policy("version: STSv1\nmode: enforce\nmx: MX.Partner.TEST\nmax_age: 1\n")
            .expect("valid");
        assert_eq!(p.mx, vec!["mx.partner.test".to_string()]);
    }

    #[test]
    fn txt_table() {
        let policy = |id: &str| Announcement::Policy { id: id.into() };
        let rows: Vec<(Vec<&str>, Result<Announcement, &str>)> = vec![
            (
                vec!["v=STSv1; id=20260101T000000"],
                Ok(policy("20260101T000000")),
            ),
            (vec!["v=STSv1;id=abc;"], Ok(policy("abc"))),
            (vec!["v=STSv1 ; id=abc ; ext-1=x"], Ok(policy("abc"))),
            (vec!["v=spf1 -all", "v=STSv1; id=1"], Ok(policy("1"))),
            (vec![], Ok(Announcement::None)),
            (vec!["v=spf1 -all"], Ok(Announcement::None)),
            (vec!["v=STSv10; id=1"], Ok(Announcement::None)),
            (vec!["V=STSv1; id=1"], Ok(Announcement::None)),
            (
                vec!["v=STSv1; id=1", "v=STSv1; id=2"],
                Err("2 _mta-sts TXT records"),
            ),
            (vec!["v=STSv1;"], Err("no id")),
            (vec!["v=STSv1; id="], Err("not 1-32")),
            (vec!["v=STSv1; id=a-b"], Err("not 1-32")),
            (
                vec!["v=STSv1; id=123456789012345678901234567890123"],
                Err("not 1-32"),
            ),
            (vec!["v=STSv1; id=1; id=2"], Err("twice")),
            (vec!["v=STSv1; garbage"], Err("not key=value")),
        ];
        for (records, want) in rows {
            let got = parse_txt(&records);
            match (&got, want) {
                (Announcement::Invalid(text), Err(part)) => {
                    assert!(text.contains(part), "{records:?}: {text}")
                }
                (got, Ok(want)) => assert_eq!(got, &want, "{records:?}"),
                (got, Err(part)) => panic!("{records:?}: got {got:?}, want error {part}"),
            }
        }
    }
}
