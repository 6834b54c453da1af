//! Who one run of the inside agent is, and the one counter that keeps all its messages fresh.
#![forbid(unsafe_code)]

use crate::wire::{Claim, Instance, Key, Kind, Message, Shared, LEN};

/// Who one run of the inside agent is: the key, the run's random instance id and its message counter. Shared by
/// the coordinator and the tunnel threads, which all seal messages.
pub struct Identity {
    pub key: Key,
    pub instance: Instance,
    /// One counter for the whole run, so messages of every tunnel are fresh whatever the clock says, and the
    /// number of tunnels carrying a client, said in every message. A mutex, not an AtomicU64: MIPS32 has no
    /// 64-bit atomics, and a control message costs an HMAC anyway.
    run: std::sync::Mutex<Run>,
    /// This agent's settings, said in every message.
    shared: Shared,
}

#[derive(Default)]
struct Run {
    counter: u64,
    carrying: u32,
}

impl Identity {
    pub fn new(key: &[u8], instance: Instance, shared: Shared) -> Identity {
        Identity {
            key: Key::new(key),
            instance,
            run: std::sync::Mutex::new(Run::default()),
            shared,
        }
    }

    fn run(&self) -> std::sync::MutexGuard<'_, Run> {
        self.run.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many tunnels carry a client now (the coordinator keeps it current).
    pub fn set_carrying(&self, n: usize) {
        self.run().carrying = n.try_into().unwrap_or(u32::MAX);
    }

    /// Seal a fresh inside→relay message: the counter strictly increases across all tunnels of the run.
    /// Inlined (as `seal_claim`): a tunnel thread's probe seals at the bottom of its stack (tunnel.rs, `probe`).
    #[inline(always)]
    pub fn seal(&self, kind: Kind, tunnel: u32, active: bool, cookie: [u8; 8]) -> [u8; LEN] {
        self.seal_claim(kind, tunnel, &Claim::active(active), cookie)
            .1
    }

    /// Seal a fresh inside→relay message that says `claim`; its counter, and the message.
    #[inline(always)] // see `seal`
    pub fn seal_claim(
        &self,
        kind: Kind,
        tunnel: u32,
        claim: &Claim,
        cookie: [u8; 8],
    ) -> (u64, [u8; LEN]) {
        let (counter, carrying) = {
            let mut run = self.run();
            run.counter += 1;
            (run.counter, run.carrying)
        };
        let mut m = Message::new(kind, self.instance, tunnel, counter);
        m.active = claim.active;
        m.answered = claim.active && claim.answered;
        m.client = claim.client.filter(|_| claim.active);
        m.local = claim.local;
        m.cookie = cookie;
        m.shared = self.shared;
        m.carrying = carrying;
        (counter, self.key.seal(&m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_says_its_client_only_when_active() {
        let id = Identity::new(b"k", Instance([1; 16]), Shared::default());
        id.set_carrying(3);
        let claim = Claim {
            active: false,
            answered: true,
            client: Some("192.0.2.1:9".parse().unwrap()),
            local: None,
        };
        let (c1, b) = id.seal_claim(Kind::Keepalive, 1, &claim, [0; 8]);
        let m = id.key.open(&b).unwrap();
        assert_eq!(
            (m.client, m.answered, m.carrying, m.counter),
            (None, false, 3, c1)
        );
        let (c2, b) = id.seal_claim(
            Kind::Keepalive,
            1,
            &Claim {
                active: true,
                ..claim
            },
            [0; 8],
        );
        let m = id.key.open(&b).unwrap();
        assert_eq!((m.client, m.answered, c2), (claim.client, true, c1 + 1));
    }
}
