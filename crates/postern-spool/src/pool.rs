//! Recycled message files: `free/` holds the inodes of removed messages,
//! ready to be overwritten by the next ones.
//!
//! Creating a file costs the file system an inode allocation and removing
//! it an inode and block release; on this project's reference disk that was
//! a fifth of the gateway's CPU (`docs/performance.md`). So `remove` renames
//! a delivered message's file into `free/` instead of unlinking it, and a new
//! message is written over a file taken from here, then renamed into
//! `queue/` under its id: the file system keeps the inode and its blocks.
//!
//! Three rules keep it safe:
//! - a file joins the pool only after the `queue/` fsync that made its
//!   removal durable: until then a crash could bring the old name back, and
//!   the old message must still be intact under it (a removal that does not
//!   wait for that fsync leaves its file pending until a round covers it:
//!   [`FilePool::defer`]);
//! - at start, a name in `free/` whose inode is also named in `queue/` (a
//!   rename torn by a machine crash on a file system without a journal) is
//!   left alone: writing into it would overwrite a queued message;
//! - a file some [`crate::MessageFile`] of this process still reads is not
//!   recycled but unlinked, so the reader keeps the bytes it verified (as
//!   with any unlinked file); readers in other processes only use
//!   `load_envelope`, which checks the name after reading.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirEntryExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::SpoolError;
use crate::group_sync::GroupSync;

/// Free files kept at most; beyond that, removed messages are unlinked.
pub(crate) const MAX_FREE_FILES: usize = 1024;
/// Files larger than this are unlinked rather than kept: a pool of large
/// files would hold disk space for no gain (a large message's write costs
/// far more than its inode).
pub(crate) const MAX_FREE_FILE_BYTES: u64 = 1 << 20;

/// A free file taken for writing a new message.
#[derive(Debug)]
pub(crate) struct Reused {
    pub path: PathBuf,
    pub file: File,
    /// Its length before: what is left beyond the new message is cut off.
    pub old_len: u64,
}

#[derive(Debug)]
pub(crate) struct FilePool {
    dir: PathBuf,
    names: Mutex<Vec<OsString>>,
    /// Removed messages' files whose removal is not durable yet, with the
    /// `queue/` fsync ticket that will make it so.
    pending: Mutex<Vec<(u64, PathBuf)>>,
}

impl FilePool {
    /// The pool of `dir` (`free/`), skipping names that share an inode with
    /// a file in `queue/`. Returns the pool and how many names it skipped.
    pub(crate) fn load(dir: &Path, queue: &Path) -> Result<(FilePool, usize), SpoolError> {
        let mut queued = HashSet::new();
        for entry in fs::read_dir(queue).map_err(|e| SpoolError::io("list", queue, e))? {
            let entry = entry.map_err(|e| SpoolError::io("list", queue, e))?;
            queued.insert(entry.ino());
        }
        let mut names = Vec::new();
        let mut skipped = 0;
        for entry in fs::read_dir(dir).map_err(|e| SpoolError::io("list", dir, e))? {
            let entry = entry.map_err(|e| SpoolError::io("list", dir, e))?;
            if queued.contains(&entry.ino()) {
                skipped += 1;
            } else {
                names.push(entry.file_name());
            }
        }
        let pool = FilePool {
            dir: dir.to_path_buf(),
            names: Mutex::new(names),
            pending: Mutex::new(Vec::new()),
        };
        Ok((pool, skipped))
    }

    /// Where a removed message goes: a fresh name in `free/` (the rename
    /// never replaces an existing one).
    pub(crate) fn fresh_name(&self) -> PathBuf {
        let nonce: u64 = rand::random();
        self.dir.join(format!("{nonce:016x}"))
    }

    /// A free file opened for writing, or `None` when there is none.
    pub(crate) fn take(&self) -> Option<Reused> {
        loop {
            let name = self.lock().pop()?;
            let path = self.dir.join(&name);
            // A free file that cannot be used is forgotten, not fatal: the
            // message gets a new file instead.
            if let Ok(reused) = open_free(&path) {
                return Some(reused);
            }
        }
    }

    /// A file taken but not committed goes back (its content is garbage
    /// now, which is all a free file ever is).
    pub(crate) fn give_back(&self, path: &Path) {
        if let Some(name) = path.file_name() {
            self.lock().push(name.to_os_string());
        }
    }

    /// Admit a removed message's file, whose removal is now durable; a file
    /// too large, one still being read, or one more than the pool keeps, is
    /// unlinked instead.
    pub(crate) fn admit(&self, path: &Path, open: &OpenFiles) {
        let small = fs::symlink_metadata(path)
            .is_ok_and(|m| m.len() <= MAX_FREE_FILE_BYTES && !open.contains((m.dev(), m.ino())));
        let mut names = self.lock();
        if small && names.len() < MAX_FREE_FILES {
            if let Some(name) = path.file_name() {
                names.push(name.to_os_string());
                return;
            }
        }
        drop(names);
        // Not syncing the directory: a name that comes back after a crash
        // is just one more free file.
        let _ = fs::remove_file(path);
    }

    /// A removed message's file whose removal becomes durable with the
    /// round covering `ticket`: admitted by [`FilePool::settle`] after that.
    /// Beyond the pool's size it just stays in `free/` (a free file at the
    /// next start).
    pub(crate) fn defer(&self, ticket: u64, path: PathBuf) {
        let mut pending = lock(&self.pending);
        if pending.len() < MAX_FREE_FILES {
            pending.push((ticket, path));
        }
    }

    /// Admit the pending files whose removal a finished round made durable;
    /// forget those whose round failed (they stay in `free/`, unused until
    /// the next start, when the rules of [`FilePool::load`] apply).
    pub(crate) fn settle(&self, sync: &GroupSync, open: &OpenFiles) {
        let settled: Vec<(PathBuf, bool)> = {
            let mut pending = lock(&self.pending);
            if pending.is_empty() {
                return;
            }
            let mut settled = Vec::new();
            pending.retain(|(ticket, path)| match sync.outcome(*ticket) {
                None => true,
                Some(durable) => {
                    settled.push((path.clone(), durable));
                    false
                }
            });
            settled
        };
        for (path, durable) in settled {
            if durable {
                self.admit(&path, open);
            }
        }
    }

    /// Free files ready now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<OsString>> {
        lock(&self.names)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The inodes of queue files this process has open for reading
/// ([`crate::MessageFile`]), with how many readers each.
#[derive(Debug, Default)]
pub(crate) struct OpenFiles {
    inodes: Mutex<HashMap<(u64, u64), usize>>,
}

impl OpenFiles {
    /// Count a reader of `key` (device, inode) until the guard is dropped.
    pub(crate) fn register(self: &Arc<Self>, key: (u64, u64)) -> OpenGuard {
        *self.lock().entry(key).or_insert(0) += 1;
        OpenGuard {
            files: Arc::clone(self),
            key,
        }
    }

    fn contains(&self, key: (u64, u64)) -> bool {
        self.lock().contains_key(&key)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(u64, u64), usize>> {
        self.inodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One reader of a queue file; see [`OpenFiles`].
#[derive(Debug)]
pub(crate) struct OpenGuard {
    files: Arc<OpenFiles>,
    key: (u64, u64),
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let mut inodes = self.files.lock();
        if let Some(n) = inodes.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                inodes.remove(&self.key);
            }
        }
    }
}

fn open_free(path: &Path) -> io::Result<Reused> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(io::Error::other("not a single-linked regular file"));
    }
    Ok(Reused {
        path: path.to_path_buf(),
        file,
        old_len: meta.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_name_sharing_a_queued_inode_is_never_used() {
        let dir = tempfile::tempdir().unwrap();
        let (free, queue) = (dir.path().join("free"), dir.path().join("queue"));
        fs::create_dir(&free).unwrap();
        fs::create_dir(&queue).unwrap();
        fs::write(queue.join("01HF3K5Q8M0ABCDE"), b"queued").unwrap();
        // What a torn rename leaves: both names, one inode.
        fs::hard_link(
            queue.join("01HF3K5Q8M0ABCDE"),
            free.join("00000000000000aa"),
        )
        .unwrap();
        fs::write(free.join("00000000000000bb"), b"old").unwrap();
        let (pool, skipped) = FilePool::load(&free, &queue).unwrap();
        assert_eq!((pool.len(), skipped), (1, 1));
        let reused = pool.take().unwrap();
        assert_eq!(reused.path, free.join("00000000000000bb"));
        assert_eq!(reused.old_len, 3);
        assert!(pool.take().is_none());
        assert_eq!(fs::read(queue.join("01HF3K5Q8M0ABCDE")).unwrap(), b"queued");
    }

    #[test]
    fn large_files_and_overflow_are_unlinked() {
        let dir = tempfile::tempdir().unwrap();
        let (free, queue) = (dir.path().join("free"), dir.path().join("queue"));
        fs::create_dir(&free).unwrap();
        fs::create_dir(&queue).unwrap();
        let (pool, _) = FilePool::load(&free, &queue).unwrap();
        let big = pool.fresh_name();
        let f = File::create(&big).unwrap();
        f.set_len(MAX_FREE_FILE_BYTES + 1).unwrap();
        pool.admit(&big, &OpenFiles::default());
        assert!(!big.exists());
        assert_eq!(pool.len(), 0);
        for _ in 0..MAX_FREE_FILES + 3 {
            let p = pool.fresh_name();
            fs::write(&p, b"x").unwrap();
            pool.admit(&p, &OpenFiles::default());
        }
        assert_eq!(pool.len(), MAX_FREE_FILES);
        assert_eq!(fs::read_dir(&free).unwrap().count(), MAX_FREE_FILES);
    }
}
