//! The relay's every decision, as a state machine: fed `(now, source, bytes)` and timer ticks, it answers with
//! where the datagram goes and what else to send. No socket, no clock, no thread: `socket.rs` moves the bytes.
//!
//! The data path is [`Relay::on_datagram`] returning `Some(address)`: forward the datagram, unchanged, there.
//! Everything else (control replies, held datagrams released to a new tunnel) is pushed to `out`.
//!
//! [`Relay`] (homes.rs) is what the socket loop drives: one home, or with `--homes` several behind one port,
//! and which home a datagram is for. [`Home`] is one home's machine, one `impl Home` over several files by
//! concern: `home.rs` has its entry points (datagrams, ticks, status), `admit.rs` whom a tunnel is given to,
//! `control.rs` the control messages of the inside agent, and `inside_run.rs` what the relay knows of the
//! inside agent's run.

#![forbid(unsafe_code)]

pub(crate) mod admission;
mod admit;
mod control;
pub(crate) mod cookies;
mod home;
mod homes;
mod inside_run;
pub mod remembered;
pub(crate) mod socket;
pub(crate) mod strangers;
pub mod table;

use crate::wire::Shared;
pub use admission::{Admission, CookieReply, Reason, Verdict};
pub use home::Home;
pub use homes::{HomeSpec, Relay, Reloaded, Unmatched};
use std::net::SocketAddr;
use std::time::Duration;

/// A log line about one home: it starts with `home NAME: ` when the relay serves several (the home's `tag`).
macro_rules! say {
    ($tag:expr, $level:ident, $($arg:tt)+) => {
        log::$level!("{}{}", $tag, format_args!($($arg)+))
    };
}
use say;

/// The relay's metric families beside the traffic ones (crate::metrics); `home` labels them with several homes.
const TUNNELS: &str = "tunnels";
const TUNNELS_HELP: &str =
    "Tunnels now: active (carrying a client), spare, and new clients waiting for a spare.";
use crate::stats::{DROPPED, DROPPED_HELP};
const ADMISSION: &str = "admission_total";
const ADMISSION_HELP: &str =
    "What admission control did: tunnels reclaimed and restored; with --wireguard, initiations refused or answered.";

/// A new client's held datagrams wait this long for a spare.
pub const WAIT_FOR_SPARE: Duration = Duration::from_secs(10);
/// Runs of the inside agent that a restart replaced: never accepted again.
pub const RETIRED_KEPT: usize = 64;
/// At most one unauthenticated authfail notice this often, in all.
const AUTHFAIL_NOTICE_EVERY: Duration = Duration::from_secs(1);
/// A full relay hands a tunnel whose client never got an answer to a newcomer, but not before the tunnel has
/// carried its client this long: the service's first answer crosses relay → inside → service → inside → relay
/// well within it (the client's own link is not on that path).
pub const GRACE: Duration = Duration::from_secs(1);
/// When the inside agent says more of its tunnels carry clients than the relay knows (the relay restarted, or
/// forgot them while the agent's line was down), new clients wait this long at most for those tunnels to come
/// back before spares are handed out: a returning client then gets its own tunnel again, not a spare.
pub const RECOVERY: Duration = Duration::from_secs(3);
/// New clients waiting this many for spares also count as load (admissions outpace the inside agent).
const WAITING_IS_LOAD: usize = 16;
/// Why a tunnel is dropped when another proves itself where it was.
const DISPLACED: &str = "another tunnel proved itself at its or its client's address";
/// The longest keepalive interval (and the largest -n) an inside agent may say it uses.
const MAX_KEEPALIVE_SECS: u32 = 86_400;
const MAX_TUNNELS_SAID: u32 = 100_000;

/// The relay's settings that decisions depend on.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `-n`: tunnels carrying clients (and clients waiting for one) at most.
    pub max_tunnels: usize,
    /// `--keepaliveInterval`: a tunnel silent for twice this is forgotten.
    pub keepalive: Duration,
}

/// What admission control did, for the status line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Admissions {
    /// Unproven tunnels handed to newcomers.
    pub reclaimed: u64,
    /// Control-shaped datagrams that failed authentication while the inside agent's key works: strangers' noise.
    pub forged: u64,
    /// `--wireguard`: datagrams of unknown sources that are not handshake initiations.
    pub not_initiation: u64,
    /// `--wireguard`: initiations whose mac1 does not verify.
    pub bad_mac1: u64,
    /// `--wireguard`: initiations seen before (replayed).
    pub replayed: u64,
    /// `--wireguard`: cookie replies sent (under load).
    pub cookies: u64,
    /// `--wireguard`: sources admitted without an initiation because they proved themselves before (see
    /// remembered.rs).
    pub remembered: u64,
    /// Tunnels restored with their client from the inside agent's authenticated word.
    pub restored: u64,
}

/// A datagram for the socket loop to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

impl Settings {
    /// The keepalive interval of the inside agent that sent `said`: its tunnels live by it.
    fn keepalive_of(&self, said: &Shared) -> Duration {
        if (1..=MAX_KEEPALIVE_SECS).contains(&said.keepalive) {
            Duration::from_secs(said.keepalive.into())
        } else {
            self.keepalive
        }
    }
}
