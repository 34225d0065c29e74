//! Delivery's attempt records turned into tracking events: the one place
//! where `postern-delivery`'s policy types (requirement, source, result
//! type) become the store's plain event data. New policy sources and
//! failure kinds are added here, and the compiler points here when they
//! are missing.

use postern_delivery::policy::MtaStsMode;
use postern_delivery::{AttemptRecord, CertAuth, Requirement, ResultType, Source};
use postern_store::event::{self, Attempt, PolicyType, StsPolicyRef, Verdict};

/// The tracking event's view of one attempt.
pub fn attempt(record: &AttemptRecord) -> Attempt {
    let policy = &record.policy;
    Attempt {
        host: record.host.clone(),
        ip: record.ip,
        port: record.port,
        local_ip: record.local_ip,
        mode: record.mode,
        requirement: record.requirement.clone(),
        source: Some(source(record.source)),
        policy_type: policy_type(policy),
        mta_sts: policy.mta_sts.as_ref().map(|sts| StsPolicyRef {
            id: sts.id.clone(),
            mode: mts_mode(sts.mode).to_string(),
        }),
        tlsa: match &policy.auth {
            CertAuth::Dane { records, .. } => records.iter().map(tlsa_text).collect(),
            CertAuth::None | CertAuth::Pkix { .. } => {
                policy.tlsa_unusable.iter().map(tlsa_text).collect()
            }
        },
        recorded_verdict: Some(verdict(record.requirement_met)),
        result_type: record.result_type.map(result_type),
        mta_sts_lookup: record.mta_sts.as_ref().map(sts_lookup),
        would_fail: record
            .would_fail
            .iter()
            .map(|w| event::WouldFail {
                requirement: w.requirement.clone(),
                source: source(w.source),
                result_type: result_type(w.result_type),
                failure: w.failure.clone(),
            })
            .collect(),
        starttls_offered: record.starttls_offered,
        tls_version: record.tls_version.clone(),
        cipher: record.cipher.clone(),
        cert_verified: record.cert_verified,
        verify_error: record.verify_error.clone(),
        cert_names: record.cert_names.clone(),
        cert_chain: record.cert_chain.clone(),
        tls_error: record.tls_error.clone(),
        tls_fallback_plaintext: record.tls_fallback_plaintext,
        reply: record.reply.clone(),
        refused_unconnected: record.refused_unconnected,
    }
}

fn sts_lookup(status: &postern_delivery::mta_sts::StsStatus) -> event::StsLookup {
    use postern_delivery::mta_sts::PolicyFrom;
    event::StsLookup {
        txt: status.txt.clone(),
        from: match status.from {
            PolicyFrom::Cache => "cache",
            PolicyFrom::Fetched => "fetched",
            PolicyFrom::None => "none",
        }
        .to_string(),
        policy: status.policy.as_ref().map(|p| event::StsPolicySeen {
            id: p.id.clone(),
            mode: mts_mode(p.mode).to_string(),
            max_age: p.max_age,
            mx: p.mx.clone(),
            fetched_at: p.fetched_at,
            expires_at: p.expires_at,
        }),
        failure: status.failure.as_ref().map(|f| event::StsFetchFailure {
            result_type: Some(result_type(f.result_type)),
            detail: f.detail.clone(),
        }),
    }
}

fn verdict(requirement_met: Option<bool>) -> Verdict {
    match requirement_met {
        Some(true) => Verdict::Met,
        Some(false) => Verdict::Failed,
        None => Verdict::NotReached,
    }
}

/// RFC 8460's grouping: the published policy that applied, if any.
fn policy_type(req: &Requirement) -> PolicyType {
    if matches!(req.auth, CertAuth::Dane { .. }) || req.source == Source::Dane {
        PolicyType::Tlsa
    } else if req.mta_sts.is_some() {
        PolicyType::Sts
    } else {
        PolicyType::NoPolicyFound
    }
}

fn tlsa_text(record: &postern_delivery::policy::Tlsa) -> String {
    let hex: String = record.data.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{} {} {} {hex}",
        record.usage, record.selector, record.matching
    )
}

fn mts_mode(mode: MtaStsMode) -> &'static str {
    match mode {
        MtaStsMode::Enforce => "enforce",
        MtaStsMode::Testing => "testing",
        MtaStsMode::None => "none",
    }
}

pub fn source(source: Source) -> event::Source {
    match source {
        Source::Global => event::Source::Global,
        Source::Domain => event::Source::Domain,
        Source::Dane => event::Source::Dane,
        Source::MtaSts => event::Source::MtaSts,
        Source::Learned => event::Source::Learned,
        Source::Requiretls => event::Source::Requiretls,
    }
}

pub fn result_type(rt: ResultType) -> event::ResultType {
    match rt {
        ResultType::StarttlsNotSupported => event::ResultType::StarttlsNotSupported,
        ResultType::CertificateHostMismatch => event::ResultType::CertificateHostMismatch,
        ResultType::CertificateExpired => event::ResultType::CertificateExpired,
        ResultType::CertificateNotTrusted => event::ResultType::CertificateNotTrusted,
        ResultType::ValidationFailure => event::ResultType::ValidationFailure,
        ResultType::TlsaInvalid => event::ResultType::TlsaInvalid,
        ResultType::DnssecInvalid => event::ResultType::DnssecInvalid,
        ResultType::DaneRequired => event::ResultType::DaneRequired,
        ResultType::StsPolicyFetchError => event::ResultType::StsPolicyFetchError,
        ResultType::StsPolicyInvalid => event::ResultType::StsPolicyInvalid,
        ResultType::StsWebpkiInvalid => event::ResultType::StsWebpkiInvalid,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use postern_config::OutboundMode;
    use postern_delivery::policy::{MtaStsMode, StsRef, Tlsa};
    use postern_delivery::{CertFault, CertProblem, TlsPolicyFailure};

    const HOST: &str = "mx1.partner.test";

    fn record(policy: Requirement) -> AttemptRecord {
        AttemptRecord {
            host: HOST.into(),
            ip: "192.0.2.2".parse().unwrap(),
            port: 25,
            local_ip: Some("192.0.2.100".parse().unwrap()),
            mode: policy.level,
            requirement: policy.label(),
            source: policy.source,
            result_type: None,
            starttls_offered: true,
            tls_version: Some("TLSv1.3".into()),
            cipher: Some("TLS13_AES_256_GCM_SHA384".into()),
            cert_verified: Some(false),
            verify_error: Some("unknown issuer".into()),
            cert_problem: Some(CertProblem {
                fault: CertFault::NotTrusted,
                detail: "unknown issuer".into(),
            }),
            cert_names: vec![HOST.into()],
            cert_chain: Vec::new(),
            tls_error: None,
            tls_fallback_plaintext: false,
            reply: "250 ok".into(),
            mta_sts: None,
            would_fail: Vec::new(),
            requirement_met: Some(true),
            refused_unconnected: false,
            policy,
        }
    }

    fn sts(mode: MtaStsMode) -> Requirement {
        let mut req = Requirement::at(OutboundMode::Verify, Source::MtaSts, HOST);
        req.mta_sts = Some(StsRef {
            id: "20260101".into(),
            mode,
        });
        req
    }

    /// Requirement, requirement met, result type → the recorded source,
    /// policy type, verdict and result type.
    type Row = (
        Requirement,
        Option<bool>,
        Option<ResultType>,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    );

    /// Requirement and outcome → the recorded source, policy type, verdict
    /// and result type.
    #[test]
    fn attempts_carry_policy_verdict_and_result_type() {
        let dane = {
            let mut req = Requirement::at(OutboundMode::Verify, Source::Dane, HOST);
            req.auth = CertAuth::Dane {
                name: HOST.into(),
                records: vec![Tlsa {
                    usage: 3,
                    selector: 1,
                    matching: 1,
                    data: vec![0xab, 0x01],
                }],
            };
            req
        };
        let rows: [Row; 5] = [
            (
                Requirement::at(OutboundMode::Opportunistic, Source::Global, HOST),
                Some(true),
                None,
                "global",
                "no-policy-found",
                "met",
                "",
            ),
            (
                Requirement::at(OutboundMode::Verify, Source::Domain, HOST),
                Some(false),
                Some(ResultType::CertificateNotTrusted),
                "domain",
                "no-policy-found",
                "failed",
                "certificate-not-trusted",
            ),
            (
                sts(MtaStsMode::Enforce),
                Some(false),
                Some(ResultType::CertificateHostMismatch),
                "mta-sts",
                "sts",
                "failed",
                "certificate-host-mismatch",
            ),
            (dane, Some(true), None, "dane", "tlsa", "met", ""),
            (
                Requirement::at(OutboundMode::Require, Source::Learned, HOST),
                None,
                None,
                "learned",
                "no-policy-found",
                "not-reached",
                "",
            ),
        ];
        for (req, met, rt, source, policy_type, verdict, result) in rows {
            let mut r = record(req);
            r.requirement_met = met;
            r.result_type = rt;
            let a = attempt(&r);
            let json = serde_json::to_value(&a).unwrap();
            assert_eq!(json["source"], source, "{json}");
            assert_eq!(json["policy_type"], policy_type, "{json}");
            assert_eq!(json["verdict"], verdict, "{json}");
            assert_eq!(json["result_type"].as_str().unwrap_or(""), result, "{json}");
            assert_eq!(a.verdict().as_str(), verdict);
        }
        let a = attempt(&record(sts(MtaStsMode::Enforce)));
        assert_eq!(a.mta_sts.unwrap().mode, "enforce");
        assert_eq!(a.local_ip, Some("192.0.2.100".parse().unwrap()));
    }

    #[test]
    fn tlsa_records_used_are_recorded() {
        let mut req = Requirement::at(OutboundMode::Verify, Source::Dane, HOST);
        req.auth = CertAuth::Dane {
            name: HOST.into(),
            records: vec![Tlsa {
                usage: 3,
                selector: 1,
                matching: 1,
                data: vec![0xab, 0x01],
            }],
        };
        assert_eq!(attempt(&record(req)).tlsa, ["3 1 1 ab01"]);
    }

    #[test]
    fn unusable_tlsa_records_are_recorded_though_not_used() {
        // RFC 7672 §2.2: encrypt without authentication, but TLS-RPT
        // still names the records the host published.
        let mut req = Requirement::at(OutboundMode::Require, Source::Dane, HOST);
        req.tlsa_unusable = vec![Tlsa {
            usage: 0,
            selector: 0,
            matching: 1,
            data: vec![0xcd],
        }];
        assert_eq!(attempt(&record(req)).tlsa, ["0 0 1 cd"]);
    }

    #[test]
    fn report_only_verdicts_are_recorded_once_as_would_fail() {
        let mut req = Requirement::at(OutboundMode::Opportunistic, Source::Global, HOST);
        // MTA-STS testing: verify would fail on this untrusted certificate.
        let mut testing = sts(MtaStsMode::Testing);
        testing.enforcement = postern_delivery::policy::Enforcement::ReportOnly;
        req.report_only = vec![testing.clone()];
        let failure = TlsPolicyFailure::CertificateUnverified(CertProblem {
            fault: CertFault::NotTrusted,
            detail: "unknown issuer".into(),
        });
        let mut r = record(req);
        r.would_fail = vec![postern_delivery::ReportOnlyVerdict::new(&testing, &failure)];
        let a = attempt(&r);
        assert_eq!(
            a.would_fail,
            [event::WouldFail {
                requirement: "MTA-STS testing".into(),
                source: event::Source::MtaSts,
                result_type: event::ResultType::CertificateNotTrusted,
                failure: "certificate verification failed: unknown issuer".into(),
            }]
        );
        let json = serde_json::to_value(&a).unwrap();
        assert!(json.get("report_only").is_none(), "{json}");
    }

    /// The store's enums spell every source and result type as delivery
    /// does (the same RFC 8460 / SPEC names).
    #[test]
    fn names_agree_with_delivery() {
        for s in [
            Source::Global,
            Source::Domain,
            Source::Dane,
            Source::MtaSts,
            Source::Learned,
            Source::Requiretls,
        ] {
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::to_value(source(s)).unwrap()
            );
        }
        for rt in [
            ResultType::StarttlsNotSupported,
            ResultType::CertificateHostMismatch,
            ResultType::CertificateExpired,
            ResultType::CertificateNotTrusted,
            ResultType::ValidationFailure,
            ResultType::TlsaInvalid,
            ResultType::DnssecInvalid,
            ResultType::DaneRequired,
            ResultType::StsPolicyFetchError,
            ResultType::StsPolicyInvalid,
            ResultType::StsWebpkiInvalid,
        ] {
            assert_eq!(
                serde_json::to_value(rt).unwrap(),
                serde_json::to_value(result_type(rt)).unwrap()
            );
        }
    }
}
