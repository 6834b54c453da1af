//! Log lines where the init system expects them.
//!
//! API:
//! - [`init`], once, in main, after parsing the command line: picks the [`Mode`] and installs the logger.
//! - `log::error!`, `warn!`, `info!`, `debug!` as usual; `--logLevel` filters them.
//! - [`status`]: the status line. Written at info priority whatever `--logLevel` says (even 0), so the
//!   periodic line, the one at exit and the one SIGUSR1 asks for are always there.
//!
//! Modes, one per process:
//! - [`Mode::Stderr`], the default: lines on standard error, `TIMESTAMP [LEVEL] message`, the
//!   timestamp in RFC 3339 (UTC).
//! - [`Mode::Journal`], when systemd runs us: `JOURNAL_STREAM` names the device and inode of our standard
//!   error (sd-daemon(3) says to compare them, since a child of a service inherits the variable but perhaps
//!   not the stream). Each line starts with its syslog priority, `<3>` error, `<4>` warning, `<6>` info, `<7>`
//!   debug, and has no timestamp: journald adds its own, and `journalctl -p warning` sees the priority.
//! - [`Mode::Syslog`], with `--syslog`: one datagram per line to the system log socket, `/dev/log`, RFC 3164
//!   style: `<PRI>Mmm dd hh:mm:ss reverse-udp-tunnel[PID]: message`, facility daemon. Meant for OpenWrt,
//!   where procd otherwise logs all of standard error as `daemon.err`. When the socket is missing or a send
//!   fails, the line goes to standard error instead (in the default format), and the first such line is
//!   preceded by one saying so; the next line tries the system log again.
//!
//! With `--name NAME` every message starts with `NAME: `, in every mode, so `logread -e 'NAME:'` or
//! `grep 'NAME:'` picks one instance; the syslog ident stays `reverse-udp-tunnel`, so `journalctl -t` and
//! `logread -e reverse-udp-tunnel` still find them all.
//!
//! Test hook: the environment variable [`SYSLOG_SOCKET_ENV`], if set, replaces `/dev/log` (tests cannot
//! create `/dev/log` without root and a private mount namespace). Not in --help: nobody else needs it.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// The target of status lines; the logger lets it through at every level.
pub const STATUS_TARGET: &str = "status";
/// The syslog ident.
pub const IDENT: &str = "reverse-udp-tunnel";
pub const SYSLOG_SOCKET: &str = "/dev/log";
/// Test hook: a socket path instead of [`SYSLOG_SOCKET`].
pub const SYSLOG_SOCKET_ENV: &str = "REVERSE_UDP_TUNNEL_SYSLOG_SOCKET";
/// syslog facility "daemon" (3), shifted as in the `<PRI>` field.
const FACILITY_DAEMON: u8 = 3 << 3;
/// A stalled syslog daemon delays a log line this long at most, then the line goes to standard error.
const SYSLOG_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Stderr,
    Journal,
    Syslog,
}

/// Install the logger: `level` is `--logLevel` (0 errors … 3 debug), `name` the instance name, `syslog`
/// whether `--syslog` was given. Returns the mode chosen. Call once; later calls change nothing.
pub fn init(level: u8, name: Option<&str>, syslog: bool) -> Mode {
    let mode = if syslog {
        Mode::Syslog
    } else if std::env::var_os("JOURNAL_STREAM").is_some_and(|v| is_our_stderr(&v)) {
        Mode::Journal
    } else {
        Mode::Stderr
    };
    let path = std::env::var_os(SYSLOG_SOCKET_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| SYSLOG_SOCKET.into());
    let logger = Logger::new(level_filter(level), name, mode, path);
    let max = logger.level;
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(max);
    }
    mode
}

/// Log the status line at info priority, whatever `--logLevel` says.
pub fn status(line: &str) {
    // Straight to the logger: the log! macros would drop it below info level before the logger sees it.
    log::logger().log(
        &Record::builder()
            .level(Level::Info)
            .target(STATUS_TARGET)
            .args(format_args!("{line}"))
            .build(),
    );
}

pub fn level_filter(level: u8) -> LevelFilter {
    match level {
        0 => LevelFilter::Error,
        1 => LevelFilter::Warn,
        2 => LevelFilter::Info,
        _ => LevelFilter::Debug,
    }
}

/// The syslog severity of a level, as sd-daemon(3) and syslog(3) number them.
pub fn severity(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// `JOURNAL_STREAM` is `DEVICE:INODE` in decimal; does it name this device and inode?
pub fn journal_stream_is(value: &OsStr, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

fn is_our_stderr(value: &OsStr) -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let stat = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| std::fs::File::from(fd).metadata());
    stat.is_ok_and(|m| journal_stream_is(value, m.dev(), m.ino()))
}

/// The lines for journald: each line of the message with the priority prefix, no timestamp.
pub fn journal_lines(level: Level, prefix: &str, message: &str) -> String {
    let mut out = String::with_capacity(message.len() + prefix.len() + 8);
    for line in message.split('\n') {
        out.push_str(&format!("<{}>{prefix}{line}\n", severity(level)));
    }
    out
}

/// One syslog datagram: `<PRI>TIMESTAMP IDENT[PID]: PREFIXMESSAGE`.
pub fn syslog_datagram(level: Level, time: &str, pid: u32, prefix: &str, message: &str) -> String {
    let pri = FACILITY_DAEMON | severity(level);
    format!("<{pri}>{time} {IDENT}[{pid}]: {prefix}{message}")
}

/// RFC 3339 in UTC to the nanosecond, as `2026-11-29T19:50:40.202056263Z`. (Formatted here rather than by
/// simplelog: its formatter pulls in the `time` crate, 22 KB of the MIPS binary's budget.)
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_nanos()
    )
}

/// Year, month, day of the day `z` days after 1970-01-01 (proleptic Gregorian; H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// RFC 3164's `Mmm dd hh:mm:ss` in local time, as syslog(3) writes it.
pub fn syslog_time(unix_seconds: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // libc deprecates time_t on 32-bit musl (musl 1.2 made it 64-bit; the crate still binds the 32-bit
    // `localtime_r`, which musl keeps for compatibility): right until 2038, and only the syslog timestamp.
    #[allow(deprecated)]
    let t = unix_seconds as libc::time_t;
    // SAFETY: tm is a plain struct filled by localtime_r (the reentrant variant); both pointers are valid.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return "Jan  1 00:00:00".into();
        }
        tm
    };
    format!(
        "{} {:2} {:02}:{:02}:{:02}",
        MONTHS[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// The `log` backend: the level filter (letting status lines through), the name prefix, and the mode.
pub struct Logger {
    level: LevelFilter,
    /// `NAME: ` or empty.
    prefix: String,
    mode: Mode,
    syslog: Option<Syslog>,
}

struct Syslog {
    path: PathBuf,
    /// Connected to `path`; `None` until a connect works (again).
    sock: Mutex<Option<UnixDatagram>>,
    /// Lines are going to stderr; said once until a send works again.
    down: AtomicBool,
}

impl Logger {
    pub fn new(level: LevelFilter, name: Option<&str>, mode: Mode, syslog_path: PathBuf) -> Logger {
        Logger {
            level,
            prefix: name.map(|n| format!("{n}: ")).unwrap_or_default(),
            mode,
            syslog: (mode == Mode::Syslog).then(|| Syslog {
                path: syslog_path,
                sock: Mutex::new(None),
                down: AtomicBool::new(false),
            }),
        }
    }

    /// The default format, also the fallback when the system log cannot be reached: `TIMESTAMP [LEVEL] message`,
    /// one write per line (so lines of different threads never interleave).
    fn to_stderr(&self, level: Level, message: std::fmt::Arguments) {
        let line = format!(
            "{} [{level}] {}{message}\n",
            rfc3339(std::time::SystemTime::now()),
            self.prefix
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn to_syslog(&self, syslog: &Syslog, level: Level, message: std::fmt::Arguments) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let datagram = syslog_datagram(
            level,
            &syslog_time(now),
            std::process::id(),
            &self.prefix,
            &message.to_string(),
        );
        match syslog.send(datagram.as_bytes()) {
            Ok(()) => syslog.down.store(false, Relaxed),
            Err(e) => {
                if !syslog.down.swap(true, Relaxed) {
                    self.to_stderr(
                        Level::Warn,
                        format_args!(
                            "cannot log to the system log at {}: {e}; logging to standard error until it works",
                            syslog.path.display()
                        ),
                    );
                }
                self.to_stderr(level, message);
            }
        }
    }
}

impl Syslog {
    /// Send on the connected socket; if that fails (none yet, or syslogd restarted and the old socket is
    /// gone), connect again once and retry.
    fn send(&self, datagram: &[u8]) -> std::io::Result<()> {
        let mut sock = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sock.as_ref() {
            if s.send(datagram).is_ok() {
                return Ok(());
            }
        }
        *sock = None;
        let s = UnixDatagram::unbound()?;
        s.set_write_timeout(Some(SYSLOG_SEND_TIMEOUT))?;
        s.connect(&self.path)?;
        s.send(datagram)?;
        *sock = Some(s);
        Ok(())
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level || metadata.target() == STATUS_TARGET
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        match (&self.mode, &self.syslog) {
            (Mode::Syslog, Some(syslog)) => self.to_syslog(syslog, record.level(), *record.args()),
            (Mode::Journal, _) => {
                let text = journal_lines(record.level(), &self.prefix, &record.args().to_string());
                // One write per record, so lines of different threads do not interleave.
                let _ = std::io::stderr().lock().write_all(text.as_bytes());
            }
            _ => self.to_stderr(record.level(), *record.args()),
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn rfc3339_utc_to_the_nanosecond() {
        use std::time::{Duration, UNIX_EPOCH};
        let at = |secs, nanos| rfc3339(UNIX_EPOCH + Duration::new(secs, nanos));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(
            at(1_795_980_640, 202_056_263),
            "2026-11-29T19:30:40.202056263Z"
        );
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000000000Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000000Z");
    }
    use super::*;

    #[test]
    fn priorities_follow_sd_daemon() {
        let levels = [Level::Error, Level::Warn, Level::Info, Level::Debug];
        let got: Vec<u8> = levels.iter().map(|&l| severity(l)).collect();
        assert_eq!(got, [3, 4, 6, 7]);
    }

    #[test]
    fn journal_lines_carry_the_priority_and_no_timestamp() {
        assert_eq!(
            journal_lines(Level::Info, "", "relay listening on [::]:1234"),
            "<6>relay listening on [::]:1234\n"
        );
        assert_eq!(
            journal_lines(Level::Warn, "home: ", "all 10 tunnels in use"),
            "<4>home: all 10 tunnels in use\n"
        );
        // A message with a newline stays two lines of the same priority.
        assert_eq!(journal_lines(Level::Error, "", "a\nb"), "<3>a\n<3>b\n");
    }

    #[test]
    fn syslog_datagram_is_rfc3164_daemon_facility() {
        let d = syslog_datagram(Level::Info, "Nov  5 09:03:07", 42, "home: ", "status: x");
        assert_eq!(
            d,
            "<30>Nov  5 09:03:07 reverse-udp-tunnel[42]: home: status: x"
        );
        let pri = |l| syslog_datagram(l, "T", 1, "", "m")[..4].to_string();
        assert_eq!(pri(Level::Error), "<27>");
        assert_eq!(pri(Level::Warn), "<28>");
        assert_eq!(pri(Level::Debug), "<31>");
    }

    #[test]
    fn syslog_time_has_the_rfc3164_shape() {
        let t = syslog_time(1_700_000_000);
        let b = t.as_bytes();
        assert_eq!(t.len(), 15, "{t:?}");
        assert!(b[..3].iter().all(u8::is_ascii_alphabetic), "{t:?}");
        assert_eq!((b[3], b[6], b[9], b[12]), (b' ', b' ', b':', b':'), "{t:?}");
        assert!(
            b[5].is_ascii_digit() && b[4] != b'0',
            "day is space-padded: {t:?}"
        );
    }

    #[test]
    fn journal_stream_must_name_our_device_and_inode() {
        assert!(journal_stream_is(OsStr::new("8:12345"), 8, 12345));
        for other in [
            "8:12346",
            "9:12345",
            "8",
            "",
            "x:y",
            "8:12345:1",
            " 8:12345",
        ] {
            assert!(!journal_stream_is(OsStr::new(other), 8, 12345), "{other:?}");
        }
    }

    #[test]
    fn filter_lets_status_lines_through_at_every_level() {
        let logger = Logger::new(LevelFilter::Error, None, Mode::Stderr, PathBuf::new());
        let meta = |level, target| Metadata::builder().level(level).target(target).build();
        assert!(logger.enabled(&meta(Level::Error, "rut::outside")));
        assert!(!logger.enabled(&meta(Level::Warn, "rut::outside")));
        assert!(!logger.enabled(&meta(Level::Info, "rut::outside")));
        assert!(logger.enabled(&meta(Level::Info, STATUS_TARGET)));
    }

    #[test]
    fn syslog_mode_sends_one_datagram_per_line() {
        let dir = std::env::temp_dir().join(format!("rut-syslog-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let logger = Logger::new(LevelFilter::Info, Some("home"), Mode::Syslog, path.clone());
        logger.log(
            &Record::builder()
                .level(Level::Warn)
                .target("rut::inside")
                .args(format_args!("no answer from the relay"))
                .build(),
        );
        let mut buf = [0u8; 512];
        let n = server.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(got.starts_with("<28>"), "{got:?}");
        let want = format!(
            " reverse-udp-tunnel[{}]: home: no answer from the relay",
            std::process::id()
        );
        assert!(got.ends_with(&want), "{got:?}");
        // Below the level: nothing sent.
        logger.log(
            &Record::builder()
                .level(Level::Debug)
                .args(format_args!("x"))
                .build(),
        );
        server.set_nonblocking(true).unwrap();
        assert!(server.recv(&mut buf).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
