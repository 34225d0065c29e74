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

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::error::SpoolError;

/// Failed rounds remembered for waiters that have not woken yet.
const FAILED_ROUNDS_KEPT: usize = 256;

#[derive(Debug)]
pub(crate) struct GroupSync {
    path: PathBuf,
    state: Mutex<State>,
    round_done: Condvar,
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
}

impl GroupSync {
    pub(crate) fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            state: Mutex::new(State::default()),
            round_done: Condvar::new(),
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
                return match state.failed.iter().find(|f| f.0 <= ticket && ticket <= f.1) {
                    None => Ok(()),
                    Some((_, _, kind, message)) => Err(SpoolError::io(
                        "fsync directory",
                        &self.path,
                        io::Error::new(*kind, message.clone()),
                    )),
                };
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
            .and_then(|dir| dir.sync_all().map(|()| dir));
            state = self.lock();
            state.running = false;
            state.finished = last;
            let result = result.map(|dir| state.dir = Some(dir));
            if let Err(e) = result {
                state
                    .failed
                    .push_back((first, last, e.kind(), e.to_string()));
                if state.failed.len() > FAILED_ROUNDS_KEPT {
                    state.failed.pop_front();
                }
            }
            self.round_done.notify_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::sync::Arc;

    #[test]
    fn concurrent_writers_all_return_after_a_covering_round() {
        let dir = tempfile::tempdir().unwrap();
        let sync = Arc::new(GroupSync::new(dir.path()));
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let (sync, path) = (Arc::clone(&sync), dir.path().to_path_buf());
                std::thread::spawn(move || {
                    for j in 0..20 {
                        std::fs::write(path.join(format!("{i}-{j}")), b"x").unwrap();
                        sync.sync().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let state = sync.lock();
        assert_eq!(state.issued, 16 * 20);
        assert_eq!(state.finished, state.issued);
        assert!(!state.running);
    }

    #[test]
    fn a_failed_round_fails_everyone_it_covered() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let sync = GroupSync::new(&gone);
        let err = sync.sync().unwrap_err();
        assert!(err.to_string().contains("fsync directory"), "{err}");
        assert!(
            sync.lock().dir.is_none(),
            "a failed round keeps no directory"
        );
        std::fs::create_dir(&gone).unwrap();
        sync.sync().unwrap();
    }

    #[test]
    fn rounds_share_one_open_directory() {
        let dir = tempfile::tempdir().unwrap();
        let sync = GroupSync::new(dir.path());
        sync.sync().unwrap();
        let first = sync.lock().dir.as_ref().map(|f| f.as_raw_fd());
        assert!(first.is_some(), "the first round keeps the directory open");
        sync.sync().unwrap();
        assert_eq!(sync.lock().dir.as_ref().map(|f| f.as_raw_fd()), first);
    }
}
