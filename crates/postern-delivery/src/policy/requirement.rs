//! The requirement for one delivery and the one function that forms it
//! (SPEC §10 "How the requirement is formed").
//!
//! Precedence, each step only ever raising what the steps before gave:
//!
//! 1. **Base**: the `[[domain]]` entry's `tls` (unless `monitor`), else
//!    `tls.outbound.mode`. A `monitor` entry's `tls` is evaluated report-only.
//! 2. `TLS-Required: No` on a message without REQUIRETLS skips 3–5.
//! 3. **DANE**: authenticated MX, addresses and usable TLSA records →
//!    `verify` by DANE; only unusable records → at least `require`; a failed
//!    TLSA lookup refuses the host. Usable DANE records skip 4.
//! 4. **MTA-STS**: `enforce` → `verify` (PKIX) and only matching MX hosts;
//!    `testing` → the same, report-only.
//! 5. **Learned level**: `enforce` raises to it; `monitor` evaluates it
//!    report-only.
//! 6. **REQUIRETLS**: `verify` (PKIX, or DANE when it applies), the peer
//!    must advertise REQUIRETLS, and only an MX that DNSSEC or an enforced
//!    MTA-STS policy authenticated (or a static `next_hop` with `tls =
//!    "verify"`) may be used.
//!
//! A source "sets" the requirement when it raises the level or adds a
//! constraint (DANE's authentication, MTA-STS's MX list); that source is
//! recorded with every attempt and named in deferral reasons.

use std::fmt;

use postern_config::OutboundMode;
use serde::Serialize;

use super::inputs::{
    Authenticity, DaneInput, Inputs, LearnMode, LearnedLevel, MtaStsMode, MtaStsPolicy, RouteAuth,
    Tlsa,
};
use super::verdict::TlsPolicyFailure;

/// The policy source that set a requirement (SPEC §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
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

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the server certificate must be authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Hash)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CertAuth {
    /// Not required (the certificate is still checked and the result
    /// recorded).
    None,
    /// A chain to a root of `tls.outbound.trusted_ca` that names `name`
    /// (the MX or next-hop host; an IP SAN for an IP literal).
    Pkix { name: String },
    /// DANE (RFC 7672) with these usable TLSA records; DANE-TA also checks
    /// `name`.
    Dane { name: String, records: Vec<Tlsa> },
}

/// Which MX hosts may be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Hash)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum MxRule {
    /// Every host of the route.
    Any,
    /// Only hosts matching the MTA-STS policy's `mx` patterns.
    MtaSts { patterns: Vec<String> },
    /// Only an authenticated route (REQUIRETLS).
    Authenticated,
}

/// Whether the requirement is applied or only evaluated and recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Enforcement {
    Enforce,
    ReportOnly,
}

/// The MTA-STS policy a requirement came from (recorded per attempt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Hash)]
pub struct StsRef {
    pub id: String,
    pub mode: MtaStsMode,
}

/// What one delivery to one host requires (SPEC §10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Hash)]
pub struct Requirement {
    /// `none` < `opportunistic` < `require` < `verify`.
    pub level: OutboundMode,
    pub auth: CertAuth,
    pub mx: MxRule,
    pub source: Source,
    pub enforcement: Enforcement,
    /// The peer must advertise REQUIRETLS after STARTTLS.
    pub requiretls: bool,
    /// The MTA-STS policy applied, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mta_sts: Option<StsRef>,
    /// This host must not be used now (outside the MTA-STS MX list, a
    /// failed TLSA lookup, an unauthenticated route under REQUIRETLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<TlsPolicyFailure>,
    /// Stricter requirements evaluated and recorded, not enforced
    /// (`monitor` domains, MTA-STS `testing`, learned `monitor`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub report_only: Vec<Requirement>,
    /// DNSSEC-authenticated TLSA records of which none is usable (RFC 7672
    /// §2.2: encrypt without authentication): not used to authenticate,
    /// kept so that TLS-RPT names the policy the host published.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tlsa_unusable: Vec<Tlsa>,
}

impl Requirement {
    /// A requirement of `level` from one source, for `host`.
    pub fn at(level: OutboundMode, source: Source, host: &str) -> Requirement {
        Requirement {
            level,
            auth: pkix_if_verify(level, host),
            mx: MxRule::Any,
            source,
            enforcement: Enforcement::Enforce,
            requiretls: false,
            mta_sts: None,
            refusal: None,
            report_only: Vec::new(),
            tlsa_unusable: Vec::new(),
        }
    }

    /// How deferral reasons name it: `domain verify`, `MTA-STS enforce`,
    /// `DANE`, `REQUIRETLS`.
    pub fn label(&self) -> String {
        match self.source {
            Source::Global | Source::Domain | Source::Learned => {
                format!("{} {}", self.source, level_name(self.level))
            }
            Source::Dane => "DANE".into(),
            Source::MtaSts => match &self.mta_sts {
                Some(sts) => format!("MTA-STS {}", mts_mode_name(sts.mode)),
                None => "MTA-STS".into(),
            },
            Source::Requiretls => "REQUIRETLS".into(),
        }
    }
}

pub(crate) fn level_name(level: OutboundMode) -> &'static str {
    match level {
        OutboundMode::None => "none",
        OutboundMode::Opportunistic => "opportunistic",
        OutboundMode::Require => "require",
        OutboundMode::Verify => "verify",
    }
}

fn mts_mode_name(mode: MtaStsMode) -> &'static str {
    match mode {
        MtaStsMode::Enforce => "enforce",
        MtaStsMode::Testing => "testing",
        MtaStsMode::None => "none",
    }
}

fn pkix_if_verify(level: OutboundMode, host: &str) -> CertAuth {
    if level == OutboundMode::Verify {
        CertAuth::Pkix {
            name: host.to_string(),
        }
    } else {
        CertAuth::None
    }
}

/// The requirement for one message, recipient domain and MX host (see the
/// module documentation for the precedence).
pub fn requirement(inputs: &Inputs<'_>) -> Requirement {
    let host = inputs.host;
    let rule = inputs.base.domain.as_ref();
    let mut req = match rule.and_then(|r| r.tls.filter(|_| !r.monitor)) {
        Some(level) => Requirement::at(level, Source::Domain, host),
        None => Requirement::at(inputs.base.global, Source::Global, host),
    };
    if let Some(level) = rule.filter(|r| r.monitor).and_then(|r| r.tls) {
        if level > req.level {
            req.report_only
                .push(report_only(Requirement::at(level, Source::Domain, host)));
        }
    }

    let published = inputs.requiretls || !inputs.tls_required_no;
    let mut dane_applies = false;
    if published && rule.is_none_or(|r| r.dane) {
        dane_applies = apply_dane(&mut req, inputs.dane, host);
    }
    let sts = inputs
        .mta_sts
        .filter(|_| published && !dane_applies && rule.is_none_or(|r| r.mta_sts));
    if let Some(policy) = sts {
        apply_mta_sts(&mut req, policy, host);
    }
    if let Some((learned, mode)) = inputs.learned.filter(|_| published) {
        apply_learned(&mut req, learned, mode, host);
    }
    if inputs.requiretls {
        apply_requiretls(&mut req, inputs, host);
    }
    req
}

fn report_only(mut req: Requirement) -> Requirement {
    req.enforcement = Enforcement::ReportOnly;
    req
}

/// Returns whether DANE authentication applies (then MTA-STS does not).
fn apply_dane(req: &mut Requirement, dane: &DaneInput, host: &str) -> bool {
    match dane {
        DaneInput::Off => false,
        DaneInput::Failed(detail) => {
            let mut dane = Requirement::at(OutboundMode::Verify, Source::Dane, host);
            dane.refusal = Some(TlsPolicyFailure::DaneLookupFailed(detail.clone()));
            dane.report_only = std::mem::take(&mut req.report_only);
            *req = dane;
            true
        }
        DaneInput::Looked {
            mx,
            addresses,
            tlsa,
            records,
        } => {
            let authenticated = [mx, addresses, tlsa]
                .iter()
                .all(|a| **a == Authenticity::Authenticated);
            if !authenticated || records.is_empty() {
                return false;
            }
            let usable: Vec<Tlsa> = records.iter().filter(|r| r.is_usable()).cloned().collect();
            if usable.is_empty() {
                // RFC 7672 §2.2: TLSA records exist but none is usable —
                // encrypt, without authentication.
                if req.level < OutboundMode::Require {
                    req.level = OutboundMode::Require;
                    req.auth = CertAuth::None;
                    req.source = Source::Dane;
                    req.tlsa_unusable = records.clone();
                }
                return false;
            }
            req.level = OutboundMode::Verify;
            req.auth = CertAuth::Dane {
                name: host.to_string(),
                records: usable,
            };
            req.source = Source::Dane;
            true
        }
    }
}

fn apply_mta_sts(req: &mut Requirement, policy: &MtaStsPolicy, host: &str) {
    let sts = StsRef {
        id: policy.id.clone(),
        mode: policy.mode,
    };
    let mut strict = Requirement::at(OutboundMode::Verify, Source::MtaSts, host);
    strict.mx = MxRule::MtaSts {
        patterns: policy.mx.clone(),
    };
    strict.mta_sts = Some(sts);
    if !policy.matches(host) {
        strict.refusal = Some(TlsPolicyFailure::MxNotInPolicy {
            host: host.to_string(),
        });
    }
    match policy.mode {
        MtaStsMode::None => {}
        MtaStsMode::Testing => req.report_only.push(report_only(strict)),
        MtaStsMode::Enforce => {
            strict.report_only = std::mem::take(&mut req.report_only);
            *req = strict;
        }
    }
}

fn apply_learned(req: &mut Requirement, learned: LearnedLevel, mode: LearnMode, host: &str) {
    let level = match learned {
        LearnedLevel::Tls => OutboundMode::Require,
        LearnedLevel::Verified => OutboundMode::Verify,
    };
    if level <= req.level {
        return;
    }
    let raised = Requirement::at(level, Source::Learned, host);
    match mode {
        LearnMode::Monitor => req.report_only.push(report_only(raised)),
        LearnMode::Enforce => {
            req.level = raised.level;
            req.auth = raised.auth;
            req.source = Source::Learned;
        }
    }
}

fn apply_requiretls(req: &mut Requirement, inputs: &Inputs<'_>, host: &str) {
    req.requiretls = true;
    if req.level < OutboundMode::Verify {
        req.level = OutboundMode::Verify;
        req.auth = pkix_if_verify(OutboundMode::Verify, host);
        req.source = Source::Requiretls;
    }
    let sts_enforced = req
        .mta_sts
        .as_ref()
        .is_some_and(|s| s.mode == MtaStsMode::Enforce);
    let static_verified = inputs
        .base
        .domain
        .as_ref()
        .is_some_and(|r| r.static_route && r.tls == Some(OutboundMode::Verify) && !r.monitor);
    if !(inputs.route.mx_authenticated() || sts_enforced || static_verified) {
        req.mx = MxRule::Authenticated;
        let refusal = match inputs.route {
            // Not known either way: transient, the message waits.
            RouteAuth::MxUnknown(detail) | RouteAuth::Bogus(detail) => {
                TlsPolicyFailure::RouteStatusFailed(detail.clone())
            }
            RouteAuth::NotLooked | RouteAuth::Looked { .. } => {
                TlsPolicyFailure::RouteNotAuthenticated {
                    host: host.to_string(),
                }
            }
        };
        req.refusal.get_or_insert(refusal);
    }
}

#[cfg(test)]
mod tests {
    use super::super::inputs::{Base, DomainRule};
    use super::*;
    use OutboundMode::{Opportunistic, Require, Verify};

    /// `OutboundMode::None` (a bare `None` would read as `Option`).
    const PLAIN: OutboundMode = OutboundMode::None;

    const HOST: &str = "mx1.partner.test";

    fn rule(tls: Option<OutboundMode>) -> DomainRule {
        DomainRule {
            tls,
            monitor: false,
            mta_sts: true,
            dane: true,
            static_route: false,
        }
    }

    fn base(global: OutboundMode, domain: Option<DomainRule>) -> Base {
        Base { global, domain }
    }

    fn tlsa(usage: u8) -> Tlsa {
        Tlsa {
            usage,
            selector: 1,
            matching: 1,
            data: vec![7; 32],
        }
    }

    fn dane(records: Vec<Tlsa>, all: Authenticity) -> DaneInput {
        DaneInput::Looked {
            mx: all,
            addresses: all,
            tlsa: all,
            records,
        }
    }

    /// A route whose MX and addresses DNSSEC authenticated.
    fn signed() -> RouteAuth {
        RouteAuth::Looked {
            mx: Authenticity::Authenticated,
            addresses: Authenticity::Authenticated,
        }
    }

    fn sts(mode: MtaStsMode, mx: &[&str]) -> MtaStsPolicy {
        MtaStsPolicy {
            id: "20260101".into(),
            mode,
            mx: mx.iter().map(|m| m.to_string()).collect(),
        }
    }

    /// What a row expects: level, source, auth kind, refused, report-only
    /// sources.
    #[derive(Debug, PartialEq)]
    struct Want {
        level: OutboundMode,
        source: Source,
        auth: &'static str,
        refused: bool,
        report_only: Vec<Source>,
        requiretls: bool,
    }

    fn want(level: OutboundMode, source: Source, auth: &'static str) -> Want {
        Want {
            level,
            source,
            auth,
            refused: false,
            report_only: Vec::new(),
            requiretls: false,
        }
    }

    fn got(req: &Requirement) -> Want {
        Want {
            level: req.level,
            source: req.source,
            auth: match req.auth {
                CertAuth::None => "none",
                CertAuth::Pkix { .. } => "pkix",
                CertAuth::Dane { .. } => "dane",
            },
            refused: req.refusal.is_some(),
            report_only: req.report_only.iter().map(|r| r.source).collect(),
            requiretls: req.requiretls,
        }
    }

    struct Row {
        name: &'static str,
        base: Base,
        host: &'static str,
        sts: Option<MtaStsPolicy>,
        dane: DaneInput,
        route: RouteAuth,
        learned: Option<(LearnedLevel, LearnMode)>,
        requiretls: bool,
        tls_required_no: bool,
        want: Want,
    }

    fn row(name: &'static str, base: Base, want: Want) -> Row {
        Row {
            name,
            base,
            host: HOST,
            sts: None,
            dane: DaneInput::Off,
            route: RouteAuth::NotLooked,
            learned: None,
            requiretls: false,
            tls_required_no: false,
            want,
        }
    }

    fn refused(mut w: Want) -> Want {
        w.refused = true;
        w
    }

    fn with_report(mut w: Want, sources: &[Source]) -> Want {
        w.report_only = sources.to_vec();
        w
    }

    fn with_requiretls(mut w: Want) -> Want {
        w.requiretls = true;
        w
    }

    #[test]
    fn requirement_table() {
        use Authenticity::*;
        let rows = vec![
            // 1. Base: global, domain, domain relaxing, monitor.
            row(
                "global",
                base(Opportunistic, None),
                want(Opportunistic, Source::Global, "none"),
            ),
            row(
                "global verify",
                base(Verify, None),
                want(Verify, Source::Global, "pkix"),
            ),
            row(
                "domain raises",
                base(Opportunistic, Some(rule(Some(Require)))),
                want(Require, Source::Domain, "none"),
            ),
            row(
                "domain relaxes",
                base(Verify, Some(rule(Some(PLAIN)))),
                want(PLAIN, Source::Domain, "none"),
            ),
            row(
                "domain without tls",
                base(Require, Some(rule(None))),
                want(Require, Source::Global, "none"),
            ),
            row(
                "monitor domain",
                base(
                    Opportunistic,
                    Some(DomainRule {
                        monitor: true,
                        ..rule(Some(Verify))
                    }),
                ),
                with_report(
                    want(Opportunistic, Source::Global, "none"),
                    &[Source::Domain],
                ),
            ),
            // 2. DANE.
            Row {
                dane: dane(vec![tlsa(3)], Authenticated),
                ..row(
                    "dane-ee",
                    base(Opportunistic, None),
                    want(Verify, Source::Dane, "dane"),
                )
            },
            Row {
                dane: dane(vec![tlsa(2), tlsa(1)], Authenticated),
                ..row(
                    "dane-ta beside unusable",
                    base(PLAIN, None),
                    want(Verify, Source::Dane, "dane"),
                )
            },
            Row {
                dane: dane(vec![tlsa(3)], Authenticated),
                ..row(
                    "dane over domain verify",
                    base(PLAIN, Some(rule(Some(Verify)))),
                    want(Verify, Source::Dane, "dane"),
                )
            },
            Row {
                dane: dane(vec![tlsa(1), tlsa(0)], Authenticated),
                ..row(
                    "only unusable tlsa",
                    base(Opportunistic, None),
                    want(Require, Source::Dane, "none"),
                )
            },
            Row {
                dane: dane(vec![tlsa(1)], Authenticated),
                ..row(
                    "unusable below verify base",
                    base(Verify, None),
                    want(Verify, Source::Global, "pkix"),
                )
            },
            Row {
                dane: dane(vec![tlsa(3)], Unauthenticated),
                ..row(
                    "unauthenticated zone",
                    base(Opportunistic, None),
                    want(Opportunistic, Source::Global, "none"),
                )
            },
            Row {
                dane: DaneInput::Looked {
                    mx: Unauthenticated,
                    addresses: Authenticated,
                    tlsa: Authenticated,
                    records: vec![tlsa(3)],
                },
                ..row(
                    "unauthenticated mx",
                    base(Opportunistic, None),
                    want(Opportunistic, Source::Global, "none"),
                )
            },
            Row {
                dane: dane(Vec::new(), Authenticated),
                ..row(
                    "no tlsa",
                    base(Opportunistic, None),
                    want(Opportunistic, Source::Global, "none"),
                )
            },
            Row {
                dane: DaneInput::Failed("SERVFAIL".into()),
                ..row(
                    "tlsa lookup failed",
                    base(Opportunistic, None),
                    refused(want(Verify, Source::Dane, "pkix")),
                )
            },
            Row {
                dane: dane(vec![tlsa(3)], Authenticated),
                ..row(
                    "dane off for domain",
                    base(
                        Opportunistic,
                        Some(DomainRule {
                            dane: false,
                            ..rule(None)
                        }),
                    ),
                    want(Opportunistic, Source::Global, "none"),
                )
            },
            // 3. MTA-STS.
            Row {
                sts: Some(sts(MtaStsMode::Enforce, &[HOST])),
                ..row(
                    "sts enforce",
                    base(Opportunistic, None),
                    want(Verify, Source::MtaSts, "pkix"),
                )
            },
            Row {
                sts: Some(sts(MtaStsMode::Enforce, &["*.partner.test"])),
                ..row(
                    "sts wildcard",
                    base(Opportunistic, None),
                    want(Verify, Source::MtaSts, "pkix"),
                )
            },
            Row {
                sts: Some(sts(MtaStsMode::Enforce, &["mx2.partner.test"])),
                ..row(
                    "sts mx not listed",
                    base(Opportunistic, None),
                    refused(want(Verify, Source::MtaSts, "pkix")),
                )
            },
            Row {
                sts: Some(sts(MtaStsMode::Testing, &["mx2.partner.test"])),
                ..row(
                    "sts testing",
                    base(Opportunistic, None),
                    with_report(
                        want(Opportunistic, Source::Global, "none"),
                        &[Source::MtaSts],
                    ),
                )
            },
            Row {
                sts: Some(sts(MtaStsMode::None, &[])),
                ..row(
                    "sts none",
                    base(Opportunistic, None),
                    want(Opportunistic, Source::Global, "none"),
                )
            },
            Row {
                sts: Some(sts(MtaStsMode::Enforce, &["other.test"])),
                dane: dane(vec![tlsa(3)], Authenticated),
                ..row(
                    "dane before sts",
                    base(Opportunistic, None),
                    want(Verify, Source::Dane, "dane"),
                )
            },
            Row {
                sts: Some(sts(MtaStsMode::Enforce, &[HOST])),
                dane: dane(vec![tlsa(0)], Authenticated),
                ..row(
                    "unusable dane then sts",
                    base(Opportunistic, None),
                    want(Verify, Source::MtaSts, "pkix"),
                )
            },
            Row {
                sts: Some(sts(MtaStsMode::Enforce, &["other.test"])),
                ..row(
                    "sts off for domain",
                    base(
                        Require,
                        Some(DomainRule {
                            mta_sts: false,
                            ..rule(None)
                        }),
                    ),
                    want(Require, Source::Global, "none"),
                )
            },
            Row {
                sts: Some(sts(MtaStsMode::Enforce, &[HOST])),
                ..row(
                    "sts over relaxed domain",
                    base(Verify, Some(rule(Some(PLAIN)))),
                    want(Verify, Source::MtaSts, "pkix"),
                )
            },
            // 4. Learned.
            Row {
                learned: Some((LearnedLevel::Verified, LearnMode::Enforce)),
                ..row(
                    "learned enforce",
                    base(Opportunistic, None),
                    want(Verify, Source::Learned, "pkix"),
                )
            },
            Row {
                learned: Some((LearnedLevel::Tls, LearnMode::Enforce)),
                ..row(
                    "learned tls",
                    base(Opportunistic, None),
                    want(Require, Source::Learned, "none"),
                )
            },
            Row {
                learned: Some((LearnedLevel::Tls, LearnMode::Enforce)),
                ..row(
                    "learned below base",
                    base(Verify, None),
                    want(Verify, Source::Global, "pkix"),
                )
            },
            Row {
                learned: Some((LearnedLevel::Verified, LearnMode::Monitor)),
                ..row(
                    "learned monitor",
                    base(Opportunistic, None),
                    with_report(
                        want(Opportunistic, Source::Global, "none"),
                        &[Source::Learned],
                    ),
                )
            },
            Row {
                learned: Some((LearnedLevel::Verified, LearnMode::Enforce)),
                dane: dane(vec![tlsa(3)], Authenticated),
                ..row(
                    "dane satisfies learned",
                    base(Opportunistic, None),
                    want(Verify, Source::Dane, "dane"),
                )
            },
            // 5. REQUIRETLS.
            Row {
                requiretls: true,
                route: signed(),
                ..row(
                    "requiretls",
                    base(Opportunistic, None),
                    with_requiretls(want(Verify, Source::Requiretls, "pkix")),
                )
            },
            Row {
                requiretls: true,
                ..row(
                    "requiretls unauthenticated mx",
                    base(Opportunistic, None),
                    with_requiretls(refused(want(Verify, Source::Requiretls, "pkix"))),
                )
            },
            Row {
                requiretls: true,
                route: RouteAuth::Looked {
                    mx: Unauthenticated,
                    addresses: Authenticated,
                },
                ..row(
                    "requiretls mx answer not authenticated",
                    base(Opportunistic, None),
                    with_requiretls(refused(want(Verify, Source::Requiretls, "pkix"))),
                )
            },
            Row {
                requiretls: true,
                route: RouteAuth::MxUnknown("SERVFAIL".into()),
                sts: Some(sts(MtaStsMode::Enforce, &[HOST])),
                ..row(
                    "requiretls status unknown but sts enforce",
                    base(Opportunistic, None),
                    with_requiretls(want(Verify, Source::MtaSts, "pkix")),
                )
            },
            Row {
                requiretls: true,
                sts: Some(sts(MtaStsMode::Enforce, &[HOST])),
                ..row(
                    "requiretls by sts",
                    base(Opportunistic, None),
                    with_requiretls(want(Verify, Source::MtaSts, "pkix")),
                )
            },
            Row {
                requiretls: true,
                sts: Some(sts(MtaStsMode::Testing, &[HOST])),
                ..row(
                    "requiretls sts testing",
                    base(Opportunistic, None),
                    with_requiretls(refused(with_report(
                        want(Verify, Source::Requiretls, "pkix"),
                        &[Source::MtaSts],
                    ))),
                )
            },
            Row {
                requiretls: true,
                route: signed(),
                dane: dane(vec![tlsa(3)], Authenticated),
                ..row(
                    "requiretls with dane",
                    base(Opportunistic, None),
                    with_requiretls(want(Verify, Source::Dane, "dane")),
                )
            },
            Row {
                requiretls: true,
                ..row(
                    "requiretls static verified hop",
                    base(
                        Opportunistic,
                        Some(DomainRule {
                            static_route: true,
                            ..rule(Some(Verify))
                        }),
                    ),
                    with_requiretls(want(Verify, Source::Domain, "pkix")),
                )
            },
            Row {
                requiretls: true,
                ..row(
                    "requiretls static hop not verify",
                    base(
                        Opportunistic,
                        Some(DomainRule {
                            static_route: true,
                            ..rule(Some(Require))
                        }),
                    ),
                    with_requiretls(refused(want(Verify, Source::Requiretls, "pkix"))),
                )
            },
            Row {
                requiretls: true,
                tls_required_no: true,
                route: signed(),
                dane: dane(vec![tlsa(3)], Authenticated),
                ..row(
                    "requiretls wins over TLS-Required: No",
                    base(Opportunistic, None),
                    with_requiretls(want(Verify, Source::Dane, "dane")),
                )
            },
            // 6. TLS-Required: No.
            Row {
                tls_required_no: true,
                dane: dane(vec![tlsa(3)], Authenticated),
                ..row(
                    "tls-required-no skips dane",
                    base(Opportunistic, None),
                    want(Opportunistic, Source::Global, "none"),
                )
            },
            Row {
                tls_required_no: true,
                sts: Some(sts(MtaStsMode::Enforce, &["other.test"])),
                ..row(
                    "tls-required-no skips sts",
                    base(Opportunistic, None),
                    want(Opportunistic, Source::Global, "none"),
                )
            },
            Row {
                tls_required_no: true,
                learned: Some((LearnedLevel::Verified, LearnMode::Enforce)),
                ..row(
                    "tls-required-no skips learned",
                    base(Opportunistic, None),
                    want(Opportunistic, Source::Global, "none"),
                )
            },
            Row {
                tls_required_no: true,
                ..row(
                    "tls-required-no keeps base",
                    base(Opportunistic, Some(rule(Some(Verify)))),
                    want(Verify, Source::Domain, "pkix"),
                )
            },
        ];
        for r in rows {
            let inputs = Inputs {
                base: &r.base,
                host: r.host,
                mta_sts: r.sts.as_ref(),
                dane: &r.dane,
                route: &r.route,
                learned: r.learned,
                requiretls: r.requiretls,
                tls_required_no: r.tls_required_no,
            };
            let req = requirement(&inputs);
            assert_eq!(got(&req), r.want, "{}: {req:?}", r.name);
            assert_eq!(req.enforcement, Enforcement::Enforce, "{}", r.name);
            assert!(
                req.report_only
                    .iter()
                    .all(|r| r.enforcement == Enforcement::ReportOnly && r.level > PLAIN),
                "{}",
                r.name
            );
        }
    }

    /// REQUIRETLS refuses an unauthenticated route as a fact, but a route
    /// whose DNSSEC status could not be established (bogus, a failed
    /// status query) as transient trouble.
    #[test]
    fn requiretls_route_refusals() {
        let b = base(Opportunistic, None);
        let failures = [
            (RouteAuth::NotLooked, "not-authenticated"),
            (
                RouteAuth::Looked {
                    mx: Authenticity::Unauthenticated,
                    addresses: Authenticity::Authenticated,
                },
                "not-authenticated",
            ),
            (RouteAuth::MxUnknown("timeout".into()), "status-failed"),
            (RouteAuth::Bogus("MX answer".into()), "status-failed"),
        ];
        for (route, want) in failures {
            let req = requirement(&Inputs {
                route: &route,
                requiretls: true,
                ..Inputs::base_only(&b, HOST)
            });
            let got = match req.refusal {
                Some(TlsPolicyFailure::RouteNotAuthenticated { .. }) => "not-authenticated",
                Some(TlsPolicyFailure::RouteStatusFailed(_)) => "status-failed",
                ref other => panic!("{route:?}: {other:?}"),
            };
            assert_eq!(got, want, "{route:?}");
        }
    }

    /// The base is never lowered by a published source, and the
    /// requirement never drops below what the administrator asked for.
    #[test]
    fn sources_only_raise() {
        let levels = [PLAIN, Opportunistic, Require, Verify];
        let dane_inputs = [
            DaneInput::Off,
            dane(vec![tlsa(3)], Authenticity::Authenticated),
            dane(vec![tlsa(0)], Authenticity::Authenticated),
            dane(vec![tlsa(3)], Authenticity::Unauthenticated),
            DaneInput::Failed("timeout".into()),
        ];
        let policies = [
            None,
            Some(sts(MtaStsMode::Enforce, &[HOST])),
            Some(sts(MtaStsMode::Testing, &[HOST])),
            Some(sts(MtaStsMode::None, &[])),
        ];
        for global in levels {
            let b = base(global, None);
            for d in &dane_inputs {
                for p in &policies {
                    for requiretls in [false, true] {
                        let inputs = Inputs {
                            mta_sts: p.as_ref(),
                            dane: d,
                            requiretls,
                            ..Inputs::base_only(&b, HOST)
                        };
                        let req = requirement(&inputs);
                        assert!(req.level >= global, "{global:?} {d:?} {p:?}: {req:?}");
                        if req.level == Verify {
                            assert_ne!(req.auth, CertAuth::None, "{req:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn labels_name_the_source() {
        let b = base(Opportunistic, Some(rule(Some(Verify))));
        let req = requirement(&Inputs::base_only(&b, HOST));
        assert_eq!(req.label(), "domain verify");
        let policy = sts(MtaStsMode::Enforce, &[HOST]);
        let req = requirement(&Inputs {
            mta_sts: Some(&policy),
            ..Inputs::base_only(&b, HOST)
        });
        assert_eq!(req.label(), "MTA-STS enforce");
        let b = base(Require, None);
        assert_eq!(
            requirement(&Inputs::base_only(&b, HOST)).label(),
            "global require"
        );
    }
}
