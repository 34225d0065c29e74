//! The RFC 8460 §4 report of one recipient domain and period, built from
//! the recorded attempts (SPEC §11). Pure: attempts in, JSON types out.
//!
//! Each attempt is one session. It counts as
//! * **successful** when TLS was negotiated and every requirement, the
//!   report-only ones too, was met;
//! * **failed** when the requirement failed (with its result type), when
//!   a report-only requirement (MTA-STS `testing`) would have failed, or
//!   when the session went on in plaintext because the server offered no
//!   STARTTLS (`starttls-not-supported`) or its handshake failed, or when
//!   the requirement refused the host before connecting (then without
//!   either address: nothing was contacted);
//! * **not counted** when no TLS negotiation was reached (connection
//!   refused, no greeting) or the administrator asked for no TLS at all
//!   (`none`): neither says anything about the receiving site's TLS.
//!
//! Sessions are grouped per policy: type (`sts`, `tlsa`,
//! `no-policy-found`), policy string (the MTA-STS policy's lines, or the
//! TLSA records), and MX host.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use postern_config::OutboundMode;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::event::{Attempt, DeliveryAttempt, PolicyType, ResultType, Verdict};
use crate::{Event, TrackingEvent};

/// Seconds in a UTC day (no leap seconds in unix time).
pub const DAY_SECS: i64 = 86_400;

/// A report (RFC 8460 §4.4), field names as the RFC spells them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    #[serde(rename = "organization-name")]
    pub organization_name: String,
    #[serde(rename = "date-range")]
    pub date_range: DateRange,
    #[serde(rename = "contact-info")]
    pub contact_info: String,
    #[serde(rename = "report-id")]
    pub report_id: String,
    pub policies: Vec<PolicyReport>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DateRange {
    /// RFC 3339, UTC.
    #[serde(rename = "start-datetime")]
    pub start_datetime: String,
    #[serde(rename = "end-datetime")]
    pub end_datetime: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyReport {
    pub policy: Policy,
    pub summary: Summary,
    #[serde(rename = "failure-details", default)]
    pub failure_details: Vec<FailureDetail>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    #[serde(rename = "policy-type")]
    pub policy_type: String,
    #[serde(
        rename = "policy-string",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub policy_string: Vec<String>,
    #[serde(rename = "policy-domain")]
    pub policy_domain: String,
    #[serde(rename = "mx-host", default, skip_serializing_if = "Option::is_none")]
    pub mx_host: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    #[serde(rename = "total-successful-session-count")]
    pub total_successful_session_count: u64,
    #[serde(rename = "total-failure-session-count")]
    pub total_failure_session_count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureDetail {
    #[serde(rename = "result-type")]
    pub result_type: String,
    #[serde(
        rename = "sending-mta-ip",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sending_mta_ip: Option<IpAddr>,
    #[serde(
        rename = "receiving-mx-hostname",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub receiving_mx_hostname: Option<String>,
    /// Absent when nothing was contacted (the host was refused before
    /// connecting): RFC 8460 requires only the result type and count.
    #[serde(
        rename = "receiving-ip",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub receiving_ip: Option<IpAddr>,
    #[serde(rename = "failed-session-count")]
    pub failed_session_count: u64,
    #[serde(
        rename = "failure-reason-code",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub failure_reason_code: Option<String>,
}

/// Who reports what period: the fields of a report that do not come from
/// the attempts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportMeta {
    pub organization: String,
    pub contact: String,
    pub report_id: String,
    /// Unix seconds, start inclusive, end exclusive.
    pub start: i64,
    pub end: i64,
}

/// How one attempt counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Session {
    Successful,
    Failed {
        result_type: ResultType,
        reason: Option<String>,
    },
    NotCounted,
}

/// How `attempt` counts in a report (see the module doc).
pub fn classify(attempt: &Attempt) -> Session {
    match attempt.verdict() {
        Verdict::NotReached => return Session::NotCounted,
        Verdict::Failed => {
            return Session::Failed {
                result_type: attempt.result_type.unwrap_or(ResultType::ValidationFailure),
                reason: reason(attempt),
            }
        }
        Verdict::Met => {}
    }
    if let Some(would) = attempt.would_fail.first() {
        return Session::Failed {
            result_type: would.result_type,
            reason: Some(would.failure.clone()).filter(|f| !f.is_empty()),
        };
    }
    if attempt.tls_version.is_some() {
        return Session::Successful;
    }
    if attempt.mode == OutboundMode::None {
        return Session::NotCounted;
    }
    if !attempt.starttls_offered {
        return Session::Failed {
            result_type: ResultType::StarttlsNotSupported,
            reason: Some("the server did not offer STARTTLS".to_string()),
        };
    }
    Session::Failed {
        result_type: attempt.result_type.unwrap_or(ResultType::ValidationFailure),
        reason: reason(attempt),
    }
}

fn reason(attempt: &Attempt) -> Option<String> {
    attempt
        .tls_error
        .clone()
        .or_else(|| attempt.verify_error.clone())
        .filter(|r| !r.is_empty())
}

/// The recorded attempts among `events`, in order (events of other kinds
/// or shapes skipped).
pub fn attempts(events: &[TrackingEvent]) -> Vec<DeliveryAttempt> {
    events
        .iter()
        .filter_map(|e| match e.parse() {
            Some(Event::DeliveryAttempt(attempt)) => Some(attempt),
            _ => None,
        })
        .collect()
}

/// The recipient domains attempted, lower case, sorted.
pub fn domains(attempts: &[DeliveryAttempt]) -> BTreeSet<String> {
    attempts
        .iter()
        .map(|a| a.domain.trim_end_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .collect()
}

/// The policy an attempt is grouped under.
fn policy_of(domain: &str, attempt: &Attempt) -> Policy {
    let policy_string = match attempt.policy_type {
        PolicyType::Sts => sts_lines(attempt),
        PolicyType::Tlsa => attempt.tlsa.clone(),
        PolicyType::NoPolicyFound => Vec::new(),
    };
    Policy {
        policy_type: attempt.policy_type.as_str().to_string(),
        policy_string,
        policy_domain: domain.to_string(),
        mx_host: Some(attempt.host.clone()).filter(|h| !h.is_empty()),
    }
}

/// The MTA-STS policy as its lines (RFC 8460 §4.3: the policy "as
/// retrieved", here rebuilt from the parsed fields in RFC 8461 order).
fn sts_lines(attempt: &Attempt) -> Vec<String> {
    let seen = attempt
        .mta_sts_lookup
        .as_ref()
        .and_then(|l| l.policy.as_ref());
    match (seen, &attempt.mta_sts) {
        (Some(p), _) => {
            let mut lines = vec!["version: STSv1".to_string(), format!("mode: {}", p.mode)];
            lines.extend(p.mx.iter().map(|mx| format!("mx: {mx}")));
            lines.push(format!("max_age: {}", p.max_age));
            lines
        }
        (None, Some(r)) => vec!["version: STSv1".to_string(), format!("mode: {}", r.mode)],
        (None, None) => Vec::new(),
    }
}

fn type_rank(policy_type: &str) -> u8 {
    match policy_type {
        "sts" => 0,
        "tlsa" => 1,
        _ => 2,
    }
}

type PolicyKey = (u8, String, Vec<String>);
type FailureKey = (
    String,
    Option<IpAddr>,
    Option<String>,
    Option<IpAddr>,
    Option<String>,
);

#[derive(Default)]
struct Group {
    policy: Option<Policy>,
    summary: Summary,
    failures: BTreeMap<FailureKey, u64>,
}

/// The report for `domain` from `attempts` (any domains: the others are
/// skipped). Policies with no counted session are left out.
pub fn build(meta: &ReportMeta, domain: &str, attempts: &[DeliveryAttempt]) -> Report {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let mut groups: BTreeMap<PolicyKey, Group> = BTreeMap::new();
    for d in attempts {
        if !d.domain.trim_end_matches('.').eq_ignore_ascii_case(&domain) {
            continue;
        }
        let a = &d.attempt;
        let session = classify(a);
        if session == Session::NotCounted {
            continue;
        }
        let policy = policy_of(&domain, a);
        let key = (
            type_rank(&policy.policy_type),
            policy.mx_host.clone().unwrap_or_default(),
            policy.policy_string.clone(),
        );
        let group = groups.entry(key).or_default();
        group.policy.get_or_insert(policy);
        match session {
            Session::Successful => group.summary.total_successful_session_count += 1,
            Session::Failed {
                result_type,
                reason,
            } => {
                group.summary.total_failure_session_count += 1;
                let host = Some(a.host.clone()).filter(|h| !h.is_empty() && *h != a.ip.to_string());
                *group
                    .failures
                    .entry((
                        result_type.as_str().to_string(),
                        a.local_ip,
                        host,
                        Some(a.ip).filter(|_| !a.refused_unconnected),
                        reason,
                    ))
                    .or_default() += 1;
            }
            Session::NotCounted => {}
        }
    }
    let policies = groups
        .into_values()
        .filter_map(|g| {
            Some(PolicyReport {
                policy: g.policy?,
                summary: g.summary,
                failure_details: g
                    .failures
                    .into_iter()
                    .map(
                        |((result_type, sending, host, receiving, reason), count)| FailureDetail {
                            result_type,
                            sending_mta_ip: sending,
                            receiving_mx_hostname: host,
                            receiving_ip: receiving,
                            failed_session_count: count,
                            failure_reason_code: reason,
                        },
                    )
                    .collect(),
            })
        })
        .collect();
    Report {
        organization_name: meta.organization.clone(),
        date_range: DateRange {
            start_datetime: rfc3339(meta.start),
            // The last second of the period, as RFC 8460's example shows
            // a day (`...T23:59:59Z`).
            end_datetime: rfc3339(meta.end.saturating_sub(1).max(meta.start)),
        },
        contact_info: meta.contact.clone(),
        report_id: meta.report_id.clone(),
        policies,
    }
}

impl Report {
    /// Both counts over every policy.
    pub fn totals(&self) -> Summary {
        self.policies
            .iter()
            .fold(Summary::default(), |sum, p| Summary {
                total_successful_session_count: sum.total_successful_session_count
                    + p.summary.total_successful_session_count,
                total_failure_session_count: sum.total_failure_session_count
                    + p.summary.total_failure_session_count,
            })
    }
}

/// `at` (unix seconds) in RFC 3339, UTC (`2026-12-02T00:00:00Z`).
pub fn rfc3339(at: i64) -> String {
    OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// The UTC day (`YYYY-MM-DD`) that contains `at`.
pub fn day_of(at: i64) -> String {
    let date = OffsetDateTime::from_unix_timestamp(at)
        .map(|t| t.date())
        .unwrap_or(time::Date::MIN);
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// The start (unix seconds) of the UTC day `day` (`YYYY-MM-DD`); the error
/// says what is wrong with it.
pub fn day_start(day: &str) -> Result<i64, String> {
    let bad = || format!("{day:?} is not a date: give YYYY-MM-DD (e.g. 2026-12-01)");
    let mut parts = day.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return Err(bad());
    }
    let year: i32 = y.parse().map_err(|_| bad())?;
    let month: u8 = m.parse().map_err(|_| bad())?;
    let dom: u8 = d.parse().map_err(|_| bad())?;
    let month = time::Month::try_from(month).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(year, month, dom)
        .map_err(|e| format!("{day:?} is not a date: {e}"))?;
    Ok(date.midnight().assume_utc().unix_timestamp())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::event::{Source, StsLookup, StsPolicyRef, StsPolicySeen, WouldFail};

    /// A met TLS attempt, from JSON as the store keeps it (so fields
    /// added or removed elsewhere do not touch these tables).
    fn attempt(host: &str, ip: &str) -> Attempt {
        serde_json::from_value(serde_json::json!({
            "host": host, "ip": ip, "port": 25, "local_ip": "192.0.2.100",
            "mode": "opportunistic", "requirement": "global opportunistic",
            "source": "global", "policy_type": "no-policy-found", "verdict": "met",
            "starttls_offered": true, "tls_version": "TLSv1.3", "cert_verified": true,
            "reply": "250 ok"
        }))
        .unwrap()
    }

    fn tls_ok(a: Attempt) -> Attempt {
        a
    }
    fn failed(mut a: Attempt, rt: ResultType, why: &str) -> Attempt {
        a.recorded_verdict = Some(Verdict::Failed);
        a.result_type = Some(rt);
        a.tls_version = None;
        a.tls_error = Some(why.into());
        a
    }
    fn plaintext_no_starttls(mut a: Attempt) -> Attempt {
        a.starttls_offered = false;
        a.tls_version = None;
        a
    }
    fn not_reached(mut a: Attempt) -> Attempt {
        a.recorded_verdict = Some(Verdict::NotReached);
        a.tls_version = None;
        a.reply = String::new();
        a
    }
    fn mode_none(mut a: Attempt) -> Attempt {
        a.mode = OutboundMode::None;
        a.starttls_offered = false;
        a.tls_version = None;
        a
    }
    fn testing_would_fail(mut a: Attempt) -> Attempt {
        a.would_fail = vec![WouldFail {
            requirement: "MTA-STS testing".into(),
            source: Source::MtaSts,
            result_type: ResultType::CertificateNotTrusted,
            failure: "invalid peer certificate: UnknownIssuer".into(),
        }];
        a
    }

    #[test]
    fn each_attempt_counts_as_the_rfc_says() {
        let base = || attempt("mx.a.test", "192.0.2.1");
        let rows: Vec<(&str, Attempt, Session)> = vec![
            ("TLS, requirement met", tls_ok(base()), Session::Successful),
            (
                "requirement failed: its result type",
                failed(
                    base(),
                    ResultType::CertificateHostMismatch,
                    "names mx.other",
                ),
                Session::Failed {
                    result_type: ResultType::CertificateHostMismatch,
                    reason: Some("names mx.other".into()),
                },
            ),
            (
                "plaintext because STARTTLS was not offered",
                plaintext_no_starttls(base()),
                Session::Failed {
                    result_type: ResultType::StarttlsNotSupported,
                    reason: Some("the server did not offer STARTTLS".into()),
                },
            ),
            (
                "connection refused",
                not_reached(base()),
                Session::NotCounted,
            ),
            (
                "administrator asked for none",
                mode_none(base()),
                Session::NotCounted,
            ),
            (
                "testing-mode policy would have failed",
                testing_would_fail(base()),
                Session::Failed {
                    result_type: ResultType::CertificateNotTrusted,
                    reason: Some("invalid peer certificate: UnknownIssuer".into()),
                },
            ),
        ];
        for (what, a, expected) in rows {
            assert_eq!(classify(&a), expected, "{what}");
        }
    }

    fn d(domain: &str, attempt: Attempt) -> DeliveryAttempt {
        DeliveryAttempt {
            domain: domain.into(),
            attempt,
            requiretls: false,
            tls_required_no: false,
        }
    }

    fn meta() -> ReportMeta {
        let start = day_start("2026-12-01").unwrap();
        ReportMeta {
            organization: "Example Org".into(),
            contact: "postmaster@gw.test".into(),
            report_id: "2026-12-01.rcpt.test@gw.test".into(),
            start,
            end: start + DAY_SECS,
        }
    }

    #[test]
    fn a_day_of_attempts_becomes_the_rfc_8460_json() {
        let sts = |mut a: Attempt| {
            a.policy_type = PolicyType::Sts;
            a.mta_sts = Some(StsPolicyRef {
                id: "1".into(),
                mode: "enforce".into(),
            });
            a.mta_sts_lookup = Some(StsLookup {
                txt: "v=STSv1; id=1".into(),
                from: "fetched".into(),
                policy: Some(StsPolicySeen {
                    id: "1".into(),
                    mode: "enforce".into(),
                    max_age: 86400,
                    mx: vec!["*.rcpt.test".into()],
                    fetched_at: 0,
                    expires_at: 0,
                }),
                failure: None,
            });
            a
        };
        let good = || sts(attempt("mx1.rcpt.test", "127.0.0.2"));
        let bad = || {
            sts(failed(
                attempt("mx2.rcpt.test", "127.0.0.3"),
                ResultType::CertificateNotTrusted,
                "UnknownIssuer",
            ))
        };
        let attempts = vec![
            d("rcpt.test", good()),
            d("RCPT.test", good()),
            d("rcpt.test", bad()),
            d("rcpt.test", bad()),
            d("rcpt.test", not_reached(good())),
            d("other.test", good()),
        ];
        let report = build(&meta(), "rcpt.test", &attempts);
        let json = serde_json::to_value(&report).unwrap();
        let policy_lines = serde_json::json!([
            "version: STSv1",
            "mode: enforce",
            "mx: *.rcpt.test",
            "max_age: 86400"
        ]);
        assert_eq!(
            json,
            serde_json::json!({
                "organization-name": "Example Org",
                "date-range": {
                    "start-datetime": "2026-12-01T00:00:00Z",
                    "end-datetime": "2026-12-01T23:59:59Z"
                },
                "contact-info": "postmaster@gw.test",
                "report-id": "2026-12-01.rcpt.test@gw.test",
                "policies": [
                    {
                        "policy": {
                            "policy-type": "sts",
                            "policy-string": policy_lines,
                            "policy-domain": "rcpt.test",
                            "mx-host": "mx1.rcpt.test"
                        },
                        "summary": {
                            "total-successful-session-count": 2,
                            "total-failure-session-count": 0
                        },
                        "failure-details": []
                    },
                    {
                        "policy": {
                            "policy-type": "sts",
                            "policy-string": policy_lines,
                            "policy-domain": "rcpt.test",
                            "mx-host": "mx2.rcpt.test"
                        },
                        "summary": {
                            "total-successful-session-count": 0,
                            "total-failure-session-count": 2
                        },
                        "failure-details": [{
                            "result-type": "certificate-not-trusted",
                            "sending-mta-ip": "192.0.2.100",
                            "receiving-mx-hostname": "mx2.rcpt.test",
                            "receiving-ip": "127.0.0.3",
                            "failed-session-count": 2,
                            "failure-reason-code": "UnknownIssuer"
                        }]
                    }
                ]
            })
        );
        assert_eq!(
            report.totals(),
            Summary {
                total_successful_session_count: 2,
                total_failure_session_count: 2
            }
        );
    }

    #[test]
    fn policies_are_split_by_type_and_records() {
        let tlsa = |mut a: Attempt, record: &str| {
            a.policy_type = PolicyType::Tlsa;
            a.tlsa = vec![record.into()];
            a
        };
        let attempts = vec![
            d(
                "r.test",
                tlsa(attempt("mx.r.test", "127.0.0.2"), "3 1 1 aa"),
            ),
            d(
                "r.test",
                tlsa(attempt("mx.r.test", "127.0.0.2"), "3 1 1 bb"),
            ),
            d(
                "r.test",
                plaintext_no_starttls(attempt("mx.r.test", "127.0.0.2")),
            ),
        ];
        let report = build(&meta(), "r.test", &attempts);
        let kinds: Vec<(&str, Vec<String>)> = report
            .policies
            .iter()
            .map(|p| {
                (
                    p.policy.policy_type.as_str(),
                    p.policy.policy_string.clone(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("tlsa", vec!["3 1 1 aa".to_string()]),
                ("tlsa", vec!["3 1 1 bb".to_string()]),
                ("no-policy-found", vec![]),
            ]
        );
        let npf = serde_json::to_value(&report.policies[2].policy).unwrap();
        assert!(npf.get("policy-string").is_none(), "{npf}");
        // A domain without attempts: a report with no policies.
        assert!(build(&meta(), "none.test", &attempts).policies.is_empty());
        assert_eq!(
            domains(&attempts).into_iter().collect::<Vec<_>>(),
            ["r.test"]
        );
    }

    #[test]
    fn a_host_refused_before_connecting_names_no_address() {
        // An MX outside an enforced MTA-STS policy: nothing was contacted,
        // so neither end's address belongs in the report.
        let mut refused = failed(
            attempt("mx.elsewhere.test", "127.0.0.9"),
            ResultType::ValidationFailure,
            "mx.elsewhere.test is not in the MTA-STS policy",
        );
        refused.local_ip = None;
        refused.refused_unconnected = true;
        let contacted = failed(
            attempt("mx.r.test", "127.0.0.2"),
            ResultType::CertificateNotTrusted,
            "invalid peer certificate: UnknownIssuer",
        );
        let report = build(
            &meta(),
            "r.test",
            &[d("r.test", refused), d("r.test", contacted)],
        );
        let details: Vec<serde_json::Value> = report
            .policies
            .iter()
            .flat_map(|p| &p.failure_details)
            .map(|f| serde_json::to_value(f).unwrap())
            .collect();
        let by_host = |h: &str| {
            details
                .iter()
                .find(|f| f["receiving-mx-hostname"] == h)
                .cloned()
                .unwrap()
        };
        let refused = by_host("mx.elsewhere.test");
        assert!(refused.get("receiving-ip").is_none(), "{refused}");
        assert!(refused.get("sending-mta-ip").is_none(), "{refused}");
        assert_eq!(refused["result-type"], "validation-failure");
        let contacted = by_host("mx.r.test");
        assert_eq!(contacted["receiving-ip"], "127.0.0.2", "{contacted}");
        assert_eq!(contacted["sending-mta-ip"], "192.0.2.100", "{contacted}");
    }

    #[test]
    fn days_parse_strictly_and_format_back() {
        let start = day_start("2026-12-01").unwrap();
        assert_eq!(rfc3339(start), "2026-12-01T00:00:00Z");
        assert_eq!(day_of(start), "2026-12-01");
        assert_eq!(day_of(start + DAY_SECS - 1), "2026-12-01");
        assert_eq!(day_of(start + DAY_SECS), "2026-12-02");
        for bad in [
            "2026-13-01",
            "2026-02-30",
            "26-12-01",
            "2026-12-1",
            "yesterday",
            "",
        ] {
            let error = day_start(bad).unwrap_err();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }
}
