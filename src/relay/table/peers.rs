//! The table's address index: what each source address is (a tunnel, a client, held), and, for a relay of
//! several homes, a journal of the addresses whose entry changed. The relay keeps its own index of which home
//! knows which address (homes.rs) exact by reading the journal after each event; the data path changes no
//! entry, so it costs that path nothing.

use super::Peer;
use std::collections::HashMap;
use std::net::SocketAddr;

#[derive(Default)]
pub(super) struct Peers {
    map: HashMap<SocketAddr, Peer>,
    /// Addresses inserted or removed since the last [`Peers::take_changed`]; None: not kept (one home).
    changed: Option<Vec<SocketAddr>>,
}

impl Peers {
    #[inline]
    pub(super) fn get(&self, addr: &SocketAddr) -> Option<&Peer> {
        self.map.get(addr)
    }

    pub(super) fn contains_key(&self, addr: &SocketAddr) -> bool {
        self.map.contains_key(addr)
    }

    pub(super) fn insert(&mut self, addr: SocketAddr, peer: Peer) {
        if self.map.insert(addr, peer).is_none() {
            self.note(addr);
        }
    }

    pub(super) fn remove(&mut self, addr: &SocketAddr) -> Option<Peer> {
        let p = self.map.remove(addr)?;
        self.note(*addr);
        Some(p)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&SocketAddr, &Peer)> {
        self.map.iter()
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &SocketAddr> {
        self.map.keys()
    }

    fn note(&mut self, addr: SocketAddr) {
        if let Some(c) = self.changed.as_mut() {
            c.push(addr);
        }
    }

    pub(super) fn keep_changes(&mut self) {
        self.changed.get_or_insert_with(Vec::new);
    }

    pub(super) fn take_changed(&mut self) -> Vec<SocketAddr> {
        self.changed
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }
}
