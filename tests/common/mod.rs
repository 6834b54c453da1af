//! Helpers for the loopback integration tests: the real binary, real UDP sockets on 127.0.0.1 and ::1 only.
//!
//! - [`Agent`]: a running relay or inside agent, its stderr in a temp file to wait on; killed in Drop.
//! - [`Echo`]: the service behind the NAT, a UDP echo that records which peers it saw.
//! - [`Client`]: a UDP client of the relay.
//! - [`MiniNat`]: a UDP proxy between the inside agent and the relay that behaves like a NAT (one public
//!   port per inside socket), records what the inside sends, and can rebind, drop, duplicate and reorder.
#![allow(dead_code)] // each test binary uses its own part of these helpers

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_reverse-udp-tunnel");
pub const KEY: &str = "e2e-shared-secret";
/// Every control message is this long and starts with this magic and version: read from src/wire/control.rs,
/// not re-declared, so that a new protocol version cannot leave the tests checking the old one.
pub const CONTROL_LEN: usize = rut::wire::LEN;
pub const MAGIC: [u8; 5] = {
    let m = rut::wire::MAGIC;
    [m[0], m[1], m[2], m[3], rut::wire::VERSION]
};
/// Control message kinds (byte 5).
pub const KEEPALIVE: u8 = rut::wire::Kind::Keepalive as u8;
pub const RESPONSE: u8 = rut::wire::Kind::Response as u8;
pub const CLOSE: u8 = rut::wire::Kind::Close as u8;
/// How long the helpers wait for something that should happen at once.
pub const SOON: Duration = Duration::from_secs(5);

pub fn is_control(d: &[u8]) -> bool {
    d.len() == CONTROL_LEN && d[..5] == MAGIC
}

/// Random-looking bytes (xorshift seeded from the clock): enough for forgeries, no dependency.
pub fn noise(buf: &mut [u8]) {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(SeqCst);
    if x == 0 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        x = t.as_nanos() as u64 | 1;
    }
    for b in buf {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    STATE.store(x, SeqCst);
}

/// Poll `f` every 10 ms until it gives `Some`, for at most `timeout`.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The value of `name=N` in a status line.
pub fn status_field(line: &str, name: &str) -> u64 {
    let pat = format!(" {name}=");
    let at = line
        .find(&pat)
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        + pat.len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

// ---- agents ---------------------------------------------------------------------------------------------

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A running reverse-udp-tunnel (or a wrapper such as faketime around it) with stderr in a file.
pub struct Agent {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    /// Just before the process was spawned.
    pub started: Instant,
}

impl Agent {
    /// The binary with `args` and `--logLevel 3`, without REVERSE_UDP_TUNNEL_KEY from our environment.
    pub fn spawn(name: &str, args: &[&str]) -> Agent {
        Agent::spawn_command(name, Command::new(BIN), args)
    }

    /// `cmd` (the binary, or a wrapper whose arguments end with the binary) with `args` and `--logLevel 3`.
    pub fn spawn_command(name: &str, mut cmd: Command, args: &[&str]) -> Agent {
        let log = std::env::temp_dir().join(format!(
            "rut-test-{}-{}-{name}.log",
            std::process::id(),
            SEQ.fetch_add(1, SeqCst)
        ));
        let stderr = File::create(&log).expect("create log file");
        cmd.args(args)
            .args(["--logLevel", "3"])
            .env_remove("REVERSE_UDP_TUNNEL_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Own process group, so Drop also kills what a wrapper started.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; if the test harness dies, the agent dies with it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let started = Instant::now();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Agent {
            name: name.into(),
            child: Some(child),
            log,
            started,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Lines of the log that contain `needle`.
    pub fn lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(String::from)
            .collect()
    }

    /// Wait until the log contains `needle`; returns the first line with it. Panics (with the log) on timeout.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_count(needle, 1, timeout);
        self.lines(needle).swap_remove(0)
    }

    /// Wait until `needle` occurs at least `n` times in the log.
    pub fn wait_for_count(&self, needle: &str, n: usize, timeout: Duration) {
        if wait_until(timeout, || (self.count(needle) >= n).then_some(())).is_none() {
            panic!(
                "{}: waited {timeout:?} for {n} × {needle:?}, saw {}; log:\n{}",
                self.name,
                self.count(needle),
                self.log()
            );
        }
    }

    /// Wait for a line containing `needle` that `accept` likes; returns it.
    pub fn wait_for_line(
        &self,
        needle: &str,
        timeout: Duration,
        accept: impl Fn(&str) -> bool,
    ) -> String {
        wait_until(timeout, || {
            self.lines(needle).into_iter().rev().find(|l| accept(l))
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: no acceptable {needle:?} line within {timeout:?}; log:\n{}",
                self.name,
                self.log()
            )
        })
    }

    /// The exit status, if the process has exited (and is now reaped).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().expect("try_wait")?;
        self.child = None;
        Some(status)
    }

    /// SIGKILL to the agent and everything in its process group; reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child's process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    /// Send `signal` (libc::SIGTERM, libc::SIGINT) and wait for the exit: the status and how long it took.
    pub fn terminate(&mut self, signal: i32) -> (ExitStatus, Duration) {
        let pid = self.pid();
        let sent = Instant::now();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, signal) };
        match wait_until(SOON, || self.exited()) {
            Some(status) => (status, sent.elapsed()),
            None => {
                self.kill9();
                panic!("{} ignored signal {signal} for {SOON:?}", self.name)
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        if thread::panicking() {
            eprintln!(
                "---- {} log ({}) ----\n{}",
                self.name,
                self.log.display(),
                self.log()
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// `listen` for `-l`: "" for a bare port (every address, dual stack), else "127.0.0.1" or "::1".
fn listen_arg(listen: &str, port: u16) -> String {
    match listen {
        "" => port.to_string(),
        h if h.contains(':') => format!("[{h}]:{port}"),
        h => format!("{h}:{port}"),
    }
}

/// Where clients reach a relay listening on `listen` (for a bare port: its IPv4 loopback address).
fn reach(listen: &str, port: u16) -> SocketAddr {
    let host = if listen.is_empty() {
        "127.0.0.1"
    } else {
        listen
    };
    SocketAddr::new(host.parse().unwrap(), port)
}

/// Start a relay on a free port; returns it and the address clients send to.
pub fn relay(listen: &str, opts: &[&str]) -> (Agent, SocketAddr) {
    for _ in 0..5 {
        // A port free right now, in the family the relay binds ([::] also holds the IPv4 port).
        let probe = match listen {
            "" => "[::]:0",
            h if h.contains(':') => "[::1]:0",
            _ => "127.0.0.1:0",
        };
        let port = UdpSocket::bind(probe).unwrap().local_addr().unwrap().port();
        if let Some(agent) = relay_on(listen, port, opts) {
            return (agent, reach(listen, port));
        }
    }
    panic!("no free port for the relay after 5 tries");
}

/// Start a relay on `port`; `None` if it exits at once with status 1 "Address already in use".
pub fn relay_on(listen: &str, port: u16, opts: &[&str]) -> Option<Agent> {
    let l = listen_arg(listen, port);
    let mut args = vec!["-l", &l];
    args.extend_from_slice(opts);
    let mut agent = Agent::spawn("relay", &args);
    let up = wait_until(SOON, || {
        if agent.log().contains("relay listening on") {
            return Some(true);
        }
        match agent.exited() {
            Some(s) if s.code() == Some(1) && agent.log().contains("in use") => Some(false),
            Some(s) => panic!("relay exited with {s}; log:\n{}", agent.log()),
            None => None,
        }
    });
    match up {
        Some(true) => Some(agent),
        Some(false) => None,
        None => panic!("relay did not start; log:\n{}", agent.log()),
    }
}

/// An inside agent serving `service` through the relay (or MiniNat) at `relay`.
pub fn inside(service: SocketAddr, relay: SocketAddr, opts: &[&str]) -> Agent {
    let args = inside_args(service, relay, opts);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::spawn("inside", &args)
}

pub fn inside_args(service: SocketAddr, relay: SocketAddr, opts: &[&str]) -> Vec<String> {
    let mut v = vec![
        "-s".to_string(),
        service.to_string(),
        "-o".into(),
        relay.to_string(),
    ];
    v.extend(opts.iter().map(|s| s.to_string()));
    v
}

// ---- the service ----------------------------------------------------------------------------------------

/// A UDP echo service: every datagram goes back unchanged to its sender.
pub struct Echo {
    pub addr: SocketAddr,
    peers: Arc<Mutex<HashSet<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    pub fn v4() -> Echo {
        Echo::on("127.0.0.1:0", b"")
    }

    pub fn v6() -> Echo {
        Echo::on("[::1]:0", b"")
    }

    /// A service that, like WireGuard, answers only what it can verify: here, datagrams starting with `prefix`.
    pub fn answering_only(prefix: &'static [u8]) -> Echo {
        Echo::on("127.0.0.1:0", prefix)
    }

    fn on(bind: &str, prefix: &'static [u8]) -> Echo {
        let sock = roomy(UdpSocket::bind(bind).unwrap());
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let peers = Arc::new(Mutex::new(HashSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peers.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(SeqCst) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    p.lock().unwrap().insert(from);
                    if buf[..n].starts_with(prefix) {
                        let _ = sock.send_to(&buf[..n], from);
                    }
                }
            }
        });
        Echo {
            addr,
            peers,
            stop,
            thread: Some(thread),
        }
    }

    /// Every source address the service has seen: one per tunnel.
    pub fn peers(&self) -> HashSet<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `sock` with the receive buffer the relay gives itself (`net::grow_receive_buffer`), so that a test's own
/// thread, starved for a moment on a loaded machine, does not drop the burst it was sent: the default holds a few
/// hundred datagrams.
pub fn roomy(sock: UdpSocket) -> UdpSocket {
    rut::sys::grow_receive_buffer(&sock);
    sock
}

// ---- clients --------------------------------------------------------------------------------------------

/// A client of the relay: one socket, so one source address.
pub struct Client {
    pub sock: UdpSocket,
    pub relay: SocketAddr,
}

impl Client {
    /// A socket on the loopback address of `relay`'s family.
    pub fn new(relay: SocketAddr) -> Client {
        let bind = if relay.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        };
        Client {
            sock: roomy(UdpSocket::bind(bind).unwrap()),
            relay,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    pub fn send(&self, payload: &[u8]) {
        self.sock.send_to(payload, self.relay).unwrap();
    }

    /// The next datagram within `timeout`; it must come from the relay.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .unwrap();
        let (n, from) = self.sock.recv_from(&mut buf).ok()?;
        assert_eq!(from, self.relay, "a datagram from elsewhere than the relay");
        buf.truncate(n);
        Some(buf)
    }

    /// Discard whatever has arrived (late answers to earlier pings).
    pub fn drain(&self) {
        while self.recv(Duration::from_millis(1)).is_some() {}
    }

    /// Send `payload` and return the first datagram that comes back within `timeout`.
    pub fn ask(&self, payload: &[u8], timeout: Duration) -> Option<Vec<u8>> {
        self.drain();
        self.send(payload);
        self.recv(timeout)
    }

    /// Asserts the echo of `payload` comes back within SOON.
    pub fn assert_served(&self, payload: &[u8]) {
        let got = self.ask(payload, SOON);
        assert_eq!(
            got.as_deref(),
            Some(payload),
            "client {} not served",
            self.addr()
        );
    }

    /// Ping every 50 ms until an echo comes back; when it came, or None after `timeout`.
    pub fn ping_until(&self, timeout: Duration) -> Option<Instant> {
        self.drain();
        let deadline = Instant::now() + timeout;
        let mut n = 0;
        while Instant::now() < deadline {
            n += 1;
            self.send(format!("ping {n}").as_bytes());
            if let Some(reply) = self.recv(Duration::from_millis(50)) {
                assert!(reply.starts_with(b"ping "), "not an echo: {reply:?}");
                return Some(Instant::now());
            }
        }
        None
    }
}

// ---- a NAT between the inside agent and the relay -------------------------------------------------------

/// Faults MiniNat applies to inside→relay datagrams.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Drop every inside→relay datagram.
    pub drop: bool,
    /// Send every control message twice.
    pub duplicate: bool,
    /// After each control message, send the previous one of the same inside socket again (older after newer).
    pub reorder: bool,
}

struct Mapping {
    up: Arc<UdpSocket>,
    open: Arc<Mutex<bool>>,
}

#[derive(Default)]
struct NatState {
    mappings: HashMap<SocketAddr, Mapping>,
    /// Every datagram inside→relay, with the inside socket that sent it.
    recorded: Vec<(SocketAddr, Vec<u8>)>,
    last_control: HashMap<SocketAddr, Vec<u8>>,
    faults: Faults,
    threads: Vec<JoinHandle<()>>,
    /// Mappings replaced by `rebind`: closed, forwarding nothing, but their ports stay bound until the NAT is
    /// dropped, so that what the relay still sends there cannot reach another test's new socket on that port.
    retired: Vec<Mapping>,
}

/// The inside agent's `-o` points at `addr`. Each inside socket gets its own upstream socket (its "public
/// port"); the relay's answers to that port go back to that inside socket, and nothing from anyone else does.
pub struct MiniNat {
    pub addr: SocketAddr,
    relay: SocketAddr,
    listen: Arc<UdpSocket>,
    state: Arc<Mutex<NatState>>,
    stop: Arc<AtomicBool>,
    main: Option<JoinHandle<()>>,
}

impl MiniNat {
    pub fn new(relay: SocketAddr) -> MiniNat {
        let bind = if relay.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        };
        let listen = Arc::new(UdpSocket::bind(bind).unwrap());
        listen
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = listen.local_addr().unwrap();
        let state: Arc<Mutex<NatState>> = Arc::default();
        let stop: Arc<AtomicBool> = Arc::default();
        let (listen2, state2, stop2) = (listen.clone(), state.clone(), stop.clone());
        let main = thread::spawn(move || {
            let (listen, state, stop) = (listen2, state2, stop2);
            let mut buf = vec![0u8; 65536];
            while !stop.load(SeqCst) {
                let Ok((n, inside)) = listen.recv_from(&mut buf) else {
                    continue;
                };
                let data = buf[..n].to_vec();
                let mut st = state.lock().unwrap();
                st.recorded.push((inside, data.clone()));
                if !st.mappings.contains_key(&inside) {
                    let m = map(&listen, inside, relay, &stop, &mut st.threads);
                    st.mappings.insert(inside, m);
                }
                let up = st.mappings[&inside].up.clone();
                let faults = st.faults;
                let mut out = vec![data.clone()];
                if is_control(&data) {
                    if faults.duplicate {
                        out.push(data.clone());
                    }
                    let older = st.last_control.insert(inside, data);
                    if let (true, Some(older)) = (faults.reorder, older) {
                        out.push(older);
                    }
                }
                drop(st);
                if !faults.drop {
                    out.iter().for_each(|d| {
                        let _ = up.send_to(d, relay);
                    });
                }
            }
        });
        MiniNat {
            addr,
            relay,
            listen,
            state,
            stop,
            main: Some(main),
        }
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state.lock().unwrap().faults = faults;
    }

    /// New public ports for every inside socket, as a carrier NAT after `conntrack -F`: the old ones close.
    pub fn rebind(&self) {
        let mut st = self.state.lock().unwrap();
        let insides: Vec<SocketAddr> = st.mappings.keys().copied().collect();
        for inside in insides {
            let fresh = map(
                &self.listen,
                inside,
                self.relay,
                &self.stop,
                &mut st.threads,
            );
            let old = st.mappings.insert(inside, fresh).unwrap();
            *old.open.lock().unwrap() = false;
            st.retired.push(old);
        }
    }

    /// The public addresses (upstream sockets) in use now.
    pub fn public_addrs(&self) -> Vec<SocketAddr> {
        let st = self.state.lock().unwrap();
        st.mappings
            .values()
            .map(|m| m.up.local_addr().unwrap())
            .collect()
    }

    /// Every control message the inside sent, in order.
    pub fn recorded_control(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        let st = self.state.lock().unwrap();
        st.recorded
            .iter()
            .filter(|(_, d)| is_control(d))
            .cloned()
            .collect()
    }

    /// Send every recorded control message again, each from the current public port of its inside socket.
    pub fn replay_upstream(&self) -> usize {
        self.replay_upstream_where(|_| true)
    }

    /// Replay the recorded control messages that `pick` chooses.
    pub fn replay_upstream_where(&self, pick: impl Fn(&[u8]) -> bool) -> usize {
        let st = self.state.lock().unwrap();
        let mut n = 0;
        for (inside, d) in st.recorded.iter().filter(|(_, d)| is_control(d) && pick(d)) {
            if let Some(m) = st.mappings.get(inside) {
                m.up.send_to(d, self.relay).unwrap();
                n += 1;
            }
        }
        n
    }
}

/// A new public port for `inside`, with its thread carrying the relay's answers back.
fn map(
    listen: &Arc<UdpSocket>,
    inside: SocketAddr,
    relay: SocketAddr,
    stop_all: &Arc<AtomicBool>,
    threads: &mut Vec<JoinHandle<()>>,
) -> Mapping {
    let bind = if relay.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let up = Arc::new(UdpSocket::bind(bind).unwrap());
    up.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    // Closed under its lock: once rebind() returns, this mapping forwards nothing more, as after a NAT flush.
    let open = Arc::new(Mutex::new(true));
    let (u, o, all, l) = (up.clone(), open.clone(), stop_all.clone(), listen.clone());
    threads.push(thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !all.load(SeqCst) {
            let got = u.recv_from(&mut buf);
            let open = o.lock().unwrap();
            if !*open {
                return;
            }
            if let Ok((n, from)) = got {
                if from == relay {
                    let _ = l.send_to(&buf[..n], inside);
                }
            }
        }
    }));
    Mapping { up, open }
}

impl Drop for MiniNat {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        if let Some(t) = self.main.take() {
            let _ = t.join();
        }
        let threads = std::mem::take(&mut self.state.lock().unwrap().threads);
        threads.into_iter().for_each(|t| {
            let _ = t.join();
        });
    }
}
