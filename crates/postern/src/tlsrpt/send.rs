//! Plan, claim and deliver a period's reports.
//!
//! For each recipient domain attempted in the period (or the one asked
//! for): look up `_smtp._tls`, build the report, claim (domain, day) in the
//! store — of several nodes only the one whose insert wins goes on — and
//! deliver to every `rua`: `mailto:` through our own queue, `https:` by
//! POST. An `https:` delivery is in the store with its body before the
//! first POST, so a failure (or a crash) is retried by any node's retry
//! task, with the queue's backoff (`mta.min_backoff` doubling up to
//! `mta.max_backoff`), for 24 hours.

use std::io::Write as _;

use anyhow::{anyhow, Result};
use postern_config::Settings;
use postern_delivery::ClientTls;
use postern_store::tlsrpt::report::{self, Report, ReportMeta, DAY_SECS};
use postern_store::tlsrpt::{DeliveryStatus, DeliveryUpdate, ReportClaim, ReportDelivery};
use postern_tls::DkimKeyType;

use super::discovery::{self, Destination, Published};
use super::mail::{self, ReportMail};
use super::{LocalQueue, Reporter};
use crate::context::unix_now;

/// How long `https:` failures are retried.
pub const RETRY_FOR_SECS: i64 = DAY_SECS;
/// How long a node holds a delivery it is trying (another node takes it
/// over after that, e.g. when this one died mid-POST).
pub const LEASE_SECS: i64 = 300;

/// The period of one report: a UTC day, cut at `now` for the current day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Period {
    pub day: String,
    pub start: i64,
    pub end: i64,
}

impl Period {
    /// `day` (`YYYY-MM-DD`), or the previous UTC day when `None`.
    pub fn of(day: Option<&str>, now: i64) -> Result<Period, String> {
        let day = match day {
            Some(day) => day.to_string(),
            None => report::day_of(now - DAY_SECS),
        };
        let start = report::day_start(&day)?;
        if start > now {
            return Err(format!("{day} has not begun yet (UTC): nothing to report"));
        }
        Ok(Period {
            end: (start + DAY_SECS).min(now.max(start + 1)),
            day,
            start,
        })
    }
}

/// One domain's report and where it would go.
pub struct Planned {
    pub domain: String,
    /// The `rua`, or why nothing is sent.
    pub destinations: Result<Vec<Destination>, String>,
    /// The `_smtp._tls` lookup itself failed (worth another try later).
    pub lookup_failed: bool,
    pub report: Report,
}

/// `tlsrpt.from`, or `postmaster@<host name>`.
pub fn sender(settings: &Settings, hostname: &str) -> String {
    match settings.tlsrpt.from.as_str() {
        "" => format!("postmaster@{hostname}"),
        from => from.to_string(),
    }
}

/// The reporting domain: the sender's domain.
fn submitter(sender: &str) -> String {
    sender
        .rsplit_once('@')
        .map_or(sender, |(_, domain)| domain)
        .to_ascii_lowercase()
}

/// A report id unique to this report: day, domain, a per-call nonce, and
/// the submitter (message-id form, as RFC 8460's example).
fn report_id(period: &Period, domain: &str, submitter: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // Two processes in the same nanosecond still differ by their pid.
    let nonce = nanos ^ u128::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!(
        "{}.{domain}.{:x}@{submitter}",
        period.day,
        nonce & 0xffff_ffff_ffff
    )
}

/// The reports of `period`: one per domain attempted (or `only`).
pub async fn plan(
    reporter: &Reporter,
    settings: &Settings,
    period: &Period,
    only: Option<&str>,
) -> Result<Vec<Planned>> {
    let store = reporter.store.clone();
    let (start, end) = (period.start, period.end);
    let events =
        tokio::task::spawn_blocking(move || store.tlsrpt().attempt_events(start, end)).await??;
    let attempts = report::attempts(&events);
    let domains = match only {
        Some(domain) => [domain.trim_end_matches('.').to_ascii_lowercase()]
            .into_iter()
            .collect(),
        None => report::domains(&attempts),
    };
    let from = sender(settings, &reporter.hostname);
    let submitter = submitter(&from);
    let organization = match settings.tlsrpt.organization.as_str() {
        "" => reporter.hostname.clone(),
        o => o.to_string(),
    };
    let contact = match settings.tlsrpt.contact.as_str() {
        "" => format!("postmaster@{}", reporter.hostname),
        c => c.to_string(),
    };
    let mut planned = Vec::new();
    for domain in domains {
        let looked_up = discovery::lookup(&reporter.resolver, &domain).await;
        let lookup_failed = looked_up.is_err();
        let destinations = match looked_up {
            Ok(Published::Rua(rua)) => Ok(rua),
            Ok(Published::Nothing(why)) | Err(why) => Err(why),
        };
        let meta = ReportMeta {
            organization: organization.clone(),
            contact: contact.clone(),
            report_id: report_id(period, &domain, &submitter),
            start: period.start,
            end: period.end,
        };
        let report = report::build(&meta, &domain, &attempts);
        planned.push(Planned {
            domain,
            destinations,
            lookup_failed,
            report,
        });
    }
    Ok(planned)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

/// What a send did: one line per domain and destination.
#[derive(Debug, Default)]
pub struct Sent {
    pub lines: Vec<String>,
    /// Some domain's `_smtp._tls` lookup failed: try the period again later
    /// (claims keep what was sent from being sent twice).
    pub incomplete: bool,
}

/// Plan and send the reports of `period` (or of `only`).
pub async fn send(
    reporter: &Reporter,
    settings: &Settings,
    tls: &ClientTls,
    queue: &LocalQueue,
    period: &Period,
    only: Option<&str>,
) -> Result<Sent> {
    let mut lines = Vec::new();
    let mut incomplete = false;
    for planned in plan(reporter, settings, period, only).await? {
        incomplete |= planned.lookup_failed;
        let domain = planned.domain.clone();
        let destinations = match planned.destinations {
            Ok(d) => d,
            Err(why) => {
                lines.push(format!("{domain} {}: not sent: {why}", period.day));
                continue;
            }
        };
        if planned.report.policies.is_empty() {
            lines.push(format!(
                "{domain} {}: not sent: no TLS session to report",
                period.day
            ));
            continue;
        }
        let totals = planned.report.totals();
        let claim = ReportClaim {
            domain: domain.clone(),
            day: period.day.clone(),
            node: reporter.node_name.clone(),
            report_id: planned.report.report_id.clone(),
            claimed_at: unix_now(),
            successful: i64::try_from(totals.total_successful_session_count).unwrap_or(i64::MAX),
            failed: i64::try_from(totals.total_failure_session_count).unwrap_or(i64::MAX),
        };
        let store = reporter.store.clone();
        let won = {
            let claim = claim.clone();
            tokio::task::spawn_blocking(move || store.tlsrpt().claim_report(&claim)).await??
        };
        if !won {
            let store = reporter.store.clone();
            let day = period.day.clone();
            let by = tokio::task::spawn_blocking(move || store.tlsrpt().report_claims(&day))
                .await??
                .into_iter()
                .find(|c| c.domain == domain)
                .map_or_else(
                    || "another node".to_string(),
                    |c| format!("node {}", c.node),
                );
            lines.push(format!(
                "{domain} {}: already sent by {by}: not sent again",
                period.day
            ));
            continue;
        }
        let json = serde_json::to_vec(&planned.report)?;
        let gzipped = gzip(&json)?;
        for destination in destinations {
            let result = match &destination {
                Destination::Mail(to) => {
                    queue_mail(
                        reporter,
                        settings,
                        queue,
                        period,
                        &planned.report,
                        to,
                        &gzipped,
                    )
                    .await
                }
                Destination::Https(url) => {
                    first_post(
                        reporter,
                        tls,
                        period,
                        &domain,
                        url,
                        gzipped.clone(),
                        settings,
                    )
                    .await
                }
            };
            let text = result.unwrap_or_else(|e| format!("failed: {e}"));
            lines.push(format!(
                "{domain} {}: {}: {text}",
                period.day,
                destination.uri()
            ));
        }
    }
    Ok(Sent { lines, incomplete })
}

/// Sign `message` with `tlsrpt.dkim_key` (unsigned, logged, when empty).
fn dkim_signed(reporter: &Reporter, settings: &Settings, message: Vec<u8>) -> Result<Vec<u8>> {
    let name = &settings.tlsrpt.dkim_key;
    if name.is_empty() {
        tracing::info!("tlsrpt: tlsrpt.dkim_key is empty: the report mail goes out unsigned");
        return Ok(message);
    }
    let key = reporter
        .store
        .dkim_key(name)?
        .ok_or_else(|| anyhow!("tlsrpt.dkim_key names {name:?}, which is not in the store"))?;
    let key_type = DkimKeyType::parse(&key.key_type)?;
    let header = postern_tls::dkim_sign(
        &message,
        &key.domain,
        &key.selector,
        key_type,
        &key.private_key_pem,
    )?;
    let mut signed = header.into_bytes();
    signed.extend_from_slice(&message);
    Ok(signed)
}

async fn queue_mail(
    reporter: &Reporter,
    settings: &Settings,
    queue: &LocalQueue,
    period: &Period,
    report: &Report,
    to: &str,
    gzipped: &[u8],
) -> Result<String> {
    let from = sender(settings, &reporter.hostname);
    let submitter = submitter(&from);
    let domain = report
        .policies
        .first()
        .map(|p| p.policy.policy_domain.clone())
        .unwrap_or_default();
    let filename = mail::filename(&submitter, &domain, period.start, period.end);
    let message = mail::render(&ReportMail {
        from: &from,
        to,
        domain: &domain,
        submitter: &submitter,
        report_id: &report.report_id,
        filename: &filename,
        gzipped,
        date: unix_now(),
    })
    .map_err(|e| anyhow!(e))?;
    let message = dkim_signed(reporter, settings, message)?;
    let (spool, runner) = (queue.spool.clone(), queue.runner.clone());
    let recipients = vec![to.to_string()];
    let sender = from.clone();
    let id = tokio::task::spawn_blocking(move || {
        crate::queue::local::submit_local(
            &spool,
            runner.as_deref(),
            &sender,
            &recipients,
            &message,
            true,
        )
    })
    .await??;
    let now = unix_now();
    let delivery = ReportDelivery {
        id: 0,
        domain: domain.clone(),
        day: period.day.clone(),
        destination: format!("mailto:{to}"),
        node: reporter.node_name.clone(),
        status: DeliveryStatus::Queued,
        detail: format!("queued as {id}"),
        queue_id: Some(id.to_string()),
        attempts: 0,
        created_at: now,
        updated_at: now,
        next_attempt: None,
        body: None,
    };
    let store = reporter.store.clone();
    tokio::task::spawn_blocking(move || store.tlsrpt().add_report_delivery(&delivery)).await??;
    tracing::info!(
        "tlsrpt: report for {domain} {} queued as {id} to <{to}>",
        period.day
    );
    Ok(format!("queued as {id}"))
}

async fn first_post(
    reporter: &Reporter,
    tls: &ClientTls,
    period: &Period,
    domain: &str,
    url: &str,
    gzipped: Vec<u8>,
    settings: &Settings,
) -> Result<String> {
    let now = unix_now();
    let mut delivery = ReportDelivery {
        id: 0,
        domain: domain.to_string(),
        day: period.day.clone(),
        destination: url.to_string(),
        node: reporter.node_name.clone(),
        status: DeliveryStatus::Retrying,
        detail: "being sent".into(),
        queue_id: None,
        attempts: 0,
        created_at: now,
        updated_at: now,
        // Held by this node while it tries; taken over after the lease.
        next_attempt: Some(now + LEASE_SECS),
        body: Some(gzipped),
    };
    let store = reporter.store.clone();
    let row = delivery.clone();
    delivery.id =
        tokio::task::spawn_blocking(move || store.tlsrpt().add_report_delivery(&row)).await??;
    let update = try_post(reporter, tls, settings, &delivery).await?;
    Ok(describe(&update))
}

fn describe(update: &DeliveryUpdate) -> String {
    match update.status {
        DeliveryStatus::Retrying => format!(
            "{}; retrying in {}s",
            update.detail,
            update.next_attempt.unwrap_or(0) - update.updated_at
        ),
        DeliveryStatus::Failed => format!("{}; given up", update.detail),
        _ => update.detail.clone(),
    }
}

/// The delay before retry number `attempts` (1 = after the first failure).
pub fn backoff(settings: &Settings, attempts: i64) -> i64 {
    let min = i64::try_from(settings.mta.min_backoff.as_secs())
        .unwrap_or(300)
        .max(1);
    let max = i64::try_from(settings.mta.max_backoff.as_secs())
        .unwrap_or(3600)
        .max(min);
    let doublings = u32::try_from((attempts - 1).clamp(0, 30)).unwrap_or(30);
    min.saturating_mul(1_i64 << doublings).min(max)
}

/// POST a stored delivery once and record the result.
async fn try_post(
    reporter: &Reporter,
    tls: &ClientTls,
    settings: &Settings,
    delivery: &ReportDelivery,
) -> Result<DeliveryUpdate> {
    let body = delivery.body.clone().unwrap_or_default();
    let result = super::post::post(
        tls,
        &reporter.resolver,
        &delivery.destination,
        reporter.https_port,
        body,
    )
    .await;
    let now = unix_now();
    let attempts = delivery.attempts + 1;
    let update = match result {
        Ok(status) => DeliveryUpdate {
            status: DeliveryStatus::Sent,
            detail: format!("HTTP {status}"),
            node: reporter.node_name.clone(),
            attempts,
            updated_at: now,
            next_attempt: None,
        },
        Err(why) => {
            let next = now + backoff(settings, attempts);
            let give_up = next > delivery.created_at + RETRY_FOR_SECS;
            DeliveryUpdate {
                status: if give_up {
                    DeliveryStatus::Failed
                } else {
                    DeliveryStatus::Retrying
                },
                detail: why,
                node: reporter.node_name.clone(),
                attempts,
                updated_at: now,
                next_attempt: (!give_up).then_some(next),
            }
        }
    };
    tracing::info!(
        "tlsrpt: report for {} {} to {}: {} (attempt {attempts})",
        delivery.domain,
        delivery.day,
        delivery.destination,
        describe(&update)
    );
    let store = reporter.store.clone();
    let (id, row) = (delivery.id, update.clone());
    tokio::task::spawn_blocking(move || store.tlsrpt().update_report_delivery(id, &row)).await??;
    Ok(update)
}

/// Retry every `https:` delivery that is due (any node's).
pub async fn retry_due(reporter: &Reporter, settings: &Settings, tls: &ClientTls) -> Result<usize> {
    let store = reporter.store.clone();
    let now = unix_now();
    let due = tokio::task::spawn_blocking(move || {
        store
            .tlsrpt()
            .take_due_report_deliveries(now, now + LEASE_SECS)
    })
    .await??;
    for delivery in &due {
        try_post(reporter, tls, settings, delivery).await?;
    }
    Ok(due.len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn periods_default_to_yesterday_and_cut_today_at_now() {
        let today = report::day_start("2026-12-03").unwrap();
        let now = today + 3600;
        let yesterday = Period::of(None, now).unwrap();
        assert_eq!(yesterday.day, "2026-12-02");
        assert_eq!((yesterday.start, yesterday.end), (today - DAY_SECS, today));
        let part = Period::of(Some("2026-12-03"), now).unwrap();
        assert_eq!((part.start, part.end), (today, now));
        let error = Period::of(Some("2026-12-04"), now).unwrap_err();
        assert!(error.contains("has not begun"), "{error}");
        assert!(Period::of(Some("12/03/2026"), now).is_err());
    }

    #[test]
    fn https_retries_back_off_like_the_queue() {
        let mut settings = Settings::default();
        settings.mta.min_backoff = "1m".parse().unwrap();
        settings.mta.max_backoff = "10m".parse().unwrap();
        let delays: Vec<i64> = (1..=6).map(|n| backoff(&settings, n)).collect();
        assert_eq!(delays, vec![60, 120, 240, 480, 600, 600]);
    }

    #[test]
    fn the_submitter_is_the_sender_domain() {
        let mut settings = Settings::default();
        assert_eq!(sender(&settings, "gw.test"), "postmaster@gw.test");
        settings.tlsrpt.from = "tlsrpt@Example.COM".into();
        assert_eq!(submitter(&sender(&settings, "gw.test")), "example.com");
    }
}
