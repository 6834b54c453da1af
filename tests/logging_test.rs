//! What the real binary writes in each logging mode (stderr, journald, syslog), with --name and at
//! --logLevel 0, and how it takes SIGUSR1, SIGHUP and SIGTERM. Relays and inside agents on 127.0.0.1 only.

mod common;

use common::{wait_until, Echo, BIN, SOON};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

const KEY: &str = "logging-test-key-0123456789";
static SEQ: AtomicUsize = AtomicUsize::new(0);

fn temp_path(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "rut-logging-{}-{}-{what}",
        std::process::id(),
        SEQ.fetch_add(1, SeqCst)
    ))
}

/// The binary with exactly these arguments and environment (no --logLevel added), stderr in a file.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

/// How to set JOURNAL_STREAM for a process.
#[derive(Clone, Copy)]
enum Journal {
    Unset,
    /// The device and inode of the process's stderr, as systemd sets it.
    Ours,
    /// Some other stream's, as a child of a service inherits it.
    Other,
}

impl Proc {
    fn spawn(args: &[&str], env: &[(&str, &str)], journal: Journal) -> Proc {
        let log = temp_path("stderr.log");
        let stderr = File::create(&log).unwrap();
        let meta = stderr.metadata().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("REVERSE_UDP_TUNNEL_KEY")
            .env_remove("JOURNAL_STREAM")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        match journal {
            Journal::Unset => {}
            Journal::Ours => {
                cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
            }
            Journal::Other => {
                cmd.env(
                    "JOURNAL_STREAM",
                    format!("{}:{}", meta.dev(), meta.ino() + 1),
                );
            }
        }
        // SAFETY: prctl is async-signal-safe; if the test dies, the agent dies with it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        Proc {
            child: Some(cmd.spawn().unwrap()),
            log,
        }
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    fn wait_for(&self, needle: &str) {
        self.wait_for_count(needle, 1);
    }

    fn wait_for_count(&self, needle: &str, n: usize) {
        if wait_until(SOON, || {
            (self.log().matches(needle).count() >= n).then_some(())
        })
        .is_none()
        {
            panic!("no {n} × {needle:?} within {SOON:?}; log:\n{}", self.log());
        }
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, sig) };
    }

    fn running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// SIGTERM, and the exit status (within SOON).
    fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let child = self.child.as_mut().unwrap();
        let status = wait_until(SOON, || child.try_wait().unwrap())
            .unwrap_or_else(|| panic!("still running {SOON:?} after SIGTERM"));
        self.child = None;
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- log {} ----\n{}", self.log.display(), self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Has someone bound this UDP port on 127.0.0.1? (A relay that logs nothing at start, at level 0.)
fn bound(port: u16) -> bool {
    std::net::UdpSocket::bind(("127.0.0.1", port)).is_err()
}

/// A relay on a free 127.0.0.1 port: the process and its port. It has started once "relay listening on"
/// shows up in its stderr, or once `ready_elsewhere(port)` says so (syslog mode, level 0).
fn relay(
    opts: &[&str],
    env: &[(&str, &str)],
    journal: Journal,
    ready_elsewhere: Option<&dyn Fn(u16) -> bool>,
) -> (Proc, u16) {
    for _ in 0..5 {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["-l", &listen];
        args.extend_from_slice(opts);
        let mut p = Proc::spawn(&args, env, journal);
        let up = wait_until(SOON, || {
            let started = match ready_elsewhere {
                Some(ready) => ready(port),
                None => p.log().contains("relay listening on"),
            };
            if started {
                return Some(true);
            }
            (!p.running()).then_some(false)
        });
        match up {
            Some(true) => return (p, port),
            Some(false) if p.log().contains("in use") => continue,
            _ => panic!("relay did not start; log:\n{}", p.log()),
        }
    }
    panic!("no free port after 5 tries");
}

/// An RFC 3339 timestamp, as simplelog writes it: 2026-11-29T19:13:47.433691455Z.
fn starts_with_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && (b[4], b[7], b[10], b[13], b[16]) == (b'-', b'-', b'T', b':', b':')
}

#[test]
fn default_mode_is_timestamp_level_message() {
    let (mut p, port) = relay(&["-k", KEY], &[], Journal::Unset, None);
    assert_eq!(p.terminate().code(), Some(0));
    let log = p.log();
    let want = format!("[INFO] relay listening on 127.0.0.1:{port}");
    let line = log.lines().find(|l| l.contains(&want)).expect(&log);
    assert!(starts_with_timestamp(line), "{line:?}");
    assert!(line.ends_with(&format!("Z {want}")), "{line:?}");
    for line in log.lines() {
        assert!(starts_with_timestamp(line), "{line:?}\n{log}");
        assert!(!line.starts_with('<'), "{line:?}");
    }
}

#[test]
fn journal_mode_prefixes_priorities_without_timestamps() {
    // A 5-byte key: a warning, to see <4>.
    let (mut p, port) = relay(&["-k", "short"], &[], Journal::Ours, None);
    p.signal(libc::SIGHUP);
    p.wait_for("SIGHUP");
    assert_eq!(p.terminate().code(), Some(0));
    let log = p.log();
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines.contains(&format!("<6>relay listening on 127.0.0.1:{port}").as_str()),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>the key is only 5 bytes")),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("<4>SIGHUP: ignored")),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("<6>status: tunnels")),
        "{log}"
    );
    for line in &lines {
        let prio = line.get(..3).unwrap_or_default();
        assert!(["<3>", "<4>", "<6>", "<7>"].contains(&prio), "{line:?}");
        assert!(!starts_with_timestamp(&line[3..]), "{line:?}");
        assert!(
            !line.contains("[INFO]") && !line.contains("[WARN]"),
            "{line:?}"
        );
    }
}

#[test]
fn journal_stream_of_another_stream_keeps_the_default_format() {
    let (mut p, _) = relay(&["-k", KEY], &[], Journal::Other, None);
    assert_eq!(p.terminate().code(), Some(0));
    let log = p.log();
    assert!(log.contains("[INFO] relay listening on"), "{log}");
    assert!(log.lines().all(starts_with_timestamp), "{log}");
}

#[test]
fn name_starts_every_message() {
    let (mut p, _) = relay(
        &["-k", "short", "--name", "home"],
        &[],
        Journal::Unset,
        None,
    );
    p.signal(libc::SIGUSR1);
    p.wait_for("status:");
    assert_eq!(p.terminate().code(), Some(0));
    let log = p.log();
    for level in ["WARN", "INFO"] {
        assert!(log.contains(&format!("[{level}] home: ")), "{level}: {log}");
    }
    for line in log.lines() {
        assert!(line.contains("] home: "), "{line:?}");
    }
    // The same in the journal format.
    let (mut p, _) = relay(&["--name", "game"], &[], Journal::Ours, None);
    assert_eq!(p.terminate().code(), Some(0));
    let log = p.log();
    assert!(log.contains("<6>game: relay listening on"), "{log}");
    assert!(log.lines().all(|l| l[3..].starts_with("game: ")), "{log}");
}

#[test]
fn status_line_at_log_level_0() {
    let (mut p, _) = relay(
        &["-k", KEY, "--logLevel", "0"],
        &[],
        Journal::Unset,
        // Nothing is logged at start at level 0.
        Some(&bound),
    );
    p.signal(libc::SIGUSR1);
    p.wait_for("[INFO] status: tunnels");
    assert!(p.running());
    let before = p.log().matches("status: tunnels").count();
    assert_eq!(p.terminate().code(), Some(0));
    let log = p.log();
    assert_eq!(
        log.matches("status: tunnels").count(),
        before + 1,
        "one more at exit: {log}"
    );
    // Only status lines: no info line of any other kind.
    assert!(
        log.lines().all(|l| l.contains("[INFO] status: tunnels")),
        "{log}"
    );
}

/// A syslog daemon stand-in: a datagram socket at a temp path.
struct FakeSyslog {
    dir: PathBuf,
    sock: UnixDatagram,
}

impl FakeSyslog {
    fn new() -> FakeSyslog {
        let dir = temp_path("syslog");
        std::fs::create_dir_all(&dir).unwrap();
        let sock = UnixDatagram::bind(dir.join("log")).unwrap();
        sock.set_nonblocking(true).unwrap();
        FakeSyslog { dir, sock }
    }

    fn path(&self) -> String {
        self.dir.join("log").to_str().unwrap().into()
    }

    /// Every datagram received so far, appended to `into`.
    fn drain(&self, into: &mut Vec<String>) {
        let mut buf = [0u8; 2048];
        while let Ok(n) = self.sock.recv(&mut buf) {
            into.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

impl Drop for FakeSyslog {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn syslog_mode_sends_rfc3164_datagrams() {
    let syslog = FakeSyslog::new();
    let path = syslog.path();
    let got = std::cell::RefCell::new(Vec::new());
    let has = |needle: &str| {
        syslog.drain(&mut got.borrow_mut());
        got.borrow().iter().any(|d| d.contains(needle))
    };
    let env = [("REVERSE_UDP_TUNNEL_SYSLOG_SOCKET", path.as_str())];
    let (mut p, port) = relay(
        &["-k", "short", "--syslog", "--name", "home"],
        &env,
        Journal::Ours, // --syslog wins over the journal
        Some(&|_| has("relay listening on")),
    );
    let pid = p.child.as_ref().unwrap().id();
    p.signal(libc::SIGUSR1);
    assert!(
        wait_until(SOON, || has("status: tunnels").then_some(())).is_some(),
        "{:?}",
        got.borrow()
    );
    assert_eq!(p.terminate().code(), Some(0));
    assert!(wait_until(SOON, || has("SIGTERM").then_some(())).is_some());
    let got = got.into_inner();
    let ident = format!(" reverse-udp-tunnel[{pid}]: home: ");
    let find = |pri: &str, message: &str| {
        got.iter().find(|d| {
            d.starts_with(pri) && d.ends_with(message) && d.contains(&format!("{ident}{message}"))
        })
    };
    let listening = format!("relay listening on 127.0.0.1:{port}");
    let line = find("<30>", &listening).unwrap_or_else(|| panic!("{got:#?}"));
    // <30>Mmm dd hh:mm:ss reverse-udp-tunnel[PID]: ...
    let time = &line.as_bytes()[4..19];
    assert_eq!(
        (time[3], time[6], time[9], time[12]),
        (b' ', b' ', b':', b':'),
        "{line}"
    );
    let short_key = format!("{ident}the key is only 5 bytes long");
    assert!(
        got.iter()
            .any(|d| d.starts_with("<28>") && d.contains(&short_key)),
        "{got:#?}"
    );
    assert!(got.iter().all(|d| d.contains(&ident)), "{got:#?}");
    assert_eq!(p.log(), "", "nothing on stderr while syslog works");
}

#[test]
fn syslog_mode_without_a_socket_falls_back_to_stderr_saying_so_once() {
    let missing = temp_path("no-such-socket");
    let env = [(
        "REVERSE_UDP_TUNNEL_SYSLOG_SOCKET",
        missing.to_str().unwrap(),
    )];
    let (mut p, _) = relay(
        &["-k", KEY, "--syslog", "--name", "home"],
        &env,
        Journal::Unset,
        None,
    );
    assert_eq!(p.terminate().code(), Some(0));
    let log = p.log();
    let notices: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot log to the system log"))
        .collect();
    assert_eq!(notices.len(), 1, "{log}");
    assert!(notices[0].contains(missing.to_str().unwrap()), "{log}");
    assert!(notices[0].contains("[WARN] home: "), "{log}");
    assert!(log.contains("[INFO] home: relay listening on"), "{log}");
    assert!(log.contains("[INFO] home: status: tunnels"), "{log}");
    assert!(log.lines().all(starts_with_timestamp), "{log}");
}

#[test]
fn sigusr1_and_sighup_keep_relay_and_inside_agent_running() {
    let echo = Echo::v4();
    let (mut relay, port) = relay(&["-k", KEY, "--logLevel", "3"], &[], Journal::Unset, None);
    let relay_addr = format!("127.0.0.1:{port}");
    let service = echo.addr.to_string();
    let mut inside = Proc::spawn(
        &[
            "-s",
            &service,
            "-o",
            &relay_addr,
            "-k",
            KEY,
            "--logLevel",
            "3",
        ],
        &[],
        Journal::Unset,
    );
    // All four spares, so that tunnel 1 is among them when the table is logged below.
    inside.wait_for_count("registered at the relay", 4);
    for round in 1..=2 {
        for p in [&relay, &inside] {
            p.signal(libc::SIGUSR1);
            p.wait_for_count("[INFO] status: tunnels", round);
            p.signal(libc::SIGHUP);
            p.wait_for_count("[WARN] SIGHUP: ignored; restart the service", round);
        }
    }
    assert!(relay.running() && inside.running());
    let line = inside
        .log()
        .lines()
        .find(|l| l.contains("status: tunnels"))
        .map(String::from)
        .unwrap();
    assert!(line.contains(" spare="), "{line}");
    // With the status line, the tunnel table: a line per tunnel.
    assert!(
        inside
            .log()
            .contains("[INFO] tunnel 1: spare, next keepalive in"),
        "{}",
        inside.log()
    );
    assert!(
        relay.log().contains(": spare, last keepalive"),
        "{}",
        relay.log()
    );
    for p in [&mut inside, &mut relay] {
        assert_eq!(p.terminate().code(), Some(0), "{}", p.log());
        let log = p.log();
        assert!(log.contains("SIGTERM"), "{log}");
        assert!(!log.contains("[ERROR]"), "{log}");
    }
}

#[test]
fn key_warnings_are_logged_once_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let file = temp_path("key");
    std::fs::write(&file, "tooshort\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = file.to_str().unwrap();
    let (mut p, _) = relay(&["--key-file", path], &[], Journal::Ours, None);
    assert_eq!(p.terminate().code(), Some(0));
    let log = p.log();
    let open = format!("<4>permissions 0644 for {path} are too open");
    assert_eq!(log.matches(&open).count(), 1, "{log}");
    assert_eq!(
        log.matches("<4>the key is only 8 bytes long").count(),
        1,
        "{log}"
    );
    // Before anything else the agent says.
    let first_two: Vec<&str> = log.lines().take(2).collect();
    assert!(first_two.iter().all(|l| l.starts_with("<4>")), "{log}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (mut p, _) = relay(&["--keyFile", path], &[], Journal::Ours, None);
    assert_eq!(p.terminate().code(), Some(0));
    assert!(!p.log().contains("permissions"), "{}", p.log());
    std::fs::remove_file(file).unwrap();
}
