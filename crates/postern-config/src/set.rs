//! `postern settings set KEY VALUE`: change one setting by its dotted key.

use serde_json::Value;

use crate::{ConfigError, Settings};

/// Every key that `settings set` accepts, in display order.
pub fn known_keys() -> Vec<String> {
    let mut keys = Vec::new();
    if let Ok(Value::Object(root)) = serde_json::to_value(Settings::default()) {
        collect(&root, "", &mut keys);
    }
    keys
}

fn collect(map: &serde_json::Map<String, Value>, prefix: &str, keys: &mut Vec<String>) {
    for (name, value) in map {
        let key = format!("{prefix}{name}");
        match value {
            Value::Object(inner) => collect(inner, &format!("{key}."), keys),
            _ => keys.push(key),
        }
    }
}

impl Settings {
    /// Return these settings with one key changed; nothing changes on error.
    ///
    /// The value is read according to the key's type: strings as given,
    /// numbers and booleans parsed, lists as a JSON array or comma-separated
    /// names. The result is validated as a whole.
    pub fn with(&self, key: &str, value: &str) -> Result<Settings, ConfigError> {
        self.with_all(&[(key, value)])
    }

    /// [`Settings::with`] for several keys at once (a form), validated once
    /// at the end: values that only make sense together (a higher
    /// `max_connections` and `max_connections_per_client`) are accepted
    /// together. The first bad value's key is the error's key.
    pub fn with_all(&self, changes: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut root =
            serde_json::to_value(self).map_err(|e| ConfigError::new("settings", e.to_string()))?;
        for (key, value) in changes {
            set_value(&mut root, key, value)?;
        }
        let mut updated: Settings = serde_path_to_error::deserialize(root)
            .map_err(|e| ConfigError::new(e.path().to_string(), e.inner().to_string()))?;
        updated.domains = self.domains.clone();
        updated.validate()?;
        Ok(updated)
    }
}

/// Put `value`, read according to the type already at `key`, into `root`.
fn set_value(root: &mut Value, key: &str, value: &str) -> Result<(), ConfigError> {
    let unknown = || {
        ConfigError::new(
            key,
            format!(
                "unknown setting; known keys: {} (edit [[domain]] entries with `settings import`)",
                known_keys().join(", ")
            ),
        )
    };
    let mut slot = root;
    for part in key.split('.') {
        slot = slot
            .as_object_mut()
            .and_then(|m| m.get_mut(part))
            .ok_or_else(unknown)?;
    }
    *slot = match slot {
        Value::Object(_) => return Err(unknown()),
        Value::Bool(_) => Value::Bool(match value.trim() {
            "true" | "yes" | "on" => true,
            "false" | "no" | "off" => false,
            other => {
                return Err(ConfigError::new(
                    key,
                    format!("\"{other}\" is not true or false"),
                ));
            }
        }),
        Value::Number(_) => value
            .trim()
            .parse::<u64>()
            .map(Value::from)
            .map_err(|_| ConfigError::new(key, format!("\"{value}\" is not a whole number")))?,
        Value::Array(_) => parse_list(value).map_err(|m| ConfigError::new(key, m))?,
        Value::String(_) | Value::Null => Value::String(value.to_string()),
    };
    Ok(())
}

fn parse_list(value: &str) -> Result<Value, String> {
    let trimmed = value.trim();
    if trimmed.starts_with('[') {
        let items: Vec<String> = serde_json::from_str(trimmed)
            .map_err(|e| format!("not a JSON array of strings: {e}"))?;
        return Ok(Value::from(items));
    }
    Ok(Value::from(
        trimmed
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InboundMode, TlsVersion};

    #[test]
    fn sets_each_kind_of_value() {
        let s = Settings::default();
        let s = s.with("tls.inbound.mode", "require").expect("mode");
        assert_eq!(s.tls.inbound.mode, InboundMode::Require);
        let s = s.with("tls.inbound.min_version", "1.3").expect("version");
        assert_eq!(s.tls.inbound.min_version, TlsVersion::V1_3);
        let s = s.with("mta.max_message_size", "10000").expect("size");
        assert_eq!(s.mta.max_message_size, 10000);
        let s = s
            .with("tls.outbound.trusted_ca", "system, Partner CA")
            .expect("list");
        assert_eq!(s.tls.outbound.trusted_ca, vec!["system", "Partner CA"]);
        let s = s
            .with("tls.inbound.trusted_client_ca", r#"["A CA","B, Inc CA"]"#)
            .expect("json list");
        assert_eq!(s.tls.inbound.trusted_client_ca, vec!["A CA", "B, Inc CA"]);
        let s = s
            .with("tls.inbound.trusted_client_ca", "")
            .expect("empty list");
        assert!(s.tls.inbound.trusted_client_ca.is_empty());
        let s = s.with("mta.session_timeout", "30s").expect("duration");
        assert_eq!(s.mta.session_timeout.as_secs(), 30);
    }

    #[test]
    fn refuses_with_key_and_choices() {
        let s = Settings::default();
        let err = s.with("tls.inbound.mode", "sometimes").unwrap_err();
        assert_eq!(err.key, "tls.inbound.mode");
        assert!(err.message.contains("`offer`"), "{err}");
        let err = s.with("tls.inbound.colour", "red").unwrap_err();
        assert!(err.message.contains("tls.inbound.mode"), "{err}");
        let err = s.with("tls", "x").unwrap_err();
        assert!(err.message.contains("unknown setting"), "{err}");
        let err = s.with("mta.max_recipients", "-3").unwrap_err();
        assert_eq!(err.key, "mta.max_recipients");
        let err = s
            .with("tls.inbound.client_certificate", "require")
            .unwrap_err();
        assert_eq!(err.key, "tls.inbound.client_certificate");
    }

    #[test]
    fn several_keys_are_validated_together() {
        let s = Settings::default();
        // Each alone would be refused (per client > total, or total < per client).
        let both = s
            .with_all(&[
                ("mta.max_connections_per_client", "2000"),
                ("mta.max_connections", "3000"),
            ])
            .expect("together");
        assert_eq!(both.mta.max_connections_per_client, 2000);
        assert!(s.with("mta.max_connections_per_client", "2000").is_err());
        let err = s
            .with_all(&[("mta.banner", "ok"), ("mta.max_recipients", "many")])
            .unwrap_err();
        assert_eq!(err.key, "mta.max_recipients");
    }

    #[test]
    fn lists_known_keys() {
        let keys = known_keys();
        assert!(keys.contains(&"tls.inbound.mode".to_string()));
        assert!(keys.contains(&"mta.max_backoff".to_string()));
        assert!(!keys.iter().any(|k| k.starts_with("domain")));
    }
}
