//! Signals, without an async-signal-safe handler: SIGTERM, SIGINT, SIGUSR1 and SIGHUP are blocked in every
//! thread and one thread waits for them with sigwait(3), so the reaction is ordinary code. A few lines of libc
//! instead of the signal-hook crate: this is all the signal handling the tool needs.
//!
//! - SIGTERM, SIGINT: [`Signal::Terminate`]; the agent exits cleanly.
//! - SIGUSR1: [`Signal::Status`]; the agent logs its status line (and tunnel table), at every log level.
//! - SIGHUP: [`Signal::Reload`]. A relay with `--homes` re-reads its homes file (relay/socket.rs); otherwise
//!   logged ([`RELOAD_IGNORED`]) and ignored: re-reading the key is not worth it, the key lives in several
//!   threads. procd's `reload` restarts an instance whose settings or key file changed.
//!
//! Neither SIGUSR1 nor SIGHUP ends the process: main blocks them first thing ([`block`]), so their default
//! action (terminate) never happens; one that comes before [`watch`] waits for it.

/// What a signal asks of the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT (the name, for the log): exit cleanly.
    Terminate(&'static str),
    /// SIGUSR1: log the status line.
    Status,
    /// SIGHUP: re-read the homes file (`--homes`), or log [`RELOAD_IGNORED`].
    Reload,
}

/// The line logged (at warning level) for SIGHUP.
pub const RELOAD_IGNORED: &str =
    "SIGHUP: ignored; restart the service to change the key or options";

const WATCHED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1, libc::SIGHUP];

/// Block the watched signals in the calling thread, and so in every thread it starts later. main calls it
/// first thing: a SIGUSR1 or SIGHUP that comes before [`watch`] then waits for it instead of killing us.
pub fn block() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local, then pthread_sigmask on the calling thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in WATCHED {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Call before any other thread is started (threads inherit the signal mask), or after [`block`]. `handler`
/// runs on the signal thread, once per signal, until it has been called with [`Signal::Terminate`]; then the
/// thread ends (a second SIGTERM stays blocked and pending, harmlessly).
pub fn watch(mut handler: impl FnMut(Signal) + Send + 'static) {
    let set = block();
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: set is a valid, initialised sigset; sig is a valid out pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            let signal = match sig {
                libc::SIGINT => Signal::Terminate("SIGINT"),
                libc::SIGTERM => Signal::Terminate("SIGTERM"),
                libc::SIGUSR1 => Signal::Status,
                libc::SIGHUP => Signal::Reload,
                _ => continue,
            };
            handler(signal);
            if let Signal::Terminate(_) = signal {
                return;
            }
        })
        .expect("cannot start the signal thread");
}
