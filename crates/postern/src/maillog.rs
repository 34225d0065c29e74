//! The mail log: one line per connection outcome and per accepted or
//! rejected message, apart from debug tracing, for the administrator.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context as _, Result};
use time::macros::format_description;
use time::OffsetDateTime;

pub struct MailLog {
    file: Mutex<File>,
}

impl MailLog {
    pub fn open(path: &Path) -> Result<Self> {
        // Addresses and client names are personal data: owner-only.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("opening mail log {}", path.display()))?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    /// Append one line: timestamp, event, then `key=value` fields.
    pub fn write(&self, event: &str, fields: &[(&str, &str)]) {
        let now = OffsetDateTime::now_utc()
            .format(format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .unwrap_or_default();
        let mut line = format!("{now} {event}");
        for (key, value) in fields {
            if value.is_empty() {
                continue;
            }
            line.push(' ');
            line.push_str(key);
            line.push('=');
            if value.contains([' ', '"', '=']) || value.chars().any(char::is_control) {
                line.push_str(&format!("{:?}", value));
            } else {
                line.push_str(value);
            }
        }
        line.push('\n');
        if let Ok(mut file) = self.file.lock() {
            // The mail log must never stop mail; a failed write is traced.
            if let Err(e) = file.write_all(line.as_bytes()) {
                tracing::warn!("mail log write failed: {e}");
            }
        }
    }
}
