//! `[spool] sync`: which [`SyncMode`] the gateway's spool runs with.

use std::path::Path;

use anyhow::{anyhow, Result};
use postern_config::{NodeConfig, SpoolSync};
use postern_spool::{filesystem_sync_supported, is_own_filesystem, SyncMode};

/// The mode for `setting`, and why, for the start-up log. `auto` takes
/// whole-filesystem rounds only where nothing else writes: the spool or the
/// data directory is a file system of its own (not `/`, not a bind-mounted
/// directory such as a container volume). Elsewhere a round would also
/// wait for every other program's dirty data (docs/queue-format.md).
pub fn choose(setting: SpoolSync, spool_dir: &Path, data_dir: &Path) -> Result<(SyncMode, String)> {
    match setting {
        SpoolSync::File => Ok((SyncMode::File, "[spool] sync = \"file\"".into())),
        SpoolSync::Filesystem => {
            filesystem_sync_supported()
                .map_err(|why| anyhow!("[spool] sync = \"filesystem\" {why}"))?;
            Ok((SyncMode::Filesystem, "[spool] sync = \"filesystem\"".into()))
        }
        SpoolSync::Auto => {
            let own = [spool_dir, data_dir]
                .into_iter()
                .find(|dir| is_own_filesystem(dir));
            Ok(match (own, filesystem_sync_supported()) {
                (Some(dir), Ok(())) => (
                    SyncMode::Filesystem,
                    format!("{} is a file system of its own", dir.display()),
                ),
                (Some(dir), Err(why)) => (
                    SyncMode::File,
                    format!(
                        "{} is a file system of its own, but whole-filesystem sync {why}",
                        dir.display()
                    ),
                ),
                (None, _) => (
                    SyncMode::File,
                    "the spool shares its file system with other data".into(),
                ),
            })
        }
    }
}

/// The node's mode and the line the start-up log and `postern check`
/// print about it.
pub fn for_node(node: &NodeConfig) -> Result<(SyncMode, String)> {
    let (mode, why) = choose(node.spool.sync, &node.spool_dir(), &node.data_dir)?;
    Ok((
        mode,
        format!("spool: durable writes: {} ({why})", mode.describe()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory that is no mount point; its `spool/` does not exist.
    fn plain_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
    }

    #[test]
    fn auto_keeps_per_file_sync_on_a_shared_file_system() {
        let dir = plain_dir();
        let spool = dir.join("spool");
        let (mode, why) = choose(SpoolSync::Auto, &spool, &dir).unwrap();
        assert_eq!(mode, SyncMode::File);
        assert!(why.contains("shares"), "{why}");
        assert_eq!(
            choose(SpoolSync::File, &spool, &dir).unwrap().0,
            SyncMode::File
        );
    }

    #[test]
    fn auto_keeps_per_file_sync_on_the_root_file_system() {
        let (mode, why) = choose(SpoolSync::Auto, Path::new("/spool"), Path::new("/")).unwrap();
        assert_eq!(mode, SyncMode::File, "{why}");
    }

    #[test]
    fn filesystem_is_taken_when_asked_for_on_a_kernel_that_reports_errors() {
        let dir = plain_dir();
        match (
            filesystem_sync_supported(),
            choose(SpoolSync::Filesystem, &dir, &dir),
        ) {
            (Ok(()), Ok((mode, _))) => assert_eq!(mode, SyncMode::Filesystem),
            (Err(_), Err(e)) => assert!(e.to_string().contains("needs Linux 5.8"), "{e}"),
            (kernel, chosen) => panic!("kernel check {kernel:?} but choice {chosen:?}"),
        }
    }
}
