//! The typed content of a tracking event: one serde-tagged type that every
//! writer (the gateway's `received`, the queue runner's attempts and
//! outcomes, the journal) and every reader (`postern trace`, the admin
//! tracking page and `/api/v1/messages`, the dashboard, later TLS-RPT and
//! learned levels) shares, instead of `json!` objects read back by string
//! paths.
//!
//! Plain data: it names policy sources and RFC 8460 result types by their
//! own enums so that the store does not depend on the delivery crate; the
//! gateway converts delivery's attempt records into it in one place.
//!
//! A [`TrackingEvent`] row keeps the kind in its own column and this type's
//! fields (without `kind`) in `detail`, so the stored shape stays the one
//! earlier versions wrote and their events still parse: every field added
//! since has a default. What cannot be parsed at all is shown raw
//! ([`TrackingEvent::parse`] returns `None`).

use std::net::IpAddr;

use postern_config::OutboundMode;
use serde::{Deserialize, Serialize};

use crate::events::{event_kind, TrackingEvent};

/// One event of a message's life, tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// One event is built per attempt and written at once; boxing the attempt
// would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// The message was accepted and is on disk.
    Received(Received),
    /// One connection to one host of a recipient domain.
    DeliveryAttempt(DeliveryAttempt),
    Delivered(Outcome),
    Deferred(Outcome),
    Bounced(Outcome),
}

impl Event {
    /// The `kind` column ([`event_kind`]).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Received(_) => event_kind::RECEIVED,
            Event::DeliveryAttempt(_) => event_kind::DELIVERY_ATTEMPT,
            Event::Delivered(_) => event_kind::DELIVERED,
            Event::Deferred(_) => event_kind::DEFERRED,
            Event::Bounced(_) => event_kind::BOUNCED,
        }
    }

    /// The recipient outcome, for `delivered`, `deferred` and `bounced`.
    pub fn outcome(&self) -> Option<&Outcome> {
        match self {
            Event::Delivered(o) | Event::Deferred(o) | Event::Bounced(o) => Some(o),
            Event::Received(_) | Event::DeliveryAttempt(_) => None,
        }
    }
}

/// `received`: where the message came from and what it was sent to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Received {
    /// The client's address and port.
    pub client: String,
    pub helo: String,
    /// `ESMTP`, `ESMTPS`, `ESMTPSA`, ...
    pub protocol: String,
    pub tls_version: Option<String>,
    pub cipher: Option<String>,
    pub client_certificate: Option<ClientCertificate>,
    pub sender: String,
    pub recipients: Vec<String>,
    /// Bytes.
    pub size: u64,
    /// `MAIL FROM:<..> REQUIRETLS` (RFC 8689).
    #[serde(skip_serializing_if = "is_false")]
    pub requiretls: bool,
    /// The message carries `TLS-Required: No`.
    #[serde(skip_serializing_if = "is_false")]
    pub tls_required_no: bool,
}

fn is_false(flag: &bool) -> bool {
    !*flag
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientCertificate {
    pub subject: String,
    pub verified: bool,
}

/// `delivered`, `deferred`, `bounced`: where one recipient ended up.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Outcome {
    pub recipient: String,
    /// `host[ip]:port` of the server that answered; empty when none did.
    pub relay: String,
    /// The reply, or why it was deferred or bounced (naming host, policy
    /// source and failure for a TLS policy failure).
    pub detail: String,
}

/// `delivery_attempt`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    /// The recipient domain.
    #[serde(default)]
    pub domain: String,
    pub attempt: Attempt,
    /// The message's own TLS requests travel with each attempt:
    /// `TLS-Required: No` explains a requirement without DANE, MTA-STS or
    /// learned levels.
    #[serde(default)]
    pub requiretls: bool,
    #[serde(default)]
    pub tls_required_no: bool,
}

/// Everything recorded about one connection attempt (SPEC §6 and §10): the
/// host, the policy that applied and where it came from, the TLS facts and
/// the verdict. TLS-RPT (RFC 8460) aggregates these per `policy_type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// The MX or next-hop host (the IP text for an IP literal).
    pub host: String,
    pub ip: IpAddr,
    pub port: u16,
    /// Our own address on the connection (TLS-RPT's `sending-mta-ip`),
    /// when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_ip: Option<IpAddr>,

    /// The TLS level required.
    pub mode: OutboundMode,
    /// How deferral reasons name the requirement: `domain verify`,
    /// `MTA-STS enforce`, `DANE`. Empty in events from before the policy
    /// engine.
    #[serde(default)]
    pub requirement: String,
    /// The source that set it; `None` in events from before the policy
    /// engine.
    #[serde(default)]
    pub source: Option<Source>,
    /// The published policy in force, as TLS-RPT groups attempts.
    #[serde(default)]
    pub policy_type: PolicyType,
    /// The MTA-STS policy applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mta_sts: Option<StsPolicyRef>,
    /// The DANE TLSA records used (`3 1 1 <hex>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tlsa: Vec<String>,
    /// Whether the requirement was met. `None` in older events; see
    /// [`Attempt::verdict`].
    #[serde(default, rename = "verdict", skip_serializing_if = "Option::is_none")]
    pub recorded_verdict: Option<Verdict>,
    /// The RFC 8460 result type of a TLS policy failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_type: Option<ResultType>,
    /// What the MTA-STS lookup saw for the domain: the TXT record, where
    /// the policy came from, a failed fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mta_sts_lookup: Option<StsLookup>,
    /// The report-only requirements (`monitor` domains, MTA-STS
    /// `testing`, learned `monitor`) the attempt did not meet, with what
    /// failed (as the courier saw it): the one record of report-only
    /// verdicts. Attempts recorded before it kept them in `report_only`,
    /// read into this field ([`TrackingEvent::parse`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub would_fail: Vec<WouldFail>,

    /// Whether the server advertised STARTTLS (plaintext EHLO).
    #[serde(default)]
    pub starttls_offered: bool,
    #[serde(default)]
    pub tls_version: Option<String>,
    #[serde(default)]
    pub cipher: Option<String>,
    /// Whether the certificate chains to a trusted root and names the host;
    /// `None` when no certificate was seen.
    #[serde(default)]
    pub cert_verified: Option<bool>,
    /// Why it did not verify.
    #[serde(default)]
    pub verify_error: Option<String>,
    /// The certificate's names (SANs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cert_names: Vec<String>,
    /// The presented chain, leaf first: `subject (issuer ..., until ...)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cert_chain: Vec<String>,
    /// Why STARTTLS or the handshake failed.
    #[serde(default)]
    pub tls_error: Option<String>,
    /// TLS failed and the session went on in plaintext (opportunistic).
    #[serde(default)]
    pub tls_fallback_plaintext: bool,
    /// The server's last reply, as one line.
    #[serde(default)]
    pub reply: String,
    /// The requirement refused the host before any connection (an MX
    /// outside an enforced MTA-STS policy, a failed TLSA lookup): `ip` is
    /// the address that would have been tried, not one that was contacted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refused_unconnected: bool,
}

/// The MTA-STS lookup behind an attempt (SPEC §10 item 3).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StsLookup {
    /// The `_mta-sts` TXT record, `none`, or why it does not count.
    pub txt: String,
    /// `cache`, `fetched` or `none`.
    pub from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<StsPolicySeen>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<StsFetchFailure>,
}

/// The policy in use.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StsPolicySeen {
    pub id: String,
    pub mode: String,
    pub max_age: u64,
    pub mx: Vec<String>,
    /// Unix seconds.
    pub fetched_at: i64,
    pub expires_at: i64,
}

/// A policy fetch that failed (a cached policy may still apply).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StsFetchFailure {
    pub result_type: Option<ResultType>,
    pub detail: String,
}

/// A report-only requirement the attempt did not meet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WouldFail {
    /// As deferral reasons name it (`MTA-STS testing`).
    pub requirement: String,
    pub source: Source,
    pub result_type: ResultType,
    /// What would have failed.
    pub failure: String,
}

impl Attempt {
    /// The verdict as recorded, or, for events from before verdicts were
    /// recorded, as far as their facts tell: a result type means the
    /// requirement failed, TLS up or an allowed plaintext session that got a
    /// reply means it was met.
    pub fn verdict(&self) -> Verdict {
        if let Some(verdict) = self.recorded_verdict {
            return verdict;
        }
        if self.result_type.is_some() {
            Verdict::Failed
        } else if self.tls_version.is_some() || self.tls_fallback_plaintext {
            Verdict::Met
        } else if self.reply.is_empty() {
            Verdict::NotReached
        } else if self.mode <= OutboundMode::Opportunistic {
            Verdict::Met
        } else {
            Verdict::NotReached
        }
    }

    /// `host[ip]:port`, or `[ip]:port` when the host is the address.
    pub fn peer(&self) -> String {
        let ip = match self.ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        };
        if self.host.is_empty() || self.host == self.ip.to_string() {
            format!("{ip}:{}", self.port)
        } else {
            format!("{} {ip}:{}", self.host, self.port)
        }
    }
}

/// The policy source that set a requirement (SPEC §10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Global,
    Domain,
    Dane,
    MtaSts,
    Learned,
    Requiretls,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Global => "global",
            Source::Domain => "domain",
            Source::Dane => "dane",
            Source::MtaSts => "mta-sts",
            Source::Learned => "learned",
            Source::Requiretls => "requiretls",
        }
    }
}

/// RFC 8460 §4.3 `policy-type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyType {
    Sts,
    Tlsa,
    #[default]
    NoPolicyFound,
}

impl PolicyType {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyType::Sts => "sts",
            PolicyType::Tlsa => "tlsa",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }
}

/// An MTA-STS policy, by the id of its TXT record and its mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StsPolicyRef {
    pub id: String,
    /// `enforce`, `testing` or `none`.
    pub mode: String,
}

/// Whether an attempt met its TLS requirement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The session went on as the requirement allows (TLS as required, or
    /// plaintext where the level permits it).
    Met,
    /// The requirement was not met: the host was not used (deferred), with
    /// an RFC 8460 result type.
    Failed,
    /// The connection failed before the requirement could be applied
    /// (refused, timed out, no greeting).
    NotReached,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Failed => "failed",
            Verdict::NotReached => "not-reached",
        }
    }
}

/// RFC 8460 §4.3 result types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResultType {
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    TlsaInvalid,
    DnssecInvalid,
    DaneRequired,
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
}

impl ResultType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::DaneRequired => "dane-required",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }
}

impl TrackingEvent {
    /// A row for `event` of message `queue_id`.
    pub fn new(queue_id: &str, message_id: Option<String>, at: i64, event: &Event) -> Self {
        let mut detail = serde_json::to_value(event).unwrap_or(serde_json::Value::Null);
        // The kind has its own column.
        if let serde_json::Value::Object(map) = &mut detail {
            map.remove("kind");
        }
        TrackingEvent {
            queue_id: queue_id.to_string(),
            message_id,
            at,
            kind: event.kind().to_string(),
            detail,
        }
    }

    /// The typed event; `None` for a kind or shape this version does not
    /// know (shown raw).
    pub fn parse(&self) -> Option<Event> {
        let serde_json::Value::Object(map) = &self.detail else {
            return None;
        };
        let mut map = map.clone();
        if self.kind == event_kind::DELIVERY_ATTEMPT {
            if let Some(serde_json::Value::Object(attempt)) = map.get_mut("attempt") {
                read_legacy_report_only(attempt);
            }
        }
        map.insert(
            "kind".to_string(),
            serde_json::Value::String(self.kind.clone()),
        );
        serde_json::from_value(serde_json::Value::Object(map)).ok()
    }

    /// The node that recorded it (the store stamps every event).
    pub fn node(&self) -> Option<&str> {
        crate::events::node_of(&self.detail)
    }
}

/// Attempts recorded before `would_fail` kept every report-only verdict,
/// met ones too, in `report_only` (`{requirement, source, verdict,
/// result_type}`): the failed ones become `would_fail`, their failure
/// named by the result type (no more was recorded). Where both were
/// written, `would_fail` is the record and `report_only` is dropped.
fn read_legacy_report_only(attempt: &mut serde_json::Map<String, serde_json::Value>) {
    let Some(serde_json::Value::Array(old)) = attempt.remove("report_only") else {
        return;
    };
    if attempt.contains_key("would_fail") {
        return;
    }
    let would_fail: Vec<serde_json::Value> = old
        .into_iter()
        .filter(|w| w["verdict"] == "failed" && w["result_type"].is_string())
        .map(|w| {
            serde_json::json!({
                "requirement": w["requirement"],
                "source": w["source"],
                "result_type": w["result_type"],
                "failure": w["result_type"],
            })
        })
        .collect();
    if !would_fail.is_empty() {
        attempt.insert(
            "would_fail".to_string(),
            serde_json::Value::Array(would_fail),
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn row(kind: &str, detail: serde_json::Value) -> TrackingEvent {
        TrackingEvent {
            queue_id: "Q1".into(),
            message_id: None,
            at: 1,
            kind: kind.into(),
            detail,
        }
    }

    /// The exact JSON the runner wrote for an attempt before this type
    /// (an `AttemptRecord` serialized under `attempt`, node stamped by the
    /// store).
    const OLD_ATTEMPT: &str = r#"{"domain":"partner.test","attempt":{"host":"mx1.partner.test","ip":"192.0.2.2","port":25,"mode":"verify","requirement":"domain verify","source":"domain","result_type":"certificate-not-trusted","starttls_offered":true,"tls_version":null,"cipher":null,"cert_verified":false,"verify_error":"invalid peer certificate: UnknownIssuer","cert_problem":{"fault":"not-trusted","detail":"invalid peer certificate: UnknownIssuer"},"cert_names":["mx1.partner.test"],"cert_chain":["CN=mx1.partner.test (issuer CN=Test CA, until 2027-01-01)"],"tls_error":"certificate verification failed: invalid peer certificate: UnknownIssuer","tls_fallback_plaintext":false,"reply":"220 2.0.0 Ready to start TLS"},"node":"gw1"}"#;

    #[test]
    fn attempts_stored_by_the_previous_shape_still_parse() {
        let old = row(
            "delivery_attempt",
            serde_json::from_str(OLD_ATTEMPT).unwrap(),
        );
        let Some(Event::DeliveryAttempt(d)) = old.parse() else {
            panic!("old attempt not parsed");
        };
        assert_eq!(d.domain, "partner.test");
        let a = &d.attempt;
        assert_eq!(a.peer(), "mx1.partner.test 192.0.2.2:25");
        assert_eq!(a.mode, OutboundMode::Verify);
        assert_eq!(a.requirement, "domain verify");
        assert_eq!(a.source, Some(Source::Domain));
        assert_eq!(a.result_type, Some(ResultType::CertificateNotTrusted));
        assert_eq!(a.policy_type, PolicyType::NoPolicyFound);
        assert_eq!(a.verdict(), Verdict::Failed);
        assert_eq!(old.node(), Some("gw1"));

        // Before the policy engine: no requirement, source or result type.
        let older = row(
            "delivery_attempt",
            json!({"domain": "b.test", "attempt": {
                "host": "mx.b.test", "ip": "192.0.2.1", "port": 25, "mode": "opportunistic",
                "starttls_offered": false, "tls_version": null, "cipher": null,
                "cert_verified": null, "verify_error": null, "cert_chain": [],
                "tls_error": null, "tls_fallback_plaintext": false, "reply": "250 2.0.0 Ok"}}),
        );
        let Some(Event::DeliveryAttempt(d)) = older.parse() else {
            panic!("older attempt not parsed");
        };
        assert_eq!(d.attempt.source, None);
        assert_eq!(d.attempt.verdict(), Verdict::Met);
    }

    /// Rows exactly as the previous version stored them (copied from the
    /// store of a whole-gateway test run by it).
    #[test]
    fn rows_copied_from_a_store_of_the_previous_version_parse() {
        let rows = [
            (
                "received",
                r#"{"cipher":null,"client":"127.0.0.1:47460","client_certificate":null,"helo":"client.postern.test","node":"mx.postern.test","protocol":"ESMTP","recipients":["bob@up.test","bob@slow.test"],"sender":"alice@origin.test","size":299,"tls_version":null}"#,
            ),
            (
                "delivery_attempt",
                r#"{"attempt":{"cert_chain":[],"cert_verified":null,"cipher":null,"host":"mx.slow.test","ip":"127.0.0.4","mode":"none","port":55721,"reply":"250 2.0.0 Ok","requirement":"global none","source":"global","starttls_offered":false,"tls_error":null,"tls_fallback_plaintext":false,"tls_version":null,"verify_error":null},"domain":"slow.test","node":"mx.postern.test"}"#,
            ),
            (
                "deferred",
                r#"{"detail":"mx.slow.test[127.0.0.4]: 451 4.3.2 Try again later (in reply to RCPT TO)","node":"mx.postern.test","recipient":"bob@slow.test","relay":"mx.slow.test[127.0.0.4]:55721"}"#,
            ),
            (
                "delivered",
                r#"{"detail":"250 2.0.0 Ok: queued","node":"mx.postern.test","recipient":"bob@up.test","relay":"mx.up.test[127.0.0.3]:55721"}"#,
            ),
        ];
        for (kind, json) in rows {
            let event = row(kind, serde_json::from_str(json).unwrap());
            let parsed = event.parse().unwrap_or_else(|| panic!("{kind} not parsed"));
            assert_eq!(parsed.kind(), kind);
            assert_eq!(event.node(), Some("mx.postern.test"));
            if let Event::DeliveryAttempt(d) = parsed {
                assert_eq!(d.attempt.source, Some(Source::Global));
                assert_eq!(d.attempt.requirement, "global none");
                assert_eq!(d.attempt.verdict(), Verdict::Met);
                assert_eq!(d.attempt.peer(), "mx.slow.test 127.0.0.4:55721");
            }
        }
    }

    /// Report-only verdicts as earlier versions stored them: `report_only`
    /// alone (from the policy engine until MTA-STS), and `report_only`
    /// beside `would_fail` (until both were folded into `would_fail`).
    #[test]
    fn report_only_verdicts_of_earlier_versions_read_as_would_fail() {
        // Copied from the store of a whole-gateway run (test_mta_sts.py,
        // MTA-STS testing) by the version that wrote both.
        const BOTH: &str = r#"{"attempt":{"cert_chain":["CN=mx.bad.test (issuer CN=mx.bad.test, until 2027-01-02T00:38:58Z)"],"cert_names":["mx.bad.test"],"cert_verified":false,"cipher":"TLS13_AES_256_GCM_SHA384","host":"mx.bad.test","ip":"127.0.0.4","local_ip":"127.0.0.1","mode":"opportunistic","mta_sts_lookup":{"from":"fetched","policy":{"expires_at":1796344739,"fetched_at":1796258339,"id":"a1","max_age":86400,"mode":"testing","mx":["mx.bad.test"]},"txt":"v=STSv1; id=a1"},"policy_type":"no-policy-found","port":40123,"reply":"250 2.0.0 Ok: queued as B3DF39D609F","report_only":[{"requirement":"MTA-STS testing","result_type":"certificate-not-trusted","source":"mta-sts","verdict":"failed"}],"requirement":"global opportunistic","source":"global","starttls_offered":true,"tls_error":null,"tls_fallback_plaintext":false,"tls_version":"TLSv1.3","verdict":"met","verify_error":"certificate is self-signed (not issued by a trusted CA)","would_fail":[{"failure":"certificate verification failed: certificate is self-signed (not issued by a trusted CA)","requirement":"MTA-STS testing","result_type":"certificate-not-trusted","source":"mta-sts"}]},"domain":"testing-badcert.test","node":"mx.postern.test","requiretls":false,"tls_required_no":false}"#;
        // The same attempt in the shape before `would_fail` and
        // `mta_sts_lookup` existed, with a met report-only verdict too.
        const REPORT_ONLY: &str = r#"{"attempt":{"cert_chain":["CN=mx.bad.test (issuer CN=mx.bad.test, until 2027-01-02T00:38:58Z)"],"cert_names":["mx.bad.test"],"cert_verified":false,"cipher":"TLS13_AES_256_GCM_SHA384","host":"mx.bad.test","ip":"127.0.0.4","local_ip":"127.0.0.1","mode":"opportunistic","policy_type":"no-policy-found","port":40123,"reply":"250 2.0.0 Ok: queued as B3DF39D609F","report_only":[{"requirement":"MTA-STS testing","result_type":"certificate-not-trusted","source":"mta-sts","verdict":"failed"},{"requirement":"domain require","source":"domain","verdict":"met"}],"requirement":"global opportunistic","source":"global","starttls_offered":true,"tls_error":null,"tls_fallback_plaintext":false,"tls_version":"TLSv1.3","verdict":"met","verify_error":"certificate is self-signed (not issued by a trusted CA)"},"domain":"testing-badcert.test","node":"mx.postern.test"}"#;
        for (name, json, failure) in [
            (
                "both",
                BOTH,
                "certificate verification failed: certificate is self-signed (not issued by a trusted CA)",
            ),
            ("report_only", REPORT_ONLY, "certificate-not-trusted"),
        ] {
            let event = row("delivery_attempt", serde_json::from_str(json).unwrap());
            let Some(Event::DeliveryAttempt(d)) = event.parse() else {
                panic!("{name}: not parsed");
            };
            assert_eq!(d.domain, "testing-badcert.test", "{name}");
            assert_eq!(d.attempt.verdict(), Verdict::Met, "{name}");
            // One failed report-only verdict; the met one is no record.
            assert_eq!(
                d.attempt.would_fail,
                [WouldFail {
                    requirement: "MTA-STS testing".into(),
                    source: Source::MtaSts,
                    result_type: ResultType::CertificateNotTrusted,
                    failure: failure.into(),
                }],
                "{name}"
            );
            // Written again, it has one record of them.
            let again = serde_json::to_value(&d.attempt).unwrap();
            assert!(again.get("report_only").is_none(), "{name}: {again}");
        }
    }

    #[test]
    fn received_and_outcomes_stored_by_the_previous_shape_still_parse() {
        let received = row(
            "received",
            json!({"client": "127.0.0.1:5000", "helo": "client.test", "protocol": "ESMTPS",
                   "tls_version": "TLSv1.3", "cipher": "TLS13_AES_256_GCM_SHA384",
                   "client_certificate": {"subject": "CN=relay", "verified": true},
                   "sender": "a@b.test", "recipients": ["c@d.test"], "size": 10, "node": "gw1"}),
        );
        let Some(Event::Received(r)) = received.parse() else {
            panic!("received not parsed");
        };
        assert_eq!(r.recipients, ["c@d.test"]);
        assert!(r.client_certificate.unwrap().verified);

        let deferred = row(
            "deferred",
            json!({"recipient": "c@d.test", "relay": "", "detail": "timeout"}),
        );
        let event = deferred.parse().unwrap();
        assert_eq!(event.kind(), "deferred");
        assert_eq!(event.outcome().unwrap().detail, "timeout");
    }

    #[test]
    fn events_round_trip_through_a_row() {
        let attempt = Attempt {
            host: "mx1.partner.test".into(),
            ip: "192.0.2.2".parse().unwrap(),
            port: 25,
            local_ip: Some("192.0.2.100".parse().unwrap()),
            mode: OutboundMode::Verify,
            requirement: "MTA-STS enforce".into(),
            source: Some(Source::MtaSts),
            policy_type: PolicyType::Sts,
            mta_sts: Some(StsPolicyRef {
                id: "20260101".into(),
                mode: "enforce".into(),
            }),
            tlsa: Vec::new(),
            recorded_verdict: Some(Verdict::Failed),
            result_type: Some(ResultType::CertificateHostMismatch),
            starttls_offered: true,
            tls_version: None,
            cipher: None,
            cert_verified: Some(false),
            verify_error: Some("names mx.other.test".into()),
            cert_names: vec!["mx.other.test".into()],
            cert_chain: Vec::new(),
            tls_error: None,
            tls_fallback_plaintext: false,
            reply: "220 go ahead".into(),
            refused_unconnected: false,
            mta_sts_lookup: None,
            would_fail: vec![WouldFail {
                requirement: "learned verified".into(),
                source: Source::Learned,
                result_type: ResultType::CertificateHostMismatch,
                failure: "certificate names mx.other.test".into(),
            }],
        };
        let event = Event::DeliveryAttempt(DeliveryAttempt {
            domain: "partner.test".into(),
            attempt,
            requiretls: false,
            tls_required_no: false,
        });
        let row = TrackingEvent::new("Q1", None, 5, &event);
        assert_eq!(row.kind, "delivery_attempt");
        assert!(
            row.detail.get("kind").is_none(),
            "the kind has its own column"
        );
        assert_eq!(row.detail["attempt"]["policy_type"], "sts");
        assert_eq!(row.detail["attempt"]["verdict"], "failed");
        assert!(
            row.detail["attempt"].get("report_only").is_none(),
            "report-only verdicts are written once, as would_fail"
        );
        assert_eq!(row.parse(), Some(event));
    }

    #[test]
    fn unknown_kinds_and_shapes_are_left_to_show_raw() {
        assert_eq!(row("rejected", json!({"reply": "550"})).parse(), None);
        assert_eq!(row("delivery_attempt", json!({"attempt": 3})).parse(), None);
        assert_eq!(row("received", json!("text")).parse(), None);
    }

    #[test]
    fn names_are_the_rfc_8460_spellings() {
        for (rt, name) in [
            (ResultType::StarttlsNotSupported, "starttls-not-supported"),
            (ResultType::StsWebpkiInvalid, "sts-webpki-invalid"),
            (ResultType::DaneRequired, "dane-required"),
        ] {
            assert_eq!(serde_json::to_value(rt).unwrap(), name);
            assert_eq!(rt.as_str(), name);
        }
        assert_eq!(
            serde_json::to_value(PolicyType::NoPolicyFound).unwrap(),
            "no-policy-found"
        );
        assert_eq!(serde_json::to_value(Source::MtaSts).unwrap(), "mta-sts");
    }
}
