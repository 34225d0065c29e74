//! What one domain delivery tells the learning of per-domain TLS levels
//! (SPEC §10 item 4) and the `monitor` rules (item 7): pure functions over
//! the courier's [`DomainReport`]. Keeping the evidence, deciding the
//! learned level and writing to the store happen in the binary; the
//! courier only asks a [`LearnedLevels`] for the level before it forms a
//! requirement.

use postern_config::{OutboundMode, Settings};

use crate::client::AttemptRecord;
use crate::courier::DomainReport;
use crate::policy::{LearnMode, LearnedLevel};

/// The learned level of a recipient domain, as the courier asks for it.
pub trait LearnedLevels: Send + Sync {
    /// The level learned for `domain` and what `tls.outbound.learn` does
    /// with it; `None` when nothing is learned (or learning is off).
    fn learned(&self, settings: &Settings, domain: &str) -> Option<(LearnedLevel, LearnMode)>;
}

/// The security one session had: `None` for plaintext.
pub fn session_level(record: &AttemptRecord) -> Option<LearnedLevel> {
    if !record.is_tls() {
        return None;
    }
    if record.cert_verified == Some(true) {
        Some(LearnedLevel::Verified)
    } else {
        Some(LearnedLevel::Tls)
    }
}

/// The attempt that delivered (some recipient accepted), if one did: the
/// courier stops at the first host that takes the message, so it is the
/// last attempt.
pub fn delivering_attempt(report: &DomainReport) -> Option<&AttemptRecord> {
    if report.outcomes.iter().any(|o| o.is_delivered()) {
        report.attempts.last()
    } else {
        None
    }
}

/// Whether a session reached the point where TLS was decided (the server
/// answered EHLO): only then can a TLS requirement be judged on it.
pub fn reached_tls_decision(record: &AttemptRecord, delivered: bool) -> bool {
    if record.refused_unconnected {
        return false;
    }
    delivered
        || record.starttls_offered
        || record.is_tls()
        || record.tls_error.is_some()
        || record.result_type.is_some()
}

/// Whether the session would have met `level`; the error says what would
/// have failed, in the words of deferral reasons.
pub fn would_meet(level: OutboundMode, record: &AttemptRecord) -> Result<(), String> {
    if level <= OutboundMode::Opportunistic {
        return Ok(());
    }
    if !record.is_tls() {
        return Err(match &record.tls_error {
            Some(error) => format!("TLS failed: {error}"),
            None if !record.starttls_offered => "STARTTLS not offered".to_string(),
            None => "delivered without TLS".to_string(),
        });
    }
    if level == OutboundMode::Verify && record.cert_verified != Some(true) {
        let why = record
            .verify_error
            .clone()
            .unwrap_or_else(|| "no certificate seen".to_string());
        return Err(format!("certificate not verified: {why}"));
    }
    Ok(())
}

/// The requirement a learned level stands for.
pub fn learned_requirement(level: LearnedLevel) -> OutboundMode {
    match level {
        LearnedLevel::Tls => OutboundMode::Require,
        LearnedLevel::Verified => OutboundMode::Verify,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use super::*;
    use crate::policy::{ResultType, Source, TlsPolicyFailure};

    fn record(tls: bool, verified: Option<bool>, offered: bool) -> AttemptRecord {
        AttemptRecord {
            host: "mx.partner.test".into(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 25,
            mode: OutboundMode::Opportunistic,
            requirement: "global opportunistic".into(),
            source: Source::Global,
            result_type: None,
            starttls_offered: offered,
            tls_version: tls.then(|| "TLSv1.3".to_string()),
            cipher: None,
            cert_verified: verified,
            verify_error: (verified == Some(false)).then(|| "self-signed".to_string()),
            cert_problem: None,
            cert_names: Vec::new(),
            cert_chain: Vec::new(),
            tls_error: None,
            tls_fallback_plaintext: false,
            reply: "250 ok".into(),
            local_ip: None,
            mta_sts: None,
            would_fail: Vec::new(),
            requirement_met: None,
            refused_unconnected: false,
            policy: crate::policy::Requirement::at(
                OutboundMode::Opportunistic,
                Source::Global,
                "mx.partner.test",
            ),
        }
    }

    #[test]
    fn levels_of_sessions() {
        assert_eq!(session_level(&record(false, None, false)), None);
        assert_eq!(
            session_level(&record(true, Some(false), true)),
            Some(LearnedLevel::Tls)
        );
        assert_eq!(
            session_level(&record(true, Some(true), true)),
            Some(LearnedLevel::Verified)
        );
    }

    #[test]
    fn a_host_refused_unconnected_reached_no_tls_decision() {
        let requirement =
            crate::policy::Requirement::at(OutboundMode::Verify, Source::MtaSts, "mx.partner.test");
        let failure = TlsPolicyFailure::MxNotInPolicy {
            host: "mx.partner.test".into(),
        };
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 25);
        let refused = AttemptRecord::refused("mx.partner.test", addr, &requirement, &failure);
        assert_eq!(refused.result_type, Some(ResultType::ValidationFailure));
        assert_eq!(refused.requirement_met, Some(false));
        assert!(!reached_tls_decision(&refused, false));
        assert!(reached_tls_decision(&record(true, Some(true), true), false));
    }

    #[test]
    fn would_meet_table() {
        use OutboundMode::{Opportunistic, Require, Verify};
        let plain = record(false, None, false);
        let masked_offer = record(false, None, true);
        let tls = record(true, Some(false), true);
        let verified = record(true, Some(true), true);
        for (level, rec, want) in [
            (Opportunistic, &plain, Ok(())),
            (OutboundMode::None, &plain, Ok(())),
            (Require, &plain, Err("STARTTLS not offered")),
            (Require, &masked_offer, Err("delivered without TLS")),
            (Require, &tls, Ok(())),
            (Verify, &tls, Err("certificate not verified: self-signed")),
            (Verify, &verified, Ok(())),
            (Require, &verified, Ok(())),
        ] {
            let got = would_meet(level, rec);
            assert_eq!(got, want.map_err(str::to_string), "{level:?} {rec:?}");
        }
    }
}
