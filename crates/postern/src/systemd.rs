//! Readiness notification for systemd (`Type=notify`, the sd_notify
//! protocol): one datagram per state change to the unix socket named by
//! `NOTIFY_SOCKET`. `READY=1` once every listener is bound, `RELOADING=1`
//! then `READY=1` around a reload (SIGHUP), `STOPPING=1` when shutting
//! down. Without `NOTIFY_SOCKET` (not started by systemd) nothing is sent.
//!
//! The protocol is a plain datagram write, so no crate: see sd_notify(3).
//! A failed notification is logged and never stops the gateway.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context as _, Result};

/// Where systemd listens, from `NOTIFY_SOCKET`.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// A send failure is logged once, not at every state change.
    warned: AtomicBool,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` asks for; a value that cannot be used
    /// is logged and ignored (the gateway runs, systemd times out waiting).
    pub fn from_env() -> Self {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
            return Self::none();
        };
        match Self::to(&value.to_string_lossy()) {
            Ok(notifier) => notifier,
            Err(e) => {
                tracing::warn!("NOTIFY_SOCKET: {e:#}; systemd will not hear that we are ready");
                Self::none()
            }
        }
    }

    /// A notifier for `socket`: an absolute path, or `@name` for a socket
    /// in the abstract namespace.
    pub fn to(socket: &str) -> Result<Self> {
        let address = if let Some(name) = socket.strip_prefix('@') {
            SocketAddr::from_abstract_name(name.as_bytes())
        } else if socket.starts_with('/') {
            SocketAddr::from_pathname(socket)
        } else {
            bail!("\"{socket}\" is neither an absolute path nor an @abstract name");
        }
        .with_context(|| format!("\"{socket}\" is not a usable socket address"))?;
        let datagram = UnixDatagram::unbound().context("creating a unix datagram socket")?;
        Ok(Self {
            target: Some((datagram, address)),
            warned: AtomicBool::new(false),
        })
    }

    fn none() -> Self {
        Self {
            target: None,
            warned: AtomicBool::new(false),
        }
    }

    /// Every listener is bound and mail is accepted.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// A reload starts; [`Self::ready`] says it ended. systemd wants the
    /// monotonic clock with it to tell this reload from an earlier one.
    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nSTATUS=Reloading settings and certificates\nMONOTONIC_USEC={}",
            monotonic_usec()
        ));
    }

    /// Shutting down: no new connections, sessions finishing.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=Shutting down");
    }

    fn send(&self, state: &str) {
        let Some((datagram, address)) = &self.target else {
            return;
        };
        if let Err(e) = datagram.send_to_addr(state.as_bytes(), address) {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!("notifying systemd ({}) failed: {e}", first_line(state));
            }
        }
    }
}

fn first_line(state: &str) -> &str {
    state.lines().next().unwrap_or(state)
}

fn monotonic_usec() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    match clock_gettime(ClockId::CLOCK_MONOTONIC) {
        Ok(now) => {
            let secs = u64::try_from(now.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(now.tv_nsec()).unwrap_or(0);
            secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
        }
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn states_reach_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("postern-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("notify");
        let systemd = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier::to(path.to_str().expect("utf-8")).expect("notifier");

        notifier.ready("Accepting mail");
        assert_eq!(receive(&systemd), "READY=1\nSTATUS=Accepting mail");
        notifier.reloading();
        let reloading = receive(&systemd);
        assert!(reloading.starts_with("RELOADING=1\n"), "{reloading}");
        let usec = reloading
            .lines()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .expect("MONOTONIC_USEC");
        assert!(usec.parse::<u64>().expect("a number") > 0);
        notifier.stopping();
        assert!(receive(&systemd).starts_with("STOPPING=1\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn abstract_socket() {
        let name = format!("postern-notify-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("address");
        let systemd = UnixDatagram::bind_addr(&address).expect("bind");
        Notifier::to(&format!("@{name}"))
            .expect("notifier")
            .stopping();
        assert!(receive(&systemd).starts_with("STOPPING=1"));
    }

    #[test]
    fn unusable_values_are_refused() {
        for bad in ["", "relative/notify", "notify"] {
            let error = Notifier::to(bad).err().expect("refused");
            assert!(
                error.to_string().contains("absolute path"),
                "{bad}: {error}"
            );
        }
    }
}
