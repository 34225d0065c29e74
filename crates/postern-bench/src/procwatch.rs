//! CPU and memory of the MTA under test, from `/proc` (Linux only).
//!
//! The watched set is a process and every process in its process group
//! (`pgid == pid`): Postern is one process; a Postfix instance is its
//! `master` (a process-group leader) and every child it forks (smtpd,
//! cleanup, qmgr, smtp, tlsmgr, ...). No cgroups needed.
//!
//! * CPU: `utime + stime` of every live (or not yet reaped) member, plus
//!   `cutime + cstime` of every member — the children each has already
//!   reaped (Postfix's master reaps its children, so short-lived smtpd/smtp
//!   processes are counted too; Exim's daemon reaps the processes that
//!   received a message, and they their delivery processes). A reaped
//!   child is no longer a member, so nothing counts twice. Orphans reaped
//!   by init would be lost: `scripts/bench-reaper.c` (a child subreaper as
//!   the leader) keeps them. Deltas of that sum over a run.
//! * Memory: the leader's `VmHWM` after resetting it (`clear_refs` = 5) at
//!   the start of a run, and a sampled peak of the summed `VmRSS` and `Pss`
//!   of all members (the only meaningful figure for a multi-process MTA:
//!   RSS counts shared pages once per process, PSS shares them out).

use std::fs;
use std::time::Duration;

/// `/proc` reports times in USER_HZ, which is 100 on every Linux ABI.
const TICKS_PER_SEC: f64 = 100.0;

#[derive(Debug, Clone, Copy)]
pub struct Watch {
    pub leader: i32,
}

struct Stat {
    pgrp: i32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

fn read_stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
    // majflt cmajflt utime stime cutime cstime ...; comm may hold spaces.
    let rest = text.get(text.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        pgrp: f.get(2)?.parse().ok()?,
        utime: num(11)?,
        stime: num(12)?,
        cutime: num(13)?,
        cstime: num(14)?,
    })
}

impl Watch {
    pub fn new(leader: i32) -> Self {
        Self { leader }
    }

    /// The leader and every other process in its process group.
    pub fn members(&self) -> Vec<i32> {
        let mut out = vec![self.leader];
        let Ok(dir) = fs::read_dir("/proc") else {
            return out;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if pid == self.leader {
                continue;
            }
            if read_stat(pid).is_some_and(|s| s.pgrp == self.leader) {
                out.push(pid);
            }
        }
        out
    }

    /// CPU seconds used so far by the group (see the module docs).
    pub fn cpu_seconds(&self) -> f64 {
        let mut ticks = 0u64;
        for pid in self.members() {
            if let Some(s) = read_stat(pid) {
                // A reaped child's time moves into its parent's cutime/cstime;
                // it is no longer a member, so nothing is counted twice.
                ticks += s.utime + s.stime + s.cutime + s.cstime;
            }
        }
        ticks as f64 / TICKS_PER_SEC
    }

    /// Reset the peak-RSS counter of every member (needs to own them or root).
    pub fn reset_peak(&self) {
        for pid in self.members() {
            let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
    }

    pub fn alive(&self) -> bool {
        read_stat(self.leader).is_some()
    }

    /// A numeric `/proc/PID/status` field (e.g. "VmRSS", "VmHWM" in kB; "Threads").
    pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
        let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        kib_field(&text, field)
    }

    pub fn pss_kib(pid: i32) -> Option<u64> {
        let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
        kib_field(&text, "Pss")
    }

    /// Summed memory of the group right now.
    pub fn memory(&self, with_pss: bool) -> Memory {
        let mut m = Memory::default();
        for pid in self.members() {
            let Some(rss) = Self::status_kib(pid, "VmRSS") else {
                continue;
            };
            m.processes += 1;
            m.threads += Self::status_kib(pid, "Threads").unwrap_or(0);
            m.rss_kib += rss;
            if with_pss {
                m.pss_kib += Self::pss_kib(pid).unwrap_or(0);
            }
        }
        m
    }
}

fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Memory {
    pub processes: u32,
    /// Threads of all members together.
    pub threads: u64,
    pub rss_kib: u64,
    pub pss_kib: u64,
}

/// Samples the group's summed RSS/PSS until stopped; returns the peaks.
pub struct Sampler {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<Memory>,
}

impl Sampler {
    pub fn start(watch: Watch, every: Duration) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let handle = tokio::task::spawn(async move {
            let mut peak = Memory::default();
            loop {
                let m = tokio::task::spawn_blocking(move || watch.memory(true))
                    .await
                    .unwrap_or_default();
                peak.processes = peak.processes.max(m.processes);
                peak.threads = peak.threads.max(m.threads);
                peak.rss_kib = peak.rss_kib.max(m.rss_kib);
                peak.pss_kib = peak.pss_kib.max(m.pss_kib);
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => break,
                }
            }
            peak
        });
        Self { stop, handle }
    }

    pub async fn finish(self) -> Memory {
        let _ = self.stop.send(true);
        self.handle.await.unwrap_or_default()
    }
}

/// CPU time (user + system) this process has used so far, in
/// microseconds: the load generator's and the sink's own cost, so a report
/// can show where a machine's cores went besides the MTA.
pub fn own_cpu_micros() -> u64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0, |usage| {
        let micros = |t: nix::sys::time::TimeVal| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000
                + u64::try_from(t.tv_usec()).unwrap_or(0)
        };
        micros(usage.user_time()) + micros(usage.system_time())
    })
}
