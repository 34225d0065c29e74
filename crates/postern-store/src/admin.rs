//! Credentials of the admin web UI and JSON API: the admin password and the
//! API tokens (SPEC §2 `postern admin passwd`, `postern admin token create`).
//!
//! Only hashes are stored, never a password or a token: the password as an
//! argon2id PHC string, a token as a hash of its (high-entropy) value. The
//! store does not compute or check hashes; `postern-admin` does. A token is
//! found by its hash, so the hash column is unique.

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Longest API token name, in characters.
pub const MAX_TOKEN_NAME_CHARS: usize = 64;

/// An API token as the store keeps it: its name and when it was made. The
/// hash stays inside the store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiToken {
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// Check an API token name: 1 to [`MAX_TOKEN_NAME_CHARS`] characters, no
/// control characters, no surrounding blanks.
pub fn validate_token_name(name: &str) -> Result<(), StoreError> {
    let bad = |why: &str| Err(StoreError::BadName(format!("token name {name:?}: {why}")));
    if name.is_empty() {
        return Err(StoreError::BadName(
            "token name must not be empty".to_string(),
        ));
    }
    if name.chars().count() > MAX_TOKEN_NAME_CHARS {
        return bad(&format!("longer than {MAX_TOKEN_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return bad("must not contain control characters");
    }
    if name.trim() != name {
        return bad("must not begin or end with blanks");
    }
    Ok(())
}

pub(crate) fn check_hash(hash: &str) -> Result<(), StoreError> {
    if hash.is_empty() || hash.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(StoreError::BadName(
            "a credential hash must be one non-empty word".to_string(),
        ));
    }
    Ok(())
}
