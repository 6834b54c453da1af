//! reverse-udp-tunnel: reach a UDP service behind carrier-grade NAT through a public relay.
//!
//! Decisions and I/O apart: the cores are state machines fed `(time, source, bytes)` that answer with what to
//! send; thin socket loops around them move the bytes.
//!
//! - [`wire`]: what both sides parse — the control messages byte by byte, WireGuard's message formats.
//! - [`relay`]: the relay core (`Relay`: one home or several behind one port; `Home`: one home's control
//!   messages, admission, its table) and its socket loop.
//! - [`inside`]: the inside agent's core (`Coordinator`), its run identity, the shell that performs the
//!   core's actions, one thread per tunnel.
//! - [`sys`]: everything that touches libc — batched sockets, mapped buffers, signals, logging.
//! - [`cli`]: the command line and the homes file. [`addr`], [`pace`], [`stats`], [`metrics`]: small types both
//!   sides share (the last is the text `--metrics` serves).
//!
//! `relay` and `inside` never import each other; `wire` and the shared types import neither; `unsafe` is
//! allowed only under `sys`.

#![deny(unsafe_code)]

pub mod addr;
pub mod cli;
pub mod inside;
pub mod metrics;
pub mod pace;
pub mod relay;
pub mod stats;
pub mod sys;
pub mod wire;

use cli::{Config, Role};

/// Run an agent until a signal stops it. The error is one line for the log; the process then exits 1.
pub fn run(cfg: Config) -> Result<(), String> {
    if cfg.key.is_empty() && cfg.homes.is_none() {
        log::warn!("no key (-k, --keyFile or REVERSE_UDP_TUNNEL_KEY): anyone who can reach the relay can hijack tunnels");
    }
    match cfg.role.clone() {
        Role::Outside { host, port } => relay::socket::run(&cfg, host.as_deref(), port),
        Role::Inside { service, relay } => inside::run(cfg, service, relay),
    }
}
