//! Dropping root privileges once the listeners are bound.
//!
//! A gateway started as root (to bind port 25) switches to an unprivileged
//! user — `user` in `postern.toml`, `"postern"` by default — before it reads
//! a byte from the network: [`drop_privileges`] is called right after the
//! listeners are bound and before any connection is accepted. What an
//! administrator can rely on:
//!
//! * **Started as root, the gateway drops root** to `user` (default
//!   `"postern"`). A *configured* user that does not exist, or whose uid is
//!   0, stops the start with a message saying how to fix it. Only when
//!   `user` is not configured and the default user is missing (or cannot
//!   reach the data directory) — a first try on a fresh machine — does it
//!   keep running as root, with a warning at every start naming the fix.
//!   `user = "root"` runs as root on purpose (also with a warning).
//! * **The data directory belongs to that user.** Everything under
//!   `data_dir` (store, spool, mail log; also what `postern` commands run as
//!   root created there since the last start) is given to the user and its
//!   primary group before the switch, so the store and the spool stay
//!   writable. The walk never follows a symbolic link (only `data_dir`
//!   itself may be one) and skips files with more than one hard link, so a
//!   compromised gateway user cannot make the next start as root hand it
//!   files outside its directory. Modes are not changed: the spool and store
//!   create their files 0600 and their directories 0700.
//! * **All privileges go**: supplementary groups are replaced by the user's
//!   primary group, then gid, then uid are set (real, effective and saved,
//!   for every thread), and the switch is verified — getting root back must
//!   fail, or the gateway refuses to run. `PR_SET_NO_NEW_PRIVS` is set on
//!   every thread (before the runtime starts them, see
//!   [`forbid_new_privileges`]), so no later `execve` can gain privileges.
//! * **The data directory must be reachable** by the user: every parent
//!   directory needs search permission for it (`/var/lib/postern` is fine, a
//!   directory under `/root` is not). Otherwise the start fails with a
//!   message naming the directory.
//! * **Started as another user** (systemd `User=postern`, a developer's
//!   shell), nothing changes; a configured `user` that differs from the
//!   current one is reported at start.
//!
//! `postern` commands (`settings`, `cert`, `queue` ...) do not switch users:
//! run as root they can read and write everything, and SQLite gives the
//! store's `-wal`/`-shm` files the owner of the database file. Files they
//! create as root are handed over at the next gateway start.

use std::ffi::CStr;
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::{
    access, fchown, fchownat, getgroups, setgid, setgroups, setuid, AccessFlags, Gid, Uid, User,
};
use postern_config::NodeConfig;

/// Deepest directory nesting handed over (the spool is three levels deep).
const MAX_DEPTH: usize = 16;

/// What `postern run` will do about its user.
enum Plan {
    /// Keep running as this user (not started as root, or `user = "root"`).
    Stay(String),
    /// Switch from root to this user.
    Switch(User),
}

/// Decide (and log) what happens to the user; errors are the reasons a
/// start as root is refused.
fn plan(node: &NodeConfig) -> Result<Plan> {
    let name = node.run_as();
    if !Uid::effective().is_root() {
        let current = User::from_uid(Uid::effective())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| Uid::effective().to_string());
        if node.user.is_some() && current != name {
            tracing::warn!(
                "user = \"{name}\" in the configuration, but the gateway was started as \
                 {current}, not as root: it keeps running as {current}"
            );
        }
        return Ok(Plan::Stay(current));
    }
    if name == "root" {
        tracing::warn!(
            "running as root (user = \"root\" in the configuration): a flaw in the gateway \
             would give an attacker the whole machine; create an unprivileged user instead"
        );
        return Ok(Plan::Stay(name.to_string()));
    }
    let explicit = node.user.is_some();
    let user = match User::from_name(name) {
        Ok(Some(user)) => user,
        // Not configured and not installed (a first try, `cargo run -- run`
        // as root): run, but say plainly what is missing. A configured user
        // that does not exist is a mistake and stops the start.
        Ok(None) if !explicit => {
            tracing::warn!(
                "running as root: the default user \"{name}\" does not exist; create it \
                 (useradd --system --no-create-home --shell /usr/sbin/nologin {name}) so the \
                 gateway drops root after binding, or set user = \"...\" in postern.toml"
            );
            return Ok(Plan::Stay("root".to_string()));
        }
        Ok(None) => bail!(
            "started as root, but the user \"{name}\" to run as does not exist: create it \
             (useradd --system --no-create-home --shell /usr/sbin/nologin {name}), set \
             user = \"<an existing unprivileged user>\" in the configuration, or, to stay \
             root (not recommended), user = \"root\""
        ),
        Err(e) => bail!("looking up the user \"{name}\": {e}"),
    };
    if !explicit && !reachable_by(&user, &node.data_dir) {
        tracing::warn!(
            "running as root: the data directory {} is not reachable by the default user \
             \"{name}\" (a parent directory lacks search permission); move data_dir (e.g. \
             /var/lib/postern) or set user = \"...\" explicitly",
            node.data_dir.display()
        );
        return Ok(Plan::Stay("root".to_string()));
    }
    if user.uid.is_root() {
        bail!(
            "the user \"{name}\" has uid 0, so running as it would not drop anything: \
             choose an unprivileged user, or write user = \"root\" to run as root"
        );
    }
    Ok(Plan::Switch(user))
}

/// Whether every directory above `path` lets `user` search it (checked
/// from the mode bits, since we are still root).
fn reachable_by(user: &User, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(path) = std::fs::canonicalize(path) else {
        return true;
    };
    path.ancestors().skip(1).all(|dir| {
        let Ok(meta) = std::fs::metadata(dir) else {
            return false;
        };
        let mode = meta.mode();
        mode & 0o001 != 0
            || (meta.uid() == user.uid.as_raw() && mode & 0o100 != 0)
            || (meta.gid() == user.gid.as_raw() && mode & 0o010 != 0)
    })
}

/// Set `PR_SET_NO_NEW_PRIVS`: no `execve` of this process (or of anything
/// it starts) can gain privileges again — no setuid binaries, no file
/// capabilities. Called by `postern run` before its runtime starts any
/// thread, because the flag is per thread and inherited only by threads
/// created afterwards; it does not stop the later switch away from root.
pub fn forbid_new_privileges() -> Result<()> {
    nix::sys::prctl::set_no_new_privs().context("setting PR_SET_NO_NEW_PRIVS")
}

/// For `postern check`: whether `postern run`, started by the current
/// user, could switch to the configured user.
pub fn check_user(node: &NodeConfig) -> Result<()> {
    plan(node).map(|_| ())
}

/// Switch from root to the configured user (see the module documentation).
/// Returns the user the gateway now runs as.
pub fn drop_privileges(node: &NodeConfig) -> Result<String> {
    let user = match plan(node)? {
        Plan::Stay(name) => return Ok(name),
        Plan::Switch(user) => user,
    };
    let name = user.name.as_str();
    let data_dir = &node.data_dir;
    let changed = hand_over(data_dir, user.uid, user.gid)
        .with_context(|| format!("giving {} to user {name}", data_dir.display()))?;
    if changed > 0 {
        tracing::info!(
            "gave {changed} file(s) under {} to user {name}",
            data_dir.display()
        );
    }

    setgroups(&[user.gid]).context("dropping supplementary groups")?;
    setgid(user.gid).context("setting the group id")?;
    setuid(user.uid).context("setting the user id")?;
    verify_dropped(&user)?;

    access(
        data_dir.as_path(),
        AccessFlags::R_OK | AccessFlags::W_OK | AccessFlags::X_OK,
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "the data directory {} is not usable by user {name} ({e}): every parent \
             directory must be searchable by it (use e.g. /var/lib/postern)",
            data_dir.display()
        )
    })?;
    tracing::info!(
        "dropped root privileges: running as {name} (uid {}, gid {})",
        user.uid,
        user.gid
    );
    Ok(name.to_string())
}

/// The switch took: no root uid (nor gid, unless the user's own group is
/// gid 0) left, and root cannot be regained.
fn verify_dropped(user: &User) -> Result<()> {
    if Uid::current().is_root() || Uid::effective().is_root() {
        bail!("privileges were not dropped: still uid 0");
    }
    let root_group = |gid: Gid| gid.as_raw() == 0 && user.gid.as_raw() != 0;
    let groups = getgroups().context("reading the group list")?;
    if root_group(Gid::current())
        || root_group(Gid::effective())
        || groups.into_iter().any(root_group)
    {
        bail!("privileges were not dropped: still in group 0");
    }
    if setuid(Uid::from_raw(0)).is_ok() {
        bail!("privileges were not dropped: root could be regained");
    }
    if !nix::sys::prctl::get_no_new_privs().context("reading PR_GET_NO_NEW_PRIVS")? {
        bail!("PR_SET_NO_NEW_PRIVS is not set: an exec could regain privileges");
    }
    Ok(())
}

/// Give `dir` and everything below it to `uid:gid`; returns how many
/// entries changed owner.
fn hand_over(dir: &Path, uid: Uid, gid: Gid) -> Result<usize> {
    // `data_dir` itself comes from root's configuration and may be a symlink;
    // nothing below it is followed.
    let top = Dir::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| anyhow::anyhow!("opening {}: {e}", dir.display()))?;
    let mut changed = 0;
    hand_over_dir(top, uid, gid, 0, dir, &mut changed)?;
    Ok(changed)
}

fn hand_over_dir(
    mut dir: Dir,
    uid: Uid,
    gid: Gid,
    depth: usize,
    path: &Path,
    changed: &mut usize,
) -> Result<()> {
    let stat = fstat(dir.as_fd()).map_err(|e| io_error("stat", path, e))?;
    give(&dir, &stat, uid, gid, path, changed)?;
    if depth >= MAX_DEPTH {
        tracing::warn!(
            "{}: nested deeper than {MAX_DEPTH} directories; not handed over further",
            path.display()
        );
        return Ok(());
    }
    let names: Vec<std::ffi::CString> = dir
        .iter()
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_owned())
        .filter(|name| !is_dot(name))
        .collect();
    for name in names {
        let child = path.join(name.to_string_lossy().as_ref());
        let stat = match fstatat(dir.as_fd(), name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => continue, // removed meanwhile
            Err(e) => return Err(io_error("stat", &child, e)),
        };
        match file_type(&stat) {
            SFlag::S_IFDIR => {
                let sub = match Dir::openat(
                    dir.as_fd(),
                    name.as_c_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(sub) => sub,
                    // Replaced by a symlink or removed since the stat: skip.
                    Err(Errno::ELOOP | Errno::ENOTDIR | Errno::ENOENT) => continue,
                    Err(e) => return Err(io_error("open", &child, e)),
                };
                hand_over_dir(sub, uid, gid, depth + 1, &child, changed)?;
            }
            SFlag::S_IFREG => {
                // O_PATH: a handle that reads nothing and, unlike a real
                // open, does not drop this process's POSIX record locks on
                // the file when closed — SQLite holds such locks on the
                // store, its -wal and -shm files (losing them let another
                // process reset the shared memory under the gateway).
                let fd = match openat(
                    dir.as_fd(),
                    name.as_c_str(),
                    OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => fd,
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(io_error("open", &child, e)),
                };
                // Judge the file actually opened, not the name.
                let stat = fstat(fd.as_fd()).map_err(|e| io_error("stat", &child, e))?;
                if file_type(&stat) != SFlag::S_IFREG {
                    continue; // replaced by a symlink meanwhile
                }
                if stat.st_nlink > 1 {
                    if stat.st_uid != uid.as_raw() {
                        tracing::warn!(
                            "{}: has {} hard links; not given to the gateway user (remove \
                             the extra links or chown it by hand)",
                            child.display(),
                            stat.st_nlink
                        );
                    }
                    continue;
                }
                if stat.st_uid != uid.as_raw() || stat.st_gid != gid.as_raw() {
                    fchownat(fd.as_fd(), "", Some(uid), Some(gid), AtFlags::AT_EMPTY_PATH)
                        .map_err(|e| io_error("chown", &child, e))?;
                    *changed += 1;
                }
            }
            // Symlinks are never followed; sockets (a stale control socket)
            // and other special files are left alone.
            _ => {}
        }
    }
    Ok(())
}

/// `fchown` the open file or directory unless it already has the owner.
fn give<F: AsFd>(
    fd: &F,
    stat: &FileStat,
    uid: Uid,
    gid: Gid,
    path: &Path,
    changed: &mut usize,
) -> Result<()> {
    if stat.st_uid == uid.as_raw() && stat.st_gid == gid.as_raw() {
        return Ok(());
    }
    fchown(fd.as_fd(), Some(uid), Some(gid)).map_err(|e| io_error("chown", path, e))?;
    *changed += 1;
    Ok(())
}

fn file_type(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT
}

fn is_dot(name: &CStr) -> bool {
    matches!(name.to_bytes(), b"." | b"..")
}

fn io_error(what: &str, path: &Path, errno: Errno) -> anyhow::Error {
    anyhow::anyhow!("{what} {}: {errno}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_root_changes_nothing() {
        if Uid::effective().is_root() {
            return; // covered by tests/test_privilege.py
        }
        let node = NodeConfig::default();
        let who = drop_privileges(&node).expect("no-op");
        assert!(!who.is_empty());
    }

    #[test]
    fn hand_over_to_self_changes_nothing() {
        let dir = scratch("self");
        std::fs::create_dir_all(dir.join("spool/queue")).expect("mkdir");
        std::fs::write(dir.join("spool/queue/file"), b"x").expect("write");
        std::os::unix::fs::symlink("/etc", dir.join("link")).expect("symlink");
        let changed = hand_over(&dir, Uid::effective(), Gid::effective()).expect("walk");
        assert_eq!(changed, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// As root: everything inside changes owner; symlinks are not followed
    /// and multiply linked files are left alone.
    #[test]
    fn hand_over_stays_inside() {
        use std::os::unix::fs::MetadataExt;
        if !Uid::effective().is_root() {
            return;
        }
        let outside = scratch("outside");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("secret"), b"s").expect("write");
        std::fs::write(outside.join("linked"), b"l").expect("write");
        let dir = scratch("inside");
        std::fs::create_dir_all(dir.join("spool/queue")).expect("mkdir");
        std::fs::write(dir.join("spool/queue/msg"), b"m").expect("write");
        std::fs::write(dir.join("postern.db"), b"d").expect("write");
        std::os::unix::fs::symlink(outside.join("secret"), dir.join("spool/evil"))
            .expect("symlink");
        std::os::unix::fs::symlink(&outside, dir.join("evil-dir")).expect("symlink");
        std::fs::hard_link(outside.join("linked"), dir.join("hard")).expect("hard link");

        let (uid, gid) = (Uid::from_raw(65534), Gid::from_raw(65534));
        let changed = hand_over(&dir, uid, gid).expect("walk");
        assert_eq!(changed, 5, "dir, spool, queue, msg, postern.db");
        for inside in ["", "spool", "spool/queue", "spool/queue/msg", "postern.db"] {
            let meta = std::fs::metadata(dir.join(inside)).expect("stat");
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{inside}");
        }
        for untouched in [
            outside.clone(),
            outside.join("secret"),
            outside.join("linked"),
        ] {
            let meta = std::fs::metadata(&untouched).expect("stat");
            assert_eq!(meta.uid(), 0, "{} must stay root's", untouched.display());
        }
        assert_eq!(hand_over(&dir, uid, gid).expect("again"), 0);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&outside);
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("postern-privilege-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }
}
