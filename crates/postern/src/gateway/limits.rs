//! Connection limits: in total and per client address.

use std::collections::HashMap;
use std::net::IpAddr;
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

/// Holds one connection slot; gives it back when dropped.
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    /// Take a slot, or say which limit was hit.
    pub fn try_acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: u32,
        max_per_client: u32,
    ) -> Result<ConnectionSlot, &'static str> {
        let mut counts = self
            .counts
            .lock()
            .map_err(|_| "connection limits unavailable")?;
        if counts.total >= max_total {
            return Err("too many connections (mta.max_connections)");
        }
        let per_client = counts.per_client.entry(ip).or_insert(0);
        if *per_client >= max_per_client {
            return Err("too many connections from this address (mta.max_connections_per_client)");
        }
        *per_client += 1;
        counts.total += 1;
        Ok(ConnectionSlot {
            limits: Arc::clone(self),
            ip,
        })
    }

    pub fn active(&self) -> u32 {
        self.counts.lock().map_or(0, |c| c.total)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_total_and_per_client() {
        let limits = Arc::new(ConnectionLimits::default());
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let first = limits.try_acquire(a, 3, 2).expect("first");
        let _second = limits.try_acquire(a, 3, 2).expect("second");
        assert!(limits.try_acquire(a, 3, 2).is_err());
        let _third = limits.try_acquire(b, 3, 2).expect("other client");
        assert!(limits.try_acquire(b, 3, 2).is_err(), "total limit");
        drop(first);
        assert_eq!(limits.active(), 2);
        limits.try_acquire(a, 3, 2).expect("slot given back");
    }
}
