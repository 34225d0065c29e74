//! Group commit for a directory's fsync.
//!
//! Every message and state file is renamed into `queue/`, and the rename is
//! durable only once `queue/` is fsync'd. With many connections storing at
//! once, each paying its own directory fsync serialises them on the disk's
//! journal. Here, a writer that finds a directory fsync already running
//! waits for it to end and then shares the next one with everybody who
//! arrived meanwhile: one fsync covers a whole group of renames.
//!
//! The rule that keeps it correct: a writer's ticket is taken after its
//! rename, and a round covers exactly the tickets taken before the round's
//! fsync started. A writer returns only when a round that covers its ticket
//! has finished — successfully, or with that round's error.
//!
//! With [`SyncMode::Filesystem`] a round is `syncfs(2)` instead of the
//! directory's fsync: it also writes the files' data, so writers skip their
//! own fdatasync and one journal commit serves the whole group.
//!
//! A change that need not be durable before its caller goes on (a delivered
//! message's removal) takes a ticket with [`GroupSync::sync_soon`] instead
//! and does not wait: the next round covers it, whoever leads that round.
//! So that "next" is never far off when nobody stores, the flusher thread
//! ([`GroupSync::start_flusher`]) leads a round itself once such a ticket
//! has waited [`FLUSH_DELAY`] uncovered.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::SpoolError;
use crate::sync_mode::SyncMode;

/// Failed rounds remembered for waiters that have not woken yet.
const FAILED_ROUNDS_KEPT: usize = 256;

/// How long a [`GroupSync::sync_soon`] ticket waits for somebody else's
/// round before the flusher leads one: the longest a delivered message's
/// removal stays undone by a machine crash (the message would be delivered
/// again, never lost), beyond the round's own fsync.
pub(crate) const FLUSH_DELAY: Duration = Duration::from_millis(20);

#[derive(Debug)]
pub(crate) struct GroupSync {
    path: PathBuf,
    /// A round is `syncfs(2)` of the directory's file system: it makes the
    /// writers' file data durable too ([`SyncMode::Filesystem`]).
    whole_filesystem: bool,
    state: Mutex<State>,
    round_done: Condvar,
    /// Wakes the flusher: a first uncovered `sync_soon` ticket, or closing.
    flusher_wake: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// The last ticket handed out.
    issued: u64,
    /// Every ticket up to this one is covered by a finished round.
    finished: u64,
    running: bool,
    /// `(first, last, error)` of rounds whose fsync failed.
    failed: VecDeque<(u64, u64, io::ErrorKind, String)>,
    /// The directory, opened by the first round and kept: a round is then
    /// one `fsync`, not `open`, `fsync` and `close`. Dropped after a failed
    /// round, so the next one opens the directory afresh.
    dir: Option<File>,
    /// The last ticket taken by `sync_soon` (0: none yet).
    soon: u64,
    /// Every failed round ending at or before this ticket has been
    /// forgotten (see `FAILED_ROUNDS_KEPT`): their outcome is unknown.
    forgotten_through: u64,
    /// The flusher waits for work: `sync_soon` must wake it.
    flusher_idle: bool,
    /// The flusher should lead its last round and stop.
    closing: bool,
}

impl GroupSync {
    pub(crate) fn new(path: &Path, mode: SyncMode) -> Self {
        Self {
            path: path.to_path_buf(),
            whole_filesystem: mode == SyncMode::Filesystem,
            state: Mutex::new(State::default()),
            round_done: Condvar::new(),
            flusher_wake: Condvar::new(),
        }
    }

    /// Whether a round also makes durable what was written to files
    /// before the ticket (so writers need not fsync their files).
    pub(crate) fn covers_file_data(&self) -> bool {
        self.whole_filesystem
    }

    /// Take a ticket for the entry changes made in the directory before
    /// this call, without waiting: a later round makes them durable (see
    /// [`GroupSync::outcome`]). Needs a running flusher to be bounded.
    pub(crate) fn sync_soon(&self) -> u64 {
        let mut state = self.lock();
        state.issued += 1;
        state.soon = state.issued;
        if state.flusher_idle {
            state.flusher_idle = false;
            self.flusher_wake.notify_one();
        }
        state.soon
    }

    /// Whether the changes before `ticket` are durable: `None` while no
    /// round has covered it yet, `Some(false)` when the round that did
    /// failed (or its outcome is forgotten).
    pub(crate) fn outcome(&self, ticket: u64) -> Option<bool> {
        let state = self.lock();
        (state.finished >= ticket).then(|| self.result(&state, ticket).is_ok())
    }

    /// The outcome of the finished round that covered `ticket`.
    fn result(&self, state: &State, ticket: u64) -> Result<(), SpoolError> {
        let error = match state.failed.iter().find(|f| f.0 <= ticket && ticket <= f.1) {
            Some((_, _, kind, message)) => io::Error::new(*kind, message.clone()),
            None if ticket <= state.forgotten_through => {
                io::Error::other("a round failed (its error is no longer known)")
            }
            None => return Ok(()),
        };
        let call = if self.whole_filesystem {
            "syncfs the file system of"
        } else {
            "fsync directory"
        };
        Err(SpoolError::io(call, &self.path, error))
    }

    /// Start the flusher thread; it stops (after a last round for what
    /// `sync_soon` left uncovered) when the returned handle is dropped.
    pub(crate) fn start_flusher(self: &Arc<Self>) -> io::Result<Flusher> {
        let sync = Arc::clone(self);
        let thread = std::thread::Builder::new()
            .name("spool-flush".into())
            .spawn(move || sync.flush_loop())?;
        Ok(Flusher {
            sync: Arc::clone(self),
            thread: Some(thread),
        })
    }

    fn flush_loop(&self) {
        let mut state = self.lock();
        loop {
            if state.soon > state.finished {
                let target = state.soon;
                if !state.closing {
                    // Give a store's round the chance to cover it first.
                    state = self
                        .flusher_wake
                        .wait_timeout(state, FLUSH_DELAY)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0;
                }
                if state.finished < target {
                    drop(state);
                    // A failure is the round's: `outcome` reports it.
                    let _ = self.sync();
                    state = self.lock();
                }
                continue;
            }
            if state.closing {
                return;
            }
            state.flusher_idle = true;
            state = self
                .flusher_wake
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state.flusher_idle = false;
        }
    }

    /// Make every entry change made in the directory before this call
    /// durable. Blocks until a directory fsync that started after this call
    /// began has finished.
    pub(crate) fn sync(&self) -> Result<(), SpoolError> {
        let mut state = self.lock();
        state.issued += 1;
        let ticket = state.issued;
        loop {
            if state.finished >= ticket {
                return self.result(&state, ticket);
            }
            if state.running {
                state = self
                    .round_done
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            }
            // Lead a round for everybody who holds a ticket now.
            state.running = true;
            let first = state.finished + 1;
            let last = state.issued;
            let dir = state.dir.take();
            drop(state);
            let result = match dir {
                Some(dir) => Ok(dir),
                None => File::open(&self.path),
            }
            .and_then(|dir| self.flush(&dir).map(|()| dir));
            state = self.lock();
            state.running = false;
            state.finished = last;
            let result = result.map(|dir| state.dir = Some(dir));
            if let Err(e) = result {
                state
                    .failed
                    .push_back((first, last, e.kind(), e.to_string()));
                if state.failed.len() > FAILED_ROUNDS_KEPT {
                    if let Some((_, last, _, _)) = state.failed.pop_front() {
                        state.forgotten_through = last;
                    }
                }
            }
            self.round_done.notify_all();
        }
    }

    /// One round's flush: the directory, or its whole file system.
    fn flush(&self, dir: &File) -> io::Result<()> {
        if self.whole_filesystem {
            rustix::fs::syncfs(dir).map_err(io::Error::from)
        } else {
            dir.sync_all()
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The running flusher thread of a [`GroupSync`]; dropping it stops the
/// thread after its last round.
#[derive(Debug)]
pub(crate) struct Flusher {
    sync: Arc<GroupSync>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.sync.lock().closing = true;
        self.sync.flusher_wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::sync::Arc;

    /// `writers` threads each write `each` files into the directory, each
    /// followed by `sync`; every sync must succeed.
    fn concurrent_writers(mode: SyncMode, writers: usize, each: usize) -> State {
        let dir = tempfile::tempdir().unwrap();
        let sync = Arc::new(GroupSync::new(dir.path(), mode));
        let threads: Vec<_> = (0..writers)
            .map(|i| {
                let (sync, path) = (Arc::clone(&sync), dir.path().to_path_buf());
                std::thread::spawn(move || {
                    for j in 0..each {
                        std::fs::write(path.join(format!("{i}-{j}")), b"x").unwrap();
                        sync.sync().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut state = sync.lock();
        std::mem::take(&mut *state)
    }

    #[test]
    fn concurrent_writers_all_return_after_a_covering_round() {
        let state = concurrent_writers(SyncMode::File, 16, 20);
        assert_eq!(state.issued, 16 * 20);
        assert_eq!(state.finished, state.issued);
        assert!(!state.running);
    }

    #[test]
    fn whole_filesystem_rounds_cover_concurrent_writers_and_their_data() {
        let dir = tempfile::tempdir().unwrap();
        assert!(GroupSync::new(dir.path(), SyncMode::Filesystem).covers_file_data());
        assert!(!GroupSync::new(dir.path(), SyncMode::File).covers_file_data());
        let state = concurrent_writers(SyncMode::Filesystem, 8, 10);
        assert_eq!(state.finished, 8 * 10);
        assert!(state.failed.is_empty());
    }

    #[test]
    fn a_failed_round_fails_everyone_it_covered() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let sync = GroupSync::new(&gone, SyncMode::File);
        let err = sync.sync().unwrap_err();
        assert!(err.to_string().contains("fsync directory"), "{err}");
        assert!(
            sync.lock().dir.is_none(),
            "a failed round keeps no directory"
        );
        std::fs::create_dir(&gone).unwrap();
        sync.sync().unwrap();
        let whole = GroupSync::new(&dir.path().join("also-gone"), SyncMode::Filesystem);
        let err = whole.sync().unwrap_err();
        assert!(
            err.to_string().contains("syncfs the file system of"),
            "{err}"
        );
    }

    #[test]
    fn a_soon_ticket_is_covered_by_the_next_round_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let sync = GroupSync::new(dir.path(), SyncMode::File);
        let ticket = sync.sync_soon();
        assert_eq!(sync.outcome(ticket), None, "no round has run yet");
        sync.sync().unwrap();
        assert_eq!(sync.outcome(ticket), Some(true));
        // A ticket taken after a round started is not covered by it.
        let later = sync.sync_soon();
        assert_eq!(sync.outcome(later), None);
    }

    #[test]
    fn the_flusher_covers_a_soon_ticket_when_nobody_else_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let sync = Arc::new(GroupSync::new(dir.path(), SyncMode::File));
        let _flusher = sync.start_flusher().unwrap();
        for _ in 0..3 {
            let ticket = sync.sync_soon();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while sync.outcome(ticket).is_none() {
                assert!(std::time::Instant::now() < deadline, "never flushed");
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(sync.outcome(ticket), Some(true));
        }
    }

    #[test]
    fn stopping_the_flusher_leads_a_last_round() {
        let dir = tempfile::tempdir().unwrap();
        let sync = Arc::new(GroupSync::new(dir.path(), SyncMode::File));
        let flusher = sync.start_flusher().unwrap();
        // Let the flusher go idle first, so the ticket has to wake it.
        std::thread::sleep(Duration::from_millis(50));
        let ticket = sync.sync_soon();
        drop(flusher);
        assert_eq!(sync.outcome(ticket), Some(true));
    }

    #[test]
    fn a_soon_ticket_of_a_failed_round_is_not_durable() {
        let dir = tempfile::tempdir().unwrap();
        let sync = GroupSync::new(&dir.path().join("gone"), SyncMode::File);
        let ticket = sync.sync_soon();
        assert!(sync.sync().is_err());
        assert_eq!(sync.outcome(ticket), Some(false));
    }

    #[test]
    fn a_failed_round_stays_failed_after_its_record_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let sync = GroupSync::new(&dir.path().join("gone"), SyncMode::File);
        let ticket = sync.sync_soon();
        for _ in 0..=FAILED_ROUNDS_KEPT {
            assert!(sync.sync().is_err());
        }
        assert_eq!(sync.lock().failed.len(), FAILED_ROUNDS_KEPT);
        assert_eq!(sync.outcome(ticket), Some(false));
    }

    #[test]
    fn rounds_share_one_open_directory() {
        let dir = tempfile::tempdir().unwrap();
        let sync = GroupSync::new(dir.path(), SyncMode::File);
        sync.sync().unwrap();
        let first = sync.lock().dir.as_ref().map(|f| f.as_raw_fd());
        assert!(first.is_some(), "the first round keeps the directory open");
        sync.sync().unwrap();
        assert_eq!(sync.lock().dir.as_ref().map(|f| f.as_raw_fd()), first);
    }
}
