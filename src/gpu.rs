//! GPU arbitration: the only owner of GPU claims.
//!
//! The default policy is the seed's: at most one `gpu_required` service holds
//! the GPU. [`Claims`] is the pure decision; [`Arbiter`] makes each decision
//! atomically (a short critical section, never held across an `.await`), so
//! concurrent start requests can never both be granted.

use std::sync::Mutex;

use crate::runtime::{Devices, Placement};

/// Who holds the GPU. Pure data and decisions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Claims {
    holder: Option<String>,
}

/// Why a claim was refused: someone else holds the GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub holder: String,
}

impl Claims {
    /// Grant the GPU to `name` if it is free or already `name`'s.
    pub fn claim(&mut self, name: &str) -> Result<(), Held> {
        match &self.holder {
            Some(holder) if holder != name => Err(Held { holder: holder.clone() }),
            _ => {
                self.holder = Some(name.to_string());
                Ok(())
            }
        }
    }

    /// Give up `name`'s claim; a no-op for anyone else.
    pub fn release(&mut self, name: &str) {
        if self.holder.as_deref() == Some(name) {
            self.holder = None;
        }
    }

    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref()
    }
}

/// The daemon-wide arbiter shared by every service task.
#[derive(Debug, Default)]
pub struct Arbiter {
    claims: Mutex<Claims>,
    devices: Devices,
}

impl Arbiter {
    /// An arbiter placing GPU services on `devices`.
    pub fn new(devices: Devices) -> Arbiter {
        Arbiter { claims: Mutex::default(), devices }
    }

    pub fn claim(&self, name: &str) -> Result<(), Held> {
        self.lock().claim(name)
    }

    pub fn release(&self, name: &str) {
        self.lock().release(name)
    }

    pub fn holder(&self) -> Option<String> {
        self.lock().holder().map(str::to_string)
    }

    /// Where the holder runs: with one GPU service at a time, every device
    /// the daemon was given (`NANNY_GPU_DEVICES` narrows it, e.g. `0,1`).
    pub fn placement(&self) -> Placement {
        Placement { devices: self.devices.clone() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Claims> {
        // A panic while holding the lock cannot leave `Claims` half-updated.
        self.claims.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let mut c = Claims::default();
        assert_eq!(c.claim("a"), Ok(()));
        assert_eq!(c.claim("a"), Ok(()), "re-claiming is idempotent");
        assert_eq!(c.claim("b"), Err(Held { holder: "a".into() }));
        c.release("b");
        assert_eq!(c.holder(), Some("a"), "only the holder can release");
        c.release("a");
        assert_eq!(c.holder(), None);
        assert_eq!(c.claim("b"), Ok(()));
    }

    #[test]
    fn concurrent_claims_grant_exactly_one() {
        let arbiter = std::sync::Arc::new(Arbiter::default());
        let granted: Vec<bool> = (0..16)
            .map(|i| {
                let a = arbiter.clone();
                std::thread::spawn(move || a.claim(&format!("s{i}")).is_ok())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert_eq!(granted.iter().filter(|g| **g).count(), 1);
    }
}
