//! Sources a full relay turned away, or whose unproven tunnel it handed to a newcomer: they wait behind newcomers.
//! A bounded set; when it is full the longest-known source is forgotten (and so counts as a newcomer again).

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;

/// How many sources are remembered: 4096 × about 100 bytes. A flood from more addresses than this (spoofed, or a
/// botnet) makes some of them look like newcomers again; docs/PROTOCOL.md says what that costs.
pub const STRANGERS_KEPT: usize = 4096;

#[derive(Default)]
pub struct Strangers {
    set: HashSet<SocketAddr>,
    order: VecDeque<SocketAddr>,
}

impl Strangers {
    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.set.contains(addr)
    }

    pub fn insert(&mut self, addr: SocketAddr) {
        if !self.set.insert(addr) {
            return;
        }
        self.order.push_back(addr);
        if self.order.len() > STRANGERS_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.set.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_oldest_forgotten_first() {
        let mut s = Strangers::default();
        let a = |i: usize| SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 1));
        for i in 0..STRANGERS_KEPT + 10 {
            s.insert(a(i));
            s.insert(a(i));
        }
        assert_eq!(s.len(), STRANGERS_KEPT);
        assert!(!s.contains(&a(9)));
        assert!(s.contains(&a(10)));
        assert!(s.contains(&a(STRANGERS_KEPT + 9)));
    }
}
