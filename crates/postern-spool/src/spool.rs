//! The spool directory and its operations.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, BufReader, IoSlice, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::SpoolError;
use crate::format::{self, Body, DecodeError};
use crate::group_sync::GroupSync;
use crate::id::QueueId;
use crate::types::{Envelope, QueuedEnvelope, QueuedMessage, RecipientState, RecoveryReport};

const TMP: &str = "tmp";
const QUEUE: &str = "queue";
const CORRUPT: &str = "corrupt";
const LOCK: &str = "lock";
const STATE_SUFFIX: &str = ".state";
const REASON_SUFFIX: &str = ".reason";
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
/// Attempts at finding a free name before giving up.
const NAME_ATTEMPTS: u32 = 16;
const READ_BUFFER: usize = 64 * 1024;

/// A spool directory: `tmp/` (files being written), `queue/` (committed
/// messages and their state), `corrupt/` (damaged files, kept for the
/// operator), and a `lock` file.
///
/// All methods take `&self` and are safe to call from many threads at once.
/// They block on disk I/O: call them from `spawn_blocking`.
#[derive(Debug)]
pub struct Spool {
    root: PathBuf,
    tmp: PathBuf,
    queue: PathBuf,
    /// Shared fsyncs of `queue/` (see [`GroupSync`]).
    queue_sync: GroupSync,
    /// Set once unnamed files (`O_TMPFILE`) turned out not to work here.
    unnamed_unsupported: AtomicBool,
    corrupt: PathBuf,
    /// Held for the lifetime of a writable spool; `None` when read-only.
    _lock: Option<File>,
    read_only: bool,
    tmp_removed: usize,
}

impl Spool {
    /// Create or open the spool at `dir`, creating `tmp/`, `queue/` and
    /// `corrupt/` with mode 0700, and take the spool's lock (one writer per
    /// directory: a second open fails with [`SpoolError::Locked`]). Files left
    /// in `tmp/` were never acknowledged to anyone and are removed.
    ///
    /// This does not verify the queue: call [`Spool::recover`] before
    /// delivery starts.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        let root_existed = dir.is_dir();
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|e| SpoolError::io("create directory", dir, e))?;
        if !root_existed {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let lock = take_lock(dir)?;
        let mut created = false;
        for sub in [TMP, QUEUE, CORRUPT] {
            created |= ensure_private_dir(&dir.join(sub))?;
        }
        if created || !root_existed {
            sync_dir(dir)?;
        }
        let mut spool = Spool::paths(dir, Some(lock), false);
        spool.tmp_removed = spool.clear_tmp()?;
        Ok(spool)
    }

    /// Open an existing spool for reading only (`list`, `load`,
    /// `load_envelope`), without taking the lock or touching `tmp/`: for
    /// `postern queue list/show` while a gateway runs. Write operations return
    /// [`SpoolError::ReadOnly`].
    pub fn open_read_only(dir: &Path) -> Result<Spool, SpoolError> {
        let queue = dir.join(QUEUE);
        if !queue.is_dir() {
            return Err(SpoolError::io(
                "open spool queue directory",
                queue,
                io::Error::from(io::ErrorKind::NotFound),
            ));
        }
        Ok(Spool::paths(dir, None, true))
    }

    fn paths(dir: &Path, lock: Option<File>, read_only: bool) -> Spool {
        Spool {
            root: dir.to_path_buf(),
            tmp: dir.join(TMP),
            queue: dir.join(QUEUE),
            queue_sync: GroupSync::new(&dir.join(QUEUE)),
            unnamed_unsupported: AtomicBool::new(false),
            corrupt: dir.join(CORRUPT),
            _lock: lock,
            read_only,
            tmp_removed: 0,
        }
    }

    /// The spool directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// How many unacknowledged leftovers `open` removed from `tmp/` (worth a
    /// log line: each one is a message or state update interrupted by a crash).
    pub fn tmp_files_removed(&self) -> usize {
        self.tmp_removed
    }

    /// Durably store one message. Returns only after the file is fsync'd,
    /// renamed into `queue/`, and `queue/` is fsync'd: then, and only then,
    /// the gateway may answer 250. On any error nothing is left in `queue/`
    /// and the client must be answered 451.
    pub fn store(&self, envelope: &Envelope, message: &[u8]) -> Result<QueueId, SpoolError> {
        self.writable()?;
        let encoded = format::encode_message(envelope, message)
            .map_err(|reason| SpoolError::InvalidEnvelope { reason })?;
        if !self.unnamed_unsupported.load(Ordering::Relaxed) {
            match self.store_unnamed(&encoded, message)? {
                Some(id) => return Ok(id),
                None => self.unnamed_unsupported.store(true, Ordering::Relaxed),
            }
        }
        let (id, tmp_path, file) = self.create_tmp_message()?;
        let result = self.commit_message(&id, &tmp_path, file, &encoded, message);
        if result.is_err() {
            // Best effort: after a successful rename this finds nothing.
            let _ = fs::remove_file(&tmp_path);
        }
        result.map(|()| id)
    }

    /// The fast path of [`Spool::store`]: the file is created without a name
    /// in `queue/` (`O_TMPFILE`), written and fsync'd, and then linked as
    /// `queue/<ID>` — a link never replaces an existing name, so a taken id
    /// just means another try. Unlike create-in-`tmp/` + rename, creating
    /// the inode does not hold a directory lock, and no two directories are
    /// locked for a rename: concurrent sessions no longer queue on `tmp/`.
    /// A crash before the link leaves no name at all. `Ok(None)`: this file
    /// system or kernel cannot (no `O_TMPFILE`, no `/proc`); use `tmp/`.
    fn store_unnamed(
        &self,
        encoded: &format::EncodedMessage,
        message: &[u8],
    ) -> Result<Option<QueueId>, SpoolError> {
        use rustix::fs::{linkat, openat, AtFlags, Mode, OFlags, CWD};
        use rustix::io::Errno;
        use std::os::fd::AsRawFd;

        let flags = OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC;
        let fd = match openat(CWD, &self.queue, flags, Mode::from_raw_mode(FILE_MODE)) {
            Ok(fd) => fd,
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOSYS) => return Ok(None),
            Err(e) => return Err(SpoolError::io("create (unnamed) in", &self.queue, e.into())),
        };
        let mut file = File::from(fd);
        let mut parts = [
            IoSlice::new(&encoded.header),
            IoSlice::new(message),
            IoSlice::new(&encoded.trailer),
        ];
        write_all_vectored(&mut file, &mut parts)
            .map_err(|e| SpoolError::io("write (unnamed) in", &self.queue, e))?;
        file.sync_all()
            .map_err(|e| SpoolError::io("fsync (unnamed) in", &self.queue, e))?;
        // Linking by descriptor needs CAP_DAC_READ_SEARCH (AT_EMPTY_PATH);
        // through /proc it needs nothing.
        let by_fd = format!("/proc/self/fd/{}", file.as_raw_fd());
        let mut last_err = None;
        for _ in 0..NAME_ATTEMPTS {
            let id = QueueId::generate();
            let final_path = self.queue.join(id.as_str());
            match linkat(
                CWD,
                by_fd.as_str(),
                CWD,
                &final_path,
                AtFlags::SYMLINK_FOLLOW,
            ) {
                Ok(()) => {
                    if let Err(e) = self.queue_sync.sync() {
                        // Not durable, so not acknowledged: take it back.
                        let _ = fs::remove_file(&final_path);
                        return Err(e);
                    }
                    return Ok(Some(id));
                }
                Err(Errno::EXIST) => last_err = Some(Errno::EXIST),
                // No /proc, or it refuses us: the rename path needs neither.
                Err(
                    Errno::NOENT | Errno::ACCESS | Errno::PERM | Errno::XDEV | Errno::OPNOTSUPP,
                ) => return Ok(None),
                Err(e) => return Err(SpoolError::io("link into queue", final_path, e.into())),
            }
        }
        let e = last_err.map_or_else(
            || io::Error::from(io::ErrorKind::AlreadyExists),
            io::Error::from,
        );
        Err(SpoolError::io("find a free queue id in", &self.queue, e))
    }

    /// Reserve a fresh id: `tmp/<ID>` created exclusively, and no `queue/<ID>`.
    /// Holding `tmp/<ID>` keeps any other writer from taking the same id
    /// until it is renamed into `queue/`.
    fn create_tmp_message(&self) -> Result<(QueueId, PathBuf, File), SpoolError> {
        let mut last_err = None;
        for _ in 0..NAME_ATTEMPTS {
            let id = QueueId::generate();
            let tmp_path = self.tmp.join(id.as_str());
            let file = match create_new(&tmp_path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    last_err = Some(e);
                    continue;
                }
                Err(e) => return Err(SpoolError::io("create", tmp_path, e)),
            };
            match fs::symlink_metadata(self.queue.join(id.as_str())) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((id, tmp_path, file)),
                Ok(_) => last_err = Some(io::Error::from(io::ErrorKind::AlreadyExists)),
                Err(e) => last_err = Some(e),
            }
            drop(file);
            let _ = fs::remove_file(&tmp_path);
        }
        let e = last_err.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists));
        Err(SpoolError::io("find a free queue id in", &self.tmp, e))
    }

    fn commit_message(
        &self,
        id: &QueueId,
        tmp_path: &Path,
        mut file: File,
        encoded: &format::EncodedMessage,
        message: &[u8],
    ) -> Result<(), SpoolError> {
        let mut parts = [
            IoSlice::new(&encoded.header),
            IoSlice::new(message),
            IoSlice::new(&encoded.trailer),
        ];
        write_all_vectored(&mut file, &mut parts)
            .map_err(|e| SpoolError::io("write", tmp_path, e))?;
        file.sync_all()
            .map_err(|e| SpoolError::io("fsync", tmp_path, e))?;
        drop(file);
        let final_path = self.queue.join(id.as_str());
        fs::rename(tmp_path, &final_path)
            .map_err(|e| SpoolError::io("rename into queue", tmp_path, e))?;
        if let Err(e) = self.queue_sync.sync() {
            // Not durable, so not acknowledged: take it back, or a client
            // retrying after our 451 would make a duplicate.
            let _ = fs::remove_file(&final_path);
            return Err(e);
        }
        Ok(())
    }

    /// Read and verify one queued message: format version, checksum, END
    /// marker, envelope, and its state file.
    pub fn load(&self, id: &QueueId) -> Result<QueuedMessage, SpoolError> {
        let (decoded, path) = self.read_message(id, Body::Keep)?;
        let recipients = self.read_state(id, &decoded.envelope)?;
        let message = decoded.message.ok_or_else(|| SpoolError::Corrupt {
            path,
            reason: "message bytes missing".to_owned(),
        })?;
        Ok(QueuedMessage {
            envelope: QueuedEnvelope {
                id: id.clone(),
                envelope: decoded.envelope,
                recipients,
                size: decoded.size,
            },
            message,
        })
    }

    /// Read and verify the envelope and per-recipient state of one message.
    /// The whole file is still checksummed, but the message bytes are not
    /// kept in memory.
    pub fn load_envelope(&self, id: &QueueId) -> Result<QueuedEnvelope, SpoolError> {
        let (decoded, _) = self.read_message(id, Body::Verify)?;
        let recipients = self.read_state(id, &decoded.envelope)?;
        Ok(QueuedEnvelope {
            id: id.clone(),
            envelope: decoded.envelope,
            recipients,
            size: decoded.size,
        })
    }

    fn read_message(
        &self,
        id: &QueueId,
        body: Body,
    ) -> Result<(format::DecodedMessage, PathBuf), SpoolError> {
        let path = self.queue.join(id.as_str());
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound { id: id.clone() })
            }
            Err(e) => return Err(SpoolError::io("open", path, e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| SpoolError::io("stat", &path, e))?;
        if !meta.is_file() {
            return Err(SpoolError::Corrupt {
                path,
                reason: "not a regular file".to_owned(),
            });
        }
        let mut reader = BufReader::with_capacity(READ_BUFFER, file);
        match format::decode_message(&mut reader, meta.len(), body) {
            Ok(decoded) => Ok((decoded, path)),
            Err(DecodeError::Damage(d)) => Err(SpoolError::Corrupt {
                path,
                reason: d.to_string(),
            }),
            Err(DecodeError::Io(e)) => Err(SpoolError::io("read", path, e)),
        }
    }

    /// The recipients' state: from `queue/<ID>.state`, or all pending when
    /// there is none. A state file that fails verification or does not match
    /// the envelope is an error: guessing could deliver twice.
    fn read_state(
        &self,
        id: &QueueId,
        envelope: &Envelope,
    ) -> Result<Vec<RecipientState>, SpoolError> {
        let path = self.state_path(id);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(envelope
                    .recipients
                    .iter()
                    .map(RecipientState::pending)
                    .collect())
            }
            Err(e) => return Err(SpoolError::io("open", path, e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| SpoolError::io("stat", &path, e))?;
        if !meta.is_file() || meta.len() > format::MAX_STATE_FILE {
            return Err(SpoolError::Corrupt {
                path,
                reason: "not a regular file of plausible size".to_owned(),
            });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.read_to_end(&mut bytes)
            .map_err(|e| SpoolError::io("read", &path, e))?;
        let states = format::decode_state(&bytes).map_err(|d| SpoolError::Corrupt {
            path: path.clone(),
            reason: d.to_string(),
        })?;
        if let Err(reason) = check_matches(envelope, &states) {
            return Err(SpoolError::Corrupt { path, reason });
        }
        Ok(states)
    }

    /// IDs of all messages in `queue/`, oldest first. State files and names
    /// that are not queue ids are skipped (`recover` deals with the latter).
    pub fn list(&self) -> Result<Vec<QueueId>, SpoolError> {
        let mut ids: Vec<QueueId> = self
            .queue_names()?
            .iter()
            .filter_map(|n| n.to_str()?.parse().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Verify every file in `queue/`. Damaged messages (bad checksum,
    /// truncated, unknown version, unparsable envelope, damaged or mismatched
    /// state file), unreadable files, files whose name is not a queue id, and
    /// state files without a message are moved to `corrupt/` — never deleted —
    /// and reported. Fails only when the spool itself is unusable (cannot
    /// list `queue/`, cannot move into `corrupt/`).
    pub fn recover(&self) -> Result<RecoveryReport, SpoolError> {
        self.writable()?;
        let names: BTreeSet<OsString> = self.queue_names()?.into_iter().collect();
        let mut report = RecoveryReport::default();
        for name in &names {
            let display = name.to_string_lossy().into_owned();
            let entry = classify(name);
            let with_state = matches!(entry, Entry::Message(_));
            let reason = match entry {
                Entry::Message(id) => match self.load_envelope(&id) {
                    Ok(_) => {
                        report.ok.push(id);
                        continue;
                    }
                    // Removed while we looked: nothing to do.
                    Err(SpoolError::NotFound { .. }) => continue,
                    Err(SpoolError::Corrupt { path, reason })
                        if path.ends_with(self.state_name(&id)) =>
                    {
                        format!("state file damaged: {reason}")
                    }
                    Err(SpoolError::Corrupt { reason, .. }) => reason,
                    Err(e) => format!("unreadable: {e}"),
                },
                Entry::State(id) => {
                    if names.contains(OsStr::new(id.as_str())) {
                        continue; // verified with its message
                    }
                    "state file without a message file (interrupted remove?)".to_owned()
                }
                Entry::Other => "file name is not a queue id".to_owned(),
            };
            if self.quarantine_name(name, with_state, &reason)? {
                report.quarantined.push((display, reason));
            }
        }
        Ok(report)
    }

    /// Atomically replace the per-recipient state of a queued message: write
    /// `tmp/`, fsync, rename over `queue/<ID>.state`, fsync `queue/`.
    /// `recipients` must list the envelope's recipients, in order.
    ///
    /// Do not run concurrently with `remove` of the same id.
    pub fn update_state(
        &self,
        id: &QueueId,
        recipients: &[RecipientState],
    ) -> Result<(), SpoolError> {
        self.writable()?;
        let (decoded, _) = self.read_message(id, Body::Verify)?;
        check_matches(&decoded.envelope, recipients).map_err(|reason| {
            SpoolError::StateMismatch {
                id: id.clone(),
                reason,
            }
        })?;
        let bytes =
            format::encode_state(recipients).map_err(|reason| SpoolError::StateMismatch {
                id: id.clone(),
                reason,
            })?;
        let (tmp_path, mut file) = self.create_tmp_state(id)?;
        let final_path = self.state_path(id);
        let result = (|| {
            file.write_all(&bytes)
                .map_err(|e| SpoolError::io("write", &tmp_path, e))?;
            file.sync_all()
                .map_err(|e| SpoolError::io("fsync", &tmp_path, e))?;
            drop(file);
            fs::rename(&tmp_path, &final_path)
                .map_err(|e| SpoolError::io("rename into queue", &tmp_path, e))?;
            self.queue_sync.sync()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp_path);
        }
        result?;
        // The message was removed while we wrote: do not leave an orphan.
        if !self.queue.join(id.as_str()).exists() {
            let _ = fs::remove_file(&final_path);
            return Err(SpoolError::NotFound { id: id.clone() });
        }
        Ok(())
    }

    fn create_tmp_state(&self, id: &QueueId) -> Result<(PathBuf, File), SpoolError> {
        let mut last_err = None;
        for _ in 0..NAME_ATTEMPTS {
            let nonce: u32 = rand::random();
            let path = self.tmp.join(format!("{id}{STATE_SUFFIX}.{nonce:08x}"));
            match create_new(&path) {
                Ok(f) => return Ok((path, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => return Err(SpoolError::io("create", path, e)),
            }
        }
        let e = last_err.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists));
        Err(SpoolError::io(
            "find a free temporary name in",
            &self.tmp,
            e,
        ))
    }

    /// Remove a message and its state durably (unlink, then fsync `queue/`).
    /// The message goes first: a crash in between leaves an orphan state
    /// file (quarantined by `recover`), never a message that looks undelivered.
    pub fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        self.writable()?;
        let path = self.queue.join(id.as_str());
        let message_existed = match fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(SpoolError::io("remove", path, e)),
        };
        let state_path = self.state_path(id);
        let state_existed = match fs::remove_file(&state_path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(SpoolError::io("remove", state_path, e)),
        };
        if !message_existed && !state_existed {
            return Err(SpoolError::NotFound { id: id.clone() });
        }
        self.queue_sync.sync()
    }

    /// Move a message and its state file to `corrupt/`, with the reason in
    /// `corrupt/<name>.reason`.
    pub fn quarantine(&self, id: &QueueId, reason: &str) -> Result<(), SpoolError> {
        self.writable()?;
        if self.quarantine_name(OsStr::new(id.as_str()), true, reason)? {
            Ok(())
        } else {
            Err(SpoolError::NotFound { id: id.clone() })
        }
    }

    /// Move `queue/<name>` (and `queue/<name>.state` when `with_state`) to
    /// `corrupt/` under a name not used there yet. Returns false when there
    /// was nothing to move.
    fn quarantine_name(
        &self,
        name: &OsStr,
        with_state: bool,
        reason: &str,
    ) -> Result<bool, SpoolError> {
        let target = self.free_corrupt_name(name)?;
        let src = self.queue.join(name);
        let dst = self.corrupt.join(&target);
        // The message first: a crash in between leaves an orphan state file,
        // not a message whose deliveries are forgotten.
        let mut moved = rename_if_exists(&src, &dst)?;
        if with_state {
            let mut state_name = name.to_os_string();
            state_name.push(STATE_SUFFIX);
            let mut target_state = target.clone();
            target_state.push(STATE_SUFFIX);
            moved |= rename_if_exists(
                &self.queue.join(state_name),
                &self.corrupt.join(target_state),
            )?;
        }
        if !moved {
            return Ok(false);
        }
        // The reason is for the operator; the move is what matters, so a
        // failure to write it does not fail the quarantine.
        let mut reason_name = target;
        reason_name.push(REASON_SUFFIX);
        let _ = write_reason(&self.corrupt.join(reason_name), name, reason);
        sync_dir(&self.corrupt)?;
        self.queue_sync.sync()?;
        Ok(true)
    }

    /// `name`, or `name.1`, `name.2`, … : the first for which neither the
    /// file, its `.state` nor its `.reason` exists in `corrupt/`.
    fn free_corrupt_name(&self, name: &OsStr) -> Result<OsString, SpoolError> {
        for n in 0u32..10_000 {
            let mut candidate = name.to_os_string();
            if n > 0 {
                candidate.push(format!(".{n}"));
            }
            let taken = ["", STATE_SUFFIX, REASON_SUFFIX].iter().any(|suffix| {
                let mut p = candidate.clone();
                p.push(suffix);
                fs::symlink_metadata(self.corrupt.join(p)).is_ok()
            });
            if !taken {
                return Ok(candidate);
            }
        }
        Err(SpoolError::io(
            "find a free name in",
            &self.corrupt,
            io::Error::from(io::ErrorKind::AlreadyExists),
        ))
    }

    fn queue_names(&self) -> Result<Vec<OsString>, SpoolError> {
        let entries =
            fs::read_dir(&self.queue).map_err(|e| SpoolError::io("list", &self.queue, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| SpoolError::io("list", &self.queue, e))?;
            names.push(entry.file_name());
        }
        Ok(names)
    }

    fn clear_tmp(&self) -> Result<usize, SpoolError> {
        let entries = fs::read_dir(&self.tmp).map_err(|e| SpoolError::io("list", &self.tmp, e))?;
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(|e| SpoolError::io("list", &self.tmp, e))?;
            let path = entry.path();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            let result = if is_dir {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match result {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SpoolError::io("remove leftover", path, e)),
            }
        }
        if removed > 0 {
            sync_dir(&self.tmp)?;
        }
        Ok(removed)
    }

    fn writable(&self) -> Result<(), SpoolError> {
        if self.read_only {
            return Err(SpoolError::ReadOnly {
                path: self.root.clone(),
            });
        }
        Ok(())
    }

    fn state_name(&self, id: &QueueId) -> String {
        format!("{id}{STATE_SUFFIX}")
    }

    fn state_path(&self, id: &QueueId) -> PathBuf {
        self.queue.join(self.state_name(id))
    }
}

enum Entry {
    Message(QueueId),
    State(QueueId),
    Other,
}

fn classify(name: &OsStr) -> Entry {
    let Some(name) = name.to_str() else {
        return Entry::Other;
    };
    if let Ok(id) = name.parse() {
        return Entry::Message(id);
    }
    match name.strip_suffix(STATE_SUFFIX).map(str::parse) {
        Some(Ok(id)) => Entry::State(id),
        _ => Entry::Other,
    }
}

/// The state must list the envelope's recipients, in order.
fn check_matches(envelope: &Envelope, states: &[RecipientState]) -> Result<(), String> {
    if states.len() != envelope.recipients.len() {
        return Err(format!(
            "{} recipient states for {} envelope recipients",
            states.len(),
            envelope.recipients.len()
        ));
    }
    for (i, (state, rcpt)) in states.iter().zip(&envelope.recipients).enumerate() {
        if state.address != *rcpt {
            return Err(format!(
                "recipient {} is {:?} in the state but {:?} in the envelope",
                i + 1,
                state.address,
                rcpt
            ));
        }
    }
    Ok(())
}

fn take_lock(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(&path)
        .map_err(|e| SpoolError::io("open lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(SpoolError::Locked {
            path: dir.to_path_buf(),
        }),
        // A filesystem without locks: run unprotected rather than not at all.
        Err(TryLockError::Error(e)) if e.kind() == io::ErrorKind::Unsupported => Ok(file),
        Err(TryLockError::Error(e)) => Err(SpoolError::io("lock", path, e)),
    }
}

/// Create `path` as a 0700 directory, or tighten an existing one to 0700.
/// Returns true when it was created.
fn ensure_private_dir(path: &Path) -> Result<bool, SpoolError> {
    match DirBuilder::new().mode(DIR_MODE).create(path) {
        Ok(()) => return Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(SpoolError::io("create directory", path, e)),
    }
    let meta = fs::metadata(path).map_err(|e| SpoolError::io("stat", path, e))?;
    if !meta.is_dir() {
        return Err(SpoolError::io(
            "use as directory",
            path,
            io::Error::from(io::ErrorKind::NotADirectory),
        ));
    }
    if meta.permissions().mode() & 0o777 != DIR_MODE {
        fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| SpoolError::io("chmod 0700", path, e))?;
    }
    Ok(false)
}

fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Make a directory's entries (creations, renames, unlinks) durable.
fn sync_dir(path: &Path) -> Result<(), SpoolError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io("fsync directory", path, e))
}

fn rename_if_exists(src: &Path, dst: &Path) -> Result<bool, SpoolError> {
    match fs::rename(src, dst) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(SpoolError::io("move to corrupt/", src, e)),
    }
}

fn write_reason(path: &Path, name: &OsStr, reason: &str) -> io::Result<()> {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown time".to_owned());
    let reason: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let line = format!("{now} queue/{}: {reason}\n", name.to_string_lossy());
    let mut file = create_new(path)?;
    file.write_all(line.as_bytes())?;
    file.sync_all()
}

/// Write every buffer, in as few `writev` calls as the kernel allows.
fn write_all_vectored(file: &mut File, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            sender: "a@example.test".into(),
            recipients: vec!["b@example.test".into()],
            received_at: 1,
            client_addr: "192.0.2.1:25".into(),
            helo: "client.example.test".into(),
            tls: None,
            body: "8BITMIME".into(),
            smtputf8: false,
            message_id: None,
        }
    }

    /// The unnamed-file path and the `tmp/` + rename fallback write the
    /// same bytes, private, with nothing left in `tmp/`.
    #[test]
    fn both_store_paths_write_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let fast = spool
            .store(&envelope(), b"Subject: x\r\n\r\nbody\r\n")
            .unwrap();
        assert!(
            !spool.unnamed_unsupported.load(Ordering::Relaxed),
            "O_TMPFILE should work on the test machine's file system"
        );
        spool.unnamed_unsupported.store(true, Ordering::Relaxed);
        let fallback = spool
            .store(&envelope(), b"Subject: x\r\n\r\nbody\r\n")
            .unwrap();
        let read = |id: &QueueId| fs::read(spool.queue.join(id.as_str())).unwrap();
        assert_eq!(read(&fast), read(&fallback));
        for id in [&fast, &fallback] {
            let mode = fs::metadata(spool.queue.join(id.as_str()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, FILE_MODE);
            assert!(spool.load(id).is_ok());
        }
        assert_eq!(fs::read_dir(&spool.tmp).unwrap().count(), 0);
    }
}
