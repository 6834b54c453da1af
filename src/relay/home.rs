//! One home's relay: the inside agent it serves, its tunnel table, spares, `-n`, strangers, cookies and
//! WireGuard admission. Without `--homes` the relay is one home; with it, each line of FILE is one, and what one
//! home's agent or attacker does reaches no other home's state (homes.rs routes between them).

use super::{
    say, Admission, Admissions, Settings, Transmit, ADMISSION, ADMISSION_HELP,
    AUTHFAIL_NOTICE_EVERY, DROPPED, DROPPED_HELP, GRACE, TUNNELS, TUNNELS_HELP, WAIT_FOR_SPARE,
};
use crate::addr;
use crate::metrics::{Metrics, Traffic};
use crate::pace::{Every, Once};
use crate::relay::cookies::{Cookies, COOKIE_LIFETIME};
use crate::relay::inside_run::InsideRun;
use crate::relay::strangers::Strangers;
use crate::relay::table::{Route, Table};
use crate::stats::Drops;
use crate::wire::{self, Instance, Key};
use std::net::SocketAddr;
use std::time::Instant;

/// What the relay says once per episode rather than on every occurrence.
#[derive(Default)]
pub(super) struct Said {
    pub(super) badauth: Once,
    pub(super) full: Once,
    pub(super) waiting: Once,
    pub(super) expired: Once,
    pub(super) reclaiming: Once,
    pub(super) version: Once,
}

pub struct Home {
    /// `home NAME: ` with `--homes`, else empty: the start of every log line about this home.
    pub(super) tag: String,
    pub(super) key: Key,
    pub(super) cookies: Cookies,
    pub(super) table: Table,
    pub(super) settings: Settings,
    /// The inside agent's run being served, the runs it replaced, and what it says (see inside_run.rs).
    pub(super) run: InsideRun,
    pub(super) drops: Drops,
    pub(super) admissions: Admissions,
    pub(super) said: Said,
    pub(super) authfail_notice: Every,
    pub(super) strangers: Strangers,
    /// Strangers reclaim tunnels at this pace at most, so the tunnels' ages spread and newcomers find one.
    pub(super) stranger_pace: Every,
    pub(super) wireguard: Option<Admission>,
    /// What this home forwarded, each way (for `--metrics`): plain integers, this thread's alone.
    pub(super) traffic: Traffic,
}

impl Home {
    /// `cookie_secret` must be unpredictable (the OS generator); `now` starts the cookie epochs. `name`: the
    /// home's name in FILE with `--homes`.
    pub fn new(
        name: Option<&str>,
        key: &[u8],
        settings: Settings,
        cookie_secret: [u8; 32],
        now: Instant,
    ) -> Home {
        let tag = name.map(|n| format!("home {n}: ")).unwrap_or_default();
        Home {
            run: InsideRun::new(&tag),
            tag,
            key: Key::new(key),
            cookies: Cookies::new(cookie_secret, now),
            table: Table::default(),
            drops: Drops::default(),
            admissions: Admissions::default(),
            said: Said::default(),
            authfail_notice: Every::new(AUTHFAIL_NOTICE_EVERY),
            strangers: Strangers::default(),
            stranger_pace: Every::new(2 * GRACE / settings.max_tunnels.clamp(1, 1 << 20) as u32),
            wireguard: None,
            traffic: Traffic::default(),
            settings,
        }
    }

    /// With `--wireguard`: only a WireGuard handshake initiation that passes the server's own checks (mac1, and
    /// mac2 under load) gets a tunnel.
    pub fn with_wireguard(mut self, admission: Admission) -> Home {
        self.wireguard = Some(admission);
        self
    }

    /// A datagram of `len` bytes forwarded from a client toward the service.
    pub(super) fn forwarded_in(&mut self, len: usize) {
        self.traffic.in_datagrams += 1;
        self.traffic.in_bytes += len as u64;
    }

    /// A new -n (the homes file changed): tunnels beyond it stay; new clients wait until fewer are busy.
    pub(super) fn set_max_tunnels(&mut self, n: usize) {
        self.settings.max_tunnels = n;
        self.stranger_pace = Every::new(2 * GRACE / n.clamp(1, 1 << 20) as u32);
    }

    /// The id of this home's key, which its inside agent's control messages carry.
    pub fn key_id(&self) -> wire::KeyId {
        self.key.id()
    }

    pub fn admissions(&self) -> &Admissions {
        &self.admissions
    }

    /// One datagram from `src`. `Some(dst)`: send `data` itself to `dst`. Anything else to send is in `out`.
    #[inline]
    pub fn on_datagram(
        &mut self,
        now: Instant,
        src: SocketAddr,
        data: &[u8],
        out: &mut Vec<Transmit>,
    ) -> Option<SocketAddr> {
        if wire::looks_like_control(data) {
            // One home: no address is another home's.
            self.on_control(now, src, data, out, &|_| false);
            return None;
        }
        self.on_data(now, src, data, out)
    }

    /// A datagram that is not control-shaped: forward it, hold it, or admit its source as a new client.
    #[inline]
    pub(super) fn on_data(
        &mut self,
        now: Instant,
        src: SocketAddr,
        data: &[u8],
        out: &mut Vec<Transmit>,
    ) -> Option<SocketAddr> {
        match self.table.route(&src) {
            Route::To(dst) => {
                self.forwarded_in(data.len());
                Some(dst)
            }
            Route::Answer(dst, t) => {
                self.table.answered(t, now);
                self.traffic.out_datagrams += 1;
                self.traffic.out_bytes += data.len() as u64;
                Some(dst)
            }
            Route::Hold => {
                if !self.table.hold(src, data, now) {
                    self.drops.overflow.incr();
                }
                None
            }
            Route::Unrouted => {
                self.drops.unrouted.incr();
                None
            }
            Route::New => {
                if !self.admit(now, src, data, out) {
                    return None;
                }
                self.new_client(now, src, data)
            }
        }
    }

    /// The socket loop could not send a datagram.
    pub fn on_send_error(&mut self) {
        self.drops.senderr.incr();
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The run of the inside agent being served.
    pub fn current(&self) -> Option<Instance> {
        self.run.current
    }

    /// How many replaced runs are remembered (at most [`RETIRED_KEPT`]).
    pub fn retired(&self) -> usize {
        self.run.retired.len()
    }

    pub fn drops(&self) -> &Drops {
        &self.drops
    }

    /// Expire what timed out, and hand spares to clients that waited out a recovery. Call a few times a second;
    /// nothing depends on the exact period.
    pub fn on_tick(&mut self, now: Instant, out: &mut Vec<Transmit>) {
        self.table.expire_gone(now, COOKIE_LIFETIME);
        self.table.remembered().expire(now);
        for tun in self.table.expire(now) {
            let who = tun
                .client
                .map(|c| format!(" (client {})", addr::shown(c)))
                .unwrap_or_default();
            say!(
                self.tag,
                info,
                "tunnel {} sent no keepalive for {}s: forgotten{who}",
                tun.key.id,
                2 * tun.keepalive.as_secs()
            );
        }
        let dropped = self.table.expire_held(now, WAIT_FOR_SPARE);
        if dropped > 0 {
            self.drops.unrouted.add(dropped as u64);
            // Once per episode without spares (as when no inside agent is connected), then only counted:
            // a client retrying for hours must not fill the log.
            if self.said.expired.first() {
                say!(
                self.tag,
                warn,
                    "no spare tunnel came within {}s: dropping held datagrams (counted as unrouted) until one does",
                    WAIT_FOR_SPARE.as_secs()
                );
            }
        }
        if self.table.busy() < self.limit() {
            self.said.full.rearm();
            self.said.reclaiming.rearm();
        }
        self.run.check_recovery_end(self.table.active());
        self.serve_waiting(now, out);
    }

    /// The tunnel table, a line per tunnel (for SIGUSR1).
    pub fn table_lines(&self, now: Instant) -> Vec<String> {
        self.table
            .tunnels()
            .map(|tun| {
                let client = tun.client.map_or("spare".to_string(), |c| {
                    format!("client {}", addr::shown(c))
                });
                // Only a tunnel with a client has a pair worth showing: the client and how the service sees it.
                let local = match (tun.client, tun.local) {
                    (Some(_), Some(l)) => format!(", service sees {}", addr::shown(l)),
                    _ => String::new(),
                };
                format!(
                    "{}tunnel {} of run {} at {}: {client}{local}, last keepalive {}s ago",
                    self.tag,
                    tun.key.id,
                    tun.key.run,
                    addr::shown(tun.addr),
                    now.saturating_duration_since(tun.last_keepalive).as_secs()
                )
            })
            .collect()
    }

    /// This home's samples for `--metrics`; `home`: its name, with several homes.
    pub fn metrics(&self, m: &mut Metrics, home: Option<&str>) {
        let base: Vec<(&str, &str)> = home.map(|h| ("home", h)).into_iter().collect();
        let with = |k: &'static str, v: &'static str| {
            let mut l = base.clone();
            l.push((k, v));
            l
        };
        self.traffic.write(m, &base);
        for (state, n) in [
            ("active", self.table.active()),
            ("spare", self.table.spares()),
            ("waiting", self.table.waiting()),
        ] {
            m.gauge(TUNNELS, TUNNELS_HELP, &with("state", state), n as u64);
        }
        self.drops.write(m, &base);
        let a = &self.admissions;
        m.counter(DROPPED, DROPPED_HELP, &with("reason", "forged"), a.forged);
        let mut verdicts = vec![("reclaimed", a.reclaimed), ("restored", a.restored)];
        if self.wireguard.is_some() {
            verdicts.extend([
                ("replayed", a.replayed),
                ("cookies", a.cookies),
                ("remembered", a.remembered),
            ]);
            // With several homes what no home took is the relay's (homes.rs).
            if home.is_none() {
                verdicts.extend([("notinit", a.not_initiation), ("badmac1", a.bad_mac1)]);
            }
        }
        for (verdict, n) in verdicts {
            m.counter(ADMISSION, ADMISSION_HELP, &with("verdict", verdict), n);
        }
    }

    pub fn status(&self) -> String {
        let a = &self.admissions;
        let wireguard = match self.wireguard {
            // With several homes, what no home took is counted on the relay's own line (homes.rs).
            Some(_) if !self.tag.is_empty() => format!(
                " wireguard replayed={} cookies={} remembered={}",
                a.replayed, a.cookies, a.remembered
            ),
            Some(_) => format!(
                " wireguard notinit={} badmac1={} replayed={} cookies={} remembered={}",
                a.not_initiation, a.bad_mac1, a.replayed, a.cookies, a.remembered
            ),
            None => String::new(),
        };
        format!(
            "{}status: tunnels active={} spare={} waiting={} reclaimed={} restored={} {} forged={}{wireguard}",
            self.tag,
            self.table.active(),
            self.table.spares(),
            self.table.waiting(),
            a.reclaimed,
            a.restored,
            self.drops.summary(),
            a.forged,
        )
    }
}
