//! When the coordinator acts without being told: keepalives and their retries on every tunnel, the tick that
//! drives them and the spare pool, and the watch on a relay that has gone silent. Another `impl Coordinator`.
#![forbid(unsafe_code)]

use super::{Action, Coordinator, Name};
use crate::pace;
use crate::wire::Kind;
use log::warn;
use std::time::{Duration, Instant};

/// The longest the coordinator sleeps without a timer due: how late a newly resolved name or a status line may be.
pub const MAX_SLEEP: Duration = Duration::from_secs(1);

/// How soon an unacknowledged keepalive of a registered tunnel is sent again: after 1 s, then 2, 4 … s, but
/// never more than a quarter of the interval apart, so that the relay (which forgets a tunnel silent for two
/// intervals) sees several tries before it would: with a 2 s interval every 0.5 s, with 25 s after 1, 2, 4, 6.25 s.
pub fn retry_after(attempt: u32, keepalive: Duration) -> Duration {
    pace::backoff(attempt, keepalive).min(keepalive / 4)
}

impl Coordinator {
    /// Timers: keepalives, the spare pool, a silent relay. Call at [`Coordinator::next_wake`] at the latest.
    pub fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.send_keepalives(now, out);
        self.fill_spares(now, out);
        self.watch_relay(now, out);
    }

    /// When `on_tick` must run next.
    pub fn next_wake(&self, now: Instant) -> Instant {
        let soonest = self.tunnels.values().map(|h| h.next_keepalive).min();
        soonest.unwrap_or(now + MAX_SLEEP).min(now + MAX_SLEEP)
    }

    /// Keepalives on every tunnel, spare and active, keep the NAT mappings open. One the relay does not
    /// acknowledge is sent again: a registration after 1, 2, 4 … s up to the interval, a registered tunnel's
    /// keepalive sooner ([`retry_after`]), so that lost datagrams do not make the relay forget a tunnel.
    pub(super) fn send_keepalives(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(relay) = self.relay else { return };
        let keepalive = self.settings.keepalive;
        for (&id, h) in self
            .tunnels
            .iter_mut()
            .filter(|(_, h)| h.next_keepalive <= now)
        {
            let (counter, msg) = self
                .identity
                .seal_claim(Kind::Keepalive, id, &h.claim(), [0; 8]);
            out.push(Action::Send { id, to: relay, msg });
            h.last_sent = now;
            h.unacked.get_or_insert(counter);
            h.attempts += 1;
            h.next_keepalive = now
                + if h.registered {
                    retry_after(h.attempts - 1, keepalive)
                } else {
                    pace::backoff(h.attempts - 1, keepalive)
                };
        }
    }

    /// No authenticated word from the relay for two keepalive intervals: say so once, and look its name up
    /// again (dynamic DNS may have moved it).
    pub(super) fn watch_relay(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.tunnels.is_empty() || self.relay.is_none() {
            return;
        }
        let limit = 2 * self.settings.keepalive + Duration::from_secs(1);
        let since = self.heard.unwrap_or(self.started);
        let silent_for = now.saturating_duration_since(since);
        if silent_for < limit {
            return;
        }
        if self.said.silent.first() {
            warn!(
                "no answer from the relay {} for {}s: is it running, and does it use the same key?",
                self.settings.relay_name,
                silent_for.as_secs()
            );
        }
        let numeric = self
            .settings
            .relay_name
            .host
            .parse::<std::net::IpAddr>()
            .is_ok();
        if !numeric
            && self
                .resolving_relay
                .is_none_or(|t| now.saturating_duration_since(t) >= limit)
        {
            self.resolving_relay = Some(now);
            out.push(Action::Resolve(Name::Relay));
        }
    }
}
