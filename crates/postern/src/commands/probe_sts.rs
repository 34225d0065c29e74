//! `postern probe`: the MTA-STS part — the live TXT record, the policy
//! and where it came from, a failed fetch.

use postern_delivery::mta_sts::{PolicyFrom, StsStatus};
use postern_delivery::policy::MtaStsMode;
use postern_delivery::Requirement;

use super::rfc3339;

pub fn print(status: Option<&StsStatus>) {
    let Some(status) = status else {
        println!("MTA-STS:       not consulted (off in tls.outbound.mta_sts or the domain's rule, or a static next_hop)");
        return;
    };
    println!("MTA-STS TXT:   {}", status.txt);
    match &status.policy {
        None => println!("MTA-STS:       no policy applies"),
        Some(policy) => {
            let mode = match policy.mode {
                MtaStsMode::Enforce => "enforce",
                MtaStsMode::Testing => "testing",
                MtaStsMode::None => "none",
            };
            let from = match status.from {
                PolicyFrom::Cache => "from cache",
                PolicyFrom::Fetched => "fetched now",
                PolicyFrom::None => "",
            };
            println!(
                "MTA-STS:       policy id {} mode {mode}, max_age {}, {from} (fetched {}, expires {})",
                policy.id,
                policy.max_age,
                rfc3339(policy.fetched_at),
                rfc3339(policy.expires_at)
            );
            println!(
                "MTA-STS mx:    {}",
                if policy.mx.is_empty() {
                    "(none)".to_string()
                } else {
                    policy.mx.join(" ")
                }
            );
        }
    }
    if let Some(failure) = &status.failure {
        let result = serde_json::to_value(failure.result_type)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        println!("MTA-STS fetch: failed ({result}): {}", failure.detail);
    }
}

/// The report-only requirements of one host (MTA-STS `testing`, ...).
pub fn print_report_only(requirement: &Requirement) {
    for strict in &requirement.report_only {
        let refusal = strict
            .refusal
            .as_ref()
            .map(|r| format!(" — would not be used: {r}"))
            .unwrap_or_default();
        println!("  report-only:     {}{refusal}", strict.label());
    }
}
