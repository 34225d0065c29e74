//! The spool directory and its operations.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::body::MessageFile;
use crate::error::SpoolError;
use crate::format::{self, DecodeError, MessageHeader};
use crate::group_sync::{Flusher, GroupSync};
use crate::id::QueueId;
use crate::pool::{FilePool, OpenFiles, OpenGuard};
use crate::sync_mode::SyncMode;
use crate::types::{Envelope, QueuedEnvelope, QueuedMessage, RecipientState, RecoveryReport};
use crate::writer::{Dirs, MessageWriter, Place, NAME_ATTEMPTS};

const TMP: &str = "tmp";
const QUEUE: &str = "queue";
const CORRUPT: &str = "corrupt";
const FREE: &str = "free";
const LOCK: &str = "lock";
const STATE_SUFFIX: &str = ".state";
const REASON_SUFFIX: &str = ".reason";
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
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
    queue_sync: Arc<GroupSync>,
    /// Set once unnamed files (`O_TMPFILE`) turned out not to work here.
    unnamed_unsupported: Arc<AtomicBool>,
    corrupt: PathBuf,
    /// Files of removed messages, recycled for new ones; `None` when read-only.
    pool: Option<Arc<FilePool>>,
    /// Queue files open for reading here: never recycled while read.
    open_files: Arc<OpenFiles>,
    /// Names in `free/` left unused at open (see [`FilePool::load`]).
    free_skipped: usize,
    /// Leads a `queue/` fsync for removals nobody else's round covered;
    /// `None` when read-only. Dropped (after its last round) before the lock.
    _flusher: Option<Flusher>,
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
        Spool::open_with(dir, SyncMode::File)
    }

    /// [`Spool::open`], making stored messages durable as `mode` says
    /// (the caller checks [`crate::filesystem_sync_supported`] first).
    pub fn open_with(dir: &Path, mode: SyncMode) -> Result<Spool, SpoolError> {
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
        for sub in [TMP, QUEUE, CORRUPT, FREE] {
            created |= ensure_private_dir(&dir.join(sub))?;
        }
        if created || !root_existed {
            sync_dir(dir)?;
        }
        let mut spool = Spool::paths(dir, Some(lock), false, mode);
        spool.tmp_removed = spool.clear_tmp()?;
        let (pool, skipped) = FilePool::load(&dir.join(FREE), &spool.queue)?;
        spool.pool = Some(Arc::new(pool));
        spool.free_skipped = skipped;
        let flusher = spool
            .queue_sync
            .start_flusher()
            .map_err(|e| SpoolError::io("start the flush thread for", &spool.queue, e))?;
        spool._flusher = Some(flusher);
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
        Ok(Spool::paths(dir, None, true, SyncMode::File))
    }

    fn paths(dir: &Path, lock: Option<File>, read_only: bool, mode: SyncMode) -> Spool {
        Spool {
            root: dir.to_path_buf(),
            tmp: dir.join(TMP),
            queue: dir.join(QUEUE),
            queue_sync: Arc::new(GroupSync::new(&dir.join(QUEUE), mode)),
            unnamed_unsupported: Arc::new(AtomicBool::new(false)),
            corrupt: dir.join(CORRUPT),
            pool: None,
            open_files: Arc::default(),
            free_skipped: 0,
            _flusher: None,
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

    /// How many names in `free/` `open` left unused because their file is
    /// also a queued message (a rename torn by a machine crash).
    pub fn free_files_skipped(&self) -> usize {
        self.free_skipped
    }

    /// Recycled files ready for new messages (for tests and metrics).
    pub fn free_files(&self) -> usize {
        self.pool.as_ref().map_or(0, |pool| {
            pool.settle(&self.queue_sync, &self.open_files);
            pool.len()
        })
    }

    /// Durably store one message that is already in memory: the same as
    /// [`Spool::create_message`] and [`MessageWriter::commit`] with all of
    /// it. Returns only after the file and `queue/` are fsync'd; on any
    /// error nothing is left in `queue/` and the client must be answered 451.
    pub fn store(&self, envelope: &Envelope, message: &[u8]) -> Result<QueueId, SpoolError> {
        self.create_message(envelope)?.commit(message)
    }

    /// Start storing a message whose bytes are still arriving: write them
    /// with [`MessageWriter::write`] as they come, then
    /// [`MessageWriter::commit`]. Nothing appears in `queue/` before the
    /// commit, and dropping the writer discards the message.
    ///
    /// The file is created without a name in `queue/` (`O_TMPFILE`) and
    /// linked as `queue/<ID>` at commit. Unlike create-in-`tmp/` + rename,
    /// creating the inode does not hold a directory lock, and no two
    /// directories are locked for a rename: concurrent sessions do not
    /// queue on `tmp/`. A crash before the link leaves no name at all.
    /// Where this file system or kernel cannot (no `O_TMPFILE`, no
    /// `/proc`), the file is `tmp/<ID>`, renamed at commit.
    pub fn create_message(&self, envelope: &Envelope) -> Result<MessageWriter, SpoolError> {
        self.writable()?;
        let header = MessageHeader::new(envelope)
            .map_err(|reason| SpoolError::InvalidEnvelope { reason })?;
        let dirs = Dirs {
            tmp: self.tmp.clone(),
            queue: self.queue.clone(),
            queue_sync: Arc::clone(&self.queue_sync),
            unnamed_unsupported: Arc::clone(&self.unnamed_unsupported),
            pool: self.pool.clone(),
        };
        if let Some(pool) = &self.pool {
            pool.settle(&self.queue_sync, &self.open_files);
        }
        if let Some(reused) = self.pool.as_ref().and_then(|p| p.take()) {
            let place = Place::Reused {
                path: reused.path,
                old_len: reused.old_len,
            };
            return Ok(MessageWriter::new(reused.file, place, dirs, header));
        }
        if !self.unnamed_unsupported.load(Ordering::Relaxed) {
            if let Some(file) = self.open_unnamed()? {
                return Ok(MessageWriter::new(file, Place::Unnamed, dirs, header));
            }
            self.unnamed_unsupported.store(true, Ordering::Relaxed);
        }
        let (id, path, file) = crate::writer::create_tmp_message(&dirs)?;
        Ok(MessageWriter::new(
            file,
            Place::Tmp { id, path },
            dirs,
            header,
        ))
    }

    /// An unnamed file in `queue/`, or `None` where they are not supported.
    /// Read-write, so that a file that cannot be linked can be copied.
    fn open_unnamed(&self) -> Result<Option<File>, SpoolError> {
        use rustix::fs::{openat, Mode, OFlags, CWD};
        use rustix::io::Errno;

        let flags = OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC;
        match openat(CWD, &self.queue, flags, Mode::from_raw_mode(FILE_MODE)) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOSYS) => Ok(None),
            Err(e) => Err(SpoolError::io("create (unnamed) in", &self.queue, e.into())),
        }
    }

    /// Read and verify one queued message (format version, checksum, END
    /// marker, envelope, and its state file) and keep it open for reading
    /// its bytes: the message itself is not held in memory.
    pub fn load(&self, id: &QueueId) -> Result<QueuedMessage, SpoolError> {
        let (decoded, file, reading) = self.read_message(id)?;
        let recipients = self.read_state(id, &decoded.envelope)?;
        Ok(QueuedMessage {
            envelope: QueuedEnvelope {
                id: id.clone(),
                envelope: decoded.envelope,
                recipients,
                size: decoded.size,
            },
            body: MessageFile::new(file, decoded.offset, decoded.size, reading),
        })
    }

    /// Read and verify the envelope and per-recipient state of one message.
    /// The whole file is still checksummed, but the message bytes are not
    /// kept in memory.
    pub fn load_envelope(&self, id: &QueueId) -> Result<QueuedEnvelope, SpoolError> {
        let (decoded, _, _) = self.read_message(id)?;
        let recipients = self.read_state(id, &decoded.envelope)?;
        Ok(QueuedEnvelope {
            id: id.clone(),
            envelope: decoded.envelope,
            recipients,
            size: decoded.size,
        })
    }

    /// Verify `queue/<id>`; returns what it holds and the open file.
    /// The guard keeps `remove` from recycling the file while it is read.
    fn read_message(
        &self,
        id: &QueueId,
    ) -> Result<(format::DecodedMessage, File, OpenGuard), SpoolError> {
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
        let reading = self.open_files.register((meta.dev(), meta.ino()));
        if !meta.is_file() {
            return Err(SpoolError::Corrupt {
                path,
                reason: "not a regular file".to_owned(),
            });
        }
        let mut reader = BufReader::with_capacity(READ_BUFFER, &file);
        let decoded = format::decode_message(&mut reader, meta.len());
        // Files are recycled: if the name no longer points at the inode we
        // read, the message was removed meanwhile and what we read (damaged
        // or not) may be the next message's.
        match fs::symlink_metadata(&path) {
            Ok(now) if now.ino() == meta.ino() && now.dev() == meta.dev() => {}
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(SpoolError::io("stat", path, e))
            }
            _ => return Err(SpoolError::NotFound { id: id.clone() }),
        }
        match decoded {
            Ok(decoded) => Ok((decoded, file, reading)),
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
        let (decoded, _, _) = self.read_message(id)?;
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
    ///
    /// The message file is not unlinked but renamed into `free/`, and once
    /// `queue/` is fsync'd it may be overwritten by a new message (see
    /// [`crate::pool`]).
    pub fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        let recycled = self.take_out(id)?;
        self.queue_sync.sync()?;
        // Only now may the file be overwritten: before this sync, a crash
        // could bring `queue/<ID>` back, and it must still be the message.
        if let (Some(free), Some(pool)) = (recycled, &self.pool) {
            pool.admit(&free, &self.open_files);
        }
        Ok(())
    }

    /// Remove a message whose every recipient is final (delivered or
    /// bounced) as [`Spool::remove`] does, but without waiting for the
    /// `queue/` fsync: the next one makes it durable — a store's, or the
    /// flush thread's within [`crate::group_sync::FLUSH_DELAY`]. Until
    /// then a machine crash (not a killed process: the kernel has the
    /// rename) can bring the message back, to be delivered again: a
    /// duplicate, never a loss. Its file is recycled only after that fsync.
    ///
    /// Not for an operator's delete: that one must not come back.
    pub fn remove_delivered(&self, id: &QueueId) -> Result<(), SpoolError> {
        let recycled = self.take_out(id)?;
        let ticket = self.queue_sync.sync_soon();
        if let (Some(free), Some(pool)) = (recycled, &self.pool) {
            pool.defer(ticket, free);
        }
        Ok(())
    }

    /// The entry changes of a removal: the message (renamed into `free/`,
    /// returned, or unlinked) and then its state file.
    fn take_out(&self, id: &QueueId) -> Result<Option<PathBuf>, SpoolError> {
        self.writable()?;
        let path = self.queue.join(id.as_str());
        let (message_existed, recycled) = self.remove_message_file(&path)?;
        let state_path = self.state_path(id);
        let state_existed = match fs::remove_file(&state_path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(SpoolError::io("remove", state_path, e)),
        };
        if !message_existed && !state_existed {
            return Err(SpoolError::NotFound { id: id.clone() });
        }
        Ok(recycled)
    }

    /// Take `queue/<ID>` out of the queue: renamed into `free/`, or unlinked
    /// where it cannot be. Returns whether it existed and its new name.
    fn remove_message_file(&self, path: &Path) -> Result<(bool, Option<PathBuf>), SpoolError> {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        use rustix::io::Errno;

        if let Some(pool) = &self.pool {
            for _ in 0..NAME_ATTEMPTS {
                let free = pool.fresh_name();
                match renameat_with(CWD, path, CWD, &free, RenameFlags::NOREPLACE) {
                    Ok(()) => return Ok((true, Some(free))),
                    Err(Errno::NOENT) => return Ok((false, None)),
                    Err(Errno::EXIST) => continue,
                    // No RENAME_NOREPLACE (or no rename across): unlink.
                    Err(_) => break,
                }
            }
        }
        match fs::remove_file(path) {
            Ok(()) => Ok((true, None)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((false, None)),
            Err(e) => Err(SpoolError::io("remove", path, e)),
        }
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

pub(crate) fn create_new(path: &Path) -> io::Result<File> {
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
            requiretls: false,
            tls_required_no: false,
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

    /// Without `O_TMPFILE` the message streams into `tmp/<ID>`: committed
    /// it moves to `queue/`, abandoned it is removed.
    #[test]
    fn tmp_fallback_streams_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool.unnamed_unsupported.store(true, Ordering::Relaxed);
        let mut writer = spool.create_message(&envelope()).unwrap();
        writer.write(b"Subject: x\r\n\r\n").unwrap();
        assert_eq!(fs::read_dir(&spool.tmp).unwrap().count(), 1);
        drop(writer);
        assert_eq!(fs::read_dir(&spool.tmp).unwrap().count(), 0);
        let mut writer = spool.create_message(&envelope()).unwrap();
        writer.write(b"Subject: x\r\n\r\n").unwrap();
        let id = writer.commit(b"body\r\n").unwrap();
        assert_eq!(fs::read_dir(&spool.tmp).unwrap().count(), 0);
        let loaded = spool.load(&id).unwrap();
        assert_eq!(
            loaded.body.read_to_vec().unwrap(),
            b"Subject: x\r\n\r\nbody\r\n"
        );
    }
}
