//! `node_config`: the node-local `postern.toml` ([`NodeConfig::from_toml`]).
//!
//! Input: the file's text. Invariants: nothing panics; an accepted file
//! passes validation, has an absolute data directory under the base, and
//! names a user to run as that is a plain user name.

use std::path::Path;

use postern_config::NodeConfig;

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let base = Path::new("/etc/postern");
    let Ok(config) = NodeConfig::from_toml(&text, base) else {
        return;
    };
    assert!(config.validate().is_ok());
    assert!(config.data_dir.is_absolute(), "{:?}", config.data_dir);
    assert!(config.store_path().starts_with(&config.data_dir));
    assert!(config.spool_dir().starts_with(&config.data_dir));
    let user = config.run_as();
    assert!(!user.is_empty() && !user.starts_with('-') && !user.contains(['/', ':', ' ']));
}
