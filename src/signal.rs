//! SIGTERM and SIGINT, without an async-signal-safe handler: both are blocked in every thread and one thread
//! waits for them with sigwait(3), so the reaction is ordinary code. A few lines of libc instead of the
//! signal-hook crate: this is all the signal handling the tool needs.

/// Call before any other thread is started (threads inherit the signal mask). `on_signal` runs once, on the
/// signal thread, with the signal's name.
pub fn on_terminate(on_signal: impl FnOnce(&'static str) + Send + 'static) {
    // SAFETY: sigset manipulation on a local, then pthread_sigmask on the calling thread.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: set is a valid, initialised sigset; sig is a valid out pointer.
            while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
            on_signal(if sig == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            });
        })
        .expect("cannot start the signal thread");
}
