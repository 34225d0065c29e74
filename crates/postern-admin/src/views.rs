//! What the pages and the API both show, built from the store, the queue
//! and the tracking events: certificate rows, queue entries, message
//! summaries with their hops, dashboard counts. Presentation only: every
//! decision was made by the gateway and recorded.

use std::collections::{BTreeMap, HashMap};

use postern_config::Settings;
use postern_spool::{DeliveryState, QueuedEnvelope};
use postern_store::event::{Attempt, DeliveryAttempt, Received};
use postern_store::{event_kind, CertificateRecord, Event, TrackingEvent};
use postern_tls::CertInfo;
use serde::Serialize;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;

/// Unix seconds as RFC 3339 (UTC); empty when out of range.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Unix seconds as `2026-01-31 12:34:56` (UTC), for tables.
pub fn display_time(unix: i64) -> String {
    rfc3339(unix)
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

/// Parse `2026-01-31T12:34`, `2026-01-31T12:34:56`, full RFC 3339 or unix
/// seconds; naive times are UTC.
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(unix) = text.parse::<i64>() {
        return Some(unix);
    }
    if let Ok(t) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Some(t.unix_timestamp());
    }
    let with_seconds = if text.len() == 16 {
        format!("{text}:00Z")
    } else {
        format!("{text}Z")
    };
    time::OffsetDateTime::parse(&with_seconds, &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// One row of the certificate table. Never carries the private key.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateView {
    pub name: String,
    /// `certificate` (with private key) or `ca` (trust anchor).
    pub kind: &'static str,
    pub has_private_key: bool,
    pub created_at: String,
    #[serde(flatten)]
    pub info: Option<CertInfo>,
    /// Why the chain could not be described, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Setting keys (and `admin.listener`) that use this entry.
    pub used_by: Vec<String>,
}

/// Which settings use `name`, plus the admin listener.
pub fn used_by(settings: &Settings, name: &str, admin_certificate: Option<&str>) -> Vec<String> {
    let mut keys: Vec<String> = settings
        .certificate_usage(name)
        .into_iter()
        .map(str::to_string)
        .collect();
    if admin_certificate == Some(name) {
        keys.push("admin listener".to_string());
    }
    keys
}

pub fn certificate_view(
    record: &CertificateRecord,
    settings: &Settings,
    admin_certificate: Option<&str>,
) -> CertificateView {
    let (info, error) = match postern_tls::describe(&record.chain_pem) {
        Ok(info) => (Some(info), None),
        Err(e) => (None, Some(e.to_string())),
    };
    CertificateView {
        name: record.name.clone(),
        kind: if record.has_private_key() {
            "certificate"
        } else {
            "ca"
        },
        has_private_key: record.has_private_key(),
        created_at: rfc3339(record.created_at),
        info,
        error,
        used_by: used_by(settings, &record.name, admin_certificate),
    }
}

/// A certificate name as a file name for downloads: only safe characters.
pub fn download_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches('.').to_string();
    if cleaned.is_empty() {
        "certificate.pem".to_string()
    } else {
        format!("{cleaned}.pem")
    }
}

// ---------------------------------------------------------------------------
// Queue
// ---------------------------------------------------------------------------

pub fn state_name(state: DeliveryState) -> &'static str {
    match state {
        DeliveryState::Pending => "pending",
        DeliveryState::Deferred => "deferred",
        DeliveryState::Delivered => "delivered",
        DeliveryState::Bounced => "bounced",
    }
}

/// The JSON of `postern queue list --json` (SPEC §2), one message.
pub fn queue_json(q: &QueuedEnvelope) -> Value {
    serde_json::json!({
        "id": q.id.to_string(),
        "message_id": q.envelope.message_id,
        "sender": q.envelope.sender,
        "size": q.size,
        "received_at": rfc3339(q.envelope.received_at),
        "client": q.envelope.client_addr,
        "helo": q.envelope.helo,
        "tls": q.envelope.tls,
        "recipients": q.recipients.iter().map(|r| serde_json::json!({
            "address": r.address,
            "state": state_name(r.state),
            "attempts": r.attempts,
            "next_attempt": r.next_attempt.map(rfc3339),
            "last_error": r.last_error,
        })).collect::<Vec<_>>(),
    })
}

/// Queue list filters (all optional, all must match).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct QueueFilter {
    /// Substring of the sender, ignoring case.
    pub sender: String,
    /// Substring of any recipient, ignoring case.
    pub recipient: String,
    /// Substring of the Message-ID or the queue id.
    pub message_id: String,
    /// `pending`, `deferred`, `delivered` or `bounced`: some recipient is in it.
    pub state: String,
}

fn contains_ci(haystack: &str, needle: &str) -> bool {
    needle.is_empty()
        || haystack
            .to_lowercase()
            .contains(&needle.trim().to_lowercase())
}

impl QueueFilter {
    pub fn matches(&self, q: &QueuedEnvelope) -> bool {
        contains_ci(&q.envelope.sender, &self.sender)
            && (self.recipient.is_empty()
                || q.recipients
                    .iter()
                    .any(|r| contains_ci(&r.address, &self.recipient)))
            && (self.message_id.is_empty()
                || contains_ci(
                    q.envelope.message_id.as_deref().unwrap_or(""),
                    &self.message_id,
                )
                || contains_ci(q.id.as_str(), &self.message_id))
            && (self.state.is_empty()
                || q.recipients
                    .iter()
                    .any(|r| state_name(r.state) == self.state.trim()))
    }

    /// The state filter, when given, must be a known state.
    pub fn check(&self) -> Result<(), String> {
        let state = self.state.trim();
        if state.is_empty() || ["pending", "deferred", "delivered", "bounced"].contains(&state) {
            Ok(())
        } else {
            Err(format!(
                "\"{state}\" is not a state; use pending, deferred, delivered or bounced"
            ))
        }
    }
}

// ---------------------------------------------------------------------------
// Message tracking
// ---------------------------------------------------------------------------

/// One message as tracking saw it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MessageSummary {
    pub queue_id: String,
    pub message_id: Option<String>,
    pub received_at: Option<String>,
    pub sender: Option<String>,
    pub recipients: Vec<String>,
    pub client: Option<String>,
    /// Inbound TLS version, `None` for plaintext.
    pub tls_version: Option<String>,
    pub cipher: Option<String>,
    /// `queued`, `deferred`, `delivered`, `bounced` or `partly delivered`.
    pub status: String,
    pub last_event_at: String,
    #[serde(skip)]
    pub received_unix: Option<i64>,
}

/// One hop of a message: how it came in, or one delivery attempt.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Hop {
    /// `inbound` (received from) or `outbound` (delivered to).
    pub direction: &'static str,
    pub at: String,
    /// Client address, or `host [ip]:port`.
    pub peer: String,
    /// EHLO name (inbound) or the recipient domain (outbound).
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub tls_version: Option<String>,
    pub cipher: Option<String>,
    /// Inbound: the client certificate's subject and whether it verified.
    /// Outbound: `verified`, `not verified: why`, or `no certificate`.
    pub verification: String,
    /// Outbound: whether the server certificate verified.
    pub cert_verified: Option<bool>,
    pub verify_error: Option<String>,
    pub tls_error: Option<String>,
    pub tls_fallback_plaintext: bool,
    /// Outbound: the TLS mode that applied.
    pub mode: Option<String>,
    /// Outbound: the requirement (`domain verify`) and the source that set
    /// it (`domain`); absent in events recorded before the policy engine.
    pub requirement: Option<String>,
    pub source: Option<String>,
    /// Outbound: the RFC 8460 result type of a TLS policy failure.
    pub result_type: Option<String>,
    /// Outbound: whether the requirement was met (`met`, `failed`,
    /// `not-reached`).
    pub verdict: Option<String>,
    /// Outbound: the published policy in force (RFC 8460 `sts`, `tlsa`,
    /// `no-policy-found`).
    pub policy_type: Option<String>,
    /// Outbound: the MTA-STS policy (`id 2026a, mode enforce`) or the TLSA
    /// records used.
    pub policy: Option<String>,
    /// Outbound: the report-only requirements the attempt did not meet
    /// (`MTA-STS testing (mta-sts): failed, certificate-not-trusted`).
    pub report_only: Vec<String>,
    /// Outbound: the server's last reply.
    pub reply: Option<String>,
}

/// Where each recipient ended up, from the outcome events.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecipientOutcome {
    pub recipient: String,
    pub state: String,
    pub at: String,
    pub relay: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MessageDetail {
    #[serde(flatten)]
    pub summary: MessageSummary,
    pub hops: Vec<Hop>,
    pub outcomes: Vec<RecipientOutcome>,
    pub events: Vec<TrackingEvent>,
}

/// Group events (any order) by queue id, oldest first inside each.
pub fn group_by_queue_id(events: Vec<TrackingEvent>) -> Vec<(String, Vec<TrackingEvent>)> {
    let mut order: Vec<String> = Vec::new();
    let mut groups: HashMap<String, Vec<TrackingEvent>> = HashMap::new();
    for event in events {
        if !groups.contains_key(&event.queue_id) {
            order.push(event.queue_id.clone());
        }
        groups
            .entry(event.queue_id.clone())
            .or_default()
            .push(event);
    }
    order
        .into_iter()
        .filter_map(|id| {
            let mut list = groups.remove(&id)?;
            list.sort_by_key(|e| e.at);
            Some((id, list))
        })
        .collect()
}

/// The summary of one message's events (oldest first).
pub fn summarize(queue_id: &str, events: &[TrackingEvent]) -> MessageSummary {
    let parsed: Vec<(&TrackingEvent, Option<Event>)> =
        events.iter().map(|e| (e, e.parse())).collect();
    let received = parsed.iter().find_map(|(e, typed)| match typed {
        Some(Event::Received(r)) => Some((*e, r)),
        _ => None,
    });
    let message_id = events.iter().find_map(|e| e.message_id.clone());
    let mut recipients: Vec<String> = received
        .map(|(_, r)| r.recipients.clone())
        .unwrap_or_default();
    let mut last_state: BTreeMap<String, String> = BTreeMap::new();
    for (event, typed) in &parsed {
        if let Some(outcome) = typed.as_ref().and_then(Event::outcome) {
            let rcpt = outcome.recipient.clone();
            if !recipients.contains(&rcpt) {
                recipients.push(rcpt.clone());
            }
            last_state.insert(rcpt, event.kind.clone());
        }
    }
    let states: Vec<&str> = recipients
        .iter()
        .map(|r| last_state.get(r).map_or("queued", String::as_str))
        .collect();
    let status = if states.is_empty() {
        "queued".to_string()
    } else if states.iter().all(|s| *s == states[0]) {
        states[0].to_string()
    } else if states.contains(&"deferred") {
        "deferred".to_string()
    } else if states.contains(&"queued") {
        "queued".to_string()
    } else {
        "partly delivered".to_string()
    };
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    MessageSummary {
        queue_id: queue_id.to_string(),
        message_id,
        received_at: received.map(|(e, _)| rfc3339(e.at)),
        received_unix: received.map(|(e, _)| e.at),
        sender: received.map(|(_, r)| r.sender.clone()),
        recipients,
        client: received.and_then(|(_, r)| non_empty(&r.client)),
        tls_version: received.and_then(|(_, r)| r.tls_version.clone()),
        cipher: received.and_then(|(_, r)| r.cipher.clone()),
        status,
        last_event_at: events.last().map(|e| rfc3339(e.at)).unwrap_or_default(),
    }
}

fn inbound_hop(at: i64, r: &Received) -> Hop {
    let verification = match &r.client_certificate {
        Some(cert) => format!(
            "client certificate {} ({})",
            cert.subject,
            if cert.verified {
                "verified"
            } else {
                "not verified"
            }
        ),
        None if r.tls_version.is_some() => "no client certificate".to_string(),
        None => "plaintext".to_string(),
    };
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Hop {
        direction: "inbound",
        at: rfc3339(at),
        peer: r.client.clone(),
        name: non_empty(&r.helo),
        protocol: non_empty(&r.protocol),
        tls_version: r.tls_version.clone(),
        cipher: r.cipher.clone(),
        verification,
        cert_verified: None,
        verify_error: None,
        tls_error: None,
        tls_fallback_plaintext: false,
        mode: None,
        requirement: None,
        source: None,
        result_type: None,
        verdict: None,
        policy_type: None,
        policy: None,
        report_only: Vec::new(),
        reply: None,
    }
}

fn outbound_hop(at: i64, d: &DeliveryAttempt) -> Hop {
    let a = &d.attempt;
    let verification = match (a.cert_verified, &a.verify_error) {
        (Some(true), _) => "certificate verified".to_string(),
        (Some(false), Some(why)) => format!("certificate not verified: {why}"),
        (Some(false), None) => "certificate not verified".to_string(),
        (None, _) if a.tls_version.is_some() => "no certificate seen".to_string(),
        (None, _) => "plaintext".to_string(),
    };
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    // Events from before the policy engine carry no requirement: show
    // nothing rather than guess.
    let has_policy = a.source.is_some();
    Hop {
        direction: "outbound",
        at: rfc3339(at),
        peer: a.peer(),
        name: non_empty(&d.domain),
        protocol: None,
        tls_version: a.tls_version.clone(),
        cipher: a.cipher.clone(),
        verification,
        cert_verified: a.cert_verified,
        verify_error: a.verify_error.clone(),
        tls_error: a.tls_error.clone(),
        tls_fallback_plaintext: a.tls_fallback_plaintext,
        mode: Some(level_name(a.mode).to_string()),
        requirement: non_empty(&a.requirement),
        source: a.source.map(|s| s.as_str().to_string()),
        result_type: a.result_type.map(|t| t.as_str().to_string()),
        verdict: has_policy.then(|| a.verdict().as_str().to_string()),
        policy_type: has_policy.then(|| a.policy_type.as_str().to_string()),
        policy: policy_text(a),
        report_only: a
            .would_fail
            .iter()
            .map(|w| {
                format!(
                    "{} ({}): failed, {}",
                    w.requirement,
                    w.source.as_str(),
                    w.result_type.as_str()
                )
            })
            .collect(),
        reply: non_empty(&a.reply),
    }
}

/// The MTA-STS policy or the TLSA records an attempt used.
fn policy_text(a: &Attempt) -> Option<String> {
    if let Some(sts) = &a.mta_sts {
        return Some(format!("MTA-STS id {}, mode {}", sts.id, sts.mode));
    }
    (!a.tlsa.is_empty()).then(|| format!("TLSA {}", a.tlsa.join("; ")))
}

fn level_name(mode: postern_config::OutboundMode) -> &'static str {
    match mode {
        postern_config::OutboundMode::None => "none",
        postern_config::OutboundMode::Opportunistic => "opportunistic",
        postern_config::OutboundMode::Require => "require",
        postern_config::OutboundMode::Verify => "verify",
    }
}

/// Summary, hops and outcomes of one message's events (oldest first).
pub fn detail(queue_id: &str, events: Vec<TrackingEvent>) -> MessageDetail {
    let summary = summarize(queue_id, &events);
    let mut hops = Vec::new();
    let mut outcomes = Vec::new();
    for event in &events {
        match event.parse() {
            Some(Event::Received(r)) => hops.push(inbound_hop(event.at, &r)),
            Some(Event::DeliveryAttempt(d)) => hops.push(outbound_hop(event.at, &d)),
            Some(Event::Delivered(o) | Event::Deferred(o) | Event::Bounced(o)) => {
                outcomes.push(RecipientOutcome {
                    recipient: o.recipient,
                    state: event.kind.clone(),
                    at: rfc3339(event.at),
                    relay: (!o.relay.is_empty()).then_some(o.relay),
                    detail: (!o.detail.is_empty()).then_some(o.detail),
                });
            }
            // Unknown kinds and shapes stay in the raw event list.
            None => {}
        }
    }
    MessageDetail {
        summary,
        hops,
        outcomes,
        events,
    }
}

/// `(since, until)`, unix seconds.
pub type TimeBounds = (Option<i64>, Option<i64>);

/// Tracking search filters.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct MessageQuery {
    /// Queue id, Message-ID, or any text of the events (address, host).
    pub q: String,
    pub sender: String,
    pub recipient: String,
    /// Received at or after (RFC 3339, `YYYY-MM-DDTHH:MM` UTC, or unix).
    pub since: String,
    /// Received at or before.
    pub until: String,
    /// At most this many messages (default 100, at most 1000).
    pub limit: Option<usize>,
}

impl MessageQuery {
    /// Parsed time bounds; the error names the field.
    pub fn bounds(&self) -> Result<TimeBounds, (&'static str, String)> {
        let parse = |field: &'static str,
                     value: &str|
         -> Result<Option<i64>, (&'static str, String)> {
            if value.trim().is_empty() {
                return Ok(None);
            }
            parse_time(value).map(Some).ok_or_else(|| {
                (
                    field,
                    format!("\"{value}\" is not a time (use 2026-01-31T12:00, RFC 3339 or unix seconds)"),
                )
            })
        };
        Ok((parse("since", &self.since)?, parse("until", &self.until)?))
    }

    pub fn matches(
        &self,
        summary: &MessageSummary,
        since: Option<i64>,
        until: Option<i64>,
    ) -> bool {
        let at = summary.received_unix;
        contains_ci(summary.sender.as_deref().unwrap_or(""), &self.sender)
            && (self.recipient.is_empty()
                || summary
                    .recipients
                    .iter()
                    .any(|r| contains_ci(r, &self.recipient)))
            && since.is_none_or(|s| at.is_some_and(|at| at >= s))
            && until.is_none_or(|u| at.is_some_and(|at| at <= u))
    }

    /// The text the store search narrows by: the most specific given.
    pub fn search_text(&self) -> Option<String> {
        [&self.q, &self.sender, &self.recipient]
            .into_iter()
            .map(|s| s.trim())
            .find(|s| !s.is_empty())
            .map(str::to_string)
    }
}

// ---------------------------------------------------------------------------
// Dashboard
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Bucket {
    pub start: String,
    #[serde(skip)]
    pub start_unix: i64,
    pub received: u64,
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TlsShare {
    pub tls: u64,
    pub plaintext: u64,
}

impl TlsShare {
    /// Percentage over TLS, `None` without traffic.
    pub fn percent(&self) -> Option<u64> {
        let total = self.tls + self.plaintext;
        (total > 0).then(|| (self.tls * 100 + total / 2) / total)
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct QueueCounts {
    pub messages: u64,
    pub recipients_pending: u64,
    pub recipients_deferred: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Stats {
    pub since: String,
    pub bucket_seconds: i64,
    pub buckets: Vec<Bucket>,
    pub totals: Bucket,
    /// Messages received over TLS / in plaintext.
    pub tls_inbound: TlsShare,
    /// Delivery connections (attempts) over TLS / in plaintext.
    pub tls_outbound: TlsShare,
    pub queue: QueueCounts,
}

/// Dashboard counts over `[since, since + buckets * bucket_seconds)`.
pub fn stats(
    events: &[TrackingEvent],
    since: i64,
    bucket_seconds: i64,
    buckets: usize,
    queue: QueueCounts,
) -> Stats {
    let bucket_seconds = bucket_seconds.max(1);
    let mut list: Vec<Bucket> = (0..buckets)
        .map(|i| {
            let start = since + i64::try_from(i).unwrap_or(0) * bucket_seconds;
            Bucket {
                start: rfc3339(start),
                start_unix: start,
                ..Bucket::default()
            }
        })
        .collect();
    let mut totals = Bucket {
        start: rfc3339(since),
        start_unix: since,
        ..Bucket::default()
    };
    let mut tls_inbound = TlsShare::default();
    let mut tls_outbound = TlsShare::default();
    for event in events {
        if event.at < since {
            continue;
        }
        let index = usize::try_from((event.at - since) / bucket_seconds).unwrap_or(usize::MAX);
        let mut count = |f: fn(&mut Bucket) -> &mut u64| {
            *f(&mut totals) += 1;
            if let Some(bucket) = list.get_mut(index) {
                *f(bucket) += 1;
            }
        };
        // Counted by the kind column, so that an event this version cannot
        // parse still counts; the TLS share needs the parsed event.
        match event.kind.as_str() {
            event_kind::RECEIVED => {
                count(|b| &mut b.received);
                if let Some(Event::Received(r)) = event.parse() {
                    if r.tls_version.is_some() {
                        tls_inbound.tls += 1;
                    } else {
                        tls_inbound.plaintext += 1;
                    }
                }
            }
            event_kind::DELIVERED => count(|b| &mut b.delivered),
            event_kind::DEFERRED => count(|b| &mut b.deferred),
            event_kind::BOUNCED => count(|b| &mut b.bounced),
            event_kind::DELIVERY_ATTEMPT => {
                if let Some(Event::DeliveryAttempt(d)) = event.parse() {
                    if d.attempt.tls_version.is_some() {
                        tls_outbound.tls += 1;
                    } else {
                        tls_outbound.plaintext += 1;
                    }
                }
            }
            _ => {}
        }
    }
    Stats {
        since: rfc3339(since),
        bucket_seconds,
        buckets: list,
        totals,
        tls_inbound,
        tls_outbound,
        queue,
    }
}

pub fn queue_counts(queue: &[QueuedEnvelope]) -> QueueCounts {
    let mut counts = QueueCounts {
        messages: u64::try_from(queue.len()).unwrap_or(u64::MAX),
        ..QueueCounts::default()
    };
    for r in queue.iter().flat_map(|q| &q.recipients) {
        match r.state {
            DeliveryState::Pending => counts.recipients_pending += 1,
            DeliveryState::Deferred => counts.recipients_deferred += 1,
            _ => {}
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(queue_id: &str, at: i64, kind: &str, detail: Value) -> TrackingEvent {
        TrackingEvent {
            queue_id: queue_id.into(),
            message_id: Some("<m@x>".into()),
            at,
            kind: kind.into(),
            detail,
        }
    }

    fn received(queue_id: &str, at: i64, tls: bool) -> TrackingEvent {
        ev(
            queue_id,
            at,
            "received",
            json!({
                "client": "127.0.0.1:5000", "helo": "client.test", "protocol": "ESMTPS",
                "tls_version": if tls { Some("TLSv1.3") } else { None },
                "cipher": if tls { Some("TLS13_AES_256_GCM_SHA384") } else { None },
                "client_certificate": null,
                "sender": "Alice@Example.test", "recipients": ["a@b.test", "c@d.test"], "size": 10
            }),
        )
    }

    #[test]
    fn times_parse_and_format() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(display_time(86_400), "1970-01-02 00:00:00");
        assert_eq!(parse_time("1970-01-01T00:01"), Some(60));
        assert_eq!(parse_time("1970-01-01T00:01:05"), Some(65));
        assert_eq!(parse_time("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_time("1234"), Some(1234));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time(""), None);
    }

    #[test]
    fn download_names_are_safe() {
        assert_eq!(download_name("Default Cert"), "Default_Cert.pem");
        assert_eq!(download_name("../../etc/passwd"), "_.._etc_passwd.pem");
        assert_eq!(download_name(".."), "certificate.pem");
        assert_eq!(download_name("ä\"\r\n"), "____.pem");
    }

    #[test]
    fn message_summary_and_hops() {
        let events = vec![
            received("Q1", 100, true),
            ev(
                "Q1",
                110,
                "delivery_attempt",
                json!({"domain": "b.test", "attempt": {
                    "host": "mx.b.test", "ip": "192.0.2.1", "port": 25, "mode": "verify",
                    "starttls_offered": true, "tls_version": "TLSv1.2",
                    "cipher": "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "cert_verified": false,
                    "verify_error": "unknown issuer", "tls_error": null,
                    "tls_fallback_plaintext": false, "reply": "250 ok"}}),
            ),
            ev(
                "Q1",
                111,
                "delivered",
                json!({"recipient": "a@b.test", "relay": "mx.b.test[192.0.2.1]:25", "detail": "250 ok"}),
            ),
            ev(
                "Q1",
                112,
                "deferred",
                json!({"recipient": "c@d.test", "relay": "", "detail": "timeout"}),
            ),
        ];
        let d = detail("Q1", events);
        assert_eq!(d.summary.sender.as_deref(), Some("Alice@Example.test"));
        assert_eq!(d.summary.tls_version.as_deref(), Some("TLSv1.3"));
        assert_eq!(d.summary.status, "deferred");
        assert_eq!(d.hops.len(), 2);
        assert_eq!(d.hops[0].direction, "inbound");
        assert_eq!(d.hops[0].verification, "no client certificate");
        assert_eq!(d.hops[1].peer, "mx.b.test 192.0.2.1:25");
        assert_eq!(d.hops[1].cert_verified, Some(false));
        // An event from before the policy engine: no requirement, still shown.
        assert_eq!(d.hops[1].requirement, None);
        assert_eq!(d.hops[1].mode.as_deref(), Some("verify"));
        assert_eq!(
            d.hops[1].verification,
            "certificate not verified: unknown issuer"
        );
        assert_eq!(d.outcomes.len(), 2);
        assert_eq!(d.outcomes[1].relay, None);

        let q = MessageQuery {
            sender: "alice@".into(),
            ..MessageQuery::default()
        };
        assert!(q.matches(&d.summary, Some(100), Some(100)));
        assert!(!q.matches(&d.summary, Some(101), None));
        let q = MessageQuery {
            recipient: "nobody".into(),
            ..MessageQuery::default()
        };
        assert!(!q.matches(&d.summary, None, None));
        let q = MessageQuery {
            since: "soon".into(),
            ..MessageQuery::default()
        };
        assert_eq!(q.bounds().unwrap_err().0, "since");
    }

    #[test]
    fn attempts_show_verdict_policy_and_report_only_verdicts() {
        let events = vec![ev(
            "Q3",
            110,
            "delivery_attempt",
            json!({"domain": "partner.test", "attempt": {
                "host": "mx1.partner.test", "ip": "192.0.2.2", "port": 25, "mode": "verify",
                "requirement": "MTA-STS enforce", "source": "mta-sts", "policy_type": "sts",
                "mta_sts": {"id": "20260101", "mode": "enforce"}, "verdict": "failed",
                "result_type": "certificate-host-mismatch",
                "report_only": [{"requirement": "learned verify", "source": "learned",
                                 "verdict": "failed", "result_type": "certificate-host-mismatch"}],
                "starttls_offered": true, "reply": "220 go ahead"}}),
        )];
        let d = detail("Q3", events);
        let hop = &d.hops[0];
        assert_eq!(hop.peer, "mx1.partner.test 192.0.2.2:25");
        assert_eq!(hop.verdict.as_deref(), Some("failed"));
        assert_eq!(hop.policy_type.as_deref(), Some("sts"));
        assert_eq!(
            hop.policy.as_deref(),
            Some("MTA-STS id 20260101, mode enforce")
        );
        assert_eq!(
            hop.report_only,
            ["learned verify (learned): failed, certificate-host-mismatch"]
        );
        // An unparseable event is left to the raw list, not dropped.
        let raw = vec![ev("Q4", 1, "delivery_attempt", json!({"attempt": 1}))];
        let d = detail("Q4", raw);
        assert!(d.hops.is_empty());
        assert_eq!(d.events.len(), 1);
    }

    #[test]
    fn attempts_show_requirement_and_source() {
        let events = vec![
            received("Q2", 100, false),
            ev(
                "Q2",
                110,
                "delivery_attempt",
                json!({"domain": "b.test", "attempt": {
                    "host": "mx.b.test", "ip": "192.0.2.1", "port": 25, "mode": "verify",
                    "requirement": "domain verify", "source": "domain",
                    "result_type": "certificate-not-trusted",
                    "starttls_offered": true, "tls_version": null, "cert_verified": false,
                    "verify_error": "certificate is self-signed", "reply": "220 go ahead"}}),
            ),
        ];
        let d = detail("Q2", events);
        let hop = &d.hops[1];
        assert_eq!(hop.requirement.as_deref(), Some("domain verify"));
        assert_eq!(hop.source.as_deref(), Some("domain"));
        assert_eq!(hop.result_type.as_deref(), Some("certificate-not-trusted"));
    }

    #[test]
    fn all_delivered_is_delivered() {
        let events = vec![
            received("Q", 1, false),
            ev("Q", 2, "delivered", json!({"recipient": "a@b.test"})),
            ev("Q", 3, "delivered", json!({"recipient": "c@d.test"})),
        ];
        let s = summarize("Q", &events);
        assert_eq!(s.status, "delivered");
        let events = vec![
            received("Q", 1, false),
            ev("Q", 2, "delivered", json!({"recipient": "a@b.test"})),
            ev("Q", 3, "bounced", json!({"recipient": "c@d.test"})),
        ];
        assert_eq!(summarize("Q", &events).status, "partly delivered");
        assert_eq!(summarize("Q", &events[..1]).status, "queued");
    }

    #[test]
    fn dashboard_counts_by_hour_and_tls_share() {
        let events = vec![
            received("A", 1000, true),
            received("B", 1000 + 3600, false),
            received("C", 1000 + 3601, true),
            ev("A", 1100, "delivered", json!({})),
            ev(
                "A",
                1100,
                "delivery_attempt",
                json!({"attempt": {"host": "mx.b.test", "ip": "192.0.2.1", "port": 25,
                                   "mode": "opportunistic", "tls_version": "TLSv1.3"}}),
            ),
            ev(
                "B",
                5000,
                "delivery_attempt",
                json!({"attempt": {"host": "mx.b.test", "ip": "192.0.2.1", "port": 25,
                                   "mode": "opportunistic", "tls_version": null}}),
            ),
            ev("B", 5000, "deferred", json!({})),
            ev("Z", 10, "received", json!({})),
        ];
        let s = stats(&events, 1000, 3600, 3, QueueCounts::default());
        assert_eq!(s.buckets.len(), 3);
        assert_eq!((s.buckets[0].received, s.buckets[0].delivered), (1, 1));
        assert_eq!((s.buckets[1].received, s.buckets[1].deferred), (2, 1));
        assert_eq!(s.totals.received, 3);
        assert_eq!(
            s.tls_inbound,
            TlsShare {
                tls: 2,
                plaintext: 1
            }
        );
        assert_eq!(s.tls_inbound.percent(), Some(67));
        assert_eq!(
            s.tls_outbound,
            TlsShare {
                tls: 1,
                plaintext: 1
            }
        );
        assert_eq!(TlsShare::default().percent(), None);
    }
}
