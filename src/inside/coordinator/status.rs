//! What the coordinator says about itself: the status line and, for SIGUSR1, the tunnel table. Another
//! `impl Coordinator`.
#![forbid(unsafe_code)]

use super::Coordinator;
use crate::addr;
use crate::metrics::Metrics;
use std::time::Instant;

impl Coordinator {
    /// The tunnel table, a line per tunnel (for SIGUSR1).
    pub fn table_lines(&self, now: Instant) -> Vec<String> {
        self.tunnels
            .iter()
            .map(|(id, h)| {
                let state = match (h.active, h.registered) {
                    (true, _) => "active",
                    (false, true) => "spare",
                    (false, false) => "registering",
                };
                let next = h.next_keepalive.saturating_duration_since(now);
                let who = match (h.active, h.client) {
                    (true, Some(c)) => format!(" client {}", addr::shown(c)),
                    (true, None) => " client not yet said by the relay".to_string(),
                    (false, _) => String::new(),
                };
                // The pair an admin needs (issue "who is who"): the service's view of the tunnel beside the client.
                let local = match (h.active, h.local) {
                    (true, Some(l)) => format!(", service sees {}", addr::shown(l)),
                    _ => String::new(),
                };
                format!(
                    "tunnel {id}: {state}{who}{local}, next keepalive in {}s",
                    next.as_secs()
                )
            })
            .collect()
    }

    /// The core's samples for `--metrics`: tunnels by state, as in the status line, and the drop counters.
    pub fn metrics(&self, m: &mut Metrics) {
        let (active, spare, pending) = self.counts();
        for (state, n) in [("active", active), ("spare", spare), ("pending", pending)] {
            m.gauge(
                "tunnels",
                "Tunnels now: active (carrying a client), spare (registered at the relay), pending (registering).",
                &[("state", state)],
                n as u64,
            );
        }
        self.drops.write(m, &[]);
    }

    /// Tunnels active, spare (acknowledged by the relay) and pending (still registering).
    fn counts(&self) -> (usize, usize, usize) {
        let active = self.active();
        let spare = self
            .tunnels
            .values()
            .filter(|h| !h.active && h.registered)
            .count();
        (active, spare, self.tunnels.len() - active - spare)
    }

    /// `spare` counts only tunnels the relay has acknowledged; `pending` those still registering.
    pub fn status(&self) -> String {
        let (active, spare, pending) = self.counts();
        format!(
            "status: tunnels active={active} spare={spare} pending={pending} {}",
            self.drops.summary()
        )
    }
}
