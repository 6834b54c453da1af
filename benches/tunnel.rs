//! `make bench` (= `cargo bench --bench tunnel`): DIRECT path (client → echo) against the TUNNEL path
//! (client → relay → inside agent → echo and back), all on 127.0.0.1 with ephemeral ports.
//! What is measured and why it is done this way: docs/BENCHMARKS.md.
//!
//! Design in short:
//! - The echo service runs in this process: one UDP socket (32 MiB receive buffer) served by 2 blocking
//!   threads.
//! - Rate clients are driven by at most 2 threads, each owning half of the client sockets through its own
//!   epoll set, so idle drivers sleep instead of spinning on a 2-core machine shared with both agents.
//! - Every child is owned by an `Agent` guard (SIGTERM, then SIGKILL on drop, also during a panic) and gets
//!   PR_SET_PDEATHSIG, so nothing survives the harness. Every wait has a deadline.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_reverse-udp-tunnel");
const KEY: &str = "bench-secret";
const MAX_TUNNELS: &str = "1200";
const SPARES: &str = "64";
const REPS: usize = 3;
const PAYLOAD: usize = 64;
const LAT_WARMUP: usize = 500;
const LAT_SAMPLES: usize = 5000; // p999 is then the 5th worst
/// The closed-loop rate runs: clients, payload bytes, datagrams outstanding per client. The 1000-client run
/// is last: the agents' memory is read right after it, with its tunnels held.
const LOADS: [Load; 6] = [
    Load::new(1, PAYLOAD, 8),
    Load::new(16, PAYLOAD, 8),
    Load::new(256, PAYLOAD, 8),
    Load::new(1, BULK, 32),
    Load::new(16, BULK, 8),
    Load::new(1000, PAYLOAD, 8),
];
/// Bulk datagrams: a WireGuard packet on a 1500-byte path.
const BULK: usize = 1400;

#[derive(Clone, Copy)]
struct Load {
    clients: usize,
    payload: usize,
    window: usize,
}

impl Load {
    const fn new(clients: usize, payload: usize, window: usize) -> Load {
        Load {
            clients,
            payload,
            window,
        }
    }

    fn name(&self) -> String {
        let c = if self.clients == 1 {
            "client"
        } else {
            "clients"
        };
        format!(
            "{} {c} × {} in flight, {} B",
            self.clients, self.window, self.payload
        )
    }

    fn is(&self, clients: usize, payload: usize) -> bool {
        self.clients == clients && self.payload == payload
    }
}
const MEASURE: Duration = Duration::from_secs(2);
const SETTLE: Duration = Duration::from_millis(250); // after every client got its first reply
const REARM: Duration = Duration::from_millis(200); // a datagram not answered by then counts as lost
const BURSTS: [usize; 2] = [64, 256];
const BURST_WAIT: Duration = Duration::from_secs(5);

type Res<T> = Result<T, String>;

fn main() {
    if let Err(e) = run() {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    raise_nofile(4096)?;
    // RUT_BENCH_BIN=PATH benches another build of the binary (e.g. an older one) instead of building.
    let bin = match std::env::var("RUT_BENCH_BIN") {
        Ok(path) => path,
        Err(_) => build().map(|_| BIN.to_string())?,
    };
    let logs = Path::new(BIN).parent().unwrap().join("bench-logs");
    fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let echo = Echo::start()?;
    let head = header();
    println!("{head}");

    // Phase 1: latency and rates, 3 repetitions, then RSS while the 1000 clients hold their tunnels.
    // Tunnels used: probe + latency client + 1000 pool clients (the smaller runs reuse the pool's first
    // sockets), so it fits -n 1200. Both agents are restarted before each burst for a clean spare pool.
    let mut tun = Tunnel::start(&bin, echo.addr, &logs, "main")?;
    let max = LOADS.iter().map(|l| l.clients).max().unwrap();
    let (direct_pool, tunnel_pool) = (client_pool(echo.addr, max)?, client_pool(tun.addr, max)?);
    let (direct_lat, tunnel_lat) = (latency_socket(echo.addr)?, latency_socket(tun.addr)?);
    let mut lat = [Vec::new(), Vec::new()]; // [direct, tunnel] per repetition
    let mut pinned = [Vec::new(), Vec::new()]; // the same with every process on one CPU
    let mut rate = vec![[Vec::new(), Vec::new()]; LOADS.len()];
    let mut per_datagram = vec![Vec::new(); LOADS.len()]; // (relay, inside) CPU µs per forwarded datagram
    let mut mem = None;
    for rep in 1..=REPS {
        let everyone = [std::process::id(), tun.relay.pid(), tun.inside.pid()];
        for (p, sock) in [&direct_lat, &tunnel_lat].into_iter().enumerate() {
            // Where a tail comes from: time our threads spent runnable but waiting for a CPU (schedstat),
            // and when the slow round trips happened (a periodic cause would show as a period).
            // And the host's share: time our vCPUs wanted to run but the hypervisor ran something else.
            let (waited, stolen) = (run_queue_wait_ns(&everyone), steal_ms());
            let l = latency(sock).map_err(|e| format!("{} latency: {e}", PATH[p]))?;
            // Per thread: one that ended meanwhile (an idle tunnel) counts as having waited no longer, and one
            // that started counts from zero.
            let after = run_queue_wait_ns(&everyone);
            let waited: u64 = after
                .iter()
                .map(|(tid, ns)| ns.saturating_sub(waited.get(tid).copied().unwrap_or(0)))
                .sum();
            let waited = waited as f64 / 1e3 / l.count as f64;
            let stolen = steal_ms() - stolen;
            println!(
                "rep {rep} {:6} RTT p50 {:7.1} µs  p99 {:7.1} µs  p999 {:7.1} µs  lost {}; waiting for a CPU {waited:.1} µs per round trip; host steal {stolen:.0} ms; over 1 ms: {}",
                PATH[p], l.p50, l.p99, l.p999, l.lost, l.slow_summary()
            );
            lat[p].push(l);
        }
        // Diagnostic: the same with the harness and both agents on CPU 0. Cross-CPU wake-ups of an idle vCPU
        // (on this VM: guest_halt_poll_ns = 0, every idle vCPU halts) then cannot happen, and the ratio shows
        // what the path itself costs: 6 hops against 2.
        let all: Vec<usize> = (0..available_cpus()).collect(); // before pinning: it follows the mask
        everyone.iter().for_each(|&pid| set_affinity(pid, &[0]));
        for (p, sock) in [&direct_lat, &tunnel_lat].into_iter().enumerate() {
            let l = latency(sock).map_err(|e| format!("{} pinned latency: {e}", PATH[p]))?;
            println!(
                "rep {rep} {:6} RTT p50 {:7.1} µs  p99 {:7.1} µs  p999 {:7.1} µs  lost {}  (all on CPU 0); over 1 ms: {}",
                PATH[p], l.p50, l.p99, l.p999, l.lost, l.slow_summary()
            );
            pinned[p].push(l);
        }
        everyone.iter().for_each(|&pid| set_affinity(pid, &all));
        for (i, &load) in LOADS.iter().enumerate() {
            let n = load.clients;
            for (p, pool) in [&direct_pool, &tunnel_pool].into_iter().enumerate() {
                tun.check_alive()?;
                // CPU accounting: the harness itself (clients + echo) on both paths, plus both agents.
                let me = std::process::id();
                let pids = if p == 1 {
                    vec![me, tun.relay.pid(), tun.inside.pid()]
                } else {
                    vec![me]
                };
                // RUT_BENCH_PERF=1: a CPU profile of every process of the tunnel path during the first
                // repetition's windows, for `perf report` (docs/BENCHMARKS.md: where the time goes).
                let profile = (p == 1 && rep == 1 && std::env::var_os("RUT_BENCH_PERF").is_some())
                    .then(|| {
                        logs.join(format!("perf-{}x{}-{}B.data", n, load.window, load.payload))
                    });
                let r = rate_run(&pool[..n], &pids, load, profile.as_deref());
                let cpu = match (r.cpu_us.as_slice(), r.csw.as_slice()) {
                    ([h], _) => format!("; CPU per round trip: harness {h:.1} µs"),
                    ([h, relay, inside], [_, rcs, ics]) => {
                        // Each agent forwards 2 datagrams per round trip (one each way).
                        per_datagram[i].push((relay / 2.0, inside / 2.0));
                        format!(
                            "; CPU per round trip: harness {h:.1} µs, relay {relay:.1} µs ({rcs:.2} switches), inside {inside:.1} µs ({ics:.2} switches), total {:.1} µs",
                            h + relay + inside
                        )
                    }
                    _ => String::new(),
                };
                println!(
                    "rep {rep} {:6} {:34} {:9.0} rt/s {:6.2} Gbit/s (warm-up {:4} ms, re-armed {}, silent clients {}){cpu}",
                    PATH[p], load.name(), r.per_sec, gbits(r.per_sec, load.payload), r.warmup_ms, r.rearms, r.silent
                );
                rate[i][p].push(r.per_sec);
            }
        }
        mem = Some((proc_status(tun.relay.pid()), proc_status(tun.inside.pid())));
        println!(
            "rep {rep} inside RSS by mapping (size, count: resident): {}",
            rss_by_mapping(tun.inside.pid())
        );
    }
    let cmds = tun.cmds.clone();
    let stops = tun.stop();
    drop((direct_pool, tunnel_pool));

    let mut bursts = Vec::new();
    for n in BURSTS {
        let t = Tunnel::start(&bin, echo.addr, &logs, &format!("burst{n}"))?;
        let d = burst(echo.addr, n)?;
        let b = burst(t.addr, n)?;
        println!(
            "burst {n:3}: direct {}/{n} last {:.1} ms, tunnel {}/{n} last {:.1} ms",
            d.0, d.1, b.0, b.1
        );
        bursts.push((n, d, b));
        t.stop();
    }

    // RUT_BENCH_NO_METRICS=1: skip it, for a binary from before --metrics.
    let metrics = match std::env::var_os("RUT_BENCH_NO_METRICS") {
        Some(_) => String::new(),
        None => metrics_phase(&bin, echo.addr, &logs)?,
    };

    let mut out = format!("{head}\nload average at the end: {}\n{cmds}\n", loadavg());
    table(
        &mut out,
        &lat,
        &pinned,
        &rate,
        &per_datagram,
        &bursts,
        &mem.unwrap(),
    );
    out.push_str(&metrics);
    for (name, (status, took)) in ["relay", "inside"].iter().zip(stops) {
        let _ = writeln!(
            out,
            "SIGTERM to {name} at the end of phase 1: {status} after {} ms",
            took.as_millis()
        );
    }
    println!("\n{out}");
    Ok(())
}

const PATH: [&str; 2] = ["direct", "tunnel"];

/// The loads of the metrics phase, and how often its scraper reads both agents' `/metrics` (far more often than
/// a Prometheus server would: every scrape is a round trip through the relay's loop and the coordinator).
const METRICS_LOADS: [Load; 2] = [Load::new(16, PAYLOAD, 8), Load::new(1, BULK, 32)];
const SCRAPE_EVERY: Duration = Duration::from_millis(100);

/// Phase 3: the same tunnel without and with `--metrics` on both agents (scraped every 100 ms), interleaved,
/// REPS times: the rate with metrics over the rate without, for the table.
fn metrics_phase(bin: &str, echo: SocketAddr, logs: &Path) -> Res<String> {
    let off = Tunnel::start(bin, echo, logs, "metrics-off")?;
    let on = Tunnel::start_with(bin, echo, logs, "metrics-on", &["--metrics", "127.0.0.1:0"])?;
    let ends: Vec<SocketAddr> = [&on.relay.log, &on.inside.log]
        .iter()
        .map(|l| metrics_addr(l))
        .collect::<Res<_>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let stop = stop.clone();
        thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(Relaxed) {
                for &at in &ends {
                    match scrape(at) {
                        Some(_) => ok += 1,
                        None => failed += 1,
                    }
                }
                thread::sleep(SCRAPE_EVERY);
            }
            (ok, failed)
        })
    };
    let max = METRICS_LOADS.iter().map(|l| l.clients).max().unwrap();
    let pools = [client_pool(off.addr, max)?, client_pool(on.addr, max)?];
    let mut rates = vec![[Vec::new(), Vec::new()]; METRICS_LOADS.len()];
    for rep in 1..=REPS {
        for (i, &load) in METRICS_LOADS.iter().enumerate() {
            for (k, (t, pool)) in [&off, &on].into_iter().zip(&pools).enumerate() {
                let me = std::process::id();
                let r = rate_run(
                    &pool[..load.clients],
                    &[me, t.relay.pid(), t.inside.pid()],
                    load,
                    None,
                );
                println!(
                    "rep {rep} metrics {:3} {:34} {:9.0} rt/s",
                    ["off", "on"][k],
                    load.name(),
                    r.per_sec
                );
                rates[i][k].push(r.per_sec);
            }
        }
    }
    stop.store(true, Relaxed);
    let (ok, failed) = scraper.join().map_err(|_| "the scraper panicked")?;
    off.stop();
    on.stop();
    let mut out = format!(
        "\nmetrics: both agents with --metrics, scraped every {} ms ({ok} scrapes answered, {failed} not), against \
         the same without; median of {REPS}:\n",
        SCRAPE_EVERY.as_millis()
    );
    for (load, [off, on]) in METRICS_LOADS.iter().zip(rates) {
        let (off, on) = (median(&off), median(&on));
        let _ = writeln!(
            out,
            "  {:34} off {off:9.0} rt/s, on {on:9.0} rt/s: on/off {:.3}",
            load.name(),
            on / off
        );
    }
    Ok(out)
}

/// Where an agent serves its metrics, from the line its log says it in.
fn metrics_addr(log: &Path) -> Res<SocketAddr> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        let text = fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.split("metrics at http://").nth(1) {
            let a = rest.split("/metrics").next().unwrap_or_default();
            return a.parse().map_err(|e| format!("{a}: {e}"));
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{}: no metrics address", log.display()))
}

/// One scrape: the body of a 200 answer.
fn scrape(at: SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&at, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
        .ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    r.starts_with("HTTP/1.1 200").then_some(r)
}

// ---------------------------------------------------------------------------------------------- setup

/// `cargo build --release`, so the agents are exactly the release binary (`cargo bench` itself builds the
/// binary with the bench profile).
fn build() -> Res<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .args(["build", "--release", "--bin", "reverse-udp-tunnel"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .spawn()
        .map_err(|e| format!("cargo build: {e}"))?;
    match wait_deadline(&mut child, Duration::from_secs(1200)) {
        Some(s) if s.success() => Ok(()),
        s => {
            let _ = child.kill();
            Err(format!("cargo build --release failed: {s:?}"))
        }
    }
}

fn raise_nofile(need: u64) -> Res<()> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        if rl.rlim_cur < need {
            rl.rlim_cur = rl.rlim_max.min(need);
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
    if rl.rlim_cur < need {
        return Err(format!(
            "need {need} open files, RLIMIT_NOFILE allows {}",
            rl.rlim_cur
        ));
    }
    Ok(())
}

fn header() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']));
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "reverse-udp-tunnel benchmark: `cargo bench --bench tunnel` (= `make bench`)\n\
         machine: nproc {}, CPU {}, Linux {}; load average at the start: {}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        model.unwrap_or("?"),
        kernel.trim(),
        loadavg()
    )
}

/// The 1, 5 and 15 minute load averages: the machine is shared, this tells how busy it was.
fn loadavg() -> String {
    let l = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn bind_loopback() -> io::Result<UdpSocket> {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
}

/// Sockets of the rate clients: each connected to `to` (so it only sees its own replies), non-blocking.
fn client_pool(to: SocketAddr, n: usize) -> Res<Vec<UdpSocket>> {
    (0..n)
        .map(|_| {
            let s = bind_loopback()?;
            s.connect(to)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect::<io::Result<_>>()
        .map_err(|e: io::Error| format!("client sockets: {e}"))
}

fn latency_socket(to: SocketAddr) -> Res<UdpSocket> {
    let s = bind_loopback().map_err(|e| e.to_string())?;
    s.connect(to).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

fn wait_deadline(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        thread::sleep(Duration::from_millis(5));
    }
    None
}

// ----------------------------------------------------------------------------------------------- echo

/// UDP echo: one socket with a big receive buffer, 2 threads (one per core) in blocking recv_from.
struct Echo {
    addr: SocketAddr,
    stop: &'static AtomicBool,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Echo {
    fn start() -> Res<Echo> {
        let sock = bind_loopback().map_err(|e| e.to_string())?;
        set_rcvbuf(&sock, 32 << 20);
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| e.to_string())?;
        let addr = sock.local_addr().map_err(|e| e.to_string())?;
        let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
        let mut threads = Vec::new();
        for _ in 0..2 {
            let s = sock.try_clone().map_err(|e| e.to_string())?;
            threads.push(thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Relaxed) {
                    if let Ok((n, from)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(&buf[..n], from);
                    }
                }
            }));
        }
        Ok(Echo {
            addr,
            stop,
            threads,
        })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        self.threads.drain(..).for_each(|t| drop(t.join()));
    }
}

fn set_rcvbuf(s: &UdpSocket, bytes: libc::c_int) {
    let p = &bytes as *const libc::c_int as *const libc::c_void;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd and option buffer. FORCE needs CAP_NET_ADMIN; otherwise capped at rmem_max.
    unsafe {
        if libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            p,
            len,
        ) != 0
        {
            libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, p, len);
        }
    }
}

// --------------------------------------------------------------------------------------------- agents

/// A child agent; killed on drop (SIGTERM, after 2 s SIGKILL), also while a panic unwinds.
struct Agent {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn spawn(bin: &str, name: String, args: &[String], log: PathBuf) -> Res<Agent> {
        let file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        // SAFETY: prctl is async-signal-safe; the child dies with the harness (spawned from main thread).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("{bin}: {e}"))?;
        Ok(Agent { name, child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> Res<()> {
        let status = match self.child.try_wait() {
            Ok(None) => return Ok(()),
            Ok(Some(s)) => s.to_string(),
            Err(e) => e.to_string(),
        };
        let log = self.log.display();
        Err(format!(
            "{} exited ({status}); end of {log}:\n{}",
            self.name,
            tail(&self.log)
        ))
    }

    /// SIGTERM, then wait up to 2 s: (exit status as text, time taken).
    fn stop(&mut self) -> (String, Duration) {
        let t = Instant::now();
        if let Ok(Some(s)) = self.child.try_wait() {
            return (format!("had already exited ({s})"), Duration::ZERO);
        }
        // SAFETY: signalling our own, not yet reaped child.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        match wait_deadline(&mut self.child, Duration::from_secs(2)) {
            Some(s) => (s.to_string(), t.elapsed()),
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                ("did not exit, killed".into(), t.elapsed())
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

struct Tunnel {
    relay: Agent,
    inside: Agent,
    addr: SocketAddr,
    cmds: String,
}

impl Tunnel {
    /// Relay on a free ephemeral port (retried if another process grabs it first), then the inside agent;
    /// ready once a probe datagram echoes through the tunnel (deadline 10 s).
    fn start(bin: &str, echo: SocketAddr, logs: &Path, tag: &str) -> Res<Tunnel> {
        Tunnel::start_with(bin, echo, logs, tag, &[])
    }

    /// The same with `extra` options for both agents.
    fn start_with(
        bin: &str,
        echo: SocketAddr,
        logs: &Path,
        tag: &str,
        extra: &[&str],
    ) -> Res<Tunnel> {
        let mut last_err = String::new();
        for attempt in 1..=3 {
            let port = bind_loopback()
                .and_then(|s| s.local_addr())
                .map_err(|e| e.to_string())?
                .port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let mut common = ["-n", MAX_TUNNELS, "-k", KEY].map(String::from).to_vec();
            common.extend(extra.iter().map(|a| a.to_string()));
            let mut relay_args = vec!["-l".to_string(), addr.to_string()];
            relay_args.extend(common.clone());
            let mut inside_args = vec![
                "-s".to_string(),
                echo.to_string(),
                "-o".to_string(),
                addr.to_string(),
            ];
            inside_args.extend(common);
            inside_args.extend(["--spares".to_string(), SPARES.to_string()]);
            let relay = Agent::spawn(
                bin,
                format!("relay ({tag})"),
                &relay_args,
                logs.join(format!("{tag}-relay.log")),
            )?;
            let inside = Agent::spawn(
                bin,
                format!("inside ({tag})"),
                &inside_args,
                logs.join(format!("{tag}-inside.log")),
            )?;
            let cmds = format!(
                "relay:  {bin} {}\ninside: {bin} {}",
                relay_args.join(" "),
                inside_args.join(" ")
            );
            if attempt == 1 {
                println!("[{tag}] {}", cmds.replace('\n', &format!("\n[{tag}] ")));
            }
            let mut t = Tunnel {
                relay,
                inside,
                addr,
                cmds,
            };
            match t.probe() {
                Ok(ms) => {
                    // Let the spare pool fill (one socket per tunnel, + the probe's) before measuring.
                    let (want, t0) = (SPARES.parse::<usize>().unwrap() + 1, Instant::now());
                    while sockets(t.inside.pid()) < want && t0.elapsed() < Duration::from_secs(5) {
                        thread::sleep(Duration::from_millis(2));
                    }
                    let (have, spare_ms) = (sockets(t.inside.pid()), t0.elapsed().as_millis());
                    thread::sleep(Duration::from_millis(100)); // their keepalives reach the relay
                    println!(
                        "[{tag}] ready after {ms} ms; inside: {have} sockets {spare_ms} ms later"
                    );
                    return Ok(t);
                }
                Err(e) => last_err = e,
            }
        }
        Err(format!("tunnel did not come up: {last_err}"))
    }

    fn probe(&mut self) -> Res<u128> {
        let t = Instant::now();
        let s = latency_socket(self.addr)?;
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        while t.elapsed() < Duration::from_secs(10) {
            self.check_alive()?;
            let _ = s.send(b"probe");
            if let Ok(n) = s.recv(&mut buf) {
                if &buf[..n] == b"probe" {
                    return Ok(t.elapsed().as_millis());
                }
            }
        }
        Err("no echo through the tunnel within 10 s".into())
    }

    fn check_alive(&mut self) -> Res<()> {
        self.relay.check_alive()?;
        self.inside.check_alive()
    }

    /// Inside first (it tells the relay to drop its tunnels), then the relay.
    fn stop(mut self) -> [(String, Duration); 2] {
        let inside = self.inside.stop();
        [self.relay.stop(), inside]
    }
}

// ------------------------------------------------------------------------------------------- measures

struct Lat {
    p50: f64,
    p99: f64,
    p999: f64,
    lost: usize,
    /// Round trips measured, and the slow ones: (ms since the first, RTT ms).
    count: usize,
    slow: Vec<(f64, f64)>,
}

impl Lat {
    fn slow_summary(&self) -> String {
        let shown: Vec<String> = self
            .slow
            .iter()
            .take(8)
            .map(|(at, rtt)| format!("{rtt:.1} ms at {at:.0} ms"))
            .collect();
        format!("{} [{}]", self.slow.len(), shown.join(", "))
    }
}

/// One client, ping-pong: LAT_WARMUP round trips, then LAT_SAMPLES timed ones (µs). A datagram not
/// answered within 200 ms is counted lost and the next one is sent.
fn latency(s: &UdpSocket) -> Res<Lat> {
    let mut samples = Vec::with_capacity(LAT_SAMPLES);
    let (mut lost, mut seq) = (0, 0u64);
    let mut buf = [0u8; PAYLOAD];
    let mut rx = [0u8; 2048];
    let start = Instant::now();
    let end = start + Duration::from_secs(30);
    let mut slow = Vec::new();
    while samples.len() < LAT_SAMPLES && Instant::now() < end {
        seq += 1;
        buf[..8].copy_from_slice(&seq.to_le_bytes());
        let t = Instant::now();
        let _ = s.send(&buf);
        let rtt = loop {
            match s.recv(&mut rx) {
                Ok(n) if n == PAYLOAD && rx[..8] == buf[..8] => break Some(t.elapsed()),
                Ok(_) => continue, // a late reply to an earlier datagram
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break None
                }
                Err(_) if t.elapsed() < Duration::from_millis(200) => continue, // e.g. ICMP refused
                Err(_) => break None,
            }
        };
        match rtt {
            Some(d) if seq > LAT_WARMUP as u64 => {
                if d > Duration::from_millis(1) {
                    let at = t.duration_since(start).as_secs_f64() * 1e3;
                    slow.push((at, d.as_secs_f64() * 1e3));
                }
                samples.push(d.as_secs_f64() * 1e6)
            }
            Some(_) => {}
            None => lost += 1,
        }
    }
    if samples.len() < LAT_SAMPLES {
        return Err(format!(
            "only {} of {LAT_SAMPLES} samples in 30 s ({lost} lost)",
            samples.len()
        ));
    }
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((p * samples.len() as f64).ceil() as usize).saturating_sub(1)];
    Ok(Lat {
        p50: pct(0.50),
        p99: pct(0.99),
        p999: pct(0.999),
        count: samples.len(),
        slow,
        lost,
    })
}

struct Rate {
    per_sec: f64,
    /// Per agent (relay, inside) during the measuring window: CPU µs and context switches per round trip.
    /// CPU per round trip is the figure that survives a noisy shared machine best.
    cpu_us: Vec<f64>,
    csw: Vec<f64>,
    warmup_ms: u128,
    rearms: u64,
    silent: usize,
}

struct Ctl {
    measuring: AtomicBool,
    stop: AtomicBool,
    answered: AtomicUsize, // clients that got at least one reply
    counted: AtomicU64,
    rearms: AtomicU64,
}

/// Closed loop: every client keeps `load.window` datagrams outstanding. Warm-up until every client got a reply
/// (deadline 10 s) + SETTLE, then replies are counted for MEASURE.
fn rate_run(clients: &[UdpSocket], pids: &[u32], load: Load, profile: Option<&Path>) -> Rate {
    let ctl = Ctl {
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        answered: AtomicUsize::new(0),
        counted: AtomicU64::new(0),
        rearms: AtomicU64::new(0),
    };
    let n = clients.len();
    let usage = std::sync::Mutex::new(Vec::<(u64, u64)>::new());
    let (warmup_ms, secs) = thread::scope(|sc| {
        for chunk in clients.chunks(n.div_ceil(2)) {
            let ctl = &ctl;
            sc.spawn(move || drive(chunk, ctl, load));
        }
        let t = Instant::now();
        while ctl.answered.load(Relaxed) < n && t.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(2));
        }
        let warmup_ms = t.elapsed().as_millis();
        thread::sleep(SETTLE);
        // The profiler is attached before and stopped after the window, outside what is counted.
        let perf = profile.and_then(|out| perf_record(pids, out));
        let before: Vec<(u64, u64)> = pids
            .iter()
            .map(|&p| (cpu_ticks(p), ctx_switches(p)))
            .collect();
        ctl.measuring.store(true, Relaxed);
        let t0 = Instant::now();
        thread::sleep(MEASURE);
        ctl.measuring.store(false, Relaxed);
        let secs = t0.elapsed().as_secs_f64();
        let after: Vec<(u64, u64)> = pids
            .iter()
            .map(|&p| (cpu_ticks(p), ctx_switches(p)))
            .collect();
        if let Some(perf) = perf {
            perf_stop(perf);
        }
        *usage.lock().unwrap() = before
            .into_iter()
            .zip(after)
            .map(|(b, a)| (a.0 - b.0, a.1 - b.1))
            .collect();
        ctl.stop.store(true, Relaxed);
        (warmup_ms, secs) // the scope joins the drivers (they drain late replies) before returning
    });
    let rts = (ctl.counted.load(Relaxed) as f64).max(1.0);
    let usage = usage.into_inner().unwrap();
    Rate {
        cpu_us: usage
            .iter()
            .map(|u| u.0 as f64 * 1e6 / clock_ticks() / rts)
            .collect(),
        csw: usage.iter().map(|u| u.1 as f64 / rts).collect(),
        per_sec: ctl.counted.load(Relaxed) as f64 / secs,
        warmup_ms,
        rearms: ctl.rearms.load(Relaxed),
        silent: n - ctl.answered.load(Relaxed),
    }
}

/// `perf record` of these processes (all their threads: harness, relay, inside, in that order) with call graphs,
/// sampling CPU time; None (said on each window) where perf is missing. Stopped by [`perf_stop`]. Which pid is
/// which goes to OUT.pids, for benches/perf-split.py.
fn perf_record(pids: &[u32], out: &Path) -> Option<Child> {
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    let names = ["harness", "relay", "inside"].iter().zip(&list);
    let roles: String = names.map(|(n, p)| format!("{p} {n}\n")).collect();
    let _ = fs::write(format!("{}.pids", out.display()), roles);
    let child = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F", "2999", "-g", "-o"])
        .arg(out)
        .args(["-p", &list.join(",")])
        .stdout(Stdio::null())
        .spawn();
    match child {
        Ok(c) => {
            thread::sleep(Duration::from_millis(200)); // attached before the window opens
            Some(c)
        }
        Err(e) => {
            eprintln!("RUT_BENCH_PERF: cannot run perf: {e}");
            None
        }
    }
}

fn perf_stop(mut perf: Child) {
    // SAFETY: a signal to our own child, whose pid we hold.
    unsafe { libc::kill(perf.id() as libc::pid_t, libc::SIGINT) };
    if wait_deadline(&mut perf, Duration::from_secs(30)).is_none() {
        let _ = perf.kill();
        let _ = perf.wait();
    }
}

/// One driver thread: its clients' sockets in one epoll set. Datagram = [slot, generation u32, zeros];
/// a reply frees its slot, which is sent again at once; a slot unanswered for REARM is re-sent with a new
/// generation (a lost datagram never stalls the loop; a reply to the old generation is not counted).
fn drive(socks: &[UdpSocket], ctl: &Ctl, load: Load) {
    let (payload, window) = (load.payload, load.window);
    let ep = Epoll::new(socks);
    let now = Instant::now();
    let mut slots = vec![vec![(0u32, now); window]; socks.len()];
    let mut seen = vec![false; socks.len()];
    let mut buf = vec![0u8; payload];
    let mut rx = [0u8; 2048];
    let send = |s: &UdpSocket, buf: &mut [u8], slot: usize, gen: u32| {
        buf[0] = slot as u8;
        buf[1..5].copy_from_slice(&gen.to_le_bytes());
        let _ = s.send(buf); // a failed send is a lost datagram: re-armed later
    };
    for s in socks {
        (0..window).for_each(|slot| send(s, &mut buf, slot, 0));
    }
    let (mut counted, mut rearms) = (0u64, 0u64);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut last_sweep = Instant::now();
    while !ctl.stop.load(Relaxed) {
        let ready = ep.wait(&mut events, 10);
        let now = Instant::now();
        let measuring = ctl.measuring.load(Relaxed);
        for ev in &events[..ready] {
            let i = { ev.u64 } as usize;
            for _ in 0..64 {
                match socks[i].recv(&mut rx) {
                    Ok(n) if n == payload => {
                        let slot = rx[0] as usize % window;
                        let gen = u32::from_le_bytes(rx[1..5].try_into().unwrap());
                        if slots[i][slot].0 != gen {
                            continue; // answered after it was re-armed
                        }
                        counted += measuring as u64;
                        if !seen[i] {
                            seen[i] = true;
                            ctl.answered.fetch_add(1, Relaxed);
                        }
                        slots[i][slot] = (gen.wrapping_add(1), now);
                        send(&socks[i], &mut buf, slot, gen.wrapping_add(1));
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {} // e.g. ICMP port unreachable reported on a connected socket
                }
            }
        }
        if now.duration_since(last_sweep) >= Duration::from_millis(20) {
            last_sweep = now;
            for (s, client) in socks.iter().zip(slots.iter_mut()) {
                for (slot, (gen, sent)) in client.iter_mut().enumerate() {
                    if now.duration_since(*sent) >= REARM {
                        rearms += measuring as u64;
                        (*gen, *sent) = (gen.wrapping_add(1), now);
                        send(s, &mut buf, slot, *gen);
                    }
                }
            }
        }
    }
    // Drain late replies so they do not reach the next run: until 50 ms of quiet, at most 500 ms.
    let end = Instant::now() + Duration::from_millis(500);
    while Instant::now() < end {
        let ready = ep.wait(&mut events, 50);
        if ready == 0 {
            break;
        }
        for ev in &events[..ready] {
            let i = { ev.u64 } as usize;
            for _ in 0..64 {
                if matches!(socks[i].recv(&mut rx), Err(e) if e.kind() == ErrorKind::WouldBlock) {
                    break;
                }
            }
        }
    }
    ctl.counted.fetch_add(counted, Relaxed);
    ctl.rearms.fetch_add(rearms, Relaxed);
}

/// N fresh client sockets each send one datagram at (nearly) the same instant, from one thread, in a
/// tight loop. Returns (answered within BURST_WAIT, ms from the first send to the last answer).
fn burst(to: SocketAddr, n: usize) -> Res<(usize, f64)> {
    let socks = client_pool(to, n)?;
    let ep = Epoll::new(&socks);
    let mut got = vec![false; n];
    let (mut answered, mut last) = (0, 0.0);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut rx = [0u8; 2048];
    let t0 = Instant::now();
    for s in &socks {
        let _ = s.send(&[0x42; PAYLOAD]);
    }
    while answered < n && t0.elapsed() < BURST_WAIT {
        let left = BURST_WAIT.saturating_sub(t0.elapsed()).as_millis() as i32 + 1;
        let ready = ep.wait(&mut events, left.min(100));
        for ev in &events[..ready] {
            let i = { ev.u64 } as usize;
            for _ in 0..64 {
                match socks[i].recv(&mut rx) {
                    Ok(_) if !got[i] => {
                        got[i] = true;
                        answered += 1;
                        last = t0.elapsed().as_secs_f64() * 1e3;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {}
                }
            }
        }
    }
    Ok((answered, last))
}

// ---------------------------------------------------------------------------------------------- tools

/// Level-triggered epoll set over some sockets; an event's data is the socket's index.
struct Epoll(RawFd);

impl Epoll {
    fn new(socks: &[UdpSocket]) -> Epoll {
        // SAFETY: plain syscalls; `ev` outlives each call.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(fd >= 0, "epoll_create1: {}", io::Error::last_os_error());
        for (i, s) in socks.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            let r = unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
            assert_eq!(r, 0, "epoll_ctl: {}", io::Error::last_os_error());
        }
        Epoll(fd)
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> usize {
        // SAFETY: the buffer is valid for events.len() entries.
        let n = unsafe {
            libc::epoll_wait(self.0, events.as_mut_ptr(), events.len() as i32, timeout_ms)
        };
        n.max(0) as usize
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// Memory and size of a process (from /proc): RSS, peak RSS and the anonymous part of RSS in MiB (RSS less the
/// file pages of libc and the binary, which other processes share), threads, sockets.
struct Mem {
    rss: f64,
    hwm: f64,
    anon: f64,
    threads: f64,
    sockets: usize,
}

fn proc_status(pid: u32) -> Mem {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or("");
        line.split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    Mem {
        rss: field("VmRSS:") / 1024.0,
        hwm: field("VmHWM:") / 1024.0,
        anon: field("RssAnon:") / 1024.0,
        threads: field("Threads:"),
        sockets: sockets(pid),
    }
}

/// Where a process's resident memory is, from /proc/PID/smaps: mappings grouped by size and name (anonymous
/// ones by size alone), the five largest groups by resident size, e.g. "132 KiB anon ×1064: 8.3 MiB". Tells
/// thread stacks, batches' overflow mappings and the heap apart.
fn rss_by_mapping(pid: u32) -> String {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut groups: std::collections::HashMap<String, (usize, u64)> = Default::default();
    let mut current: Option<String> = None;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                let name = words.nth(4).unwrap_or("anon");
                let key = format!("{} KiB {name}", (b - a) / 1024);
                groups.entry(key.clone()).or_default().0 += 1;
                current = Some(key);
                continue;
            }
        }
        if first == "Rss:" {
            let kb: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            if let Some(g) = current.as_ref().and_then(|k| groups.get_mut(k)) {
                g.1 += kb;
            }
        }
    }
    let mut top: Vec<_> = groups.into_iter().collect();
    top.sort_by_key(|g| std::cmp::Reverse(g.1 .1));
    top.iter()
        .take(5)
        .map(|(k, (n, kb))| format!("{k} ×{n}: {:.1} MiB", *kb as f64 / 1024.0))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Distinct sockets a process holds (a socket shared by several descriptors counts once).
fn sockets(pid: u32) -> usize {
    let links = fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten();
    let names = links.filter_map(|e| fs::read_link(e.path()).ok());
    let socks: std::collections::HashSet<_> = names
        .filter(|l| l.to_string_lossy().starts_with("socket:"))
        .collect();
    socks.len()
}

/// Put every thread of a process on the given CPUs (threads it starts later inherit the mask).
fn set_affinity(pid: u32, cpus: &[usize]) {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        let Ok(tid) = task.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        // SAFETY: a zeroed cpu_set_t filled with CPU_SET, passed with its size.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            cpus.iter().for_each(|&c| libc::CPU_SET(c, &mut set));
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

fn available_cpus() -> usize {
    thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// utime + stime of a whole process (all threads), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, f)| f.split_whitespace().collect())
        .unwrap_or_default();
    fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|x| x.parse::<u64>().ok()).sum())
        .unwrap_or(0)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// Milliseconds of "steal" of all CPUs (/proc/stat): a virtual CPU runnable but not run by the host. Counted
/// in clock ticks (10 ms), so only a large share shows.
fn steal_ms() -> f64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks = stat
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(8))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    ticks * 1e3 / clock_ticks()
}

/// Nanoseconds each thread (by tid) of these processes spent runnable but not running (field 2 of schedstat).
fn run_queue_wait_ns(pids: &[u32]) -> std::collections::HashMap<String, u64> {
    let mut per_thread = std::collections::HashMap::new();
    for pid in pids {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let stat = fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            let ns = stat
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            per_thread.insert(t.file_name().to_string_lossy().into_owned(), ns);
        }
    }
    per_thread
}

/// Voluntary + involuntary context switches of all threads of a process.
fn ctx_switches(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("status")).ok())
        .flat_map(|s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

type Burst = (usize, (usize, f64), (usize, f64));

/// Payload carried each way, in Gbit/s.
fn gbits(round_trips: f64, payload: usize) -> f64 {
    round_trips * payload as f64 * 8.0 / 1e9
}

#[allow(clippy::too_many_arguments)]
fn table(
    out: &mut String,
    lat: &[Vec<Lat>; 2],
    pinned: &[Vec<Lat>; 2],
    rate: &[[Vec<f64>; 2]],
    per_datagram: &[Vec<(f64, f64)>],
    bursts: &[Burst],
    mem: &(Mem, Mem),
) {
    let _ = writeln!(
        out,
        "median of {REPS} repetitions; ratio = tunnel / direct; RTT payload {PAYLOAD} B\n"
    );
    let _ = writeln!(out, "| measure | direct | tunnel | ratio | target | |");
    let _ = writeln!(out, "|---|--:|--:|--:|---|---|");
    // Free-running latency against its targets, then the pinned diagnostic.
    let rows = [
        (lat, "RTT p50, 1 client", 0, Some(3.5)),
        (lat, "RTT p99, 1 client", 1, None),
        (lat, "RTT p999, 1 client", 2, Some(10.0)),
        (pinned, "RTT p50, all on one CPU", 0, None),
        (pinned, "RTT p999, all on one CPU", 2, None),
    ];
    for (runs, name, pick, limit) in rows {
        let m = |p: usize| {
            median(
                &runs[p]
                    .iter()
                    .map(|l| [l.p50, l.p99, l.p999][pick])
                    .collect::<Vec<_>>(),
            )
        };
        let (d, t) = (m(0), m(1));
        let target = match limit {
            Some(limit) => format!("≤ {limit}× direct | {} |", verdict(t / d <= limit)),
            None => "(diagnostic) | |".into(),
        };
        let _ = writeln!(
            out,
            "| {name} | {d:.1} µs | {t:.1} µs | {:.2} | {target}",
            t / d
        );
    }
    let at = |c: usize, p: usize| LOADS.iter().position(|l| l.is(c, p)).unwrap();
    let (d16, r16) = (
        median(&rate[at(16, PAYLOAD)][0]),
        median(&rate[at(16, PAYLOAD)][1]),
    );
    for (i, load) in LOADS.iter().enumerate() {
        let (d, t) = (median(&rate[i][0]), median(&rate[i][1]));
        let target = if load.is(16, PAYLOAD) || load.is(1, BULK) {
            format!("≥ 0.6× direct | {} |", verdict(t / d >= 0.6))
        } else if load.is(1000, PAYLOAD) {
            // Beside it the same ratio of the direct path: what the harness itself loses with 1000 sockets.
            format!(
                "≥ 0.9× 16-client tunnel ({:.2}×; direct path {:.2}×) | {} |",
                t / r16,
                d / d16,
                verdict(t / r16 >= 0.9)
            )
        } else {
            " | |".into()
        };
        let (dg, tg) = (gbits(d, load.payload), gbits(t, load.payload));
        let _ = writeln!(
            out,
            "| round trips/s, {} | {d:.0} ({dg:.2} Gbit/s) | {t:.0} ({tg:.2} Gbit/s) | {:.2} | {target}",
            load.name(),
            t / d
        );
    }
    for (i, load) in LOADS.iter().enumerate() {
        if per_datagram[i].is_empty() {
            continue;
        }
        let relay = median(&per_datagram[i].iter().map(|c| c.0).collect::<Vec<_>>());
        let inside = median(&per_datagram[i].iter().map(|c| c.1).collect::<Vec<_>>());
        let _ = writeln!(
            out,
            "| CPU per forwarded datagram, relay / inside, {} | | {relay:.2} / {inside:.2} µs | | (what a router can carry) | |",
            load.name()
        );
    }
    for (n, (da, dl), (ta, tl)) in bursts {
        let target = if *n == 256 {
            format!(
                "all answered, last ≤ 1000 ms | {} |",
                verdict(ta == n && *tl <= 1000.0)
            )
        } else {
            " | |".into()
        };
        let _ = writeln!(
            out,
            "| burst {n}: answered, last at | {da}/{n}, {dl:.1} ms | {ta}/{n}, {tl:.1} ms | | {target}"
        );
    }
    for (name, m) in [("relay", &mem.0), ("inside", &mem.1)] {
        let target = match name {
            "inside" => format!("RSS ≤ 16 MiB | {} |", verdict(m.rss <= 16.0)),
            _ => " | |".into(),
        };
        let _ = writeln!(
            out,
            "| {name} at 1000 tunnels: RSS (peak; anonymous), threads, sockets | | {:.1} MiB ({:.1}; {:.1}), {}, {} | | {target}",
            m.rss, m.hwm, m.anon, m.threads, m.sockets
        );
    }
}
