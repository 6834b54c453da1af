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
/// whether `--syslog` was given. Call once; later calls change nothing.
pub fn init(level: u8, name: Option<&str>, syslog: bool) {
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
mod tests;
