//! reverse-udp-tunnel: reach a UDP service behind carrier-grade NAT through a public relay.
//!
//! - [`cli`]: the command line.
//! - [`logging`] and [`signal`]: log lines for stderr, journald or syslog; SIGTERM, SIGUSR1, SIGHUP.
//! - [`protocol`]: the authenticated control messages, byte by byte.
//! - [`outside`] and [`table`]: the relay, one socket and one thread owning the tunnel/client table.
//! - [`inside`] and [`tunnel`]: the inside agent, a coordinator thread and one thread per tunnel.

#![deny(unsafe_code)]

pub mod addr;
pub mod cli;
pub mod inside;
pub mod pace;
pub mod relay;
pub mod stats;
pub mod sys;
pub mod wire;

use cli::{Config, Role};

/// Run an agent until a signal stops it. The error is one line for the log; the process then exits 1.
pub fn run(cfg: Config) -> Result<(), String> {
    if cfg.key.is_empty() {
        log::warn!("no key (-k, --keyFile or REVERSE_UDP_TUNNEL_KEY): anyone who can reach the relay can hijack tunnels");
    }
    match cfg.role.clone() {
        Role::Outside { host, port } => relay::socket::run(&cfg, host.as_deref(), port),
        Role::Inside { service, relay } => {
            inside::run(cfg, service, relay);
            Ok(())
        }
    }
}
