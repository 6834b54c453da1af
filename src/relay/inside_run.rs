//! What the relay knows of the inside agent it serves: which run of it that is and which runs a restart replaced,
//! when its authenticated word last arrived, the settings it says, and how many of its tunnels it says carry
//! clients. From these the relay decides when a newer run replaces the current one, how many clients it serves
//! at most, and whether new clients wait for tunnels that may still come back (the recovery, see [`RECOVERY`]).

use super::{say, Settings, MAX_TUNNELS_SAID, RECOVERY, RETIRED_KEPT};
use crate::addr;
use crate::pace::Once;
use crate::relay::table::Table;
use crate::wire::{Instance, Message};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

#[derive(Default)]
pub(super) struct InsideRun {
    /// The home's log tag (see home.rs).
    tag: String,
    /// The run of the inside agent being served; a newer one that proves itself replaces it.
    pub(super) current: Option<Instance>,
    pub(super) retired: VecDeque<Instance>,
    /// The last time an authenticated, fresh message of the inside agent arrived: while it works, a bad MAC is
    /// a stranger's, not a sign that the keys differ.
    pub(super) heard: Option<Instant>,
    /// The inside agent's -n, when it says one smaller than ours.
    pub(super) inside_max: Option<usize>,
    /// How many tunnels carry a client, as the current inside run last said in a fresh message.
    carrying: usize,
    /// Since when the relay knows fewer such tunnels than the inside agent says (see [`RECOVERY`]).
    recovering_since: Option<Instant>,
    /// Said once: the two sides' keepalive intervals, or their -n, differ.
    keepalive_differs: Once,
    tunnels_differ: Once,
}

impl InsideRun {
    pub(super) fn new(tag: &str) -> InsideRun {
        InsideRun {
            tag: tag.to_string(),
            ..InsideRun::default()
        }
    }

    /// A verified run of the inside agent that is not the current one is a restart: the old run's tunnels are
    /// dead, so forget them at once, and never accept the old run again.
    pub(super) fn adopt_instance(
        &mut self,
        instance: Instance,
        src: SocketAddr,
        table: &mut Table,
    ) {
        if self.current == Some(instance) {
            return;
        }
        match self.current.replace(instance) {
            Some(old) => {
                let gone = table.remove_instance(old);
                say!(
                self.tag,
                info,
                    "inside agent restarted (run {instance} replaces run {old}): dropped {} tunnels of the old run",
                    gone.len()
                );
                self.retired.push_back(old);
                if self.retired.len() > RETIRED_KEPT {
                    self.retired.pop_front();
                }
            }
            None => say!(
                self.tag,
                info,
                "inside agent (run {instance}) connected from {}",
                addr::shown(src)
            ),
        }
    }

    /// The inside agent's settings and its count of tunnels with clients, from a fresh authenticated message:
    /// follow the settings where ours would drop its tunnels, and say once that the two sides differ. `active`:
    /// the tunnels with clients the relay knows.
    pub(super) fn note_settings(
        &mut self,
        now: Instant,
        msg: &Message,
        settings: &Settings,
        active: usize,
    ) {
        let said = &msg.shared;
        self.heard = Some(now);
        self.carrying = msg.carrying as usize;
        self.check_recovery(now, active);
        let ours = settings.keepalive;
        let theirs = settings.keepalive_of(said);
        if theirs != ours && self.keepalive_differs.first() {
            say!(
                self.tag,
                warn,
                "the inside agent's keepalive interval is {}s, ours {}s: its tunnels are kept for twice its \
                 interval; give --keepaliveInterval the same value on both sides",
                theirs.as_secs(),
                ours.as_secs()
            );
        }
        if (1..=MAX_TUNNELS_SAID).contains(&said.max_tunnels) {
            let n = said.max_tunnels as usize;
            if n != settings.max_tunnels && self.tunnels_differ.first() {
                say!(
                self.tag,
                warn,
                    "the inside agent's -n is {n}, ours {}: serving at most {} clients; give -n the same value \
                     on both sides",
                    settings.max_tunnels,
                    n.min(settings.max_tunnels)
                );
            }
            self.inside_max = Some(n);
        }
    }

    /// Whether tunnels the inside agent says carry clients are still missing here (the relay knows `active`),
    /// within [`RECOVERY`] of noticing.
    pub(super) fn recovering(&self, now: Instant, active: usize) -> bool {
        active < self.carrying
            && self
                .recovering_since
                .is_some_and(|t| now.saturating_duration_since(t) < RECOVERY)
    }

    /// Start the recovery when the inside agent says more tunnels carry clients than the relay knows; end it when
    /// they are all back. (Timed out, it stays ended until the counts agree again, so a count that stays off
    /// cannot hold new clients back time after time.)
    pub(super) fn check_recovery(&mut self, now: Instant, active: usize) {
        if active >= self.carrying {
            self.recovering_since = None;
        } else if self.recovering_since.is_none() {
            self.recovering_since = Some(now);
            say!(
                self.tag,
                info,
                "the inside agent says {} tunnels carry clients, {} known here: new clients wait up to {}s for \
                 the others to come back",
                self.carrying,
                active,
                RECOVERY.as_secs()
            );
        }
    }

    /// The counts agree again (tunnels came back, or the agent closed them): the recovery is over.
    pub(super) fn check_recovery_end(&mut self, active: usize) {
        if active >= self.carrying {
            self.recovering_since = None;
        }
    }
}
