//! How a stored message is made durable before its `250`.
//!
//! * [`SyncMode::File`]: each message file is fdatasync'd by its writer,
//!   and one fsync of `queue/` is shared by the writers that arrive
//!   together ([`crate::group_sync`]). Right on any file system.
//! * [`SyncMode::Filesystem`]: writers fsync nothing themselves; the shared
//!   round is one `syncfs(2)` of the spool's file system, which writes the
//!   data and the names of every message of the round with one journal
//!   commit and one cache flush. 10–20% less CPU per message here
//!   (`docs/performance.md`), but a round also waits for every other dirty
//!   file on that file system: only for a spool on a file system of its own.
//!
//! `syncfs(2)` reports write-back errors only since Linux 5.8; on older
//! kernels it returns success after a failed write, so `Filesystem` is
//! refused there ([`filesystem_sync_supported`]).

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    File,
    Filesystem,
}

impl SyncMode {
    /// What the mode does, for the start-up log and `postern check`.
    pub fn describe(self) -> &'static str {
        match self {
            SyncMode::File => "each message file fsync'd, one shared fsync of queue/ per group",
            SyncMode::Filesystem => {
                "one syncfs(2) of the spool's file system per group of messages"
            }
        }
    }
}

/// The first kernel whose `syncfs(2)` returns write-back errors.
const SYNCFS_ERRORS_SINCE: (u32, u32) = (5, 8);

/// `Ok` when this kernel's `syncfs(2)` reports write-back errors; else
/// why not, for the operator.
pub fn filesystem_sync_supported() -> Result<(), String> {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    match kernel_version(&release) {
        Some(v) if v >= SYNCFS_ERRORS_SINCE => Ok(()),
        _ => Err(format!(
            "needs Linux {}.{} or later (syncfs(2) reports failed writes only since then); \
             this kernel is {release}",
            SYNCFS_ERRORS_SINCE.0, SYNCFS_ERRORS_SINCE.1
        )),
    }
}

/// `(major, minor)` of a kernel release such as `6.1.0-18-amd64`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether `dir` holds a file system of its own: a whole file system is
/// mounted there (not a bind mount of some directory of a shared one, as a
/// container volume is), and it is not `/`. Unknown (no `/proc`) is `false`.
pub fn is_own_filesystem(dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    if dir == Path::new("/") {
        return false;
    }
    std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|mountinfo| whole_mount_at(&mountinfo, &dir))
}

/// Whether the last mount at `dir` in `mountinfo` (proc(5): fields 4 and 5
/// are the mount's root within its file system and its mount point, with
/// space, tab, newline and backslash written as octal escapes) mounts its
/// file system's root.
fn whole_mount_at(mountinfo: &str, dir: &Path) -> bool {
    let want: String = dir
        .to_string_lossy()
        .chars()
        .map(|c| match c {
            ' ' => "\\040".to_string(),
            '\t' => "\\011".to_string(),
            '\n' => "\\012".to_string(),
            '\\' => "\\134".to_string(),
            c => c.to_string(),
        })
        .collect();
    mountinfo
        .lines()
        .rev()
        .find_map(|line| {
            let mut fields = line.split(' ').skip(3);
            let root = fields.next()?;
            let point = fields.next()?;
            (point == want).then_some(root == "/")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_are_read_from_the_release() {
        assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.8.0"), Some((5, 8)));
        assert_eq!(kernel_version("4.19.0-26-cloud-amd64"), Some((4, 19)));
        assert_eq!(kernel_version("6.18.44-fc-v1252"), Some((6, 18)));
        assert_eq!(kernel_version("weird"), None);
        assert!((4, 19) < SYNCFS_ERRORS_SINCE && (5, 10) >= SYNCFS_ERRORS_SINCE);
    }

    #[test]
    fn only_a_whole_file_system_mounted_at_the_directory_is_its_own() {
        let mountinfo = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 254:16 / /var/lib/postern rw,relatime - ext4 /dev/vdb rw
31 22 254:0 /srv/volumes/spool /data rw,relatime - ext4 /dev/vda rw
32 22 254:32 / /mnt/mail\\040spool rw - xfs /dev/vdc rw
34 22 254:48 / /mnt/back\\134slash rw - xfs /dev/vdd rw
33 22 254:0 /shadow /var/lib/postern rw - ext4 /dev/vda rw
";
        assert!(whole_mount_at(mountinfo, Path::new("/mnt/mail spool")));
        assert!(whole_mount_at(mountinfo, Path::new("/mnt/back\\slash")));
        assert!(
            !whole_mount_at(mountinfo, Path::new("/data")),
            "a bind mount of a directory"
        );
        assert!(
            !whole_mount_at(mountinfo, Path::new("/var/lib/postern")),
            "the later mount hides the first"
        );
        assert!(
            !whole_mount_at(mountinfo, Path::new("/var/lib")),
            "not a mount point"
        );
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_own_filesystem(dir.path()));
        assert!(
            !is_own_filesystem(Path::new("/")),
            "the root file system is shared"
        );
        assert!(!is_own_filesystem(&dir.path().join("missing")));
    }
}
