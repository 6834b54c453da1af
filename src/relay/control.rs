//! The inside agent's control messages at the relay: keepalives refresh a tunnel or are challenged, a response
//! that answers the challenge registers a spare, restores a tunnel with its client, or moves a tunnel that
//! roamed; closes and drops end tunnels. Every message is authenticated and fresh before it changes anything.
//! The same `impl Relay` as mod.rs, by concern.

use super::{say, Home, Transmit, DISPLACED};
use crate::addr;
use crate::relay::table::{Restored, Slot, TunnelKey};
use crate::wire::{self, Key, Kind, Message, Shared};
use std::net::SocketAddr;
use std::time::Instant;

impl Home {
    /// A control-shaped datagram. `elsewhere`: whether another home behind the same port knows an address (a
    /// client's, a tunnel's): no message of this home's agent takes such an address unless a tunnel proves itself
    /// there by the challenge (then homes.rs frees it in the other home).
    pub(super) fn on_control(
        &mut self,
        now: Instant,
        src: SocketAddr,
        data: &[u8],
        out: &mut Vec<Transmit>,
        elsewhere: &dyn Fn(&SocketAddr) -> bool,
    ) {
        let msg = match self.key.open(data) {
            Ok(msg) => msg,
            Err(wire::Error::BadMac) => return self.on_badauth(now, src, out),
            Err(wire::Error::Version(v)) => {
                self.drops.badauth.incr();
                if self.said.version.first() {
                    say!(
                self.tag,
                warn,
                        "control message of protocol version {v} from {}: this relay speaks version {}; \
                         run the same release on both sides",
                        addr::shown(src),
                        wire::VERSION
                    );
                }
                return;
            }
            Err(e) => {
                say!(
                    self.tag,
                    debug,
                    "ignored control-shaped datagram from {}: {e}",
                    addr::shown(src)
                );
                return;
            }
        };
        if self.run.retired.contains(&msg.instance) {
            say!(
                self.tag,
                debug,
                "ignored message of replaced inside run {} from {}",
                msg.instance,
                addr::shown(src)
            );
            return;
        }
        match msg.kind {
            Kind::Keepalive => self.on_keepalive(now, src, &msg, out, elsewhere),
            Kind::Response => self.on_response(now, src, &msg, out, elsewhere),
            Kind::Close => self.on_close(now, &msg),
            // Relay-to-inside kinds sent back at us: nothing to do.
            _ => say!(
                self.tag,
                debug,
                "ignored {:?} from {}",
                msg.kind,
                addr::shown(src)
            ),
        }
    }

    fn on_badauth(&mut self, now: Instant, src: SocketAddr, out: &mut Vec<Transmit>) {
        // While the inside agent's messages verify, the key is not the problem: this is a stranger's datagram.
        let working = self
            .run
            .heard
            .is_some_and(|t| now.saturating_duration_since(t) < 2 * self.settings.keepalive);
        if working {
            self.admissions.forged += 1;
            return;
        }
        self.drops.badauth.incr();
        if self.said.badauth.first() {
            say!(
                self.tag,
                warn,
                "control message from {} failed authentication: the inside agent's key differs from ours (-k)",
                addr::shown(src)
            );
        }
        // Tell the sender, at most once a second in all, with as many bytes as it sent: its log then says why.
        if self.authfail_notice.due(now) {
            out.push(Transmit {
                to: src,
                data: Key::authfail_notice().to_vec(),
            });
        }
    }

    /// Seal and send a message, saying our settings in it.
    fn reply(&self, to: SocketAddr, msg: &Message, out: &mut Vec<Transmit>) {
        let mut msg = *msg;
        msg.shared = Shared {
            keepalive: self
                .settings
                .keepalive
                .as_secs()
                .try_into()
                .unwrap_or(u32::MAX),
            max_tunnels: self.settings.max_tunnels.try_into().unwrap_or(u32::MAX),
        };
        out.push(Transmit {
            to,
            data: self.key.seal(&msg).to_vec(),
        });
    }

    /// The inside agent's settings and its count of tunnels with clients, from a fresh authenticated message
    /// (see [`InsideRun::note_settings`]).
    fn note_settings(&mut self, now: Instant, msg: &Message) {
        self.run
            .note_settings(now, msg, &self.settings, self.table.active());
    }

    fn on_keepalive(
        &mut self,
        now: Instant,
        src: SocketAddr,
        msg: &Message,
        out: &mut Vec<Transmit>,
        elsewhere: &dyn Fn(&SocketAddr) -> bool,
    ) {
        let Some((t, tun)) = self.table.find_tunnel(&TunnelKey::of(msg)) else {
            // Unknown tunnel: challenge it, and remember nothing until the answer proves it.
            return self.challenge(now, src, msg, out);
        };
        if msg.counter <= tun.counter {
            say!(
                self.tag,
                debug,
                "stale or repeated keepalive of tunnel {} from {}",
                msg.tunnel,
                addr::shown(src)
            );
            return;
        }
        if tun.addr == src {
            self.note_settings(now, msg);
            self.table
                .refresh(t, msg.counter, self.settings.keepalive_of(&msg.shared), now);
            self.table.set_local(t, msg.local);
            return self.ack(src, msg, t, out);
        }
        // A known tunnel at a new address: its NAT mapping changed, or someone replays its keepalive. Hold the
        // address's data until the challenge is answered, so the tunnel is never taken for a new client. (Not an
        // address of another home's: a replayed keepalive must not hold that home's traffic.)
        if !elsewhere(&src) {
            self.table.expect_roam(src, now);
        }
        self.challenge(now, src, msg, out);
    }

    fn challenge(&self, now: Instant, src: SocketAddr, msg: &Message, out: &mut Vec<Transmit>) {
        let mut c = msg.reply(Kind::Challenge);
        c.cookie = self.cookies.issue(now, src, msg);
        self.reply(src, &c, out);
    }

    fn on_response(
        &mut self,
        now: Instant,
        src: SocketAddr,
        msg: &Message,
        out: &mut Vec<Transmit>,
        elsewhere: &dyn Fn(&SocketAddr) -> bool,
    ) {
        if !self.cookies.check(now, src, msg) {
            say!(
                self.tag,
                debug,
                "response with a stale or foreign cookie from {}",
                addr::shown(src)
            );
            return;
        }
        // The key works again (or at last): a later mismatch is news worth a line.
        self.said.badauth.rearm();
        self.run.adopt_instance(msg.instance, src, &mut self.table);
        match self.table.find_tunnel(&TunnelKey::of(msg)) {
            Some((t, tun)) => {
                if msg.counter <= tun.counter {
                    return;
                }
                if tun.addr != src && !self.roam(now, t, src, out) {
                    return;
                }
                self.note_settings(now, msg);
                self.table
                    .refresh(t, msg.counter, self.settings.keepalive_of(&msg.shared), now);
                self.table.set_local(t, msg.local);
                self.ack(src, msg, t, out);
            }
            None if msg.active => self.restore(now, src, msg, out, elsewhere),
            None => self.register_spare(now, src, msg, out),
        }
    }

    /// A verified response of a tunnel unknown here that says it carries a client: this relay restarted, or
    /// forgot the tunnel while its line was down. Restore the tunnel with the client the inside agent was told,
    /// so the client's datagrams take the same tunnel and the service sees the same source; unless the client
    /// meanwhile has another tunnel, the inside says no client, or it would exceed -n: then drop it.
    fn restore(
        &mut self,
        now: Instant,
        src: SocketAddr,
        msg: &Message,
        out: &mut Vec<Transmit>,
        elsewhere: &dyn Fn(&SocketAddr) -> bool,
    ) {
        let key = TunnelKey::of(msg);
        if !self.table.may_register(&key, msg.counter) {
            say!(
                self.tag,
                debug,
                "replayed response of removed or refused tunnel {} from {}: ignored",
                msg.tunnel,
                addr::shown(src)
            );
            return;
        }
        self.note_settings(now, msg);
        // The client as this socket reports it (IPv4-mapped on a dual-stack socket, as the tunnel's own source).
        let client = msg.client.map(|c| addr::as_seen_by(src.is_ipv6(), c));
        let waiting_here = client.is_some_and(|c| self.table.is_waiting(&c));
        let busy = self.table.busy() - usize::from(waiting_here);
        let refused = match client {
            None => Err("it had a client before this relay knew it, and does not say which"),
            Some(c) if c.is_ipv6() != src.is_ipv6() => {
                Err("its client's address family is not this socket's")
            }
            Some(c) if elsewhere(&c) => Err("its client's address is another home's"),
            Some(_) if busy >= self.limit() => Err("all tunnels are in use"),
            Some(c) => self.table.restore(
                key,
                src,
                c,
                msg.counter,
                self.settings.keepalive_of(&msg.shared),
                msg.answered,
                now,
            ),
        };
        let Restored {
            tunnel: t,
            displaced,
            held,
        } = match refused {
            Ok(r) => r,
            Err(why) => {
                say!(
                self.tag,
                info,
                    "tunnel {} from {} carried client {}: {why}; asking the inside agent to close it",
                    msg.tunnel,
                    addr::shown(src),
                    client.map_or("?".to_string(), |c| addr::shown(c).to_string())
                );
                // Like a drop: a late copy of this response must not restore it later.
                self.table.refuse_for_good(key, now);
                return self.reply(src, &msg.reply(Kind::Drop), out);
            }
        };
        self.admissions.restored += 1;
        self.table.set_local(t, msg.local);
        self.drop_displaced(now, displaced, out);
        let c = client.unwrap_or(src);
        say!(
            self.tag,
            info,
            "tunnel {} restored at {} with its client {} ({} active)",
            msg.tunnel,
            addr::shown(src),
            addr::shown(c),
            self.table.active()
        );
        held.iter().for_each(|d| self.forwarded_in(d.len()));
        out.extend(held.into_iter().map(|data| Transmit { to: src, data }));
        self.run.check_recovery(now, self.table.active());
        self.ack(src, msg, t, out);
        self.serve_waiting(now, out);
    }

    fn register_spare(
        &mut self,
        now: Instant,
        src: SocketAddr,
        msg: &Message,
        out: &mut Vec<Transmit>,
    ) {
        if !self.table.may_register(&TunnelKey::of(msg), msg.counter) {
            say!(
                self.tag,
                debug,
                "replayed response of removed or refused tunnel {} from {}: ignored",
                msg.tunnel,
                addr::shown(src)
            );
            return;
        }
        if self.table.spares() >= self.settings.max_tunnels {
            self.table.refuse(TunnelKey::of(msg), msg.counter, now);
            say!(
                self.tag,
                debug,
                "spare tunnel {} refused: already {} spares",
                msg.tunnel,
                self.table.spares()
            );
            return;
        }
        self.note_settings(now, msg);
        let keepalive = self.settings.keepalive_of(&msg.shared);
        let (t, displaced) =
            self.table
                .register(TunnelKey::of(msg), src, msg.counter, keepalive, now);
        self.table.set_local(t, msg.local);
        self.drop_displaced(now, displaced, out);
        // Spares again: a later shortage is news worth a line.
        self.said.waiting.rearm();
        self.said.expired.rearm();
        say!(
            self.tag,
            info,
            "spare tunnel {} registered from {} ({} spare)",
            msg.tunnel,
            addr::shown(src),
            self.table.spares()
        );
        self.serve_waiting(now, out);
        self.ack(src, msg, t, out);
    }

    /// Accept a keepalive or response. The ack also says how many new clients still wait for a spare, so
    /// the inside agent opens that many at once instead of one behind each spare taken.
    /// It also says whom the tunnel carries, so that the inside agent can say it back to a relay that lost it.
    fn ack(&self, to: SocketAddr, msg: &Message, t: Slot, out: &mut Vec<Transmit>) {
        let mut ack = msg.reply(Kind::Ack);
        let tun = self.table.get(t);
        ack.client = tun.and_then(|tun| tun.client);
        ack.active = ack.client.is_some();
        ack.answered = ack.active && tun.is_some_and(|tun| tun.answered);
        ack.waiting = self.table.waiting().min(255) as u8;
        self.reply(to, &ack, out);
    }

    /// Move tunnel `t` to `src`, which it proved it receives at. False if the tunnel is gone as a result (its
    /// new address was its own client's: a loop, so it is dropped).
    fn roam(&mut self, now: Instant, t: Slot, src: SocketAddr, out: &mut Vec<Transmit>) -> bool {
        let Some(from) = self.table.get(t).map(|tun| tun.addr) else {
            return false;
        };
        let (displaced, held) = self.table.move_to(t, src);
        if displaced == Some(t) {
            // The tunnel now receives at the address of the very client it carried: forwarding would loop.
            self.drops.unrouted.add(held.len() as u64);
            self.drop_tunnel(now, t, "it moved to its own client's address", out);
            return false;
        }
        let Some(tun) = self.table.get(t) else {
            return false;
        };
        say!(
            self.tag,
            info,
            "tunnel {} moved from {} to {}",
            tun.key.id,
            addr::shown(from),
            addr::shown(src)
        );
        match tun.client {
            Some(c) => {
                self.traffic.out_datagrams += held.len() as u64;
                self.traffic.out_bytes += held.iter().map(|d| d.len() as u64).sum::<u64>();
                out.extend(held.into_iter().map(|data| Transmit { to: c, data }));
            }
            None => self.drops.unrouted.add(held.len() as u64),
        }
        self.drop_displaced(now, displaced, out);
        true
    }

    /// Forget a tunnel and tell the inside agent to close it.
    fn drop_tunnel(&mut self, now: Instant, t: Slot, why: &str, out: &mut Vec<Transmit>) {
        let Some(tun) = self.table.close(t, now) else {
            return;
        };
        say!(self.tag, info, "tunnel {} dropped: {why}", tun.key.id);
        let mut m = Message::new(Kind::Drop, tun.key.run, tun.key.id, tun.counter);
        m.active = tun.client.is_some();
        self.reply(tun.addr, &m, out);
    }

    /// Another home takes `addr` (its tunnel proved itself there, or its initiation came from an address this home
    /// only binds unproven or holds): whatever of this home was there is dropped. Datagrams held for the address
    /// are counted as unrouted, as when a hold expires.
    pub(super) fn release(&mut self, now: Instant, addr: SocketAddr, out: &mut Vec<Transmit>) {
        let held = self.table.held_datagrams(&addr);
        if held > 0 {
            self.drops.unrouted.add(held as u64);
        }
        let Some(t) = self.table.release(addr) else {
            return;
        };
        // This home's tunnel *at* `addr`: the agent there now is another home's, so a drop would go to the wrong
        // agent (in a key it does not have). Forget it quietly; this home's agent re-registers from wherever it
        // now is. A tunnel that lost its client at `addr` is told, at its own address.
        if self.table.get(t).is_some_and(|tun| tun.addr == addr) {
            if let Some(tun) = self.table.close(t, now) {
                say!(
                    self.tag,
                    info,
                    "tunnel {} forgotten: another home's tunnel proved itself at its address",
                    tun.key.id
                );
            }
            return;
        }
        self.drop_tunnel(now, t, DISPLACED, out);
    }

    /// Whether this home may let `src` go to another home's initiation: a client whose tunnel never carried an
    /// answer, one waiting for a spare, or an address held as a possible new address of a tunnel (a keepalive
    /// seen there, not yet proven: anyone who captured one can replay it from any source). See homes.rs,
    /// `yields`.
    pub(super) fn may_yield(&self, src: &SocketAddr) -> bool {
        self.table.is_held(src) || self.table.client_tunnel(src).is_some_and(|t| !t.answered)
    }

    /// Drop every tunnel, telling the inside agent (its home was removed from FILE, or its key changed).
    pub(super) fn drop_all(&mut self, now: Instant, why: &str, out: &mut Vec<Transmit>) {
        let slots: Vec<Slot> = self.table.slots().collect();
        for t in slots {
            self.drop_tunnel(now, t, why, out);
        }
    }

    /// Drop the tunnel another one displaced by proving itself at its or its client's address.
    fn drop_displaced(&mut self, now: Instant, displaced: Option<Slot>, out: &mut Vec<Transmit>) {
        if let Some(x) = displaced {
            self.drop_tunnel(now, x, DISPLACED, out);
        }
    }

    fn on_close(&mut self, now: Instant, msg: &Message) {
        // A close needs no challenge: a fresh counter proves it is no replay, and a close routes nothing anywhere.
        let Some((t, tun)) = self.table.find_tunnel(&TunnelKey::of(msg)) else {
            return;
        };
        if msg.counter <= tun.counter {
            return;
        }
        let Some(tun) = self.table.close(t, now) else {
            return;
        };
        match tun.client {
            Some(c) => say!(
                self.tag,
                info,
                "tunnel {} closed by the inside agent (client {})",
                msg.tunnel,
                addr::shown(c)
            ),
            None => say!(
                self.tag,
                info,
                "spare tunnel {} closed by the inside agent",
                msg.tunnel
            ),
        }
    }
}
