//! Connection limits: in total and per client address.
//!
//! * `mta.max_connections` caps every connection. Clients outside
//!   `smtp.trusted_networks` may take only the cap minus a reserve
//!   ([`trusted_reserve`]: 10%, at least 1), so a flood from the internet
//!   cannot lock the internal servers out; trusted clients may use the
//!   whole cap.
//! * `mta.max_connections_per_client` caps one address, except for
//!   clients in `mta.limit_exempt_networks` (they still count towards the
//!   total).
//!
//! A slot is given back when its session ends — before the final reply
//! (`221`) is written — so a client that reconnects right after `221` never
//! finds its own previous connection still counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct ConnectionLimits {
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: u32,
    per_client: HashMap<IpAddr, u32>,
}

/// Who is asking for a slot, and the limits that apply.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub ip: IpAddr,
    pub max_total: u32,
    pub max_per_client: u32,
    /// In `smtp.trusted_networks`: may use the reserved share.
    pub trusted: bool,
    /// In `mta.limit_exempt_networks`: no per-client limit.
    pub per_client_exempt: bool,
}

/// Holds one connection slot; gives it back on [`ConnectionSlot::release`]
/// or when dropped, whichever comes first.
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
    released: AtomicBool,
}

/// The share of `mta.max_connections` only trusted clients may use: 10%,
/// at least 1 (none when the cap is 1, so that one connection stays usable).
pub fn trusted_reserve(max_total: u32) -> u32 {
    if max_total < 2 {
        0
    } else {
        (max_total / 10).max(1)
    }
}

impl ConnectionLimits {
    /// Take a slot, or say which limit was hit.
    pub fn try_acquire(self: &Arc<Self>, request: Request) -> Result<ConnectionSlot, &'static str> {
        let mut counts = self
            .counts
            .lock()
            .map_err(|_| "connection limits unavailable")?;
        if counts.total >= request.max_total {
            return Err("too many connections (mta.max_connections)");
        }
        if !request.trusted
            && counts.total >= request.max_total - trusted_reserve(request.max_total)
        {
            return Err(
                "too many connections from untrusted clients (the rest of mta.max_connections \
                 is reserved for smtp.trusted_networks)",
            );
        }
        let ip = request.ip;
        let per_client = counts.per_client.entry(ip).or_insert(0);
        if !request.per_client_exempt && *per_client >= request.max_per_client {
            return Err("too many connections from this address (mta.max_connections_per_client)");
        }
        *per_client += 1;
        counts.total += 1;
        Ok(ConnectionSlot {
            limits: Arc::clone(self),
            ip,
            released: AtomicBool::new(false),
        })
    }

    pub fn active(&self) -> u32 {
        self.counts.lock().map_or(0, |c| c.total)
    }
}

impl ConnectionSlot {
    /// Give the slot back now (the session has ended); later calls and the
    /// drop do nothing.
    pub fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Ok(mut counts) = self.limits.counts.lock() {
            counts.total = counts.total.saturating_sub(1);
            if let Some(n) = counts.per_client.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.per_client.remove(&self.ip);
                }
            }
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(ip: IpAddr, max_total: u32, max_per_client: u32) -> Request {
        Request {
            ip,
            max_total,
            max_per_client,
            trusted: true,
            per_client_exempt: false,
        }
    }

    #[test]
    fn limits_total_and_per_client() {
        let limits = Arc::new(ConnectionLimits::default());
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let first = limits.try_acquire(request(a, 3, 2)).expect("first");
        let _second = limits.try_acquire(request(a, 3, 2)).expect("second");
        assert!(limits.try_acquire(request(a, 3, 2)).is_err());
        let _third = limits.try_acquire(request(b, 3, 2)).expect("other client");
        assert!(limits.try_acquire(request(b, 3, 2)).is_err(), "total limit");
        drop(first);
        assert_eq!(limits.active(), 2);
        limits
            .try_acquire(request(a, 3, 2))
            .expect("slot given back");
    }

    #[test]
    fn release_gives_back_once() {
        let limits = Arc::new(ConnectionLimits::default());
        let a: IpAddr = [192, 0, 2, 1].into();
        let slot = limits.try_acquire(request(a, 3, 1)).expect("first");
        assert!(limits.try_acquire(request(a, 3, 1)).is_err());
        slot.release();
        assert_eq!(limits.active(), 0);
        let _again = limits.try_acquire(request(a, 3, 1)).expect("released");
        slot.release();
        drop(slot);
        assert_eq!(limits.active(), 1, "released twice");
    }

    #[test]
    fn exempt_clients_skip_the_per_client_limit_only() {
        let limits = Arc::new(ConnectionLimits::default());
        let a: IpAddr = [10, 0, 0, 1].into();
        let exempt = Request {
            per_client_exempt: true,
            ..request(a, 4, 2)
        };
        let held: Vec<_> = (0..4)
            .map(|_| limits.try_acquire(exempt).expect("exempt"))
            .collect();
        assert!(limits.try_acquire(exempt).is_err(), "total still applies");
        drop(held);
        let _one = limits.try_acquire(request(a, 4, 1)).expect("one");
        assert!(limits.try_acquire(request(a, 4, 1)).is_err());
    }

    #[test]
    fn untrusted_clients_leave_the_reserve() {
        assert_eq!(trusted_reserve(1), 0);
        assert_eq!(trusted_reserve(2), 1);
        assert_eq!(trusted_reserve(19), 1);
        assert_eq!(trusted_reserve(1000), 100);
        let limits = Arc::new(ConnectionLimits::default());
        let untrusted = |i: u8| Request {
            trusted: false,
            ..request([203, 0, 113, i].into(), 10, 50)
        };
        let held: Vec<_> = (0..9)
            .map(|i| limits.try_acquire(untrusted(i)).expect("untrusted share"))
            .collect();
        assert!(limits.try_acquire(untrusted(99)).is_err(), "reserve kept");
        let inside: IpAddr = [10, 0, 0, 1].into();
        let _trusted = limits
            .try_acquire(request(inside, 10, 50))
            .expect("trusted uses the reserve");
        assert!(limits.try_acquire(request(inside, 10, 50)).is_err(), "cap");
        assert_eq!(held.len(), 9);
    }
}
